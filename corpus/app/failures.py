"""One failure-reporting path around every invocation, in the spirit of Powertools' batch utility.

The Functions host retries a failing message ``maxDequeueCount`` times and then moves it to
``<queue>-poison``, but it keeps no reason. These wrappers keep one, in the ``Failures`` table,
where ``corpus status`` shows it:

* a :class:`~corpus.domain.errors.PermanentError` (the only class caught by name) can never
  succeed: the body goes to the poison queue at once, with its reason, and the invocation
  succeeds so the host does not retry it pointlessly;
* any other exception is recorded with the attempt number and re-raised, so the host retries;
  the record of the last attempt says ``Final`` and is what the user sees next to the poison queue.

Parsing the trigger's input happens *inside* the wrapper (the ``handler`` receives the raw body),
so a malformed message or a blob outside the staging container is recorded like any failure.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Protocol, TypeVar

from corpus.domain.display import redact
from corpus.domain.errors import PermanentError, reason
from corpus.store.rows import FailureRow
from corpus.store.settings import POISON_TTL, poison_queue

log = logging.getLogger("corpus.failures")

T = TypeVar("T")

KEY_CHARS = 200
"""A message without an id is keyed by the head of its body."""


class Reporter(Protocol):
    """What the wrappers need of the runtime: a failures table and a way to enqueue."""

    def record_failure(self, row: FailureRow) -> None: ...

    def clear_failure(self, source: str, key: str) -> None: ...

    def send(self, queue: str, text: str, time_to_live: int | None = None) -> None: ...

    @property
    def max_dequeue_count(self) -> int: ...


class QueueMessage(Protocol):
    """The parts of ``azure.functions.QueueMessage`` used here."""

    @property
    def id(self) -> str | None: ...

    @property
    def dequeue_count(self) -> int | None: ...

    def get_body(self) -> bytes: ...


def run_queue_job(rt: Reporter, queue: str, msg: QueueMessage, handler: Callable[[str], T]) -> T | None:
    """Run ``handler`` on the message body with failure reporting; see the module docstring."""
    body = msg.get_body().decode("utf-8", "replace")
    attempt = int(msg.dequeue_count or 1)
    key = msg.id or body[:KEY_CHARS]
    try:
        result = handler(body)
    except PermanentError as exc:
        why = redact(reason(exc))
        log.error("message %s on %s refused: %s", msg.id, queue, why)
        rt.record_failure(FailureRow(queue, key, why, attempt, True, body))
        rt.send(poison_queue(queue), body, time_to_live=POISON_TTL)
        return None
    except Exception as exc:
        final = attempt >= rt.max_dequeue_count
        why = redact(reason(exc))
        log.error("message %s on %s failed (attempt %d%s): %s", msg.id, queue, attempt, ", final" if final else "", why)
        rt.record_failure(FailureRow(queue, key, why + "\n" + traceback.format_exc(limit=5), attempt, final, body))
        raise
    if attempt > 1:
        rt.clear_failure(queue, key)  # an earlier attempt failed; this one did not
    return result


def run_blob_job(rt: Reporter, source: str, name: str, handler: Callable[[], T]) -> T:
    """Record why a blob-triggered invocation failed; the host retries it, then poisons it."""
    try:
        return handler()
    except Exception as exc:
        why = redact(reason(exc))
        log.error("blob %s failed: %s", name, why)
        try:
            rt.record_failure(FailureRow(source, name, why + "\n" + traceback.format_exc(limit=5), 0, False, name))
        except Exception:
            log.exception("could not record the failure of %s", name)
        raise

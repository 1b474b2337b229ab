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

Some messages reach ``<queue>-poison`` without passing through these wrappers' last word: the
host poisons a message whose dequeue count is already over ``maxDequeueCount`` before invoking
(its last attempt timed out or its worker died), and a timed-out attempt never reaches the
``except``. Those copies expire with the queue's default time-to-live (7 days). So every poison
queue has a recorder function (:func:`record_poisoned`) that turns each message into a final
``Failures`` row. A final row is keyed by the message's content hash (:func:`failure_key`), by the
wrappers and the recorder alike: the host's copy in the poison queue has a new message id, so the
hash is what both sides know, and the recorder's insert-only write leaves the wrappers' row (with
its reason) alone. Non-final rows stay keyed by the message id (cleared when a retry succeeds).
"""

from __future__ import annotations

import hashlib
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

    def record_failure_once(self, row: FailureRow) -> bool: ...

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


def failure_key(body: str) -> str:
    """The key of a message's final failure: its content hash (see the module docstring).

    Two messages with the same body are the same request (every handler is idempotent), so one
    final row for both is right.
    """
    return "sha256-" + hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:40]


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
        rt.record_failure(FailureRow(queue, failure_key(body), why, attempt, True, body))
        if attempt > 1:
            rt.clear_failure(queue, key)  # an earlier attempt's non-final row: this one is the last word
        rt.send(poison_queue(queue), body, time_to_live=POISON_TTL)
        return None
    except Exception as exc:
        final = attempt >= rt.max_dequeue_count
        why = redact(reason(exc))
        log.error("message %s on %s failed (attempt %d%s): %s", msg.id, queue, attempt, ", final" if final else "", why)
        detail = why + "\n" + traceback.format_exc(limit=5)
        rt.record_failure(FailureRow(queue, failure_key(body) if final else key, detail, attempt, final, body))
        if final and attempt > 1:
            rt.clear_failure(queue, key)
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


HOST_POISONED = (
    "poisoned by the Functions host, no reason from the app: an attempt timed out or its worker died "
    "(dequeue count over maxDequeueCount), or the host could not bind it; see the host's logs"
)


def record_poisoned(rt: Reporter, queue: str, msg: QueueMessage) -> bool:
    """Record a message of ``<queue>-poison`` as a final failure of ``queue``; True when it is new.

    The recorder of a poison queue, so that evidence outlives the queue's 7-day default TTL: one
    insert-only row per body (:func:`failure_key`), so a redelivered poison message, the host's
    duplicate copy, or a message the wrappers already recorded with a reason adds nothing. The
    body is bounded and redacted by the row's ``text`` column. Once recorded, the message is
    deleted by the host (the invocation succeeds): the row, which never expires, is the evidence.

    It must not loop, and the host does not bound it: a queue named ``*-poison`` gets no poison
    queue (``QueueListenerFactory.CreatePoisonQueueReference``), so a failed message is left
    invisible until its lease lapses and retried, and once over ``maxDequeueCount`` it is never
    invoked again but stays until its TTL. So the recorder bounds itself: before the last attempt
    a failure is raised (the host retries later: a table outage heals by itself); on the last
    attempt the body is moved to ``<queue>-poison-poison`` with TTL -1, which no function reads,
    and the invocation succeeds. Not wrapped in :func:`run_queue_job` (which would poison again).
    """
    body = msg.get_body().decode("utf-8", "replace")
    row = FailureRow(queue, failure_key(body), HOST_POISONED, rt.max_dequeue_count, True, body)
    attempt = int(msg.dequeue_count or 1)
    try:
        created = rt.record_failure_once(row)
    except Exception as exc:
        if attempt < rt.max_dequeue_count:
            log.error("could not record message %s of %s (attempt %d): %s", msg.id, poison_queue(queue), attempt, reason(exc))
            raise
        end = poison_queue(poison_queue(queue))
        log.exception(
            "could not record message %s of %s after %d attempts: moved to %s", msg.id, poison_queue(queue), attempt, end
        )
        rt.send(end, body, time_to_live=POISON_TTL)  # if this fails too, it is parked in the poison queue until its TTL
        return False
    if created:
        log.error("message %s of %s recorded as a failure of %s: %s", msg.id, poison_queue(queue), queue, HOST_POISONED)
    return created

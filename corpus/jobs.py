"""Explicit failure reporting around queue-triggered work, in the spirit of Powertools' batch utility.

The Functions host retries a failing message ``maxDequeueCount`` times and then moves it to
``<queue>-poison``, but it keeps no reason. These wrappers keep one, in the ``Failures`` table,
where ``corpus status`` shows it:

* a :class:`~corpus.messages.MessageError` (or any :class:`PermanentError`) can never succeed:
  the body goes to the poison queue at once, with its reason, and the invocation succeeds so the
  host does not retry it pointlessly;
* any other exception is recorded with the attempt number and re-raised, so the host retries;
  the record of the last attempt says ``Final`` and is what the user sees next to the poison queue.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import TypeVar

import azure.functions as func

from .messages import MessageError
from .runtime import Runtime

log = logging.getLogger("corpus.jobs")

T = TypeVar("T")


class PermanentError(Exception):
    """An input that will fail the same way on every retry."""


def _body_text(msg: func.QueueMessage) -> str:
    return msg.get_body().decode("utf-8", "replace")


def run_queue_job(rt: Runtime, queue: str, msg: func.QueueMessage, handler: Callable[[str], T]) -> T | None:
    """Run ``handler`` on the message body with failure reporting; see the module docstring."""
    body = _body_text(msg)
    attempt = int(msg.dequeue_count or 1)
    try:
        result = handler(body)
    except (MessageError, PermanentError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.error("message %s on %s refused: %s", msg.id, queue, reason)
        rt.catalog.record_failure(queue, msg.id or body[:200], reason, attempt, True, body)
        rt.send(queue + "-poison", body)
        return None
    except Exception as exc:
        final = attempt >= rt.queues.max_dequeue_count
        reason = f"{type(exc).__name__}: {exc}"
        log.error("message %s on %s failed (attempt %d%s): %s", msg.id, queue, attempt, ", final" if final else "", reason)
        rt.catalog.record_failure(
            queue, msg.id or body[:200], reason + "\n" + traceback.format_exc(limit=5), attempt, final, body
        )
        raise
    if attempt > 1:
        rt.catalog.clear_failure(queue, msg.id or body[:200])  # an earlier attempt failed; this one did not
    return result


def run_blob_job(rt: Runtime, source: str, name: str, handler: Callable[[], T]) -> T:
    """Record why a blob-triggered invocation failed; the host retries it, then poisons it."""
    try:
        return handler()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.error("blob %s failed: %s", name, reason)
        try:
            rt.catalog.record_failure(source, name, reason + "\n" + traceback.format_exc(limit=5), 0, False, name)
        except Exception:
            log.exception("could not record the failure of %s", name)
        raise

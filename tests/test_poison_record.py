"""The poison queues' recorders (``corpus.app.failures.record_poisoned``) on the in-memory store.

What the Functions host poisons on its own (a timeout, a dead worker, dequeue count over
``maxDequeueCount``) expires after 7 days and has no Failures row; the recorder makes one row per
body, insert-only, so redelivery and the wrappers' own final rows add nothing. The e2e test through
``corpus host`` is in test_devhost_fidelity.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from corpus.app.failures import HOST_POISONED, failure_key, record_poisoned, run_queue_job
from corpus.app.runtime import Runtime
from corpus.domain.errors import MAX_REASON, MessageError
from corpus.store.settings import poison_queue


@dataclass(frozen=True)
class Msg:
    """The parts of a trigger's QueueMessage the wrappers read (azure.functions.QueueMessage has them)."""

    body: str
    id: str | None = "m-1"
    dequeue_count: int | None = 1

    def get_body(self) -> bytes:
        return self.body.encode("utf-8")


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime.in_memory()
    runtime.ensure_resources()
    return runtime


def finals(rt: Runtime) -> list[tuple[str, str, str]]:
    return [(f.source, f.key, f.reason) for f in rt.catalog.failures.list(final_only=True)]


def test_a_host_poisoned_message_becomes_one_final_row_whatever_its_redeliveries(rt: Runtime) -> None:
    q = rt.settings.copy_queue
    body = '{"kind": "copy", "v": 1, "staged_name": "a/v1/x.jpg", "etag": "\\"0x1\\""}'
    assert record_poisoned(rt, q, Msg(body, id="p-1")) is True
    # Redelivered (the recorder's attempt died after the write), or a second copy from the host.
    assert record_poisoned(rt, q, Msg(body, id="p-1", dequeue_count=2)) is False
    assert record_poisoned(rt, q, Msg(body, id="p-2")) is False
    assert finals(rt) == [(q, failure_key(body), HOST_POISONED)]
    (row,) = rt.catalog.failures.list()
    assert row.body == body and row.final and row.attempts == rt.max_dequeue_count


def test_the_row_a_wrapper_wrote_on_the_last_attempt_keeps_its_reason(rt: Runtime) -> None:
    q, body = rt.settings.transform_jobs_queue, '{"job": 1}'
    last = rt.max_dequeue_count

    def boom(_: str) -> None:
        raise OSError("disk on fire")

    for attempt in range(1, last + 1):
        with pytest.raises(OSError):
            run_queue_job(rt, q, Msg(body, id="orig", dequeue_count=attempt), boom)
        if attempt < last:  # earlier attempts: one non-final row keyed by the message id
            assert [(f.key, f.final) for f in rt.catalog.failures.list(final_only=False)] == [("orig", False)]
    # The host copies the body into the poison queue under a new id; its recorder adds nothing.
    assert record_poisoned(rt, q, Msg(body, id="poison-copy")) is False
    rows = rt.catalog.failures.list(final_only=False)
    assert [(f.key, f.final, f.attempts) for f in rows] == [(failure_key(body), True, last)]
    assert rows[0].reason.startswith("OSError: disk on fire")


def test_a_permanent_error_poisoned_by_the_app_is_not_recorded_twice(rt: Runtime) -> None:
    q, body = rt.settings.copy_queue, "not a copy request"

    def refuse(_: str) -> None:
        raise MessageError("not JSON")

    assert run_queue_job(rt, q, Msg(body, id="orig"), refuse) is None
    (poisoned,) = rt.outbox.receive(poison_queue(q), max_messages=5)
    assert poisoned.text == body
    assert record_poisoned(rt, q, Msg(poisoned.text, id=poisoned.id)) is False
    assert finals(rt) == [(q, failure_key(body), "MessageError: not JSON")]


def test_the_body_is_bounded_and_redacted(rt: Runtime) -> None:
    q = rt.settings.export_queue
    body = "https://acct.blob.core.windows.net/x?sv=2025-11-05&sig=SECRETSIGNATURE " + "x" * 60_000
    assert record_poisoned(rt, q, Msg(body)) is True
    (row,) = rt.catalog.failures.list()
    assert "SECRETSIGNATURE" not in row.body and "sig=REDACTED" in row.body
    assert len(row.body) == MAX_REASON and row.body.endswith("…")
    assert row.key == failure_key(body)  # keyed by the whole body, not the stored head


def test_a_recorder_that_cannot_write_retries_then_moves_the_body_to_the_end_of_the_line(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A *-poison queue has no poison queue of its own (the host leaves a failed message invisible and
    retries it; over maxDequeueCount never again): the recorder bounds itself."""

    def down(_: object) -> bool:
        raise ConnectionError("table service unavailable")

    monkeypatch.setattr(rt.catalog.failures, "record_once", down)
    q, last = rt.settings.copy_queue, rt.max_dequeue_count
    end = poison_queue(poison_queue(q))
    for attempt in range(1, last):  # raised: the host retries when the lease lapses
        with pytest.raises(ConnectionError):
            record_poisoned(rt, q, Msg("{}", dequeue_count=attempt))
        assert rt.outbox.receive(end, max_messages=5) == []
    assert record_poisoned(rt, q, Msg("{}", dequeue_count=last)) is False  # the last attempt: moved, not raised
    (moved,) = rt.outbox.receive(end, max_messages=5)
    assert moved.text == "{}" and end == "copy-requests-poison-poison"
    assert rt.catalog.failures.list(final_only=False) == []

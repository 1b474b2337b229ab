"""P11 through ``corpus host`` on Azurite: what the host poisons on its own ends as a Failures row.

The real app (function_app.py), the real host stand-in. A message whose every attempt died (its
dequeue count already over ``maxDequeueCount``: timeouts, crashed workers) is poisoned by the host
before invoking, with the queue's 7-day TTL and no reason from the app; the poison queue's recorder
turns it into a final Failures row that ``corpus status`` shows, and the poison queue is drained.
"""

from __future__ import annotations

import json
from pathlib import Path

from corpus.app.failures import HOST_POISONED, failure_key
from corpus.app.runtime import Runtime
from corpus.store.storage import Clients
from tests.support import run_cli, run_host


def test_a_message_whose_attempts_all_died_ends_as_a_failure_in_corpus_status(
    env: dict[str, str], rt: Runtime, clients: Clients, app_dir: Path, tmp_path: Path
) -> None:
    body = json.dumps({"kind": "copy", "v": 1, "staged_name": "birds/v1/died.jpg", "staged_etag": '"0x1"'})
    rt.send("copy-requests", body)
    q = clients.queue_client("copy-requests")
    for _ in range(rt.max_dequeue_count):  # every attempt's worker died (or timed out) mid-way
        (msg,) = q.receive_messages(max_messages=1, visibility_timeout=30)
        q.update_message(msg.id, msg.pop_receipt, visibility_timeout=0)

    summary = run_host(env, app_dir)
    (poisoned,) = summary["poisoned"]
    assert poisoned["queue"] == "copy-requests-poison" and "before invoking" in poisoned["why"]
    assert "copy_to_original" not in summary["ok"] and "copy_to_original" not in summary["failed"]
    assert summary["ok"]["copy_to_original_poisoned"] == 1

    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    assert report["queues"]["copy-requests-poison"] == 0  # recorded, so nothing left to expire
    assert report["queues"]["copy-requests-poison-poison"] == 0
    (failure,) = report["failures"]["latest"]
    assert failure["Source"] == "copy-requests" and failure["Key"] == failure_key(body)
    assert failure["Reason"] == HOST_POISONED and failure["Attempts"] == rt.max_dequeue_count
    (row,) = rt.catalog.failures.list()
    assert row.body == body and row.final

    # Shown in the human report too.
    text = run_cli(env, tmp_path, "status").stdout
    assert "failed messages (poisoned):      1" in text and "poisoned by the Functions host" in text


def test_a_message_the_app_fails_every_time_keeps_its_reason_and_one_row(
    env: dict[str, str], rt: Runtime, clients: Clients, app_dir: Path, tmp_path: Path
) -> None:
    """The wrappers' final row (with the exception) and the recorder's insert-only write: one row."""
    body = "not a copy request"  # MessageError: poisoned by the app at once, with its reason
    rt.send("copy-requests", body)
    summary = run_host(env, app_dir)
    assert summary["ok"]["copy_to_original_poisoned"] == 1
    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    (failure,) = report["failures"]["latest"]
    assert failure["Key"] == failure_key(body) and failure["Reason"].startswith("MessageError")
    assert report["queues"]["copy-requests-poison"] == 0

"""End to end: staged blobs whose events were lost are ingested by reconciliation, exactly once."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys

import pytest

from corpus.domain import keys
from corpus.domain.paths import SetRef
from corpus.store.rows import as_int
from corpus.store.storage import Clients
from tests.support import host_command, jpeg, run_cli, run_host, wait_for

pytestmark = pytest.mark.e2e


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def stage(clients: Clients, domain: str, names: range, d: str = "a") -> dict[str, str]:
    st = clients.container("staging")
    expected = {}
    for i in names:
        data = jpeg(700 + i, size=(24, 16))
        st.upload_blob(f"{domain}/v1/{d}/img{i:03d}.jpg", data)
        expected[f"original/{d}/v1/img{i:03d}.jpg"] = md5(data)
    return expected


def originals(clients: Clients, domain: str) -> dict[str, str]:
    if not clients.container(domain).exists():
        return {}
    return {
        b.name: bytes(b.content_settings.content_md5 or b"").hex()
        for b in clients.container(domain).list_blobs(name_starts_with="original/")
    }


def staged(clients: Clients) -> list[str]:
    return [b.name for b in clients.container("staging").list_blobs()]


def test_lost_events_are_ingested_once_with_two_reconcilers_at_once_while_deliveries_resume(env, clients, app_dir, tmp_path):
    lost = stage(clients, "lost", range(12))
    summary = run_host(env, app_dir, "--drop-blob-events")
    assert summary["ok"] == {} and len(staged(clients)) == 12 and originals(clients, "lost") == {}  # really lost

    later = stage(clients, "lost", range(12, 18))  # normal deliveries resume for new uploads
    host = subprocess.Popen(host_command(app_dir), env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        reconcilers = [
            subprocess.Popen(
                [sys.executable, "-m", "corpus", "reconcile", "--grace", "0", "--json"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        reports = []
        for proc in reconcilers:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            reports.append(json.loads(out))
        wait_for(lambda: originals(clients, "lost") == {**lost, **later} and not staged(clients), 120, "all 18 ingested")
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(60)

    # Every lost blob was re-driven, each by exactly one of the two reconcilers.
    redriven = [name for report in reports for name in report["outcomes"]]
    assert len(redriven) == len(set(redriven))
    assert {f"lost/v1/a/img{i:03d}.jpg" for i in range(12)} <= set(redriven)
    row = clients.table_client("ImageSets").get_entity("lost", keys.set_row_key(SetRef("lost", ("a",), "v1")))
    assert as_int(row["ImageCount"]) == 18  # exactly once, whoever delivered what

    status = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    assert status["redriven"]["count"] == len(redriven)
    rows = {r["Name"]: r for r in status["redriven"]["latest"]}
    assert all(r["Times"] == 1 for r in rows.values())  # each version re-driven once, by one of the two
    # The lost blobs were validated and queued by their re-drive; a later upload may also have been
    # re-driven (grace 0) while its own event was being handled: any outcome is fine for those.
    assert all(rows[f"lost/v1/a/img{i:03d}.jpg"]["Outcome"] == "queued" for i in range(12))
    assert "re-driven by reconciliation" in run_cli(env, tmp_path, "status").stdout


def test_the_timer_trigger_reconciles_in_the_local_host(env, clients, app_dir):
    lost = stage(clients, "timer", range(3))
    run_host(env, app_dir, "--drop-blob-events")
    assert originals(clients, "timer") == {}
    summary = run_host({**env, "CORPUS_RECONCILE_GRACE_SECONDS": "0"}, app_dir, "--timers-now")
    assert summary["ok"]["reconcile_staging"] >= 1
    assert originals(clients, "timer") == lost and not staged(clients)


def test_dead_lettered_events_are_redriven_at_once_and_the_dead_letter_is_cleared(env, clients, app_dir, tmp_path):
    lost = stage(clients, "dead", range(2))
    run_host(env, app_dir, "--drop-blob-events")
    dead = clients.container("eventgrid-deadletter")
    subject = "/blobServices/default/containers/staging/blobs/dead/v1/a/img000.jpg"
    events = [
        {"subject": subject, "eventType": "Microsoft.Storage.BlobCreated", "deadLetterReason": "MaxDeliveryAttemptsExceeded"}
    ]
    dead.upload_blob("evgt/staging-blob-created/2026/11/24/03/x.json", json.dumps(events))

    # A long grace period: the scan leaves both blobs alone; only the dead-lettered one is re-driven.
    proc = run_cli(env, tmp_path, "reconcile", "--grace", "3600", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert list(report["outcomes"]) == ["dead/v1/a/img000.jpg"] and report["deadletter_blobs"] == 1
    assert list(dead.list_blobs()) == []
    run_host(env, app_dir)
    assert originals(clients, "dead") == {"original/a/v1/img000.jpg": lost["original/a/v1/img000.jpg"]}
    text = run_cli(env, tmp_path, "status").stdout
    assert "dead-lettered by Event Grid: MaxDeliveryAttemptsExceeded" in text

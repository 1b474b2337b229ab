"""``corpus host`` behaves like the Functions host where a difference would hide a bug.

Each test names the host (or worker) source it follows; see the docstring of
corpus/devhost/listeners.py. The functions under test are a small app written here, run by the
real ``corpus host`` against a private Azurite.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.storage.blob import ContentSettings

from corpus.devhost.discovery import Target
from corpus.devhost.groups import function_groups
from corpus.devhost.listeners import (
    BlobQueueListener,
    BlobRegistration,
    HostOptions,
    Stats,
    Worker,
    _Lease,
    blob_trigger_queue,
    host_id,
)
from corpus.store.hostconfig import BlobConfig
from tests.support import Azurite, jpeg, max_overlap, prepare_app_dir, run_host

TEST_APP = """
import json, os, time
import azure.functions as func

app = func.FunctionApp()

@app.function_name("slow")
@app.queue_trigger(arg_name="msg", queue_name="slow", connection="CorpusStorage")
def slow(msg: func.QueueMessage) -> None:
    time.sleep(float(msg.get_body().decode() or "0"))

@app.function_name("fails")
@app.queue_trigger(arg_name="msg", queue_name="fails", connection="CorpusStorage")
def fails(msg: func.QueueMessage) -> None:
    raise RuntimeError("always")

@app.function_name("blob_fails")
@app.blob_trigger(arg_name="blob", path="drop/{name}", connection="CorpusStorage", source=func.BlobSource.EVENT_GRID)
def blob_fails(blob: func.InputStream) -> None:
    raise RuntimeError("always")
"""


def make_app(tmp_path: Path, host: dict[str, Any] | None = None) -> Path:
    app = tmp_path / "testapp"
    app.mkdir()
    (app / "function_app.py").write_text(TEST_APP)
    config = {
        "version": "2.0",
        "extensions": {
            "queues": {
                "batchSize": 16,
                "newBatchThreshold": 8,
                "maxDequeueCount": 2,
                "visibilityTimeout": "00:00:00",
                "messageEncoding": "none",
            },
            "blobs": {"maxDegreeOfParallelism": 4, "poisonBlobThreshold": 3},
        },
        "functionTimeout": "00:10:00",
    }
    for key, value in (host or {}).items():
        config[key] = value
    (app / "host.json").write_text(json.dumps(config))
    return app


def queues(clients: Any, *names: str) -> None:
    """The test app's queues and its blob trigger's container."""
    from azure.core.exceptions import ResourceExistsError

    for name in names:
        for q in (name, f"{name}-poison"):
            try:
                clients.queue.create_queue(q)
            except ResourceExistsError:
                pass
    try:
        clients.blob.create_container("drop")
    except ResourceExistsError:
        pass


def test_worker_runs_at_most_its_thread_count_while_the_host_dispatches_24(env, clients, tmp_path):
    """P5: azure-functions-python-worker dispatcher.py runs sync functions on a pool of
    PYTHON_THREADPOOL_THREAD_COUNT threads; host.json dispatches batchSize + newBatchThreshold."""
    app = make_app(tmp_path)
    queues(clients, "slow", "fails")
    for _ in range(24):
        clients.queue_client("slow").send_message("0.4")
    trace = tmp_path / "trace.jsonl"
    summary = run_host({**env, "PYTHON_THREADPOOL_THREAD_COUNT": "5"}, app, "--trace", str(trace), timeout=120)
    assert summary["ok"]["slow"] == 24
    assert summary["worker_threads"] == 5
    assert max_overlap(trace, "slow") == 5  # not 24


def test_a_message_dequeued_more_than_max_dequeue_count_is_poisoned_without_invoking(env, clients, tmp_path):
    """QueueProcessor.BeginProcessingMessageAsync: DequeueCount > MaxDequeueCount → poison, no invocation."""
    app = make_app(tmp_path)
    queues(clients, "slow", "fails")
    q = clients.queue_client("slow")
    q.send_message("0")
    for _ in range(2):  # two earlier attempts whose host died (maxDequeueCount is 2)
        (msg,) = q.receive_messages(max_messages=1, visibility_timeout=30)
        q.update_message(msg.id, msg.pop_receipt, visibility_timeout=0)
    summary = run_host(env, app, timeout=120)
    assert "slow" not in summary["ok"] and "slow" not in summary["failed"]  # never invoked
    (poisoned,) = summary["poisoned"]
    assert poisoned["queue"] == "slow-poison" and "before invoking" in poisoned["why"]
    assert [m.content for m in clients.queue_client("slow-poison").peek_messages()] == ["0"]


@pytest.mark.serial  # the 3 s TTL must outlast the host's exit and the peek: not on a CPU shared with other tests
def test_host_poisoned_messages_expire_as_configured_and_are_recorded(env, clients, tmp_path):
    """P11: CopyMessageToPoisonQueueAsync sets no time-to-live (7 days by default); with
    --poison-ttl the expiry shows in a test. The host lists what it poisoned in its summary."""
    app = make_app(tmp_path)
    queues(clients, "slow", "fails")
    clients.queue_client("fails").send_message("x")
    summary = run_host(env, app, "--poison-ttl", "3", timeout=120)
    assert summary["failed"]["fails"] == 2  # maxDequeueCount
    (msg,) = clients.queue_client("fails-poison").peek_messages()
    assert round((msg.expires_on - msg.inserted_on).total_seconds()) == 3
    assert [p["queue"] for p in summary["poisoned"]] == ["fails-poison"]
    deadline = time.monotonic() + 30
    while clients.queue_client("fails-poison").peek_messages() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(clients.queue_client("fails-poison").peek_messages()) == []  # gone, as in Azure after 7 days


def test_function_timeout_fails_the_invocation_and_the_message_is_retried_then_poisoned(env, clients, tmp_path):
    """host.json functionTimeout: an invocation still running after it is a failure."""
    app = make_app(tmp_path, {"functionTimeout": "00:00:01"})
    queues(clients, "slow", "fails")
    clients.queue_client("slow").send_message("3")
    summary = run_host(env, app, timeout=120)
    assert summary["function_timeouts"] == 2  # both attempts (maxDequeueCount 2)
    assert [p["queue"] for p in summary["poisoned"]] == ["slow-poison"]


def test_queue_messages_are_leased_for_ten_minutes(tmp_path):
    """QueueListener.cs: ReceiveMessagesAsync(batch, TimeSpan.FromMinutes(10)), renewed at half."""
    debug = tmp_path / "azurite-debug.log"
    az = Azurite(tmp_path, extra_args=("--debug", str(debug))).start()
    try:
        env = _env(az, tmp_path)
        app = make_app(tmp_path)
        from azure.storage.queue import QueueServiceClient

        svc = QueueServiceClient.from_connection_string(az.connection_string)
        for name in ("slow", "slow-poison", "fails", "fails-poison"):
            svc.create_queue(name)
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(az.connection_string).create_container("drop")
        svc.get_queue_client("slow").send_message("0")
        summary = run_host(env, app)
        assert summary["ok"]["slow"] == 1
        log = debug.read_text(errors="replace")
        assert "visibilitytimeout=600" in log.lower()
    finally:
        az.stop()


def _env(az: Azurite, tmp_path: Path) -> dict[str, str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
    return {
        **base,
        "CorpusStorage": az.connection_string,
        "AzureWebJobsStorage": az.connection_string,
        "CORPUS_CACHE_DIR": str(tmp_path / "cache"),
    }


def test_blob_trigger_retries_are_immediate_re_deliveries_through_the_host_queue(env, clients, tmp_path):
    """P10: SharedBlobQueueListenerFactory.BlobsOptionsToQueuesOptions: a host-account queue with
    visibility timeout zero, poisonBlobThreshold attempts, then webjobs-blobtrigger-poison."""
    app = make_app(tmp_path)
    queues(clients, "slow", "fails")
    clients.container("drop").upload_blob("a.jpg", jpeg(1))
    trace = tmp_path / "trace.jsonl"
    summary = run_host(env, app, "--trace", str(trace), timeout=120)
    assert summary["failed"]["blob_fails"] == 3  # poisonBlobThreshold
    runs = sorted((r["start"], r["end"]) for r in map(json.loads, trace.read_text().splitlines()) if r["fn"] == "blob_fails")
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    assert all(g < 2.5 for g in gaps), gaps  # re-delivered at once (visibility 0), not after a back-off
    (poison,) = clients.queue_client("webjobs-blobtrigger-poison").peek_messages()
    body = json.loads(poison.content)
    assert body["BlobName"] == "a.jpg" and body["FunctionId"] == "Host.Functions.blob_fails"
    assert blob_trigger_queue(host_id(app, {})) in {
        q.name for q in clients.queue.list_queues()
    }  # AzureWebJobsStorage = same Azurite here


def one_function_listener(target: Target, clients: Any, app_dir: Path) -> BlobQueueListener:
    """The shared blob-trigger queue's listener with ``target`` as its only function."""
    return BlobQueueListener(
        [BlobRegistration.of(target, clients)],
        clients,
        BlobConfig(4, 3),
        Stats(None),
        HostOptions(app_dir=app_dir),
        Worker(2),
        "test",
    )


def test_blob_trigger_metadata_has_the_real_host_s_shape(clients, tmp_path):
    """P9: Properties is Azure.Storage.Blobs.Models.BlobProperties through Newtonsoft.Json:
    ETag (a struct with no public properties) is {} and BlobType (an enum) is 0."""
    clients.blob.create_container("drop")
    client = clients.container("drop").upload_blob("b.jpg", jpeg(2), content_settings=ContentSettings("image/jpeg"))
    etag = client.get_blob_properties().etag
    seen: list[Any] = []
    target = Target("blob_fails", "blob", "drop", "CorpusStorage", "blob", lambda blob: seen.append(blob), path="{name}")
    listener = one_function_listener(target, clients, tmp_path)
    msg = SimpleNamespace(id="m1", dequeue_count=1)
    body = json.dumps(
        {"Type": "BlobTrigger", "FunctionId": target.function_id, "BlobName": "b.jpg", "ContainerName": "drop", "ETag": etag}
    )
    assert listener._invoke(msg, _Lease("m1", "r"), body) is True
    (blob,) = seen
    assert blob.name == "drop/b.jpg"
    assert blob.blob_properties["ETag"] == {}
    assert blob.blob_properties["BlobType"] == 0
    assert blob.blob_properties["ContentType"] == "image/jpeg"
    assert blob.read() == jpeg(2)
    # BlobQueueTriggerExecutor compares the ETag only for a LogsAndContainerScan trigger: an
    # EventGrid trigger runs on the blob as it is now; a scan trigger skips it (the scan sends the
    # newer version).
    clients.container("drop").upload_blob("b.jpg", jpeg(3), overwrite=True)
    assert listener._invoke(msg, _Lease("m1", "r"), body) is True
    assert [b.read() for b in seen[1:]] == [jpeg(3)]
    scanned = Target("scanned", "blob", "drop", "CorpusStorage", "blob", lambda blob: seen.append(blob), path="{name}", scan=True)
    listener = one_function_listener(scanned, clients, tmp_path)
    body = json.dumps({**json.loads(body), "FunctionId": scanned.function_id})
    assert listener._invoke(msg, _Lease("m1", "r"), body) is True
    assert len(seen) == 2


def test_the_real_ingest_takes_the_head_fallback_with_the_real_metadata(env, clients, app_dir, tmp_path):
    """With ETag {} the blob trigger must HEAD the blob for its ETag (corpus/app/ingest.py): the
    whole ingest still ends with the image in place."""
    clients.container("staging").upload_blob("birds/v1/red/x.jpg", jpeg(7), content_settings=ContentSettings("image/jpeg"))
    summary = run_host(env, app_dir, timeout=120)
    assert summary["ok"] == {"ingest_staged_blob": 1}  # CORPUS_INGEST=direct: the copy runs in the trigger
    assert [b.name for b in clients.container("birds").list_blobs()] == ["original/red/v1/x.jpg"]


def test_function_groups_are_flex_s():
    def t(name: str, kind: str) -> Target:
        return Target(name, kind, "", "", "x", lambda: None)

    targets = [t("a", "http"), t("b", "http"), t("ingest", "blob"), t("copy", "queue"), t("job", "queue"), t("tick", "timer")]
    assert function_groups(targets) == [("a", "b"), ("ingest",), ("copy",), ("job",), ("tick",)]


def test_process_per_group_runs_the_pipeline_across_processes(env, clients, tmp_path):
    """Flex scales each function group on its own instances: the blob group hands copies to the
    copy group's process (CORPUS_INGEST=queued); with --until-idle the host runs rounds until
    nothing is left."""
    app = prepare_app_dir(tmp_path)
    for i in range(3):
        clients.container("staging").upload_blob(f"owls/v1/{i}.jpg", jpeg(40 + i), content_settings=ContentSettings("image/jpeg"))
    # 240 s (run_host's default): a process per group (~14) per round
    summary = run_host({**env, "CORPUS_INGEST": "queued"}, app, "--process-per-group", "--threads", "5")
    assert summary["ok"]["ingest_staged_blob"] == 3 and summary["ok"]["copy_to_original"] == 3
    assert ["ingest_staged_blob"] in summary["groups"] and ["copy_to_original"] in summary["groups"]
    assert summary["rounds"] >= 2  # the last round found nothing to do
    assert len(list(clients.container("owls").list_blobs())) == 3


POISON_APP = """
import azure.functions as func

app = func.FunctionApp()

@app.function_name("recorder")
@app.queue_trigger(arg_name="msg", queue_name="boom-poison", connection="CorpusStorage")
def recorder(msg: func.QueueMessage) -> None:
    raise RuntimeError("cannot record")
"""


def test_a_queue_named_poison_has_no_poison_queue_so_failures_are_parked_not_poisoned(env, clients, tmp_path):
    """QueueListenerFactory.CreatePoisonQueueReference: no poison queue for a queue ending in "-poison";
    QueueProcessor then leaves a failed message invisible (no release) and never invokes one whose
    dequeue count is over maxDequeueCount (BeginProcessingMessageAsync), without poisoning either."""
    app = make_app(tmp_path)
    (app / "function_app.py").write_text(POISON_APP)
    for q in ("boom-poison", "boom-poison-poison"):
        clients.queue.create_queue(q)
    failing = clients.queue_client("boom-poison")
    failing.send_message("x")
    summary = run_host(env, app, "--lease", "60", timeout=120)
    assert summary["failed"]["recorder"] == 1 and summary["poisoned"] == []
    assert failing.get_queue_properties().approximate_message_count == 1  # parked, invisible for its lease
    assert failing.peek_messages() == []
    assert clients.queue_client("boom-poison-poison").get_queue_properties().approximate_message_count == 0

    over = clients.queue_client("boom-poison")
    over.clear_messages()
    over.send_message("y")
    for _ in range(3):  # maxDequeueCount is 2: over it
        (msg,) = over.receive_messages(max_messages=1, visibility_timeout=30)
        over.update_message(msg.id, msg.pop_receipt, visibility_timeout=0)
    summary = run_host(env, app, timeout=120)
    assert "recorder" not in summary["failed"] and "recorder" not in summary["ok"]  # not invoked
    assert summary["poisoned"] == []
    assert over.get_queue_properties().approximate_message_count == 1  # still there, until its TTL
    assert clients.queue_client("boom-poison-poison").get_queue_properties().approximate_message_count == 0


def test_the_blob_event_source_outlives_storage_errors_and_sends_each_blob_once() -> None:
    """An unreachable service (an AzureError that is not an HTTP response) in the listing, the
    backlog probe or a send is logged and tried again next round; the thread never dies, and only
    what was queued is remembered (at least once)."""
    import threading

    from azure.core.exceptions import ServiceRequestError

    from corpus.devhost.listeners import BlobListener, Subscription
    from corpus.transfer.bloblist import Listed

    stop = threading.Event()
    rounds, probes = itertools.count(), itertools.count()
    sent: list[str] = []
    receipts: list[list[str]] = []

    class Lister:
        def list_versions(self, container: str) -> Any:
            n = next(rounds)
            if n == 0:
                raise ServiceRequestError("connection refused")
            if n >= 3:
                stop.set()
            yield Listed("d/v1/a.jpg", "0x1", "BlockBlob")
            yield Listed("d/v1/b.jpg", "0x2", "BlockBlob")

    class Queue:
        fail_once = True

        def get_queue_properties(self) -> Any:
            if next(probes) == 0:
                raise ServiceRequestError("refused")
            return SimpleNamespace(approximate_message_count=0)

        def send_message(self, body: str) -> None:
            name = json.loads(body)["BlobName"]
            if name == "d/v1/b.jpg" and Queue.fail_once:
                Queue.fail_once = False
                raise ServiceRequestError("send failed")
            sent.append(name)

    class Receipts:
        def submit_transaction(self, ops: list[Any]) -> None:
            receipts.append([op[1]["Name"] for op in ops])

    opts = HostOptions(Path("."), blob_poll_interval=0.0)
    target = Target("ingest", "blob", "staging", "CorpusStorage", "blob", lambda *a: None, path="{name}")
    listener = BlobListener(
        "staging",
        [Subscription.of(target, "test")],
        Lister(),
        Queue(),
        Receipts(),
        Stats(None),
        opts,
        backlog=1,
        senders=2,  # the default is 8
    )
    thread = threading.Thread(target=listener.run, args=(stop,))
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert sorted(sent) == ["d/v1/a.jpg", "d/v1/b.jpg"]  # each queued once: b after its failed send
    assert [sorted(r) for r in receipts] == [["d/v1/a.jpg"], ["d/v1/b.jpg"]]  # remembered only once queued

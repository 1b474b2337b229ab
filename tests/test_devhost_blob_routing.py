"""``corpus host`` runs several blob triggers as the Functions host does: one shared blob-trigger
queue whose messages are dispatched by their ``FunctionId``.

Sources (Azure/azure-sdk-for-net, ``sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Blobs/src``):
``Listeners/BlobListenerFactory.cs`` (one ``SharedBlobQueueListener`` per host, each function
registered under its descriptor's Id and ShortName), ``Listeners/BlobQueueTriggerExecutor.cs``
(an unknown FunctionId is logged and the message completed without invoking),
``Config/BlobsExtensionConfigProvider.cs`` (each Event Grid subscription's events become messages
naming its function). The functions are a small app written here, run by the real ``corpus host``
against a private Azurite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError

from corpus.devhost.discovery import blob_name_pattern, blob_name_regex
from corpus.devhost.listeners import RECEIPTS_TABLE, blob_trigger_queue, host_id, receipts_partition
from corpus.domain import keys
from tests.support import run_host

RECORDER = """
import hashlib, json, os, threading
import azure.functions as func

app = func.FunctionApp()
_lock = threading.Lock()


def record(fn: str, blob: func.InputStream) -> None:
    line = json.dumps({"fn": fn, "name": blob.name, "md5": hashlib.md5(blob.read()).hexdigest()})
    with _lock, open(os.path.join(os.environ["AzureWebJobsScriptRoot"], "calls.jsonl"), "a") as out:
        out.write(line + "\\n")
"""
"""Each function of the apps below records what it ran on, and a digest of the bytes it read."""

TRIGGER = """

@app.function_name("{fn}")
@app.blob_trigger(arg_name="blob", path="{path}", connection="CorpusStorage", source=func.BlobSource.EVENT_GRID)
def {fn}(blob: func.InputStream) -> None:
    record("{fn}", blob)
"""


def blob_app(**paths: str) -> str:
    """A function_app.py of one recording blob-triggered function per ``name=path``."""
    return RECORDER + "".join(TRIGGER.replace("{fn}", fn).replace("{path}", path) for fn, path in paths.items())


ROUTING_APP = blob_app(jpegs="drop/{stem}.jpg", inbox="drop/in/{name}", side="side/{name}")
TWO_CONTAINERS_APP = blob_app(left="left/{name}", right="right/{name}")


HOST_JSON = {
    "version": "2.0",
    "extensions": {"blobs": {"maxDegreeOfParallelism": 4, "poisonBlobThreshold": 2}},
    "functionTimeout": "00:05:00",
}


def make_app(tmp_path: Path, source: str = ROUTING_APP) -> Path:
    app = tmp_path / "routingapp"
    app.mkdir()
    (app / "function_app.py").write_text(source)
    (app / "host.json").write_text(json.dumps(HOST_JSON))
    return app


def containers(clients: Any, *names: str) -> None:
    for name in names:
        try:
            clients.blob.create_container(name)
        except ResourceExistsError:
            pass


def content(container: str, name: str) -> bytes:
    return f"bytes of {container}/{name}".encode()


def upload(clients: Any, container: str, *names: str) -> None:
    for name in names:
        clients.container(container).upload_blob(name, content(container, name), overwrite=True)


def host_queue(app: Path) -> str:
    """The app's blob-trigger queue (its name holds the app's host id)."""
    return blob_trigger_queue(host_id(app, {}))


def partition(app: Path, function: str, container: str) -> str:
    """The receipts partition of one function of the app on one container."""
    return receipts_partition(host_id(app, {}), function, container)


def calls(app: Path) -> list[tuple[str, str]]:
    """(function, container/blob) per invocation, each checked to have received that blob's bytes."""
    path = app / "calls.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        container, _, name = rec["name"].partition("/")
        assert rec["md5"] == hashlib.md5(content(container, name)).hexdigest(), rec  # the bytes of the blob it names
        out.append((rec["fn"], rec["name"]))
    return sorted(out)


def test_each_blob_reaches_exactly_the_functions_whose_path_matches_it(env, clients, tmp_path):
    """Two triggers on one container with different templates, a third on another container: a blob
    matching both templates is delivered to both (two messages, two receipts), every other blob to
    its one function or to none; none is lost and none reaches the wrong function."""
    app = make_app(tmp_path)
    containers(clients, "drop", "side")
    upload(clients, "drop", "a.jpg", "deep/b.jpg", "in/c.png", "in/d.jpg", "e.png", "in")
    upload(clients, "side", "x.bin", "y.jpg")
    summary = run_host(env, app, timeout=180)
    expected = sorted(
        [
            ("jpegs", "drop/a.jpg"),
            ("jpegs", "drop/deep/b.jpg"),  # {stem} spans '/' (a greedy .*), as in the WebJobs SDK
            ("jpegs", "drop/in/d.jpg"),  # matches both templates
            ("inbox", "drop/in/c.png"),
            ("inbox", "drop/in/d.jpg"),
            ("side", "side/x.bin"),
            ("side", "side/y.jpg"),  # another container: not jpegs's
        ]
    )
    assert calls(app) == expected  # drop/e.png and drop/in match no template: no event
    assert summary["ok"] == {"jpegs": 3, "inbox": 2, "side": 2}
    assert summary["failed"] == {} and summary["poisoned"] == [] and summary["dropped"] == []
    assert clients.queue_client(host_queue(app)).get_queue_properties().approximate_message_count == 0

    receipts = clients.table_client(RECEIPTS_TABLE)
    by_function = {
        fn: sorted(r["Name"] for r in receipts.query_entities("PartitionKey eq @pk", parameters={"pk": partition(app, fn, c)}))
        for fn, c in (("jpegs", "drop"), ("inbox", "drop"), ("side", "side"))
    }
    assert by_function == {
        "jpegs": ["a.jpg", "deep/b.jpg", "in/d.jpg"],
        "inbox": ["in/c.png", "in/d.jpg"],
        "side": ["x.bin", "y.jpg"],
    }

    # A restarted host remembers each function's deliveries: nothing runs again.
    (app / "calls.jsonl").unlink()
    assert run_host(env, app, timeout=180)["ok"] == {}
    assert calls(app) == []
    # A new version of the blob both templates match is delivered again, to each of them once.
    clients.container("drop").upload_blob("in/d.jpg", content("drop", "in/d.jpg"), overwrite=True)
    assert run_host(env, app, timeout=180)["ok"] == {"jpegs": 1, "inbox": 1}
    assert calls(app) == [("inbox", "drop/in/d.jpg"), ("jpegs", "drop/in/d.jpg")]


def test_two_blob_triggers_sharing_the_queue_never_take_each_other_s_messages(env, clients, tmp_path):
    """Two ``<container>/{name}`` triggers share the host's blob-trigger queue: every message runs the
    function it names. (A listener per function on the shared queue would take the other's messages
    and find their blobs "gone" in its own container, losing them.)"""
    app = make_app(tmp_path, TWO_CONTAINERS_APP)
    containers(clients, "left", "right")
    names = [f"{i:02d}.bin" for i in range(12)]
    upload(clients, "left", *names)
    upload(clients, "right", *names)
    summary = run_host(env, app, timeout=180)
    assert calls(app) == sorted([("left", f"left/{n}") for n in names] + [("right", f"right/{n}") for n in names])
    assert summary["ok"] == {"left": 12, "right": 12} and summary["dropped"] == []


def test_a_message_naming_no_function_here_is_dropped_without_invoking_and_listed(env, clients, tmp_path):
    """BlobQueueTriggerExecutor.ExecuteAsync: a FunctionId with no registration (a function removed or
    disabled) is logged and the message completed; a function is registered under its descriptor's
    ShortName (``Functions.<name>``) as well as its Id (``Host.Functions.<name>``). A message that is
    not a BlobTriggerMessage fails each attempt and ends in the host account's poison queue."""
    app = make_app(tmp_path, TWO_CONTAINERS_APP)
    containers(clients, "left", "right")
    upload(clients, "left", "a.jpg")
    receipts = clients.table.create_table_if_not_exists(RECEIPTS_TABLE)
    etag = clients.container("left").get_blob_client("a.jpg").get_blob_properties().etag
    # Delivered already, as far as the event source knows: only the hand-made messages below run.
    receipts.create_entity(
        {"PartitionKey": partition(app, "left", "left"), "RowKey": keys.escape("a.jpg"), "Name": "a.jpg", "ETag": etag}
    )
    queue = clients.queue.create_queue(host_queue(app))

    def message(function_id: str) -> str:
        body = {"Type": "BlobTrigger", "FunctionId": function_id, "BlobType": "BlockBlob", "ContainerName": "left"}
        return json.dumps({**body, "BlobName": "a.jpg", "ETag": etag})

    queue.send_message(message("Host.Functions.removed"))
    queue.send_message(message("Functions.left"))
    queue.send_message("not json")
    summary = run_host(env, app, timeout=180)

    assert calls(app) == [("left", "left/a.jpg")]  # the ShortName's message ran it, once
    assert summary["ok"] == {"left": 1}
    (dropped,) = summary["dropped"]
    assert dropped["function_id"] == "Host.Functions.removed" and dropped["blob"] == "left/a.jpg"
    assert dropped["why"] == "function not found"
    (poisoned,) = summary["poisoned"]
    assert poisoned["queue"] == "webjobs-blobtrigger-poison" and "failed 2 attempts" in poisoned["why"]
    assert [m.content for m in clients.queue_client("webjobs-blobtrigger-poison").peek_messages()] == ["not json"]
    assert queue.get_queue_properties().approximate_message_count == 0


@pytest.mark.parametrize(
    ("template", "name", "values"),
    [
        ("{name}", "a/b/c.jpg", {"name": "a/b/c.jpg"}),
        ("{stem}.jpg", "a.b.jpg", {"stem": "a.b"}),
        ("{stem}.jpg", "a.jpg.png", None),
        ("in/{name}", "in/x", {"name": "x"}),
        ("in/{name}", "inx", None),
        ("in/{name}", "In/x", None),  # case-sensitive
        ("{dir}/{file}.{ext}", "a/b/c.d.e", {"dir": "a/b", "file": "c.d", "ext": "e"}),  # greedy, left to right
        ("{{raw}}/{name}", "{raw}/x", {"name": "x"}),  # {{ }} are literal braces
        ("a+b(c)/{name}", "a+b(c)/x", {"name": "x"}),  # literals are escaped
        ("a+b(c)/{name}", "aab(c)/x", None),
        ("{name}", "a\nFORGED.jpg", {"name": "a\nFORGED.jpg"}),  # a control character still reaches the function
        ("{stem}.jpg", "a.jpg\n", None),
    ],
)
def test_blob_name_templates_match_as_the_webjobs_sdk_s(template: str, name: str, values: dict[str, str] | None) -> None:
    """BindingTemplateSource.FromString: ``^…$``, each parameter ``(?<p>.*)``, literals escaped."""
    assert blob_name_pattern(template).match(name) == values
    m = blob_name_regex(template).match(name)  # the specification the matcher implements
    assert (m.groupdict() if m else None) == values


@pytest.mark.parametrize("template", ["{name", "name}", "{}", "{a-b}", "{a}/{a}", "{a.b}"])
def test_malformed_blob_name_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="blob path template"):
        blob_name_pattern(template)
    with pytest.raises(ValueError, match="blob path template"):
        blob_name_regex(template)

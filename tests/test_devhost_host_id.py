"""``corpus host`` never deletes a blob-trigger message that another process or app still needs, and
its path templates cost linear time per listed blob.

* The blob-trigger queue is ``azure-webjobs-blobtrigger-<hostId>`` with the host id derived from the
  app (``ScriptHostIdProvider.GetDefaultHostId`` in Azure/azure-functions-host: machine name and a
  stable hash of the app's path, at most 32 characters), and receipts are kept per host id, so two
  apps on one account neither take each other's messages nor skip each other's blobs.
* ``--only`` that keeps some of the app's blob functions but not all is refused: that process would
  delete the others' messages (review 27, F4).
* A template with several parameters is matched without backtracking (review 27, F5), with the
  captures of the WebJobs SDK's greedy regex, and a delivered blob is not matched at all.
* ``BlobQueueTriggerExecutor.ExecuteAsync`` (Azure/azure-sdk-for-net): only a null FunctionId
  throws; any other is looked up, and one no function has is dropped. ``BlobTriggerBinding.
  CreateBindingData``: the template's values override the built-in binding data, case-insensitively.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.devhost import listeners
from corpus.devhost.discovery import Target, blob_name_pattern, blob_name_regex
from corpus.devhost.listeners import (
    HOST_ID_SETTING,
    RECEIPTS_TABLE,
    BlobQueueListener,
    BlobRegistration,
    HostOptions,
    Stats,
    Subscription,
    Worker,
    _Lease,
    blob_trigger_queue,
    host_id,
    receipts_partition,
)
from corpus.devhost.supervisor import select
from corpus.domain import keys
from corpus.domain.errors import ConfigError
from corpus.store.hostconfig import BlobConfig
from tests.support import host_command, run_host
from tests.test_devhost_blob_routing import TWO_CONTAINERS_APP, blob_app, calls, containers, upload

QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
"""Azure queue names: 3-63 lower-case letters, digits and single dashes, not first or last."""

HOST_JSON = {"version": "2.0", "extensions": {"blobs": {"maxDegreeOfParallelism": 4, "poisonBlobThreshold": 2}}}


def app_at(path: Path, source: str) -> Path:
    path.mkdir(parents=True)
    (path / "function_app.py").write_text(source)
    (path / "host.json").write_text(json.dumps(HOST_JSON))
    return path


def queued_for(clients: Any, app: Path, function: str, container: str, name: str) -> Any:
    """What a full host's event source did for ``function``: its message queued, then its receipt."""
    etag = clients.container(container).get_blob_client(name).get_blob_properties().etag
    receipts = clients.table.create_table_if_not_exists(RECEIPTS_TABLE)
    pk = receipts_partition(host_id(app, {}), function, container)
    receipts.create_entity({"PartitionKey": pk, "RowKey": keys.escape(name), "Name": name, "ETag": etag})
    queue = clients.queue.create_queue(blob_trigger_queue(host_id(app, {})))
    body = {"Type": "BlobTrigger", "FunctionId": f"Host.Functions.{function}", "BlobType": "BlockBlob"}
    queue.send_message(json.dumps({**body, "ContainerName": container, "BlobName": name, "ETag": etag}))
    return queue


# -- F4: no process deletes a message its app still needs ----------------------------------------


def test_a_host_running_only_some_blob_functions_is_refused_so_right_s_message_is_not_lost(env, clients, tmp_path):
    """Review 27's scenario: a full host queued a message for ``right`` and wrote its receipt; a host
    running ``--only left`` would take that message and delete it (no host would ever run ``right``
    on that blob version). It is refused at start-up, saying what to add; the message stays, and the
    full host runs ``right`` on the blob."""
    app = app_at(tmp_path / "app", TWO_CONTAINERS_APP)
    containers(clients, "left", "right")
    upload(clients, "right", "a.bin")
    queue = queued_for(clients, app, "right", "right", "a.bin")

    refused = subprocess.run(
        host_command(app, "--until-idle", "--timeout", "60", "--only", "left"),
        env=env,
        cwd=app.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "--only keeps the blob functions left but not right" in refused.stderr
    assert queue.get_queue_properties().approximate_message_count == 1  # untouched

    summary = run_host(env, app, timeout=120)
    assert ("right", "right/a.bin") in calls(app)
    assert summary["dropped"] == []


def test_two_apps_on_one_account_keep_their_own_queue_and_receipts(env, clients, tmp_path):
    """Two apps (two folders) on one storage account: the second never takes the first's messages
    (its queue is another), and a blob both watch reaches each app's function (each keeps its own
    receipts), as two function apps with their own host ids do in Azure."""
    first = app_at(tmp_path / "first", TWO_CONTAINERS_APP)
    second = app_at(tmp_path / "second", blob_app(left="left/{name}"))
    assert blob_trigger_queue(host_id(first, {})) != blob_trigger_queue(host_id(second, {}))
    containers(clients, "left", "right")
    upload(clients, "left", "x.bin")
    upload(clients, "right", "a.bin")
    queue = queued_for(clients, first, "right", "right", "a.bin")  # the first app's pending work

    summary = run_host(env, second, timeout=120)
    assert summary["ok"] == {"left": 1} and summary["dropped"] == []
    assert calls(second) == [("left", "left/x.bin")]
    assert queue.get_queue_properties().approximate_message_count == 1  # not the second app's to take

    summary = run_host(env, first, timeout=120)
    assert calls(first) == [("left", "left/x.bin"), ("right", "right/a.bin")]  # left/x.bin too: its own receipts
    assert summary["dropped"] == []


def target(name: str, kind: str = "blob") -> Target:
    return Target(name, kind, "c", "CorpusStorage", "x", lambda **_: None)


def test_only_keeps_every_blob_function_or_none() -> None:
    targets = [target("left"), target("right"), target("copy", "queue"), target("api", "http")]
    assert [t.name for t in select(targets, ())] == ["left", "right", "copy", "api"]
    assert [t.name for t in select(targets, ("copy",))] == ["copy"]  # no blob function: no blob queue
    assert [t.name for t in select(targets, ("left", "right"))] == ["left", "right"]  # the Flex blob group
    with pytest.raises(ConfigError, match=r"but not right: .* Add right to --only"):
        select(targets, ("left", "copy"))
    with pytest.raises(ConfigError, match="--only names lefty, which the app does not have"):
        select(targets, ("lefty",))


def test_the_host_id_is_derived_from_the_app_bounded_and_a_valid_queue_name(tmp_path, monkeypatch) -> None:
    """ScriptHostIdProvider.GetDefaultHostId outside App Service: ``<machine>-<hash of the path>``,
    lower-case, at most 32 characters; ``AzureFunctionsJobHost__id`` overrides it."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (tmp_path / "link").symlink_to(one)
    assert host_id(one, {}) == host_id(one, {}) == host_id(tmp_path / "link", {}) == host_id(two / ".." / "one", {})
    assert host_id(one, {}) != host_id(two, {})
    monkeypatch.setattr(listeners.platform, "node", lambda: "A-Very.Long_Machine-Name-" + "x" * 80)
    long_one, long_two = host_id(one, {}), host_id(two, {})
    assert long_one != long_two  # the hash survives a long machine name
    assert long_one.startswith("averylongmachinename")
    monkeypatch.setattr(listeners.platform, "node", lambda: "---")
    assert host_id(one, {}).startswith("host-")
    for hid in (long_one, long_two, host_id(one, {})):
        assert len(hid) <= 32 and QUEUE_NAME.fullmatch(blob_trigger_queue(hid)), hid
    assert host_id(one, {HOST_ID_SETTING: "corpus-devhost"}) == "corpus-devhost"
    for bad in ("Upper", "a--b", "-a", "a-", "a" * 33, "a_b"):
        with pytest.raises(ConfigError, match=HOST_ID_SETTING):
            host_id(one, {HOST_ID_SETTING: bad})


# -- F5: linear-time template matching ----------------------------------------------------------

TEMPLATE_TEXT = st.text(alphabet="ab-./{}", max_size=8)
NAMES = st.text(alphabet="ab-./{}\n", max_size=12)


@st.composite
def templates(draw: Any) -> str:
    """Templates of up to 4 parameters between short literals (adjacent parameters included)."""
    literals = draw(st.lists(st.text(alphabet="ab-./", max_size=3), min_size=1, max_size=5))
    out = literals[0]
    for i, literal in enumerate(literals[1:]):
        out += f"{{p{i}}}{literal}"
    return out


@settings(max_examples=400, deadline=None)
@given(templates(), NAMES, st.data())
def test_the_matcher_gives_what_the_sdk_s_greedy_regex_gives(template: str, name: str, data: Any) -> None:
    """Property: on any name, the linear matcher and the regex agree on the match and on every capture
    (greedy: the first parameter as long as possible, then the next …). Names are drawn both freely
    and built from the template's own literals, so that most of them match."""
    pattern, regex = blob_name_pattern(template), blob_name_regex(template)
    pieces = data.draw(st.lists(st.text(alphabet="ab-.", max_size=4), min_size=len(pattern.names), max_size=len(pattern.names)))
    built = pattern.literals[0] + "".join(p + lit for p, lit in zip(pieces, pattern.literals[1:], strict=True))
    for candidate in (name, built):
        m = regex.match(candidate)
        assert pattern.match(candidate) == (m.groupdict() if m else None), (template, candidate)
    assert pattern.match(built) is not None


class Counting(str):
    """A name that counts the string searches made on it."""

    searches = 0

    def startswith(self, *a: Any) -> bool:  # type: ignore[override]
        Counting.searches += 1
        return super().startswith(*a)

    def endswith(self, *a: Any) -> bool:  # type: ignore[override]
        Counting.searches += 1
        return super().endswith(*a)

    def rfind(self, *a: Any) -> int:  # type: ignore[override]
        Counting.searches += 1
        return super().rfind(*a)

    def find(self, *a: Any) -> int:  # type: ignore[override]
        Counting.searches += 1
        return super().find(*a)


@pytest.mark.parametrize(
    ("template", "hostile"),
    [
        ("{a}-{b}-{c}-{d}.jpg", "-" * 1024),  # the regex backtracks O(n^4) here: 0.4 s at 200 characters
        ("{a}-{b}-{c}.jpg", "-" * 1023 + "x"),
        ("{a}-{b}-{c}-{d}.jpg", "-" * 1019 + ".jpg"),  # this one matches
    ],
)
def test_a_hostile_1024_character_name_costs_a_bounded_number_of_searches(template: str, hostile: str) -> None:
    """Review 27 F5: each parameter a greedy ``(.*)`` made a near-miss name cost polynomial time, on
    every listing. The matcher makes at most one search per literal, whatever the name (each search
    is linear in the name), and gives the regex's answer."""
    pattern = blob_name_pattern(template)
    Counting.searches = 0
    result = pattern.match(Counting(hostile))
    assert Counting.searches <= pattern.probes == len(pattern.literals) + 1
    expected = {"a": "-" * 1016, "b": "", "c": "", "d": ""} if hostile.endswith(".jpg") else None
    assert result == expected


def test_a_delivered_blob_is_not_matched_again() -> None:
    """Subscription.wants looks the receipt up first: a blob whose version was delivered costs a
    dict lookup on every listing, never a match; only a new or changed one is matched."""
    matched: list[str] = []

    class Spy:
        def match(self, name: str) -> dict[str, str] | None:
            matched.append(name)
            return {"name": name}

    sub = Subscription(target("ingest"), Spy(), "test", {"a.jpg": "0x1"})  # type: ignore[arg-type]
    assert not sub.wants("a.jpg", "0x1")
    assert matched == []
    assert sub.wants("a.jpg", "0x2") and sub.wants("b.jpg", "0x1")
    assert matched == ["a.jpg", "b.jpg"]


# -- F6: FunctionId and binding data as the extension has them ----------------------------------


def test_function_ids_and_binding_data_as_the_extension_reads_them(clients, tmp_path) -> None:
    """Only a null (or missing) FunctionId, or one Newtonsoft cannot read as a string, throws; an
    empty one, or a number, is looked up and dropped. The template's values override the built-in
    binding data case-insensitively: ``{uri}`` replaces ``Uri``."""
    clients.blob.create_container("drop")
    clients.container("drop").upload_blob("b.jpg", b"bytes")
    seen: list[Any] = []
    fn = Target("f", "blob", "drop", "CorpusStorage", "blob", lambda blob: seen.append(blob), path="{uri}")
    stats = Stats(None)
    listener = BlobQueueListener(
        [BlobRegistration.of(fn, clients)], clients, BlobConfig(4, 3), stats, HostOptions(app_dir=tmp_path), Worker(2), "test"
    )

    def invoke(body: Any) -> bool:
        raw = body if isinstance(body, str) else json.dumps(body)
        return listener._invoke(SimpleNamespace(id="m", dequeue_count=1), _Lease("m", "r"), raw)

    blob = {"Type": "BlobTrigger", "ContainerName": "drop", "BlobName": "b.jpg"}
    assert invoke({**blob, "FunctionId": ""}) is True
    assert invoke({**blob, "FunctionId": 5}) is True
    assert invoke({"FunctionId": "Host.Functions.gone"}) is True  # looked up before the blob's fields
    assert [d["function_id"] for d in stats.summary()["dropped"]] == ["", "5", "Host.Functions.gone"]
    for bad in ({**blob, "FunctionId": None}, blob, {**blob, "FunctionId": {}}, {**blob, "FunctionId": []}, "[]", "null"):
        assert invoke(bad) is False, bad  # a failed attempt: retried, then poisoned
    assert invoke({"FunctionId": fn.function_id, "ContainerName": "drop"}) is False  # no BlobName
    assert seen == []

    assert invoke({**blob, "FunctionId": fn.function_id}) is True
    (received,) = seen
    assert received.uri == "b.jpg"  # the template's {uri}, under the built-in name Uri
    assert received.name == "drop/b.jpg"

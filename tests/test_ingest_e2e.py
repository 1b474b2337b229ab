"""End to end: staging → ImageSet → original/, through ``corpus host`` on a real Azurite."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest
from azure.storage.blob import BlobBlock, ContentSettings

from corpus.app import ingest
from corpus.app.runtime import Runtime
from corpus.devhost.listeners import host_id, receipts_partition
from corpus.domain import keys
from corpus.domain.messages import CopyRequest
from corpus.domain.paths import SetRef
from corpus.store.catalog import Catalog
from corpus.store.hostconfig import load_blob_config, load_queue_config
from corpus.store.rows import ValidationRow, as_int
from corpus.store.storage import Clients
from tests.support import at_once, host_command, jpeg, max_overlap, png, prepare_app_dir, run_cli, run_host, wait_for

pytestmark = pytest.mark.e2e


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def staging(clients: Clients):
    return clients.container("staging")


def originals(clients: Clients, domain: str) -> dict[str, str]:
    """name → hex MD5 property of every blob under original/ in a domain container."""
    return {
        b.name: bytes(b.content_settings.content_md5 or b"").hex()
        for b in clients.container(domain).list_blobs(name_starts_with="original/")
    }


def sets_json(env: dict[str, str], cwd: Path, *args: str) -> list[dict]:
    proc = run_cli(env, cwd, "sets", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_plain_sdk_upload_becomes_an_original_in_its_set(env, clients, app_dir, tmp_path):
    red, blue = jpeg(1), png(2)
    st = staging(clients)
    # What Storage Explorer and a plain script do: a single Put Blob with whatever content type,
    st.upload_blob(
        "birds/v1/Red/Angry /robin/a.jpg", red, content_settings=ContentSettings(content_type="application/octet-stream")
    )
    # and a block upload of a larger file, which leaves no whole-blob MD5 on the blob.
    block = st.get_blob_client("birds/v1/blue/b.png")
    block.stage_block("000", blue[:100])
    block.stage_block("001", blue[100:])
    block.commit_block_list([BlobBlock("000"), BlobBlock("001")])
    assert block.get_blob_properties().content_settings.content_md5 is None

    run_host(env, app_dir)

    got = originals(clients, "birds")
    assert got == {"original/Red/Angry /robin/v1/a.jpg": md5(red), "original/blue/v1/b.png": md5(blue)}
    a = clients.container("birds").get_blob_client("original/Red/Angry /robin/v1/a.jpg")
    assert a.download_blob().readall() == red
    assert a.get_blob_properties().content_settings.content_type == "image/jpeg"
    assert list(st.list_blobs()) == []

    rows = {r["path"]: r for r in sets_json(env, tmp_path, "--domain", "birds")}
    assert set(rows) == {"Red/Angry /robin", "blue"}
    robin = rows["Red/Angry /robin"]
    assert robin["tags"] == ["red", "angry", "robin"]
    assert (robin["images"], robin["bytes"], robin["version"]) == (1, len(red), "v1")
    assert robin["blob_path"] == "original/Red/Angry /robin/v1/"
    assert (rows["blue"]["images"], rows["blue"]["bytes"]) == (1, len(blue))
    # Tag queries are case-insensitive and need every tag.
    assert [r["path"] for r in sets_json(env, tmp_path, "--tag", "ANGRY", "--tag", "robin")] == ["Red/Angry /robin"]
    assert sets_json(env, tmp_path, "--tag", "angry", "--tag", "blue") == []

    entity = clients.table_client("ImageSets").get_entity(
        "birds", keys.set_row_key(SetRef("birds", ("Red", "Angry ", "robin"), "v1"))
    )
    assert entity["TransformPartitionKey"] == "" and entity["TransformRowKey"] == ""
    assert entity["Domain"] == "birds" and json.loads(entity["Tags"]) == ["red", "angry", "robin"]
    image = clients.table_client("Images").get_entity(entity["ImagesPartitionKey"], keys.image_row_key("a.jpg"))
    assert (as_int(image["Size"]), image["MD5"], image["ContentType"], image["Width"], image["Height"]) == (
        len(red),
        md5(red),
        "image/jpeg",
        64,
        48,
    )


def test_root_set_has_no_double_slash(env, clients, app_dir, tmp_path):
    data = jpeg(3)
    staging(clients).upload_blob("cats/2024.1/top.jpg", data)
    run_host(env, app_dir)
    assert originals(clients, "cats") == {"original/2024.1/top.jpg": md5(data)}
    (row,) = sets_json(env, tmp_path, "--domain", "cats")
    assert (row["path"], row["tags"], row["images"], row["blob_path"]) == ("<root>", [], 1, "original/2024.1/")


def _snapshot(clients: Clients, domain: str) -> dict:
    sets = sorted(
        (r["Path"], r["Version"], r["Tags"], as_int(r["ImageCount"]), as_int(r["TotalBytes"]), r["BlobPath"])
        for r in clients.table_client("ImageSets").query_entities(
            "PartitionKey eq @d and RowKey lt @x", parameters={"d": domain, "x": keys.SETS_UPPER}
        )
    )
    rows = [r for r in clients.table_client("Images").list_entities() if r["PartitionKey"].startswith(domain + "!")]
    images = sorted((r["RowKey"], r["MD5"], as_int(r["Size"])) for r in rows if not r["RowKey"].startswith(keys.COUNTER_PREFIX))
    counted = sum(as_int(r["Count"]) for r in rows if r["RowKey"].startswith(keys.COUNTER_PREFIX))
    assert counted == len(images)  # the counter shards agree with the records
    return {"sets": sets, "images": images, "originals": originals(clients, domain)}


def _drop(clients: Clients, domain: str, n: int) -> None:
    st = staging(clients)
    for i in range(n):
        st.upload_blob(f"{domain}/v1/{['a', 'b/c', 'd'][i % 3]}/img{i}.jpg", jpeg(i))


@pytest.mark.parametrize("mode", ["direct", "queued"])
def test_every_event_and_message_delivered_twice_gives_the_same_result(env, clients, app_dir, mode):
    env = {**env, "CORPUS_INGEST": mode}
    copier = "ingest_staged_blob" if mode == "direct" else "copy_to_original"
    _drop(clients, "once", 30)
    first = run_host(env, app_dir)
    assert first["ok"][copier] == 30
    _drop(clients, "twice", 30)
    second = run_host(env, app_dir, "--deliver-twice")
    if mode == "queued":
        assert second["ok"]["ingest_staged_blob"] == 60 and second["ok"]["copy_to_original"] >= 60  # really twice
    else:
        # The host reads the blob before each delivery: a second one after the first finished finds
        # it gone and invokes nothing (Azure's BlobQueueTriggerExecutor too); the in-memory tests
        # (test_ingest_copy_modes.py) deliver the same bytes twice and concurrently.
        assert second["ok"]["ingest_staged_blob"] >= 30
        assert "copy_to_original" not in second["ok"]
    once, twice = _snapshot(clients, "once"), _snapshot(clients, "twice")
    assert once["sets"] == twice["sets"]
    assert once["images"] == twice["images"]
    assert {k: v for k, v in once["originals"].items()} == twice["originals"]
    assert [r[3] for r in once["sets"]] == [10, 10, 10]
    assert list(staging(clients).list_blobs()) == []
    assert not list(clients.table_client("Validations").list_entities())  # every record forgotten, or never written


def test_same_copy_message_concurrently_counts_once(rt: Runtime, clients):
    data = jpeg(7)
    staging(clients).upload_blob("race/v1/x/y.jpg", data)
    blob = staging(clients).get_blob_client("race/v1/x/y.jpg")
    etag = blob.get_blob_properties().etag
    assert ingest.on_staged_blob(rt, ingest.StagedBlob("race/v1/x/y.jpg", data, etag, {}), "queued") == "queued"
    body = clients.queue_client("copy-requests").receive_message().content
    req = CopyRequest.parse(body)
    results = at_once(lambda: ingest.on_copy_request(rt, req), 8)
    assert results.count("copied") == 1 and set(results) <= {"copied", "exists"}
    row = rt.catalog.sets.get(SetRef("race", ("x",), "v1"))
    assert row is not None and (row.image_count, row.total_bytes) == (1, len(data))
    assert rt.catalog.images.count(SetRef("race", ("x",), "v1")) == (1, len(data))
    # And once more, after the staged blob is gone: still one.
    assert ingest.on_copy_request(rt, req) == "exists"
    assert rt.catalog.images.count(SetRef("race", ("x",), "v1")) == (1, len(data))


def test_same_blob_event_concurrently_in_direct_mode_counts_once(rt: Runtime, clients):
    """CORPUS_INGEST=direct on Azurite: 8 deliveries of one blob event at once (the host can run a
    redelivery while the first is still copying), then one more: one copy, one record, one count."""
    data = jpeg(8)
    staging(clients).upload_blob("race/v1/d/z.jpg", data)
    etag = staging(clients).get_blob_client("race/v1/d/z.jpg").get_blob_properties().etag
    event = ingest.StagedBlob("race/v1/d/z.jpg", data, etag, {}, "BlockBlob")
    results = at_once(lambda: ingest.on_staged_blob(rt, event, "direct"), 8)
    assert results.count("copied") == 1 and set(results) <= {"copied", "exists"}, results
    assert ingest.on_staged_blob(rt, event, "direct") == "exists"
    ref = SetRef("race", ("d",), "v1")
    assert rt.catalog.images.count(ref) == (1, len(data))
    row = rt.catalog.sets.get(ref)
    assert row is not None and (row.image_count, row.total_bytes) == (1, len(data))
    assert originals(clients, "race") == {"original/d/v1/z.jpg": md5(data)}
    assert list(staging(clients).list_blobs()) == []
    assert not list(clients.table_client("Validations").list_entities())


@pytest.mark.parametrize("mode", ["direct", "queued"])
def test_200_images_into_one_set_exact_count_and_throttle(env, clients, tmp_path, mode):
    """Copies are bounded per instance by the function that runs them: the blob trigger's
    ``maxDegreeOfParallelism`` (direct) or the copy queue's ``batchSize + newBatchThreshold``."""
    app = prepare_app_dir(tmp_path, {"batchSize": 8, "newBatchThreshold": 4})
    host = json.loads((app / "host.json").read_text())
    host["extensions"]["blobs"]["maxDegreeOfParallelism"] = 6
    (app / "host.json").write_text(json.dumps(host))
    cap = (
        load_queue_config(app / "host.json").max_concurrency
        if mode == "queued"
        else load_blob_config(app / "host.json").max_degree_of_parallelism
    )
    assert cap == (12 if mode == "queued" else 6)
    st = staging(clients)
    sizes = 0
    for i in range(200):
        data = jpeg(1000 + i)
        sizes += len(data)
        st.upload_blob(f"flock/v2/sky/img{i:03d}.jpg", data)
    trace = tmp_path / "trace.jsonl"
    run_host({**env, "CORPUS_INGEST": mode}, app, "--trace", str(trace))
    entity = clients.table_client("ImageSets").get_entity("flock", keys.set_row_key(SetRef("flock", ("sky",), "v2")))
    assert (as_int(entity["ImageCount"]), as_int(entity["TotalBytes"])) == (200, sizes)
    assert len(originals(clients, "flock")) == 200
    observed = max_overlap(trace, "ingest_staged_blob" if mode == "direct" else "copy_to_original")
    assert 1 < observed <= cap, f"observed {observed} copies in flight, cap {cap}"


def test_sigkill_mid_ingest_then_restart_is_exactly_once(env, clients, tmp_path):
    app = prepare_app_dir(tmp_path)
    st = staging(clients)
    expected: dict[str, str] = {}
    total = 0
    for i in range(500):
        data = jpeg(5000 + i, size=(32, 24))
        total += len(data)
        st.upload_blob(f"kill/v1/{['x', 'y'][i % 2]}/img{i:03d}.jpg", data)
        expected[f"original/{['x', 'y'][i % 2]}/v1/img{i:03d}.jpg"] = md5(data)
    proc = subprocess.Popen(host_command(app, "--lease", "3"), env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        # Each look lists the container (hundreds of blobs): every 0.5 s, not 20 times a second, or the
        # test's own listings take Azurite's (one) thread from the host it is waiting for.
        wait_for(
            lambda: len(originals(clients, "kill")) >= 120 if clients.container("kill").exists() else False,
            180,
            "120 originals",
            interval=0.5,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = len(originals(clients, "kill"))
    assert partial < 500, "the host finished before it could be killed; the test proves nothing"

    run_host(env, app, "--lease", "3")

    assert originals(clients, "kill") == expected
    assert list(st.list_blobs()) == []
    for d in ("x", "y"):
        ref = SetRef("kill", (d,), "v1")
        entity = clients.table_client("ImageSets").get_entity("kill", keys.set_row_key(ref))
        assert as_int(entity["ImageCount"]) == 250
    counted = sum(
        as_int(clients.table_client("ImageSets").get_entity("kill", keys.set_row_key(SetRef("kill", (d,), "v1")))["TotalBytes"])
        for d in ("x", "y")
    )
    assert counted == total


def test_bad_input_ends_where_the_user_can_find_it(env, clients, app_dir, tmp_path):
    st = staging(clients)
    good = jpeg(9)
    full = jpeg(10, size=(256, 256))
    truncated = full[: len(full) // 2]
    bad = {
        "birds/v1/notes/readme.jpg": (b"this is not an image at all", "not a recognised image"),
        "birds/v1/broken/cut.jpg": (truncated, "corrupt or truncated"),
        "birds/onlytwo.jpg": (good, "too few path segments"),
        # ('..' segments can't even be uploaded: HTTP clients normalise them away; see test_paths.)
        "Birds_X/v1/a.jpg": (good, "invalid domain"),
        "birds/v@1/a.jpg": (good, "invalid version"),
        "staging/v1/a.jpg": (good, "used by the pipeline"),
        "birds/v1/a//b.jpg": (good, "empty path segment"),
    }
    for name, (data, _) in bad.items():
        st.upload_blob(name, data)
    junk = ["birds/v1/x/.DS_Store", "birds/v1/x/Thumbs.db", "birds/v1/x/desktop.ini", "birds/v1/x/empty.jpg"]
    for name in junk:
        st.upload_blob(name, b"" if name.endswith("empty.jpg") else b"junk")
    st.upload_blob("birds/v1/folder", b"", metadata={"hdi_isfolder": "true"})
    odd = ["birds/v1/ünïcode dir/naïve #1?.jpg", "birds/v1/100% real/sp ace.jpg", "birds/v1/q?/a#b.jpg"]
    for i, name in enumerate(odd):
        st.upload_blob(name, jpeg(20 + i))

    run_host(env, app_dir)

    assert list(st.list_blobs()) == []
    rejections = {r["Name"]: r for r in clients.table_client("Rejections").query_entities("PartitionKey eq 'rejected'")}
    assert set(rejections) == set(bad)
    kept = clients.container("rejected")
    for name, (data, reason) in bad.items():
        assert reason in rejections[name]["Reason"], (name, rejections[name]["Reason"])
        assert kept.get_blob_client(name).download_blob().readall() == data
    junk_rows = {r["Name"] for r in clients.table_client("Rejections").query_entities("PartitionKey eq 'junk'")}
    assert junk_rows == {*junk, "birds/v1/folder"}
    paths = {r["path"] for r in sets_json(env, tmp_path, "--domain", "birds")}
    assert paths == {"ünïcode dir", "100% real", "q?"}
    assert set(originals(clients, "birds")) == {
        "original/ünïcode dir/v1/naïve #1?.jpg",
        "original/100% real/v1/sp ace.jpg",
        "original/q?/v1/a#b.jpg",
    }

    status = run_cli(env, tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["rejected"]["count"] == len(bad) and report["junk_removed"] == 5 and report["staged"] == 0
    text = run_cli(env, tmp_path, "status").stdout
    assert "birds/v1/broken/cut.jpg: corrupt or truncated" in text


def test_decompression_bomb_is_rejected_by_the_pixel_cap(env, clients, app_dir):
    staging(clients).upload_blob("bombs/v1/big.png", png(1, size=(300, 300)))
    run_host({**env, "CORPUS_MAX_PIXELS": "50000"}, app_dir)
    row = clients.table_client("Rejections").get_entity("rejected", keys.escape("bombs/v1/big.png"))
    assert "above the cap of 50000" in row["Reason"]
    assert not clients.container("bombs").exists()


def test_conflicting_reupload_is_rejected_and_identical_one_is_a_no_op(env, clients, app_dir, tmp_path):
    first, other = jpeg(30), jpeg(31)
    st = staging(clients)
    st.upload_blob("dogs/v1/pug/a.jpg", first)
    run_host(env, app_dir)
    original = clients.container("dogs").get_blob_client("original/pug/v1/a.jpg")
    etag = original.get_blob_properties().etag

    st.upload_blob("dogs/v1/pug/a.jpg", other)  # different content, same version: refused
    run_host(env, app_dir)
    assert original.download_blob().readall() == first
    assert original.get_blob_properties().etag == etag
    row = clients.table_client("Rejections").get_entity("rejected", keys.escape("dogs/v1/pug/a.jpg"))
    assert row["Reason"].startswith("conflict:") and "immutable" in row["Reason"]
    assert clients.container("rejected").get_blob_client("dogs/v1/pug/a.jpg").download_blob().readall() == other

    st.upload_blob("dogs/v1/pug/a.jpg", first)  # identical content: accepted, nothing changes
    run_host(env, app_dir)
    assert original.get_blob_properties().etag == etag
    assert list(st.list_blobs()) == []
    (row,) = sets_json(env, tmp_path, "--domain", "dogs")
    assert (row["images"], row["bytes"]) == (1, len(first))


def test_malformed_and_undecodable_messages_are_poisoned_with_a_reason(env, clients, app_dir, tmp_path):
    q = clients.queue_client("copy-requests")
    q.send_message('{"kind": "copy", "v": 1, "staged_name": "x"}')
    q.send_message("!!! not json, not base64 !!!")
    summary = run_host(env, app_dir)
    assert summary["ok"]["copy_to_original_poisoned"] == 2  # the poison queue's recorder took both
    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    assert report["queues"]["copy-requests-poison"] == 0
    bodies = sorted(f.body for f in Catalog(clients).failures.list())
    assert bodies == sorted(['{"kind": "copy", "v": 1, "staged_name": "x"}', "!!! not json, not base64 !!!"])
    reasons = sorted(f["Reason"] for f in report["failures"]["latest"])
    assert any("missing field 'staged_etag'" in r for r in reasons) and any("neither JSON nor base64" in r for r in reasons)


def test_failing_copy_retries_then_poisons_after_max_dequeue(env, rt, clients, tmp_path):
    """A validation record whose MD5 does not match the staged bytes fails verification on every attempt."""
    app = prepare_app_dir(tmp_path, {"maxDequeueCount": 2, "visibilityTimeout": "00:00:00"})
    data = jpeg(40)
    staging(clients).upload_blob("fail/v1/a.jpg", data)
    etag = staging(clients).get_blob_client("fail/v1/a.jpg").get_blob_properties().etag
    rt.catalog.validations.record(ValidationRow("fail/v1/a.jpg", etag, len(data), "0" * 32, "image/jpeg", 64, 48, "JPEG"))
    req = CopyRequest("fail/v1/a.jpg", etag)
    clients.queue_client("copy-requests").send_message(req.to_json())
    # Only this request should run: record the blob as delivered, as the host does after a delivery.
    receipts = clients.table.create_table_if_not_exists("DevHostBlobReceipts")
    receipts.create_entity(
        {
            "PartitionKey": receipts_partition(host_id(app, env), "ingest_staged_blob", "staging"),
            "RowKey": keys.escape("fail/v1/a.jpg"),
            "Name": "fail/v1/a.jpg",
            "ETag": etag,
        }
    )
    summary = run_host(env, app)
    assert summary["failed"]["copy_to_original"] == 2
    assert summary["ok"]["copy_to_original_poisoned"] == 1  # recorded (nothing new: the row below is the app's)
    assert clients.queue_client("copy-requests-poison").get_queue_properties().approximate_message_count == 0
    (failure,) = list(clients.table_client("Failures").list_entities())
    assert failure["Final"] is True and failure["Attempts"] == 2 and "did not verify" in failure["Reason"]
    assert not clients.container("fail").get_blob_client("original/v1/a.jpg").exists()  # the bad copy is gone
    assert staging(clients).get_blob_client("fail/v1/a.jpg").exists()  # and nothing was lost


def test_cli_errors_are_one_line_and_non_zero(env, tmp_path):
    proc = run_cli(
        {
            **env,
            "CorpusStorage": "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;BlobEndpoint=http://127.0.0.1:9/x;QueueEndpoint=http://127.0.0.1:9/x;TableEndpoint=http://127.0.0.1:9/x;",
        },
        tmp_path,
        "status",
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("corpus: error: cannot reach storage") and proc.stderr.count("\n") == 1

"""End to end: transform requests → transformed ImageSets under transform/, through ``corpus host``."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from corpus.domain import keys
from corpus.domain.paths import SetRef
from corpus.store.catalog import Catalog
from corpus.store.hostconfig import load_queue_config
from corpus.store.rows import as_int
from tests.support import ingest, max_overlap, photo, prepare_app_dir, run_cli, run_host

pytestmark = pytest.mark.e2e

THUMB = (
    '{"domain": "birds", "source": {"path": "red/robin", "version": "v1"},'
    ' "transform": {"name": "thumbnail", "version": "1", "args": {"size": 64}}}'
)


def blobs(clients, domain: str, prefix: str) -> dict[str, tuple[str, int]]:
    return {b.name: (b.etag, b.size) for b in clients.container(domain).list_blobs(name_starts_with=prefix)}


def test_hand_written_plain_json_request_produces_the_transformed_set(env, clients, app_dir, tmp_path):
    ingest(
        env,
        clients,
        app_dir,
        {f"birds/v1/red/robin/{i}.jpg": photo(i) for i in range(5)} | {"birds/v1/red/robin/x.png.jpg": photo(9)},
    )
    clients.queue_client("transform-requests").send_message(THUMB)  # exactly what one types in Storage Explorer
    summary = run_host(env, app_dir)
    assert summary["ok"]["transform_job"] == 6

    got = blobs(clients, "birds", "transform/")
    assert set(got) == {f"transform/thumbnail/1/red/robin/v1/{i}.jpg" for i in range(5)} | {
        "transform/thumbnail/1/red/robin/v1/x.png.jpg.jpg"  # injective naming: x.png would get x.png.jpg
    }
    thumb = Image.open(
        io.BytesIO(
            clients.container("birds").get_blob_client("transform/thumbnail/1/red/robin/v1/0.jpg").download_blob().readall()
        )
    )
    assert thumb.size == (64, 48) and thumb.format == "JPEG"

    ref = SetRef("birds", ("red", "robin"), "v1")
    tset = clients.table_client("ImageSets").get_entity("birds", keys.set_row_key(ref, ("thumbnail", "1")))
    assert (as_int(tset["ImageCount"]), as_int(tset["TotalBytes"])) == (6, sum(size for _, size in got.values()))
    assert json.loads(tset["Tags"]) == ["red", "robin"] and tset["BlobPath"] == "transform/thumbnail/1/red/robin/v1/"
    tr = clients.table_client("ImageTransforms").get_entity(tset["TransformPartitionKey"], tset["TransformRowKey"])
    assert (tr["Name"], tr["Version"], json.loads(tr["Args"])) == ("thumbnail", "1", {"size": 64})
    row = clients.table_client("Images").get_entity(tset["ImagesPartitionKey"], keys.image_row_key("3.jpg"))
    assert (row["Width"], row["Height"], row["Source"]) == (64, 48, "original/red/robin/v1/3.jpg")

    rows = json.loads(run_cli(env, tmp_path, "sets", "--transform", "thumbnail:1", "--json").stdout)
    assert [(r["path"], r["images"], r["transform"]) for r in rows] == [("red/robin", 6, "thumbnail:1")]

    # The same request again: nothing to do, nothing rewritten.
    clients.queue_client("transform-requests").send_message(THUMB)
    again = run_host(env, app_dir)
    assert again["ok"].get("transform_job", 0) == 0
    assert blobs(clients, "birds", "transform/") == got
    assert (
        as_int(clients.table_client("ImageSets").get_entity("birds", keys.set_row_key(ref, ("thumbnail", "1")))["ImageCount"])
        == 6
    )

    # Images added to the source version later are brought up to date by re-requesting.
    ingest(env, clients, app_dir, {"birds/v1/red/robin/late.jpg": photo(20)})
    clients.queue_client("transform-requests").send_message(THUMB)
    late = run_host(env, app_dir)
    assert late["ok"]["transform_job"] == 1
    assert (
        as_int(clients.table_client("ImageSets").get_entity("birds", keys.set_row_key(ref, ("thumbnail", "1")))["ImageCount"])
        == 7
    )


def test_base64_message_from_storage_explorer_works_too(env, clients, app_dir):
    ingest(env, clients, app_dir, {"birds/v1/red/robin/a.jpg": photo(1)})
    clients.queue_client("transform-requests").send_message(base64.b64encode(THUMB.encode()).decode())
    run_host(env, app_dir)
    assert set(blobs(clients, "birds", "transform/")) == {"transform/thumbnail/1/red/robin/v1/a.jpg"}


def test_conflicting_arguments_for_an_existing_version_are_refused_visibly(env, clients, app_dir, tmp_path):
    ingest(env, clients, app_dir, {"birds/v1/red/robin/a.jpg": photo(1)})
    q = clients.queue_client("transform-requests")
    q.send_message(THUMB)
    run_host(env, app_dir)
    before = blobs(clients, "birds", "transform/")
    q.send_message(THUMB.replace('"size": 64', '"size": 128'))
    run_host(env, app_dir)
    assert blobs(clients, "birds", "transform/") == before
    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    assert report["queues"]["transform-requests-poison"] == 0  # taken by its recorder; the row below stays
    (failure,) = report["failures"]["latest"]
    assert "already exists with" in failure["Reason"] and "immutable" in failure["Reason"]
    assert "already exists with" in run_cli(env, tmp_path, "status").stdout


def test_corrupt_source_poisons_only_its_own_job(env, clients, tmp_path):
    app = prepare_app_dir(tmp_path, {"maxDequeueCount": 2, "visibilityTimeout": "00:00:00"})
    ingest(env, clients, app, {f"birds/v1/red/robin/{i}.jpg": photo(i) for i in range(4)})
    # Damage one original behind the pipeline's back (as a direct write to the container would).
    bad = clients.container("birds").get_blob_client("original/red/robin/v1/2.jpg")
    bad.upload_blob(b"\xff\xd8\xff garbage", overwrite=True)
    clients.queue_client("transform-requests").send_message(THUMB)
    summary = run_host(env, app)
    assert summary["failed"]["transform_job"] == 2
    assert set(blobs(clients, "birds", "transform/")) == {f"transform/thumbnail/1/red/robin/v1/{i}.jpg" for i in (0, 1, 3)}
    assert summary["ok"]["transform_job_poisoned"] == 1  # the host's poison copy, taken by its recorder
    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    assert report["queues"]["transform-jobs-poison"] == 0
    (failure,) = report["failures"]["latest"]
    assert json.loads(Catalog(clients).failures.list()[0].body)["file"] == "2.jpg"
    assert failure["Source"] == "transform-jobs" and failure["Attempts"] == 2 and "ImageError" in failure["Reason"]


def test_tag_selected_request_covers_exactly_the_matching_sets(env, clients, app_dir, tmp_path):
    files = {
        "birds/v1/red/angry/robin/a.jpg": photo(1),
        "birds/v1/Red/calm/jay/b.jpg": photo(2),
        "birds/v1/blue/angry/jay/c.jpg": photo(3),
        "birds/v2/red/angry/robin/d.jpg": photo(4),
        "cats/v1/red/angry/e.jpg": photo(5),
    }
    ingest(env, clients, app_dir, files)
    req = {"domain": "birds", "source": {"tags": ["RED"], "version": "v1"}, "transform": {"name": "grayscale", "version": "a"}}
    clients.queue_client("transform-requests").send_message(json.dumps(req))
    run_host(env, app_dir)
    assert set(blobs(clients, "birds", "transform/")) == {
        "transform/grayscale/a/red/angry/robin/v1/a.jpg",
        "transform/grayscale/a/Red/calm/jay/v1/b.jpg",
    }
    rows = json.loads(run_cli(env, tmp_path, "sets", "--transform", "grayscale", "--json").stdout)
    assert sorted(r["path"] for r in rows) == ["Red/calm/jay", "red/angry/robin"]
    assert list(clients.container("cats").list_blobs(name_starts_with="transform/")) == []


def test_transform_jobs_in_flight_never_exceed_the_cap(env, clients, tmp_path):
    app = prepare_app_dir(tmp_path, {"batchSize": 4, "newBatchThreshold": 2})
    cap = load_queue_config(app / "host.json").max_concurrency
    ingest(env, clients, app, {f"birds/v1/red/robin/{i:03d}.jpg": photo(i, size=(640, 480)) for i in range(60)})
    trace = tmp_path / "trace.jsonl"
    clients.queue_client("transform-requests").send_message(THUMB)
    summary = run_host(env, app, "--trace", str(trace))
    assert summary["ok"]["transform_job"] == 60
    observed = max_overlap(trace, "transform_job")
    assert 1 < observed <= cap, f"{observed} jobs in flight, cap {cap}"


def test_host_honours_base64_message_encoding(env, clients, tmp_path):
    """With messageEncoding base64 (the Functions default) bodies are decoded; plain text is poisoned."""
    app = prepare_app_dir(tmp_path, {"messageEncoding": "base64"})
    ingest(env, clients, app, {"birds/v1/red/robin/a.jpg": photo(1)})
    q = clients.queue_client("transform-requests")
    q.send_message(base64.b64encode(THUMB.encode()).decode())
    q.send_message("{not base64}")
    run_host(env, app)
    assert set(blobs(clients, "birds", "transform/")) == {"transform/thumbnail/1/red/robin/v1/a.jpg"}
    # Not base64: poisoned by the host, and its poison queue's recorder cannot decode it either; a
    # *-poison queue has no poison queue, so it stays there (invisible while leased), until its TTL.
    assert clients.queue_client("transform-requests-poison").get_queue_properties().approximate_message_count == 1
    assert clients.queue_client("transform-requests-poison-poison").get_queue_properties().approximate_message_count == 0


def test_a_duplicate_job_repairs_a_count_its_first_delivery_left_behind(env, clients, app_dir):
    """Group commit may defer a count refresh to a leader that then dies; the redelivered job finds
    its image recorded and must still leave the set's count exact."""
    from azure.data.tables import UpdateMode

    from corpus.domain.messages import TransformJob
    from corpus.store.rows import int64

    ingest(env, clients, app_dir, {"birds/v1/red/robin/a.jpg": photo(1), "birds/v1/red/robin/b.jpg": photo(2)})
    clients.queue_client("transform-requests").send_message(THUMB)
    run_host(env, app_dir)
    sets = clients.table_client("ImageSets")
    rk = keys.set_row_key(SetRef("birds", ("red", "robin"), "v1"), ("thumbnail", "1"))
    assert as_int(sets.get_entity("birds", rk)["ImageCount"]) == 2
    # The state a dead leader leaves: both images recorded and counted in the shards, the set's count behind.
    sets.update_entity(
        {"PartitionKey": "birds", "RowKey": rk, "ImageCount": int64(0), "TotalBytes": int64(0)}, mode=UpdateMode.MERGE
    )
    job = TransformJob("birds", ("red", "robin"), "v1", "a.jpg", "thumbnail", "1")
    clients.queue_client("transform-jobs").send_message(job.to_json())
    summary = run_host(env, app_dir)
    assert summary["ok"]["transform_job"] == 1
    assert as_int(sets.get_entity("birds", rk)["ImageCount"]) == 2

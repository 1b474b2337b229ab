"""Every use case on the in-memory store (``Runtime.in_memory``): the same code as the function app,
no Azurite, milliseconds per test. The e2e tests on Azurite remain the reference; the conformance
suite (test_store_conformance.py) is what makes these results carry over.

``drain`` plays the Functions host: it takes messages off the in-memory queues and calls the same
use-case functions ``function_app.py`` binds to them, until every queue is empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import pytest

from corpus.app import ingest
from corpus.app.dispatch import queue_handlers
from corpus.app.exports import index_path, on_export_message
from corpus.app.gallery import domain_page
from corpus.app.reconcile import reconcile
from corpus.app.renditions import serve_preview
from corpus.app.runtime import Runtime
from corpus.app.views import SetSelector, page_images
from corpus.app.web import Request
from corpus.domain.exports import ExportParams, ExportRequest, parse_export_message
from corpus.domain.messages import CopyRequest
from corpus.domain.paths import SetRef
from corpus.domain.trainsets import TrainsetRequest
from corpus.store.memory import MemoryBlobStore, MemoryOutbox
from tests.support import jpeg


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime.in_memory()
    runtime.ensure_resources()
    return runtime


handlers = queue_handlers


def drain(rt: Runtime) -> int:
    """Run every queued message through its use case until the queues are empty; how many ran."""
    assert isinstance(rt.outbox, MemoryOutbox)
    ran = 0
    for _ in range(10_000):
        busy = False
        for queue, handle in handlers(rt).items():
            for msg in rt.outbox.receive(queue, max_messages=32):
                handle(msg.text)
                rt.outbox.delete(queue, msg)
                ran += 1
                busy = True
        if not busy:
            return ran
    raise AssertionError("the queues never drained")


def stage(rt: Runtime, name: str, data: bytes, mode: str | None = None) -> ingest.StagedOutcome:
    """Upload into staging and deliver the blob trigger's event, as the host would (``mode``:
    ``CORPUS_INGEST``, default ``direct``)."""
    info = rt.blobs.put(rt.settings.staging_container, name, data)
    return ingest.on_staged_blob(rt, ingest.StagedBlob(name, data, info.etag, {}, "BlockBlob"), mode)


def blobs_of(rt: Runtime) -> MemoryBlobStore:
    assert isinstance(rt.blobs, MemoryBlobStore)
    return rt.blobs


@pytest.mark.parametrize(("mode", "outcome", "messages"), [("direct", "copied", 0), ("queued", "queued", 1)])
def test_ingest_validates_copies_records_and_clears_staging(rt: Runtime, mode: str, outcome: str, messages: int) -> None:
    data = jpeg(1)
    assert stage(rt, "birds/v1/red/a.jpg", data, mode) == outcome
    assert stage(rt, "birds/v1/red/.DS_Store", b"junk", mode) == ingest.StagedOutcome.JUNK
    assert stage(rt, "birds/v1/red/b.jpg", b"not an image", mode) == ingest.StagedOutcome.REJECTED
    assert drain(rt) == messages
    ref = SetRef("birds", ("red",), "v1")
    row = rt.catalog.images.get(ref, "a.jpg")
    assert row is not None and row.md5 == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert rt.blobs.read("birds", ref.original_prefix() + "a.jpg").data == data
    assert [b.name for b in blobs_of(rt).list_page(rt.settings.staging_container).items] == []
    assert rt.blobs.exists(rt.settings.rejected_container, "birds/v1/red/b.jpg")
    # a redelivered copy request finds its work done
    assert ingest.on_copy_request(rt, CopyRequest("birds/v1/red/a.jpg", '"0x1"')) == ingest.CopyOutcome.EXISTS


def test_a_copy_over_different_bytes_is_a_conflict_kept_in_rejected(rt: Runtime) -> None:
    stage(rt, "birds/v1/a.jpg", jpeg(1))
    drain(rt)
    stage(rt, "birds/v1/a.jpg", jpeg(2))  # same name, same version, other bytes
    drain(rt)
    assert rt.blobs.read("birds", "original/v1/a.jpg").data == jpeg(1)  # versions are immutable
    assert rt.blobs.exists(rt.settings.rejected_container, "birds/v1/a.jpg")


def test_transform_fans_out_and_each_job_writes_once(rt: Runtime) -> None:
    for i in range(3):
        stage(rt, f"birds/v1/{i}.jpg", jpeg(i, size=(64, 48)))
    drain(rt)
    request = {
        "domain": "birds",
        "source": {"path": "", "version": "v1"},
        "transform": {"name": "thumbnail", "version": "1", "args": {"size": 16}},
    }
    rt.send(rt.settings.transform_queue, json.dumps(request))
    drain(rt)
    ref = SetRef("birds", (), "v1")
    prefix = ref.transform_prefix("thumbnail", "1")
    names = [b.name for b in blobs_of(rt).list_page("birds", prefix).items]
    assert len(names) == 3
    writes = blobs_of(rt).requests["put"]
    rt.send(rt.settings.transform_queue, json.dumps(request))  # a duplicate request: nothing rendered again
    drain(rt)
    assert blobs_of(rt).requests["put"] == writes


def build_trainset(rt: Runtime, paths: tuple[str, ...] = ("red", "blue"), name: str = "birds-cls") -> None:
    sources = [{"domain": "birds", "path": p, "version": "v1"} for p in paths]
    body = {"trainset": {"name": name, "version": "1"}, "sources": sources, "split": {"train": 100}}
    rt.send(rt.settings.trainset_queue, TrainsetRequest.parse(json.dumps(body)).to_json())
    drain(rt)


def test_trainset_build_writes_a_manifest_and_records_lineage(rt: Runtime) -> None:
    for i in range(5):
        stage(rt, f"birds/v1/{'red' if i % 2 else 'blue'}/{i}.jpg", jpeg(i))
    drain(rt)
    build_trainset(rt)
    store = rt.catalog.training
    row = store.trainsets.require_ready("birds-cls", "1")
    entries = list(store.entries("birds-cls", "1"))
    assert row.status == "ready" and len(entries) == 5
    assert {e.blob for e in entries} == {f"original/{'red' if i % 2 else 'blue'}/v1/{i}.jpg" for i in range(5)}


def test_export_shards_are_written_once_and_their_index_points_into_the_tar(rt: Runtime) -> None:
    for i in range(4):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i))
    drain(rt)
    build_trainset(rt, ("red",))
    params = ExportParams("webdataset", shard_size=40_000)
    req = ExportRequest("birds-cls", "1", params).to_json()
    rt.send(rt.settings.export_queue, req)
    drain(rt)
    exports = rt.settings.exports_container
    prefix = f"birds-cls/1/{params.export_id()}/"
    names = [b.name[len(prefix) :] for b in blobs_of(rt).list_page(exports, prefix).items]
    tars = [n for n in names if n.endswith(".tar")]
    data_files = [n for n in names if not n.startswith("_work/")]
    assert tars and sorted(data_files) == sorted(
        tars + [index_path(t) for t in tars] + ["plan.json", "classes.txt", "croissant.json"]
    )
    members = []
    for t in tars:
        data = rt.blobs.read(exports, prefix + t).data
        index = json.loads(rt.blobs.read(exports, prefix + index_path(t)).data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    members.append(m.name)
                    offset, size = index["samples"][m.name.removesuffix(".jpg")]["jpg"]
                    assert data[offset : offset + size] == tar.extractfile(m).read()  # type: ignore[union-attr]
    assert len(members) == 4
    commits = blobs_of(rt).requests["commit_blocks"]
    rt.send(rt.settings.export_queue, req)  # the same export again: nothing rewritten
    drain(rt)
    assert blobs_of(rt).requests["commit_blocks"] == commits


def test_an_export_whose_last_shard_job_died_before_croissant_is_finished_by_a_retry(rt: Runtime) -> None:
    """The last shard job wrote its receipt and was killed before ``croissant.json``: its retry (the
    receipt is there) and a new request of the export (no job left to send) both finish it."""
    from corpus.domain.exports import ExportShardJob

    for i in range(4):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i))
    drain(rt)
    build_trainset(rt, ("red",))
    params = ExportParams("webdataset", shard_size=40_000)
    req = ExportRequest("birds-cls", "1", params)
    rt.send(rt.settings.export_queue, req.to_json())
    drain(rt)
    exports, prefix = rt.settings.exports_container, f"birds-cls/1/{params.export_id()}/"
    plan = json.loads(rt.blobs.read(exports, prefix + "plan.json").data)
    last = plan["shards"][-1]

    def kill_before_croissant() -> None:
        info = rt.blobs.info(exports, prefix + "croissant.json")
        assert rt.blobs.delete_if_unchanged(exports, prefix + "croissant.json", info.etag)

    kill_before_croissant()
    rt.send(
        rt.settings.export_queue, ExportShardJob("birds-cls", "1", params.export_id(), last["split"], last["index"]).to_json()
    )
    drain(rt)  # the host's retry of that job
    assert rt.blobs.exists(exports, prefix + "croissant.json"), "the retried job finishes the export"
    kill_before_croissant()
    rt.send(rt.settings.export_queue, req.to_json())
    drain(rt)  # the user asks for the export again
    assert rt.blobs.exists(exports, prefix + "croissant.json"), "a new request finishes the export"


def test_parquet_and_azureml_exports_on_the_memory_store(rt: Runtime) -> None:
    """Parquet with Hugging Face's features in its schema, and Azure ML, both finished by croissant.json."""
    import pyarrow.parquet as pq

    for i in range(4):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i))
    drain(rt)
    build_trainset(rt, ("red",))
    exports = rt.settings.exports_container
    for params in (ExportParams("parquet", shard_size=40_000), ExportParams("azureml")):
        rt.send(rt.settings.export_queue, ExportRequest("birds-cls", "1", params).to_json())
        drain(rt)
        prefix = f"birds-cls/1/{params.export_id()}/"
        doc = json.loads(rt.blobs.read(exports, prefix + "croissant.json").data)
        for d in doc["distribution"]:
            if d["@type"] == "cr:FileObject":
                assert hashlib.sha256(rt.blobs.read(exports, prefix + d["contentUrl"]).data).hexdigest() == d["sha256"]
    prefix = f"birds-cls/1/{ExportParams('parquet', shard_size=40_000).export_id()}/"
    files = [b.name for b in blobs_of(rt).list_page(exports, prefix + "data/").items]
    rows = 0
    for name in files:
        table = pq.read_table(io.BytesIO(rt.blobs.read(exports, name).data))
        features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
        assert features["image"] == {"_type": "Image"} and features["label"]["_type"] == "ClassLabel"
        rows += table.num_rows
    assert rows == 4


def test_reconcile_looks_up_validations_before_downloading_and_max_blobs_bounds_downloads(rt: Runtime) -> None:
    """Issues 24/25 (P4/R2): a staged version the trigger validated costs a table read, not a
    download; and at most ``max_blobs`` staged blobs are downloaded per run."""
    staging = rt.settings.staging_container
    for i in range(6):  # validated, their copies still queued (the copy backlog); listed first
        stage(rt, f"birds/v1/a{i}.jpg", jpeg(i), "queued")
    for i in range(5):  # events lost: never validated
        rt.blobs.put(staging, f"birds/v1/z{i}.jpg", jpeg(10 + i))
    reads = blobs_of(rt).requests["read"]
    report = reconcile(rt, grace_seconds=0, max_blobs=3)
    assert blobs_of(rt).requests["read"] - reads == 3 == report.downloaded
    assert report.skipped_recent == 6 and len(report.redriven) == 3
    report = reconcile(rt, grace_seconds=0, max_blobs=100)
    assert report.downloaded == 2 and len(report.redriven) == 2  # the rest; the re-driven are now validated
    drain(rt)
    assert [b.name for b in blobs_of(rt).list_page(staging).items] == []


def test_gallery_views_page_images_and_previews_are_stored_once(rt: Runtime) -> None:
    for i in range(3):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i))
    drain(rt)
    page = domain_page(rt, Request("GET", {"domain": "birds"}))
    assert page.status == 200 and b"red" in page.body
    images, token = page_images(rt.catalog, SetSelector.parse("birds", "red", "v1", None), 2, None)
    assert len(images) == 2 and token
    more, token = page_images(rt.catalog, SetSelector.parse("birds", "red", "v1", None), 2, token)
    assert len(more) == 1 and token is None
    req = Request("GET", {"domain": "birds"}, (("blob", "original/red/v1/0.jpg"),))
    first = serve_preview(rt, req)
    puts = blobs_of(rt).requests["put"]
    again = serve_preview(
        rt, Request("GET", {"domain": "birds"}, (("blob", "original/red/v1/0.jpg"),), {"if-none-match": first.headers["ETag"]})
    )
    assert first.status == 200 and again.status == 304 and blobs_of(rt).requests["put"] == puts


def test_azureml_export_streams_its_jsonl_in_blocks(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25, R7: the Azure ML export held every line in memory; now it stages blocks as lines
    come (here 300-byte blocks: several per file) and the committed file is every line once."""
    import corpus.app.exports as exports_mod

    monkeypatch.setattr(exports_mod, "BLOCK_BYTES", 300)
    for i in range(6):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i))
    drain(rt)
    build_trainset(rt, ("red",))
    staged = blobs_of(rt).requests["stage_block"]
    params = ExportParams("azureml")
    rt.send(rt.settings.export_queue, ExportRequest("birds-cls", "1", params).to_json())
    drain(rt)
    assert blobs_of(rt).requests["stage_block"] - staged >= 3
    body = rt.blobs.read(rt.settings.exports_container, f"birds-cls/1/{params.export_id()}/train/images.jsonl").data
    lines = [json.loads(x) for x in body.splitlines()]
    assert len(lines) == 6 and {type(x["label"]) for x in lines} == {str}


def _planned_export(monkeypatch: pytest.MonkeyPatch, n: int) -> tuple[Runtime, ExportParams]:
    """A fresh memory store with a planned WebDataset export of ``n`` one-image shards (jobs queued)."""
    import corpus.app.exports as exports_mod
    from corpus.domain.exports import MIN_SHARD_BYTES
    from corpus.domain.manifest import ManifestEntry, hex_to_b64

    rt = Runtime.in_memory()
    rt.ensure_resources()
    rt.ensure_container("birds")
    entries = []
    for i in range(n):
        data = i.to_bytes(4, "big") * (MIN_SHARD_BYTES // 6)  # more than half a shard: one per shard
        name = f"b/{i:05d}.jpg"
        rt.blobs.put("birds", name, data)
        md5 = hex_to_b64(hashlib.md5(data).hexdigest())
        entries.append(ManifestEntry("birds", name, md5, len(data), 1, 1, "birds", "b", "v1", None, name, md5,
                                     (f"c{i % 3}",), "train"))  # fmt: skip
    monkeypatch.setattr(exports_mod, "read_manifest", lambda _rt, _name, _version: iter(entries))
    params = ExportParams("webdataset", shard_size=MIN_SHARD_BYTES)
    on_export_message(rt, ExportRequest("big", "1", params))  # the plan; it queues the shard jobs
    return rt, params


def _shard_job_reads(monkeypatch: pytest.MonkeyPatch, n: int) -> tuple[list[int], list[int], int]:
    """Export ``n`` one-image shards on a fresh memory store; per shard job the bytes it read of the
    exports container and the blob names it listed, and how many jobs wrote ``croissant.json``."""
    rt, params = _planned_export(monkeypatch, n)
    blobs = blobs_of(rt)
    exports = rt.settings.exports_container
    counted = {"read": 0, "listed": 0}
    real_read, real_list = blobs.read, blobs.list_page

    def read(container: str, name: str, **kw: object) -> object:
        blob = real_read(container, name, **kw)  # type: ignore[arg-type]
        counted["read"] += len(blob.data) if container == exports else 0
        return blob

    def list_page(container: str, prefix: str = "", cursor: str | None = None, limit: int = 5000) -> object:
        page = real_list(container, prefix, cursor, limit)
        counted["listed"] += len(page.items)
        return page

    monkeypatch.setattr(blobs, "read", read)
    monkeypatch.setattr(blobs, "list_page", list_page)
    reads, listed, finishers = [], [], 0
    croissant = f"big/1/{params.export_id()}/croissant.json"
    assert isinstance(rt.outbox, MemoryOutbox)
    while msgs := rt.outbox.receive(rt.settings.export_queue, max_messages=1):
        counted.update(read=0, listed=0)
        done_before = rt.blobs.exists(exports, croissant)
        try:
            on_export_message(rt, parse_export_message(msgs[0].text))
        except RuntimeError:  # killed half-way (a test's injection): the message is delivered again
            on_export_message(rt, parse_export_message(msgs[0].text))
        rt.outbox.delete(rt.settings.export_queue, msgs[0])
        if not done_before and rt.blobs.exists(exports, croissant):
            finishers += 1  # this job wrote croissant.json: it alone reads the plan and the receipts
        else:
            reads.append(counted["read"])
            listed.append(counted["listed"])
    assert len(json.loads(real_read(exports, croissant).data)["distribution"]) >= n
    return reads, listed, finishers


def test_a_shard_job_reads_the_same_bytes_whatever_the_number_of_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25, R6: every shard job read the whole plan.json (a line per shard) and listed every
    receipt, O(shards) each. Now it reads its own record, work list, classes.txt and two 32-byte
    bitmaps; only the job that completes the export reads the plan and the receipts."""
    small, small_listed, small_finishers = _shard_job_reads(monkeypatch, 10)
    big, big_listed, big_finishers = _shard_job_reads(monkeypatch, 200)
    assert (len(small), len(big)) == (9, 199)
    assert small_finishers == big_finishers == 1
    assert small_listed == [0] * 9 and big_listed == [0] * 199  # no receipt listing
    assert max(big) <= max(small) + 16  # a few more digits in the record's ordinal and total
    assert max(big) < 2_000  # plan.json alone is ~170 bytes a shard


def test_completion_bitmaps_lose_no_bit_under_concurrent_setters(rt: Runtime) -> None:
    """Issue 25, R6: shards are counted done in ETag-guarded bitmaps; 64 concurrent setters
    (and each twice: duplicate delivery) leave every bit set, and exactly one setter sees it full."""
    from concurrent.futures import ThreadPoolExecutor

    from corpus.app.exports import Exports, _set_bit

    rt.ensure_container("exports")
    exports = Exports(rt.blobs, "exports")
    with ThreadPoolExecutor(16) as pool:
        counts = list(pool.map(lambda bit: _set_bit(exports, "x/_work/done/0-00000", bit % 64), range(128)))
    assert int.from_bytes(rt.blobs.read("exports", "x/_work/done/0-00000").data, "little") == (1 << 64) - 1
    assert max(counts) == 64


def test_a_shard_job_killed_after_its_receipt_finishes_the_export_when_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kill-and-retry of the last shard job between its receipt and its count: the redelivered job
    finds its receipt, counts the shard and writes croissant.json (checked by the helper)."""
    import corpus.app.exports as exports_mod

    real = exports_mod._count_done
    killed: list[str] = []

    def count_done(exports: Any, prefix: str, shard: dict[str, Any]) -> bool:
        if shard["ordinal"] == shard["total"] - 1 and not killed:
            killed.append(prefix)
            raise RuntimeError("killed between the receipt and the count")
        return real(exports, prefix, shard)

    monkeypatch.setattr(exports_mod, "_count_done", count_done)
    _, _, finishers = _shard_job_reads(monkeypatch, 5)
    assert killed and finishers == 1


def test_an_export_planned_before_the_shard_records_finishes_when_requested_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An export in flight across the upgrade (issue 25 R6): its plan has no shard records and its
    finished shards no bits. Its queued jobs are refused; the export requested again adds the
    records and the bits of the shards done, resends the rest, and finishes."""
    from corpus.app.exports import RefusedJob

    rt, params = _planned_export(monkeypatch, 6)
    assert isinstance(rt.outbox, MemoryOutbox)
    exports, queue = rt.settings.exports_container, rt.settings.export_queue
    for msg in rt.outbox.receive(queue, max_messages=3):  # 3 shards done
        on_export_message(rt, parse_export_message(msg.text))
        rt.outbox.delete(queue, msg)
    prefix = f"big/1/{params.export_id()}/"
    for b in blobs_of(rt).list_page(exports, prefix + "_work/").items:  # as the code before R6 left it
        if (b.name.endswith(".json") and "/receipts/" not in b.name) or "/_work/done/" in b.name:
            rt.blobs.delete_if_unchanged(exports, b.name, b.etag)
    for msg in rt.outbox.receive(queue, max_messages=32):
        with pytest.raises(RefusedJob):
            on_export_message(rt, parse_export_message(msg.text))
        rt.outbox.delete(queue, msg)
    rt.send(queue, ExportRequest("big", "1", params).to_json())
    assert drain(rt) == 1 + 3
    assert rt.blobs.exists(exports, prefix + "croissant.json")


def test_a_claimed_version_gone_before_its_read_is_recorded_with_its_outcome(rt: Runtime) -> None:
    """A reconciler claims a staged version, then finds it ingested (or replaced) by its own event
    before it could read it: the claim gets an outcome and the report names it, so `corpus status`
    never counts a re-drive that no reconciler reported."""
    from datetime import UTC, datetime, timedelta

    from corpus.app.reconcile import OUTCOME_GONE, OUTCOME_REPLACED, ReconcileReport, _redrive

    staging = rt.settings.staging_container
    gone = rt.blobs.put(staging, "birds/v1/gone.jpg", jpeg(1))
    replaced = rt.blobs.put(staging, "birds/v1/replaced.jpg", jpeg(2))
    rt.blobs.delete_if_unchanged(staging, "birds/v1/gone.jpg", gone.etag)  # ingested meanwhile
    rt.blobs.put(staging, "birds/v1/replaced.jpg", jpeg(3))  # a newer upload
    report = ReconcileReport()
    now = datetime.now(UTC)
    for info in (gone, replaced):
        _redrive(rt, info.name, info.etag, "scan", now, timedelta(0), report)
    assert report.redriven == {"birds/v1/gone.jpg": OUTCOME_GONE, "birds/v1/replaced.jpg": OUTCOME_REPLACED}
    assert {r.name: r.outcome for r in rt.catalog.redrives.list()} == report.redriven

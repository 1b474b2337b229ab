"""Ingest's copy step both ways, in memory: Put Blob From URL (Azure) and Copy Blob (Azurite), each
run inside the blob trigger (``CORPUS_INGEST=direct``) and through the copy queue (``queued``),
with the blob requests each costs per image (the figures of docs/benchmarks.md, issue 26)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from corpus.app import ingest
from corpus.app.runtime import Runtime
from corpus.domain.messages import CopyRequest
from corpus.domain.paths import SetRef
from corpus.store.memory import MemoryBlobStore, MemoryOutbox
from corpus.store.memory_tables import MemoryTables
from corpus.store.settings import TABLE_VALIDATIONS, Settings
from tests.support import at_once, jpeg

IMAGES = 6


def runtime(mode: str, ingest_mode: str = "direct") -> Runtime:
    env = {"CorpusStorage": "UseDevelopmentStorage=true", "CORPUS_COPY_MODE": mode, "CORPUS_INGEST": ingest_mode}
    rt = Runtime.in_memory(Settings.from_env(env))
    rt.ensure_resources()
    return rt


def validation_calls(rt: Runtime) -> int:
    tables = rt.clients
    assert isinstance(tables, MemoryTables)
    return sum(n for key, n in tables.calls().items() if key.startswith(TABLE_VALIDATIONS + "/"))


def ingest_all(rt: Runtime, files: dict[str, bytes]) -> Counter[str]:
    """Stage, trigger (and, queued, copy) each file; the blob requests of the function bodies."""
    blobs, outbox = rt.blobs, rt.outbox
    assert isinstance(blobs, MemoryBlobStore) and isinstance(outbox, MemoryOutbox)
    staged = {name: blobs.put(rt.settings.staging_container, name, data) for name, data in files.items()}
    before = Counter(blobs.requests)
    for name, data in files.items():
        ingest.on_staged_blob(rt, ingest.StagedBlob(name, data, staged[name].etag, {}, "BlockBlob"))
    for msg in outbox.receive(rt.settings.copy_queue, max_messages=32):
        ingest.on_copy_request(rt, CopyRequest.parse(msg.text))
        outbox.delete(rt.settings.copy_queue, msg)
    return Counter(blobs.requests) - before


@pytest.mark.parametrize("ingest_mode", ["direct", "queued"])
@pytest.mark.parametrize(
    ("mode", "per_image"),
    [
        ("put-from-url", {"put_from_url": 1, "delete": 1}),  # the service checks the MD5 and writes the headers
        # Copy Blob, read back length and MD5, and (these uploads carry no content type) set the headers
        ("copy", {"copy": 1, "info": 1, "set_headers": 1, "delete": 1}),
    ],
)
def test_both_copy_paths_store_the_validated_bytes_and_headers(mode: str, per_image: dict[str, int], ingest_mode: str) -> None:
    rt = runtime(mode, ingest_mode)
    files = {f"birds/v1/red/{i}.jpg": jpeg(i) for i in range(IMAGES)}
    used = ingest_all(rt, files)
    assert used.pop("ensure_container") == 1  # once per domain and process, not per image
    assert dict(used) == {verb: n * IMAGES for verb, n in per_image.items()}
    ref = SetRef("birds", ("red",), "v1")
    for name, data in files.items():
        stored = rt.blobs.read("birds", ref.original_prefix() + name.rsplit("/", 1)[1])
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        assert (stored.data, stored.info.md5, stored.info.content_type) == (data, md5, "image/jpeg")
        row = rt.catalog.images.get(ref, name.rsplit("/", 1)[1])
        assert row is not None and row.md5 == md5
    assert not list(rt.blobs.list_page(rt.settings.staging_container).items)
    outbox = rt.outbox
    assert isinstance(outbox, MemoryOutbox)
    if ingest_mode == "direct":  # the verdict never leaves the process: no Validations row, no message
        assert validation_calls(rt) == 0 and outbox.sent[rt.settings.copy_queue] == 0
    else:  # upsert, read, delete per image
        assert validation_calls(rt) == 3 * IMAGES and outbox.sent[rt.settings.copy_queue] == IMAGES


def test_a_redelivery_after_put_from_url_finds_the_copy_done() -> None:
    rt = runtime("put-from-url", "queued")
    data = jpeg(1)
    info = rt.blobs.put(rt.settings.staging_container, "birds/v1/a.jpg", data)
    ingest.on_staged_blob(rt, ingest.StagedBlob("birds/v1/a.jpg", data, info.etag, {}, "BlockBlob"))
    req = CopyRequest("birds/v1/a.jpg", info.etag)
    assert ingest.on_copy_request(rt, req) == ingest.CopyOutcome.COPIED
    assert ingest.on_copy_request(rt, req) == ingest.CopyOutcome.EXISTS


@pytest.mark.parametrize("mode", ["put-from-url", "copy"])
def test_direct_the_same_delivery_twice_and_concurrently_counts_once(mode: str) -> None:
    """The blob trigger's event delivered 8 times at once, then once more after the first finished
    (the host reads the blob before invoking, but a delivery that read it before the delete still
    runs): one copy, one record, one count; staging cleared."""
    rt = runtime(mode)
    data = jpeg(3)
    info = rt.blobs.put(rt.settings.staging_container, "birds/v1/red/a.jpg", data)
    event = ingest.StagedBlob("birds/v1/red/a.jpg", data, info.etag, {}, "BlockBlob")
    results = at_once(lambda: ingest.on_staged_blob(rt, event), 8)
    assert results.count("copied") == 1 and set(results) <= {"copied", "exists"}, results
    assert ingest.on_staged_blob(rt, event) == "exists"  # a late redelivery of the bytes already ingested
    ref = SetRef("birds", ("red",), "v1")
    assert rt.catalog.images.count(ref) == (1, len(data))
    row = rt.catalog.sets.get(ref)
    assert row is not None and (row.image_count, row.total_bytes) == (1, len(data))
    assert rt.blobs.read("birds", ref.original_prefix() + "a.jpg").data == data
    assert not list(rt.blobs.list_page(rt.settings.staging_container).items)


def test_direct_conflict_and_superseded_upload() -> None:
    """Other bytes under an ingested name are rejected with a reason (kept in rejected/); a
    delivery of bytes that were replaced meanwhile copies nothing and leaves the newer upload."""
    rt = runtime("put-from-url")
    staging = rt.settings.staging_container
    first, other, newer = jpeg(1), jpeg(2), jpeg(4)
    info = rt.blobs.put(staging, "birds/v1/a.jpg", first)
    assert ingest.on_staged_blob(rt, ingest.StagedBlob("birds/v1/a.jpg", first, info.etag, {}, "BlockBlob")) == "copied"
    info = rt.blobs.put(staging, "birds/v1/a.jpg", other)
    assert ingest.on_staged_blob(rt, ingest.StagedBlob("birds/v1/a.jpg", other, info.etag, {}, "BlockBlob")) == "conflict"
    assert rt.blobs.read("birds", "original/v1/a.jpg").data == first
    assert rt.blobs.read(rt.settings.rejected_container, "birds/v1/a.jpg").data == other
    rejection = rt.catalog.rejections.get("rejected", "birds/v1/a.jpg")
    assert rejection is not None and rejection.reason.startswith("conflict:")

    old = rt.blobs.put(staging, "birds/v1/b.jpg", first)
    rt.blobs.put(staging, "birds/v1/b.jpg", newer)  # replaced before the trigger ran for the first
    assert ingest.on_staged_blob(rt, ingest.StagedBlob("birds/v1/b.jpg", first, old.etag, {}, "BlockBlob")) == "superseded"
    assert not rt.blobs.exists("birds", "original/v1/b.jpg")
    assert rt.blobs.read(staging, "birds/v1/b.jpg").data == newer  # kept for its own event

"""Ingest's copy step both ways, in memory: Put Blob From URL (Azure) and Copy Blob (Azurite),
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
from corpus.store.settings import Settings
from tests.support import jpeg

IMAGES = 6


def runtime(mode: str) -> Runtime:
    rt = Runtime.in_memory(Settings.from_env({"CorpusStorage": "UseDevelopmentStorage=true", "CORPUS_COPY_MODE": mode}))
    rt.ensure_resources()
    return rt


def ingest_all(rt: Runtime, files: dict[str, bytes]) -> Counter[str]:
    """Stage, trigger and copy each file; the blob requests of the trigger and copy bodies."""
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


@pytest.mark.parametrize(
    ("mode", "per_image"),
    [
        ("put-from-url", {"put_from_url": 1, "delete": 1}),  # the service checks the MD5 and writes the headers
        # Copy Blob, read back length and MD5, and (these uploads carry no content type) set the headers
        ("copy", {"copy": 1, "info": 1, "set_headers": 1, "delete": 1}),
    ],
)
def test_both_copy_paths_store_the_validated_bytes_and_headers(mode: str, per_image: dict[str, int]) -> None:
    rt = runtime(mode)
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


def test_a_redelivery_after_put_from_url_finds_the_copy_done() -> None:
    rt = runtime("put-from-url")
    data = jpeg(1)
    info = rt.blobs.put(rt.settings.staging_container, "birds/v1/a.jpg", data)
    ingest.on_staged_blob(rt, ingest.StagedBlob("birds/v1/a.jpg", data, info.etag, {}, "BlockBlob"))
    req = CopyRequest("birds/v1/a.jpg", info.etag)
    assert ingest.on_copy_request(rt, req) == ingest.CopyOutcome.COPIED
    assert ingest.on_copy_request(rt, req) == ingest.CopyOutcome.EXISTS

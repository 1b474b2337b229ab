"""``corpus export``: a training set into blob storage as WebDataset shards or Azure ML JSONL.

Everything goes to container ``CORPUS_EXPORTS_CONTAINER`` (``exports``) under
``<name>/<version>/<format>/``.

WebDataset: the request handler reads the manifest, plans shards per split
(:func:`corpus.domain.layouts.plan_shards`, a pure function of the manifest and the shard size),
writes ``webdataset/plan.json`` and sends one :class:`~corpus.domain.exports.ExportShardJob` per
shard. A shard job streams the manifest to its window, downloads and MD5-checks each image and
writes ``<split>/shard-NNNNNN.tar`` with fixed tar headers (mtime 0, uid/gid 0, no user names,
mode 0644, PAX format), members in manifest order, in 8 MiB blocks committed with
``If-None-Match: *``; then ``shard-NNNNNN.index.json`` (key → member offsets and sizes, for range
reads of one sample). Every byte is a function of the manifest and the shard size, so a retried,
duplicated or concurrent job writes the same bytes, and "already exists with the same MD5" is
success; different bytes mean the export was planned with another shard size, and the job is
refused with that reason. Keys are injective in the blob name, so every key is in exactly one shard.

Azure ML: one ``<split>/images.jsonl`` per split in AutoML's image-classification format and an
``MLTable`` beside it, written by the request handler itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import quote

from corpus.domain.errors import BlobConflict, BlobNotFound, MessageError, NotFoundError, PermanentError
from corpus.domain.exports import MAX_SHARDS, ExportRequest, ExportShardJob
from corpus.domain.layouts import (
    azureml_line,
    canonical_json,
    label_key,
    mltable_yaml,
    plan_shards,
    sample_json,
    sample_key,
    sample_members,
    split_folder,
)
from corpus.domain.manifest import ManifestEntry, block_id, hex_to_b64
from corpus.store.ports import BlobStore
from corpus.store.trainsets_table import TrainsetStore

log = logging.getLogger("corpus.exports")

BLOCK_BYTES = 8 * 1024 * 1024
PLAN_NAME = "plan.json"


class ExportConflict(PermanentError):
    """An export blob exists with other bytes: the export was made with other parameters."""


class ChangedBlobError(PermanentError):
    """An image's bytes no longer match the manifest's MD5."""


class ExportRuntime(Protocol):
    """What the use case needs of :class:`corpus.app.runtime.Runtime`."""

    @property
    def settings(self) -> Any: ...

    @property
    def clients(self) -> Any: ...

    @property
    def blobs(self) -> BlobStore: ...

    def send(self, queue: str, text: str) -> None: ...

    def ensure_container(self, name: str) -> None: ...


def export_prefix(name: str, version: str, fmt: str) -> str:
    return f"{name}/{version}/{fmt}/"


def shard_path(name: str, version: str, split: str, index: int) -> str:
    return f"{export_prefix(name, version, 'webdataset')}{split_folder(split)}/shard-{index:06d}.tar"


def index_path(tar_path: str) -> str:
    return tar_path.removesuffix(".tar") + ".index.json"


def on_export_message(rt: ExportRuntime, msg: ExportRequest | ExportShardJob) -> None:
    rt.ensure_container(rt.settings.exports_container)
    if isinstance(msg, ExportShardJob):
        write_shard(rt, msg)
    elif msg.format == "webdataset":
        plan_webdataset(rt, msg)
    else:
        write_azureml(rt, msg)


def read_manifest(rt: ExportRuntime, name: str, version: str) -> Iterator[ManifestEntry]:
    """The entries of a ``ready`` training set; any other status (or none) is a ``NotFoundError``."""
    return TrainsetStore(rt.clients, rt.blobs).entries(name, version)


def put_once(blobs: BlobStore, container: str, name: str, data: bytes, content_type: str) -> bool:
    """Create ``name`` with ``data`` unless it exists; True if written. Existing with the same MD5
    is success (a duplicate run); with another MD5 it is an :class:`ExportConflict`."""
    try:
        return blobs.put_once(container, name, data, content_type)
    except BlobConflict as exc:
        raise _conflict(container, name, exc, hashlib.md5(data, usedforsecurity=False).hexdigest()) from exc


def _conflict(container: str, name: str, exc: BlobConflict, md5: str) -> ExportConflict:
    return ExportConflict(
        f"{container}/{name} exists with other content (MD5 {exc.stored_md5 or 'none'}, "
        f"this export makes {md5}): it was exported with other parameters; export under a new training set version"
    )


# -- webdataset ----------------------------------------------------------------------------------


def plan_webdataset(rt: ExportRuntime, req: ExportRequest) -> int:
    """Write ``plan.json`` and fan out one job per shard; the number of shards."""
    seen_classes: set[str] = set()

    def counted(entries: Iterator[ManifestEntry]) -> Iterator[ManifestEntry]:
        for e in entries:  # one streaming pass: memory does not grow with the training set
            seen_classes.add(label_key(e.labels))
            yield e

    plans = plan_shards(counted(read_manifest(rt, req.name, req.version)), req.shard_size)
    if len(plans) > MAX_SHARDS:
        raise MessageError(
            f"export of {req.name}:{req.version} would make {len(plans)} shards (at most {MAX_SHARDS}): use a larger shard size"
        )
    classes = sorted(seen_classes)
    samples = sum(p.count for p in plans)
    plan = {
        "trainset": {"name": req.name, "version": req.version},
        "format": "webdataset",
        "shard_size": req.shard_size,
        "samples": samples,
        "classes": classes,
        "shards": [
            {"split": p.split, "index": p.index, "count": p.count, "tar": shard_path(req.name, req.version, p.split, p.index)}
            for p in plans
        ],
    }
    exports = rt.settings.exports_container
    put_once(
        rt.blobs,
        exports,
        export_prefix(req.name, req.version, "webdataset") + PLAN_NAME,
        canonical_json(plan),
        "application/json",
    )
    for p in plans:
        job = ExportShardJob(req.name, req.version, p.split, p.index, p.start, p.count, req.shard_size)
        rt.send(rt.settings.export_queue, job.to_json())
    log.info("export %s:%s webdataset: %d shards of %d samples", req.name, req.version, len(plans), samples)
    return len(plans)


class _BlockSink:
    """A write-only stream that hashes what passes and, when ``blob`` is given, stages it in blocks."""

    def __init__(self, blobs: BlobStore, container: str, blob: str | None) -> None:
        self.blobs, self.container, self.blob = blobs, container, blob
        self.pos = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.buf = bytearray()
        self.blocks: list[str] = []

    def write(self, data: bytes) -> int:
        self.pos += len(data)
        self.md5.update(data)
        if self.blob is not None:
            self.buf += data
            while len(self.buf) >= BLOCK_BYTES:
                self._stage(bytes(self.buf[:BLOCK_BYTES]))
                del self.buf[:BLOCK_BYTES]
        return len(data)

    def tell(self) -> int:
        return self.pos

    def _stage(self, chunk: bytes) -> None:
        assert self.blob is not None
        bid = block_id(len(self.blocks), "shard")  # deterministic ids
        self.blobs.stage_block(self.container, self.blob, bid, chunk)
        self.blocks.append(bid)

    def finish(self) -> None:
        if self.blob is not None and self.buf:
            self._stage(bytes(self.buf))
            self.buf.clear()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _window(rt: ExportRuntime, job: ExportShardJob) -> list[ManifestEntry]:
    out: list[ManifestEntry] = []
    ordinal = 0
    for e in read_manifest(rt, job.name, job.version):
        if e.split != job.split:
            continue
        if ordinal >= job.start + job.count:
            break
        if ordinal >= job.start:
            out.append(e)
        ordinal += 1
    if len(out) != job.count:
        raise NotFoundError(
            f"shard {job.index} of {job.split!r} wants entries {job.start}..{job.start + job.count - 1}; the manifest has fewer"
        )
    return out


def write_shard(rt: ExportRuntime, job: ExportShardJob) -> bool:
    """Write one shard and its index; True if this call wrote the tar. See the module docstring."""
    exports = rt.settings.exports_container
    tar_name = shard_path(job.name, job.version, job.split, job.index)
    tar_exists = rt.blobs.exists(exports, tar_name)
    if tar_exists and rt.blobs.exists(exports, index_path(tar_name)):
        return False  # a duplicate of a finished job
    entries = _window(rt, job)
    sink = _BlockSink(rt.blobs, exports, None if tar_exists else tar_name)
    index: dict[str, Any] = {}
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:  # type: ignore[call-overload]
        for e, data in _downloads(rt, entries):
            key = sample_key(e)
            image_member, json_member = sample_members(e, key)
            meta = sample_json(e, key)
            members: dict[str, Any] = {}
            for member, body in ((image_member, data), (json_member, meta)):
                tar.addfile(_tarinfo(member, len(body)), io.BytesIO(body))
                end = tar.offset
                data_offset = end - ((len(body) + 511) // 512) * 512
                members[member.rpartition(".")[2]] = [data_offset, len(body)]
            index[key] = members
    sink.finish()
    md5 = sink.md5.hexdigest()
    try:
        if tar_exists:
            stored = rt.blobs.info(exports, tar_name)
            stored_md5 = rt.blobs.content_md5(exports, stored)
            if stored_md5 != md5:
                raise BlobConflict(f"{exports}/{tar_name} exists with other content", stored_md5, stored.size)
            wrote = False
        else:  # If-None-Match: *
            wrote = rt.blobs.commit_blocks_once(exports, tar_name, sink.blocks, "application/x-tar", md5)
    except BlobConflict as exc:
        raise _conflict(exports, tar_name, exc, md5) from exc
    index_body = {"tar": tar_name, "size": sink.pos, "md5": hex_to_b64(md5), "samples": index}
    put_once(rt.blobs, exports, index_path(tar_name), canonical_json(index_body), "application/json")
    return wrote


DOWNLOAD_THREADS = 16


WINDOW_BYTES = 32 * 1024 * 1024
"""Bytes of images one shard job holds at once (by the manifest's sizes): with the queue throttle's
24 jobs per instance, at most ~768 MB, whatever the image sizes."""


def _downloads(rt: ExportRuntime, entries: list[ManifestEntry]) -> Iterator[tuple[ManifestEntry, bytes]]:
    """Each entry with its verified bytes, in order; ``DOWNLOAD_THREADS`` in flight and a window of
    at most ``4 × DOWNLOAD_THREADS`` images and :data:`WINDOW_BYTES` held (one larger image alone),
    so memory is bounded by the window, not by the shard or the images' sizes."""
    with ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="corpus-export") as pool:
        for chunk in _windows(entries):
            yield from zip(chunk, pool.map(lambda e: _download(rt, e), chunk), strict=True)


def _windows(entries: list[ManifestEntry]) -> Iterator[list[ManifestEntry]]:
    chunk: list[ManifestEntry] = []
    held = 0
    for e in entries:
        if chunk and (len(chunk) >= 4 * DOWNLOAD_THREADS or held + e.size > WINDOW_BYTES):
            yield chunk
            chunk, held = [], 0
        chunk.append(e)
        held += e.size
    if chunk:
        yield chunk


def _download(rt: ExportRuntime, e: ManifestEntry) -> bytes:
    try:
        data = rt.blobs.read(e.container, e.blob).data
    except BlobNotFound as exc:
        raise NotFoundError(f"{e.container}/{e.blob} is in the manifest but no longer exists") from exc
    got = hex_to_b64(hashlib.md5(data, usedforsecurity=False).hexdigest())
    if got != e.md5:
        raise ChangedBlobError(f"{e.container}/{e.blob} changed behind the corpus's back: MD5 {got}, the manifest says {e.md5}")
    return data


# -- Azure ML ------------------------------------------------------------------------------------


def image_url(rt: ExportRuntime, e: ManifestEntry, datastore: str | None) -> str:
    if datastore:
        return f"azureml://datastores/{datastore.replace('{container}', e.container)}/paths/{quote(e.blob, safe='/~')}"
    return f"{rt.blobs.url(e.container)}/{quote(e.blob, safe='/~')}"


def write_azureml(rt: ExportRuntime, req: ExportRequest) -> dict[str, int]:
    """``<split>/images.jsonl`` + ``<split>/MLTable`` per split; lines per split."""
    lines: dict[str, list[str]] = {}
    for e in read_manifest(rt, req.name, req.version):
        lines.setdefault(e.split, []).append(azureml_line(e, image_url(rt, e, req.datastore)))
    exports = rt.settings.exports_container
    prefix = export_prefix(req.name, req.version, "azureml")
    for split, body in sorted(lines.items()):
        folder = f"{prefix}{split_folder(split)}/"
        put_once(rt.blobs, exports, folder + "images.jsonl", ("\n".join(body) + "\n").encode("utf-8"), "application/jsonl")
        put_once(rt.blobs, exports, folder + "MLTable", mltable_yaml("images.jsonl").encode("utf-8"), "application/yaml")
    return {split: len(body) for split, body in lines.items()}

"""``corpus export``: a training set into blob storage as WebDataset shards, Parquet or Azure ML JSONL.

Everything goes to container ``CORPUS_EXPORTS_CONTAINER`` (``exports``) under
``<name>/<version>/<format>-<digest>/`` (:meth:`corpus.domain.exports.ExportParams.export_id`):
other parameters make a new export beside the first; the same parameters again change nothing.
``croissant.json`` is written last, once every file is there: it is the export's "done" marker;
``_work/failed.json`` says why an export failed. ``_work/`` is bookkeeping (work lists, receipts).

**Sharded formats** (``webdataset``, ``parquet``). The request handler streams the manifest
twice, keeping ~16 bytes per entry (sizes, the permutation): it assigns samples to shards by a
seeded permutation of each split (:func:`corpus.domain.layouts.plan_split`), writes each shard's
work list (``_work/<split>/shard-NNNNNN.jsonl``: its manifest lines with their positions, written
in blocks, memory capped by :data:`WORK_BUFFER_BYTES`), then ``classes.txt``, for Parquet
``README.md``, one record per shard (``_work/<split>/shard-NNNNNN.json``: the shard's count, first
position, work list MD5, its ordinal in the plan, the shard count, the parameters, the MD5 of
``classes.txt``), ``plan.json`` last (every shard's entry), all ``If-None-Match``; and sends one
:class:`~corpus.domain.exports.ExportShardJob` per shard that has no receipt yet.

A shard job names only (export, split, index): the queue is operator-writable, so the job trusts
nothing in it (issue 25, B1). It checks that ``plan.json`` exists (the plan is complete), reads
the immutable record of its shard (refused if there is none, or it names another shard), reads only
its own work list (its bytes, not the manifest: R6), checks its MD5 against the record and its
positions against the shard's range, and ``classes.txt`` against its MD5; no read grows with the
number of shards (R6: ``plan.json`` is ~177 bytes a shard). Then it downloads and MD5-checks each image
and writes the shard with fixed bytes: a tar (mtime 0, uid/gid 0, no user names, mode 0644, PAX;
per sample ``<key>.<ext>``, ``<key>.cls``, ``<key>.json``) committed in 8 MiB blocks with
``If-None-Match: *``, or a Parquet file. Every byte is a function of the manifest and the
parameters, so a retried, duplicated or concurrent job writes the same bytes; "exists with the
same MD5" is success, other bytes a :class:`ExportConflict`. Then a receipt (the files' SHA-256),
then the shard is counted done in two levels of bitmaps (:func:`_count_done`), and the job that
finds them full writes ``croissant.json`` from ``plan.json`` and every receipt.

**Azure ML**: ``<split>/images.jsonl`` + ``<split>/MLTable`` written by the request handler itself,
streamed (blocks per split, R7); ``label`` has one type in every file (R14).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from array import array
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import quote

from corpus.domain.datacards import ExportFile, croissant, dataset_card
from corpus.domain.errors import (
    BlobConflict,
    BlobNotFound,
    MessageError,
    NotFoundError,
    PermanentError,
    PreconditionFailed,
)
from corpus.domain.exports import MAX_SHARDS, ExportParams, ExportRequest, ExportShardJob, export_prefix
from corpus.domain.layouts import (
    SplitPlan,
    azureml_line,
    azureml_multilabel,
    canonical_json,
    class_order,
    label_key,
    mltable_yaml,
    plan_split,
    sample_json,
    sample_key,
    sample_members,
    split_folder,
)
from corpus.domain.manifest import ManifestEntry, block_id, hex_to_b64, parse_line
from corpus.store.ports import BlobStore, iter_blobs
from corpus.store.trainsets_table import TrainsetStore

log = logging.getLogger("corpus.exports")

BLOCK_BYTES = 8 * 1024 * 1024
WORK_BUFFER_BYTES = 64 * 1024 * 1024
"""Work-list bytes the request handler holds before staging them (all shards together)."""
PLAN_NAME = "plan.json"
CLASSES_NAME = "classes.txt"
CROISSANT_NAME = "croissant.json"
CARD_NAME = "README.md"
WORK = "_work/"
FAILED_NAME = WORK + "failed.json"
RECEIPTS = WORK + "receipts/"
DONE = WORK + "done/"
FANOUT = 256
"""Shards per completion bitmap (32 bytes); two levels cover ``FANOUT ** 2`` shards."""
assert MAX_SHARDS <= FANOUT * FANOUT


class ExportConflict(PermanentError):
    """An export blob exists with other bytes than this run makes (never expected: exports are keyed
    by their parameters; it means the export was tampered with)."""


class ChangedBlobError(PermanentError):
    """An image's (or a work list's) bytes no longer match the MD5 recorded for them."""


class RefusedJob(PermanentError):
    """A shard job that the export's plan does not list: dropped without touching the export."""


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


def shard_file(split: str, index: int, total: int, fmt: str) -> str:
    """A shard's path in its export: ``<split>/shard-NNNNNN.tar`` or ``data/<split>-NNNNN-of-NNNNN.parquet``
    (the names ``datasets`` maps to splits)."""
    if fmt == "parquet":
        return f"data/{split_folder(split)}-{index:05d}-of-{total:05d}.parquet"
    return f"{split_folder(split)}/shard-{index:06d}.tar"


def work_file(split: str, index: int) -> str:
    return f"{WORK}{split_folder(split)}/shard-{index:06d}.jsonl"


def record_file(split: str, index: int) -> str:
    """The shard's immutable record (its plan entry, ordinal, parameters): all a shard job reads of the plan."""
    return f"{WORK}{split_folder(split)}/shard-{index:06d}.json"


def done_file(level: int, group: int) -> str:
    return f"{DONE}{level}-{group:05d}"


def receipt_file(split: str, index: int) -> str:
    return f"{RECEIPTS}{split_folder(split)}-{index:06d}.json"


def index_path(tar_path: str) -> str:
    return tar_path.removesuffix(".tar") + ".index.json"


def on_export_message(rt: ExportRuntime, msg: ExportRequest | ExportShardJob) -> None:
    rt.ensure_container(rt.settings.exports_container)
    exports = Exports(rt.blobs, rt.settings.exports_container)
    try:
        if isinstance(msg, ExportShardJob):
            write_shard(rt, msg)
        elif msg.format == "azureml":
            write_azureml(rt, msg)
        else:
            plan_sharded(rt, msg)
    except RefusedJob:
        raise  # never marks the export it names: anyone may send one
    except PermanentError as exc:
        record_failure(exports, msg.prefix, str(exc))
        raise


class Exports:
    """The exports container through the :class:`~corpus.store.ports.BlobStore` port, by blob name."""

    def __init__(self, blobs: BlobStore, container: str) -> None:
        self.blobs, self.container_name = blobs, container

    def exists(self, name: str) -> bool:
        return self.blobs.exists(self.container_name, name)

    def read(self, name: str) -> bytes:
        return self.blobs.read(self.container_name, name).data

    def read_json(self, name: str) -> Any:
        """The parsed JSON blob, ``None`` when there is none."""
        try:
            return json.loads(self.read(name))
        except BlobNotFound:
            return None

    def names(self, prefix: str) -> Iterator[str]:
        return (b.name for b in iter_blobs(self.blobs, self.container_name, prefix))

    def put_once(self, name: str, data: bytes, content_type: str) -> bool:
        """``If-None-Match: *``; True if written. The same MD5 there is success (a duplicate run);
        another MD5 is an :class:`ExportConflict`."""
        try:
            return self.blobs.put_once(self.container_name, name, data, content_type)
        except BlobConflict as exc:
            raise _conflict(
                self.container_name, name, exc.stored_md5, hashlib.md5(data, usedforsecurity=False).hexdigest()
            ) from exc

    def sink(self, name: str | None, tag: str = "shard") -> BlockSink:
        return BlockSink(self, name, tag)


def _conflict(container: str, name: str, stored: str, made: str) -> ExportConflict:
    return ExportConflict(
        f"{container}/{name} exists with other content (MD5 {stored or 'none'}, this export makes {made}): "
        "the export was changed behind corpus's back"
    )


def record_failure(exports: Exports, prefix: str, reason: str) -> None:
    """``_work/failed.json``: where ``corpus export --wait`` and ``export list`` find why (overwritten:
    it describes the latest failure)."""
    exports.blobs.put(exports.container_name, prefix + FAILED_NAME, canonical_json({"failed": reason[:4000]}), "application/json")


def clear_failure(exports: Exports, prefix: str) -> None:
    """A new request for the export retries it: an earlier failure no longer describes it."""
    try:
        info = exports.blobs.info(exports.container_name, prefix + FAILED_NAME)
    except BlobNotFound:
        return
    exports.blobs.delete_if_unchanged(exports.container_name, prefix + FAILED_NAME, info.etag)


def read_manifest(rt: ExportRuntime, name: str, version: str) -> Iterator[ManifestEntry]:
    """The entries of a ``ready`` training set; any other status (or none) is a ``NotFoundError``."""
    return TrainsetStore(rt.clients, rt.blobs).entries(name, version)


class BlockSink:
    """A write-only stream that hashes what passes (MD5, SHA-256) and, when ``name`` is given,
    stages it in :data:`BLOCK_BYTES` blocks with deterministic ids."""

    def __init__(self, exports: Exports, name: str | None, tag: str = "shard") -> None:
        self.exports, self.name, self.tag = exports, name, tag
        self.pos = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.buf = bytearray()
        self.blocks: list[str] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self.pos += len(data)
        self.md5.update(data)
        self.sha256.update(data)
        if self.name is not None:
            self.buf += data
            while len(self.buf) >= BLOCK_BYTES:
                self._stage(bytes(self.buf[:BLOCK_BYTES]))
                del self.buf[:BLOCK_BYTES]
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        """Stage what is buffered as a block of its own (work lists: bounded memory)."""
        if self.name is not None and self.buf:
            self._stage(bytes(self.buf))
            self.buf.clear()

    def _stage(self, chunk: bytes) -> None:
        assert self.name is not None
        bid = block_id(len(self.blocks), self.tag)
        self.exports.blobs.stage_block(self.exports.container_name, self.name, bid, chunk)
        self.blocks.append(bid)

    def commit(self, content_type: str) -> bool:
        """Commit the staged blocks with ``If-None-Match: *``; an existing blob must have these bytes."""
        assert self.name is not None
        self.flush()
        md5 = self.md5.hexdigest()
        try:
            return self.exports.blobs.commit_blocks_once(self.exports.container_name, self.name, self.blocks, content_type, md5)
        except BlobConflict as exc:
            raise _conflict(self.exports.container_name, self.name, exc.stored_md5, md5) from exc

    def same_as_stored(self, name: str) -> None:
        """The blob ``name`` (already there) has the bytes that passed, or an :class:`ExportConflict`."""
        blobs, container = self.exports.blobs, self.exports.container_name
        stored = blobs.content_md5(container, blobs.info(container, name))
        if stored != self.md5.hexdigest():
            raise _conflict(container, name, stored, self.md5.hexdigest())


# -- sharded exports: the plan -------------------------------------------------------------------


def plan_sharded(rt: ExportRuntime, req: ExportRequest) -> int:
    """Plan a WebDataset or Parquet export and send its shard jobs; the number of jobs sent."""
    exports = Exports(rt.blobs, rt.settings.exports_container)
    prefix = req.prefix
    if exports.exists(prefix + CROISSANT_NAME):
        return 0  # the same parameters again: the export is there
    clear_failure(exports, prefix)
    existing = exports.read_json(prefix + PLAN_NAME)
    plan = existing if existing is not None else _write_plan(rt, exports, req)
    done = set(exports.names(prefix + RECEIPTS))
    todo = [o for o, sh in enumerate(plan["shards"]) if prefix + receipt_file(sh["split"], sh["index"]) not in done]
    if existing is not None and plan["shards"]:  # the export again: maybe planned before the shard records
        classes_txt = exports.read(prefix + CLASSES_NAME)  # and completion bitmaps (issue 25 R6): add them
        _write_records(exports, prefix, plan, classes_txt, todo)
        for o in sorted(set(range(len(plan["shards"]))) - set(todo)):
            _count_done(exports, prefix, _record(plan, o, classes_txt))
    sent = 0
    for sh in (plan["shards"][o] for o in todo):
        job = ExportShardJob(req.name, req.version, req.export_id, sh["split"], sh["index"])
        rt.send(rt.settings.export_queue, job.to_json())
        sent += 1
    if not sent:  # every shard has its receipt (or there is none): only croissant.json may be missing
        finish_if_complete(rt, exports, prefix, plan)
    log.info("export %s:%s %s: %d shard jobs sent of %d", req.name, req.version, req.export_id, sent, len(plan["shards"]))
    return sent


def _write_plan(rt: ExportRuntime, exports: Exports, req: ExportRequest) -> dict[str, Any]:
    p = req.params
    classes: set[str] = set()
    sizes: dict[str, array[int]] = {}
    for e in read_manifest(rt, req.name, req.version):  # pass 1: sizes per split, 8 bytes an entry
        sizes.setdefault(e.split, array("Q")).append(e.size)
        classes.add(label_key(e.labels))
    ordered = class_order(classes)
    splits: dict[str, SplitPlan] = {s: plan_split(s, sz, p.shard_size, p.seed) for s, sz in sorted(sizes.items())}
    total = sum(sp.shards for sp in splits.values())
    if total > MAX_SHARDS:
        raise MessageError(
            f"export of {req.name}:{req.version} would make {total} shards (at most {MAX_SHARDS}): use a larger shard size"
        )
    positions = {s: sp.positions() for s, sp in splits.items()}
    del sizes
    writers: dict[tuple[str, int], BlockSink] = {}
    for s, sp in splits.items():
        for k in range(sp.shards):
            writers[(s, k)] = exports.sink(req.prefix + work_file(s, k), "work")
    held = 0
    ordinal: dict[str, int] = {}
    for e in read_manifest(rt, req.name, req.version):  # pass 2: each line into its shard's work list
        o = ordinal.get(e.split, 0)
        ordinal[e.split] = o + 1
        pos = positions[e.split][o]
        line = canonical_json({"pos": pos, "entry": e.to_json()}) + b"\n"
        writers[(e.split, splits[e.split].shard_of(pos))].write(line)
        held += len(line)
        if held > WORK_BUFFER_BYTES:
            for w in writers.values():
                w.flush()
            held = 0
    shards = []
    for (s, k), w in writers.items():
        w.commit("application/jsonl")
        sp = splits[s]
        shards.append({
            "split": s, "index": k, "count": sp.count(k), "first": sp.starts[k],
            "file": shard_file(s, k, sp.shards, p.format), "work": work_file(s, k),
            "work_md5": hex_to_b64(w.md5.hexdigest()), "work_size": w.pos,
        })  # fmt: skip
    counts = {s: len(sp.order) for s, sp in splits.items()}
    plan: dict[str, Any] = {
        "trainset": {"name": req.name, "version": req.version},
        "export": req.export_id,
        "params": {"format": p.format, "shard_size": p.shard_size, "seed": p.seed, "image_format": p.image_format},
        "samples": sum(counts.values()),
        "splits": counts,
        "classes": ordered,
        "shards": shards,
    }
    classes_txt = "".join(c + "\n" for c in ordered).encode("utf-8")
    exports.put_once(req.prefix + CLASSES_NAME, classes_txt, "text/plain")
    if p.format == "parquet":
        card = dataset_card(name=req.name, version=req.version, export_id=req.export_id, splits=list(counts),
                            classes=ordered, counts=counts)  # fmt: skip
        exports.put_once(req.prefix + CARD_NAME, card.encode("utf-8"), "text/markdown")
    _write_records(exports, req.prefix, plan, classes_txt, range(len(shards)))  # before plan.json: see write_shard
    exports.put_once(req.prefix + PLAN_NAME, canonical_json(plan), "application/json")
    return plan


def _write_records(exports: Exports, prefix: str, plan: dict[str, Any], classes_txt: bytes, ordinals: Iterable[int]) -> None:
    """The shards' records (``If-None-Match``; the same bytes for the same plan): each is the
    plan's entry of one shard with its ordinal in the plan, the shard count, the parameters and the
    MD5 of ``classes.txt``, all a shard job needs of the plan."""
    for ordinal in ordinals:
        record = _record(plan, ordinal, classes_txt)
        exports.put_once(prefix + record_file(record["split"], record["index"]), canonical_json(record), "application/json")


def _record(plan: dict[str, Any], ordinal: int, classes_txt: bytes) -> dict[str, Any]:
    classes_md5 = hex_to_b64(hashlib.md5(classes_txt, usedforsecurity=False).hexdigest())
    return {**plan["shards"][ordinal], "export": plan["export"], "ordinal": ordinal, "total": len(plan["shards"]),
            "params": plan["params"], "classes_md5": classes_md5}  # fmt: skip


# -- sharded exports: one shard ------------------------------------------------------------------


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _work(rt: ExportRuntime, exports: Exports, prefix: str, shard: dict[str, Any]) -> list[ManifestEntry]:
    """The shard's entries in shard order, from its work list, checked against the plan."""
    try:
        data = exports.read(prefix + shard["work"])
    except BlobNotFound as exc:
        raise NotFoundError(f"{prefix}{shard['work']} is missing: the export's plan is incomplete") from exc
    if hex_to_b64(hashlib.md5(data, usedforsecurity=False).hexdigest()) != shard["work_md5"]:
        raise ChangedBlobError(f"{prefix}{shard['work']} does not match the MD5 its plan records")
    items: list[tuple[int, ManifestEntry]] = []
    for n, raw in enumerate(data.splitlines(), start=1):
        obj = json.loads(raw)
        items.append((int(obj["pos"]), parse_line(json.dumps(obj["entry"]), n)))
    items.sort(key=lambda t: t[0])
    first, count = int(shard["first"]), int(shard["count"])
    if [pos for pos, _ in items] != list(range(first, first + count)) or any(e.split != shard["split"] for _, e in items):
        raise ChangedBlobError(f"{prefix}{shard['work']} does not hold positions {first}..{first + count - 1} of its split")
    return [e for _, e in items]


def write_shard(rt: ExportRuntime, job: ExportShardJob) -> bool:
    """Write one shard, its receipt and maybe ``croissant.json``; True if this call wrote the shard."""
    exports = Exports(rt.blobs, rt.settings.exports_container)
    prefix = job.prefix
    shard = _shard_record(exports, job)
    receipt = prefix + receipt_file(job.split, job.index)
    if exports.exists(receipt):  # a duplicate of a finished job, or its retry after the receipt
        _count_done(exports, prefix, shard)
        return False
    entries = _work(rt, exports, prefix, shard)
    classes = {c: i for i, c in enumerate(_classes(exports, prefix, shard))}
    fmt, image_format = shard["params"]["format"], shard["params"]["image_format"]
    if fmt == "parquet":
        wrote, files = _write_parquet(rt, exports, prefix, shard, entries, classes, image_format)
    else:
        wrote, files = _write_tar(rt, exports, prefix, shard, entries, classes, image_format)
    body = {"files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files], "samples": len(entries)}
    exports.put_once(receipt, canonical_json(body), "application/json")
    _count_done(exports, prefix, shard)
    return wrote


def _shard_record(exports: Exports, job: ExportShardJob) -> dict[str, Any]:
    """The job's shard, from the immutable record the planner wrote before ``plan.json`` (whose
    existence, a HEAD, says the plan is complete): O(1) in the number of shards (R6)."""
    prefix = job.prefix
    if not exports.exists(prefix + PLAN_NAME):
        raise RefusedJob(f"export shard job for {prefix}: the export has no plan")
    record = exports.read_json(prefix + record_file(job.split, job.index))
    if (
        not isinstance(record, dict)
        or record.get("export") != job.export
        or record.get("split") != job.split
        or record.get("index") != job.index
    ):
        raise RefusedJob(f"export shard job: the plan of {prefix} has no shard {job.index} of split {job.split!r}")
    return record


def _classes(exports: Exports, prefix: str, shard: dict[str, Any]) -> list[str]:
    """``classes.txt``, checked against the MD5 the shard's record holds."""
    data = exports.read(prefix + CLASSES_NAME)
    if hex_to_b64(hashlib.md5(data, usedforsecurity=False).hexdigest()) != shard["classes_md5"]:
        raise ChangedBlobError(f"{prefix}{CLASSES_NAME} does not match the MD5 its plan records")
    return data.decode("utf-8").split("\n")[:-1]


def _image_bytes(e: ManifestEntry, data: bytes, image_format: str) -> bytes:
    """The image member's bytes: as stored, or re-encoded to ``jpg``/``png`` (deterministic for one
    Pillow version; an image already in that format keeps its bytes)."""
    if image_format == "keep":
        return data
    from PIL import Image

    from corpus.domain.images import open_capped

    with open_capped(data) as img:
        target = "JPEG" if image_format == "jpg" else "PNG"
        if img.format == target or (target == "JPEG" and img.format == "MPO"):
            return data
        out = io.BytesIO()
        if target == "JPEG":
            img.convert("RGB").save(out, "JPEG", quality=95)
        else:
            conv: Image.Image = img if img.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else img.convert("RGBA")
            conv.save(out, "PNG", optimize=False, compress_level=6)
        return out.getvalue()


def _write_tar(rt: ExportRuntime, exports: Exports, prefix: str, shard: dict[str, Any], entries: list[ManifestEntry],
               classes: dict[str, int], image_format: str) -> tuple[bool, list[ExportFile]]:  # fmt: skip
    tar_name = prefix + shard["file"]
    tar_exists = exports.exists(tar_name)
    sink = exports.sink(None if tar_exists else tar_name)
    index: dict[str, Any] = {}
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:  # type: ignore[call-overload]
        for e, data in _downloads(rt, entries):
            key = sample_key(e)
            image_member, cls_member, json_member = sample_members(e, key, image_format)
            cls = str(classes[label_key(e.labels)]).encode("ascii")
            members: dict[str, Any] = {}
            for member, body in ((image_member, _image_bytes(e, data, image_format)), (cls_member, cls),
                                 (json_member, sample_json(e, key))):  # fmt: skip
                tar.addfile(_tarinfo(member, len(body)), io.BytesIO(body))
                members[member.rpartition(".")[2]] = [tar.offset - ((len(body) + 511) // 512) * 512, len(body)]
            index[key] = members
    wrote = False
    if tar_exists:
        sink.same_as_stored(tar_name)
    else:
        wrote = sink.commit("application/x-tar")
    index_body = canonical_json(
        {"tar": shard["file"], "size": sink.pos, "md5": hex_to_b64(sink.md5.hexdigest()), "samples": index}
    )
    exports.put_once(index_path(tar_name), index_body, "application/json")
    files = [
        ExportFile(shard["file"], sink.pos, sink.sha256.hexdigest()),
        ExportFile(index_path(shard["file"]), len(index_body), hashlib.sha256(index_body).hexdigest()),
    ]
    return wrote, files


def _write_parquet(rt: ExportRuntime, exports: Exports, prefix: str, shard: dict[str, Any],
                   entries: list[ManifestEntry], classes: dict[str, int],
                   image_format: str) -> tuple[bool, list[ExportFile]]:  # fmt: skip
    """One Parquet file: ``image`` (struct bytes/path, Hugging Face's Image), ``label`` (int64,
    ClassLabel), ``blob``, ``split``; the ``huggingface`` schema metadata names the features, so
    ``datasets`` reads it as Image + ClassLabel without the card. Row groups of 100 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(classes, key=lambda c: classes[c])
    features = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": names},
        "blob": {"dtype": "string", "_type": "Value"},
        "split": {"dtype": "string", "_type": "Value"},
    }
    schema = pa.schema(
        [
            pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
            pa.field("label", pa.int64()),
            pa.field("blob", pa.string()),
            pa.field("split", pa.string()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True)},
    )
    name = prefix + shard["file"]
    exists = exports.exists(name)
    sink = exports.sink(None if exists else name)
    rows: list[tuple[ManifestEntry, bytes]] = []
    with pq.ParquetWriter(sink, schema, compression="none", write_statistics=False) as writer:

        def flush() -> None:
            batch = pa.record_batch(
                [
                    pa.array([{"bytes": d, "path": e.blob.rpartition("/")[2]} for e, d in rows], schema.field("image").type),
                    pa.array([classes[label_key(e.labels)] for e, _ in rows], pa.int64()),
                    pa.array([f"{e.container}/{e.blob}" for e, _ in rows], pa.string()),
                    pa.array([e.split for e, _ in rows], pa.string()),
                ],
                schema=schema,
            )
            writer.write_batch(batch, row_group_size=100)
            rows.clear()

        for e, data in _downloads(rt, entries):
            rows.append((e, _image_bytes(e, data, image_format)))
            if len(rows) >= 100:
                flush()
        if rows:
            flush()
    wrote = False
    if exists:
        sink.same_as_stored(name)
    else:
        wrote = sink.commit("application/x-parquet")
    return wrote, [ExportFile(shard["file"], sink.pos, sink.sha256.hexdigest())]


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


# -- the end: croissant.json ---------------------------------------------------------------------


def _file_of(exports: Exports, prefix: str, rel: str) -> ExportFile:
    data = exports.read(prefix + rel)
    return ExportFile(rel, len(data), hashlib.sha256(data).hexdigest())


def _set_bit(exports: Exports, name: str, bit: int) -> int:
    """Set ``bit`` in the bitmap blob ``name`` (created with ``If-None-Match``, then replaced
    ``If-Match``: concurrent setters serialise on the ETag, none is lost); its set bits after."""
    blobs, container = exports.blobs, exports.container_name
    mask = 1 << bit
    while True:
        try:
            blob = blobs.read(container, name)
        except BlobNotFound:
            data = mask.to_bytes(FANOUT // 8, "little")
            try:
                blobs.put_once(container, name, data, "application/octet-stream")
                return 1
            except BlobConflict:
                continue  # another setter created it first
        bits = int.from_bytes(blob.data, "little")
        if bits & mask:
            return bits.bit_count()
        try:
            blobs.put_if_match(container, name, (bits | mask).to_bytes(FANOUT // 8, "little"), blob.info.etag,
                               "application/octet-stream")  # fmt: skip
            return (bits | mask).bit_count()
        except PreconditionFailed:
            continue


def _count_done(exports: Exports, prefix: str, shard: dict[str, Any]) -> bool:
    """Count the shard done (its receipt is there) and write ``croissant.json`` if it was the last.

    Two levels of bitmaps in ``_work/done/``: ``0-<g>`` has a bit per shard of group ``g``
    (``FANOUT`` shards by plan ordinal), ``1-00000`` a bit per full group. A bit is set only after
    what it stands for is done (the receipt; every bit of the group), each set is idempotent and
    serialised by ETag, so the setter that fills a bitmap sees it full; a job killed after its set
    finds its bit set when retried and goes on. The job that sees the top bitmap full writes
    ``croissant.json`` (a duplicate writes the same bytes). O(1) bytes per job, whatever the shards."""
    ordinal, total = int(shard["ordinal"]), int(shard["total"])
    group, bit = divmod(ordinal, FANOUT)
    if _set_bit(exports, prefix + done_file(0, group), bit) < min(FANOUT, total - group * FANOUT):
        return False
    if _set_bit(exports, prefix + done_file(1, 0), group) < -(-total // FANOUT):
        return False
    if not exports.exists(prefix + CROISSANT_NAME):  # a duplicate after the end reads no receipt
        _write_croissant(exports, prefix, exports.read_json(prefix + PLAN_NAME))
    return True


def finish_if_complete(rt: ExportRuntime, exports: Exports, prefix: str, plan: dict[str, Any]) -> bool:
    """Write ``croissant.json`` once every shard has its receipt (any job may be the last; all
    write the same bytes). True if the export is complete."""
    receipts = list(exports.names(prefix + RECEIPTS))
    if len(receipts) < len(plan["shards"]):
        return False
    _write_croissant(exports, prefix, plan)
    return True


def _write_croissant(exports: Exports, prefix: str, plan: dict[str, Any]) -> None:
    """``croissant.json`` from the plan and every shard's receipt (all there: the caller checked)."""
    files: list[ExportFile] = []
    for sh in plan["shards"]:
        r = exports.read_json(prefix + receipt_file(sh["split"], sh["index"]))
        files += [ExportFile(f["path"], f["size"], f["sha256"]) for f in r["files"]]
    fmt = plan["params"]["format"]
    extra = [PLAN_NAME, CLASSES_NAME] + ([CARD_NAME] if fmt == "parquet" else [])
    files += [_file_of(exports, prefix, rel) for rel in extra]
    name, version = plan["trainset"]["name"], plan["trainset"]["version"]
    doc = croissant(name=name, version=version, export_id=plan["export"], fmt=fmt, files=files,
                    splits=list(plan["splits"]), classes=plan["classes"], samples=plan["samples"])  # fmt: skip
    exports.put_once(prefix + CROISSANT_NAME, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"), "application/ld+json")


# -- Azure ML ------------------------------------------------------------------------------------


def image_url(rt: ExportRuntime, e: ManifestEntry, datastore: str | None) -> str:
    if datastore:
        return f"azureml://datastores/{datastore.replace('{container}', e.container)}/paths/{quote(e.blob, safe='/~')}"
    return f"{rt.blobs.url(e.container).rstrip('/')}/{quote(e.blob, safe='/~')}"


def write_azureml(rt: ExportRuntime, req: ExportRequest) -> dict[str, int]:
    """``<split>/images.jsonl`` + ``<split>/MLTable`` per split, streamed: two passes over the
    manifest (the first decides the label type for every file), 8 MiB blocks per split."""
    exports = Exports(rt.blobs, rt.settings.exports_container)
    prefix = req.prefix
    if exports.exists(prefix + CROISSANT_NAME):
        return {}
    clear_failure(exports, prefix)
    counts: dict[str, int] = {}
    classes: set[str] = set()
    label_counts: set[int] = set()
    for e in read_manifest(rt, req.name, req.version):
        counts[e.split] = counts.get(e.split, 0) + 1
        classes.add(label_key(e.labels))
        label_counts.add(len(e.labels))
    multilabel = azureml_multilabel(label_counts)
    sinks = {s: exports.sink(f"{prefix}{split_folder(s)}/images.jsonl", "jsonl") for s in sorted(counts)}
    for e in read_manifest(rt, req.name, req.version):
        sinks[e.split].write((azureml_line(e, image_url(rt, e, req.params.datastore), multilabel) + "\n").encode("utf-8"))
    files: list[ExportFile] = []
    table = mltable_yaml("images.jsonl").encode("utf-8")
    for s, sink in sinks.items():
        folder = split_folder(s)
        sink.commit("application/jsonl")
        exports.put_once(f"{prefix}{folder}/MLTable", table, "application/yaml")
        files += [ExportFile(f"{folder}/images.jsonl", sink.pos, sink.sha256.hexdigest()),
                  ExportFile(f"{folder}/MLTable", len(table), hashlib.sha256(table).hexdigest())]  # fmt: skip
    ordered = class_order(classes)
    exports.put_once(prefix + CLASSES_NAME, "".join(c + "\n" for c in ordered).encode("utf-8"), "text/plain")
    p = req.params
    plan = {"trainset": {"name": req.name, "version": req.version}, "export": req.export_id,
            "params": {"format": p.format, "datastore": p.datastore}, "samples": sum(counts.values()),
            "splits": counts, "classes": ordered, "multilabel": multilabel, "shards": []}  # fmt: skip
    exports.put_once(prefix + PLAN_NAME, canonical_json(plan), "application/json")
    files += [_file_of(exports, prefix, rel) for rel in (PLAN_NAME, CLASSES_NAME)]
    doc = croissant(name=req.name, version=req.version, export_id=req.export_id, fmt="azureml", files=files,
                    splits=list(counts), classes=ordered, samples=sum(counts.values()))  # fmt: skip
    exports.put_once(prefix + CROISSANT_NAME, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"), "application/ld+json")
    return counts


# -- reading side: what exports a training set has -----------------------------------------------


def export_status(exports: Exports, prefix: str) -> dict[str, Any]:
    """``{"state": "done" | "failed" | "running" | "queued", ...}`` of the export at ``prefix``."""
    if exports.exists(prefix + CROISSANT_NAME):
        return {"state": "done"}
    failed = exports.read_json(prefix + FAILED_NAME)
    if failed is not None:
        return {"state": "failed", "reason": failed.get("failed", "")}
    plan = exports.read_json(prefix + PLAN_NAME)
    if plan is None:
        return {"state": "queued"}
    done = sum(1 for _ in exports.names(prefix + RECEIPTS))
    return {"state": "running", "shards_done": done, "shards": len(plan["shards"])}


def list_exports(exports: Exports, name: str, version: str) -> list[dict[str, Any]]:
    """Every export of ``name``:``version``: its id, location, parameters and state (a listing of
    its blobs: the port has no delimiter listing)."""
    base = f"{name}/{version}/"
    out = []
    for export_id in sorted({n[len(base) :].split("/")[0] for n in exports.names(base)}):
        prefix = export_prefix(name, version, export_id)
        plan = exports.read_json(prefix + PLAN_NAME) or {}
        out.append({"export": export_id, "location": f"{exports.container_name}/{prefix}", "params": plan.get("params"),
                    "samples": plan.get("samples"), **export_status(exports, prefix)})  # fmt: skip
    return out


__all__ = ["ExportParams", "list_exports", "on_export_message"]

"""Training sets and models: build a manifest from a request, register models, answer lineage.

Build (queue ``trainset-requests``): the request's canonical definition is registered in
``TrainingSets`` (insert-only; the same name+version with another definition is refused as a
:class:`~corpus.domain.trainsets.TrainsetConflictError`, the same definition again is a no-op).
The build then walks the selected sets and streams the manifest into blob
``<name>/<version>/manifest.jsonl.gz`` of container ``trainsets`` (a rebuild, attempt ``n`` > 0,
into ``<name>/<version>/attempt-<n>/manifest.jsonl.gz``: see "Attempts"):

* **Snapshot.** Only image records whose service ``Timestamp`` is no later than the
  ``TrainingSets`` row's creation are read, by every message and every retry of the build, so
  images added to a source set later never enter it, and a retried build reads the same records.
* **Order.** Sets are taken in ``(container, set blob prefix)`` order; within a set, images in the
  order of their ``Images`` RowKey (the escaped file name, :func:`corpus.domain.keys.escape`).
  This is plain ``(container, blob)`` order whenever file names use only ``[A-Za-z0-9._-]`` and
  no selected set's prefix is a prefix of another's (``original/v2/`` vs ``original/v2/v1/``);
  otherwise it is this documented order, always the same for the same records. It needs no sort
  in memory, which is what lets a 1,000,000-image build run in bounded memory.
* **Blocks.** Every :attr:`~corpus.store.settings.Settings.trainset_block_images` images *read*
  end a checkpoint, and its lines (as many or fewer: unlabelled images write none) form one
  block: a complete gzip member (``mtime=0``, level 6, no file name) sent with Put Block under a
  deterministic id. The concatenation of members is one valid gzip file. Block boundaries depend
  only on the line count, so a build killed anywhere and retried, or split over many messages,
  writes byte-identical blocks, and Put Block List of ids 0..n-1 commits a byte-identical blob.
  (Block boundaries used to be counted in lines *written*: a mostly unlabelled selection then
  read without a checkpoint or a look at the clock, past the function timeout, issue 25 R3.)
* **State.** After each checkpoint the row's build state (cursor, block count, counts) is advanced
  with ``If-Match``: two deliveries of the same build can't both advance it; the loser stops.
  The time budget is checked after every image read once this message has saved a checkpoint
  (so every message makes progress); when it runs out the build sends a continuation message and
  returns. A build left ``building`` with no message (its message poisoned) is resumed by
  ``corpus trainset resume``, by ``trainset create`` of the same definition, and by
  reconciliation, which re-sends a continuation for builds with no progress for a while
  (:func:`resume_stuck`).
* **Index, then status.** Each block's reverse-index rows (``Lineage``) are written before the
  state that covers them; the status flips to ``ready`` last, with the manifest's SHA-256
  (computed from the committed blob, decompressed). Readers ignore index rows of sets not ready.
* **Attempts.** A ``failed`` set may be requested again (:func:`register`); the rebuild starts
  from an empty state with a fresh snapshot, so it may select other images than the failed
  attempt did (images that arrived since, the copy ``--dedupe`` keeps). The failed attempt's index
  rows, staged blocks and ``--dedupe`` claims stay where they are. So the row carries an
  ``Attempt`` number, incremented by the very ``If-Match`` that restarts the failed set (two
  racers restarting it: one wins, both build the one new attempt), and everything a build writes
  is the attempt's own: index rows carry it (in their RowKey too, so no two attempts write one
  row), block ids have a prefix per attempt, claims are filed per attempt, and each attempt
  ``n`` > 0 writes its own manifest blob (:func:`corpus.domain.trainsets.attempt_manifest_blob`,
  stored in the row's ``ManifestBlob``, which is where every reader looks). Readers of the index
  count a use only when its attempt is the ready row's, reading each training set's row once per
  query; a delivery of an older attempt finds the row at another attempt before it commits, and
  commits nothing, or (overtaken after that read) commits its own attempt's blob, which no other
  attempt writes. Every lineage answer is then exactly what the ready manifest holds, whichever
  attempt wrote which rows, and rows written before attempts existed (no ``Attempt``) are
  attempt 0, the first: no migration.

  Rejected: deleting the failed attempt's rows before the rebuild. The index is keyed by the
  source's folder, not by training set, so finding one set's rows is a scan of the table (or a
  re-read of a snapshot the rebuild no longer has); the delete would have to be resumable and
  would still race a delivery of the failed attempt writing rows after it. Writing the index only
  after the manifest is complete: a second pass over the whole manifest at the end of every
  build (its own cursor, its own budget), and a build failing during that pass leaves the same
  partial rows. The attempt costs one integer per row and a comparison per use read; failed
  attempts' rows are left for a sweep (none yet), read by lookups until then.

  Rejected (review 27): all attempts sharing the contract's blob, a rebuild whose commit finds
  its staged blocks gone (``InvalidBlockList``) resetting itself to an empty state of the same
  attempt and staging them again. Put Block List discards every uncommitted block of its blob
  that it does not name, and no condition on the commit can stop that: staged blocks change
  neither the blob's ETag nor its existence. So a failed attempt's delivery that passed its
  re-read of the row and committed its own blocks took the rebuild's away, and the rebuild's
  commit failed on every retry (resumed as stuck, failing again: wedged in ``building``). The
  reset would notice this only at the rebuild's final commit, start over as often as stragglers
  commit (a loop to bound), and need its own tests; a blob per attempt makes the case
  impossible with one name in the row. Its cost: a rebuilt set's manifest is not at the
  contract's fixed name (``trainset show`` and the API give the row's); every set built once is.
  A failed attempt's committed manifest is deleted (:func:`_drop_dead_manifest`), so the fixed
  name of a rebuilt set holds nothing rather than a failed attempt's images.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from corpus.app.runtime import Runtime
from corpus.domain import trainsets as ts
from corpus.domain.errors import BlobNotFound, MessageError, NotFoundError, PermanentError, reason
from corpus.domain.manifest import (
    ManifestEntry,
    block_id,
    gunzip_chunks,
    gzip_member,
    manifest_blob,
    set_order_key,
    split_lines,
)
from corpus.domain.paths import SetRef
from corpus.domain.trainsets import LabelOutcome, TrainsetContinue, TrainsetRequest
from corpus.domain.where import evaluate, values_of
from corpus.domain.where import parse as parse_where
from corpus.store.ports import BlobStore, iter_ranges
from corpus.store.rows import ImageRow, ImageSetRow, dirs_of
from corpus.store.trainsets_table import (
    BUILDING,
    FAILED,
    READY,
    BlobUse,
    BuildState,
    ModelRow,
    TrainsetRow,
    TrainsetStore,
    manifest_entry,
    snapshot_images,
)

log = logging.getLogger("corpus.trainsets")

MAX_EXAMPLES = 20
MAX_LABELS_JSON = 24_000
"""Label counts are stored in one table string property (≤ 32 K characters)."""
RESOLVE_CHUNK = 256
RESOLVE_THREADS = 16


def store_of(rt: Runtime) -> TrainsetStore:
    """The training-set tables: the catalog's, built once per process."""
    return rt.catalog.training


@dataclass(frozen=True, slots=True)
class SelectedSet:
    """One image set a training set reads, in manifest order by :attr:`order`."""

    row: ImageSetRow

    @property
    def container(self) -> str:
        return self.row.domain

    @property
    def prefix(self) -> str:
        return self.row.blob_path

    @property
    def order(self) -> tuple[str, str]:
        return set_order_key(self.container, self.prefix)


def select_sets(rt: Runtime, req: TrainsetRequest) -> list[SelectedSet]:
    """The sets of every source (as transform requests select them), de-duplicated, in manifest order."""
    found: dict[tuple[str, str], SelectedSet] = {}
    for src in req.sources:
        rows: list[ImageSetRow]
        if src.path is not None:
            ref = SetRef(src.domain, dirs_of(src.path), src.version or "")
            row = rt.catalog.sets.get(ref, src.transform)
            if row is None:
                what = f" transformed by {src.transform_label}" if src.transform else ""
                raise NotFoundError(f"no image set {src.domain}/{src.path} at version {src.version}{what}")
            rows = [row]
        else:
            rows = rt.catalog.sets.list(
                domain=src.domain,
                tags=src.tags,
                version=src.version,
                transform=src.transform_label,
                originals_only=src.transform is None,
            )
            rows = [r for r in rows if r.transform == src.transform]
            if not rows:
                raise NotFoundError(f"no image set of domain {src.domain!r} carries all of the tags {list(src.tags)}")
        for r in rows:
            sel = SelectedSet(r)
            found[sel.order] = sel
    return [found[k] for k in sorted(found)]


# -- the build -------------------------------------------------------------------------------


def on_trainset_message(rt: Runtime, msg: TrainsetRequest | TrainsetContinue) -> str:
    """Register (request) and build, or continue a build; returns the status after this message."""
    store = store_of(rt)
    if isinstance(msg, TrainsetContinue):
        row = store.trainsets.get(msg.name, msg.version)
        if row is None:
            raise MessageError(f"trainset continuation: no training set {msg.name}:{msg.version}")
    else:
        row = register(rt, store, msg)
    if row.status != BUILDING:
        return row.status  # the same definition again, or a stale continuation: nothing to do
    return build(rt, store, row)


def register(rt: Runtime, store: TrainsetStore, req: TrainsetRequest) -> TrainsetRow:
    """Insert the training set's row, or return the existing one if its definition is the same."""
    definition = req.definition()
    new = TrainsetRow(
        req.name,
        req.version,
        definition,
        manifest_container=rt.settings.trainsets_container,
        manifest_blob=manifest_blob(req.name, req.version),
    )
    store.trainsets.create(new)
    row = store.trainsets.get(req.name, req.version)
    if row is None:  # pragma: no cover - training sets are never deleted
        raise RuntimeError(f"training set {req.name}:{req.version} vanished after it was created")
    if row.definition != definition:
        raise ts.TrainsetConflictError(
            f"training set {req.name}:{req.version} already exists with definition {row.definition}, not {definition}; "
            "a training set version is immutable: use a new version"
        )
    if row.status == FAILED:
        # A failed build produced nothing anyone can use (every reader requires ``ready``), so the
        # same definition may be requested again: start over from an empty state as the next
        # attempt (see "Attempts" in the module docstring). One racer wins the If-Match; the others
        # read its row, so two racers never start two attempts from one failure. A ready training
        # set is never rebuilt.
        fresh = TrainsetRow(
            row.name,
            row.version,
            row.definition,
            manifest_container=row.manifest_container,
            manifest_blob=ts.attempt_manifest_blob(row.name, row.version, row.attempt + 1),
            created_at=row.created_at,
            etag=row.etag,
            attempt=row.attempt + 1,
        )
        store.trainsets.advance(fresh)
        row = store.trainsets.get(req.name, req.version) or row
    return row


def build(rt: Runtime, store: TrainsetStore, row: TrainsetRow) -> str:
    """Advance the build of ``row`` until done or out of time; see the module docstring.

    A permanent error fails the build of *this attempt* only: a delivery of a failed attempt
    still running after the rebuild started must not fail the rebuild (the If-Match is on the
    row just read, whose attempt is compared)."""
    try:
        return _build(rt, store, row)
    except PermanentError as exc:
        latest = store.trainsets.get(row.name, row.version)
        if latest is not None and latest.status == BUILDING and latest.attempt == row.attempt:
            store.trainsets.advance(replace(latest, status=FAILED, reason=reason(exc)))
        raise


def _build(rt: Runtime, store: TrainsetStore, row: TrainsetRow) -> str:
    deadline = time.monotonic() + rt.settings.trainset_budget_seconds
    if row.snapshot_at is None:
        # Nothing has changed the row since it was inserted, so its service Timestamp is the
        # insert's: every racer reads the same value, the first advance stores it.
        row = replace(row, snapshot_at=row.server_time)
    if row.snapshot_at is None:  # pragma: no cover - the service always returns a Timestamp
        raise RuntimeError("the TrainingSets row has no service Timestamp")
    if row.attempt > 0 and row.state.blocks == 0:
        # the failed attempt's manifest, if it was ever committed, must not stay beside the
        # rebuild's for a tool that reads the contract's path (review 27x): first thing, before
        # anything can fail this attempt too; see _drop_dead_manifest
        previous = ts.attempt_manifest_blob(row.name, row.version, row.attempt - 1)
        _drop_dead_manifest(rt.blobs, row.manifest_container, previous)
    req = TrainsetRequest.from_definition(row.name, row.version, row.definition)
    sets = select_sets(rt, req)
    blob = _ManifestBlob(rt.blobs, row.manifest_container, row.manifest_blob, ts.block_prefix(row.attempt))
    per_block = rt.settings.trainset_block_images
    saved = row.state  # the last state stored in the row
    blocks = saved.blocks  # blocks put or being put (one ahead of ``saved`` at most)
    lines: list[str] = []
    uses: list[BlobUse] = []
    pending = _Counts.of(saved)
    last = saved.cursor
    inflight: tuple[Future[None], BuildState] | None = None

    def settle() -> bool:
        """Wait for the block in flight, then save the state that covers it; False if we lost the race."""
        nonlocal row, saved, inflight
        if inflight is None:
            return True
        done, snap = inflight
        inflight = None
        done.result()
        row, saved = _advance(store, row, replace(snap, step=saved.step + 1))
        return bool(row.etag)

    started_at = saved.step
    reads = 0  # images read since the last checkpoint

    def carry_on() -> str:
        """Out of time: send the continuation (the row holds the state) and stop."""
        rt.send(rt.settings.trainset_queue, TrainsetContinue(row.name, row.version, saved.step).to_json())
        log.info("training set %s:%s: %d images so far, continuing", row.name, row.version, saved.images)
        return BUILDING

    # One block is written (Put Block + its index rows) in the background while the next is read.
    with ThreadPoolExecutor(1) as writer:
        for sel, rk, image, source, kept in _resolved(rt, store, sets, saved.cursor, row.snapshot_at, req, row.attempt):
            if saved.step > started_at and time.monotonic() > deadline:
                # Checked per image read (issue 25 R3), once this message has saved progress: the
                # lines read since the last checkpoint (< per_block images) are read again next time.
                return carry_on() if settle() else BUILDING
            last = (sel.container, sel.prefix, rk)
            reads += 1
            entry, outcome = _entry(sel, image, source, req)
            if outcome is LabelOutcome.OK and kept is not LabelOutcome.OK:
                outcome = kept
            pending.skip_or_count(outcome, entry, f"{sel.container}/{image.blob}")
            if outcome is LabelOutcome.OK:
                pending.moved += ts.moved(source.md5, source.cluster_md5, req.split)
                lines.append(entry.to_line() + "\n")
                uses.append(BlobUse(entry.container, entry.source_blob, entry.blob, (row.name, row.version), row.attempt))
            if reads < per_block:
                continue
            # A checkpoint every per_block images *read* (lines <= reads): its place depends only on
            # the snapshot, so blocks stay byte-identical however the build is split or retried.
            reads = 0
            job = _DONE
            if lines:
                job = writer.submit(_put_block, store, blob, blocks, lines, uses)
                blocks += 1
            snap = pending.state(saved, last, blocks)
            lines, uses = [], []
            if not settle():
                return BUILDING  # another delivery advanced the build: it carries on
            inflight = (job, snap)
            if time.monotonic() > deadline:
                return carry_on() if settle() else BUILDING
        if not settle():
            return BUILDING
    if lines:
        _put_block(store, blob, blocks, lines, uses)
        blocks += 1
    final = pending.state(saved, last, blocks)
    if final.images == 0:
        raise NotFoundError(f"training set {row.name}:{row.version} selects no labelled images; skipped: {final.skipped}")
    return _finish(store, blob, row, final)


_DONE: Future[None] = Future()
_DONE.set_result(None)
"""A checkpoint that wrote no block (every image since the last one unlabelled) waits for nothing."""


class _Counts:
    """Counts since the last saved state, merged into the next :class:`BuildState`."""

    def __init__(
        self, images: int, splits: dict[str, int], labels: dict[str, int], skipped: dict[str, int], ex: list[str], moved: int = 0
    ) -> None:
        self.images, self.splits, self.labels, self.skipped, self.examples = images, splits, labels, skipped, ex
        self.moved = moved

    @classmethod
    def of(cls, s: BuildState) -> _Counts:
        return cls(s.images, dict(s.splits), dict(s.labels), dict(s.skipped), list(s.examples), s.moved)

    def skip_or_count(self, outcome: LabelOutcome, entry: ManifestEntry, where: str) -> None:
        if outcome is not LabelOutcome.OK:
            self.skipped[outcome.value] = self.skipped.get(outcome.value, 0) + 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"{outcome.value}: {where}")
            return
        self.images += 1
        self.splits[entry.split] = self.splits.get(entry.split, 0) + 1
        for label in entry.labels:
            self.labels[label] = self.labels.get(label, 0) + 1

    def state(self, old: BuildState, cursor: tuple[str, str, str] | None, blocks: int) -> BuildState:
        size = len(json.dumps(self.labels, ensure_ascii=False))
        if size > MAX_LABELS_JSON:
            raise MessageError(
                f"the training set's label counts take {size} characters (over {MAX_LABELS_JSON}): "
                "too many distinct tags; name the labels with 'labels.classes'"
            )
        return BuildState(
            step=old.step + 1,
            cursor=cursor,
            blocks=blocks,
            images=self.images,
            splits=dict(self.splits),
            labels=dict(self.labels),
            skipped=dict(self.skipped),
            examples=tuple(self.examples),
            moved=self.moved,
        )


@dataclass(frozen=True, slots=True)
class _ManifestBlob:
    """The manifest blob a build writes, block by block."""

    blobs: BlobStore
    container: str
    name: str
    prefix: str = ts.MANIFEST_BLOCK_PREFIX
    """Of the block ids: one per attempt (:func:`corpus.domain.trainsets.block_prefix`)."""

    def block(self, index: int) -> str:
        return block_id(index, self.prefix)


def _put_block(store: TrainsetStore, blob: _ManifestBlob, index: int, lines: list[str], uses: list[BlobUse]) -> None:
    """Put one block (a complete gzip member) and index its images; both idempotent."""
    data = gzip_member("".join(lines).encode("utf-8"))
    blob.blobs.stage_block(blob.container, blob.name, blob.block(index), data)
    store.lineage.add_blob_uses(uses, index)


def _advance(store: TrainsetStore, row: TrainsetRow, new: BuildState) -> tuple[TrainsetRow, BuildState]:
    """Save ``new``; a row with an empty etag means another delivery got there first."""
    if not store.trainsets.advance(replace(row, state=new)):
        return replace(row, etag=""), new
    fresh = store.trainsets.get(row.name, row.version)
    if fresh is None or fresh.state.step != new.step:  # pragma: no cover - only we advance it
        return replace(row, etag=""), new
    return fresh, fresh.state


def _drop_dead_manifest(blobs: BlobStore, container: str, name: str) -> None:
    """Delete the manifest blob of an attempt that is over (failed, and a rebuild started), if it
    exists. Every reader takes the manifest's path from the row, but the first attempt's blob is
    at the contract's ``<name>/<version>/manifest.jsonl.gz``, where a tool of the user's own may
    look: a failed attempt's complete-looking manifest must not stay there. Called by the rebuild
    before its first block (the failed attempt's blob) and by a delivery of a dead attempt that
    committed after the rebuild started (its own blob): between them no dead blob outlives a
    rebuild. Idempotent: gone is done; ``If-Match`` on the ETag just read, so a commit landing in
    between (only a dead attempt's delivery writes this blob) is left to that delivery's own call."""
    try:
        info = blobs.info(container, name)
    except BlobNotFound:
        return
    if blobs.delete_if_unchanged(container, name, info.etag):
        log.info("deleted %s/%s, the manifest of a failed attempt", container, name)


def _finish(store: TrainsetStore, blob: _ManifestBlob, row: TrainsetRow, state: BuildState) -> str:
    """Commit the blocks, hash the committed manifest, flip to ``ready`` (If-Match).

    The row is read again first: a delivery of an attempt that is no longer the row's (it failed
    and a rebuild started, or another delivery finished) commits nothing. A delivery that passes
    this read and is overtaken before its commit by its attempt's failure and a rebuild commits
    its own attempt's blob, which the rebuild never writes (its ``manifest_blob``, see "Attempts"):
    Put Block List discards the blob's uncommitted blocks it does not name, so on a shared blob
    that commit took the rebuild's staged blocks away and wedged it (review 27). Deliveries of one
    attempt stage the same bytes under the same ids (the blocks depend only on the snapshot) and
    commit the same list, the final one, whose blocks a commit finds staged or already committed:
    one delivery's commit never takes away a block another of its attempt needs. (A row restarted
    before attempts had blobs of their own shares the contract's blob and keeps that window.)"""
    latest = store.trainsets.get(row.name, row.version)
    if latest is None or latest.status != BUILDING or latest.attempt != row.attempt:
        return latest.status if latest is not None and latest.attempt == row.attempt else BUILDING
    blocks = [blob.block(i) for i in range(state.blocks)]
    blob.blobs.commit_blocks(blob.container, blob.name, blocks, "application/gzip")
    digest, count = manifest_digest(iter_ranges(blob.blobs, blob.container, blob.name))
    if count != state.images:
        raise RuntimeError(f"manifest {row.manifest_blob} holds {count} lines, the build counted {state.images}; retrying")
    done = replace(row, status=READY, sha256=digest, state=replace(state, cursor=None))
    if not store.trainsets.advance(done):
        latest = store.trainsets.get(row.name, row.version)
        if latest is None or latest.attempt != row.attempt:
            # overtaken between the read above and the commit: this attempt is dead, and what it
            # just committed is a complete-looking manifest nobody may read (review 27x)
            _drop_dead_manifest(blob.blobs, blob.container, blob.name)
        return BUILDING  # another delivery finished it, or a rebuild took over
    log.info("training set %s:%s ready: %d images, sha256 %s", row.name, row.version, state.images, digest)
    return READY


def manifest_digest(chunks: Iterator[bytes]) -> tuple[str, int]:
    """(SHA-256 hex of the uncompressed bytes, line count) of a gzip stream, in bounded memory."""
    sha = hashlib.sha256()
    lines = 0
    for out in gunzip_chunks(chunks):
        sha.update(out)
        lines += out.count(b"\n")
    return sha.hexdigest(), lines


@dataclass(frozen=True, slots=True)
class Source:
    """What decides an image's split: its source original's MD5 and that original's duplicate
    cluster (id and founding MD5; empty for an original without facts yet), and its content key."""

    md5: str
    cluster_md5: str = ""
    cluster: str = ""
    sha256: str = ""


def _resolved(
    rt: Runtime,
    store: TrainsetStore,
    sets: list[SelectedSet],
    cursor: tuple[str, str, str] | None,
    at: Any,
    req: TrainsetRequest,
    attempt: int = 0,
) -> Iterator[tuple[SelectedSet, str, ImageRow, Source, LabelOutcome]]:
    """(set, RowKey, image, its source, kept) from the cursor on; ``kept`` is ``OK``, or why the
    image is left out (``where``, ``duplicate``). Transformed images' sources are read, and
    ``--dedupe`` claims made, in chunks, concurrently, so a page costs one round trip of latency,
    not 256. Claims go chunk after chunk, and within a chunk only the first image (in manifest
    order) of each key claims it: the first image of each key in manifest order holds it."""
    where = parse_where(req.where) if req.where is not None else None
    raw = _images_from(store, sets, cursor, at)
    with ThreadPoolExecutor(RESOLVE_THREADS) as pool:
        while chunk := list(itertools.islice(raw, RESOLVE_CHUNK)):
            sources = _sources(rt, chunk, pool)
            kept = [
                LabelOutcome.FILTERED
                if where is not None and not evaluate(where, values_of(image.size, image.width, image.height, image.facts))
                else LabelOutcome.OK
                for (_, _, image) in chunk
            ]
            _dedupe(rt, req, chunk, sources, kept, pool, attempt)
            for (sel, rk, image), source, keep in zip(chunk, sources, kept, strict=True):
                yield sel, rk, image, source, keep


def _sources(rt: Runtime, chunk: list[tuple[SelectedSet, str, ImageRow]], pool: ThreadPoolExecutor) -> list[Source]:
    """The source of each image of ``chunk``: an original's is its own record (no round trip, so
    no thread hand-off either: 20,000 futures were a visible share of a build of originals); a
    transformed image's is read, concurrently."""
    if all(sel.row.transform is None for sel, _, _ in chunk):
        return [_source_of(image) for _, _, image in chunk]
    return list(pool.map(lambda item: _source(rt, item[0], item[2]), chunk))


def _dedupe(
    rt: Runtime,
    req: TrainsetRequest,
    chunk: list[tuple[SelectedSet, str, ImageRow]],
    sources: list[Source],
    kept: list[LabelOutcome],
    pool: ThreadPoolExecutor,
    attempt: int = 0,
) -> None:
    """Mark the images ``--dedupe`` leaves out as ``duplicate`` (in place). Only images that would
    be in the manifest (labelled, matching ``where``) hold a key. Claims are the attempt's own
    (:func:`corpus.domain.trainsets.attempt_owner`): a failed attempt's claim on a key must not
    make a rebuild drop the copy that is first in *its* snapshot."""
    if req.dedupe is None:
        return
    first: dict[str, int] = {}
    for i, source in enumerate(sources):
        labelled = ts.assign_labels(chunk[i][0].row.tags, req.classes)[0] is LabelOutcome.OK
        key = ts.dedupe_key(req.dedupe, source.sha256, source.cluster) if kept[i] is LabelOutcome.OK and labelled else None
        if key is None:
            continue
        if key in first:
            kept[i] = LabelOutcome.DUPLICATE
        else:
            first[key] = i
    places = {key: f"{chunk[i][0].container}/{chunk[i][2].blob}" for key, i in first.items()}
    owner = ts.attempt_owner(req.name, req.version, attempt)
    held = pool.map(lambda key: rt.catalog.dupes.claim(owner, key, places[key]), list(places))
    for i, holds in zip(first.values(), held, strict=True):
        if not holds:
            kept[i] = LabelOutcome.DUPLICATE


def _images_from(
    store: TrainsetStore, sets: list[SelectedSet], cursor: tuple[str, str, str] | None, at: Any
) -> Iterator[tuple[SelectedSet, str, ImageRow]]:
    for sel in sets:
        after = ""
        if cursor is not None:
            if sel.order < (cursor[0], cursor[1]):
                continue
            if sel.order == (cursor[0], cursor[1]):
                after = cursor[2]
        for rk, image in snapshot_images(store.images, sel.row.images_partition_key, after, at):
            yield sel, rk, image


def _source_of(original: ImageRow) -> Source:
    cluster = original.cluster
    sha = original.facts.sha256 if original.facts else ""
    return Source(original.md5, cluster.md5 if cluster else "", cluster.id if cluster else "", sha)


def _source(rt: Runtime, sel: SelectedSet, image: ImageRow) -> Source:
    if sel.row.transform is None:
        return _source_of(image)
    ref = sel.row.ref
    prefix = ref.original_prefix()
    if not image.source.startswith(prefix):
        raise NotFoundError(f"{sel.container}/{image.blob}: its source {image.source!r} is not in {prefix!r}")
    original = rt.catalog.images.get(ref, image.source[len(prefix) :])
    if original is None:
        raise NotFoundError(f"{sel.container}/{image.blob}: no record of its source original {image.source}")
    return _source_of(original)


def _entry(sel: SelectedSet, image: ImageRow, source: Source, req: TrainsetRequest) -> tuple[ManifestEntry, LabelOutcome]:
    outcome, labels = ts.assign_labels(sel.row.tags, req.classes)
    split = ts.assign_split(ts.split_md5(source.md5, source.cluster_md5), req.split)
    entry = manifest_entry(sel.row, image, source_md5_hex=source.md5, labels=labels, split=split)
    return entry, outcome


# -- stuck builds (issue 25 B5) -----------------------------------------------------------------

STUCK_AFTER_MIN = timedelta(minutes=15)


def stuck_after(rt: Runtime) -> timedelta:
    """How long a ``building`` row may go without progress before it counts as stuck: well past a
    message's budget plus the queue's retries (a build advances its row at every checkpoint)."""
    return max(STUCK_AFTER_MIN, timedelta(seconds=4 * rt.settings.trainset_budget_seconds))


def last_progress(row: TrainsetRow) -> datetime | None:
    """When the row last changed (the service Timestamp; the row's own UpdatedAt if absent)."""
    return row.server_time or row.updated_at or row.created_at


def is_stuck(row: TrainsetRow, now: datetime, bound: timedelta) -> bool:
    """``building`` with no progress for ``bound``: its message most likely reached the poison queue."""
    at = last_progress(row)
    return row.status == BUILDING and (at is None or at <= now - bound)


def resume(rt: Runtime, name: str, version: str) -> TrainsetRow:
    """Send a continuation for a ``building`` training set, whatever its age.

    Safe at any time: a continuation is one more delivery of the build, which advances its row
    with If-Match (two deliveries never both advance it; the loser stops), so resuming a build that
    is in fact still running costs work, never correctness. A ready one needs nothing; a failed
    one is rebuilt by requesting its definition again (``trainset create``).
    """
    row = store_of(rt).trainsets.get(name, version)
    if row is None:
        raise NotFoundError(f"no training set {name}:{version}")
    if row.status == BUILDING:
        rt.send(rt.settings.trainset_queue, TrainsetContinue(name, version, row.state.step).to_json())
        log.warning("training set %s:%s resumed at step %d (%d images so far)", name, version, row.state.step, row.state.images)
    return row


def resume_stuck(rt: Runtime, now: datetime, bound: timedelta | None = None) -> list[str]:
    """Resume every build with no progress for ``bound`` (default :func:`stuck_after`); ``N:V`` of each."""
    bound = stuck_after(rt) if bound is None else bound
    resumed = []
    for row in store_of(rt).trainsets.building():
        if is_stuck(row, now, bound):
            resume(rt, row.name, row.version)
            resumed.append(f"{row.name}:{row.version}")
    return resumed


# -- models ----------------------------------------------------------------------------------


class ModelError(PermanentError):
    """A model registration that can never succeed as given (missing or unready set, conflict)."""


def register_model(
    store: TrainsetStore,
    name: str,
    version: str,
    trainsets: list[tuple[str, str]],
    uri: str = "",
    metrics: dict[str, Any] | None = None,
) -> ModelRow:
    """Register a model trained on ``trainsets``: each must exist and be ``ready``. Immutable:
    the same registration again returns the existing model, a different one is refused."""
    from corpus.domain.paths import validate_version

    validate_version(name, "model name")
    validate_version(version, "model version")
    if not trainsets:
        raise ModelError("a model needs at least one training set")
    if len(uri) > 4096:
        raise ModelError("--uri is longer than 4096 characters")
    metrics_json = json.dumps(metrics, sort_keys=True, separators=(",", ":"), ensure_ascii=False) if metrics is not None else ""
    if metrics is not None and not isinstance(metrics, dict):
        raise ModelError("metrics must be a JSON object")
    if len(metrics_json) > ts.MAX_DEFINITION_CHARS:
        raise ModelError(f"metrics are {len(metrics_json)} characters of JSON, more than {ts.MAX_DEFINITION_CHARS}")
    wanted = tuple(sorted(set(trainsets)))
    for tname, tversion in wanted:
        row = store.trainsets.get(tname, tversion)
        if row is None:
            raise ModelError(f"training set {tname}:{tversion} does not exist")
        if row.status != READY:
            raise ModelError(f"training set {tname}:{tversion} is {row.status}, not ready")
    model = ModelRow(name, version, wanted, uri, metrics_json)
    for t in wanted:  # index first: a model row never exists without its reverse index
        store.lineage.add_model_use(t, (name, version))
    if not store.models.create(model):
        existing = store.models.get(name, version)
        if existing is None or existing.definition != model.definition:
            raise ModelError(f"model {name}:{version} already exists with another definition; a model version is immutable")
        return existing
    return store.models.get(name, version) or model


# -- lineage ---------------------------------------------------------------------------------


def ready_trainset(store: TrainsetStore, name: str, version: str) -> TrainsetRow:
    return store.trainsets.require_ready(name, version)


def manifest_lines(rt: Runtime, row: TrainsetRow) -> Iterator[str]:
    """The manifest's lines (without newline), streamed and decompressed in bounded memory."""
    for line in split_lines(gunzip_chunks(store_of(rt).manifest_chunks(row))):
        yield line.decode("utf-8")


def trainsets_of_model(store: TrainsetStore, name: str, version: str) -> list[TrainsetRow]:
    model = store.models.get(name, version)
    if model is None:
        raise NotFoundError(f"no model {name}:{version}")
    return [ready_trainset(store, n, v) for n, v in model.trainsets]


def original_of(rt: Runtime, container: str, blob: str) -> str:
    """The source original of a blob: itself for ``original/…``, its record's ``source`` for ``transform/…``."""
    parts = blob.split("/")
    if parts[0] == "original":
        return blob
    if parts[0] != "transform" or len(parts) < 5:
        raise NotFoundError(f"{blob!r} is neither an original nor a transformed image of the corpus")
    name, tversion, *dirs, version, file = parts[1:]
    image = rt.catalog.images.get(SetRef(container, tuple(dirs), version), file, (name, tversion))
    if image is None:
        raise NotFoundError(f"no record of {container}/{blob}")
    return image.source


def lineage_of_blob(rt: Runtime, store: TrainsetStore, container: str, blob: str) -> dict[str, list[dict[str, str]]]:
    """Training sets (ready) and models that used ``blob``, or any transform of it when it is an original.

    A use counts only if its training set is ``ready`` and the use was written by the ready
    attempt (:attr:`~corpus.store.trainsets_table.TrainsetRow.attempt`): the index rows of a
    failed attempt, and of a delivery of it still running after the rebuild started, stay in the
    table but are never an answer. So the answer is exactly "the ready manifest holds it". Each
    training set's row is read once per query (:class:`_ReadyAttempts`), however many rows name it.
    """
    source = original_of(rt, container, blob)
    direct_only = source != blob
    attempts = _ReadyAttempts(store)
    found: set[tuple[str, str]] = set()
    for use in store.lineage.uses_of(container, source):
        if direct_only and use.blob != blob:
            continue
        if attempts.holds(use):
            found.add(use.trainset)
    ready = sorted(found)
    models: set[tuple[str, str]] = set()
    for t in ready:
        for m in store.lineage.models_of(t):
            model = store.models.get(*m)
            if model is not None and t in model.trainsets:
                models.add(m)
    return {
        "trainsets": [{"name": n, "version": v} for n, v in ready],
        "models": [{"name": n, "version": v} for n, v in sorted(models)],
    }


class _ReadyAttempts:
    """The ready attempt of each training set a lineage query meets, read once per set (a query
    reads one row per training set found, never one per index row)."""

    def __init__(self, store: TrainsetStore) -> None:
        self.store = store
        self.seen: dict[tuple[str, str], int | None] = {}

    def attempt(self, trainset: tuple[str, str]) -> int | None:
        """The attempt whose manifest is ready, or None when the set is not ready (or gone)."""
        if trainset not in self.seen:
            row = self.store.trainsets.get(*trainset)
            self.seen[trainset] = row.attempt if row is not None and row.status == READY else None
        return self.seen[trainset]

    def holds(self, use: BlobUse) -> bool:
        """Is ``use`` in its training set's ready manifest (written by the ready attempt)?"""
        ready = self.attempt(use.trainset)
        return ready is not None and use.attempt == ready

"""The incremental sync: copy what the tables gained since the last watermark into Parquet files.

One run (the timer function ``catalog_sync``, or ``corpus catalog sync``):

1. read the manifest and its ETag (no manifest: an empty snapshot; another schema version: a new
   snapshot from scratch, the tables being the system of record);
2. pick the new watermark ``hi`` = now − lag, and read every row the tables gained in
   (watermark, hi] (:meth:`~corpus.catalog.storage.CatalogStorage.changed`);
3. write them as new files: ``images`` appended, one file per domain; the small tables that
   changed (``sets``, ``transforms``, ``trainsets``, ``models`` + ``model_trainsets``,
   ``rejections``) rewritten whole, newer rows replacing older ones by key; one
   ``trainset_images`` file for each training set that became ``ready``; small ``images`` files
   of a domain merged into one (:func:`~corpus.catalog.snapshot.compaction_groups`);
4. commit the new manifest with ``If-Match`` (``If-None-Match`` for the first).

**Exactly once.** The files are content-addressed and invisible until a manifest lists them. A
run killed anywhere before step 4 leaves at most unlisted files (swept after a grace period)
and the old manifest, so the next run reads the same interval again from the same watermark and
commits it once. Two runs at once: both write files, one commit wins, the other's ``If-Match``
fails and it starts again from the winner's manifest (whose watermark now covers its rows).
Running again with nothing new only advances the watermark: no file is added.

**The lag.** ``hi`` trails the clock by :data:`DEFAULT_LAG` (setting ``CORPUS_CATALOG_LAG_SECONDS``)
so that a write still in flight when the sync reads (its ``Timestamp`` earlier than the read)
can't be missed; queries stay exact whatever the lag, as they read every row after the watermark.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus.catalog import records
from corpus.catalog.records import Row
from corpus.catalog.schema import (
    IMAGES,
    MODEL_TRAINSETS,
    MODELS,
    REJECTIONS,
    SCHEMA_VERSION,
    SETS,
    TRAINSET_IMAGES,
    TRAINSETS,
    TRANSFORMS,
    Table,
    empty,
    to_arrow,
)
from corpus.catalog.snapshot import (
    GRACE,
    FileEntry,
    Snapshot,
    compaction_groups,
    file_name,
    iso,
    merged_range,
    parquet_bytes,
)
from corpus.catalog.storage import BlobStore, CatalogStorage, Clients, Settings
from corpus.domain.errors import ConfigError
from corpus.store.trainsets_table import READY

log = logging.getLogger("corpus.catalog")

DEFAULT_LAG = timedelta(seconds=30)
LAG_SETTING = "CORPUS_CATALOG_LAG_SECONDS"
ATTEMPTS = 5


@dataclass
class SyncResult:
    watermark: str
    generation: int
    files_added: int = 0
    rows_added: dict[str, int] = field(default_factory=dict)
    compacted: int = 0
    swept: int = 0
    attempts: int = 1

    def as_json(self) -> dict[str, object]:
        return {
            "watermark": self.watermark,
            "generation": self.generation,
            "files_added": self.files_added,
            "rows_added": dict(sorted(self.rows_added.items())),
            "compacted": self.compacted,
            "swept": self.swept,
            "attempts": self.attempts,
        }


Fault = Callable[[str], None]
"""Called between steps (``"files-written"``): tests inject a crash there."""


def lag_of(values: Mapping[str, str]) -> timedelta:
    """``CORPUS_CATALOG_LAG_SECONDS`` (default :data:`DEFAULT_LAG`); a bad value is a ConfigError."""
    raw = values.get(LAG_SETTING)
    if not raw:
        return DEFAULT_LAG
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{LAG_SETTING} must be a number of seconds, not {raw!r}") from None
    if not 0 <= seconds <= 86400:
        raise ConfigError(f"{LAG_SETTING} must be between 0 and 86400")
    return timedelta(seconds=seconds)


def sync_settings(clients: Clients, settings: Settings, blobs: BlobStore | None = None) -> SyncResult:
    """One sync of the catalog these settings name (the timer function's and the CLI's entry point)."""
    result = sync(CatalogStorage.of(clients, settings, blobs), lag_of(settings.values))
    log.info("catalog sync: %s", result.as_json())
    return result


def _no_fault(step: str) -> None:
    return None


def sync(
    store: CatalogStorage,
    lag: timedelta = DEFAULT_LAG,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    fault: Fault = _no_fault,
) -> SyncResult:
    """One incremental sync (see the module docstring); retried from the new manifest if another won."""
    store.ensure()
    for attempt in range(1, ATTEMPTS + 1):
        raw, etag = store.read_manifest()
        old = Snapshot.from_json(raw) if raw else Snapshot()
        if old.schema_version != SCHEMA_VERSION:
            log.warning("catalog snapshot has schema %s, not %s: starting a new one", old.schema_version, SCHEMA_VERSION)
            old = Snapshot(retired=old.retired)  # the old files become orphans, swept after the grace period
        t = now()
        lo = old.watermark_time
        hi = t - lag
        if lo is not None and hi <= lo:
            hi = lo
        result = SyncResult(iso(hi), old.generation + 1, attempts=attempt)
        removed, added = _delta(store, old, lo, hi, result)
        fault("files-written")
        new = old.replace_files(removed, added, t, iso(hi))
        if store.commit_manifest(new.to_json(), etag):
            result.generation = new.generation
            result.swept = sweep(store, new, t)
            return result
        log.info("another sync committed the catalog manifest first; starting again from it")
    raise RuntimeError(f"the catalog manifest stayed contended for {ATTEMPTS} attempts; run again")


def _delta(
    store: CatalogStorage, old: Snapshot, lo: datetime | None, hi: datetime, result: SyncResult
) -> tuple[list[FileEntry], list[FileEntry]]:
    """Write the files of the rows written in (lo, hi]; return (files replaced, files added)."""
    since, until = (iso(lo) if lo else None), iso(hi)
    removed: list[FileEntry] = []
    added: list[FileEntry] = []

    def write(table: Table, data: pa.Table, domain: str | None = None, trainset: tuple[str, str] | None = None) -> FileEntry:
        body = parquet_bytes(table, data)
        name = file_name(table, body, domain, trainset)
        store.put_file(name, body)
        entry = FileEntry(table.name, name, data.num_rows, len(body), since, until, domain, _label(trainset))
        added.append(entry)
        return entry

    # images: appended, a file per domain
    images = store.images(lo, hi) if lo is None or hi > lo else empty(IMAGES)
    for domain in sorted(set(images.column("domain").to_pylist())):
        write(IMAGES, images.filter(pc.equal(images.column("domain"), domain)), domain=domain)
    result.rows_added["images"] = images.num_rows

    # small tables: rewritten whole when any row changed
    if lo is None or hi > lo:
        changed: dict[Table, list[Row]] = {
            SETS: store.sets(lo, hi),
            TRANSFORMS: store.transforms(lo, hi),
            REJECTIONS: store.rejections(lo, hi),
        }
        trainsets = store.trainsets(lo, hi)
        models = store.models(lo, hi)
        changed[TRAINSETS] = [records.trainset(r) for r in trainsets]
        changed[MODELS] = [records.model(m) for m in models]
        changed[MODEL_TRAINSETS] = [x for m in models for x in records.model_trainsets(m)]
        for table, rows in changed.items():
            if not rows:
                continue
            before = old.of(table.name)
            merged, new_rows = _merge(table, [store.get_file(f.name) for f in before], rows)
            body = parquet_bytes(table, merged)
            name = file_name(table, body)
            if [f.name for f in before] == [name]:
                continue  # e.g. a set whose counts were refreshed: its catalog row is unchanged
            store.put_file(name, body)
            added.append(FileEntry(table.name, name, merged.num_rows, len(body), None, until))  # all its rows, up to `until`
            removed += before
            result.rows_added[table.name] = new_rows

        # trainset_images: one file per training set that is ready and not yet in the snapshot
        done = old.expanded
        for r in trainsets:
            label = f"{r.name}:{r.version}"
            if r.status == READY and label not in done:
                lines = store.trainset_images(r)
                write(TRAINSET_IMAGES, lines, trainset=(r.name, r.version))
                result.rows_added["trainset_images"] = result.rows_added.get("trainset_images", 0) + lines.num_rows

    # compaction: the small images files of a domain, merged
    pending = Snapshot(files=tuple(f for f in old.files if f not in removed) + tuple(added))
    for group in compaction_groups(pending):
        data = pa.concat_tables([pq.read_table(io.BytesIO(store.get_file(f.name))) for f in group], promote_options="default")
        body = parquet_bytes(IMAGES, data)
        name = file_name(IMAGES, body, group[0].domain)
        store.put_file(name, body)
        first, last = merged_range(group)
        merged_entry = FileEntry(IMAGES.name, name, data.num_rows, len(body), first, last, group[0].domain)
        removed += [f for f in group if f in old.files]
        added[:] = [f for f in added if f not in group] + [merged_entry]
        result.compacted += len(group)
    result.files_added = len(added)
    return removed, added


def _label(trainset: tuple[str, str] | None) -> str | None:
    return f"{trainset[0]}:{trainset[1]}" if trainset else None


def _merge(table: Table, files: list[bytes], rows: list[Row]) -> tuple[pa.Table, int]:
    """The table's rows after ``rows`` replace the old ones with their key; and how many keys are new."""
    by_key: dict[tuple[object, ...], Row] = {}
    for body in files:
        for row in pq.read_table(io.BytesIO(body)).to_pylist():
            by_key[tuple(row.get(k) for k in table.key)] = row
    before = len(by_key)
    for row in rows:
        by_key[tuple(row.get(k) for k in table.key)] = row
    return to_arrow(table, list(by_key.values())), len(by_key) - before


def sweep(store: CatalogStorage, snapshot: Snapshot, now: datetime) -> int:
    """Delete files no manifest lists any more (replaced, or left by a sync that died) once they are
    older than :data:`~corpus.catalog.snapshot.GRACE`; returns how many were deleted."""
    keep = {f.name for f in snapshot.files} | {r.name for r in snapshot.retired}
    n = 0
    for name, modified, etag in store.list_files():
        if name not in keep and modified < now - GRACE:
            store.delete(name, etag)
            n += 1
    return n

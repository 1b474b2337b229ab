"""The catalog's one storage adapter: every table read and blob operation the catalog makes.

Everything else in :mod:`corpus.catalog` works on Arrow tables, bytes and this object, so moving
the catalog onto other storage ports means changing this module only.

**What is new.** The rows the catalog copies are insert-only (``Images``, ``ImageTransforms``,
``Models``) or small (``ImageSets``, ``TrainingSets``, ``Rejections``). Each entity carries the
storage service's ``Timestamp`` of its last write; :meth:`CatalogStorage.changed` asks the
service for the entities with ``lo < Timestamp <= hi``, so a sync reads what was written since
the last watermark and a query reads what was written after the snapshot's, and both compare
against the same clock (the service's), with the same bounds, so a row is in exactly one of them.
The two rewrites of ``Images`` rows (facts backfill, schema stamp) move ``Timestamp`` but keep
the insert time in ``Recorded``: a row recorded by the lower bound is skipped (:func:`_recorded_by`).

**Blobs** go through the store's port (:class:`~corpus.store.ports.BlobStore`): Parquet files
are immutable and content-addressed (their name holds the SHA-256 of their bytes) and written
``put_once`` (``If-None-Match: *``); the manifest (``manifest.json``) is created ``put_once`` and
replaced ``put_if_match`` its ETag, so of two concurrent syncs one commits and the other finds out
and starts again from the new manifest. Tables are read through a
:class:`~corpus.store.tables.TableSource`. No SDK call is made here, so the catalog runs on
either implementation of the ports (Azure, or :meth:`Runtime.in_memory` for unit tests).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from corpus.catalog import records
from corpus.catalog.records import Row
from corpus.catalog.schema import IMAGES, empty
from corpus.domain import keys
from corpus.domain.errors import BlobConflict, BlobNotFound, PreconditionFailed
from corpus.domain.manifest import ManifestEntry, iter_entries
from corpus.store.azure_ports import AzureBlobStore
from corpus.store.images_table import IMAGES_FROM
from corpus.store.ports import BlobStore, iter_blobs, iter_ranges
from corpus.store.rows import RECORDED, ImageSetRow, RejectionRow, TransformRow, is_set_entity
from corpus.store.settings import (
    CATALOG_CONTAINER,
    DEFAULTS,
    TABLE_IMAGES,
    TABLE_MODELS,
    TABLE_REJECTIONS,
    TABLE_SETS,
    TABLE_TRAINSETS,
    TABLE_TRANSFORMS,
    Settings,
)
from corpus.store.storage import Clients
from corpus.store.tables import TableSource
from corpus.store.trainsets_table import ModelRow, TrainsetRow, TrainsetStore

MANIFEST = "manifest.json"
PARQUET = "application/vnd.apache.parquet"
READERS = 8
"""Concurrent table reads of one sync or tail (partition-key ranges, or sets)."""
CHUNK = 2_000
"""Rows converted to Arrow at a time by each reader: 8 readers x 2,000 rows of Python dicts stay ~40 MB."""

__all__ = ["MANIFEST", "BlobStore", "CatalogStorage", "Clients", "Settings", "catalog_container"]


def _recorded_by(entity: Any, lo: datetime) -> bool:
    """Whether an ``Images`` row was inserted at or before ``lo`` although its ``Timestamp`` is
    later: a rewrite (:meth:`~corpus.store.images_table.ImagesTable.rewrite`) keeps the insert time
    in ``Recorded``. Such a row is in the catalog snapshot already; appending it again would count
    it twice (its new facts reach the catalog when the images files are rebuilt, see docs/query.md)."""
    recorded = entity.get(RECORDED)
    return recorded is not None and recorded <= lo


def catalog_container(settings: Settings) -> str:
    return str(settings.values.get(CATALOG_CONTAINER) or DEFAULTS[CATALOG_CONTAINER])


class RangedFile(io.RawIOBase):
    """A seekable binary file over ``read_range(offset, length)``: each read is one ranged request.
    ``requests`` and ``bytes_read`` count them (what a caller saved is what it did not read)."""

    def __init__(self, read_range: Callable[[int, int], bytes], size: int) -> None:
        super().__init__()
        self._read_range = read_range
        self._size = size
        self._pos = 0
        self.requests = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), self._size - self._pos)
        if length <= 0:
            return 0
        data = self._read_range(self._pos, length)
        self.requests += 1
        self.bytes_read += len(data)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class CatalogStorage:
    def __init__(self, tables: TableSource, blobs: BlobStore, container: str) -> None:
        self.tables = tables
        self.blobs = blobs
        self.container_name = container

    @property
    def location(self) -> str:
        """The container's URL: what a local cache of its files is keyed by."""
        return self.blobs.url(self.container_name)

    @classmethod
    def of(cls, clients: Clients, settings: Settings, blobs: BlobStore | None = None) -> CatalogStorage:
        """The catalog of these settings: tables from ``clients`` (a :class:`Clients`, or the
        ``MemoryTables`` of :meth:`Runtime.in_memory`), blobs through ``blobs``, by default the Azure
        adapter on ``clients``."""
        return cls(clients, blobs if blobs is not None else AzureBlobStore(clients), catalog_container(settings))

    # -- tables --------------------------------------------------------------------------------

    def changed(
        self, table: str, lo: datetime | None, hi: datetime | None, row_from: str = "", pk_range: tuple[str, str] = ("", "")
    ) -> Iterator[Any]:
        """Entities of ``table`` whose service ``Timestamp`` is in (lo, hi] (unbounded where None),
        with ``RowKey >= row_from`` and ``pk_range[0] <= PartitionKey < pk_range[1]`` where given
        (``(pk, "=")``: that partition only)."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if pk_range[1] == "=":
            clauses.append("PartitionKey eq @pk")
            params["pk"] = pk_range[0]
            pk_range = ("", "")
        for clause, name, value in (
            ("PartitionKey ge @pklo", "pklo", pk_range[0]),
            ("PartitionKey lt @pkhi", "pkhi", pk_range[1]),
            ("RowKey ge @from", "from", row_from),
            ("Timestamp gt @lo", "lo", lo),
            ("Timestamp le @hi", "hi", hi),
        ):
            if value:
                clauses.append(clause)
                params[name] = value
        client = self.tables.table_client(table)
        if not clauses:
            return iter(client.list_entities(results_per_page=1000))
        return iter(client.query_entities(" and ".join(clauses), parameters=params, results_per_page=1000))

    def all_sets(self) -> dict[str, tuple[ImageSetRow, datetime | None]]:
        """Every set (originals and transformed) by its ``Images`` partition key, with the service
        time of its entity's last write."""
        found = self.tables.table_client(TABLE_SETS).query_entities("RowKey lt @hi", parameters={"hi": keys.SETS_UPPER})
        out = {}
        for e in found:
            s = ImageSetRow.from_entity(e)
            out[s.images_partition_key] = (s, records.service_time(e))
        return out

    def images(self, lo: datetime | None, hi: datetime | None, scan: bool = True) -> pa.Table:
        """``images`` rows recorded in (lo, hi]; counter shards (updated in place) are skipped by key range.

        ``scan=True`` (the sync): every partition is read, in :data:`READERS` partition-key ranges
        at once, the service filtering by ``Timestamp``: exact whatever happened.

        ``scan=False`` (a query's tail): only the partitions of sets whose entity was written after
        ``lo``. Recording images ends with raising the set's count (:meth:`Catalog.refresh_counts`,
        an update of the set's entity, hence of its ``Timestamp``), so a set that gained images
        after ``lo`` was written after ``lo`` too: one cheap read of ``ImageSets`` finds them, and
        the tail reads their partitions only, instead of the service scanning all of ``Images``.
        The one thing it misses is an image whose copy died between recording it and raising the
        count, until the redelivery raises it (the moment ``corpus sets`` shows it too).
        """
        sets = self.all_sets()
        if scan:
            bounds = sorted(sets)[:: max(1, len(sets) // READERS)][1:]
            ranges = list(zip(["", *bounds], [*bounds, ""], strict=True))
        else:
            ranges = [(pk, "=") for pk, (_, ts) in sorted(sets.items()) if lo is None or ts is None or ts > lo]

        def read(pk_range: tuple[str, str]) -> list[pa.Table]:
            """One range's rows as Arrow tables of at most :data:`CHUNK` rows: memory stays
            proportional to the Arrow data, not to millions of Python dicts."""
            known = {pk: s for pk, (s, _) in sets.items()}
            chunks: list[pa.Table] = []
            batch: list[Any] = []

            def convert() -> None:
                nonlocal known
                if any(pk not in known for pk in {str(e["PartitionKey"]) for e in batch}):
                    known = {pk: s for pk, (s, _) in self.all_sets().items()}  # a set created after the listing
                    missing = sorted({str(e["PartitionKey"]) for e in batch} - known.keys())
                    if missing:
                        raise RuntimeError(f"Images partition {missing[0]!r} has no set in ImageSets")
                chunks.append(records.images_table(batch, known))
                batch.clear()

            for e in self.changed(TABLE_IMAGES, lo, hi, row_from=IMAGES_FROM, pk_range=pk_range):
                if keys.is_source_partition(str(e["PartitionKey"])):
                    continue  # count's source markers share the table: not images
                if lo is not None and _recorded_by(e, lo):
                    continue  # rewritten since lo (facts, schema stamp) but recorded by lo: already in the snapshot
                batch.append(e)
                if len(batch) == CHUNK:
                    convert()
            if batch:
                convert()
            return chunks

        with ThreadPoolExecutor(READERS) as pool:
            parts = [t for chunk in pool.map(read, ranges) for t in chunk]
        return pa.concat_tables(parts) if parts else empty(IMAGES)

    def sets(self, lo: datetime | None, hi: datetime | None) -> list[Row]:
        return [records.set_(ImageSetRow.from_entity(e)) for e in self.changed(TABLE_SETS, lo, hi) if is_set_entity(e)]

    def transforms(self, lo: datetime | None, hi: datetime | None) -> list[Row]:
        found = self.changed(TABLE_TRANSFORMS, lo, hi)
        markers = keys.PAGE_MARKER_PREFIX  # fan-out page markers share the table
        return [records.transform(TransformRow.from_entity(e)) for e in found if not str(e["PartitionKey"]).startswith(markers)]

    def trainsets(self, lo: datetime | None, hi: datetime | None) -> list[TrainsetRow]:
        return [TrainsetRow.from_entity(e) for e in self.changed(TABLE_TRAINSETS, lo, hi)]

    def models(self, lo: datetime | None, hi: datetime | None) -> list[ModelRow]:
        return [ModelRow.from_entity(e) for e in self.changed(TABLE_MODELS, lo, hi)]

    def rejections(self, lo: datetime | None, hi: datetime | None) -> list[Row]:
        return [records.rejection(RejectionRow.from_entity(e)) for e in self.changed(TABLE_REJECTIONS, lo, hi)]

    def trainset_images(self, row: TrainsetRow) -> pa.Table:
        """The manifest lines of a ready training set, as ``trainset_images`` rows (read in 4 MiB
        ranges, converted :data:`CHUNK` lines at a time)."""
        chunks: list[pa.Table] = []
        entries: list[ManifestEntry] = []
        for e in iter_entries(TrainsetStore(self.tables, self.blobs).manifest_chunks(row)):
            entries.append(e)
            if len(entries) == CHUNK:
                chunks.append(records.trainset_images_table(row.name, row.version, entries))
                entries = []
        chunks.append(records.trainset_images_table(row.name, row.version, entries))
        return pa.concat_tables(chunks)

    # -- blobs ---------------------------------------------------------------------------------

    def ensure(self) -> None:
        self.blobs.ensure_container(self.container_name)

    def read_manifest(self) -> tuple[bytes | None, str | None]:
        """The manifest's bytes and ETag, or (None, None) when there is no snapshot yet."""
        try:
            blob = self.blobs.read(self.container_name, MANIFEST)
        except BlobNotFound:
            return None, None
        return blob.data, blob.info.etag

    def commit_manifest(self, data: bytes, etag: str | None) -> bool:
        """Replace the manifest if it is still at ``etag`` (create it if ``etag`` is None); False if not."""
        if etag is None:
            try:
                return self.blobs.put_once(self.container_name, MANIFEST, data, "application/json")
            except BlobConflict:
                return False
        try:
            self.blobs.put_if_match(self.container_name, MANIFEST, data, etag, "application/json")
        except PreconditionFailed:
            return False
        return True

    def put_file(self, name: str, data: bytes) -> None:
        """Write an immutable, content-addressed file once (If-None-Match: *). When it exists already
        (same name, same bytes), it is written again, which only refreshes its Last-Modified, so the
        orphan sweep of another sync does not take it for an old orphan."""
        if not self.blobs.put_once(self.container_name, name, data, PARQUET):
            self.blobs.put(self.container_name, name, data, PARQUET)

    def get_file(self, name: str) -> bytes:
        return self.blobs.read(self.container_name, name).data

    def open_file(self, name: str, size: int) -> RangedFile:
        """A read-only, seekable view of a file of ``size`` bytes that fetches only the byte ranges
        read from it: Parquet readers then fetch the footer and the column chunks they need, not the
        whole file (the function app reads a few columns of files that may be large)."""
        return RangedFile(lambda offset, length: self.blobs.read_ranges(self.container_name, name, [(offset, length)])[0], size)

    def download_to(self, name: str, path: Path) -> None:
        """Download a file to ``path`` (4 MiB ranges, through a temporary name, so a cache never holds
        half a file); FileNotFoundError if it is gone (swept: the manifest that listed it is old)."""
        part = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            with open(part, "wb") as out:
                for chunk in iter_ranges(self.blobs, self.container_name, name):
                    out.write(chunk)
        except BlobNotFound:
            part.unlink(missing_ok=True)
            raise FileNotFoundError(f"{self.container_name}/{name} is gone") from None
        part.replace(path)

    def list_files(self) -> list[tuple[str, datetime, str]]:
        """(name, last modified, ETag) of every file but the manifest."""
        return [
            (b.name, b.last_modified or datetime.now(UTC), b.etag)
            for b in iter_blobs(self.blobs, self.container_name)
            if b.name != MANIFEST
        ]

    def delete(self, name: str, etag: str) -> None:
        """Delete a file if it is still the version listed (a re-written one is left for the next sweep)."""
        self.blobs.delete_if_unchanged(self.container_name, name, etag)

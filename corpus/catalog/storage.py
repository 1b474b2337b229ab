"""The catalog's one storage adapter: every table read and blob operation the catalog makes.

Everything else in :mod:`corpus.catalog` works on Arrow tables, bytes and this object, so moving
the catalog onto other storage ports means changing this module only.

**What is new.** The rows the catalog copies are insert-only (``Images``, ``ImageTransforms``,
``Models``) or small (``ImageSets``, ``TrainingSets``, ``Rejections``). Each entity carries the
storage service's ``Timestamp`` of its last write; :meth:`CatalogStorage.changed` asks the
service for the entities with ``lo < Timestamp <= hi``, so a sync reads what was written since
the last watermark and a query reads what was written after the snapshot's, and both compare
against the same clock (the service's), with the same bounds, so a row is in exactly one of them.

**Blobs.** Parquet files are immutable and content-addressed (their name holds the SHA-256 of
their bytes) and are written ``If-None-Match: *``; the manifest (``manifest.json``) is replaced
``If-Match`` its ETag (created ``If-None-Match: *``), so of two concurrent syncs one commits and
the other finds out and starts again from the new manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from corpus.catalog import records
from corpus.catalog.records import Row
from corpus.domain import keys
from corpus.domain.manifest import iter_entries
from corpus.store.images_table import IMAGES_FROM
from corpus.store.rows import ImageSetRow, RejectionRow, TransformRow, is_set_entity
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
from corpus.store.trainsets_table import ModelRow, TrainsetRow, blob_ranges

MANIFEST = "manifest.json"

__all__ = ["MANIFEST", "CatalogStorage", "Clients", "Settings", "catalog_container"]


def catalog_container(settings: Settings) -> str:
    return str(settings.values.get(CATALOG_CONTAINER) or DEFAULTS[CATALOG_CONTAINER])


class CatalogStorage:
    def __init__(self, clients: Clients, container: str) -> None:
        self.clients = clients
        self.container_name = container
        self.container = clients.container(container)

    @property
    def location(self) -> str:
        """The container's URL: what a local cache of its files is keyed by."""
        return str(self.container.url)

    @classmethod
    def of(cls, clients: Clients, settings: Settings) -> CatalogStorage:
        return cls(clients, catalog_container(settings))

    # -- tables --------------------------------------------------------------------------------

    def changed(self, table: str, lo: datetime | None, hi: datetime | None, row_from: str = "") -> Iterator[Any]:
        """Entities of ``table`` whose service ``Timestamp`` is in (lo, hi] (unbounded where None),
        with ``RowKey >= row_from`` if given."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if row_from:
            clauses.append("RowKey ge @from")
            params["from"] = row_from
        if lo is not None:
            clauses.append("Timestamp gt @lo")
            params["lo"] = lo
        if hi is not None:
            clauses.append("Timestamp le @hi")
            params["hi"] = hi
        client = self.clients.table_client(table)
        if not clauses:
            return iter(client.list_entities(results_per_page=1000))
        return iter(client.query_entities(" and ".join(clauses), parameters=params, results_per_page=1000))

    def all_sets(self) -> dict[str, ImageSetRow]:
        """Every set (originals and transformed) by its ``Images`` partition key."""
        found = self.clients.table_client(TABLE_SETS).query_entities("RowKey lt @hi", parameters={"hi": keys.SETS_UPPER})
        return {s.images_partition_key: s for s in (ImageSetRow.from_entity(e) for e in found)}

    def images(self, lo: datetime | None, hi: datetime | None) -> list[Row]:
        """``images`` rows recorded in (lo, hi]. Counter shards (updated in place) are skipped by key range."""
        sets: dict[str, ImageSetRow] | None = None
        out: list[Row] = []
        for e in self.changed(TABLE_IMAGES, lo, hi, row_from=IMAGES_FROM):
            if sets is None:
                sets = self.all_sets()  # read only when there is something to join: the tail is usually empty
            pk = str(e["PartitionKey"])
            s = sets.get(pk)
            if s is None:  # recorded under a set created after the set listing: list again, once per miss
                sets = self.all_sets()
                s = sets.get(pk)
                if s is None:
                    raise RuntimeError(f"Images partition {pk!r} has no set in ImageSets")
            out.append(records.image(s, e))
        return out

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

    def trainset_images(self, row: TrainsetRow) -> list[Row]:
        """The manifest lines of a ready training set, as ``trainset_images`` rows (streamed in 4 MiB ranges)."""
        blob = self.clients.container(row.manifest_container).get_blob_client(row.manifest_blob)
        return [records.trainset_image(row.name, row.version, e) for e in iter_entries(blob_ranges(blob))]

    # -- blobs ---------------------------------------------------------------------------------

    def ensure(self) -> None:
        self.clients.ensure(containers=(self.container_name,))

    def read_manifest(self) -> tuple[bytes | None, str | None]:
        """The manifest's bytes and ETag, or (None, None) when there is no snapshot yet."""
        try:
            downloaded = self.container.get_blob_client(MANIFEST).download_blob()
        except ResourceNotFoundError:
            return None, None
        return downloaded.readall(), str(downloaded.properties.etag)

    def commit_manifest(self, data: bytes, etag: str | None) -> bool:
        """Replace the manifest if it is still at ``etag`` (create it if ``etag`` is None); False if not."""
        blob = self.container.get_blob_client(MANIFEST)
        try:
            if etag is None:
                blob.upload_blob(data, overwrite=False)
            else:
                blob.upload_blob(data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True

    def put_file(self, name: str, data: bytes) -> None:
        """Write an immutable, content-addressed file once (If-None-Match: *). When it exists already
        (same name, same bytes), its Last-Modified is refreshed, so the orphan sweep of a concurrent
        sync does not take it for an old orphan."""
        blob = self.container.get_blob_client(name)
        try:
            blob.upload_blob(data, overwrite=False)
        except ResourceExistsError:
            blob.set_blob_metadata({"touched": "1"})

    def get_file(self, name: str) -> bytes:
        return bytes(self.container.get_blob_client(name).download_blob().readall())

    def download_to(self, name: str, path: Path) -> None:
        """Download a file to ``path`` through a temporary name, so a cache never holds half a file."""
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as out:
            self.container.get_blob_client(name).download_blob(max_concurrency=4).readinto(out)
        part.replace(path)

    def list_files(self) -> list[tuple[str, datetime]]:
        return [(str(b.name), b.last_modified) for b in self.container.list_blobs() if b.name != MANIFEST]

    def delete(self, name: str) -> None:
        try:
            self.container.delete_blob(name)
        except ResourceNotFoundError:
            pass

"""What a pull (or a dataset) reads: a training set's manifest, or an ad-hoc selection of image sets.

A training set is read from its manifest, the immutable list of exact files, once its
``TrainingSets`` row says it is ``ready``: a manifest blob alone may be a half-built or failed
one. An ad-hoc selection reads the ``ImageSets`` and ``Images`` tables, as transform requests
select sets; it has no splits, and each image carries its set's tags.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corpus.domain.errors import NotFoundError
from corpus.domain.paths import SetRef, validate_domain, validate_version
from corpus.pull.fetch import BlobFetcher
from corpus.store.settings import Settings

if TYPE_CHECKING:
    from corpus.domain.manifest import ManifestEntry


@dataclass(frozen=True)
class TrainsetSource:
    name: str
    version: str

    def describe(self) -> dict[str, Any]:
        return {"trainset": f"{self.name}:{self.version}"}


@dataclass(frozen=True)
class AdHocSource:
    domain: str
    set_version: str
    tags: tuple[str, ...] = ()
    path: str | None = None
    transform: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        validate_domain(self.domain)
        validate_version(self.set_version, "set version")
        if (self.path is None) == (not self.tags):
            raise ValueError("give exactly one of --path or --tag")

    def describe(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "set_version": self.set_version,
            "tags": list(self.tags),
            "path": self.path,
            "transform": ":".join(self.transform) if self.transform else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdHocSource:
        t = data.get("transform")
        name, _, ver = (t or "").partition(":")
        return cls(
            data["domain"], data["set_version"], tuple(data.get("tags") or ()), data.get("path"), (name, ver) if t else None
        )


Source = TrainsetSource | AdHocSource


def source_from_json(data: dict[str, Any]) -> Source:
    if "trainset" in data:
        name, _, version = str(data["trainset"]).partition(":")
        return TrainsetSource(name, version)
    return AdHocSource.from_json(data)


SPOOL_IN_MEMORY = 1024 * 1024
"""Bytes of a spooled manifest kept in memory; beyond, it goes to a temporary file."""


class ManifestSpool:
    """A manifest's compressed bytes, fetched once and read as often as needed (a pull reads the
    entries twice: names are decided over all of them first), with the SHA-256 of those bytes."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by close()
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
            self.file.write(chunk)
        self.sha256 = digest.hexdigest()

    def chunks(self) -> Iterator[bytes]:
        """The bytes from the start (one reader at a time)."""
        self.file.seek(0)
        while block := self.file.read(SPOOL_IN_MEMORY):
            yield block

    def close(self) -> None:
        self.file.close()


@dataclass
class EntryReader:
    settings: Settings
    fetcher: BlobFetcher = field(init=False)
    _spools: dict[TrainsetSource, ManifestSpool] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.fetcher = BlobFetcher(self.settings.connection)

    def entries(self, source: Source) -> Iterator[ManifestEntry]:
        """The source's entries; a training set's manifest is fetched once per reader (:meth:`spooled`)."""
        if isinstance(source, TrainsetSource):
            from corpus.domain.manifest import iter_entries

            return iter_entries(self.spooled(source).chunks())
        return self.ad_hoc(source)

    def spooled(self, source: TrainsetSource) -> ManifestSpool:
        """The training set's manifest bytes, fetched on the first call (after the ``ready`` check)."""
        if source not in self._spools:
            container, blob, ref, status = self._ready(source.name, source.version)
            self._spools[source] = ManifestSpool(self._manifest_chunks(container, blob, ref, status))
        return self._spools[source]

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()

    def manifest(self, name: str, version: str) -> Iterator[ManifestEntry]:
        """The entries of a ``ready`` training set (any other status, or none, is a ``NotFoundError``), streamed."""
        from corpus.domain.manifest import iter_entries

        return iter_entries(self._manifest_chunks(*self._ready(name, version)))

    def _ready(self, name: str, version: str) -> tuple[str, str, str, str]:
        """Where a ``ready`` training set's manifest is: (container, blob, ``name:version``, status)."""
        from corpus.domain import keys
        from corpus.pull.fetch import TableRowReader
        from corpus.store.settings import TABLE_TRAINSETS

        # The row and the manifest by plain GETs on the fetcher's transport: a re-run with nothing
        # to do loads no Azure SDK and no `requests` (tests/test_import_time.py). The same rule as
        # TrainsetsTable.require_ready: only a `ready` row says its manifest is complete.
        ref = f"{name}:{version}"
        row = TableRowReader(self.settings.connection, self.fetcher.lister).get(
            TABLE_TRAINSETS, keys.escape(name), keys.escape(version)
        )
        if row is None:
            raise NotFoundError(f"no training set {ref}")
        status = str(row.get("Status") or "")
        if status != "ready":
            why = f" ({row['Reason']})" if row.get("Reason") else ""
            raise NotFoundError(f"training set {ref} is {status}{why}, not ready")
        container, blob = str(row.get("ManifestContainer") or ""), str(row.get("ManifestBlob") or "")
        return container, blob, ref, status

    def _manifest_chunks(self, container: str, blob: str, ref: str, status: str) -> Iterator[bytes]:
        from corpus.pull.fetch import BlobNotFound, iter_blob_ranges

        try:
            yield from iter_blob_ranges(self.fetcher, container, blob)
        except BlobNotFound as exc:
            raise NotFoundError(f"training set {ref} is {status} but its manifest {container}/{blob} is missing") from exc

    def ad_hoc(self, source: AdHocSource) -> Iterator[ManifestEntry]:
        from corpus.store.catalog import Catalog
        from corpus.store.rows import dirs_of
        from corpus.store.storage import FAIL_FAST, Clients
        from corpus.store.trainsets_table import manifest_entry

        catalog = Catalog(Clients(self.settings.connection, dict(FAIL_FAST)))
        if source.path is not None:
            row = catalog.sets.get(SetRef(source.domain, dirs_of(source.path), source.set_version), source.transform)
            if row is None:
                raise NotFoundError(f"no set {source.domain}/{source.path}@{source.set_version}")
            rows = [row]
        else:
            transform = ":".join(source.transform) if source.transform else None
            rows = [
                r
                for r in catalog.sets.list(
                    domain=source.domain,
                    tags=source.tags,
                    transform=transform,
                    version=source.set_version,
                    originals_only=source.transform is None,
                )
                if r.transform == source.transform
            ]
        out = [
            manifest_entry(row, img, source_md5_hex=None if row.transform else img.md5, labels=row.tags, split="")
            for row in rows
            for img in catalog.images.iter(row.ref, row.transform)
        ]
        out.sort(key=lambda e: e.sort_key)
        return iter(out)

"""The snapshot's manifest and files, as values: what a sync commits and a query reads. Pure.

The container ``CORPUS_CATALOG_CONTAINER`` (default ``catalog``) holds::

    manifest.json                                  this module's :class:`Snapshot`
    images/<domain>/<sha256>.parquet               images, one folder per domain
    <table>/<sha256>.parquet                       every other table
    trainset_images/<name>/<version>/<sha256>.parquet   one file per ready training set

A file's name holds the SHA-256 of its bytes (:func:`file_name`): it is immutable, so a reader
may cache it by name forever, and two writers of the same rows write the same file. Only files
the manifest lists are part of the snapshot; a file written by a sync that died before its
commit, or replaced by a compaction, is listed nowhere and is deleted after a grace period
(:data:`GRACE`), long enough for a reader holding an older manifest to finish.

The manifest says, for every file, the table, its row count and bytes, and the watermark range
(``since``, ``watermark``] of service ``Timestamp``\\s its rows were read in; the snapshot's own
``watermark`` is the upper end of the last sync: every row written at or before it is in the
files, every row written after it is read from the tables by ``corpus query``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpus.catalog.schema import SCHEMA_VERSION, TABLES, Table

FORMAT = "corpus-catalog"
GRACE = timedelta(hours=1)
"""How long a file no manifest lists (replaced, or written by a sync that died) is kept."""
COMPACT_SMALL_BYTES = 32 * 1024 * 1024
"""Image files below this size are "small"; :data:`COMPACT_AT` of them in a domain are merged."""
COMPACT_AT = 4
ROW_GROUP = 256 * 1024


@dataclass(frozen=True, slots=True)
class FileEntry:
    table: str
    name: str
    rows: int
    bytes: int
    since: str | None
    """Watermark (ISO 8601, exclusive) its rows start after; None: from the beginning."""
    watermark: str
    """Watermark (inclusive) its rows were read up to."""
    domain: str | None = None
    trainset: str | None = None
    """``name:version`` of the training set whose manifest lines this ``trainset_images`` file holds."""


@dataclass(frozen=True, slots=True)
class Retired:
    name: str
    at: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    schema_version: int = SCHEMA_VERSION
    watermark: str | None = None
    generation: int = 0
    files: tuple[FileEntry, ...] = ()
    retired: tuple[Retired, ...] = field(default=())

    @property
    def watermark_time(self) -> datetime | None:
        return parse_time(self.watermark) if self.watermark else None

    def of(self, table: str) -> list[FileEntry]:
        return [f for f in self.files if f.table == table]

    @property
    def expanded(self) -> set[str]:
        """``name:version`` of every training set whose manifest lines are in the snapshot."""
        return {f.trainset for f in self.files if f.trainset}

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "watermark": self.watermark,
            "generation": self.generation,
            "files": [_compact(asdict(f)) for f in self.files],
            "retired": [asdict(r) for r in self.retired],
        }
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        body = json.loads(data)
        if body.get("format") != FORMAT:
            raise ValueError("not a corpus catalog manifest")
        return cls(
            schema_version=int(body["schema_version"]),
            watermark=body.get("watermark"),
            generation=int(body.get("generation", 0)),
            files=tuple(FileEntry(**f) for f in body.get("files", [])),
            retired=tuple(Retired(**r) for r in body.get("retired", [])),
        )

    def replace_files(self, removed: list[FileEntry], added: list[FileEntry], now: datetime, watermark: str) -> Snapshot:
        """The next generation: ``removed`` retired (kept for :data:`GRACE`), ``added`` listed."""
        gone = {f.name for f in removed}
        still = [r for r in self.retired if parse_time(r.at) > now - GRACE]
        kept = [f for f in self.files if f.name not in gone]
        names = {f.name for f in kept}
        new = [f for f in added if f.name not in names]
        retired = still + [Retired(n, iso(now)) for n in sorted(gone - {f.name for f in new})]
        return replace(self, files=tuple(kept + new), retired=tuple(retired), watermark=watermark, generation=self.generation + 1)


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None or k == "since"}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parquet_bytes(table: Table, data: pa.Table) -> bytes:
    """Deterministic Parquet bytes of ``data`` in ``table``'s schema, rows sorted by the table's key
    (the same rows give the same bytes, hence the same content-addressed name)."""
    data = data.cast(table.arrow).sort_by([(k, "ascending") for k in table.key])
    out = io.BytesIO()
    pq.write_table(data, out, compression="zstd", row_group_size=ROW_GROUP, write_statistics=True)
    return out.getvalue()


def file_name(table: Table, data: bytes, domain: str | None = None, trainset: tuple[str, str] | None = None) -> str:
    digest = hashlib.sha256(data).hexdigest()[:40]
    if trainset is not None:
        return f"{table.name}/{trainset[0]}/{trainset[1]}/{digest}.parquet"
    if domain is not None:
        return f"{table.name}/{domain}/{digest}.parquet"
    return f"{table.name}/{digest}.parquet"


def compaction_groups(snapshot: Snapshot) -> list[list[FileEntry]]:
    """Per domain, the small ``images`` files to merge into one (when there are :data:`COMPACT_AT` or more)."""
    by_domain: dict[str, list[FileEntry]] = {}
    for f in snapshot.of("images"):
        if f.bytes < COMPACT_SMALL_BYTES:
            by_domain.setdefault(f.domain or "", []).append(f)
    return [files for _, files in sorted(by_domain.items()) if len(files) >= COMPACT_AT]


def merged_range(files: list[FileEntry]) -> tuple[str | None, str]:
    """(since, watermark) covered by merged files: the earliest start, the latest end."""
    starts = [f.since for f in files]
    since = None if None in starts else min(s for s in starts if s is not None)
    return since, max(f.watermark for f in files)


def table_of(name: str) -> Table:
    return TABLES[name]

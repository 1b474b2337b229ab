"""Tables ``TrainingSets``, ``Models`` and ``Lineage``: rows and their homes.

``TrainingSets`` (PK = escaped name, RK = escaped version): one entity per training set, with its
canonical definition, status (``building`` → ``ready`` | ``failed`` with a reason), counts and the
manifest's blob and SHA-256. While ``building`` it also carries the build state (``Step``,
``Cursor``, ``Blocks``, partial counts, ``SnapshotAt``), advanced only with ``If-Match``, so two
deliveries of one build message can't both advance it.

``Models`` (PK = escaped name, RK = escaped version): a model, its training sets, URI and metrics.

``Lineage`` is the reverse index, two kinds of rows:

* blob → training set, packed (version 2, :class:`LineageTable`): PK = ``d`` + bucket
  (:data:`BLOB_BUCKETS` buckets by a hash of the *source original's folder*), RK =
  ``compose(container, folder, file bucket, set name, set version, block, part)``, the uses of
  one manifest block in that folder and file bucket in one ``Uses`` property. An original and
  all its transforms are in one row group inside one partition, so "which training sets used
  this original, directly or through any transform" is one range query reading 1/16 of the
  folder's uses per training set that used the folder. A block of 10,000 images in sets of 1,000
  is ~160 rows (issue 26: one row per image made the index most of the build's time). Version 1
  (PK ``b`` + a hash of the source original, RK ``compose(container, source original, set name,
  set version, blob)``, one row per image), written by older builds, is still read.
* training set → model: PK = ``m!`` + ``compose(set name, set version)``, RK = ``compose(model,
  version)``, written before the model's own row, so a model never exists without its index.

Index rows of a set that is not ``ready`` (still building, or failed) are ignored by readers:
the index is written during the build, the status flips to ``ready`` last. A failed set
requested again is rebuilt as its next *attempt* (``Attempt`` on the ``TrainingSets`` row, 0 when
absent): packed rows of attempt ``n`` > 0 carry ``Attempt`` and one more RowKey segment ``a<n>``
(:func:`lineage_row_key`), and readers count only the uses of the ready attempt
(:func:`corpus.app.trainsets.lineage_of_blob`), so a failed attempt's rows never answer.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError, ServiceResponseError
from azure.data.tables import TableClient, UpdateMode

from corpus.domain import keys
from corpus.domain import trainsets as ts
from corpus.domain.errors import BlobNotFound, NotFoundError
from corpus.domain.limits import MAX_TABLE_BATCH
from corpus.domain.manifest import ManifestEntry, hex_to_b64, iter_entries
from corpus.store import egt, tablequery
from corpus.store.ports import BlobStore, iter_ranges
from corpus.store.rows import Entity, ImageRow, ImageSetRow, as_int, int64, now, recorded_at
from corpus.store.settings import TABLE_IMAGES, TABLE_LINEAGE, TABLE_MODELS, TABLE_TRAINSETS
from corpus.store.storage import Clients
from corpus.store.tables import R, RowTable, TableSource

BUILDING = "building"
READY = "ready"
FAILED = "failed"

BLOB_BUCKETS = 64
FILE_BUCKETS = 16
"""Groups of a folder's files in the packed index: a lookup reads 1/16 of a folder's uses per training set."""
INDEX_THREADS = 8
SEND_ATTEMPTS = 3
LINEAGE_SCHEMA = 2
"""The packed blob → training set rows (:class:`LineageTable`); rows without ``Schema`` are version 1."""
MAX_USES_CHARS = 30_000
"""One ``Uses`` property: under the service's 32 K UTF-16 units of a string property."""
MAX_BATCH_BYTES = 3_500_000
"""Serialised ``Uses`` bytes per transaction: a ``$batch`` body stays under the service's 4 MiB."""


def _str(entity: Mapping[str, Any], name: str) -> str:
    value = entity.get(name)
    return "" if value is None else str(value)


def _json(entity: Mapping[str, Any], name: str, default: Any) -> Any:
    raw = entity.get(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return default


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class BuildState:
    """Where a build stands between messages: always at a block boundary."""

    step: int = 0
    cursor: tuple[str, str, str] | None = None
    """(container, set blob prefix, last Images RowKey written) or ``None`` at the start."""
    blocks: int = 0
    images: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    """Images left out, by reason (``no-class``, ``several-classes``)."""
    examples: tuple[str, ...] = ()
    """A few skipped images (``reason: container/blob``), for ``trainset show``."""
    moved: int = 0
    """Images put in another split than their own MD5 gives, to keep their duplicate cluster whole."""


@dataclass(frozen=True, slots=True)
class TrainsetRow:
    name: str
    version: str
    definition: str
    status: str = BUILDING
    reason: str = ""
    manifest_container: str = ""
    manifest_blob: str = ""
    sha256: str = ""
    state: BuildState = field(default_factory=BuildState)
    snapshot_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    etag: str = ""
    server_time: datetime | None = None
    """The entity's service ``Timestamp`` when read (used once, as the snapshot time)."""
    attempt: int = 0
    """Which build of this definition the row describes: 0 for the first, one more each time a
    ``failed`` build is requested again and restarted (by the If-Match that restarts it). Index
    rows, manifest blocks and ``--dedupe`` claims carry it, and attempts restarted since review 27
    write their own manifest blob (:func:`corpus.domain.trainsets.attempt_manifest_blob`); readers
    use only the ready attempt's. A row written before attempts existed has no ``Attempt``: it is
    attempt 0, unless its ``ManifestBlob`` names another (older code rewriting a rebuilt row)."""

    @property
    def keys(self) -> tuple[str, str]:
        return keys.escape(self.name), keys.escape(self.version)

    def to_entity(self) -> Entity:
        pk, rk = self.keys
        s = self.state
        entity: Entity = {
            "PartitionKey": pk,
            "RowKey": rk,
            "Name": self.name,
            "Version": self.version,
            "Definition": self.definition,
            "Status": self.status,
            "Reason": self.reason[:16000],
            "ManifestContainer": self.manifest_container,
            "ManifestBlob": self.manifest_blob,
            "SHA256": self.sha256,
            "Images": int64(s.images),
            "Splits": _dumps(s.splits),
            "Labels": _dumps(s.labels),
            "Skipped": _dumps(s.skipped),
            "Examples": _dumps(list(s.examples)),
            "Step": int64(s.step),
            "Cursor": _dumps(list(s.cursor)) if s.cursor else "",
            "Blocks": int64(s.blocks),
            "Moved": int64(s.moved),
            "Attempt": int64(self.attempt),
            "CreatedAt": self.created_at or now(),
            "UpdatedAt": now(),
        }
        if self.snapshot_at is not None:
            entity["SnapshotAt"] = self.snapshot_at
        return entity

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> TrainsetRow:
        cursor = _json(entity, "Cursor", None)
        meta = getattr(entity, "metadata", {}) or {}
        snapshot = entity.get("SnapshotAt")
        state = BuildState(
            step=as_int(entity.get("Step")),
            cursor=(str(cursor[0]), str(cursor[1]), str(cursor[2])) if cursor else None,
            blocks=as_int(entity.get("Blocks")),
            images=as_int(entity.get("Images")),
            splits={str(k): int(v) for k, v in _json(entity, "Splits", {}).items()},
            labels={str(k): int(v) for k, v in _json(entity, "Labels", {}).items()},
            skipped={str(k): int(v) for k, v in _json(entity, "Skipped", {}).items()},
            examples=tuple(str(x) for x in _json(entity, "Examples", [])),
            moved=as_int(entity.get("Moved")),
        )
        created, updated = entity.get("CreatedAt"), entity.get("UpdatedAt")
        return cls(
            name=_str(entity, "Name"),
            version=_str(entity, "Version"),
            definition=_str(entity, "Definition"),
            status=_str(entity, "Status"),
            reason=_str(entity, "Reason"),
            manifest_container=_str(entity, "ManifestContainer"),
            manifest_blob=_str(entity, "ManifestBlob"),
            sha256=_str(entity, "SHA256"),
            state=state,
            snapshot_at=snapshot if isinstance(snapshot, datetime) else None,
            created_at=created if isinstance(created, datetime) else None,
            updated_at=updated if isinstance(updated, datetime) else None,
            etag=str(meta.get("etag") or ""),
            server_time=meta.get("timestamp"),
            # Code older than attempts rewrites the row without ``Attempt`` but keeps its
            # ``ManifestBlob``, which names the attempt (docs/schema.md): the attempt never goes back.
            attempt=max(as_int(entity.get("Attempt")), ts.manifest_attempt(_str(entity, "ManifestBlob"))),
        )


class _VersionedTable(RowTable[R]):
    """A table of immutable ``name``:``version`` things (PK = escaped name, RK = escaped version)."""

    def create(self, row: R) -> bool:
        """Insert-only; False if (name, version) exists already (the caller compares)."""
        return self._insert_once(row)

    def get(self, name: str, version: str) -> R | None:
        return self._get(keys.escape(name), keys.escape(version))


class TrainsetsTable(_VersionedTable[TrainsetRow]):
    row = TrainsetRow

    def require_ready(self, name: str, version: str) -> TrainsetRow:
        """The row of a ``ready`` training set, or :class:`NotFoundError` naming why not.

        Everything that reads a training set's files (lineage, ``corpus pull``, exports, the
        datasets) goes through here: a manifest blob alone is not a training set (it may be a
        half-built one, or one whose build failed), only a ``ready`` row says its manifest is complete.
        """
        row = self.get(name, version)
        if row is None:
            raise NotFoundError(f"no training set {name}:{version}")
        if row.status != READY:
            why = f" ({row.reason})" if row.reason else ""
            raise NotFoundError(f"training set {name}:{version} is {row.status}{why}, not ready")
        return row

    def advance(self, row: TrainsetRow) -> bool:
        """Replace the row if nobody changed it since ``row`` was read (its ETag); False if someone did."""
        try:
            self.table.update_entity(
                row.to_entity(), mode=UpdateMode.REPLACE, etag=row.etag, match_condition=MatchConditions.IfNotModified
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    def building(self) -> Iterator[TrainsetRow]:
        """Every training set whose build has not ended (a property filter: O(training sets) on the
        service side, O(building) transferred)."""
        for e in self.table.query_entities("Status eq @s", parameters={"s": BUILDING}):
            yield TrainsetRow.from_entity(e)

    def list(self) -> list[TrainsetRow]:
        rows = (TrainsetRow.from_entity(e) for e in self.table.list_entities())
        return sorted(rows, key=lambda r: (r.name, r.version))


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: str
    version: str
    trainsets: tuple[tuple[str, str], ...]
    uri: str = ""
    metrics: str = ""
    """Canonical JSON of the metrics object, or empty."""
    created_at: datetime | None = None

    @property
    def definition(self) -> str:
        return _dumps({"trainsets": [list(t) for t in self.trainsets], "uri": self.uri, "metrics": self.metrics})

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": keys.escape(self.name),
            "RowKey": keys.escape(self.version),
            "Name": self.name,
            "Version": self.version,
            "Trainsets": _dumps([list(t) for t in self.trainsets]),
            "URI": self.uri,
            "Metrics": self.metrics,
            "CreatedAt": self.created_at or now(),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> ModelRow:
        created = entity.get("CreatedAt")
        return cls(
            name=_str(entity, "Name"),
            version=_str(entity, "Version"),
            trainsets=tuple((str(t[0]), str(t[1])) for t in _json(entity, "Trainsets", [])),
            uri=_str(entity, "URI"),
            metrics=_str(entity, "Metrics"),
            created_at=created if isinstance(created, datetime) else None,
        )


class ModelsTable(_VersionedTable[ModelRow]):
    row = ModelRow

    def list(self) -> list[ModelRow]:
        return sorted((ModelRow.from_entity(e) for e in self.table.list_entities()), key=lambda r: (r.name, r.version))


@dataclass(frozen=True, slots=True)
class BlobUse:
    """One image of a training set, as the reverse index keeps it."""

    container: str
    source: str
    """The source original's blob (the image itself for an original)."""
    blob: str
    trainset: tuple[str, str]
    attempt: int = 0
    """The build attempt that wrote the use (:attr:`TrainsetRow.attempt`); 0 for rows without one."""


def blob_bucket(container: str, source: str) -> str:
    """The partition of a version-1 (one row per image) index row: ``b`` + a hash of the source."""
    digest = hashlib.sha256(f"{container}/{source}".encode("utf-8", "surrogatepass")).digest()
    return f"b{int.from_bytes(digest[:4], 'big') % BLOB_BUCKETS:02d}"


def folder_bucket(container: str, folder: str) -> str:
    """The partition of a packed (version 2) index row: ``d`` + a hash of the source's folder."""
    digest = hashlib.sha256(f"{container}/{folder}".encode("utf-8", "surrogatepass")).digest()
    return f"d{int.from_bytes(digest[:4], 'big') % BLOB_BUCKETS:02d}"


def file_bucket(file: str) -> str:
    """Which of a folder's :data:`FILE_BUCKETS` groups a source file's uses are packed in."""
    digest = hashlib.sha256(file.encode("utf-8", "surrogatepass")).digest()
    return f"{int.from_bytes(digest[:4], 'big') % FILE_BUCKETS:02d}"


def split_source(source: str) -> tuple[str, str]:
    """(folder, file name) of a source original's blob name."""
    folder, _, file = source.rpartition("/")
    return folder, file


def _utf16_units(text: str) -> int:
    """A string property's size as the service counts it (≤ 32 K UTF-16 code units)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _pack(entries: list[Any]) -> Iterator[str]:
    """``entries`` as JSON arrays of at most :data:`MAX_USES_CHARS` UTF-16 units each, in order."""
    part: list[Any] = []
    size = 2
    for entry in entries:
        cost = _utf16_units(json.dumps(entry, ensure_ascii=False)) + 1
        if part and size + cost > MAX_USES_CHARS:
            yield json.dumps(part, ensure_ascii=False, separators=(",", ":"))
            part, size = [], 2
        part.append(entry)
        size += cost
    if part:
        yield json.dumps(part, ensure_ascii=False, separators=(",", ":"))


def packed_rows(uses: Iterable[BlobUse], block: int) -> list[Entity]:
    """The version-2 index rows of one manifest block's ``uses`` (see :class:`LineageTable`)."""
    groups: dict[tuple[str, str, str, str, str, int], dict[tuple[str, str], Any]] = defaultdict(dict)
    for u in uses:
        folder, file = split_source(u.source)
        entry: Any = file if u.blob == u.source else [file, u.blob]
        groups[(u.container, folder, file_bucket(file), u.trainset[0], u.trainset[1], u.attempt)][(file, u.blob)] = entry
    rows: list[Entity] = []
    for (container, folder, bucket, name, version, attempt), entries in groups.items():
        for part, packed in enumerate(_pack(list(entries.values()))):
            row: Entity = {
                "PartitionKey": folder_bucket(container, folder),
                "RowKey": lineage_row_key(container, folder, bucket, name, version, block, part, attempt),
                "Container": container,
                "Folder": folder,
                "Name": name,
                "Version": version,
                "Block": block,
                "Uses": packed,
                "Schema": LINEAGE_SCHEMA,
            }
            if attempt:
                row["Attempt"] = attempt
            rows.append(row)
    return rows


def lineage_row_key(
    container: str, folder: str, bucket: str, name: str, version: str, block: int, part: int, attempt: int
) -> str:
    """The RowKey of a packed index row. Attempt 0 has the key every build wrote before attempts
    existed; attempt ``n`` > 0 one more segment, ``a<n>``. So two attempts never write the same
    row: a delivery of a failed attempt still running can't overwrite the rebuild's rows (an
    upsert of the same key would), only add rows every reader ignores."""
    head = (container, folder, bucket, name, version, f"{block:08d}", f"{part:04d}")
    return keys.compose(*head) if attempt == 0 else keys.compose(*head, f"a{attempt}")


def _transactions(rows: list[Entity]) -> list[list[Entity]]:
    """``rows`` grouped by partition, ≤ 100 rows and ≤ :data:`MAX_BATCH_BYTES` of ``Uses`` each."""
    by_pk: dict[str, list[Entity]] = defaultdict(list)
    for row in rows:
        by_pk[str(row["PartitionKey"])].append(row)
    chunks: list[list[Entity]] = []
    for group in by_pk.values():
        chunk: list[Entity] = []
        size = 0
        for row in group:
            cost = len(json.dumps(row["Uses"])) + 1024  # as the request body escapes it, plus the keys
            if chunk and (len(chunk) == MAX_TABLE_BATCH or size + cost > MAX_BATCH_BYTES):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(row)
            size += cost
        if chunk:
            chunks.append(chunk)
    return chunks


class LineageTable:
    """The ``Lineage`` table: which training sets used a source original (and models, a training set).

    Blob → training set rows, **version 2 (packed)**, written by every build since issue 26: one
    row per (container, source folder, file bucket, training set, manifest block, part), holding
    in ``Uses`` the JSON list of that block's uses of the folder's files in that bucket (a file
    name for an original used as itself, ``[file, blob]`` for a transformed image of it). PK =
    ``d`` + a hash of (container, folder) (:func:`folder_bucket`, 64 partitions), RK =
    ``compose(container, folder, file bucket, name, version, block, part)``. So a block of 10,000
    images in sets of 1,000 writes ~10 × 16 rows (a few transactions), not 10,000 rows; a lookup
    is still one range query in one partition, reading the uses of one file bucket (1/16) of the
    folder for each training set that used the folder. Rows are deterministic in the block's
    lines, so a retried block rewrites the same rows (upsert).

    Version 1 (one row per image, PK ``b`` + a hash of the source, RK ``compose(container,
    source, name, version, blob)``), written by builds before, is still read: a lookup also reads
    that range. Nothing rewrites old rows; both shapes give the same answers (docs/schema.md).
    """

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def add_blob_uses(self, uses: Iterable[BlobUse], block: int) -> int:
        """Upsert the packed index rows of manifest block ``block``; returns transactions sent."""
        chunks = _transactions(packed_rows(uses, block))

        def send(chunk: list[Entity]) -> None:
            for attempt in range(SEND_ATTEMPTS):
                try:
                    egt.submit(self.table, [("upsert", e, {"mode": UpdateMode.REPLACE}) for e in chunk])
                    return
                except ServiceResponseError:
                    # The pipeline retries no POST whose connection dropped (a pooled connection
                    # the server closed while the build read a block: seen on Azurite at 100,000
                    # rows). These rows are upserts of fixed content, so sending them again is safe.
                    if attempt == SEND_ATTEMPTS - 1:
                        raise

        # Transactions to different partitions are independent: overlap their round trips.
        with ThreadPoolExecutor(INDEX_THREADS) as pool:
            list(pool.map(send, chunks))
        return len(chunks)

    def uses_of(self, container: str, source: str) -> Iterator[BlobUse]:
        """Every indexed use of ``source`` (an original) or of any transform of it: one range
        query over the packed rows of its folder and file bucket, one over version-1 rows."""
        folder, file = split_source(source)
        lo = keys.compose(container, folder, file_bucket(file)) + keys.SEPARATOR
        for e in self._range(folder_bucket(container, folder), lo):
            trainset = (_str(e, "Name"), _str(e, "Version"))
            attempt = as_int(e.get("Attempt"))
            for entry in _json(e, "Uses", []):
                used, blob = (entry, source) if isinstance(entry, str) else (str(entry[0]), str(entry[1]))
                if used == file:
                    yield BlobUse(container, source, blob, trainset, attempt)
        lo = keys.compose(container, source) + keys.SEPARATOR
        for e in self._range(blob_bucket(container, source), lo):
            yield BlobUse(_str(e, "Container"), _str(e, "Source"), _str(e, "Blob"), (_str(e, "Name"), _str(e, "Version")))

    def _range(self, partition_key: str, lo: str) -> Iterator[Any]:
        """The rows of one partition whose RowKey starts with ``lo`` (which ends in the separator)."""
        hi = lo[:-1] + chr(ord(keys.SEPARATOR) + 1)
        return tablequery.query_entities(
            self.table,
            "PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
            parameters={"pk": partition_key, "lo": lo, "hi": hi},
        )

    def add_model_use(self, trainset: tuple[str, str], model: tuple[str, str]) -> None:
        self.table.upsert_entity(
            {
                "PartitionKey": "m" + keys.SEPARATOR + keys.compose(*trainset),
                "RowKey": keys.compose(*model),
                "Name": model[0],
                "Version": model[1],
            },
            mode=UpdateMode.REPLACE,
        )

    def models_of(self, trainset: tuple[str, str]) -> list[tuple[str, str]]:
        pk = "m" + keys.SEPARATOR + keys.compose(*trainset)
        rows = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": pk})
        return [(_str(e, "Name"), _str(e, "Version")) for e in rows]


def manifest_entry(
    set_row: ImageSetRow, image: ImageRow, *, source_md5_hex: str | None, labels: tuple[str, ...], split: str
) -> ManifestEntry:
    """The manifest entry of one image record of ``set_row`` (the builder's, and ad-hoc pulls').

    MD5s go from the ``Images`` table's hex to the manifest's base64; ``source`` is the image itself
    for an original, its source original for a transformed image (``source_md5_hex`` ``None`` when
    the caller did not look it up: the entry then says ``""``).
    """
    return ManifestEntry(
        container=set_row.domain,
        blob=image.blob,
        md5=hex_to_b64(image.md5),
        size=image.size,
        width=image.width,
        height=image.height,
        domain=set_row.domain,
        path=set_row.path,
        version=set_row.version,
        transform=set_row.transform,
        source_blob=image.source if set_row.transform else image.blob,
        source_md5=hex_to_b64(source_md5_hex) if source_md5_hex else "",
        labels=labels,
        split=split,
        facts=image.facts,
    )


FIRST_IMAGE_KEY = '"'
"""Below every escaped file name, above the counter rows (``!count!NN``) of a set's partition."""


def snapshot_images(images: TableClient, partition_key: str, after: str, at: datetime) -> Iterator[tuple[str, ImageRow]]:
    """A set's image records with RowKey > ``after``, in RowKey order, recorded no later than ``at``.

    ``at`` is compared with each image row's insert time in the service's own clock
    (:func:`~corpus.store.rows.recorded_at`: its ``Recorded`` if a rewrite such as a facts backfill
    or a schema stamp kept it there, else its ``Timestamp``), so an image recorded after the
    snapshot is never seen, and one recorded before it is always seen, by this message or by any
    continuation or retry of the build, whatever rewrites ran in between.
    """
    rows = tablequery.query_entities(
        images, "PartitionKey eq @pk and RowKey gt @after", parameters={"pk": partition_key, "after": after or FIRST_IMAGE_KEY}
    )
    for entity in rows:
        stamp = recorded_at(entity)
        if stamp is not None and stamp > at:
            continue
        yield str(entity["RowKey"]), ImageRow.from_entity(entity)


class TrainsetStore:
    """The three tables of training sets and lineage, plus read access to ``Images`` snapshots."""

    def __init__(self, clients: TableSource, blobs: BlobStore | None = None) -> None:
        """``blobs`` reads the manifests; by default the Azure adapter on ``clients`` (which must
        then be :class:`~corpus.store.storage.Clients`): tools that only have clients keep working."""
        self.clients = clients
        if blobs is None:
            from corpus.store.azure_ports import AzureBlobStore  # the blob SDK: only when manifests are read

            blobs = AzureBlobStore(_as_clients(clients))
        self.blobs = blobs
        self.trainsets = TrainsetsTable(clients.table_client(TABLE_TRAINSETS))
        self.models = ModelsTable(clients.table_client(TABLE_MODELS))
        self.lineage = LineageTable(clients.table_client(TABLE_LINEAGE))
        self.images = clients.table_client(TABLE_IMAGES)

    def manifest_chunks(self, row: TrainsetRow) -> Iterator[bytes]:
        """The compressed bytes of ``row``'s manifest, in ranges (bounded memory)."""
        try:
            # 4 MiB ranges: the SDK's own download would fetch its first 32 MiB at once
            yield from iter_ranges(self.blobs, row.manifest_container, row.manifest_blob)
        except BlobNotFound as exc:
            raise NotFoundError(
                f"training set {row.name}:{row.version} is {row.status} but its manifest "
                f"{row.manifest_container}/{row.manifest_blob} is missing"
            ) from exc

    def entries(self, name: str, version: str) -> Iterator[ManifestEntry]:
        """The manifest entries of a ``ready`` training set (:meth:`TrainsetsTable.require_ready`),
        streamed: the one way ``corpus pull``, the exports and the datasets read a training set."""
        return iter_entries(self.manifest_chunks(self.trainsets.require_ready(name, version)))


def _as_clients(source: TableSource) -> Clients:
    if not isinstance(source, Clients):
        raise TypeError("TrainsetStore needs a BlobStore when built on anything but Clients")
    return source

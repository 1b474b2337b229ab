"""Typed rows: one frozen dataclass per table entity, the only code that knows column names.

Every table entity the corpus writes or reads passes through ``to_entity``/``from_entity`` here,
so no module outside :mod:`corpus.store` reads a column by its string name, and ``Tags`` JSON is
parsed in one place.

Counts are 64-bit: the Tables SDK writes a Python ``int`` as ``Edm.Int32`` and raises
``TypeError`` above 2**31 - 1, which a set passes at 2 GiB. Every count and byte total is written
as ``Edm.Int64`` (:func:`int64`) and read with :func:`as_int`, which also accepts rows written as
Int32 by earlier versions (the SDK returns those as plain ``int`` and Int64 as ``EntityProperty``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from azure.data.tables import EdmType, EntityProperty

from corpus.domain import keys
from corpus.domain.display import redact
from corpus.domain.dupindex import Cluster
from corpus.domain.errors import truncate
from corpus.domain.imagefacts import FACT_FIELDS, ImageFacts
from corpus.domain.paths import ROOT_PATH, SetRef
from corpus.domain.refs import TransformRef

Entity = dict[str, Any]
Transform = tuple[str, str]
"""(name, version) of a transform; ``None`` stands for originals."""


def now() -> datetime:
    return datetime.now(UTC)


def int64(value: int) -> EntityProperty:
    """An integer property stored as ``Edm.Int64`` whatever its size (see the module docstring)."""
    return EntityProperty(int(value), EdmType.INT64)


def as_int(value: Any, default: int = 0) -> int:
    """Read an integer property written as Int32 (plain ``int``) or Int64 (``EntityProperty``)."""
    if value is None:
        return default
    if isinstance(value, EntityProperty):
        return int(value.value)
    return int(value)


def _str(entity: Mapping[str, Any], name: str) -> str:
    value = entity.get(name)
    return "" if value is None else str(value)


def _time(entity: Mapping[str, Any], name: str) -> datetime | None:
    value = entity.get(name)
    return value if isinstance(value, datetime) else None


def dirs_of(path: str) -> tuple[str, ...]:
    """``red/robin`` → (red, robin); ``<root>`` or empty → ()."""
    return () if path in ("", ROOT_PATH) else tuple(path.split("/"))


STR, TEXT, INT, INT64, BOOL, TIME = "str", "text", "int", "int64", "bool", "time"
"""Column kinds: ``text`` is a string with credentials redacted and cut to fit a property,
``int64`` an integer stored as ``Edm.Int64``, ``time`` a datetime stamped now when unset."""


def column(name: str, kind: str = STR, default: Any = MISSING) -> Any:
    """A dataclass field stored in the entity property ``name``; see :class:`Columns`."""
    return field(default=default, metadata={"column": name, "kind": kind})


def _encode(value: Any, kind: str) -> Any:
    if kind == INT64:
        return int64(value)
    if kind == TEXT:
        return truncate(redact(value))
    if kind == TIME:
        return value or now()
    return value


def _decode(entity: Mapping[str, Any], name: str, kind: str) -> Any:
    if kind in (INT, INT64):
        return as_int(entity.get(name))
    if kind == BOOL:
        return bool(entity.get(name))
    if kind == TIME:
        return _time(entity, name)
    return _str(entity, name)


SCHEMA = "Schema"
"""The entity property holding the row's schema version (see :attr:`Columns.schema`)."""
RECORDED = "Recorded"
"""An ``Images`` row's first insert time in the service clock, written by the rewriters of existing
rows (:meth:`corpus.store.images_table.ImagesTable.rewrite`) because a rewrite moves ``Timestamp``."""


def recorded_at(entity: Any) -> Any:
    """When ``entity`` (an ``Images`` row) was inserted, in the service clock: its ``Recorded``
    where a rewrite kept it, else its service ``Timestamp`` (never rewritten, so the insert time);
    None for an entity that has neither (not read from a table)."""
    recorded = entity.get(RECORDED) if hasattr(entity, "get") else None
    if recorded is not None:
        return recorded
    return getattr(entity, "metadata", {}).get("timestamp")


def schema_of(entity: Mapping[str, Any]) -> int:
    """The schema version an entity was written at; 0 for rows written before versions existed."""
    return as_int(entity.get(SCHEMA), 0)


class Columns:
    """Mixin for frozen dataclass rows whose fields are declared with :func:`column`: ``columns()``
    writes them as entity properties, ``from_entity`` reads them back (missing ones as defaults).

    Every row carries its class's :attr:`schema` version in property ``Schema``: a reader knows
    what an old row lacks, and a migration step (:mod:`corpus.app.migrate`) finds the rows it has
    still to bring up to date, and skips those it already has (docs/schema.md)."""

    __slots__ = ()
    schema: ClassVar[int] = 1

    def columns(self) -> Entity:
        out = {f.metadata["column"]: _encode(getattr(self, f.name), f.metadata["kind"]) for f in _declared(type(self))}
        out[SCHEMA] = self.schema
        return out

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Self:
        return cls(**_read_columns(cls, entity))


def _read_columns(cls: type, entity: Mapping[str, Any]) -> dict[str, Any]:
    present = [f for f in _declared(cls) if f.metadata["column"] in entity]
    return {f.name: _decode(entity, f.metadata["column"], f.metadata["kind"]) for f in present}


def _declared(cls: type) -> list[Field[Any]]:
    return [f for f in fields(cls) if "column" in f.metadata]


def _decode_all(values: list[Any], kind: str, default: Any) -> list[Any]:
    """:func:`_decode` of one property over many entities (``values``: ``None`` where absent or
    null), one list comprehension per column rather than one call per value."""
    if kind in (INT, INT64):
        dflt = 0 if default is MISSING else default
        return [dflt if v is None else int(v.value) if isinstance(v, EntityProperty) else int(v) for v in values]
    if kind == BOOL:
        return [bool(v) if v is not None else (False if default is MISSING else default) for v in values]
    if kind == TIME:
        return [v if isinstance(v, datetime) else None for v in values]
    dflt = "" if default is MISSING else default
    return [dflt if v is None else v if type(v) is str else str(v) for v in values]


def column_lists(cls: type[Columns], entities: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Many entities of one row class decoded column by column: by field name, the list of values
    ``cls.from_entity`` would give each entity (a missing property as the field's default, or as
    the decoded empty value where the field has none). For bulk readers (the catalog's sync decodes
    hundreds of thousands of ``Images`` rows) that need columns, not one frozen dataclass per row."""
    out: dict[str, list[Any]] = {}
    for f in _declared(cls):
        prop = f.metadata["column"]
        out[f.name] = _decode_all([e.get(prop) for e in entities], f.metadata["kind"], f.default)
    return out


@dataclass(frozen=True, slots=True)
class ImageSetRow:
    """An ``ImageSets`` entity: one set of originals, or one set transformed by (name, version)."""

    domain: str
    path: str
    version: str
    tags: tuple[str, ...]
    blob_path: str
    transform: Transform | None = None
    transform_keys: tuple[str, str] = ("", "")
    image_count: int = 0
    total_bytes: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def ref(self) -> SetRef:
        return SetRef(self.domain, dirs_of(self.path), self.version)

    @property
    def transform_label(self) -> str:
        """``name:version``, or ``""`` for originals."""
        return f"{self.transform[0]}:{self.transform[1]}" if self.transform else ""

    @property
    def row_key(self) -> str:
        return keys.set_row_key(self.ref, self.transform)

    @property
    def images_partition_key(self) -> str:
        return keys.image_partition_key(self.ref, self.transform)

    def to_entity(self) -> Entity:
        stamp = self.created_at or now()
        return {
            "PartitionKey": self.domain,
            "RowKey": self.row_key,
            "Domain": self.domain,
            "Path": self.path,
            "Version": self.version,
            "Tags": json.dumps(list(self.tags), ensure_ascii=False),
            "BlobPath": self.blob_path,
            "Transform": self.transform_label,
            "TransformPartitionKey": self.transform_keys[0],
            "TransformRowKey": self.transform_keys[1],
            "ImagesPartitionKey": self.images_partition_key,
            "ImageCount": int64(self.image_count),
            "TotalBytes": int64(self.total_bytes),
            "CreatedAt": stamp,
            "UpdatedAt": self.updated_at or stamp,
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> ImageSetRow:
        transform = TransformRef.from_label(_str(entity, "Transform"))
        return cls(
            domain=_str(entity, "Domain"),
            path=_str(entity, "Path"),
            version=_str(entity, "Version"),
            tags=tuple(parse_tags(entity.get("Tags"))),
            blob_path=_str(entity, "BlobPath"),
            transform=transform.pair if transform else None,
            transform_keys=(_str(entity, "TransformPartitionKey"), _str(entity, "TransformRowKey")),
            image_count=as_int(entity.get("ImageCount")),
            total_bytes=as_int(entity.get("TotalBytes")),
            created_at=_time(entity, "CreatedAt"),
            updated_at=_time(entity, "UpdatedAt"),
        )

    @staticmethod
    def counts_entity(domain: str, row_key: str, images: int, total: int) -> Entity:
        """The merge that raises a set's derived counts (see :meth:`corpus.store.catalog.Catalog.refresh_counts`)."""
        return {
            "PartitionKey": domain,
            "RowKey": row_key,
            "ImageCount": int64(images),
            "TotalBytes": int64(total),
            "UpdatedAt": now(),
        }

    @staticmethod
    def counts_of(entity: Mapping[str, Any]) -> tuple[int, int]:
        return as_int(entity.get("ImageCount")), as_int(entity.get("TotalBytes"))


@dataclass(frozen=True, slots=True)
class TagIndexRow:
    """A tag-index entity in ``ImageSets``: ``x!<tag>!<set row key>`` in the set's own partition.

    Written in the same entity-group transaction as the set it points to (see
    :meth:`corpus.store.sets_table.SetsTable.ensure`); its content is a function of the set's
    identity, so it never needs updating.
    """

    domain: str
    tag: str
    set_key: str

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": self.domain,
            "RowKey": keys.tag_index_row_key(self.tag, self.set_key),
            "Tag": self.tag,
            "SetRowKey": self.set_key,
        }


def is_set_entity(entity: Mapping[str, Any]) -> bool:
    """True for a set's entity, false for the tag-index rows beside it in ``ImageSets``."""
    return str(entity.get("RowKey", "")) < keys.SETS_UPPER


@dataclass(frozen=True, slots=True)
class PageMarkerRow:
    """A transform fan-out page that has been enqueued (``ImageTransforms``, partition
    ``!page!<request id>``, row ``<page index>``); insert-only, see :mod:`corpus.app.transform_jobs`."""

    request: str
    page: int
    jobs: int = 0
    at: datetime | None = None

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": keys.page_marker_partition(self.request),
            "RowKey": f"{self.page:09d}",
            "Jobs": int64(self.jobs),
            "At": self.at or now(),
        }


@dataclass(frozen=True, slots=True)
class PagePlanRow:
    """The continuation a fan-out page sent (``ImageTransforms``, partition ``!page!<request id>``,
    row ``plan-<page index>``): its cursor and the SHA-256 of its canonical message. Insert-only and
    written *before* the message is sent, so a ``transform-page`` message is accepted only when it
    is exactly the one the fan-out planned (issue 25 B7); a rerun of the page sends the stored cursor."""

    request: str
    page: int
    cursor: tuple[str, str]
    digest: str

    @staticmethod
    def row_key(page: int) -> str:
        return f"plan-{page:09d}"

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": keys.page_marker_partition(self.request),
            "RowKey": self.row_key(self.page),
            "CursorSet": self.cursor[0],
            "CursorImage": self.cursor[1],
            "Digest": self.digest,
        }

    @classmethod
    def from_entity(cls, request: str, page: int, e: Mapping[str, Any]) -> PagePlanRow:
        return cls(request, page, (_str(e, "CursorSet"), _str(e, "CursorImage")), _str(e, "Digest"))


def parse_tags(raw: Any) -> list[str]:
    """The ``Tags`` column: a JSON list of strings; anything else reads as no tags."""
    if not raw:
        return []
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return []
    return [str(t) for t in value] if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class ImageRow(Columns):
    """An ``Images`` entity: what is known of one stored image, enough to verify and count it.

    ``source`` is the staged name for an original, the original's blob name for a transformed image.
    """

    file: str = column("File")
    blob: str = column("BlobPath")
    size: int = column("Size", INT64)
    md5: str = column("MD5")
    content_type: str = column("ContentType")
    width: int = column("Width", INT)
    height: int = column("Height", INT)
    source: str = column("Source", default="")
    created_at: datetime | None = column("CreatedAt", TIME, default=None)
    facts: ImageFacts | None = None
    """The content's facts (:mod:`corpus.domain.facts`); None for images recorded before facts
    existed and not yet backfilled (``corpus reindex --facts``)."""
    cluster: Cluster | None = None
    """The duplicate cluster of an original (:mod:`corpus.domain.dupindex`); None when not indexed."""

    schema: ClassVar[int] = 2
    """1: as declared; 2: a transformed image's source original is counted by the source markers
    (:meth:`~corpus.store.images_table.ImagesTable.mark_sources`), written before the row
    (migration step ``source-markers`` brings older rows there)."""

    def to_entity(self, partition_key: str) -> Entity:
        entity = {"PartitionKey": partition_key, "RowKey": keys.image_row_key(self.file), **self.columns()}
        return entity | facts_properties(self.facts, self.cluster)

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Self:
        facts, cluster = facts_of_entity(entity)
        return cls(**_read_columns(cls, entity), facts=facts, cluster=cluster)


FACT_COLUMNS = {
    "sha256": "SHA256",
    "phash": "PHash",
    "dhash": "DHash",
    "width": "Width",
    "height": "Height",
    "sharpness": "Sharpness",
    "brightness": "Brightness",
    "contrast": "Contrast",
    "entropy": "Entropy",
    "grey": "Grey",
    "aspect": "Aspect",
}
"""Fact (:data:`corpus.domain.facts.FACT_FIELDS`) → entity property. ``Width``/``Height`` are the
row's own columns: with facts they hold the size as displayed."""
assert tuple(FACT_COLUMNS) == FACT_FIELDS


def facts_properties(facts: ImageFacts | None, cluster: Cluster | None) -> Entity:
    """The entity properties of ``facts`` and ``cluster`` (none when absent)."""
    out: Entity = {}
    if facts is not None:
        out.update({FACT_COLUMNS[k]: v for k, v in facts.to_json().items()})
    if cluster is not None:
        out.update({"Cluster": cluster.id, "ClusterMD5": cluster.md5})
    return out


def facts_of_entity(entity: Mapping[str, Any]) -> tuple[ImageFacts | None, Cluster | None]:
    """Inverse of :func:`facts_properties`."""
    values = {k: entity.get(col) for k, col in FACT_COLUMNS.items()}
    values["width"], values["height"] = as_int(values["width"]), as_int(values["height"])
    facts = ImageFacts.from_json(values) if entity.get("SHA256") else None
    cluster = Cluster(str(entity["Cluster"]), str(entity.get("ClusterMD5") or "")) if entity.get("Cluster") else None
    return facts, cluster


ImageRecord = ImageRow
"""The name the use cases know it by."""


@dataclass(frozen=True, slots=True)
class CounterRow(Columns):
    """A counter shard in a set's ``Images`` partition: images and bytes added through it."""

    partition_key: str = column("PartitionKey")
    shard: str = column("RowKey")
    count: int = column("Count", INT64)
    bytes: int = column("Bytes", INT64)

    def to_entity(self) -> Entity:
        return self.columns()


@dataclass(frozen=True, slots=True)
class SourceMarkerRow(Columns):
    """An insert-only marker: this original (RowKey) has an output of one operation or transform
    (the partition, :func:`corpus.domain.keys.source_partition_key`); counted by the partition's
    counter shards in the same transaction."""

    partition_key: str = column("PartitionKey")
    file: str = column("RowKey")

    def to_entity(self) -> Entity:
        return self.columns()


@dataclass(frozen=True, slots=True)
class TransformRow(Columns):
    """An ``ImageTransforms`` entity: a transform version and its canonical arguments, immutable."""

    name: str = column("Name")
    version: str = column("Version")
    args: str = column("Args")
    created_at: datetime | None = column("CreatedAt", TIME, default=None)

    @property
    def keys(self) -> tuple[str, str]:
        return keys.transform_keys(self.name, self.version)

    def steps(self) -> list[str]:
        """The operations this transform applies: itself, or each step of a pipeline."""
        if self.name != "pipeline":
            return [self.name]
        try:
            args: Any = json.loads(self.args)
            return [str(step["name"]) for step in args["steps"]]
        except (ValueError, KeyError, TypeError):
            return []

    def source_keys(self) -> list[str]:
        """What its outputs' sources are counted under (:meth:`ImagesTable.mark_sources`): each
        operation, ``NAME:`` (``--transform NAME``, any version) and ``NAME:VERSION``. The name
        key has its colon so it never meets an operation's: a transform is named after its
        operation, and a pipeline with that step must not count under the name."""
        return sorted({*self.steps(), f"{self.name}:", f"{self.name}:{self.version}"})

    def to_entity(self) -> Entity:
        pk, rk = self.keys
        return {"PartitionKey": pk, "RowKey": rk, **self.columns()}


REJECT_JUNK = "junk"
REJECT_INVALID = "rejected"


@dataclass(frozen=True, slots=True)
class RejectionRow(Columns):
    """A ``Rejections`` entity: a staged name that was rejected (kind ``rejected``) or junk (``junk``)."""

    kind: str = column("PartitionKey")
    name: str = column("Name")
    reason: str = column("Reason", TEXT)
    size: int = column("Size", INT64, default=0)
    etag: str = column("ETag", default="")
    kept_as: str = column("KeptAs", default="")
    at: datetime | None = column("At", TIME, default=None)

    def to_entity(self) -> Entity:
        return {"RowKey": keys.escape(self.name), **self.columns()}


@dataclass(frozen=True, slots=True)
class FailureRow(Columns):
    """A ``Failures`` entity: why a message or blob delivery failed, per source queue and key."""

    source: str = column("Source")
    key: str = column("Key")
    reason: str = column("Reason", TEXT)
    attempts: int = column("Attempts", INT, default=0)
    final: bool = column("Final", BOOL, default=False)
    body: str = column("Body", TEXT, default="")
    at: datetime | None = column("At", TIME, default=None)
    acknowledged: bool = column("Acknowledged", BOOL, default=False)
    """Set by ``corpus status --ack``: kept, but hidden from the default view. A new failure of the
    same key replaces the row, and so is shown again."""

    @property
    def id(self) -> str:
        """What ``corpus status`` prints and ``--ack`` takes: ``<source>/<key>`` (a source has no ``/``)."""
        return f"{self.source}/{self.key}"

    def to_entity(self) -> Entity:
        return {"PartitionKey": keys.escape(self.source), "RowKey": keys.escape(self.key), **self.columns()}


@dataclass(frozen=True, slots=True)
class RedriveRow(Columns):
    """A ``Redrives`` entity: a staged blob that reconciliation handed to ingest again, and why.

    One row per staged name (the latest re-drive), claimed with ETag conditions so that two
    reconcilers running at once re-drive a blob version at most once per interval.
    """

    name: str = column("Name")
    etag: str = column("ETag")
    why: str = column("Why", TEXT)
    outcome: str = column("Outcome", default="")
    times: int = column("Times", INT, default=1)
    at: datetime | None = column("At", TIME, default=None)

    def to_entity(self) -> Entity:
        return {"PartitionKey": REDRIVE_PARTITION, "RowKey": keys.escape(self.name), **self.columns()}


REDRIVE_PARTITION = "redrive"


def bare_etag(etag: str) -> str:
    """Listings return ETags bare, reads return them quoted: keys use them bare."""
    return etag.strip('"')


@dataclass(frozen=True, slots=True)
class ValidationRow(Columns):
    """A ``Validations`` entity: what the blob trigger found in one staged upload (name + ETag).

    The copy function acts only on such a row, never on what a queue message claims: anyone who
    can write to the copy queue can name a staged blob, but only the trigger writes these rows,
    and only after decoding the bytes. The ETag pins the exact bytes that were inspected.
    """

    name: str = column("Name")
    etag: str = column("ETag")
    size: int = column("Size", INT64)
    md5: str = column("MD5")
    content_type: str = column("ContentType")
    width: int = column("Width", INT64)
    height: int = column("Height", INT64)
    format: str = column("Format")
    at: datetime | None = column("At", TIME, default=None)
    facts: ImageFacts | None = None
    """The facts the trigger's decode found (:mod:`corpus.domain.facts`), carried to the record."""

    @property
    def keys(self) -> tuple[str, str]:
        return keys.escape(self.name), keys.escape(bare_etag(self.etag))

    def to_entity(self) -> Entity:
        pk, rk = self.keys
        return {"PartitionKey": pk, "RowKey": rk, **self.columns()} | facts_properties(self.facts, None)

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Self:
        return cls(**_read_columns(cls, entity), facts=facts_of_entity(entity)[0])

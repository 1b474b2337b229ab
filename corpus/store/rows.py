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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.data.tables import EdmType, EntityProperty

from corpus.domain import keys
from corpus.domain.errors import truncate
from corpus.domain.paths import ROOT_PATH, SetRef

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
        label = _str(entity, "Transform")
        name, _, tversion = label.partition(":")
        return cls(
            domain=_str(entity, "Domain"),
            path=_str(entity, "Path"),
            version=_str(entity, "Version"),
            tags=tuple(parse_tags(entity.get("Tags"))),
            blob_path=_str(entity, "BlobPath"),
            transform=(name, tversion) if label else None,
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
class ImageRow:
    """An ``Images`` entity: what is known of one stored image, enough to verify and count it.

    ``source`` is the staged name for an original, the original's blob name for a transformed image.
    """

    file: str
    blob: str
    size: int
    md5: str
    content_type: str
    width: int
    height: int
    source: str = ""
    created_at: datetime | None = None

    def to_entity(self, partition_key: str) -> Entity:
        return {
            "PartitionKey": partition_key,
            "RowKey": keys.image_row_key(self.file),
            "File": self.file,
            "BlobPath": self.blob,
            "Size": int64(self.size),
            "MD5": self.md5,
            "ContentType": self.content_type,
            "Width": self.width,
            "Height": self.height,
            "Source": self.source,
            "CreatedAt": self.created_at or now(),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> ImageRow:
        return cls(
            file=_str(entity, "File"),
            blob=_str(entity, "BlobPath"),
            size=as_int(entity.get("Size")),
            md5=_str(entity, "MD5"),
            content_type=_str(entity, "ContentType"),
            width=as_int(entity.get("Width")),
            height=as_int(entity.get("Height")),
            source=_str(entity, "Source"),
            created_at=_time(entity, "CreatedAt"),
        )


ImageRecord = ImageRow
"""The name the use cases know it by."""


@dataclass(frozen=True, slots=True)
class CounterRow:
    """A counter shard in a set's ``Images`` partition: images and bytes added through it."""

    partition_key: str
    shard: str
    count: int
    bytes: int

    def to_entity(self) -> Entity:
        return {"PartitionKey": self.partition_key, "RowKey": self.shard, "Count": int64(self.count), "Bytes": int64(self.bytes)}

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> CounterRow:
        return cls(_str(entity, "PartitionKey"), _str(entity, "RowKey"), as_int(entity.get("Count")), as_int(entity.get("Bytes")))


@dataclass(frozen=True, slots=True)
class TransformRow:
    """An ``ImageTransforms`` entity: a transform version and its canonical arguments, immutable."""

    name: str
    version: str
    args: str
    created_at: datetime | None = None

    @property
    def keys(self) -> tuple[str, str]:
        return keys.transform_keys(self.name, self.version)

    def to_entity(self) -> Entity:
        pk, rk = self.keys
        return {
            "PartitionKey": pk,
            "RowKey": rk,
            "Name": self.name,
            "Version": self.version,
            "Args": self.args,
            "CreatedAt": self.created_at or now(),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> TransformRow:
        return cls(_str(entity, "Name"), _str(entity, "Version"), _str(entity, "Args"), _time(entity, "CreatedAt"))


REJECT_JUNK = "junk"
REJECT_INVALID = "rejected"


@dataclass(frozen=True, slots=True)
class RejectionRow:
    """A ``Rejections`` entity: a staged name that was rejected (kind ``rejected``) or junk (``junk``)."""

    kind: str
    name: str
    reason: str
    size: int = 0
    etag: str = ""
    kept_as: str = ""
    at: datetime | None = None

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": self.kind,
            "RowKey": keys.escape(self.name),
            "Name": self.name,
            "Reason": truncate(self.reason),
            "Size": int64(self.size),
            "ETag": self.etag,
            "KeptAs": self.kept_as,
            "At": self.at or now(),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> RejectionRow:
        return cls(
            kind=_str(entity, "PartitionKey"),
            name=_str(entity, "Name"),
            reason=_str(entity, "Reason"),
            size=as_int(entity.get("Size")),
            etag=_str(entity, "ETag"),
            kept_as=_str(entity, "KeptAs"),
            at=_time(entity, "At"),
        )


@dataclass(frozen=True, slots=True)
class FailureRow:
    """A ``Failures`` entity: why a message or blob delivery failed, per source queue and key."""

    source: str
    key: str
    reason: str
    attempts: int = 0
    final: bool = False
    body: str = ""
    at: datetime | None = field(default=None)

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": keys.escape(self.source),
            "RowKey": keys.escape(self.key),
            "Source": self.source,
            "Key": self.key,
            "Reason": truncate(self.reason),
            "Attempts": self.attempts,
            "Final": self.final,
            "Body": truncate(self.body),
            "At": self.at or now(),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> FailureRow:
        return cls(
            source=_str(entity, "Source"),
            key=_str(entity, "Key"),
            reason=_str(entity, "Reason"),
            attempts=as_int(entity.get("Attempts")),
            final=bool(entity.get("Final")),
            body=_str(entity, "Body"),
            at=_time(entity, "At"),
        )

"""The catalog's contract: table names, columns and their types, and the schema version.

Pure: no I/O. ``docs/query.md`` documents the same tables column by column, and
``tests/test_catalog_units.py`` checks that both agree, so no column is added without its docs.

Types are named in a small vocabulary (:data:`ARROW`) that maps to Arrow types, which every
reader (DuckDB, Spark, Fabric, pyarrow) understands: ``string``, ``int32``, ``int64``,
``double``, ``bool``, ``timestamp`` (UTC, microseconds) and ``list<string>``. Every column is
nullable: a fact "where known" is null where it is not.

**Evolution.** :data:`SCHEMA_VERSION` is written into the snapshot's manifest. Adding a column is
compatible (readers union files by column name, old files read it as null) and keeps the
version; renaming, removing or retyping a column bumps it, and a sync that finds a snapshot of
another version starts a new one from scratch (the tables are the system of record).

**Keys.** Each table has a key (:attr:`Table.key`). ``insert_only`` tables (images, transforms,
models, model_trainsets, trainset_images) never hold two rows with one key; the others
(sets, trainsets, rejections) are small, and a newer row replaces an older one with its key.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1

ARROW: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "list<string>": pa.list_(pa.string()),
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str

    @property
    def arrow(self) -> pa.DataType:
        return ARROW[self.type]


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    insert_only: bool
    by_domain: bool = False
    """Files are partitioned by the ``domain`` column (one folder per domain)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow, nullable=True) for c in self.columns])


def _cols(spec: str) -> tuple[Column, ...]:
    """``"name type, name type"`` → columns (a compact spelling of the contract)."""
    out = []
    for item in spec.split(","):
        name, type_ = item.split(maxsplit=1)
        out.append(Column(name.strip(), type_.strip()))
    return tuple(out)


QUALITY = (
    "sha256 string, phash string, dhash string, sharpness double, brightness double, contrast double, "
    "entropy double, grey bool, aspect double"
)
"""Facts about an image's pixels, read from its ``Images`` row where an analyser recorded them."""

IMAGES = Table(
    "images",
    _cols(
        "domain string, path string, version string, file string, container string, blob string, size int64, "
        "md5 string, width int32, height int32, content_type string, tags list<string>, transform_name string, "
        "transform_version string, source_blob string, added timestamp, " + QUALITY
    ),
    key=("container", "blob"),
    insert_only=True,
    by_domain=True,
)
SETS = Table(
    "sets",
    _cols(
        "domain string, path string, version string, transform_name string, transform_version string, "
        "tags list<string>, blob_path string, created timestamp"
    ),
    key=("domain", "path", "version", "transform_name", "transform_version"),
    insert_only=False,
)
TRANSFORMS = Table("transforms", _cols("name string, version string, args string, created timestamp"), ("name", "version"), True)
TRAINSETS = Table(
    "trainsets",
    _cols(
        "name string, version string, status string, reason string, images int64, sha256 string, "
        "manifest string, definition string, created timestamp, updated timestamp"
    ),
    key=("name", "version"),
    insert_only=False,
)
TRAINSET_IMAGES = Table(
    "trainset_images",
    _cols(
        "trainset_name string, trainset_version string, container string, blob string, md5 string, size int64, "
        "width int32, height int32, domain string, path string, version string, transform_name string, "
        "transform_version string, source_blob string, source_md5 string, labels list<string>, split string"
    ),
    key=("trainset_name", "trainset_version", "container", "blob"),
    insert_only=True,
)
MODELS = Table(
    "models", _cols("name string, version string, uri string, metrics string, created timestamp"), ("name", "version"), True
)
MODEL_TRAINSETS = Table(
    "model_trainsets",
    _cols("model_name string, model_version string, trainset_name string, trainset_version string"),
    key=("model_name", "model_version", "trainset_name", "trainset_version"),
    insert_only=True,
)
REJECTIONS = Table(
    "rejections",
    _cols("kind string, name string, reason string, size int64, etag string, kept_as string, at timestamp"),
    key=("kind", "name"),
    insert_only=False,
)

TABLES: dict[str, Table] = {
    t.name: t for t in (IMAGES, SETS, TRANSFORMS, TRAINSETS, TRAINSET_IMAGES, MODELS, MODEL_TRAINSETS, REJECTIONS)
}


def empty(table: Table) -> pa.Table:
    return table.arrow.empty_table()


def to_arrow(table: Table, rows: list[dict[str, object]]) -> pa.Table:
    """Rows (dicts by column name; missing columns are null) → an Arrow table of ``table``'s schema."""
    return pa.Table.from_pylist(rows, schema=table.arrow)

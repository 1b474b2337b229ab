"""Table entities and manifest lines → catalog rows (dicts by column name of :mod:`corpus.catalog.schema`).

No I/O: the store's row classes (:mod:`corpus.store.rows`, :mod:`corpus.store.trainsets_table`)
decode the entities, so a column is read by its name in one place only; this module only maps
their fields onto the catalog's columns.

The image facts (``sha256``, ``phash``…, see :data:`corpus.catalog.schema.QUALITY`) are read from
the ``Images`` entity where an analyser recorded them, whatever their capitalisation
(``SHA256``, ``PHash``, ``Sharpness``…); a missing or unreadable fact is null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pyarrow as pa

from corpus.catalog.schema import IMAGES, REJECTIONS, TRAINSET_IMAGES
from corpus.domain.manifest import ManifestEntry
from corpus.store.rows import ImageRow, ImageSetRow, RejectionRow, TransformRow, column_lists
from corpus.store.trainsets_table import ModelRow, TrainsetRow

Row = dict[str, Any]

_FACTS = {c.name: c.type for c in IMAGES.columns[IMAGES.names.index("sha256") :]}
_ALIASES = {"gray": "grey", "aspectratio": "aspect"}


def service_time(entity: Any) -> datetime | None:
    """The storage service's ``Timestamp`` of an entity (the watermark's clock)."""
    meta = getattr(entity, "metadata", None) or {}
    stamp = meta.get("timestamp")
    return stamp if isinstance(stamp, datetime) else None


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _fact(kind: str, value: Any) -> Any:
    value = _plain(value)
    if value is None or value == "":
        return None
    try:
        if kind == "double":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
        return str(value)
    except (TypeError, ValueError):
        return None


def facts(entity: Mapping[str, Any]) -> Row:
    """The image facts present in an ``Images`` entity, by catalog column; the others are absent (null)."""
    out: Row = {}
    for key, value in entity.items():
        norm = key.lower().replace("_", "")
        norm = _ALIASES.get(norm, norm)
        if norm in _FACTS:
            out[norm] = _fact(_FACTS[norm], value)
    return out


def image(s: ImageSetRow, entity: Mapping[str, Any]) -> Row:
    """One ``Images`` entity of set ``s`` as an ``images`` row (the set gives domain, path, tags, transform)."""
    r = ImageRow.from_entity(entity)
    t = s.transform
    return {
        "domain": s.domain,
        "path": s.path,
        "version": s.version,
        "file": r.file,
        "container": s.domain,
        "blob": r.blob,
        "size": r.size,
        "md5": r.md5,
        "width": r.width or None,
        "height": r.height or None,
        "content_type": r.content_type,
        "tags": list(s.tags),
        "transform_name": t[0] if t else None,
        "transform_version": t[1] if t else None,
        "source_blob": r.source if t else r.blob,
        "added": r.created_at or service_time(entity),
        **facts(entity),
    }


_SET_COLUMNS = ("domain", "path", "version", "container", "tags", "transform_name", "transform_version")
_fact_keys: dict[str, str | None] = {}


def _fact_of(key: str) -> str | None:
    """The fact column an entity property names, whatever its capitalisation (memoised: few spellings)."""
    if key not in _fact_keys:
        norm = key.lower().replace("_", "")
        norm = _ALIASES.get(norm, norm)
        _fact_keys[key] = norm if norm in _FACTS else None
    return _fact_keys[key]


def images_table(entities: list[Mapping[str, Any]], sets: Mapping[str, ImageSetRow]) -> pa.Table:
    """Many ``Images`` entities (their sets by ``Images`` partition key) as an ``images`` Arrow
    table: the same rows as :func:`image` gives one by one, built column by column.

    The bulk path of the sync and the query's tail, where decoding is the cost: no dict or
    dataclass per row; the set's columns (domain, path, tags…) are one row per set, repeated by
    ``take``; the entity's columns are list comprehensions (:func:`~corpus.store.rows.column_lists`);
    a fact column is built only when some entity of the chunk carries it.
    """
    n = len(entities)
    cols: dict[str, Any] = {}
    index: dict[str, int] = {}
    order = [index.setdefault(str(e["PartitionKey"]), len(index)) for e in entities]
    per_set: dict[str, list[Any]] = {c: [] for c in _SET_COLUMNS}
    transformed = []
    for pk in index:
        s = sets[pk]
        t = s.transform
        for c, v in zip(
            _SET_COLUMNS,
            (s.domain, s.path, s.version, s.domain, list(s.tags), t[0] if t else None, t[1] if t else None),
            strict=True,
        ):
            per_set[c].append(v)
        transformed.append(t is not None)
    at = pa.array(order, type=pa.int32())
    for c in _SET_COLUMNS:
        cols[c] = pa.array(per_set[c], type=IMAGES.arrow.field(c).type).take(at)
    r = column_lists(ImageRow, entities)
    cols["file"], cols["blob"], cols["size"], cols["md5"] = r["file"], r["blob"], r["size"], r["md5"]
    cols["width"] = [w or None for w in r["width"]]
    cols["height"] = [h or None for h in r["height"]]
    cols["content_type"] = r["content_type"]
    is_t = [transformed[i] for i in order]
    cols["source_blob"] = [src if t else blob for src, blob, t in zip(r["source"], r["blob"], is_t, strict=True)]
    cols["added"] = [c or service_time(e) for c, e in zip(r["created_at"], entities, strict=True)]
    present = {k: f for k in set().union(*entities) if (f := _fact_of(k))} if n else {}
    for key, fact in present.items():
        values = [_fact(_FACTS[fact], e.get(key)) for e in entities]
        if fact in cols:  # two spellings of one fact: the first non-null
            values = [a if a is not None else b for a, b in zip(cols[fact], values, strict=True)]
        cols[fact] = values
    arrays = [
        cols[c.name] if isinstance(cols.get(c.name), pa.Array)
        else pa.array(cols[c.name], type=c.arrow) if c.name in cols
        else pa.nulls(n, c.arrow)
        for c in IMAGES.columns
    ]  # fmt: skip
    return pa.Table.from_arrays(arrays, schema=IMAGES.arrow)


def set_(s: ImageSetRow) -> Row:
    t = s.transform
    return {
        "domain": s.domain,
        "path": s.path,
        "version": s.version,
        "transform_name": t[0] if t else None,
        "transform_version": t[1] if t else None,
        "tags": list(s.tags),
        "blob_path": s.blob_path,
        "created": s.created_at,
    }


def transform(r: TransformRow) -> Row:
    return {"name": r.name, "version": r.version, "args": r.args, "created": r.created_at}


def trainset(r: TrainsetRow) -> Row:
    return {
        "name": r.name,
        "version": r.version,
        "status": r.status,
        "reason": r.reason or None,
        "images": r.state.images,
        "sha256": r.sha256 or None,
        "manifest": f"{r.manifest_container}/{r.manifest_blob}" if r.manifest_blob else None,
        "definition": r.definition,
        "created": r.created_at,
        "updated": r.updated_at,
    }


def model(r: ModelRow) -> Row:
    return {"name": r.name, "version": r.version, "uri": r.uri or None, "metrics": r.metrics or None, "created": r.created_at}


def model_trainsets(r: ModelRow) -> list[Row]:
    return [{"model_name": r.name, "model_version": r.version, "trainset_name": n, "trainset_version": v} for n, v in r.trainsets]


def rejection(r: RejectionRow) -> Row:
    """The row's fields are the ``rejections`` columns, one for one; an empty ETag or KeptAs is null."""
    return {c: getattr(r, c) for c in REJECTIONS.names} | {"etag": r.etag or None, "kept_as": r.kept_as or None}


def trainset_image(name: str, version: str, e: ManifestEntry) -> Row:
    t = e.transform
    return {
        "trainset_name": name,
        "trainset_version": version,
        "container": e.container,
        "blob": e.blob,
        "md5": e.md5,
        "size": e.size,
        "width": e.width,
        "height": e.height,
        "domain": e.domain,
        "path": e.path,
        "version": e.version,
        "transform_name": t[0] if t else None,
        "transform_version": t[1] if t else None,
        "source_blob": e.source_blob,
        "source_md5": e.source_md5 or None,
        "labels": list(e.labels),
        "split": e.split,
    }


def trainset_images_table(name: str, version: str, entries: list[ManifestEntry]) -> pa.Table:
    """Manifest lines of one training set as a ``trainset_images`` Arrow table: the rows of
    :func:`trainset_image`, built column by column (no dict per line)."""
    n = len(entries)
    cols: dict[str, list[Any]] = {
        "trainset_name": [name] * n,
        "trainset_version": [version] * n,
        "container": [e.container for e in entries],
        "blob": [e.blob for e in entries],
        "md5": [e.md5 for e in entries],
        "size": [e.size for e in entries],
        "width": [e.width for e in entries],
        "height": [e.height for e in entries],
        "domain": [e.domain for e in entries],
        "path": [e.path for e in entries],
        "version": [e.version for e in entries],
        "transform_name": [e.transform[0] if e.transform else None for e in entries],
        "transform_version": [e.transform[1] if e.transform else None for e in entries],
        "source_blob": [e.source_blob for e in entries],
        "source_md5": [e.source_md5 or None for e in entries],
        "labels": [list(e.labels) for e in entries],
        "split": [e.split for e in entries],
    }
    arrays = [pa.array(cols[c.name], type=c.arrow) for c in TRAINSET_IMAGES.columns]
    return pa.Table.from_arrays(arrays, schema=TRAINSET_IMAGES.arrow)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumps_value(value: Any) -> str:
    """JSON text of a query result value (dates as ISO 8601, exact integers kept exact)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def dumps_row(row: Mapping[str, Any]) -> str:
    """One query result row as a JSON object, columns in their order."""
    return json.dumps(dict(row), ensure_ascii=False, default=_json_default)

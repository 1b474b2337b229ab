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

from corpus.catalog.schema import IMAGES
from corpus.domain.manifest import ManifestEntry
from corpus.store.rows import ImageRow, ImageSetRow, RejectionRow, TransformRow
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
    return {
        "kind": r.kind,
        "name": r.name,
        "reason": r.reason,
        "size": r.size,
        "etag": r.etag or None,
        "kept_as": r.kept_as or None,
        "at": r.at,
    }


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

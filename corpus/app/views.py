"""Read-only views of the corpus as plain data, shared by `corpus sets`, the HTTP API and the gallery.

One function turns a row into what users see (:func:`set_row`, :func:`image_row`,
:func:`trainset_json`, :func:`model_json`), so the CLI's ``--json`` and the API's
``GET /api/sets``, ``/api/trainsets`` and ``/api/models`` can't drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import islice
from typing import Any

from corpus.domain import display
from corpus.domain.errors import InvalidNameError, NotFoundError
from corpus.domain.paths import ROOT_PATH, SetRef, validate_domain, validate_version
from corpus.domain.refs import TransformRef
from corpus.store.catalog import Catalog
from corpus.store.rows import ImageRow, ImageSetRow, Transform, dirs_of
from corpus.store.tables import decode_continuation, encode_continuation, table_page
from corpus.store.trainsets_table import ModelRow, TrainsetRow, TrainsetStore

MAX_PAGE = 1000
"""The Table service returns at most 1,000 entities per request: a page is one request."""


def set_row(r: ImageSetRow) -> dict[str, Any]:
    """One set as ``corpus sets --json`` and ``GET /api/sets`` show it."""
    return {
        "domain": r.domain,
        "path": r.path,
        "version": r.version,
        "transform": r.transform_label or None,
        "tags": list(r.tags),
        "images": r.image_count,
        "bytes": r.total_bytes,
        "blob_path": r.blob_path,
        "updated": r.updated_at,
    }


def md5_shown(md5_hex: str) -> str:
    """MD5 as a person reads it everywhere (API, gallery, manifests, lineage): base64, Azure's
    Content-MD5 spelling, which manifests already carry. The Images table keeps hex; "" stays ""."""
    return display.md5_shown(md5_hex)


def image_row(r: ImageRow) -> dict[str, Any]:
    """One image record as ``GET /api/sets/{domain}/images`` shows it."""
    return {
        "file": r.file,
        "blob": r.blob,
        "size": r.size,
        "md5": md5_shown(r.md5),
        "content_type": r.content_type,
        "width": r.width,
        "height": r.height,
        "source": r.source or None,
        "created": r.created_at,
        "facts": r.facts.to_json() if r.facts else None,
        "cluster": r.cluster.id if r.cluster else None,
    }


def sort_key(r: ImageSetRow) -> tuple[str, str, str, str]:
    """The order ``corpus sets`` prints: domain, transform (originals first), path, version."""
    return (r.domain, r.transform_label, r.path, r.version)


def list_sets(
    catalog: Catalog, domain: str | None = None, tags: tuple[str, ...] = (), transform: str | None = None
) -> list[ImageSetRow]:
    """Every matching set, sorted; originals only unless a transform is named (as ``corpus sets``)."""
    return catalog.sets.list(domain=domain, tags=tags, transform=transform, originals_only=transform is None)


def page_sets(
    catalog: Catalog,
    limit: int,
    continuation: str | None,
    domain: str | None = None,
    tags: tuple[str, ...] = (),
    transform: str | None = None,
) -> tuple[list[ImageSetRow], str | None]:
    """One page of the sets ``corpus sets`` lists, in the same (domain, row key) order, and the next page's token.

    With a domain and tags the tag index is read, as ``corpus sets --domain D --tag T`` reads it
    (O(result)), and the token is the last set's key; otherwise pages are key ranges of the table.
    """
    start = _token(continuation)
    if domain and tags:
        after = str(start.get("RowKey") or "") if start and start.get("PartitionKey") == domain else ""
        found = catalog.sets.query(
            domain=domain, tags=tags, transform=transform, originals_only=transform is None, start_after=after, paged=limit
        )
        rows = list(islice(found, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, after_set(domain, rows[-1]) if more else None
    return catalog.sets.page(limit, start, domain=domain, tags=tags, transform=transform, originals_only=transform is None)


def after_set(domain: str, last: ImageSetRow) -> str | None:
    """The token of a tag-index page of :func:`page_sets` that ends with ``last``: the next page
    starts after it (the index is read from a position, not from a table continuation)."""
    return encode_continuation({"PartitionKey": domain, "RowKey": last.row_key})


@dataclass(frozen=True, slots=True)
class SetSelector:
    """What a request names: a set of a domain at a version, originals or transformed."""

    ref: SetRef
    transform: Transform | None

    @classmethod
    def parse(cls, domain: str, path: str | None, version: str | None, transform: str | None) -> SetSelector:
        validate_domain(domain)
        if not version:
            raise InvalidNameError("a set is named by path and version: version is missing")
        validate_version(version)
        path = path or ROOT_PATH
        dirs = dirs_of(path)
        if any(d in ("", ".", "..") for d in dirs):
            raise InvalidNameError(f"invalid set path {path!r}")
        t: Transform | None = None
        if transform:
            t = TransformRef.parse(transform).pair
        return cls(SetRef(domain, dirs, version), t)


def get_set(catalog: Catalog, sel: SetSelector) -> ImageSetRow:
    row = catalog.sets.get(sel.ref, sel.transform)
    if row is None:
        label = f" transformed by {sel.transform[0]}:{sel.transform[1]}" if sel.transform else ""
        raise NotFoundError(f"no image set {sel.ref.domain}/{sel.ref.path} at version {sel.ref.version}{label}")
    return row


def page_images(
    catalog: Catalog, sel: SetSelector, limit: int, continuation: str | None, known: ImageSetRow | None = None
) -> tuple[list[ImageRow], str | None]:
    """One page of a set's image records (404 if the set does not exist; ``known``: already checked)."""
    if known is None:
        get_set(catalog, sel)
    return catalog.images.page(sel.ref, sel.transform, limit, _token(continuation))


def decode_token(text: str | None) -> dict[str, Any] | None:
    """A continuation printed by the API or the gallery, as the table's token (400 if it is not one)."""
    return _token(text)


def _token(text: str | None) -> dict[str, Any] | None:
    try:
        return decode_continuation(text)
    except ValueError as exc:
        raise InvalidNameError(str(exc)) from exc


# -- training sets and models ----------------------------------------------------------------


def trainset_json(row: TrainsetRow) -> dict[str, Any]:
    """One training set as ``corpus trainset show --json`` and ``GET /api/trainsets/{name}/{version}`` show it."""
    s = row.state
    return {
        "name": row.name,
        "version": row.version,
        "status": row.status,
        "reason": row.reason or None,
        "attempt": row.attempt,
        "images": s.images,
        "sha256": row.sha256 or None,
        "splits": dict(sorted(s.splits.items())),
        "labels": dict(sorted(s.labels.items())),
        "skipped": dict(sorted(s.skipped.items())),
        "skipped_examples": list(s.examples),
        "moved": s.moved,
        "manifest": f"{row.manifest_container}/{row.manifest_blob}",
        "definition": json.loads(row.definition) if row.definition else None,
        "created": row.created_at.isoformat() if row.created_at else None,
        "updated": row.updated_at.isoformat() if row.updated_at else None,
    }


def model_json(m: ModelRow) -> dict[str, Any]:
    """One model as ``corpus model show --json`` and ``GET /api/models/{name}/{version}`` show it."""
    return {
        "name": m.name,
        "version": m.version,
        "trainsets": [{"name": n, "version": v} for n, v in m.trainsets],
        "uri": m.uri or None,
        "metrics": json.loads(m.metrics) if m.metrics else None,
        "created": m.created_at.isoformat() if m.created_at else None,
    }


def page_trainsets(store: TrainsetStore, limit: int, continuation: str | None) -> tuple[list[TrainsetRow], str | None]:
    """One page of training sets in table order, and the next page's token (None: the last page).

    Table order is the CLI's (name, version) order: names and versions are validated to
    ``[A-Za-z0-9._-]``, which :func:`corpus.domain.keys.escape` leaves as they are, so the keys sort
    as the names do. Pages are key ranges: every training set is on exactly one page.
    """
    entities, token = table_page(store.trainsets.table, limit, _token(continuation))
    return sorted((TrainsetRow.from_entity(e) for e in entities), key=lambda r: (r.name, r.version)), token


def page_models(store: TrainsetStore, limit: int, continuation: str | None) -> tuple[list[ModelRow], str | None]:
    """One page of models, as :func:`page_trainsets` (the same keys, the same order as ``corpus model list``)."""
    entities, token = table_page(store.models.table, limit, _token(continuation))
    return sorted((ModelRow.from_entity(e) for e in entities), key=lambda r: (r.name, r.version)), token

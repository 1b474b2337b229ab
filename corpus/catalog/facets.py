"""The gallery's facet table: images per (version, tag, transform) of one domain, from the snapshot.

Computed with pyarrow alone (the function app does not ship DuckDB) from the domain's ``images``
files, reading four columns: by ranged reads of the footer and those columns' chunks
(:meth:`CatalogStorage.open_file`), never a whole file into the function's memory. Counts add
up across files and a file never changes, so each file's counts are cached in the process by its
name (:data:`_PER_FILE`): after the first view, a page costs one manifest read plus the files the
last sync added.

As of the snapshot's watermark (the page says so): the gallery is not where exact counts are
promised; ``corpus query`` and ``corpus count`` are.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus.catalog.snapshot import Snapshot
from corpus.catalog.storage import CatalogStorage

Facet = tuple[str, str, str]
"""(version, tag, transform ``name:version`` or ``""`` for originals)."""

_PER_FILE: dict[str, Counter[Facet]] = {}
_LOCK = threading.Lock()
MAX_CACHED_FILES = 4096


@dataclass(frozen=True, slots=True)
class Facets:
    watermark: str | None
    counts: dict[Facet, int]


COLUMNS = ["version", "tags", "transform_name", "transform_version"]


def count_file(body: bytes | io.RawIOBase) -> Counter[Facet]:
    """Images per facet in one ``images`` file (its bytes, or a seekable file over them: then only
    the footer and :data:`COLUMNS`' chunks are read); an image with k tags counts once under each."""
    t = pq.read_table(io.BytesIO(body) if isinstance(body, bytes) else body, columns=COLUMNS)
    label = pc.if_else(
        pc.is_null(t.column("transform_name")),
        pa.scalar(""),
        pc.binary_join_element_wise(t.column("transform_name"), t.column("transform_version"), ":"),
    )
    tags = t.column("tags").combine_chunks()
    parents = pc.list_parent_indices(tags)
    flat = pa.table(
        {
            "version": pc.take(t.column("version"), parents),
            "tag": pc.list_flatten(tags),
            "transform": pc.take(label, parents),
        }
    )
    grouped = flat.group_by(["version", "tag", "transform"]).aggregate([([], "count_all")])
    out: Counter[Facet] = Counter()
    for row in grouped.to_pylist():
        out[(row["version"], row["tag"], row["transform"])] += int(row["count_all"])
    return out


def facets(store: CatalogStorage, domain: str) -> Facets | None:
    """The domain's facet counts as of the snapshot's watermark, or None when there is no snapshot yet."""
    raw, _ = store.read_manifest()
    if raw is None:
        return None
    snap = Snapshot.from_json(raw)
    total: Counter[Facet] = Counter()
    for f in snap.of("images"):
        if f.domain != domain:
            continue
        with _LOCK:
            cached = _PER_FILE.get(f.name)
        if cached is None:
            cached = count_file(store.open_file(f.name, f.bytes))
            with _LOCK:
                if len(_PER_FILE) >= MAX_CACHED_FILES:
                    _PER_FILE.clear()
                _PER_FILE[f.name] = cached
        total.update(cached)
    return Facets(snap.watermark, dict(total))

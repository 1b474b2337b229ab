"""``corpus query``: DuckDB SQL over the catalog, exact, read-only, bounded in memory and time.

**Exact.** A query sees the snapshot (the files the manifest lists, every row written up to its
watermark) plus the *tail*: every row written after the watermark, read from the tables at
query time (:class:`~corpus.catalog.storage.CatalogStorage`, service ``Timestamp`` > watermark).
Both sides use the same clock and bound, so each row is counted once; a query right after an
ingest counts the new images without waiting for a sync. Tables whose rows can change
(``sets``, ``trainsets``, ``rejections``) take a key's tail row over its snapshot row.

**Where DuckDB reads from.** DuckDB can't download its Azure extension here (and needs none):
the snapshot's files are downloaded once into a local cache keyed by their names (they are
immutable, content-addressed) and DuckDB reads them as local Parquet (``mode="parquet"``, the
default: the measurements in docs/benchmarks.md favour it over loading them into Arrow first,
``mode="arrow"``); the tail is handed over as Arrow tables.

**Read-only and bounded.** One statement, and it must be a ``SELECT`` (checked by DuckDB's own
parser); the connection is in-memory, file access is limited to the cache directory
(``allowed_directories``, ``enable_external_access = false``) and the configuration is locked
before the user's SQL runs, so SQL can neither write nor read anything else. ``memory_limit``
caps DuckDB's memory; a timer interrupts a query that runs longer than its timeout. Errors are
one line (:class:`QueryError`).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from corpus.catalog import records
from corpus.catalog.limits import DEFAULT_MEMORY, DEFAULT_TIMEOUT
from corpus.catalog.records import Row
from corpus.catalog.schema import MODEL_TRAINSETS, MODELS, TABLES, TRAINSET_IMAGES, TRAINSETS, Table, empty, to_arrow
from corpus.catalog.snapshot import GRACE, Snapshot
from corpus.catalog.storage import CatalogStorage
from corpus.domain.errors import CorpusError
from corpus.store.trainsets_table import READY


class QueryError(CorpusError):
    """Bad SQL, a refused statement, a timeout: one line for the user."""


def cache_root() -> Path:
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("CORPUS_CACHE_DIR") or os.path.join(home, "corpus")) / "catalog"


@dataclass
class FileCache:
    """Local copies of the snapshot's files, by name (immutable: a cached file is never stale)."""

    root: Path

    @classmethod
    def for_store(cls, store: CatalogStorage, root: Path | None = None) -> FileCache:
        return cls((root or cache_root()) / hashlib.sha256(store.location.encode()).hexdigest()[:16])

    def path(self, name: str) -> Path:
        return self.root / name

    def fetch(self, store: CatalogStorage, names: list[str]) -> list[Path]:
        paths = []
        for name in names:
            p = self.path(name)
            if not p.is_file():
                p.parent.mkdir(parents=True, exist_ok=True)
                store.download_to(name, p)
            paths.append(p)
        return paths

    def prune(self, keep: set[str]) -> None:
        """Drop cached files the current snapshot no longer lists (compacted or replaced), once they
        are older than the grace period: another query may still be reading an older manifest."""
        if not self.root.is_dir():
            return
        old = time.time() - GRACE.total_seconds()
        for p in self.root.rglob("*.parquet"):
            if p.relative_to(self.root).as_posix() not in keep and p.stat().st_mtime < old:
                p.unlink(missing_ok=True)


@dataclass
class Tail:
    """The rows written after the snapshot's watermark, per table."""

    tables: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


def read_tail(store: CatalogStorage, snap: Snapshot, scan: bool = False) -> Tail:
    """Every row written after the snapshot's watermark. ``scan``: find new images by scanning all
    of ``Images`` rather than through the sets written since (see :meth:`CatalogStorage.images`)."""
    lo = snap.watermark_time
    with ThreadPoolExecutor(6) as pool:  # independent reads: overlap their round trips
        images = pool.submit(store.images, lo, None, scan)
        sets, transforms = pool.submit(store.sets, lo, None), pool.submit(store.transforms, lo, None)
        rejections, trainsets_f = pool.submit(store.rejections, lo, None), pool.submit(store.trainsets, lo, None)
        models_f = pool.submit(store.models, lo, None)
        trainsets, models = trainsets_f.result(), models_f.result()
        rows: dict[str, list[Row]] = {
            "images": [],
            "sets": sets.result(),
            "transforms": transforms.result(),
            "rejections": rejections.result(),
            TRAINSETS.name: [records.trainset(r) for r in trainsets],
            MODELS.name: [records.model(m) for m in models],
            MODEL_TRAINSETS.name: [x for m in models for x in records.model_trainsets(m)],
            TRAINSET_IMAGES.name: [],  # the manifests of training sets that became ready: below
        }
    tables = {name: to_arrow(TABLES[name], rows[name]) for name in TABLES}
    tables["images"] = images.result()
    done = snap.expanded
    lines = [store.trainset_images(r) for r in trainsets if r.status == READY and f"{r.name}:{r.version}" not in done]
    tables[TRAINSET_IMAGES.name] = pa.concat_tables([tables[TRAINSET_IMAGES.name], *lines])
    return Tail(tables)


@dataclass
class Catalog:
    """A DuckDB connection with the catalog's tables as views, ready for one read-only query."""

    con: duckdb.DuckDBPyConnection
    snapshot: Snapshot
    tail_rows: int

    def close(self) -> None:
        self.con.close()


def _cols(table: Table) -> str:
    return ", ".join(f'"{c}"' for c in table.names)


def open_catalog(
    store: CatalogStorage,
    cache: FileCache | None = None,
    memory_limit: str = DEFAULT_MEMORY,
    threads: int | None = None,
    mode: str = "parquet",
    exact: bool = True,
    scan: bool = False,
) -> Catalog:
    """Read the manifest, make its files local, read the tail, and define the views.

    ``exact=False`` skips the tail (the snapshot alone, as of its watermark): the gallery's facet
    table, which says so, and the benchmarks' snapshot-only figures.
    """
    cache = cache or FileCache.for_store(store)
    for attempt in range(3):
        raw, _ = store.read_manifest()
        snap = Snapshot.from_json(raw) if raw else Snapshot()
        try:
            fetched = cache.fetch(store, [f.name for f in snap.files])
            break
        except FileNotFoundError:  # swept between the manifest read and the download: read it again
            if attempt == 2:
                raise
    paths = {f.name: p for f, p in zip(snap.files, fetched, strict=True)}
    tail = read_tail(store, snap, scan) if exact else Tail({name: empty(t) for name, t in TABLES.items()})
    config: dict[str, Any] = {"memory_limit": memory_limit, "autoinstall_known_extensions": False}
    if threads:
        config["threads"] = threads
    try:
        con = duckdb.connect(":memory:", config=config)
    except duckdb.Error as exc:
        raise QueryError(f"cannot start DuckDB: {one_line(exc)}") from None
    try:
        for name, table in TABLES.items():
            files = [paths[f.name] for f in snap.of(name)]
            con.register(f"__tail_{name}", tail.tables[name])
            if mode == "arrow" and files:
                con.register(f"__snap_{name}", _load(table, files))
            con.execute(view_sql(table, files, mode, tail.tables[name].num_rows > 0))
        root = str(cache.root).replace("'", "''")
        cache.root.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET allowed_directories = ['{root}/']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    cache.prune(set(paths))
    return Catalog(con, snap, tail.rows)


def view_sql(table: Table, files: list[Path], mode: str, has_tail: bool) -> str:
    """``CREATE VIEW <table>``: the snapshot's files, and the tail (``__tail_<table>``) over them.

    Built from the schema's own names and local paths (quoted), never from user input.
    """
    name, cols = table.name, _cols(table)
    if not files:
        snap = f"SELECT {cols} FROM __tail_{name} WHERE false"  # noqa: S608 - names from the schema
    elif mode == "arrow":
        snap = f"SELECT {cols} FROM __snap_{name}"  # noqa: S608 - names from the schema
    else:
        listed = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
        snap = f"SELECT {cols} FROM read_parquet([{listed}], union_by_name = true)"  # noqa: S608 - quoted local paths
    tail = f"SELECT {cols} FROM __tail_{name}"  # noqa: S608 - names from the schema
    if table.insert_only or not has_tail:
        return f'CREATE VIEW "{name}" AS {snap} UNION ALL {tail}'
    same = " AND ".join(f's."{k}" IS NOT DISTINCT FROM t."{k}"' for k in table.key)
    newer = f"SELECT 1 FROM __tail_{name} t WHERE {same}"  # noqa: S608 - names from the schema
    return f'CREATE VIEW "{name}" AS SELECT {cols} FROM ({snap}) s WHERE NOT EXISTS ({newer}) UNION ALL {tail}'  # noqa: S608


def _load(table: Table, files: list[Path]) -> pa.Table:
    parts = [pq.read_table(p) for p in files]
    return pa.concat_tables(parts, promote_options="default").select(list(table.names))


def check_sql(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Exactly one statement, and a SELECT: anything else is refused before it runs."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(one_line(exc)) from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement, not {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are allowed (this is {statements[0].type.name})")


def one_line(exc: BaseException) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return " ".join(lines[:2])[:500] if lines else type(exc).__name__


def run(cat: Catalog, sql: str, timeout: float = DEFAULT_TIMEOUT) -> pa.Table:
    """Run one read-only query; its whole result as an Arrow table."""
    check_sql(cat.con, sql)
    timer = threading.Timer(timeout, cat.con.interrupt)
    timer.start()
    try:
        return cat.con.sql(sql).to_arrow_table()
    except duckdb.InterruptException:
        raise QueryError(f"query stopped after the {timeout:g} s timeout") from None
    except duckdb.Error as exc:
        raise QueryError(one_line(exc)) from None
    finally:
        timer.cancel()


def json_lines(result: pa.Table) -> Iterator[str]:
    """One JSON object per row (dates as ISO 8601)."""
    for row in result.to_pylist():
        yield records.dumps_row(row)


def csv_bytes(result: pa.Table) -> bytes:
    import pyarrow.csv as pacsv

    out = io.BytesIO()
    flat = pa.table({n: _csv_column(result.column(n)) for n in result.column_names})
    pacsv.write_csv(flat, out)
    return out.getvalue()


def _csv_column(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """CSV has no lists: a list column is written as its JSON text."""
    if pa.types.is_list(col.type) or pa.types.is_struct(col.type) or pa.types.is_map(col.type):
        return pa.array([None if v is None else records.dumps_value(v) for v in col.to_pylist()], pa.string())
    return col


def text_table(result: pa.Table, limit: int = 1000) -> str:
    """A plain aligned table for people (at most ``limit`` rows; ``--json``/``--csv`` for all)."""
    names = result.column_names
    rows = [[_cell(v) for v in r.values()] for r in result.slice(0, limit).to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    more = result.num_rows - len(rows)
    lines.append(f"({result.num_rows} rows{f', {more} not shown' if more > 0 else ''})")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, list | dict):
        return records.dumps_value(v)
    return str(v)

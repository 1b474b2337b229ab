"""``corpus catalog sync`` and ``corpus query "SQL"``: the columnar catalog (see :mod:`corpus.catalog`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from corpus.cli.common import CliError, settings_from_cwd


def _store() -> Any:
    from corpus.catalog.storage import CatalogStorage
    from corpus.store.storage import FAIL_FAST, Clients

    settings = settings_from_cwd()
    return CatalogStorage.of(Clients(settings.connection, FAIL_FAST), settings), settings


def cmd_sync(args: argparse.Namespace) -> int:
    from corpus.catalog.sync import sync_settings
    from corpus.store.storage import FAIL_FAST, Clients

    settings = settings_from_cwd()
    result = sync_settings(Clients(settings.connection, FAIL_FAST), settings)
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        rows = ", ".join(f"{n} {t}" for t, n in sorted(result.rows_added.items()) if n) or "no new rows"
        print(f"catalog generation {result.generation} up to {result.watermark}: {rows}; {result.files_added} files added")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from corpus.catalog import query as q

    if args.timeout <= 0:
        raise CliError("--timeout must be positive")
    store, _ = _store()
    cat = q.open_catalog(store, memory_limit=args.memory_limit, scan=args.scan)
    try:
        result = q.run(cat, args.sql, timeout=args.timeout)
    finally:
        cat.close()
    out = sys.stdout
    if args.parquet:
        import pyarrow.parquet as pq

        pq.write_table(result, Path(args.parquet))
        print(f"{result.num_rows} rows written to {args.parquet}", file=sys.stderr)
    elif args.json:
        for line in q.json_lines(result):
            out.write(line + "\n")
    elif args.csv:
        out.flush()
        sys.stdout.buffer.write(q.csv_bytes(result))
    else:
        out.write(q.text_table(result) + "\n")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from corpus.catalog.limits import DEFAULT_MEMORY, DEFAULT_TIMEOUT

    c = sub.add_parser("catalog", help="the columnar catalog: Parquet files in the catalog container")
    cs = c.add_subparsers(dest="catalog_command", required=True)
    s = cs.add_parser("sync", help="append the rows written since the last sync (safe to run twice or at once)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sync)

    q = sub.add_parser("query", help="DuckDB SQL over the catalog's tables (read-only; see docs/query.md)")
    q.add_argument("sql", metavar="SQL", help="one SELECT statement over images, sets, transforms, trainsets, ...")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per row")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    fmt.add_argument("--parquet", metavar="FILE", help="write the result to this Parquet file")
    q.add_argument("--memory-limit", default=DEFAULT_MEMORY, help=f"DuckDB memory_limit (default {DEFAULT_MEMORY})")
    q.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds (default {DEFAULT_TIMEOUT:g})")
    q.add_argument(
        "--scan",
        action="store_true",
        help="find the images recorded since the snapshot by scanning all of Images, not through the sets written since "
        "(also counts an image whose copy died before raising its set's count and awaits its retry; slower)",
    )
    q.set_defaults(func=cmd_query)

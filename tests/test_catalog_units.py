"""The catalog's pure parts: the schema against its documentation, the manifest, file names, compaction."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from corpus.catalog import records
from corpus.catalog.query import QueryError, check_sql
from corpus.catalog.schema import IMAGES, SCHEMA_VERSION, SETS, TABLES, to_arrow
from corpus.catalog.snapshot import (
    COMPACT_AT,
    GRACE,
    FileEntry,
    Retired,
    Snapshot,
    compaction_groups,
    file_name,
    iso,
    merged_range,
    parquet_bytes,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "query.md"


def documented_tables() -> dict[str, list[tuple[str, str]]]:
    """``### `name` `` headings of docs/query.md, each with its table's (column, type) rows."""
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"### `(\w+)`", line.strip())
        if heading:
            current = heading.group(1)
            found[current] = []
            continue
        if current and line.startswith("| ") and not line.startswith(("| column", "|---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            found[current].append((cells[0], cells[1]))
    return found


def test_every_table_and_column_is_documented_with_its_type_and_nothing_else() -> None:
    docs = documented_tables()
    assert list(docs) == list(TABLES)
    for name, table in TABLES.items():
        assert docs[name] == [(c.name, c.type) for c in table.columns], name
    text = DOCS.read_text(encoding="utf-8")
    assert f"(schema version {SCHEMA_VERSION})" in text


def test_keys_are_columns_and_images_are_partitioned_by_domain() -> None:
    for table in TABLES.values():
        assert set(table.key) <= set(table.names), table.name
        assert len(set(table.names)) == len(table.names), table.name
    assert IMAGES.by_domain and "domain" in IMAGES.names


def test_parquet_bytes_depend_on_the_rows_only_so_names_are_content_addresses() -> None:
    rows = [
        {"domain": "birds", "path": "a", "version": "v1", "tags": ["x"], "transform_name": None},
        {"domain": "birds", "path": "b", "version": "v1", "tags": [], "transform_name": "crop", "transform_version": "1"},
    ]
    one = parquet_bytes(SETS, to_arrow(SETS, rows))
    two = parquet_bytes(SETS, to_arrow(SETS, list(reversed(rows))))
    assert one == two
    assert file_name(SETS, one) == file_name(SETS, two) != file_name(SETS, parquet_bytes(SETS, to_arrow(SETS, rows[:1])))
    assert file_name(IMAGES, one, "birds").startswith("images/birds/")
    assert file_name(IMAGES, one, trainset=("n", "1")).startswith("images/n/1/")


def entry(name: str, size: int = 100, domain: str = "birds", since: str | None = None, mark: str = "2026-01-01") -> FileEntry:
    return FileEntry("images", name, 1, size, since, mark, domain)


def test_manifest_round_trips_and_a_new_generation_retires_what_it_replaces() -> None:
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    old = Snapshot(
        watermark=iso(now - timedelta(hours=2)),
        generation=3,
        files=(entry("a"), entry("b")),
        retired=(Retired("gone-long-ago", iso(now - GRACE - timedelta(seconds=1))), Retired("recent", iso(now))),
    )
    assert Snapshot.from_json(old.to_json()) == old
    new = old.replace_files([entry("a")], [entry("c"), entry("b")], now, iso(now))
    assert [f.name for f in new.files] == ["b", "c"]
    assert [r.name for r in new.retired] == ["recent", "a"]  # past the grace period: forgotten (the sweep deletes it)
    assert (new.generation, new.watermark) == (4, iso(now))
    with pytest.raises(ValueError, match="not a corpus catalog manifest"):
        Snapshot.from_json(b'{"files": []}')


def test_small_image_files_of_a_domain_are_compacted_once_there_are_enough() -> None:
    few = Snapshot(files=tuple(entry(f"f{i}") for i in range(COMPACT_AT - 1)))
    assert compaction_groups(few) == []
    big = entry("big", size=10**9)
    many = Snapshot(files=(*(entry(f"f{i}") for i in range(COMPACT_AT)), big, entry("other", domain="cats")))
    groups = compaction_groups(many)
    assert [[f.name for f in g] for g in groups] == [[f"f{i}" for i in range(COMPACT_AT)]]
    ranged = [entry("x", since="2026-01-01", mark="2026-01-02"), entry("y", since="2026-01-02", mark="2026-01-03")]
    assert merged_range(ranged) == ("2026-01-01", "2026-01-03")
    assert merged_range([*ranged, entry("z", since=None)]) == (None, "2026-01-03")


def test_only_one_select_statement_is_accepted() -> None:
    con = duckdb.connect()
    check_sql(con, "SELECT 1 AS x")
    check_sql(con, "WITH a AS (SELECT 1) SELECT * FROM a")
    for sql, why in (
        ("INSERT INTO t VALUES (1)", "only SELECT"),
        ("ATTACH 'x.db'", "only SELECT"),
        ("SELECT 1; DROP TABLE t", "exactly one"),
        ("SELEC 1", "syntax"),
    ):
        with pytest.raises(QueryError, match=why):
            check_sql(con, sql)


def test_image_facts_are_read_whatever_their_capitalisation_and_missing_ones_are_null() -> None:
    entity = {"SHA256": "ab" * 32, "PHash": "0f" * 8, "Sharpness": "12.5", "Grey": True, "AspectRatio": 1.5, "Other": 1}
    assert records.facts(entity) == {"sha256": "ab" * 32, "phash": "0f" * 8, "sharpness": 12.5, "grey": True, "aspect": 1.5}
    table = to_arrow(IMAGES, [{"domain": "d", "blob": "b", **records.facts(entity)}])
    assert table.column("contrast").to_pylist() == [None]
    assert table.schema.field("tags").type == pa.list_(pa.string())


def test_query_values_print_as_json() -> None:
    from decimal import Decimal

    row = {"n": Decimal(3), "x": Decimal("1.5"), "at": datetime(2026, 1, 1, tzinfo=UTC), "tags": ["a"]}
    assert records.dumps_row(row) == '{"n": 3, "x": 1.5, "at": "2026-01-01T00:00:00+00:00", "tags": ["a"]}'


def test_the_function_app_side_of_the_catalog_needs_pyarrow_but_not_duckdb() -> None:
    """requirements.txt (the function app's) lists pyarrow only: the timer's sync and the gallery's facets must not
    import DuckDB."""
    import subprocess
    import sys

    code = "import sys; sys.modules['duckdb'] = None\nimport corpus.catalog.sync, corpus.catalog.facets, corpus.app.gallery"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=DOCS.parent.parent, check=False)
    assert proc.returncode == 0, proc.stderr
    requirements = (DOCS.parent.parent / "requirements.txt").read_text()
    assert "pyarrow==" in requirements and "duckdb" not in requirements

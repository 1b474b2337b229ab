"""The catalog's pure parts: the schema against its documentation, the manifest, file names, compaction."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from corpus.app.runtime import Runtime
from corpus.catalog import query as q
from corpus.catalog import records
from corpus.catalog.query import QueryError, check_sql
from corpus.catalog.schema import IMAGES, REJECTIONS, SCHEMA_VERSION, SETS, TABLES, to_arrow
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
from corpus.catalog.storage import CatalogStorage
from corpus.catalog.sync import SyncResult, sync
from corpus.domain.paths import SetRef
from corpus.store.rows import ImageRow, RejectionRow

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


# -- the sync and a query on Runtime.in_memory(): the ports' semantics, no Azurite ------------------


def _record(rt: Runtime, path: str, files: range, tags: list[str]) -> None:
    """Images recorded through the real table stores, as ingest records them."""
    ref = SetRef("birds", tuple(path.split("/")), "v1")
    rt.ensure_container("birds")
    rt.catalog.sets.ensure(ref, tags, f"original/{path}/v1/")
    rows = [
        ImageRow(
            f"f{i:05d}.jpg", f"original/{path}/v1/f{i:05d}.jpg", 1000 + i, hashlib.md5(str(i).encode()).hexdigest(),
            "image/jpeg", 64, 48, f"birds/v1/{path}/f{i:05d}.jpg",
        )
        for i in files
    ]  # fmt: skip
    for i in range(0, len(rows), 50):
        rt.catalog.record_images(ref, rows[i : i + 50])
    rt.catalog.refresh_counts(ref)  # as ingest ends: what a query's tail finds new images by


def _count(store: CatalogStorage, cache: Path, exact: bool = True) -> tuple[int, int]:
    cat = q.open_catalog(store, q.FileCache(cache), exact=exact)
    try:
        row = q.run(cat, "SELECT count(*), count(DISTINCT blob) FROM images").to_pylist()[0]
    finally:
        cat.close()
    return tuple(row.values())  # type: ignore[return-value]


@pytest.fixture
def mem() -> tuple[Runtime, CatalogStorage]:
    rt = Runtime.in_memory()
    rt.ensure_resources()
    return rt, CatalogStorage.of(rt.clients, rt.settings, rt.blobs)


def test_sync_and_query_run_on_the_memory_runtime_and_a_second_sync_appends_nothing(mem, tmp_path) -> None:
    rt, store = mem
    _record(rt, "red/robin", range(30), ["red", "robin"])
    first = sync(store, timedelta(0))
    assert first.rows_added["images"] == 30 and first.files_added >= 1
    assert _count(store, tmp_path, exact=False) == (30, 30)  # the snapshot alone
    files = {f.name for f in Snapshot.from_json(store.read_manifest()[0] or b"").files}
    second = sync(store, timedelta(0))
    assert second.rows_added["images"] == 0 and second.files_added == 0 and second.generation == first.generation + 1
    assert {f.name for f in Snapshot.from_json(store.read_manifest()[0] or b"").files} == files
    _record(rt, "red/robin", range(30, 35), ["red", "robin"])  # after the watermark: the query's tail
    assert _count(store, tmp_path) == (35, 35)


def test_a_sync_that_loses_the_if_match_race_starts_again_from_the_winners_manifest(mem, tmp_path) -> None:
    rt, store = mem
    _record(rt, "red/robin", range(20), ["red", "robin"])
    sync(store, timedelta(0))
    _record(rt, "blue/jay", range(40), ["blue", "jay"])
    other: list[SyncResult] = []

    def rival(step: str) -> None:
        if not other:  # another sync commits between this one's file writes and its manifest commit
            other.append(sync(CatalogStorage.of(rt.clients, rt.settings, rt.blobs), timedelta(0)))

    loser = sync(store, timedelta(0), fault=rival)
    assert other[0].rows_added["images"] == 40 and other[0].attempts == 1
    assert loser.attempts == 2 and loser.rows_added["images"] == 0, "it read again from the winner's watermark"
    assert _count(store, tmp_path) == (60, 60)


def test_a_sync_killed_between_its_files_and_its_manifest_is_completed_once_by_the_next(mem, tmp_path) -> None:
    rt, store = mem
    _record(rt, "red/robin", range(25), ["red", "robin"])
    sync(store, timedelta(0))
    raw, etag = store.read_manifest()
    _record(rt, "red/robin", range(25, 70), ["red", "robin"])

    def die(step: str) -> None:
        raise KeyboardInterrupt(step)  # the process is killed: nothing after this step runs

    with pytest.raises(KeyboardInterrupt):
        sync(store, timedelta(0), fault=die)
    assert store.read_manifest() == (raw, etag), "the manifest is untouched: the files written are unlisted"
    assert len(store.list_files()) > len(Snapshot.from_json(raw or b"").files)
    assert _count(store, tmp_path / "before", exact=False) == (25, 25)
    after = sync(store, timedelta(0))
    assert after.rows_added["images"] == 45
    assert _count(store, tmp_path / "after", exact=False) == (70, 70), "every row once"
    assert _count(store, tmp_path / "after") == (70, 70)


def test_the_columnar_images_path_gives_the_rows_of_the_row_by_row_one() -> None:
    """records.images_table (the sync's bulk path) against records.image, entity by entity: originals and
    transformed images, Int32 and Int64 sizes, a missing CreatedAt (the service time then), facts under any
    spelling, absent in some entities, unreadable in others."""
    from azure.data.tables import EdmType, EntityProperty, TableEntity

    from corpus.store.rows import ImageSetRow

    stamp = datetime(2026, 3, 1, tzinfo=UTC)
    original = ImageSetRow("birds", "red/robin", "v1", ("red", "robin"), "original/red/robin/v1/", None, stamp)
    crop = ImageSetRow("birds", "red/robin", "v1", ("red", "robin"), "transform/crop/1/red/robin/v1/", ("crop", "1"), stamp)
    entities = []
    for i in range(7):
        s = crop if i % 2 else original
        e = TableEntity(
            {
                "PartitionKey": s.images_partition_key,
                "RowKey": f'"f{i}.jpg',
                **ImageRow(f"f{i}.jpg", f"{s.blob_path}f{i}.jpg", 10 + i, "ab" * 16, "image/jpeg", 64 * (i % 3), 48,
                           "original/red/robin/v1/f0.jpg" if i % 2 else f"birds/v1/red/robin/f{i}.jpg",
                           stamp if i != 3 else None).to_entity(s.images_partition_key),
            }
        )  # fmt: skip
        if i == 3:
            del e["CreatedAt"]
        if i == 4:
            e["Size"] = 14  # written as Int32 by an older version
        e.update({0: {}, 1: {"SHA256": "cd" * 32, "Sharpness": 12.5}, 2: {"phash": "00ff", "Gray": "true"}}.get(i % 3, {}))
        if i == 5:
            e["Aspect_Ratio"] = "not a number"
            e["Size"] = EntityProperty(15, EdmType.INT64)
        e._metadata = {"timestamp": stamp + timedelta(seconds=i), "etag": "x"}
        entities.append(e)
    by_pk = {s.images_partition_key: s for s in (original, crop)}
    expected = [records.image(by_pk[e["PartitionKey"]], e) for e in entities]
    got = records.images_table(entities, by_pk)
    assert got.schema == IMAGES.arrow
    assert got.to_pylist() == to_arrow(IMAGES, expected).to_pylist()
    assert got.column("added").to_pylist()[3] == stamp + timedelta(seconds=3)
    assert records.images_table([], by_pk).num_rows == 0


def test_the_sync_and_a_query_never_import_pandas() -> None:
    """pyarrow imports pandas on first use (~1 s a run) unless told it is absent: the catalog's entry points do."""
    import subprocess
    import sys

    code = """
import sys
from datetime import timedelta
from pathlib import Path
import tempfile
from corpus.app.runtime import Runtime
from corpus.catalog import query as q
from corpus.catalog.schema import arrow_without_pandas
from corpus.catalog.storage import CatalogStorage
from corpus.catalog.sync import sync_settings
from tests.test_catalog_units import _record
rt = Runtime.in_memory(); rt.ensure_resources()
_record(rt, "red/robin", range(10), ["red", "robin"])
rt.settings.values["CORPUS_CATALOG_LAG_SECONDS"] = "0"
assert sync_settings(rt.clients, rt.settings, rt.blobs).rows_added["images"] == 10
arrow_without_pandas()
cat = q.open_catalog(CatalogStorage.of(rt.clients, rt.settings, rt.blobs), q.FileCache(Path(tempfile.mkdtemp())))
assert q.run(cat, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 10}]
print("pandas" in sys.modules)
import pandas  # still importable by anyone else
"""
    root = DOCS.parent.parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_the_columnar_trainset_images_path_gives_the_rows_of_the_row_by_row_one() -> None:
    from corpus.catalog.schema import TRAINSET_IMAGES
    from corpus.domain.manifest import ManifestEntry

    entries = [
        ManifestEntry("birds", "original/a.jpg", "q83vEjRWeJA=", 10, 64, 48, "birds", "red", "v1", None,
                      "original/a.jpg", "", ("robin",), "train"),
        ManifestEntry("birds", "transform/crop/1/a.jpg", "q83vEjRWeJB=", 9, 32, 24, "birds", "red", "v1", ("crop", "1"),
                      "original/a.jpg", "q83vEjRWeJA=", ("robin", "red"), "val"),
    ]  # fmt: skip
    expected = to_arrow(TRAINSET_IMAGES, [records.trainset_image("ts", "2", e) for e in entries])
    got = records.trainset_images_table("ts", "2", entries)
    assert got.schema == TRAINSET_IMAGES.arrow and got.to_pylist() == expected.to_pylist()
    assert records.trainset_images_table("ts", "2", []).num_rows == 0


def test_a_backfilled_image_is_not_appended_to_the_catalog_a_second_time(mem, tmp_path) -> None:
    import dataclasses

    from corpus.domain.imagefacts import ImageFacts

    rt, store = mem
    _record(rt, "red/robin", range(10), ["red", "robin"])
    sync(store, timedelta(0))
    ref = SetRef("birds", ("red", "robin"), "v1")
    facts = ImageFacts("ab" * 32, "0" * 16, "0" * 16, 64, 48, 1.0, 0.5, 0.5, 3.0, False, 1.33)
    for image in list(rt.catalog.images.iter(ref)):
        rt.catalog.images.add_facts(ref, dataclasses.replace(image, facts=facts))  # what the facts backfill writes
    assert _count(store, tmp_path / "tail", exact=True) == (10, 10), "nor in a query's tail before the sync"
    sync(store, timedelta(0))
    assert _count(store, tmp_path, exact=False) == (10, 10), "each image once in the snapshot"


def test_backfilled_facts_reach_the_catalog_when_its_snapshot_is_rebuilt(mem, tmp_path) -> None:
    """The documented way (docs/query.md): delete manifest.json; the next sync reads every row again."""
    import dataclasses

    from corpus.catalog.storage import MANIFEST
    from corpus.domain.imagefacts import ImageFacts

    rt, store = mem
    _record(rt, "red/robin", range(6), ["red", "robin"])
    sync(store, timedelta(0))
    ref = SetRef("birds", ("red", "robin"), "v1")
    facts = ImageFacts("ab" * 32, "0" * 16, "0" * 16, 64, 48, 1.0, 0.5, 0.5, 3.0, False, 1.33)
    for image in list(rt.catalog.images.iter(ref)):
        rt.catalog.images.add_facts(ref, dataclasses.replace(image, facts=facts))
    _, etag = store.read_manifest()
    assert etag is not None
    store.delete(MANIFEST, etag)
    sync(store, timedelta(0))
    cat = q.open_catalog(store, q.FileCache(tmp_path), exact=False)
    try:
        row = q.run(cat, "SELECT count(*), count(DISTINCT blob), count(sha256) FROM images").to_pylist()[0]
    finally:
        cat.close()
    assert tuple(row.values()) == (6, 6, 6)


def test_the_facet_table_reads_the_footer_and_four_columns_not_whole_files(mem) -> None:
    """The gallery's facet counts come from ranged reads of a file's footer and four columns' chunks:
    the same counts as from the whole file, for a fraction of its bytes (issue 21 review)."""
    from corpus.catalog import facets as fc

    rt, store = mem
    _record(rt, "red/robin", range(15000), ["red", "robin"])
    _record(rt, "blue/jay", range(5000), ["blue", "jay"])
    sync(store, timedelta(0))
    snap = Snapshot.from_json(store.read_manifest()[0] or b"")
    entries = [f for f in snap.of("images") if f.domain == "birds"]
    assert entries
    for f in entries:
        ranged = store.open_file(f.name, f.bytes)
        assert fc.count_file(ranged) == fc.count_file(store.get_file(f.name))
        assert ranged.bytes_read < f.bytes / 2, (ranged.bytes_read, f.bytes)
    fc._PER_FILE.clear()
    found = fc.facets(store, "birds")
    assert found is not None
    assert found.counts[("v1", "robin", "")] == 15000 and found.counts[("v1", "jay", "")] == 5000


def test_a_rejection_row_fills_every_rejections_column_and_an_empty_etag_or_kept_as_is_null() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    junk = records.rejection(RejectionRow("junk", "birds/v1/notes.txt", "not an image", at=at))
    assert list(junk) == list(REJECTIONS.names)
    assert junk == {
        "kind": "junk", "name": "birds/v1/notes.txt", "reason": "not an image", "size": 0,
        "etag": None, "kept_as": None, "at": at,
    }  # fmt: skip
    kept = records.rejection(RejectionRow("rejected", "birds/v1/a.png", "too large", 12, '"0x1"', "rejected/birds/v1/a.png"))
    assert (kept["size"], kept["etag"], kept["kept_as"]) == (12, '"0x1"', "rejected/birds/v1/a.png")
    assert to_arrow(REJECTIONS, [junk, kept]).num_rows == 2

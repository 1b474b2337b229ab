"""The snapshot on Azurite: compaction, concurrent syncs, and other engines reading the same files.

Rows are recorded through the real table stores (``Catalog.sets.ensure``, ``images.record_many``),
as ingest records them, without running the host: these tests are about the catalog.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from corpus.app import gallery
from corpus.app.web import Request
from corpus.catalog import query as q
from corpus.catalog.facets import facets
from corpus.catalog.snapshot import COMPACT_AT, GRACE, Snapshot
from corpus.catalog.storage import CatalogStorage
from corpus.catalog.sync import sweep, sync
from corpus.domain.paths import SetRef
from corpus.store.rows import ImageRow

pytestmark = pytest.mark.e2e


def record(rt, domain: str, path: str, files: range, tags: list[str]) -> None:
    ref = SetRef(domain, tuple(path.split("/")), "v1")
    rt.ensure_container(domain)
    rt.catalog.sets.ensure(ref, tags, f"original/{path}/v1/")
    rows = [
        ImageRow(
            f"f{i:05d}.jpg", f"original/{path}/v1/f{i:05d}.jpg", 1000 + i, hashlib.md5(str(i).encode()).hexdigest(),
            "image/jpeg", 64, 48, f"{domain}/v1/{path}/f{i:05d}.jpg",
        )
        for i in files
    ]  # fmt: skip
    for i in range(0, len(rows), 50):  # with the counter step, a transaction holds at most 100 operations
        rt.catalog.record_images(ref, rows[i : i + 50])


def snapshot(store: CatalogStorage) -> Snapshot:
    raw, _ = store.read_manifest()
    assert raw is not None
    return Snapshot.from_json(raw)


def duck(store: CatalogStorage, cache: Path, sql: str, exact: bool = True) -> list[tuple]:
    cat = q.open_catalog(store, q.FileCache(cache), exact=exact)
    try:
        return [tuple(r.values()) for r in q.run(cat, sql).to_pylist()]
    finally:
        cat.close()


def test_small_files_are_compacted_and_concurrent_syncs_commit_each_row_once(rt, tmp_path):
    store = CatalogStorage.of(rt.clients, rt.settings)
    for k in range(COMPACT_AT):
        record(rt, "birds", "red/robin", range(k * 10, k * 10 + 10), ["red", "robin"])
        record(rt, "cats", "tabby", range(k * 5, k * 5 + 5), ["tabby"])
        sync(store, timedelta(0))
    snap = snapshot(store)
    birds = [f for f in snap.of("images") if f.domain == "birds"]
    assert len(birds) == 1 and birds[0].rows == 10 * COMPACT_AT, "the small files of a domain were merged into one"
    assert len(snap.retired) >= COMPACT_AT - 1  # the files it replaced stay for readers of the last manifest
    assert duck(store, tmp_path / "c", "SELECT domain, count(*) FROM images GROUP BY domain ORDER BY domain") == [
        ("birds", 10 * COMPACT_AT),
        ("cats", 5 * COMPACT_AT),
    ]

    # Four syncs at once over new rows: one commit wins each round, the others start again from it.
    record(rt, "birds", "blue/jay", range(300), ["blue", "jay"])
    results, errors = [], []

    def one() -> None:
        try:
            results.append(sync(CatalogStorage.of(rt.clients, rt.settings), timedelta(0)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 4
    snap = snapshot(store)
    assert sum(f.rows for f in snap.of("images")) == 10 * COMPACT_AT + 5 * COMPACT_AT + 300
    assert sum(r.rows_added.get("images", 0) for r in results) == 300, "exactly one of the syncs added the new rows"
    assert duck(store, tmp_path / "c", "SELECT count(*), count(DISTINCT blob) FROM images", exact=False) == [(360, 360)]

    # Unlisted files (a dead sync's) are swept once past the grace period; listed and retired ones stay.
    store.put_file("images/birds/orphan.parquet", b"left by a sync that died")
    assert sweep(store, snap, datetime.now(UTC)) == 0
    assert sweep(store, snap, datetime.now(UTC) + GRACE + timedelta(minutes=1)) >= 1  # + files a compaction merged at once
    left = {name for name, _, _ in store.list_files()}
    assert left == {f.name for f in snap.files} | {r.name for r in snap.retired}


PER_TAG = "SELECT tag, count(*) FROM images, unnest(tags) AS t(tag) GROUP BY tag ORDER BY tag"


def small_snapshot(rt, tmp_path) -> tuple[CatalogStorage, Snapshot, list[Path], list[tuple]]:
    """230 images in 3 sets of 2 domains, synced; the images files in a local cache; DuckDB's count per tag."""
    store = CatalogStorage.of(rt.clients, rt.settings)
    record(rt, "birds", "red/robin", range(120), ["red", "robin"])
    record(rt, "birds", "blue/jay", range(80), ["blue", "jay"])
    record(rt, "cats", "tabby", range(30), ["tabby"])
    sync(store, timedelta(0))
    snap = snapshot(store)
    files = q.FileCache(tmp_path / "cache").fetch(store, [f.name for f in snap.of("images")])
    expected = duck(store, tmp_path / "cache", PER_TAG)
    assert expected == [("blue", 80), ("jay", 80), ("red", 120), ("robin", 120), ("tabby", 30)]
    return store, snap, files, expected


def test_pyarrow_and_the_gallery_facets_read_the_snapshot_with_duckdbs_counts(rt, tmp_path):
    store, snap, files, expected = small_snapshot(rt, tmp_path)
    # The gallery's facet table (pyarrow, per file, cached) equals DuckDB's GROUP BY, and the page shows it.
    facet_sql = (
        "SELECT version, tag, coalesce(transform_name || ':' || transform_version, ''), count(*) "
        "FROM images, unnest(tags) AS t(tag) WHERE domain = 'birds' GROUP BY ALL ORDER BY ALL"
    )
    found = facets(store, "birds")
    assert found is not None and found.watermark == snap.watermark
    assert sorted((*k, n) for k, n in found.counts.items()) == duck(store, tmp_path / "cache", facet_sql)
    page = gallery.domain_page(rt, Request("GET", {"domain": "birds"})).body.decode()
    assert '<table id="facets">' in page and "<td>v1</td><td>robin</td><td>original</td><td>120</td>" in page
    assert f"as of {snap.watermark}" in page

    # pyarrow's dataset API over the manifest's files.
    dataset = ds.dataset([str(p) for p in files], format="parquet")
    assert dataset.count_rows() == 230
    counts: dict[str, int] = {}
    for tags in dataset.to_table(columns=["tags"]).column("tags").to_pylist():
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1
    assert sorted(counts.items()) == expected


def test_local_spark_reads_the_snapshot_with_duckdbs_counts(rt, tmp_path):
    """Where pyspark (optional extra 'spark', ``./dev spark``) and Java are installed; skipped with the reason otherwise."""
    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("pyspark is not installed (optional extra 'spark', ~450 MB; ./dev spark): the Spark read was not checked")
    if shutil.which("java") is None:
        pytest.skip("no Java runtime (Debian: default-jre-headless; ./dev spark): the Spark read was not checked")
    _, _, files, expected = small_snapshot(rt, tmp_path)
    script = tmp_path / "spark_count.py"
    script.write_text(
        "import json, sys\n"
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false')"
        ".config('spark.sql.shuffle.partitions', '2').getOrCreate()\n"
        "spark.read.option('mergeSchema', 'true').parquet(*sys.argv[1:]).createOrReplaceTempView('images')\n"
        "sql = 'SELECT tag, count(*) AS n FROM images LATERAL VIEW explode(tags) t AS tag GROUP BY tag ORDER BY tag'\n"
        "rows = spark.sql(sql)\n"
        "print(json.dumps([[r.tag, r.n] for r in rows.collect()]))\n"
        "spark.stop()\n"
    )
    proc = subprocess.run([sys.executable, str(script), *map(str, files)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])] == expected


def test_the_tail_finds_new_images_through_their_sets_and_scan_finds_one_whose_count_was_not_raised(rt, tmp_path):
    store = CatalogStorage.of(rt.clients, rt.settings)
    record(rt, "birds", "red/robin", range(10), ["red", "robin"])
    record(rt, "cats", "tabby", range(3), ["tabby"])
    sync(store, timedelta(0))
    robins, tabbies = SetRef("birds", ("red", "robin"), "v1"), SetRef("cats", ("tabby",), "v1")
    record(rt, "birds", "red/robin", range(10, 15), ["red", "robin"])  # recorded and counted, after the sync
    rt.catalog.refresh_counts(robins)
    # A copy that died between recording its image and raising the set's count (its retry is pending).
    rt.catalog.images.record(tabbies, ImageRow("late.jpg", "original/tabby/v1/late.jpg", 1, "0" * 32, "image/jpeg", 1, 1))
    count = "SELECT count(*) FROM images"
    assert duck(store, tmp_path / "c", count) == [(18,)]
    # The robins' set is in the tail (its count was raised) and in the snapshot: shown once, the newer row.
    sets = duck(store, tmp_path / "c", "SELECT domain, path FROM sets ORDER BY ALL")
    assert sets == [("birds", "red/robin"), ("cats", "tabby")]
    cat = q.open_catalog(store, q.FileCache(tmp_path / "c"), scan=True)
    try:
        assert q.run(cat, count).to_pylist() == [{"count_star()": 19}]
    finally:
        cat.close()
    rt.catalog.refresh_counts(tabbies)  # the retry raises the count: the set's write puts its partition in the tail
    assert duck(store, tmp_path / "c", count) == [(19,)]
    sync(store, timedelta(0))  # the sync scans: it never misses one
    assert duck(store, tmp_path / "c", count, exact=False) == [(19,)]

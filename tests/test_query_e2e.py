"""End to end: the catalog snapshot and ``corpus query`` on Azurite, checked against the CLI's own answers.

Ingest, transforms (thumbnail, crop), a training set and a model go through ``corpus host``; the
catalog is synced by ``corpus catalog sync`` (lag 0: the test's writes are all in the past), then
``corpus query`` must give the same answers as ``corpus count`` and ``corpus lineage``; new images
must be counted before any sync; a sync killed between its file writes and its manifest commit,
then run again, must leave every row exactly once; a second sync must add nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from corpus.domain.manifest import MANIFEST_FIELDS
from tests.support import REPO, ingest, jpeg, run_cli, run_host

pytestmark = pytest.mark.e2e

ROBIN, JAY, BOTH = "red/robin", "blue/jay", "red/jay/robin"


def cli_json(env, cwd, *args: str) -> Any:
    proc = run_cli(env, cwd, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def query(env, cwd, sql: str) -> list[dict[str, Any]]:
    proc = run_cli(env, cwd, "query", sql, "--json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def transform(env, clients, app_dir, path: str, name: str, args: dict[str, Any]) -> None:
    source = {"path": path, "version": "v1"}
    req = {"domain": "birds", "source": source, "transform": {"name": name, "version": "1", "args": args}}
    clients.queue_client("transform-requests").send_message(json.dumps(req))
    run_host(env, app_dir)


def manifest(clients) -> dict[str, Any]:
    return json.loads(clients.container("catalog").get_blob_client("manifest.json").download_blob().readall())


ORIGINALS_PER_TAG = """
SELECT tag, count(*) AS images FROM images, unnest(tags) AS t(tag)
WHERE domain = 'birds' AND transform_name IS NULL GROUP BY tag ORDER BY tag
"""
CROPS_PER_TAG = """
SELECT tag, count(*) AS images, count(DISTINCT source_blob) AS sources FROM images, unnest(tags) AS t(tag)
WHERE domain = 'birds' AND transform_name = 'crop' GROUP BY tag ORDER BY tag
"""
MODEL_IMAGES = """
SELECT ti.* EXCLUDE (trainset_name, trainset_version) FROM model_trainsets mt
JOIN trainset_images ti ON ti.trainset_name = mt.trainset_name AND ti.trainset_version = mt.trainset_version
WHERE mt.model_name = 'robin-net' AND mt.model_version = '1' ORDER BY ti.container, ti.blob
"""


def models_of(blob: str) -> str:
    return f"""
SELECT DISTINCT mt.model_name AS name, mt.model_version AS version FROM trainset_images ti
JOIN model_trainsets mt ON mt.trainset_name = ti.trainset_name AND mt.trainset_version = ti.trainset_version
WHERE ti.container = 'birds' AND (ti.blob = '{blob}' OR ti.source_blob = '{blob}') ORDER BY name, version
"""


def as_manifest_line(r: dict[str, Any]) -> dict[str, Any]:
    """A ``trainset_images`` row in the manifest's own shape (what ``corpus lineage --model`` prints)."""
    t = {"name": r["transform_name"], "version": r["transform_version"]} if r["transform_name"] else None
    keys = ("container", "blob", "md5", "size", "width", "height", "domain", "path", "version")
    return {
        **{k: r[k] for k in keys},
        "transform": t,
        "source": {"blob": r["source_blob"], "md5": r["source_md5"] or ""},
        "labels": r["labels"],
        "split": r["split"],
    }


def kill_sync_between_files_and_commit(env, cwd) -> subprocess.CompletedProcess[str]:
    """Run a sync in a child that SIGKILLs itself after writing its files, before committing the manifest."""
    code = (
        "import os, signal\n"
        "from datetime import timedelta\n"
        "from corpus.catalog.storage import CatalogStorage\n"
        "from corpus.catalog.sync import sync\n"
        "from corpus.store.settings import Settings\n"
        "from corpus.store.storage import Clients\n"
        "s = Settings.from_env()\n"
        "def die(step):\n"
        "    if step == 'files-written':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "sync(CatalogStorage.of(Clients(s.connection), s), timedelta(0), fault=die)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_query_answers_equal_the_cli_and_the_snapshot_is_exactly_once(env, clients, app_dir, tmp_path):
    env = {**env, "CORPUS_CATALOG_LAG_SECONDS": "0", "PYTHONPATH": str(REPO)}
    files = {f"birds/v1/{ROBIN}/r{i:02d}.jpg": jpeg(100 + i) for i in range(6)}
    files |= {f"birds/v1/{JAY}/j{i:02d}.jpg": jpeg(200 + i) for i in range(4)}
    files |= {f"birds/v1/{BOTH}/b{i}.jpg": jpeg(300 + i) for i in range(2)}
    ingest(env, clients, app_dir, files)
    transform(env, clients, app_dir, ROBIN, "crop", {"box": [0, 0, 32, 24]})
    transform(env, clients, app_dir, BOTH, "crop", {"box": [0, 0, 32, 24]})
    transform(env, clients, app_dir, JAY, "thumbnail", {"size": 16})
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"domain": "birds", "tags": ["red"], "version": "v1"}]))
    create = ["trainset", "create", "--name", "reds", "--version", "1", "--from", str(sources), "--classes", "robin,jay"]
    assert run_cli(env, tmp_path, *create).returncode == 0
    run_host(env, app_dir)
    cli_json(env, tmp_path, "model", "register", "--name", "robin-net", "--version", "1", "--trainset", "reds:1")

    # The first sync by the timer function (corpus host runs every timer once with --timers-now).
    summary = run_host(env, app_dir, "--timers-now")
    assert "catalog_sync" in json.dumps(summary), summary
    rows = {}
    for f in manifest(clients)["files"]:
        rows[f["table"]] = rows.get(f["table"], 0) + f["rows"]
    assert rows["images"] == 12 + 8 + 4  # originals, crops, thumbnails
    assert rows["trainset_images"] > 0 and rows["models"] == 1 and rows["model_trainsets"] == 1

    # (a) originals per tag = corpus count --tag T
    per_tag = {r["tag"]: r["images"] for r in query(env, tmp_path, ORIGINALS_PER_TAG)}
    assert set(per_tag) == {"red", "robin", "blue", "jay"}
    for tag, n in per_tag.items():
        assert cli_json(env, tmp_path, "count", "--domain", "birds", "--tag", tag)["images"] == n, tag
    # (b) crops per tag, with distinct sources = corpus count --tag T --op crop
    crops = {r["tag"]: (r["images"], r["sources"]) for r in query(env, tmp_path, CROPS_PER_TAG)}
    assert crops["robin"] == (8, 8)
    for tag in ("red", "robin", "jay"):
        cli = cli_json(env, tmp_path, "count", "--domain", "birds", "--tag", tag, "--op", "crop")
        assert crops[tag] == (cli["images"], cli["sources"]), tag
    # (c) images that trained model M = corpus lineage --model M
    lineage = [json.loads(x) for x in run_cli(env, tmp_path, "lineage", "--model", "robin-net:1", "--json").stdout.splitlines()]
    # Manifest lines also carry the image's facts (issue 19); trainset_images keeps the line's own
    # fields, the facts are the images table's (join on container, blob).
    lineage = [{k: v for k, v in line.items() if k in MANIFEST_FIELDS} for line in lineage]
    assert lineage and [as_manifest_line(r) for r in query(env, tmp_path, MODEL_IMAGES)] == lineage
    # (d) models that used blob B = corpus lineage --blob B (an original used through its crop, a crop, an unused jay)
    for blob in (f"original/{ROBIN}/v1/r01.jpg", f"transform/crop/1/{ROBIN}/v1/r02.jpg", f"original/{JAY}/v1/j00.jpg"):
        assert query(env, tmp_path, models_of(blob)) == cli_json(env, tmp_path, "lineage", "--blob", f"birds/{blob}")["models"]
    assert query(env, tmp_path, models_of(f"original/{ROBIN}/v1/r01.jpg")) == [{"name": "robin-net", "version": "1"}]

    # Images ingested after the sync are counted by the next query, with no sync in between.
    before = manifest(clients)
    ingest(env, clients, app_dir, {f"birds/v1/{ROBIN}/late{i}.jpg": jpeg(500 + i) for i in range(3)})
    per_tag = {r["tag"]: r["images"] for r in query(env, tmp_path, ORIGINALS_PER_TAG)}
    assert per_tag["robin"] == 6 + 2 + 3 == cli_json(env, tmp_path, "count", "--domain", "birds", "--tag", "robin")["images"]
    assert manifest(clients) == before

    # A sync killed between writing its files and committing the manifest: nothing visible; rerun: once.
    killed = kill_sync_between_files_and_commit(env, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert manifest(clients) == before
    written = {b.name for b in clients.container("catalog").list_blobs()}
    assert written - {f["name"] for f in before["files"]} - {"manifest.json"}, "the killed sync wrote no file"
    again = cli_json(env, tmp_path, "catalog", "sync")
    assert again["rows_added"]["images"] == 3
    totals = query(env, tmp_path, "SELECT count(*) AS n, count(DISTINCT container || '/' || blob) AS blobs FROM images")
    assert totals == [{"n": 27, "blobs": 27}]
    snap = manifest(clients)
    assert sum(f["rows"] for f in snap["files"] if f["table"] == "images") == 27  # the snapshot alone holds each once
    for table in ("sets", "transforms", "trainsets", "models", "model_trainsets"):
        assert len([f for f in snap["files"] if f["table"] == table]) == 1, table

    # Twice-run: the second sync adds no file and no row.
    twice = cli_json(env, tmp_path, "catalog", "sync")
    assert twice["files_added"] == 0 and sum(twice["rows_added"].values()) == 0
    assert [f["name"] for f in manifest(clients)["files"]] == [f["name"] for f in snap["files"]]


def test_bad_sql_is_one_line_and_writes_are_refused(env, clients, app_dir, tmp_path):
    env = {**env, "CORPUS_CATALOG_LAG_SECONDS": "0"}
    ingest(env, clients, app_dir, {f"birds/v1/{ROBIN}/r{i}.jpg": jpeg(i) for i in range(2)})
    # No snapshot yet: every row comes from the tables.
    assert query(env, tmp_path, "SELECT count(*) AS n FROM images") == [{"n": 2}]
    for sql, why in (
        ("SELEC 1", "syntax error"),
        ("SELECT nope FROM images", "nope"),
        ("CREATE TABLE x AS SELECT 1", "only SELECT"),
        ("COPY (SELECT 1) TO 'x.csv'", "only SELECT"),
        ("SELECT 1; SELECT 2", "exactly one"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
        ("SELECT getenv('CorpusStorage')", "getenv"),  # the connection string (and key) stays out of reach
    ):
        proc = run_cli(env, tmp_path, "query", sql)
        assert proc.returncode == 1, sql
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and why.lower() in lines[0].lower(), (sql, proc.stderr)
    slow = run_cli(env, tmp_path, "query", "SELECT count(*) FROM range(100000000000) a", "--timeout", "0.5")
    assert slow.returncode == 1 and "timeout" in slow.stderr and len(slow.stderr.strip().splitlines()) == 1
    # Output formats.
    csv = run_cli(env, tmp_path, "query", "SELECT file, tags FROM images ORDER BY file", "--csv")
    assert csv.stdout.splitlines() == ['"file","tags"', '"r0.jpg","[""red"",""robin""]"', '"r1.jpg","[""red"",""robin""]"']
    out = tmp_path / "result.parquet"
    assert run_cli(env, tmp_path, "query", "SELECT * FROM images", "--parquet", str(out)).returncode == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 2
    assert os.path.getsize(out) > 0

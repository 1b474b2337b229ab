"""The catalog (issue 21): sync rate, snapshot size, query latency cold and warm, peak memory, and the
same answers by scanning the tables, in the same run. Run through ``bench/query_bench.py catalog``.

Corpus shape at N image rows (domain ``birds``): half originals in sets of 1,000 (path
``<species>/s<k>``, tags = the path's parts, 10 species), crops (``crop:1``) of 60 % of the
original sets, thumbnails (``thumbnail:1``) of 40 %; one training set of every robin and jay
original and crop (labels = species, split by a hash), one model trained on it.

* At ``--azurite`` sizes the rows are written to a private Azurite (``Images`` rows with one
  counter shard per set, sets with their tag index, transforms, the manifest and the
  ``TrainingSets``/``Models`` rows) and the snapshot is made by the real sync; the peers scan the
  tables as a user without the catalog would (``corpus count`` for the crops; a full read of
  ``Images`` plus the manifest for the GROUP BY).
* At ``--parquet`` sizes (1M: Azurite's in-memory tables slow down long before, see the tag-index
  section of docs/benchmarks.md) the same rows are written straight to Parquet, uploaded to
  Azurite as a snapshot with its manifest, and queried from there; no sync, no table peer.

Every measured step runs in a child process, which reports its own peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SPECIES = ("robin", "jay", "finch", "wren", "crow", "owl", "hawk", "gull", "dove", "swan")
SET_SIZE = 1000

Q_MODEL = """SELECT count(*) AS images FROM model_trainsets mt JOIN trainset_images ti
  ON ti.trainset_name = mt.trainset_name AND ti.trainset_version = mt.trainset_version
  WHERE mt.model_name = 'birdnet' AND mt.model_version = '1'"""
Q_CROPS = """SELECT count(*) AS crops, count(DISTINCT source_blob) AS sources FROM images
  WHERE domain = 'birds' AND list_contains(tags, 'robin') AND transform_name = 'crop'"""
Q_GROUP = """SELECT tag, coalesce(i.transform_name, 'original') AS transform, coalesce(ti.split, '-') AS split, count(*) AS n
  FROM images i LEFT JOIN trainset_images ti ON ti.container = i.container AND ti.blob = i.blob, unnest(i.tags) AS t(tag)
  GROUP BY ALL"""
QUERIES = {"model_images": Q_MODEL, "robins_cropped": Q_CROPS, "group_tag_transform_split": Q_GROUP}


def md5(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


def split_of(i: int) -> str:
    return ("train", "train", "train", "val", "test")[int(md5(i)[:4], 16) % 5]


def plan(n: int) -> list[dict[str, Any]]:
    """Sets: (species, k, transform, first image index, size); totals ≈ n image rows."""
    originals = max(1, n // 2 // SET_SIZE)
    sets, idx = [], 0
    for k in range(originals):
        sets.append({"species": SPECIES[k % 10], "k": k, "t": None, "first": idx, "size": SET_SIZE})
        idx += SET_SIZE
    for k in range(originals):
        if k % 5 < 3:
            sets.append({"species": SPECIES[k % 10], "k": k, "t": ("crop", "1"), "first": k * SET_SIZE, "size": SET_SIZE})
    for k in range(originals):
        if k % 5 >= 3:
            sets.append({"species": SPECIES[k % 10], "k": k, "t": ("thumbnail", "1"), "first": k * SET_SIZE, "size": SET_SIZE})
    return sets


def image_rows(s: dict[str, Any]) -> list[dict[str, Any]]:
    path = f"{s['species']}/s{s['k']}"
    out = []
    for i in range(s["first"], s["first"] + s["size"]):
        file = f"img{i:08d}.jpg"
        original = f"original/{path}/v1/{file}"
        blob = original if s["t"] is None else f"transform/{s['t'][0]}/{s['t'][1]}/{path}/v1/{file}"
        out.append({"file": file, "blob": blob, "original": original, "i": i, "md5": md5(i if s["t"] is None else -i)})
    return out


def trained(s: dict[str, Any]) -> bool:
    return s["species"] in ("robin", "jay") and (s["t"] is None or s["t"][0] == "crop")


# -- writing the corpus --------------------------------------------------------------------------


def write_tables(rt: Any, n: int) -> dict[str, Any]:
    from corpus.app.trainsets import register_model, store_of
    from corpus.domain import keys
    from corpus.domain.manifest import ManifestEntry, hex_to_b64
    from corpus.domain.paths import SetRef
    from corpus.store.rows import CounterRow, ImageRow
    from corpus.store.settings import TABLE_IMAGES
    from tests.trainset_support import publish_ready

    t0 = time.monotonic()
    for name in ("crop", "thumbnail"):
        rt.catalog.transforms.register(name, "1", "{}")
    images = rt.clients.table_client(TABLE_IMAGES)
    entries = []
    sets = plan(n)

    def one_set(s: dict[str, Any]) -> None:
        ref = SetRef("birds", (s["species"], f"s{s['k']}"), "v1")
        t = s["t"]
        prefix = f"original/{ref.path}/v1/" if t is None else f"transform/{t[0]}/{t[1]}/{ref.path}/v1/"
        rt.catalog.sets.ensure(ref, [s["species"], f"s{s['k']}"], prefix, t, keys.transform_keys(*t) if t else ("", ""))
        pk = keys.image_partition_key(ref, t)
        rows = image_rows(s)
        ents = [
            ImageRow(r["file"], r["blob"], 50_000 + r["i"] % 1000, r["md5"], "image/jpeg", 640, 480,
                     r["original"] if t else f"birds/v1/{ref.path}/{r['file']}").to_entity(pk)
            for r in rows
        ]  # fmt: skip
        for i in range(0, len(ents), 100):
            images.submit_transaction([("create", e) for e in ents[i : i + 100]])
        images.create_entity(CounterRow(pk, keys.counter_row_key(0), len(ents), sum(e["Size"].value for e in ents)).to_entity())

    rt.ensure_container("birds")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_set, sets))
    for s in sets:
        if not trained(s):
            continue
        t = s["t"]
        for r in image_rows(s):
            entries.append(
                ManifestEntry("birds", r["blob"], hex_to_b64(r["md5"]), 50_000, 640, 480, "birds", f"{s['species']}/s{s['k']}",
                              "v1", t, r["original"], hex_to_b64(md5(r["i"])), (s["species"],), split_of(r["i"]))
            )  # fmt: skip
    publish_ready(rt.clients, rt.settings.trainsets_container, "birds-cls", "1", entries)
    register_model(store_of(rt), "birdnet", "1", [("birds-cls", "1")])
    rows = sum(s["size"] for s in sets)
    return {"image_rows": rows, "trainset_images": len(entries), "sets": len(sets), "write_s": round(time.monotonic() - t0, 1)}


def write_parquet_snapshot(rt: Any, n: int) -> dict[str, Any]:
    """The same corpus straight to Parquet (one images file per 100k rows, as compaction leaves them), uploaded
    to the catalog container with a manifest; the small tables as a sync would write them."""
    import pyarrow as pa

    from corpus.catalog import schema
    from corpus.catalog.snapshot import FileEntry, Snapshot, file_name, iso, parquet_bytes
    from corpus.catalog.storage import CatalogStorage

    store = CatalogStorage.of(rt.clients, rt.settings)
    store.ensure()
    mark = iso(datetime.now(UTC) - timedelta(seconds=1))
    files: list[FileEntry] = []

    def put(table: schema.Table, rows: list[dict[str, Any]], **kw: Any) -> None:
        body = parquet_bytes(table, schema.to_arrow(table, rows))
        name = file_name(table, body, kw.get("domain"), kw.get("trainset"))
        store.put_file(name, body)
        label = f"{kw['trainset'][0]}:{kw['trainset'][1]}" if kw.get("trainset") else None
        files.append(FileEntry(table.name, name, len(rows), len(body), None, mark, kw.get("domain"), label))

    sets = plan(n)
    batch: list[dict[str, Any]] = []
    tis: list[dict[str, Any]] = []
    for s in sets:
        t = s["t"]
        for r in image_rows(s):
            batch.append(
                {"domain": "birds", "path": f"{s['species']}/s{s['k']}", "version": "v1", "file": r["file"], "container": "birds",
                 "blob": r["blob"], "size": 50_000 + r["i"] % 1000, "md5": r["md5"], "width": 640, "height": 480,
                 "content_type": "image/jpeg", "tags": [s["species"], f"s{s['k']}"], "transform_name": t[0] if t else None,
                 "transform_version": t[1] if t else None, "source_blob": r["original"], "added": datetime.now(UTC)}
            )  # fmt: skip
            if trained(s):
                tis.append(
                    {"trainset_name": "birds-cls", "trainset_version": "1", "container": "birds", "blob": r["blob"],
                     "md5": r["md5"], "size": 50_000, "width": 640, "height": 480, "domain": "birds",
                     "path": f"{s['species']}/s{s['k']}", "version": "v1", "transform_name": t[0] if t else None,
                     "transform_version": t[1] if t else None, "source_blob": r["original"], "source_md5": md5(r["i"]),
                     "labels": [s["species"]], "split": split_of(r["i"])}
                )  # fmt: skip
            if len(batch) == 100_000:
                put(schema.IMAGES, batch, domain="birds")
                batch = []
    if batch:
        put(schema.IMAGES, batch, domain="birds")
    put(schema.TRAINSET_IMAGES, tis, trainset=("birds-cls", "1"))
    mt = {"model_name": "birdnet", "model_version": "1", "trainset_name": "birds-cls", "trainset_version": "1"}
    put(schema.MODEL_TRAINSETS, [mt])
    put(schema.MODELS, [{"name": "birdnet", "version": "1"}])
    snap = Snapshot(watermark=mark, generation=1, files=tuple(files))
    assert store.commit_manifest(snap.to_json(), None)
    del pa
    return {"image_rows": sum(s["size"] for s in sets), "trainset_images": len(tis)}


# -- children: one measured step each, reporting its own peak memory --------------------------------


def child(op: str, conn: str, arg: str) -> dict[str, Any]:
    os.environ["CorpusStorage"] = conn
    from corpus.app.runtime import Runtime
    from corpus.catalog import query as q
    from corpus.catalog.storage import CatalogStorage
    from corpus.catalog.sync import sync
    from corpus.store.settings import Settings

    settings = Settings.from_env()
    rt = Runtime.create(settings)
    store = CatalogStorage.of(rt.clients, settings)
    out: dict[str, Any] = {}
    if op == "sync":
        t0 = time.monotonic()
        r = sync(store, timedelta(0))
        out = {"sync_s": time.monotonic() - t0, "result": r.as_json()}
    elif op == "query":
        cache_dir, mode, exact = arg.split("|")
        cache = q.FileCache(Path(cache_dir))
        for run in ("cold", "warm"):
            t0 = time.monotonic()
            cat = q.open_catalog(store, cache, mode=mode, exact=exact == "exact")
            opened = time.monotonic() - t0
            for name, sql in QUERIES.items():
                t1 = time.monotonic()
                result = q.run(cat, sql)
                out[f"{run}:{name}"] = {"s": round(opened + time.monotonic() - t1, 3), "rows": result.num_rows}
                if name != "group_tag_transform_split":
                    out[f"{run}:{name}"]["answer"] = result.to_pylist()
                else:
                    out[f"{run}:{name}"]["total"] = sum(result.column("n").to_pylist())
            out[f"{run}:open_s"] = round(opened, 3)
            out[f"{run}:tail_rows"] = cat.tail_rows
            cat.close()
    elif op == "tail":
        from corpus.catalog.snapshot import Snapshot

        raw, _ = store.read_manifest()
        snap = Snapshot.from_json(raw) if raw else Snapshot()
        t0 = time.monotonic()
        tail = q.read_tail(store, snap)
        out = {"tail_s": round(time.monotonic() - t0, 3), "tail_rows": tail.rows}
    elif op == "peer":
        from corpus.app.queries import count
        from corpus.app.trainsets import store_of
        from corpus.store.rows import ImageRow
        from corpus.store.settings import TABLE_IMAGES

        t0 = time.monotonic()
        c = count(rt.catalog, "birds", ("robin",), op="crop")
        out["peer:robins_cropped"] = {"s": round(time.monotonic() - t0, 3), "answer": [{"crops": c.images, "sources": c.sources}]}
        t0 = time.monotonic()
        ts = store_of(rt)
        n = sum(1 for _ in ts.entries("birds-cls", "1"))
        out["peer:model_images"] = {"s": round(time.monotonic() - t0, 3), "answer": [{"images": n}]}
        t0 = time.monotonic()
        sets = {s.images_partition_key: s for s in rt.catalog.sets.query("birds")}
        split = {(e.container, e.blob): e.split for e in ts.entries("birds-cls", "1")}
        groups: Counter[tuple[str, str, str]] = Counter()
        for e in rt.clients.table_client(TABLE_IMAGES).query_entities("RowKey ge @f", parameters={"f": '"'}):
            s = sets[e["PartitionKey"]]
            img = ImageRow.from_entity(e)
            for tag in s.tags:
                groups[(tag, s.transform[0] if s.transform else "original", split.get(("birds", img.blob), "-"))] += 1
        out["peer:group_tag_transform_split"] = {"s": round(time.monotonic() - t0, 3), "total": sum(groups.values())}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_child(op: str, conn: str, arg: str = "") -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "child", op, conn, arg]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {op} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_catalog(azurite_sizes: list[int], parquet_sizes: list[int]) -> dict[str, Any]:
    from corpus.app.runtime import Runtime
    from corpus.store.settings import Settings
    from tests.support import Azurite

    report: dict[str, Any] = {"load_before": os.getloadavg()}
    for n, how in [(n, "azurite") for n in azurite_sizes] + [(n, "parquet") for n in parquet_sizes]:
        with tempfile.TemporaryDirectory() as tmp:
            az = Azurite(Path(tmp)).start()
            try:
                os.environ["CorpusStorage"] = az.connection_string
                rt = Runtime.create(Settings.from_env({"CorpusStorage": az.connection_string}))
                rt.ensure_resources()
                entry: dict[str, Any] = {"how": how}
                if how == "azurite":
                    entry["written"] = write_tables(rt, n)
                    entry["sync"] = run_child("sync", az.connection_string)
                    entry["sync_again"] = run_child("sync", az.connection_string)
                    entry["tail_empty"] = run_child("tail", az.connection_string)
                else:
                    entry["written"] = write_parquet_snapshot(rt, n)
                from corpus.catalog.snapshot import Snapshot
                from corpus.catalog.storage import CatalogStorage

                raw, _ = CatalogStorage.of(rt.clients, rt.settings).read_manifest()
                snap = Snapshot.from_json(raw or b"")
                img_bytes = sum(f.bytes for f in snap.of("images"))
                entry["snapshot"] = {
                    "images_bytes": img_bytes,
                    "all_bytes": sum(f.bytes for f in snap.files),
                    "bytes_per_image": round(img_bytes / max(1, sum(f.rows for f in snap.of("images"))), 1),
                    "files": len(snap.files),
                }
                for mode in ("parquet", "arrow"):
                    entry[f"query_{mode}"] = run_child("query", az.connection_string, f"{tmp}/cache-{mode}|{mode}|exact")
                if how == "azurite":
                    entry["peer"] = run_child("peer", az.connection_string)
                report[f"{n}:{how}"] = entry
                print(json.dumps({f"{n}:{how}": entry}), file=sys.stderr, flush=True)
            finally:
                az.stop()
    report["load_after"] = os.getloadavg()
    return report


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")))

"""Training-set manifest build rate vs the raw List Blobs rate of the same blobs, and the build's peak memory.

On a private Azurite: N tiny blobs in sets of 1,000 (``original/sNNN/v1/NNNNN.jpg``), their
``Images`` rows written directly in batched transactions (no ingest), their ``ImageSets`` rows.
Then, in the same run:

* List Blobs over all N blobs (the raw rate of enumerating them, 5,000 per page);
* the manifest build of a training set over all N images (``corpus.app.trainsets`` in a child
  process, one message, no time budget), and of one over the first ``--small`` images, each
  reporting its wall time and its peak resident memory (VmHWM) above its baseline after imports.

    .venv/bin/python bench/trainset_bench.py --images 100000 --small 10000,30000

The setup is not measured, only timed: blobs are created with plain HTTP PUTs under a container
SAS (one pooled ``urllib3`` connection per thread, none of the blob SDK's per-call work) and the
rows with the lean transaction encoder, so that 100,000 images fit in a sitting on a shared box.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PER_SET = 1000


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(name: str, tag: str) -> None:
    """Runs in the child: build one training set in this process, report time and memory."""
    from corpus.app.runtime import Runtime
    from corpus.app.trainsets import on_trainset_message
    from corpus.domain.trainsets import TrainsetRequest
    from corpus.store.settings import Settings

    rt = Runtime.create(Settings.from_env())
    req = TrainsetRequest.parse(
        json.dumps({"trainset": {"name": name, "version": "1"}, "sources": [{"domain": "bench", "tags": [tag], "version": "v1"}]})
    )
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS") / 1024
    t0 = time.perf_counter()
    status = on_trainset_message(rt, req)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM") / 1024
    print(json.dumps({"status": status, "seconds": seconds, "baseline_mb": base, "peak_mb": peak, "growth_mb": peak - base}))


def _blob_putter(connection_string: str, container_url: str) -> Any:
    """``put(name, data)``: Put Blob (block blob) with a container SAS over one pooled connection
    per thread, for the setup only (quoted names, ``x-ms-version`` ≤ Azurite's)."""
    import threading
    from datetime import UTC, datetime, timedelta
    from urllib.parse import quote

    import urllib3
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    account, container = parts["AccountName"], container_url.rstrip("/").rsplit("/", 1)[1]
    sas = generate_container_sas(
        account, container, account_key=parts["AccountKey"], permission=ContainerSasPermissions(write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=12), version="2025-05-05",
    )  # fmt: skip
    local = threading.local()

    def put(name: str, data: bytes) -> None:
        pool = getattr(local, "pool", None)
        if pool is None:
            pool = local.pool = urllib3.PoolManager(maxsize=1)
        url = f"{container_url}/{quote(name)}?{sas}"
        r = pool.request("PUT", url, body=data, headers={"x-ms-blob-type": "BlockBlob", "x-ms-version": "2025-05-05"})
        if r.status != 201:
            raise RuntimeError(f"Put Blob {name}: {r.status} {r.data[:300]!r}")

    return put


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--small", default="10000,30000", help="smaller training sets over the first images (comma-separated)")
    p.add_argument("--threads", type=int, default=64)
    p.add_argument("--child", nargs=2, metavar=("NAME", "TAG"))
    p.add_argument("--no-blobs", action="store_true", help="write the table rows only (profiling the build)")
    p.add_argument(
        "--blobs",
        type=int,
        help="create blobs for the first N images only (default: all); List Blobs then lists N, and build/list compares rates",
    )
    p.add_argument("--profile", action="store_true", help="profile the child builds (top functions on stderr)")
    p.add_argument(
        "--compare",
        metavar="DIR",
        help="also build each training set with the corpus/ of DIR (`git archive BASE | tar -x -C DIR`), same Azurite and data",
    )
    args = p.parse_args()
    if args.child:
        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(child, *args.child)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        else:
            child(*args.child)
        return

    from azure.data.tables import TableClient

    from corpus.app.runtime import Runtime
    from corpus.domain import keys
    from corpus.domain.paths import SetRef
    from corpus.store import egt
    from corpus.store.rows import ImageRow
    from corpus.store.settings import TABLE_IMAGES, Settings
    from tests.support import Azurite

    n_sets = args.images // PER_SET
    blob_images = args.images if args.blobs is None else args.blobs
    smaller = [int(x) for x in args.small.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        az = Azurite(Path(tmp)).start()
        try:
            env = {**os.environ, "CorpusStorage": az.connection_string, "PYTHONPATH": str(REPO)}
            env = {k: v for k, v in env.items() if not k.startswith("CORPUS_")}
            rt = Runtime.create(Settings.from_env(env))
            rt.ensure_resources()
            container = rt.clients.container("bench")
            container.create_container()
            images: TableClient = rt.clients.table_client(TABLE_IMAGES)
            put = _blob_putter(az.connection_string, container.url)

            def fill(k: int) -> None:
                ref = SetRef("bench", (f"s{k:03d}",), "v1")
                tags = [f"s{k:03d}", "all"] + [f"first{n}" for n in smaller if k < n // PER_SET]
                rt.catalog.sets.ensure(ref, tags, ref.original_prefix())
                rows = []
                for i in range(PER_SET):
                    data = f"{k}/{i}".encode()
                    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                    name = f"{i:05d}.jpg"
                    blob = ref.original_prefix() + name
                    if not args.no_blobs and k * PER_SET < blob_images:
                        put(blob, data)
                    rows.append(ImageRow(name, blob, len(data), md5, "image/jpeg", 64, 48, f"bench/v1/s{k:03d}/{name}"))
                pk = keys.image_partition_key(ref)
                for j in range(0, PER_SET, 100):
                    egt.submit(images, [("create", r.to_entity(pk)) for r in rows[j : j + 100]])

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                for done, _ in enumerate(pool.map(fill, range(n_sets)), 1):
                    if done % max(1, n_sets // 20) == 0:  # progress: a long setup can be reported as far as it got
                        print(f"setup: {done * PER_SET} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            setup = time.perf_counter() - t0

            t0 = time.perf_counter()
            listed = sum(1 for _ in container.list_blobs(name_starts_with="original/"))
            list_s = time.perf_counter() - t0
            assert listed == min(n_sets * PER_SET, blob_images // PER_SET * PER_SET) or args.no_blobs, listed
            print(f"list blobs: {listed} in {list_s:.2f} s", file=sys.stderr, flush=True)
            if args.profile:
                env["BENCH_PROFILE"] = "1"

            results = {}
            sizes = [(f"first{n}", f"first{n}", n // PER_SET * PER_SET) for n in smaller] + [("all", "all", n_sets * PER_SET)]
            codes = [("", REPO)] + ([("-compared", Path(args.compare).resolve())] if args.compare else [])
            # this code's builds first, then the compared code's: a run cut short still has ours
            runs = [(name + suffix, tag, count, code) for suffix, code in codes for name, tag, count in sizes]
            lists: list[float] = []
            failures: dict[str, str] = {}
            for name, tag, count, code in runs:
                # List Blobs again right before each build: on a shared box the load moves, and the
                # ratio of a build is taken against the listing next to it (and the first one)
                t0 = time.perf_counter()
                relisted = sum(1 for _ in container.list_blobs(name_starts_with="original/"))
                lists.append(time.perf_counter() - t0)
                child_env = {**env, "PYTHONPATH": str(code)}
                cmd = [sys.executable, str(code / "bench" / "trainset_bench.py"), "--child", name, tag]
                out = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
                if args.profile or out.returncode:
                    print(f"== {name} ({code})", file=sys.stderr)
                    print(out.stderr[-12000:], file=sys.stderr)
                if out.returncode:  # reported, and the other builds still run
                    failures[name] = out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else f"exit {out.returncode}"
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["images"] = count
                r["images_per_s"] = count / r["seconds"]
                r["list_before_s"] = lists[-1]
                r["vs_list_before"] = r["images_per_s"] * lists[-1] / max(relisted, 1)
                print(
                    f"build {name}: {count} images in {r['seconds']:.2f} s; listing before it: {relisted} in {lists[-1]:.2f} s;"
                    f" build/list {r['vs_list_before']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
                results[name] = r
            report = {
                "images": n_sets * PER_SET,
                "setup_seconds": round(setup, 1),
                "list_blobs": {"blobs": listed, "seconds": round(list_s, 2), "blobs_per_s": round(listed / max(list_s, 1e-9))},
                "build": {
                    k: {
                        "images": v["images"],
                        "seconds": round(v["seconds"], 2),
                        "images_per_s": round(v["images_per_s"]),
                        "peak_growth_mb": round(v["growth_mb"], 1),
                        "peak_rss_mb": round(v["peak_mb"], 1),
                        "status": v["status"],
                        "list_before_s": round(v["list_before_s"], 2),
                        "build_vs_list_before": round(v["vs_list_before"], 2),
                    }
                    for k, v in results.items()
                },
                "build_vs_list": round(results["all"]["images_per_s"] * list_s / max(listed, 1), 2) if "all" in results else None,
                **(
                    {"compared_build_vs_list": round(results["all-compared"]["images_per_s"] * list_s / max(listed, 1), 2)}
                    if "all-compared" in results
                    else {}
                ),
                "failed": failures,
            }
            print(json.dumps(report, indent=2))
        finally:
            az.stop()


if __name__ == "__main__":
    main()

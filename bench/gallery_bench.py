"""Gallery and API latency through ``corpus host`` on a private Azurite.

A set of ``--images`` originals with a thumbnail transform is written directly (rows and blobs),
plus a set of ``--preview-images`` 12-megapixel JPEGs without thumbnails. Measured, sequentially from one
client (so these are latencies, not throughput):

* the first grid page (48 cells) of the big set, and one API page of 1,000 image records;
* one thumbnail served, and its revalidation (If-None-Match → 304);
* a preview's first request (read the original, render, store) against a cached one.

    .venv/bin/python bench/gallery_bench.py --images 2000 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from azure.storage.blob import ContentSettings  # noqa: E402

from corpus.app.runtime import Runtime  # noqa: E402
from corpus.cli.sample import make_image  # noqa: E402
from corpus.domain import keys  # noqa: E402
from corpus.domain.paths import SetRef  # noqa: E402
from corpus.store.rows import ImageRow  # noqa: E402
from corpus.store.settings import Settings  # noqa: E402
from tests.support import Azurite, free_port, host_command, png, prepare_app_dir, wait_for  # noqa: E402


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            res.read()
            status = res.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, (time.perf_counter() - started) * 1000


def up(url: str) -> bool:
    try:
        return fetch(url)[0] == 200
    except OSError:
        return False


def stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 1), "n": len(ms)}


def write_set(rt: Runtime, ref: SetRef, files: dict[str, bytes], thumb: bytes | None, ctype: str) -> None:
    container = rt.clients.container(ref.domain)
    t = ("thumbnail", "1")
    rt.catalog.sets.ensure(ref, list(ref.dirs), ref.original_prefix())
    if thumb:
        rt.catalog.sets.ensure(ref, list(ref.dirs), ref.transform_prefix(*t), t, keys.transform_keys(*t))
    originals, thumbs = [], []
    for file, data in files.items():
        blob = ref.original_prefix() + file
        originals.append(ImageRow(file, blob, len(data), "00", ctype, 1, 1, file))
        if thumb:
            thumbs.append(ImageRow(file, ref.transform_prefix(*t) + file, len(thumb), "00", ctype, 1, 1, blob))
    for i in range(0, len(originals), 99):
        rt.catalog.images.record_many(ref, originals[i : i + 99])
        if thumbs:
            rt.catalog.images.record_many(ref, thumbs[i : i + 99], t)
    rt.catalog.refresh_counts(ref)
    if thumb:
        rt.catalog.refresh_counts(ref, t)
    cs = ContentSettings(content_type=ctype)
    uploads = [(r.blob, files[r.file]) for r in originals] + [(r.blob, thumb) for r in thumbs]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda b: container.upload_blob(b[0], b[1], content_settings=cs), uploads))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--preview-images", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    result: dict[str, Any] = {"images": args.images, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        az = Azurite(tmp).start()
        host = None
        try:
            env = {**os.environ, "CorpusStorage": az.connection_string, "AzureWebJobsStorage": az.connection_string}
            rt = Runtime.create(Settings.from_env(env))
            rt.ensure_resources()
            rt.clients.container("bench").create_container()
            t0 = time.perf_counter()
            tiny = png(1, (8, 8))
            write_set(
                rt,
                SetRef("bench", ("big",), "v1"),
                {f"i{i:06d}.png": tiny for i in range(args.images)},
                png(2, (4, 4)),
                "image/png",
            )
            big_jpeg = make_image(random.Random(3), "JPEG", (4000, 3000))  # 12 megapixels, as a camera's
            result["preview_source_bytes"] = len(big_jpeg)
            write_set(
                rt,
                SetRef("bench", ("photos",), "v1"),
                {f"p{i}.jpg": big_jpeg for i in range(args.preview_images)},
                None,
                "image/jpeg",
            )
            result["setup_s"] = round(time.perf_counter() - t0, 1)
            app_dir = prepare_app_dir(tmp)
            port = free_port()
            host = subprocess.Popen(host_command(app_dir, "--port", str(port)), env=env, cwd=tmp, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: up(base + "/api/sets?limit=1"), 60, "the host")

            grid = base + "/gallery/bench/set?" + urlencode({"path": "big", "version": "v1"})
            api = base + "/api/sets/bench/images?" + urlencode({"path": "big", "version": "v1", "limit": 1000})
            thumb = base + "/gallery/bench/file?" + urlencode({"blob": "transform/thumbnail/1/big/v1/i000000.png"})
            fetch(grid)  # warm: first-use imports and connections
            result["grid_page_48"] = stats([fetch(grid)[1] for _ in range(args.rounds)])
            result["api_page_1000"] = stats([fetch(api)[1] for _ in range(args.rounds)])
            result["thumbnail_200"] = stats([fetch(thumb)[1] for _ in range(args.rounds)])
            etag = urllib.request.urlopen(thumb).headers["ETag"]
            result["thumbnail_304"] = stats([fetch(thumb, {"If-None-Match": etag})[1] for _ in range(args.rounds)])
            firsts, cached = [], []
            for i in range(args.preview_images):
                url = base + "/gallery/bench/preview?" + urlencode({"blob": f"original/photos/v1/p{i}.jpg"})
                status, ms = fetch(url)
                assert status == 200, status
                firsts.append(ms)
                cached.append(fetch(url)[1])
            result["preview_first_request"] = stats(firsts)
            result["preview_cached"] = stats(cached)
        finally:
            if host is not None:
                host.terminate()
                host.wait(20)
            az.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

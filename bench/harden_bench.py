"""Hardening benchmarks (issues 13 and 16), each on a private Azurite.

``memory``: peak RSS of ``corpus host`` ingesting N concurrent 9999 x 9999 PNGs (a few hundred KB
each, under the pixel cap). ``--code DIR`` runs another checkout's code (e.g. the commit before).

    .venv/bin/python bench/harden_bench.py memory --images 24
    .venv/bin/python bench/harden_bench.py memory --images 24 --code /tmp/harden_base

``requests``: storage requests and table entity operations per ingested image, counted on the
wire (the shared HTTP session), with the copy function's concurrency so group commit batches.

    .venv/bin/python bench/harden_bench.py requests --images 300

``previews`` (issue 25 R1): peak RSS of ``corpus host`` serving N concurrent first requests for
the previews of N 100 MP images (JPEG photos, or PNG with ``--format png``); ``--code DIR`` as above.

    .venv/bin/python bench/harden_bench.py previews --images 8 --side 10000
    .venv/bin/python bench/harden_bench.py previews --images 8 --side 10000 --code /tmp/before

``peaks`` (issue 25 R1): peak RSS of one render per operation and source format, each in a fresh
process (VmHWM reset by /proc/self/clear_refs), in bytes per source pixel: what
``corpus.domain.transforms.PEAK_BYTES_PER_PIXEL`` reserves is calibrated from this.

    .venv/bin/python bench/harden_bench.py peaks --width 6000 --height 4000
    .venv/bin/python bench/harden_bench.py peaks --width 6000 --height 4000 --code /tmp/before

``tagpages`` (issue 25 R4): table requests and rows read to page N sets of a domain by tag through
``GET /api/sets?domain=&tag=`` (its handler, on the in-memory store, which counts both).

    .venv/bin/python bench/harden_bench.py tagpages --sets 5000 --limit 100
    .venv/bin/python bench/harden_bench.py tagpages --sets 5000 --limit 100 --code /tmp/before
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import Azurite, jpeg  # noqa: E402


def _env(az: Azurite, code: Path, tmp: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
    return {
        **base,
        "CorpusStorage": az.connection_string,
        "AzureWebJobsStorage": az.connection_string,
        "PYTHONPATH": str(code),
        "CORPUS_CACHE_DIR": str(tmp / "cache"),
    }


def big_png(side: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 60)).save(out, "PNG", optimize=True)
    return out.getvalue()


def peak_rss_of(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, float, str]:
    """Run ``cmd``; return its peak RSS (VmHWM, bytes), wall time, and the last stderr line."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    peak = 0
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            peak = max(peak, hwm * 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.05)  # sampling a child's memory: there is no event to wait for
    reader.join(5)
    return peak, time.monotonic() - started, (lines[-1].strip() if lines else "")


def memory(args: argparse.Namespace) -> dict[str, Any]:
    from corpus.store.settings import Connection
    from corpus.store.storage import Clients

    code = Path(args.code).resolve()
    data = big_png(args.side)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        az = Azurite(tmp).start()
        try:
            clients = Clients(Connection(connection_string=az.connection_string))
            clients.ensure(containers=("staging",))
            for i in range(args.images):
                clients.container("staging").upload_blob(f"mem/v1/{i:03d}.png", data)
            app = tmp / "app"
            app.mkdir()
            for name in ("function_app.py", "host.json"):
                (app / name).write_bytes((code / name).read_bytes())
            if args.blob_parallelism:
                host = json.loads((app / "host.json").read_text())
                host["extensions"].setdefault("blobs", {})["maxDegreeOfParallelism"] = args.blob_parallelism
                (app / "host.json").write_text(json.dumps(host))
            cmd = [sys.executable, "-m", "corpus", "host", "--app-dir", str(app), "--until-idle", "--timeout", "600"]
            peak, seconds, last = peak_rss_of(cmd, _env(az, code, tmp), tmp)
            ingested = sum(1 for _ in clients.container("mem").list_blobs()) if clients.container("mem").exists() else 0
        finally:
            az.stop()
    return {
        "bench": "memory",
        "code": str(code),
        "images": args.images,
        "side": args.side,
        "blob_parallelism": args.blob_parallelism,
        "png_bytes": len(data),
        "peak_rss_mb": round(peak / 2**20),
        "seconds": round(seconds, 1),
        "ingested": ingested,
        "host_summary": last,
    }


def photo_jpeg(side: int, seed: int) -> bytes:
    """A smooth, photo-like ``side`` x ``side`` JPEG (noise upscaled), distinct per seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (side // 64 + 1, side // 64 + 1, 3), dtype=np.uint8))
    out = io.BytesIO()
    small.resize((side, side), Image.Resampling.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def previews(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of the host while N first preview requests of N huge images run at once."""
    import urllib.request

    from corpus.store.settings import Connection
    from corpus.store.storage import Clients
    from tests.support import free_port, serves_http, wait_for

    code = Path(args.code).resolve()
    data = [photo_jpeg(args.side, i) if args.format == "jpeg" else big_png(args.side) for i in range(2)]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        az = Azurite(tmp).start()
        host = None
        try:
            clients = Clients(Connection(connection_string=az.connection_string))
            clients.ensure(containers=("big",))
            for i in range(args.images):
                clients.container("big").upload_blob(f"original/a/v1/{i:03d}.{args.format}", data[i % 2])
            app = tmp / "app"
            app.mkdir()
            for name in ("function_app.py", "host.json"):
                (app / name).write_bytes((code / name).read_bytes())
            port = free_port()
            env = _env(az, code, tmp)
            cmd = [sys.executable, "-m", "corpus", "host", "--app-dir", str(app), "--port", str(port)]
            host = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{port}"

            wait_for(lambda: serves_http(base), 120, "the host serving HTTP")
            status_file = Path(f"/proc/{host.pid}/status")

            def hwm() -> int:
                text = status_file.read_text()
                return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM:")) * 1024

            before = hwm()

            def get(i: int) -> int:
                url = f"{base}/gallery/big/preview?blob=original/a/v1/{i:03d}.{args.format}"
                with urllib.request.urlopen(url, timeout=600) as res:
                    return len(res.read())

            started = time.monotonic()
            with ThreadPoolExecutor(args.images) as pool:
                sizes = list(pool.map(get, range(args.images)))
            seconds = time.monotonic() - started
            peak = hwm()
        finally:
            if host is not None:
                host.terminate()
                host.wait(30)
            az.stop()
    return {
        "bench": "previews",
        "code": str(code),
        "images": args.images,
        "side": args.side,
        "format": args.format,
        "source_bytes": [len(x) for x in data],
        "served_previews": len([n for n in sizes if n > 0]),
        "host_rss_before_mb": round(before / 2**20),
        "host_peak_rss_mb": round(peak / 2**20),
        "seconds": round(seconds, 1),
        "load_average": os.getloadavg(),
    }


PEAK_OPS: list[tuple[str, dict[str, Any]]] = [
    ("thumbnail", {"size": 256}),
    ("thumbnail", {"size": 2000}),
    ("resize", {"width": 2000, "height": 2000, "fit": "contain"}),
    ("resize", {"width": 6000, "height": 4000, "fit": "stretch"}),
    ("resize", {"width": 3000, "height": 3000, "fit": "cover"}),
    ("crop", {"aspect": "1:1"}),
    ("grayscale", {}),
    ("rotate", {"degrees": 45}),
    ("rotate", {"degrees": 90}),
    ("flip", {"direction": "horizontal"}),
    ("autocontrast", {"cutoff": 1}),
    ("format", {"format": "png"}),
    ("format", {"format": "jpeg"}),
    ("format", {"format": "webp"}),
]

_PEAK_SCRIPT = """
import gc, io, json, sys
import numpy as np
from PIL import Image
fmt, op, args, w, h = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
rng = np.random.default_rng(0)
img = Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)).resize((w, h))
buf = io.BytesIO()
img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
data = buf.getvalue()
del img, buf
gc.collect()
from corpus.domain import transforms
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
transforms.render(data, op, args, 200_000_000)
peak = status("VmHWM:") - base
print(json.dumps({"fmt": fmt, "op": op, "args": args, "peak_mb": round(peak / 1e6, 1), "bytes_per_px": round(peak / (w * h), 2)}))
"""


def peaks(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of each render, in a fresh process per (source format, operation)."""
    code = Path(args.code).resolve()
    env = {**os.environ, "PYTHONPATH": str(code)}
    rows = []
    for fmt in ("JPEG", "PNG"):
        for op, op_args in PEAK_OPS:
            cmd = [sys.executable, "-c", _PEAK_SCRIPT, fmt, op, json.dumps(op_args), str(args.width), str(args.height)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=code)
            rows.append(json.loads(proc.stdout))
    return {"bench": "peaks", "code": str(code), "width": args.width, "height": args.height, "runs": rows}


def tagpages(args: argparse.Namespace) -> dict[str, Any]:
    """Requests and rows read to page ``--sets`` sets by tag through the /api/sets handler."""
    code = Path(args.code).resolve()
    script = f"""
import json, sys
sys.path.insert(0, {str(code)!r})
from corpus.app.runtime import Runtime
from corpus.app import web
from corpus.domain.paths import SetRef
rt = Runtime.in_memory()
rt.ensure_resources()
for i in range({args.sets}):
    ref = SetRef("birds", (f"s{{i:05d}}",), "v1")
    rt.catalog.sets.ensure(ref, ["bird", "red" if i % 2 else "blue"], ref.original_prefix())
table = rt.clients.table_client("ImageSets")
out = {{}}
for tags in (["bird"], ["bird", "red"]):
    table.requests.clear()
    rows_read = getattr(table, "rows_read", None)
    if rows_read is not None:
        rows_read.clear()
    token, pages, sets = None, 0, 0
    while True:
        q = [("domain", "birds"), ("limit", "{args.limit}")] + [("tag", t) for t in tags]
        q += [("continuation", token)] if token else []
        res = web.handle(rt, web.Request("GET", {{}}, tuple(q)), web.api_sets)
        body = json.loads(res.body)
        pages += 1
        sets += len(body["sets"])
        token = body["continuation"]
        if token is None:
            break
    out["+".join(tags)] = {{"pages": pages, "sets": sets, "requests": table.requests["birds"],
                          "rows_read": rows_read["birds"] if rows_read is not None else None}}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=code)
    return {"bench": "tagpages", "code": str(code), "sets": args.sets, "limit": args.limit, **json.loads(proc.stdout)}


def exportbytes(args: argparse.Namespace) -> dict[str, Any]:
    """R6: bytes of the manifest (and of the work lists) read by the shard jobs of a ~``--images``-shard
    WebDataset export, on the in-memory store (its reads counted per blob). One image per shard:
    every image (a noise JPEG of 80 × 80, ~10 KB) is more than half of ``MIN_SHARD_BYTES``, the shard size."""
    import random

    from PIL import Image

    sys.path.insert(0, str(REPO / "bench"))
    from scale_bench import drain, handlers  # type: ignore[import-not-found]

    from corpus.app.runtime import Runtime
    from corpus.domain.exports import MIN_SHARD_BYTES, ExportParams, ExportRequest
    from corpus.domain.trainsets import TrainsetRequest
    from corpus.store.memory import MemoryBlobStore
    from corpus.store.ports import RANGE_BYTES

    rt = Runtime.in_memory()
    rt.ensure_resources()
    s = rt.settings
    rnd = random.Random(0)
    from corpus.app import ingest

    for i in range(args.images):
        buf = io.BytesIO()
        Image.frombytes("RGB", (80, 80), rnd.randbytes(80 * 80 * 3)).save(buf, "JPEG", quality=92)
        name = f"birds/v1/c{i % 5}/s{i % 50:03d}/{i:05d}.jpg"
        info = rt.blobs.put(s.staging_container, name, buf.getvalue())
        ingest.on_staged_blob(rt, ingest.StagedBlob(name, buf.getvalue(), info.etag, {}, "BlockBlob"))
    drain(rt, handlers(rt))
    request = {
        "trainset": {"name": "big", "version": "1"},
        "sources": [{"domain": "birds", "tags": [f"c{k}"], "version": "v1"} for k in range(5)],
        "labels": {"classes": [f"c{k}" for k in range(5)]},
        "split": {"train": 90, "val": 10},
    }
    rt.send(s.trainset_queue, TrainsetRequest.parse(json.dumps(request)).to_json())
    drain(rt, handlers(rt), workers=1)
    row = rt.catalog.training.trainsets.require_ready("big", "1")
    manifest = (row.manifest_container, row.manifest_blob)
    blobs = rt.blobs
    assert isinstance(blobs, MemoryBlobStore)
    manifest_size = blobs.info(*manifest).size
    read: Counter[str] = Counter()
    phase = ["plan"]
    real_read, real_ranges, real_list = blobs.read, blobs.read_ranges, blobs.list_page
    listed: Counter[str] = Counter()

    def kind(container: str, name: str) -> str:
        if (container, name) == manifest:
            return "manifest"
        if "/_work/" in name and name.endswith(".jsonl"):
            return "work lists"
        if "/_work/receipts/" in name:
            return "receipts"
        if "/_work/done/" in name:
            return "completion bitmaps"
        if "/_work/" in name and name.endswith(".json"):
            return "shard records"
        for tail in ("plan.json", "classes.txt", "croissant.json"):
            if name.endswith("/" + tail):
                return tail
        return "images" if container == "birds" else "other"

    def counted_read(container: str, name: str, **kw: Any) -> Any:
        blob = real_read(container, name, **kw)
        read[f"{phase[0]}: {kind(container, name)}"] += len(blob.data)
        return blob

    def counted_ranges(container: str, name: str, ranges: Any) -> list[bytes]:
        out = real_ranges(container, name, ranges)
        read[f"{phase[0]}: {kind(container, name)}"] += sum(len(b) for b in out)
        return out

    def counted_list(container: str, prefix: str = "", cursor: str | None = None, limit: int = 5000) -> Any:
        page = real_list(container, prefix, cursor, limit)
        listed[f"{phase[0]}: {kind(container, prefix)}"] += len(page.items)
        return page

    blobs.read, blobs.read_ranges = counted_read, counted_ranges  # type: ignore[method-assign]
    blobs.list_page = counted_list  # type: ignore[method-assign]
    params = ExportParams("webdataset", shard_size=MIN_SHARD_BYTES)
    rt.send(s.export_queue, ExportRequest("big", "1", params).to_json())
    export_handler = {s.export_queue: handlers(rt)[s.export_queue]}
    outbox = rt.outbox
    first = outbox.receive(s.export_queue, max_messages=1, visibility_timeout=3600)  # type: ignore[attr-defined]
    export_handler[s.export_queue](first[0].text)  # the request: the plan and one job per shard
    outbox.delete(s.export_queue, first[0])  # type: ignore[attr-defined]
    phase[0] = "shard jobs"
    jobs = drain(rt, export_handler)
    plan = json.loads(real_read(s.exports_container, f"big/1/{params.export_id()}/plan.json").data)
    shards = len(plan["shards"])
    # The code before 1e22162 (issue 25 R6): each shard job streamed the manifest from its start in
    # RANGE_BYTES ranges until past its shard; a manifest smaller than one range is read whole by every job.
    old = shards * manifest_size if manifest_size <= RANGE_BYTES else None
    return {
        "bench": "exportbytes",
        "images": row.state.images,
        "shards": shards,
        "shard_jobs_run": jobs,
        "manifest_bytes": manifest_size,
        "bytes_read": dict(read),
        "names_listed": dict(listed),
        "before_manifest_bytes_by_shard_jobs": old,
        "load_avg": os.getloadavg(),
    }


_PULL_SCRIPT = """
import gc, json, sys, tempfile
from pathlib import Path
code, manifest = sys.argv[1], sys.argv[2]
sys.path.insert(0, code)
from corpus.domain.manifest import iter_entries
from corpus.pull import runner, sources
from corpus.store.settings import Settings

def chunks():
    with open(manifest, "rb") as f:
        while b := f.read(4 << 20):
            yield b

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

# The manifest from a local file instead of storage: the same stream of entries, no network.
sources.EntryReader.entries = lambda self, source: iter_entries(chunks())
settings = Settings.from_env({"CorpusStorage": "UseDevelopmentStorage=true"})
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
base = status("VmRSS")
with tempfile.TemporaryDirectory() as dest:
    opts = runner.PullOptions(sources.TrainsetSource("big", "1"), Path(dest) / "out", dry_run=True, use_cache=False)
    summary = runner.Puller(settings, opts).run()
print(json.dumps({"files": summary.files, "renamed": summary.renamed, "base_rss": base, "peak_rss": status("VmHWM"),
                  "seconds": summary.seconds}))
"""


def pullmemory(args: argparse.Namespace) -> dict[str, Any]:
    """R7: peak RSS above the baseline of ``corpus pull --dry-run``'s planning and naming (every
    entry named, the name map decided) over an ``--entries``-line manifest, read from a local file
    (the fetch is not run: no blobs needed). ``--code`` runs another tree's pull on the same file."""
    import base64
    import hashlib

    from corpus.domain.manifest import ManifestEntry, encode_lines, gzip_member

    code = Path(args.code).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl.gz"
        with path.open("wb") as f:
            block: list[ManifestEntry] = []
            per_set = 100  # sets of 100 files in 20 classes, written in manifest order
            order = sorted(range(-(-args.entries // per_set)), key=lambda j: f"c{j % 20:02d}/s{j:05d}")
            for i in (j * per_set + f for j in order for f in range(per_set) if j * per_set + f < args.entries):
                j = i // per_set
                k = j % 20
                md5 = base64.b64encode(hashlib.md5(str(i).encode()).digest()).decode()
                path_ = f"c{k:02d}/s{j:05d}"
                split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
                block.append(
                    ManifestEntry(
                        "birds",
                        f"original/{path_}/v1/IMG_{i:07d}.jpg",
                        md5,
                        90_000 + i % 5000,
                        640,
                        480,
                        "birds",
                        path_,
                        "v1",
                        None,
                        "",
                        "",
                        (f"class-{k:02d}",),
                        split,
                    )
                )
                if len(block) == 10_000:
                    f.write(gzip_member(encode_lines(block)))
                    block = []
            if block:
                f.write(gzip_member(encode_lines(block)))
        size = path.stat().st_size
        cmd = [sys.executable, "-c", _PULL_SCRIPT, str(code), str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_above_base_mb"] = round((out["peak_rss"] - out["base_rss"]) / 1e6, 1)
    return {
        "bench": "pullmemory",
        "code": str(code),
        "entries": args.entries,
        "manifest_bytes": size,
        **out,
        "load_avg": os.getloadavg(),
    }


class WireCounter:
    """Counts requests per service and table entity operations, from the shared session's responses.

    It reads responses (entities per query page) through ``requests``' hooks, so the runs that use
    it set ``CORPUS_HTTP=requests``: what is sent is the same on either transport."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.by_port = {str(p): s for s, p in ports.items()}
        self.requests: Counter[str] = Counter()
        self.entity_ops: Counter[str] = Counter()
        self.lock = threading.Lock()

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> None:
        req = response.request
        port = req.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[-1]
        service = self.by_port.get(port, "?")
        ops = 0
        if service == "table":
            body = req.body or b""
            body = body.encode() if isinstance(body, str) else body
            if "$batch" in req.url:
                ops = body.count(b" HTTP/1.1\r\n")
                kind = "batch"
            elif req.method == "GET" and ("$filter" in req.url or req.url.rstrip("/").endswith(("()", "Images", "ImageSets"))):
                try:
                    ops = max(1, len(response.json().get("value", [])))
                except ValueError:
                    ops = 1
                kind = "query"
            else:
                ops = 1
                kind = req.method
            with self.lock:
                self.entity_ops[kind] += ops
        with self.lock:
            self.requests[f"{service} {req.method}"] += 1


def requests_per_image(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["CORPUS_HTTP"] = "requests"  # WireCounter reads requests' response hooks
    from corpus.app import ingest
    from corpus.app.runtime import Runtime
    from corpus.domain.messages import CopyRequest
    from corpus.store.http import shared_session
    from corpus.store.settings import Settings

    with tempfile.TemporaryDirectory() as d:
        az = Azurite(Path(d)).start()
        try:
            # the trigger and the copy function counted apart: the queued path (issue 26)
            rt = Runtime.create(Settings.from_env({"CorpusStorage": az.connection_string, "CORPUS_INGEST": "queued"}))
            rt.ensure_resources()
            staging = rt.clients.container("staging")
            names = [f"req/v1/set{i % args.sets}/{i:05d}.jpg" for i in range(args.images)]
            blobs = {n: jpeg(i) for i, n in enumerate(names)}
            for n, data in blobs.items():
                staging.upload_blob(n, data)
            etags = {n: staging.get_blob_client(n).get_blob_properties().etag for n in names}
            counter = WireCounter(az.ports)
            shared_session().hooks["response"].append(counter.hook)
            phases: dict[str, Any] = {}

            def trigger(n: str) -> None:
                ingest.on_staged_blob(rt, ingest.StagedBlob(n, blobs[n], etags[n], {}, "BlockBlob"))

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(trigger, names))
            phases["blob trigger"] = (dict(counter.requests), dict(counter.entity_ops))
            counter.requests.clear()
            counter.entity_ops.clear()
            q = rt.clients.queue_client("copy-requests")
            bodies = []
            while len(bodies) < args.images:
                bodies += [m.content for m in q.receive_messages(max_messages=32)]
            counter.requests.clear()  # receiving is the host's work, not the function's
            counter.entity_ops.clear()
            commits0, refreshes0 = rt.recorder.commits, rt.recorder.refreshes
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda b: ingest.on_copy_request(rt, CopyRequest.parse(b)), bodies))
            phases["copy"] = (dict(counter.requests), dict(counter.entity_ops))
            commits, refreshes = rt.recorder.commits - commits0, rt.recorder.refreshes - refreshes0
        finally:
            az.stop()
    n = args.images
    out: dict[str, Any] = {"bench": "requests", "images": n, "sets": args.sets, "concurrency": args.concurrency}
    for phase, (reqs, ops) in phases.items():
        out[phase] = {
            "requests_per_image": round(sum(reqs.values()) / n, 2),
            "by_kind_per_image": {k: round(v / n, 2) for k, v in sorted(reqs.items())},
            "entity_ops_per_image": round(sum(ops.values()) / n, 2),
            "entity_ops_by_kind_per_image": {k: round(v / n, 2) for k, v in sorted(ops.items())},
        }
    out["copy"]["group_commits"] = commits
    out["copy"]["count_refreshes"] = refreshes
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--images", type=int, default=24)
    m.add_argument("--side", type=int, default=9999)
    m.add_argument("--code", default=str(REPO), help="checkout whose corpus/, function_app.py and host.json run")
    m.add_argument("--blob-parallelism", type=int, help="override host.json's extensions.blobs.maxDegreeOfParallelism")
    r = sub.add_parser("requests")
    r.add_argument("--images", type=int, default=300)
    r.add_argument("--sets", type=int, default=3)
    r.add_argument("--concurrency", type=int, default=24)
    pv = sub.add_parser("previews")
    pv.add_argument("--images", type=int, default=8)
    pv.add_argument("--side", type=int, default=10000)
    pv.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    pv.add_argument("--code", default=str(REPO))
    pk = sub.add_parser("peaks")
    pk.add_argument("--width", type=int, default=6000)
    pk.add_argument("--height", type=int, default=4000)
    pk.add_argument("--code", default=str(REPO))
    tp = sub.add_parser("tagpages")
    tp.add_argument("--sets", type=int, default=5000)
    tp.add_argument("--limit", type=int, default=100)
    tp.add_argument("--code", default=str(REPO))
    eb = sub.add_parser("exportbytes")
    eb.add_argument("--images", type=int, default=1000)
    pm = sub.add_parser("pullmemory")
    pm.add_argument("--entries", type=int, default=300_000)
    pm.add_argument("--code", default=str(REPO))
    args = p.parse_args()
    runs = {
        "pullmemory": pullmemory,
        "memory": memory,
        "requests": requests_per_image,
        "previews": previews,
        "peaks": peaks,
        "tagpages": tagpages,
        "exportbytes": exportbytes,
    }
    result = runs[args.cmd](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

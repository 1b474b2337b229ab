"""Queries at corpus scale, and the storage requests one ingested image costs.

``sets``: synthetic domains of N image sets (written directly, with batched entity-group
transactions: each set with its tag-index rows, as ``SetsTable.ensure`` writes them) on one
private Azurite; ``corpus sets --domain D --tag T`` returning ~10 sets, through the tag index
(:meth:`SetsTable.query`) and through the old full scan of the domain, in the same run: median
latency of 5 runs, and table requests per query (every HTTP request of the process counted by a
hook on the shared ``requests`` session).

``ingest``: the ingest functions' own storage requests per image in production mode: the blob
trigger's function body (``on_staged_blob``) and, with ``--ingest queued``, the copy function
(``on_copy_request``) called in process, concurrently as the host would (``--threads``), each
request counted and classified; requests to the ``Duplicates`` table (the duplicate index, issue
19) are counted apart (``index_per_image``). The host's own trigger plumbing (reading the blob
for the trigger, receiving and deleting the queue message) is listed separately: it is the
Functions runtime's cost, not the corpus's. The trigger is given no ETag, as in Azure (P9).

    .venv/bin/python bench/query_bench.py sets --sizes 1000,10000,100000
    .venv/bin/python bench/query_bench.py ingest --images 400 [--ingest queued] [--threads 4]
    .venv/bin/python bench/query_bench.py catalog --azurite 100000 --parquet 1000000   (bench/catalog_bench.py)
    .venv/bin/python bench/query_bench.py catalog-sync --rows 100000 --tree before=/tmp/before --rounds 2
    .venv/bin/python bench/query_bench.py catalog-decode --rows 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from corpus.domain.paths import SetRef  # noqa: E402
from corpus.domain.tags import matches  # noqa: E402
from corpus.store.http import shared_session  # noqa: E402
from corpus.store.rows import ImageSetRow, TagIndexRow  # noqa: E402
from corpus.store.settings import TABLE_DUPES, Settings  # noqa: E402
from tests.support import Azurite, jpeg  # noqa: E402


def _bytes(body: Any) -> bytes:
    return body if isinstance(body, bytes) else str(body).encode()


class RequestCounter:
    """Counts every HTTP request of this process, by service and method."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.by_port = {v: k for k, v in ports.items()}
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.on = True
        shared_session().hooks["response"].append(self.hook)
        # the SDK's requests through corpus's own transport (corpus.store.lean_http) are counted too
        from corpus.store import lean_http

        lean_http.observe(self.count)

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.count(response.request.url, response.request.method or "", response.request.body)

    def count(self, request_url: str, method: str, request_body: Any) -> None:
        if not self.on:
            return
        url = urlparse(request_url)
        service = self.by_port.get(url.port or 0, "?")
        kind = f"{service} {method}"
        if service == "queue":
            kind += " message" if "/messages" in url.path else ""
        if service == "blob" and "comp=batch" in (url.query or ""):
            kind += " batch"  # Blob Batch: the staged blobs' deletes (corpus/store/groupdelete.py)
        if service == "table":
            table = (url.path.split("/")[2:3] or [""])[0]  # Azurite: /<account>/<table>(…)
            body = request_body or b""
            batch = table == "$batch"
            if table.startswith(TABLE_DUPES) or (batch and f"/{TABLE_DUPES}".encode() in _bytes(body)):
                kind = "index " + kind  # the duplicate index (issue 19): listed apart
            elif batch:
                kind += " $batch"
        with self.lock:
            self.counts[kind] += 1

    def take(self) -> Counter[str]:
        with self.lock:
            out, self.counts = self.counts, Counter()
        return out


def write_domain(table: Any, domain: str, n: int) -> float:
    """N sets ``all/g<i % 100>/r<i % (n // 10)>/s<i>``, tagged ``all``, ``g…`` and ``r…`` (each r-tag names 10 sets)."""
    t0 = time.perf_counter()
    batches: list[list[Any]] = []
    ops: list[Any] = []
    for i in range(n):
        ref = SetRef(domain, ("all", f"g{i % 100}", f"r{i % (n // 10)}", f"s{i:06d}"), "v1")
        tags = ("all", f"g{i % 100}", f"r{i % (n // 10)}")  # 3 tags (+ the set row): 4 entities per set
        row = ImageSetRow(domain, ref.path, "v1", tags, ref.original_prefix(), image_count=i % 50, total_bytes=i)
        set_ops = [("create", row.to_entity())] + [("create", TagIndexRow(domain, t, row.row_key).to_entity()) for t in tags]
        if len(ops) + len(set_ops) > 100:
            batches.append(ops)
            ops = []
        ops += set_ops
    batches.append(ops)

    def submit(ops: list[Any]) -> None:
        from azure.core.exceptions import ServiceResponseError
        from azure.data.tables import TableTransactionError

        for attempt in range(5):
            try:
                table.submit_transaction(ops)
                return
            except ServiceResponseError:  # Azurite drops a kept-alive connection now and then: retry
                time.sleep(0.5 * (attempt + 1))
            except TableTransactionError as exc:
                if attempt and exc.error_code == "EntityAlreadyExists":
                    return  # the dropped attempt had committed
                raise
        raise RuntimeError("Azurite kept dropping connections")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(submit, batches))
    return time.perf_counter() - t0


def old_scan(table: Any, domain: str, tags: tuple[str, ...]) -> list[ImageSetRow]:
    """What ``corpus sets --domain D --tag T`` did before the index: every set of the domain, filtered here."""
    rows = table.query_entities(
        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi", parameters={"pk": domain, "lo": "o!", "hi": 'o"'}
    )
    return [r for r in (ImageSetRow.from_entity(e) for e in rows) if matches(r.tags, tags)]


def timed(fn: Callable[[], list[Any]], counter: RequestCounter, runs: int = 5) -> dict[str, Any]:
    times, requests, found = [], 0, 0
    for _ in range(runs):
        counter.take()
        t0 = time.perf_counter()
        found = len(fn())
        times.append(time.perf_counter() - t0)
        requests = sum(counter.take().values())
    return {"results": found, "median_ms": round(statistics.median(times) * 1000, 1), "requests": requests}


def bench_sets(sizes: list[int]) -> dict[str, Any]:
    from corpus.app.runtime import Runtime

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        az = Azurite(Path(tmp)).start()
        try:
            rt = Runtime.create(Settings.from_env({"CorpusStorage": az.connection_string}))
            rt.ensure_resources()
            counter = RequestCounter(az.ports)
            table, sets = rt.catalog.sets.table, rt.catalog.sets
            for n in sizes:
                domain = f"d{n}"
                write_s = write_domain(table, domain, n)
                one, two = ("r7",), ("all", "r7")  # of two tags, the most selective is r7 (10 sets), not all (n sets)
                out[str(n)] = {
                    "write_s": round(write_s, 1),
                    "index": timed(lambda d=domain, t=one: list(sets.query(d, t, originals_only=True)), counter),
                    "index_two_tags": timed(lambda d=domain, t=two: list(sets.query(d, t, originals_only=True)), counter),
                    "old_scan": timed(lambda d=domain, t=one: old_scan(table, d, t), counter, runs=3),
                }
                print(json.dumps({n: out[str(n)]}), file=sys.stderr)
        finally:
            az.stop()
    return out


def bench_ingest(images: int, sets: int, mode: str = "direct", threads: int = 24) -> dict[str, Any]:
    from azure.storage.blob import ContentSettings

    from corpus.app import ingest
    from corpus.app.runtime import Runtime
    from corpus.domain.messages import CopyRequest

    with tempfile.TemporaryDirectory() as tmp:
        az = Azurite(Path(tmp)).start()
        try:
            rt = Runtime.create(Settings.from_env({"CorpusStorage": az.connection_string, "CORPUS_INGEST": mode}))
            rt.ensure_resources()
            counter = RequestCounter(az.ports)
            staging = rt.clients.container("staging")
            names = [f"bench/v1/set{i % sets}/img{i:05d}.jpg" for i in range(images)]
            blobs = {}
            for i, name in enumerate(names):
                data = jpeg(i, size=(64, 48))
                staging.upload_blob(name, data, content_settings=ContentSettings(content_type="image/jpeg"))
                blobs[name] = data
            counter.take()

            def trigger(name: str) -> None:
                # As in Azure (P9): no ETag in the trigger's metadata, BlobType 0 (a block blob)
                ingest.on_staged_blob(rt, ingest.StagedBlob(name, blobs[name], "", {}, "BlockBlob"))

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(trigger, names))
            staged_counts = counter.take()
            copy_counts: Counter[str] = Counter()
            if mode == "queued":
                counter.on = False
                q = rt.clients.queue_client(rt.settings.copy_queue)
                bodies = []
                while len(bodies) < images:
                    for m in q.receive_messages(messages_per_page=32, max_messages=32):
                        bodies.append(m.content)
                        q.delete_message(m)
                counter.on = True
                counter.take()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda b: ingest.on_copy_request(rt, CopyRequest.parse(b)), bodies))
                copy_counts = counter.take()
            assert sum(1 for _ in rt.clients.container("bench").list_blobs()) == images
            assert not list(staging.list_blobs())
        finally:
            az.stop()
    both = staged_counts + copy_counts
    index = sum(v for k, v in both.items() if k.startswith("index "))
    per = {k: round(v / images, 2) for k, v in both.most_common()}
    return {
        "images": images,
        "sets": sets,
        "ingest": mode,
        "threads": threads,
        "blob_trigger_per_image": round(sum(staged_counts.values()) / images, 2),
        "copy_per_image": round(sum(copy_counts.values()) / images, 2),
        "total_per_image": round(sum(both.values()) / images, 2),
        "index_per_image": round(index / images, 2),
        "total_without_index_per_image": round((sum(both.values()) - index) / images, 2),
        "by_kind_per_image": per,
        "host_plumbing_per_image": "blob trigger: 1 blob GET (+ Event Grid); queue trigger: 1 DELETE + 1/batchSize GET",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sets")
    s.add_argument("--sizes", default="1000,10000,100000")
    i = sub.add_parser("ingest")
    i.add_argument("--images", type=int, default=400)
    i.add_argument("--sets", type=int, default=5)
    i.add_argument("--ingest", choices=("direct", "queued"), default="direct", help="CORPUS_INGEST")
    i.add_argument("--threads", type=int, default=24, help="concurrent invocations (the host's dispatch)")
    c = sub.add_parser("catalog", help="the Parquet catalog and corpus query (bench/catalog_bench.py)")
    c.add_argument("--azurite", default="100000", help="image rows written to Azurite and synced (comma-separated)")
    c.add_argument("--parquet", default="1000000", help="image rows written straight to Parquet (comma-separated)")
    cs = sub.add_parser("catalog-sync", help="sync rate of this tree and others on the same tables, same run")
    cs.add_argument("--rows", type=int, default=100_000)
    cs.add_argument("--tree", action="append", default=[], help="LABEL=PATH of another checkout to compare (repeatable)")
    cs.add_argument("--rounds", type=int, default=2)
    cs.add_argument("--profile-dir", default="", help="write a cProfile of each sync here")
    cd = sub.add_parser("catalog-decode", help="Images entities to Arrow: row by row vs column by column, no storage")
    cd.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    if args.what == "catalog-decode":
        from bench.catalog_bench import bench_decode

        result = bench_decode(args.rows)
    elif args.what == "catalog-sync":
        from bench.catalog_bench import REPO, bench_sync

        trees = dict(t.split("=", 1) for t in args.tree)
        paths = {label: Path(p).resolve() for label, p in trees.items()} | {"this": REPO}
        result = bench_sync(args.rows, paths, args.rounds, Path(args.profile_dir) if args.profile_dir else None)
    elif args.what == "catalog":
        from bench.catalog_bench import bench_catalog

        sizes = [[int(x) for x in v.split(",") if x] for v in (args.azurite, args.parquet)]
        result = bench_catalog(*sizes)
    elif args.what == "sets":
        result = bench_sets([int(x) for x in args.sizes.split(",")])
    else:
        result = bench_ingest(args.images, args.sets, args.ingest, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

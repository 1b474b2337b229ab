"""Ingest throughput: staging → original/ with all bookkeeping, beside the raw server-side copy rate.

Both are measured on the same private Azurite in the same run, over the same staged blobs, at the
same concurrency as the function that copies (``--ingest direct``, the default: the blob trigger,
``extensions.blobs.maxDegreeOfParallelism``; ``--ingest queued``: the copy function's
``batchSize + newBatchThreshold``), so the ratio is meaningful even though absolute numbers on a
shared 2-core machine are not. The raw copy is also timed at the queue's concurrency
(``raw_copy_at_queue_concurrency``), the peer of earlier runs. The host runs
``PYTHON_THREADPOOL_THREAD_COUNT`` worker threads: 24 unless set, as ``infra/`` deploys it.

    .venv/bin/python bench/ingest_bench.py --images 1000 --kb 80
    .venv/bin/python bench/ingest_bench.py --images 300 --kb 80 --ingest queued
    .venv/bin/python bench/ingest_bench.py --images 300 --kb 80 --blob-parallelism 16

``--photolike`` stages distinct generated photo-like pictures (``tests/photolike.py``, 640×480,
JPEG quality 90, ~60-90 KB) instead of one flat picture with a unique tail (whose pixels are all
equal: a worst case for a duplicate index, not a corpus). ``--count-requests`` counts the host's
HTTP requests to storage on the wire (a ``sitecustomize`` wrapping ``requests.Session.send`` in
the host process) and reports them per image, split by service.

``--storage-connection-string-env VAR`` runs it against the storage account in ``$VAR`` instead of
a private Azurite (``bench/account.py``): containers, queues and the domain under a per-run prefix;
corpus's tables and the host's trigger queues, whose names are fixed, claimed (the account must
hold none of them); all deleted at the end. There the copy is Azure's (``CORPUS_COPY_MODE=auto``
picks Put Blob From URL), and the raw copy peer waits for a copy Azure reports ``pending``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from azure.storage.blob import ContentSettings  # noqa: E402

from bench.account import add_storage_option, open_storage  # noqa: E402
from corpus.devhost.listeners import HOST_ID_SETTING, RECEIPTS_TABLE, blob_trigger_queue  # noqa: E402
from corpus.store.hostconfig import load_blob_config, load_queue_config  # noqa: E402
from corpus.store.rows import as_int  # noqa: E402
from corpus.store.settings import BLOB_POISON_QUEUE, TABLES, Connection  # noqa: E402
from corpus.store.storage import Clients  # noqa: E402
from tests.photolike import jpeg_of  # noqa: E402
from tests.support import jpeg, prepare_app_dir, run_host, wait_for  # noqa: E402

SITECUSTOMIZE = """
import atexit, collections, json, os, threading
import requests
_counts = collections.Counter()
_lock = threading.Lock()
_ports = {str(v): k for k, v in json.loads(os.environ["BENCH_PORTS"]).items()}
def _count(url, method):
    port = (url or "").split("/")[2].rsplit(":", 1)[-1]
    with _lock:
        _counts[_ports.get(port, port) + " " + (method or "")] += 1
_send = requests.Session.send
def _counted(self, request, **kw):
    _count(request.url, request.method)
    return _send(self, request, **kw)
requests.Session.send = _counted
# the SDK's requests through corpus's own transport, and the lean listings
from corpus.store import lean_http
lean_http.observe(lambda method, url, body: _count(url, method))
from corpus.transfer import bloblist
_std_send = bloblist._StdlibTransport.send
def _std(self, method, url, *a, **kw):
    _count(url, method)
    return _std_send(self, method, url, *a, **kw)
bloblist._StdlibTransport.send = _std
def _dump():
    d = os.environ["BENCH_REQUEST_COUNTS"]
    with open(os.path.join(d, str(os.getpid()) + ".json"), "w") as f:
        json.dump(dict(_counts), f)
atexit.register(_dump)
"""

JPEG = ContentSettings(content_type="image/jpeg")  # as corpus upload and Storage Explorer set it

HOST_ID = "corpus-devhost"
"""The stand-in host's id in this bench (it names the blob-trigger queue the bench claims)."""


def image_of_about(kb: int, seed: int) -> bytes:
    side = 64
    while True:
        data = jpeg(seed, size=(side, side), quality=95)
        if len(data) >= kb * 1024 or side > 4000:
            return data
        side = int(side * 1.4)


def _copy_done(blob: Any) -> str | None:
    """A finished copy's status (``success``, ``failed``, ``aborted``), or None while it is pending."""
    status = blob.get_blob_properties().copy.status
    return None if status == "pending" else str(status)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--kb", type=int, default=80, help="approximate size of each image")
    ap.add_argument("--sets", type=int, default=5)
    ap.add_argument(
        "--host-arg",
        action="append",
        default=[],
        help="extra corpus host option, e.g. --host-arg=--threads=5 --host-arg=--process-per-group (the Azure model)",
    )
    ap.add_argument("--photolike", action="store_true", help="distinct photo-like pictures (tests/photolike.py)")
    ap.add_argument("--count-requests", action="store_true", help="count the host's storage requests on the wire")
    ap.add_argument("--ingest", choices=("direct", "queued"), default="direct", help="CORPUS_INGEST for the host")
    ap.add_argument(
        "--peer-transport",
        choices=("lean", "requests"),
        default="lean",
        help="the raw copy's HTTP transport (CORPUS_HTTP for the peer's client only)",
    )
    ap.add_argument("--blob-parallelism", type=int, help="override host.json's extensions.blobs.maxDegreeOfParallelism")
    add_storage_option(ap)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        storage = open_storage(args.storage_connection_string_env, tmp_path)
        try:
            # corpus's tables and the host's queues have fixed names: an external account's are claimed
            storage.claim(tables=(*TABLES, RECEIPTS_TABLE), queues=(blob_trigger_queue(HOST_ID), BLOB_POISON_QUEUE))
            names = storage.names
            domain = names.domain("bench")
            env = {
                "PYTHON_THREADPOOL_THREAD_COUNT": "24",
                **os.environ,
                **storage.env(),
                HOST_ID_SETTING: HOST_ID,  # the host's blob-trigger queue, claimed above
                "CORPUS_INGEST": args.ingest,
            }
            counts = tmp_path / "requests"
            if args.count_requests:
                hook = tmp_path / "hook"
                hook.mkdir()
                (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
                counts.mkdir()
                env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", str(REPO))])
                env["BENCH_REQUEST_COUNTS"] = str(counts)
                env["BENCH_PORTS"] = json.dumps(storage.service_ids)
            clients = storage.clients
            clients.ensure(containers=(names.container("staging"), names.container("rawcopy")))
            staging = clients.container(names.container("staging"))
            app = prepare_app_dir(tmp_path)
            if args.blob_parallelism:
                host = json.loads((app / "host.json").read_text())
                host["extensions"]["blobs"]["maxDegreeOfParallelism"] = args.blob_parallelism
                (app / "host.json").write_text(json.dumps(host, indent=2))
            queue_cap = load_queue_config(app / "host.json").max_concurrency
            blob_cap = load_blob_config(app / "host.json").max_degree_of_parallelism
            copier = "ingest_staged_blob" if args.ingest == "direct" else "copy_to_original"
            cap = blob_cap if args.ingest == "direct" else queue_cap
            base = image_of_about(args.kb, 0)
            blobs = [f"{domain}/v1/set{i % args.sets}/img{i:05d}.jpg" for i in range(args.images)]

            def upload(i_name: tuple[int, str]) -> int:
                i, name = i_name
                # Same picture, a unique byte appended in a JPEG comment-free tail: unique MD5s.
                staging.upload_blob(name, base + i.to_bytes(4, "big"), overwrite=True, content_settings=JPEG)
                return 0

            def upload_photo(i_name: tuple[int, str]) -> int:
                i, name = i_name
                data = jpeg_of(1000 + i, size=(640, 480), quality=90)
                staging.upload_blob(name, data, overwrite=True, content_settings=JPEG)
                return len(data)

            with ThreadPoolExecutor(cap) as pool:
                sizes = list(pool.map(upload_photo if args.photolike else upload, enumerate(blobs)))
            size = round(sum(sizes) / len(sizes)) if args.photolike else len(base) + 4

            clients.ensure(containers=(names.container("rawcopy2"),))

            def peer_clients() -> Clients:
                """The raw copy's client: corpus's transport (the default), or azure-core's own
                (``--peer-transport requests``, what the peer ran on before issue 26's lean transport)."""
                saved = os.environ.get("CORPUS_HTTP")
                os.environ["CORPUS_HTTP"] = args.peer_transport
                try:
                    made = Clients(Connection(connection_string=storage.connection_string))
                    made.blob  # noqa: B018 - built now, while CORPUS_HTTP says which transport
                    return made
                finally:
                    if saved is None:
                        del os.environ["CORPUS_HTTP"]
                    else:
                        os.environ["CORPUS_HTTP"] = saved

            peer = peer_clients()

            def raw_copy_s(container: str, threads: int) -> float:
                raw = peer.container(container)

                def copy(name: str) -> None:
                    src = staging.get_blob_client(name)
                    dest = raw.get_blob_client(name)
                    r = dest.start_copy_from_url(src.url)
                    if r["copy_status"] == "pending":  # Azure may finish a copy after answering (Azurite never does)
                        r = {"copy_status": wait_for(lambda: _copy_done(dest), 300, f"the copy of {name}")}
                    assert r["copy_status"] == "success", r["copy_status"]

                t0 = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(copy, blobs))
                return time.perf_counter() - t0

            raw_s = raw_copy_s(names.container("rawcopy"), cap)
            raw_queue_s = raw_copy_s(names.container("rawcopy2"), queue_cap)

            trace = tmp_path / "trace.jsonl"
            t0 = time.perf_counter()
            summary = run_host(env, app, "--trace", str(trace), *args.host_arg, timeout=1800)
            wall_s = time.perf_counter() - t0
            events = [json.loads(line) for line in trace.read_text().splitlines()]
            busy_s = max(e["end"] for e in events) - min(e["start"] for e in events)
            assert summary["ok"][copier] >= args.images, summary
            counted = sum(
                as_int(e["ImageCount"])
                for e in clients.table_client("ImageSets").query_entities(
                    f"PartitionKey eq '{domain}' and RowKey lt 'x!'"  # set rows, not the tag index beside them
                )
            )
            assert counted == args.images, counted
            wire: dict[str, int] = {}
            for f in counts.glob("*.json") if args.count_requests else ():
                for k, v in json.loads(f.read_text()).items():
                    wire[k] = wire.get(k, 0) + v
        finally:
            storage.close()

    raw_rate, pipe_rate = args.images / raw_s, args.images / busy_s
    raw_queue_rate = args.images / raw_queue_s
    result = {
        "storage": storage.server,
        "images": args.images,
        "bytes_each": size,
        "ingest": args.ingest,
        "concurrency": cap,
        "host_args": args.host_arg,
        "worker_threads": summary.get("worker_threads"),
        "max_copies_in_flight": summary.get("max_in_flight", {}).get(copier),
        "raw_copy_images_per_s": round(raw_rate, 1),
        "peer_transport": args.peer_transport,
        "pipeline_images_per_s": round(pipe_rate, 1),
        "pipeline_wall_s_including_host_start": round(wall_s, 2),
        "ratio_pipeline_to_raw": round(pipe_rate / raw_rate, 3),
        "raw_copy_at_queue_concurrency": {"threads": queue_cap, "images_per_s": round(raw_queue_rate, 1)},
        "ratio_pipeline_to_raw_at_queue_concurrency": round(pipe_rate / raw_queue_rate, 3),
        "photolike": args.photolike,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.count_requests:
        result["host_requests_per_image"] = {k: round(v / args.images, 2) for k, v in sorted(wire.items())}
        result["host_requests_per_image_total"] = round(sum(wire.values()) / args.images, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

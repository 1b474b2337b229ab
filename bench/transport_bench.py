"""CPU per storage request through the SDKs: corpus's transport (``CORPUS_HTTP=lean``) vs azure-core's
``RequestsTransport`` (``CORPUS_HTTP=requests``), the same calls on one private Azurite; and, with
``--server-cpu``, Azurite's own CPU per request of each kind ingest makes (8 client threads); and,
with ``--sdk-free``, the SDK-free clients of ``corpus upload``/``pull`` (``corpus.transfer.bloblist``'s
socket transport: Get Blob, Put Blob, List Blobs) in the same run, peers of the SDK's calls.

Each transport runs in its own child process (imports, pools and caches its own), one thread, after
a warm-up call; what is reported is the child's CPU time (user + system) per call, which is what a
host whose threads share one GIL runs out of, and the wall time per call.

    .venv/bin/python bench/transport_bench.py --calls 300
    .venv/bin/python bench/transport_bench.py --calls 300 --server-cpu
    .venv/bin/python bench/transport_bench.py --calls 300 --sdk-free
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def child(connection_string: str, calls: int, sdk_free: bool = False) -> dict[str, dict[str, float]]:
    from corpus.store.settings import Connection
    from corpus.store.storage import Clients

    clients = Clients(Connection(connection_string=connection_string))
    tag = os.environ["CORPUS_HTTP"]
    container, queue, table = f"tb{tag}", f"tb{tag}", f"tb{tag}"
    clients.ensure(containers=(container,), queues=(queue,), tables=(table,))
    blob = clients.container(container).get_blob_client("x")
    blob.upload_blob(b"x" * 100_000, overwrite=True)
    q, t = clients.queue_client(queue), clients.table_client(table)
    t.upsert_entity({"PartitionKey": "p", "RowKey": "r", "A": 1})

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    ops: dict[str, Callable[[], object]] = {
        "blob HEAD (get_blob_properties)": blob.get_blob_properties,
        "blob GET 100 KB (download_blob)": lambda: blob.download_blob().readall(),
        "queue POST (send_message)": lambda: q.send_message("hello"),
        "table PUT (upsert_entity)": lambda: t.upsert_entity({"PartitionKey": "p", "RowKey": "r", "A": 1}),
        "table GET (get_entity)": lambda: t.get_entity("p", "r"),
        "table GET (query_entities, 1 row)": lambda: list(t.query_entities("PartitionKey eq 'p'")),
    }
    if sdk_free:  # the same process: the SDK-free clients cost no more for the SDK's having loaded
        from corpus.pull.fetch import BlobFetcher
        from corpus.transfer.bloblist import BlobLister
        from corpus.upload.sender import RawSender

        fetcher = BlobFetcher(Connection(connection_string=connection_string))
        sender = RawSender(BlobLister.from_connection(Connection(connection_string=connection_string)), container)
        lister = fetcher.lister
        data = b"y" * 100_000
        md5 = hashlib.md5(data).digest()
        names = iter(range(10**9))
        ops.update({
            "sdk-free GET 100 KB (BlobFetcher.get)": lambda: fetcher.get(container, "x"),
            "sdk-free Put Blob 100 KB (RawSender.put)": lambda: sender.put(f"p{next(names)}", data, md5, "image/jpeg"),
            "sdk-free List Blobs, 1 blob (BlobLister.list_page)": lambda: lister.list_page(container, "x", 5000),
        })  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    for name, call in ops.items():
        call()
        c0, w0 = cpu(), time.perf_counter()
        for _ in range(calls):
            call()
        out[name] = {
            "cpu_ms": round(1000 * (cpu() - c0) / calls, 3),
            "wall_ms": round(1000 * (time.perf_counter() - w0) / calls, 3),
        }
    return out


def _process_cpu(pid: int) -> float:
    """user + system seconds of ``pid`` and its children (Azurite runs under a node launcher)."""
    total = 0.0
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [pid, *map(int, kids)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_cpu(az: object, calls: int) -> dict[str, float]:
    """Azurite's CPU (ms) per request of each kind, 8 client threads, after ``calls`` 100 KB blobs."""
    from concurrent.futures import ThreadPoolExecutor

    from corpus.store.settings import Connection
    from corpus.store.storage import Clients

    pid = az.proc.pid  # type: ignore[attr-defined]
    clients = Clients(Connection(connection_string=az.connection_string))  # type: ignore[attr-defined]
    clients.ensure(containers=("src", "dst"), queues=("srvq",), tables=("srvt",))
    src, dst = clients.container("src"), clients.container("dst")
    q, t = clients.queue_client("srvq"), clients.table_client("srvt")
    data = os.urandom(100_000)
    out: dict[str, float] = {}

    def measure(name: str, call: Callable[[int], object], n: int = calls) -> None:
        c0 = _process_cpu(pid)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(n)))
        out[name] = round(1000 * (_process_cpu(pid) - c0) / n, 3)

    measure("Put Blob 100 KB", lambda i: src.upload_blob(f"b{i}", data, overwrite=True))
    c0 = _process_cpu(pid)
    for _ in range(20):
        list(src.list_blobs())
    out[f"List Blobs, per listed blob ({calls} blobs)"] = round(1000 * (_process_cpu(pid) - c0) / (20 * calls), 4)
    measure("Get Blob Properties (HEAD)", lambda i: src.get_blob_client(f"b{i}").get_blob_properties())
    measure("Get Blob 100 KB", lambda i: src.get_blob_client(f"b{i}").download_blob().readall())
    measure("Copy Blob 100 KB", lambda i: dst.get_blob_client(f"b{i}").start_copy_from_url(src.get_blob_client(f"b{i}").url))
    measure("Delete Blob", lambda i: dst.get_blob_client(f"b{i}").delete_blob())
    measure("Put Message", lambda i: q.send_message("x" * 200))
    measure("Insert Or Replace Entity", lambda i: t.upsert_entity({"PartitionKey": "p", "RowKey": f"r{i}", "A": 1}))
    measure("Query Entity (point)", lambda i: t.get_entity("p", f"r{i}"))
    measure(
        "$batch of 5 upserts",
        lambda i: t.submit_transaction([("upsert", {"PartitionKey": f"q{i}", "RowKey": f"r{j}", "A": 1}) for j in range(5)]),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--server-cpu", action="store_true", help="also Azurite's CPU per request of each kind")
    ap.add_argument("--sdk-free", action="store_true", help="also corpus upload/pull's SDK-free clients (lean's child)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.calls, args.sdk_free)))
        return
    from tests.support import Azurite

    with tempfile.TemporaryDirectory() as tmp:
        az = Azurite(Path(tmp)).start()
        try:
            results = {}
            for transport in ("requests", "lean"):
                env = {**os.environ, "CORPUS_HTTP": transport, "PYTHONPATH": str(REPO)}
                cmd = [sys.executable, __file__, "--calls", str(args.calls), "--child", az.connection_string]
                cmd += ["--sdk-free"] if args.sdk_free and transport == "lean" else []
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                results[transport] = json.loads(done.stdout)
            server = server_cpu(az, args.calls) if args.server_cpu else None
        finally:
            az.stop()
    table = {
        op: {
            "requests_cpu_ms": results["requests"][op]["cpu_ms"],
            "lean_cpu_ms": results["lean"][op]["cpu_ms"],
            "lean_over_requests": round(results["lean"][op]["cpu_ms"] / results["requests"][op]["cpu_ms"], 2),
            "requests_wall_ms": results["requests"][op]["wall_ms"],
            "lean_wall_ms": results["lean"][op]["wall_ms"],
        }
        for op in results["requests"]
    }
    report: dict[str, object] = {"calls": args.calls, "per_call": table}
    if args.sdk_free:
        peer = results["requests"]["blob GET 100 KB (download_blob)"]["cpu_ms"]
        report["sdk_free_per_call"] = {
            op: {**got, "cpu_over_requests_download_blob": round(got["cpu_ms"] / peer, 2)}
            for op, got in results["lean"].items()
            if op not in results["requests"]
        }
    if server is not None:
        report["azurite_cpu_ms_per_request"] = server
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""CPU per storage request through the SDKs: corpus's transport (``CORPUS_HTTP=lean``) vs azure-core's
``RequestsTransport`` (``CORPUS_HTTP=requests``), the same calls on one private Azurite.

Each transport runs in its own child process (imports, pools and caches its own), one thread, after
a warm-up call; what is reported is the child's CPU time (user + system) per call, which is what a
host whose threads share one GIL runs out of, and the wall time per call.

    .venv/bin/python bench/transport_bench.py --calls 300
"""

from __future__ import annotations

import argparse
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


def child(connection_string: str, calls: int) -> dict[str, dict[str, float]]:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.calls)))
        return
    from tests.support import Azurite

    with tempfile.TemporaryDirectory() as tmp:
        az = Azurite(Path(tmp)).start()
        try:
            results = {}
            for transport in ("requests", "lean"):
                env = {**os.environ, "CORPUS_HTTP": transport, "PYTHONPATH": str(REPO)}
                cmd = [sys.executable, __file__, "--calls", str(args.calls), "--child", az.connection_string]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                results[transport] = json.loads(done.stdout)
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
        for op in results["lean"]
    }
    print(json.dumps({"calls": args.calls, "per_call": table, "load_average": [round(x, 2) for x in os.getloadavg()]}, indent=2))


if __name__ == "__main__":
    main()

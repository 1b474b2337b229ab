"""Does the shape of a request change what it costs Azurite? Azurite's CPU per Put Blob / Get Blob
with the headers each client sends, one fresh Azurite per variant.

Three of issue 26's aims (first upload vs AzCopy, TrainsetDataset vs azstoragetorch, ingest vs a
raw server-side copy) end where one local Azurite (one Node process) runs out of CPU. If a header
we send (``Content-MD5``, ``x-ms-blob-content-md5``, ``If-None-Match: *``, a range) made Azurite
work harder, a client could send less; this measures it. Each variant gets its own Azurite,
empty for a Put Blob variant (as a first upload finds it), pre-filled with ``--blobs`` blobs for a
Get Blob variant (its store slows as it fills, so variants must not share one), then ``--blobs``
requests from ``--threads`` threads (8) over raw keep-alive ``http.client`` connections signed
with a container SAS (no client pipeline in the way: the fastest any client could go); reported: Azurite's CPU (user + system, its
process and children) per request, and wall time per request. Variants run in the order given,
so ``--rounds 2`` interleaves them.

    .venv/bin/python bench/azurite_shape_bench.py --blobs 2000 --rounds 2 --threads 32
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from support import ACCOUNT, Azurite  # noqa: E402
from transport_bench import _process_cpu  # noqa: E402

VERSION = "2025-05-05"  # a SAS for Azurite 3.35 must use a service version <= 2025-11-05


def variants(data: bytes) -> dict[str, dict[str, str] | None]:
    """Extra headers of each Put Blob variant (``None``: a Get Blob variant)."""
    md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    return {
        "put: minimal": {},
        "put: Content-MD5": {"Content-MD5": md5},
        "put: If-None-Match *": {"If-None-Match": "*"},
        "put: as corpus upload sends it": {
            "Content-MD5": md5,
            "x-ms-blob-content-md5": md5,
            "x-ms-blob-content-type": "image/jpeg",
            "If-None-Match": "*",
        },
        "get: whole blob": None,
        "get: x-ms-range (as the SDK's first chunk)": None,
    }


def run_variant(name: str, extra: dict[str, str] | None, data: bytes, blobs: int, threads: int) -> dict[str, float]:
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    az = Azurite(Path(tempfile.mkdtemp(prefix="shape-"))).start()
    try:
        assert az.proc is not None
        port, pid = az.ports["blob"], az.proc.pid
        BlobServiceClient.from_connection_string(az.connection_string).create_container("src")
        sas = generate_container_sas(
            ACCOUNT,
            "src",
            account_key=az.key,
            permission=ContainerSasPermissions(read=True, write=True, create=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
            version=VERSION,
        )
        local = threading.local()

        def send(method: str, blob: str, headers: dict[str, str], body: bytes | None = None) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request(method, f"/{ACCOUNT}/src/{blob}?{sas}", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status not in (200, 201, 206):
                raise RuntimeError(f"{name}: {method} {blob} answered {response.status}")

        put = {"x-ms-version": VERSION, "x-ms-blob-type": "BlockBlob", "Content-Length": str(len(data))}
        call: Callable[[int], None]
        if extra is None:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: send("PUT", f"pre{i}", put, data), range(blobs)))
            get = {"x-ms-version": VERSION}
            if "range" in name:
                get["x-ms-range"] = "bytes=0-33554431"
            call = lambda i: send("GET", f"pre{i}", get)  # noqa: E731
        else:
            headers = {**put, **extra}
            call = lambda i: send("PUT", f"new{i}", headers, data)  # noqa: E731
        c0, w0 = _process_cpu(pid), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(call, range(blobs)))
        return {
            "azurite_cpu_ms": round(1000 * (_process_cpu(pid) - c0) / blobs, 3),
            "wall_ms": round(1000 * (time.perf_counter() - w0) / blobs, 3),
        }
    finally:
        az.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blobs", type=int, default=2000)
    ap.add_argument("--kb", type=int, default=80, help="blob size")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8, help="client threads of the measured requests")
    args = ap.parse_args()
    data = os.urandom(args.kb * 1000)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for name, extra in variants(data).items():
            r = run_variant(name, extra, data, args.blobs, args.threads)
            results.setdefault(name, []).append(r)
            print(f"{name:45s} Azurite {r['azurite_cpu_ms']:.3f} ms CPU/request, wall {r['wall_ms']:.3f} ms", file=sys.stderr)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print(json.dumps({"blobs": args.blobs, "kb": args.kb, "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()

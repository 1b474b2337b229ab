"""Start the test fixture's Azurite N times under CPU load: failures, retries, latency (issue 24).

Stands in for "ten consecutive CI runs on a loaded machine with no start failure", which this
machine cannot afford: what failed CI was the start of Azurite, so this starts only that, many
times, while ``--burners`` busy-loop processes load every core and ``--parallel`` starts run at
once (two suites at once start their Azurites concurrently).

Two peers in the same run, alternating start by start so both see the same load:

* ``kernel``: today's fixture (``tests.support.Azurite.start``: ``--blobPort 0`` …, the ports read
  back from Azurite's log, up to 3 attempts);
* ``pick``: the old way, one attempt: ``free_port()`` per service, the socket closed, the numbers
  handed to Azurite (the window in which another process can take the port).

    .venv/bin/python bench/azurite_start_bench.py --starts 50 --burners 4 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import Azurite, free_port  # noqa: E402


def _burn(stop: Any) -> None:
    """One busy-looping process: the load generator."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def _one(mode: str, root: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(dir=root))
    if mode == "pick":
        az = Azurite(work, requested={s: free_port() for s in ("blob", "queue", "table")})
        attempts = 1
    else:
        az = Azurite(work)
        attempts = 3
    started = time.monotonic()
    error = ""
    try:
        az.start(attempts=attempts, timeout=30)
    except RuntimeError as exc:
        error = str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else str(exc)
    seconds = time.monotonic() - started
    az.stop()
    used = len(list(work.glob("azurite-*.log")))
    return {"mode": mode, "ok": not error, "seconds": seconds, "attempts": used, "error": error}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=50, help="starts per peer")
    ap.add_argument("--burners", type=int, default=(os.cpu_count() or 1) * 2, help="busy-loop processes")
    ap.add_argument("--parallel", type=int, default=2, help="starts at once (suites at once)")
    args = ap.parse_args()

    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for p in burners:
        p.start()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    load: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            jobs = [m for _ in range(args.starts) for m in ("kernel", "pick")]

            def worker() -> None:
                while True:
                    with lock:
                        if not jobs:
                            return
                        mode = jobs.pop(0)
                    r = _one(mode, Path(tmp))
                    with lock:
                        results.append(r)
                        load.append(os.getloadavg()[0])

            threads = [threading.Thread(target=worker) for _ in range(args.parallel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        stop.set()
        for p in burners:
            p.join(5)
            if p.is_alive():
                p.terminate()

    summary: dict[str, Any] = {
        "starts_per_peer": args.starts,
        "burners": args.burners,
        "parallel": args.parallel,
        "cores": os.cpu_count(),
        "load_avg_1m_mean": round(statistics.mean(load), 1) if load else None,
    }
    for mode in ("kernel", "pick"):
        rs = [r for r in results if r["mode"] == mode]
        secs = sorted(r["seconds"] for r in rs if r["ok"])
        summary[mode] = {
            "starts": len(rs),
            "failed": sum(not r["ok"] for r in rs),
            "retried": sum(r["attempts"] > 1 for r in rs if r["ok"]),
            "p50_s": round(statistics.median(secs), 2) if secs else None,
            "p95_s": round(secs[max(0, math.ceil(0.95 * len(secs)) - 1)], 2) if secs else None,
            "max_s": round(secs[-1], 2) if secs else None,
            "errors": sorted({r["error"] for r in rs if r["error"]})[:5],
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

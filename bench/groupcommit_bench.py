"""Group commit: how long an ingest invocation waits in ``ImageRecorder.record``, and on what.

In process, no storage: a catalog whose commit takes one round trip (``--rtt`` ms) and whose count
refresh takes three (shard sum, set row, conditional update), as the table stores' do. ``--threads``
invocations (24 = host.json's batchSize 16 + newBatchThreshold 8) record ``--images`` images into
``--sets`` sets, each thread looping over its share. For every record it measures, from the fake's
own timestamps:

* **queued**: from the call until its batch's commit starts (waiting on others' batches);
* **own commit**: its batch's commit;
* **after commit**: from its commit's end until the call returns (waiting for a refresh that covers it);

and reports mean / p95 / max in ms, with commits and refreshes per image. ``--compare DIR`` runs
the same load on the ``corpus/store/groupcommit.py`` of another tree (e.g. the commit before).

    python bench/groupcommit_bench.py --compare /tmp/speed_base
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from corpus.domain.paths import SetRef  # noqa: E402
from corpus.store.rows import ImageRow  # noqa: E402


class Timed:
    """The two catalog steps group commit calls, each sleeping its round trips, timestamped."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.lock = threading.Lock()
        self.commit_span: dict[str, tuple[float, float]] = {}
        self.commits = 0
        self.refreshes = 0

    def record_images(self, ref: SetRef, records: list[ImageRow], transform: Any = None) -> list[bool]:
        start = time.perf_counter()
        time.sleep(self.rtt)
        end = time.perf_counter()
        with self.lock:
            self.commits += 1
            for r in records:
                self.commit_span[r.file] = (start, end)
        return [True] * len(records)

    def refresh_counts(self, ref: SetRef, transform: Any = None) -> tuple[int, int]:
        time.sleep(3 * self.rtt)
        with self.lock:
            self.refreshes += 1
        return (0, 0)


def load_recorder(tree: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"gc_{abs(hash(tree))}", tree / "corpus" / "store" / "groupcommit.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod.ImageRecorder


def run(recorder_cls: Any, args: argparse.Namespace) -> dict[str, Any]:
    fake = Timed(args.rtt / 1000)
    recorder = recorder_cls(fake)
    calls: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    sets = [SetRef("bench", (f"s{k}",), "v1") for k in range(args.sets)]

    def worker(t: int) -> None:
        for i in range(t, args.images, args.threads):
            name = f"{i}.jpg"
            ref = sets[i % len(sets)]
            start = time.perf_counter()
            recorder.record(ref, ImageRow(name, f"original/s/v1/{name}", 1, "0" * 32, "image/jpeg", 1, 1))
            with lock:
                calls[name] = (start, time.perf_counter())

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    queued, own, after, total = [], [], [], []
    for name, (start, end) in calls.items():
        c0, c1 = fake.commit_span[name]
        queued.append(c0 - start)
        own.append(c1 - c0)
        after.append(end - c1)
        total.append(end - start)

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {
            "mean_ms": round(1000 * statistics.fmean(xs), 2),
            "p95_ms": round(1000 * xs[int(0.95 * (len(xs) - 1))], 2),
            "max_ms": round(1000 * xs[-1], 2),
        }

    return {
        "images_per_s": round(args.images / wall, 1),
        "in_record": stats(total),
        "queued_behind_others": stats(queued),
        "own_commit": stats(own),
        "after_commit": stats(after),
        "commits_per_image": round(fake.commits / args.images, 3),
        "refreshes_per_image": round(fake.refreshes / args.images, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2400)
    ap.add_argument("--threads", type=int, default=24)
    ap.add_argument("--sets", type=int, default=5)
    ap.add_argument("--rtt", type=float, default=5.0, help="one storage round trip, ms")
    ap.add_argument("--compare", metavar="DIR", help="also run the groupcommit.py of another tree")
    args = ap.parse_args()
    out = {"load": dict(vars(args)), "this": run(load_recorder(REPO), args)}
    if args.compare:
        out["compared"] = run(load_recorder(Path(args.compare).resolve()), args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

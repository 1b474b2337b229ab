"""Finer figures for ``corpus upload`` than ``bench/upload_bench.py`` gives (it rounds to 10 ms), two code trees.

``rerun``: one Azurite as upload_bench's (the 2,000 × ~80 KB drop uploaded by ``before`` and by
rclone, so it holds 4,000 blobs), then ``--rounds`` re-runs of each of before, after and rclone,
round-robin (reversed every other round); median, mean and min in ms.

``first``: ``--rounds`` × (before, after) first uploads of the same drop, each into a fresh
Azurite: wall time, the corpus process's CPU (user + system) and Azurite's (node's) CPU over the
upload, read from /proc. On this machine Azurite is one Node.js thread: its CPU is the floor of
the wall time.

    .venv/bin/python bench/upload_split_bench.py rerun --before /tmp/base --after . --rounds 21
    .venv/bin/python bench/upload_split_bench.py first --before /tmp/base --after . --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from upload_bench import Contest, make_drop  # noqa: E402


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("rerun", "first"))
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=str(REPO))
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "drop"
        make_drop(src, 2000, 80_000, 5)
        if args.mode == "rerun":
            contest = Contest(tmp, trees)
            try:
                for tool in ("before", "rclone"):
                    contest.run(tool, src, "2000", "")
                times: dict[str, list[float]] = {"before": [], "after": [], "rclone": []}
                order = list(times)
                for i in range(args.rounds):
                    for tool in order if i % 2 == 0 else order[::-1]:
                        times[tool].append(contest.run(tool, src, "2000", "")[0])
            finally:
                contest.stop()
            out: dict[str, object] = {
                k: {"median_ms": round(statistics.median(v) * 1000, 1), "mean_ms": round(statistics.mean(v) * 1000, 1),
                    "min_ms": round(min(v) * 1000, 1)}
                for k, v in times.items()
            }  # fmt: skip
            for k in ("before", "after"):
                out[f"rclone_over_{k}"] = round(statistics.median(times["rclone"]) / statistics.median(times[k]), 3)
        else:
            rows = []
            for i in range(args.rounds):
                for label in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    workdir = tmp / f"{label}{i}"
                    workdir.mkdir()
                    contest = Contest(workdir, {label: trees[label]})
                    try:
                        pid = contest.az.proc.pid if contest.az.proc else 0
                        a0, c0 = process_cpu(pid), children_cpu()
                        wall, _ = contest.run(label, src, "2000", "")
                        rows.append({"tree": label, "wall_s": round(wall, 2), "corpus_cpu_s": round(children_cpu() - c0, 2),
                                     "azurite_cpu_s": round(process_cpu(pid) - a0, 2)})  # fmt: skip
                    finally:
                        contest.stop()
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            out = {"runs": rows}
        out["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

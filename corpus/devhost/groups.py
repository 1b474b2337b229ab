"""``corpus host --process-per-group``: one process per Flex Consumption function group.

Flex Consumption scales per function: every HTTP function shares one group, every blob (Event
Grid) function one group (they share the host's one blob-trigger queue, whose listener drops a
message for a function it has no registration for: ``corpus host --only`` keeps all of them or none),
and each other function (here each queue and timer
function) is a group of its own, on its own instances (MicrosoftDocs/azure-docs, ``articles/azure-functions/
flex-consumption-plan.md``, "Per-function scaling"). Each instance runs one Python worker with its
own thread pool, so a slow group never takes threads from another. This runs each group as a
child ``corpus host --only …`` with the same options, i.e. its own :class:`Worker` and cap.

With ``--until-idle`` a child stops when *its* queues are empty, while work may still flow to it
from another group (a blob becomes a copy request). So children run in rounds until a round in
which no queue or blob function ran; timers do not count (``--timers-now`` runs them every round).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from corpus.devhost.discovery import Target, discover


def function_groups(targets: list[Target]) -> list[tuple[str, ...]]:
    """The Flex function groups of these functions: ``http``, ``blob``, then one per other function."""
    http = tuple(t.name for t in targets if t.kind == "http")
    blob = tuple(t.name for t in targets if t.kind == "blob")
    rest = [(t.name,) for t in targets if t.kind not in ("http", "blob")]
    return [g for g in (http, blob) if g] + rest


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": {}, "failed": {}, "max_in_flight": {}, "poisoned": [], "dropped": [], "timed_out": False}
    for s in summaries:
        for key in ("ok", "failed"):
            for fn, n in s.get(key, {}).items():
                out[key][fn] = out[key].get(fn, 0) + n
        for fn, n in s.get("max_in_flight", {}).items():
            out["max_in_flight"][fn] = max(n, out["max_in_flight"].get(fn, 0))
        out["poisoned"] += s.get("poisoned", [])
        out["dropped"] += s.get("dropped", [])
        out["timed_out"] = out["timed_out"] or bool(s.get("timed_out"))
        out["worker_threads"] = s.get("worker_threads")
    return out


def run_groups(app_dir: Path, values: dict[str, str], child_args: list[str], until_idle: bool) -> dict[str, Any]:
    """Run every group in a child process; with ``until_idle``, in rounds until one does nothing."""
    targets = discover(app_dir, values)
    groups = function_groups(targets)
    timers = {t.name for t in targets if t.kind == "timer"}
    rounds: list[dict[str, Any]] = []
    while True:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "corpus", "host", *child_args, "--only", *group],
                stderr=subprocess.PIPE,
                text=True,
            )
            for group in groups
        ]
        summaries = []
        try:
            for proc in procs:
                _, err = proc.communicate()
                lines = err.strip().splitlines()
                for line in lines[:-1]:
                    print(line, file=sys.stderr)
                try:
                    summaries.append(json.loads(lines[-1]) if lines else {"timed_out": True})
                except ValueError:
                    print(lines[-1], file=sys.stderr)
                    summaries.append({"timed_out": True})
        except KeyboardInterrupt:
            for proc in procs:
                proc.terminate()
            raise
        merged = merge(summaries)
        rounds.append(merged)
        worked = sum(n for key in ("ok", "failed") for fn, n in merged[key].items() if fn not in timers)
        if not until_idle or worked == 0 or merged["timed_out"]:
            break
    total = merge(rounds)
    total["groups"] = [list(g) for g in groups]
    total["rounds"] = len(rounds)
    return total

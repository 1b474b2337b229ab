"""Uploading drops to staging: corpus upload vs AzCopy vs rclone, same drop, same Azurite, one run.

Drops: 2,000 JPEGs of about 80 KB in 5 tag directories, and 20,000 small files (about 2 KB).
Each tool uploads to its own prefix of the staging container, then all of them run again with
nothing changed, round-robin, ``--reruns`` times (median reported). Wall time of the whole
command (start-up included) is what a user waits for. Last, the peak memory of ``corpus upload``
over a 100,000-file tree.

Peers: AzCopy from npm (@azure-tools/azcopy-linux; needs Debian's libsecret-1-0) with
``--from-to LocalBlob`` and a container SAS; rclone from Debian with a ``sas_url`` remote.
All three send an MD5 per file (``--put-md5``; rclone always does for single-part uploads) and
use 32 transfers in parallel.

    .venv/bin/python bench/upload_bench.py            # AZCOPY=path/to/azcopy to override

``--storage-connection-string-env VAR`` runs it against the storage account in ``$VAR`` instead of
a private Azurite (``bench/account.py``: a per-run staging container, deleted at the end).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from bench.account import Storage, add_storage_option, open_storage  # noqa: E402
from corpus.store.storage import Clients  # noqa: E402

CONCURRENCY = 32


def photo_like(seed: int, target: int) -> bytes:
    rng = random.Random(seed)
    side = 200
    while True:
        img = Image.effect_noise((side, side), 40 + rng.randint(0, 20)).convert("RGB")
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
        if out.tell() >= target:
            return out.getvalue()
        side += 40


def make_drop(root: Path, files: int, size: int, dirs: int) -> int:
    bases = [photo_like(i, size) for i in range(16)]
    total = 0
    tags = ["red/angry/robin", "blue/calm/jay", "green/sleepy/parrot", "grey/owl", "brown/wren"][:dirs]
    for d in tags:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(files):
        data = bases[i % len(bases)][:size] if size < 4096 else bases[i % len(bases)]
        data = data + i.to_bytes(4, "big")
        (root / tags[i % dirs] / f"img{i:06d}.jpg").write_bytes(data)
        total += len(data)
    return total


def timed(
    cmd: list[str], env: dict[str, str], cwd: str | None = None, ok: tuple[int, ...] = (0,)
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=cwd)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def count(clients: Clients, prefix: str, container: str = "staging") -> int:
    return sum(1 for _ in clients.container(container).list_blobs(name_starts_with=prefix))


def find_azcopy(tmp: Path) -> str:
    if os.environ.get("AZCOPY"):
        return os.environ["AZCOPY"]
    tools = Path.home() / ".cache" / "corpus" / "bench-tools"
    nm = tools / "node_modules" / "@azure-tools" / "azcopy-linux" / "dist" / "bin" / "azcopy_linux_amd64"
    if not nm.exists():
        tools.mkdir(parents=True, exist_ok=True)
        package = "@azure-tools/azcopy-linux@10.32.2"
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(tools), package], check=True)
    exe = tmp / "azcopy"
    shutil.copy(nm, exe)  # the npm package ships it without the executable bit
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


class Contest:
    """One storage (a private Azurite, or an external account under a per-run prefix), the staging
    container, a container SAS and the environment every tool runs in."""

    def __init__(self, tmp: Path, trees: dict[str, str] | None = None, account_env: str | None = None) -> None:
        self.trees = trees or {"corpus": str(REPO)}
        self.storage: Storage = open_storage(account_env, tmp)
        self.az = self.storage.azurite  # the private Azurite (upload_split_bench reads its pid), or None
        try:
            self._setup(tmp)
        except BaseException:
            self.storage.close()
            raise

    def _setup(self, tmp: Path) -> None:
        storage = self.storage
        self.staging = storage.names.container("staging")
        self.clients = storage.clients
        self.clients.ensure(containers=(self.staging,))
        self.blob_url = storage.blob_url
        self.sas = storage.container_sas(self.staging, "racwdl")
        # As installed, Python finds each module's bytecode cached (pip compiles it; or the first run
        # writes __pycache__): a machine-wide PYTHONDONTWRITEBYTECODE would make every corpus run
        # compile its modules again, a cost no user's re-run pays. Removed, like the CA bundles below.
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env = {**base, **storage.env(),
                    "CORPUS_CACHE_DIR": str(tmp / f"cache-{storage.names.prefix or storage.service_ids['blob']}"),
                    "AZCOPY_LOG_LOCATION": str(tmp / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp / "azplans"),
                    "AZCOPY_DISABLE_SYSLOG": "true", "AZCOPY_CONCURRENCY_VALUE": str(CONCURRENCY),
                    "RCLONE_CONFIG_AZ_TYPE": "azureblob",
                    "RCLONE_CONFIG_AZ_SAS_URL": f"{self.blob_url}/{self.staging}?{self.sas}"}  # fmt: skip

    def run(
        self, tool: str, src: Path, tag: str, azcopy: str, ok: tuple[int, ...] = (0,)
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        """``tool`` is a peer, or ``corpus`` / a label of ``--corpus-trees``: that code tree's corpus."""
        if tool in self.trees:  # the tree's own `corpus` package: `python -m` looks in the working directory first
            env = {**self.env, "PYTHONPATH": self.trees[tool]}
            return timed(self.commands("corpus", src, tag, azcopy), env, cwd=self.trees[tool], ok=ok)
        return timed(self.commands(tool, src, tag, azcopy), self.env, ok=ok)

    def commands(self, tool: str, src: Path, tag: str, azcopy: str) -> list[str]:
        return {
            "corpus": [sys.executable, "-m", "corpus", "upload", str(src), "--domain", "bench",
                       "--version", f"corpus{tag}", "--concurrency", str(CONCURRENCY), "--json"],
            "azcopy": [azcopy, "copy", f"{src}/*", f"{self.blob_url}/{self.staging}/bench/azcopy{tag}?{self.sas}", "--recursive",
                       "--from-to", "LocalBlob", "--put-md5", "--overwrite=false", "--log-level=ERROR",
                       "--output-level=quiet", "--skip-version-check"],
            "rclone": ["rclone", "copy", str(src), f"az:{self.staging}/bench/rclone{tag}", "--transfers", str(CONCURRENCY),
                       "--checkers", str(CONCURRENCY), "--azureblob-upload-concurrency", "1", "-q"],
        }[tool]  # fmt: skip

    def prefix(self, tool: str, tag: str) -> str:
        return f"bench/{'corpus' if tool in self.trees else tool}{tag}/"

    def first(self, tool: str, src: Path, tag: str, n: int, azcopy: str) -> dict[str, Any]:
        if tool not in self.trees:
            first, _ = self.run(tool, src, tag, azcopy)
        else:  # a file failed for good (Azurite resets connections under load): run again, as a user would
            first, proc = self.run(tool, src, tag, azcopy, ok=(0, 1))
            if proc.returncode:
                again, _ = self.run(tool, src, tag, azcopy)
                print(f"{tool}: {json.loads(proc.stdout)['failed']} failed, run again ({again:.1f}s)", file=sys.stderr)
                first += again
        uploaded = count(self.clients, self.prefix(tool, tag), self.staging)
        assert uploaded == n, f"{tool} uploaded {uploaded} of {n}"
        return {"first_s": round(first, 2), "first_files_per_s": round(n / first, 1), "reruns_s": []}

    def rerun(self, tool: str, src: Path, tag: str, n: int, azcopy: str, row: dict[str, Any]) -> None:
        again, proc = self.run(tool, src, tag, azcopy)
        if tool in self.trees:
            out = json.loads(proc.stdout)
            assert out["uploaded"] == 0 and out["failed"] == 0, out
        assert count(self.clients, self.prefix(tool, tag), self.staging) == n
        row["reruns_s"].append(round(again, 2))
        row["rerun_s"] = round(statistics.median(row["reruns_s"]), 2)
        row["rerun_files_per_s"] = round(n / row["rerun_s"], 1)

    def stop(self) -> None:
        self.storage.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--memory-files", type=int, default=100000)
    ap.add_argument("--reruns", type=int, default=3, help="re-runs per tool; the median is reported")
    ap.add_argument("--tools", default="corpus,azcopy,rclone", help="contenders for the 2,000-image drop")
    ap.add_argument(
        "--small-tools",
        default="corpus,rclone",
        help="contenders for the 20,000-file drop (AzCopy's first run there took over 25 minutes against Azurite)",
    )
    ap.add_argument(
        "--corpus-trees",
        default="",
        help="LABEL=DIR,...: corpus from each of these code trees (e.g. before=/tmp/base,after=.); the first one "
        "uploads, every one re-runs on the same data, round-robin with the peers (default: this tree, as `corpus`)",
    )
    ap.add_argument(
        "--hold-reruns",
        metavar="FILE",
        help="after the first runs, wait until FILE exists before the re-runs (a later code tree on the filled Azurite)",
    )
    add_storage_option(ap)
    args = ap.parse_args()
    trees = {k: str(Path(v).resolve()) for k, _, v in (t.partition("=") for t in args.corpus_trees.split(",") if t)}
    tools = {t for t in ("corpus", "azcopy", "rclone") if t in f"{args.tools},{args.small_tools}".split(",")}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        azcopy = find_azcopy(tmp) if "azcopy" in tools else ""
        # Every tool uploads the drop to the same Azurite (its own prefix), then the re-runs go
        # round-robin (corpus, peer, peer, corpus, ...) so that each tool sees the same Azurite
        # at the same moments. Azurite's in-memory store slows down as it fills (lookups scan
        # every blob), so the tool that uploads later is handicapped on its first run: for the
        # 20,000-file drop the peers go first and corpus last; a fresh Azurite per drop.
        drops = {"2000 x 80 KB": (args.images, 80_000, 5, args.tools), "20000 small": (args.small, 2_000, 5, args.small_tools)}
        shared = Contest(tmp, trees, args.storage_connection_string_env)
        results["storage"] = shared.storage.server
        try:
            for label, (n, size, dirs, which) in drops.items():
                if not n:
                    continue
                src = tmp / f"drop-{n}"
                total = make_drop(src, n, size, dirs)
                tag = label.split()[0]
                order = [t for t in ("azcopy", "rclone", "corpus") if t in which.split(",")]
                small = label == "20000 small"
                if not small:
                    order = order[-1:] + order[:-1]  # 2,000 files: corpus first, the peers after it
                contest = Contest(tmp, trees, args.storage_connection_string_env) if small else shared
                labels = list(contest.trees)
                if "corpus" in order:  # the first tree uploads; every tree re-runs
                    order[order.index("corpus")] = labels[0]
                row: dict[str, Any] = {"bytes": total, "upload_order": order, "trees": contest.trees}
                try:
                    for tool in order:
                        row[tool] = contest.first(tool, src, tag, n, azcopy)
                        print(json.dumps({label: {tool: row[tool]}}), file=sys.stderr, flush=True)
                    rerunners = [*order, *(t for t in labels[1:] if labels[0] in order)]
                    for t in rerunners:
                        row.setdefault(t, {"reruns_s": []})
                    while args.hold_reruns and not os.path.exists(args.hold_reruns):
                        time.sleep(5)  # waiting for the operator, not synchronising with the code under test
                    for i in range(args.reruns):
                        for tool in rerunners if i % 2 == 0 else rerunners[::-1]:
                            contest.rerun(tool, src, tag, n, azcopy, row[tool])
                        print(json.dumps({label: {t: row[t]["reruns_s"] for t in rerunners}}), file=sys.stderr, flush=True)
                finally:
                    if contest is not shared:
                        contest.stop()
                row["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
                for mine in labels:
                    for peer in ("azcopy", "rclone"):
                        if mine in row and peer in row and "first_files_per_s" in row[mine]:
                            row[f"ratio_first_{mine}_vs_{peer}"] = round(
                                row[mine]["first_files_per_s"] / row[peer]["first_files_per_s"], 2
                            )
                        if mine in row and peer in row and row[mine].get("rerun_s"):
                            row[f"ratio_rerun_{mine}_vs_{peer}"] = round(row[peer]["rerun_s"] / row[mine]["rerun_s"], 2)
                results[label] = row
                shutil.rmtree(src)
                print(json.dumps({label: row}), file=sys.stderr, flush=True)

            if args.memory_files:
                src = tmp / "drop-mem"
                for i in range(args.memory_files):
                    d = src / f"d{i % 100:03d}"
                    if i < 100:
                        d.mkdir(parents=True)
                    (d / f"f{i:06d}.png").write_bytes(b"\x89PNG" + i.to_bytes(4, "big"))
                # --dry-run: the walk, the remote listings, reading and hashing every file are all
                # done; only the Put Blobs are not, whose buffers are bounded by --concurrency anyway.
                # (A real 100,000-blob upload mostly measures how Azurite slows as a container grows.)
                cmd = [sys.executable, "-m", "corpus", "upload", str(src), "--domain", "bench", "--version", "mem",
                       "--concurrency", str(CONCURRENCY), "--json", "--dry-run"]  # fmt: skip
                # Measured in a fresh parent, so no earlier child (azcopy, rclone) shows in its peak.
                probe = (
                    "import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
                    "print(json.dumps({'out': p.stdout, 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
                )
                secs, proc = timed([sys.executable, "-c", probe, *cmd], shared.env)
                probed = json.loads(proc.stdout)
                peak_mb = probed["peak_kb"] / 1024
                summary = json.loads(probed["out"])
                assert summary["would_upload"] == args.memory_files, summary
                results["memory"] = {"files": args.memory_files, "seconds": round(secs, 1), "peak_rss_mb": round(peak_mb, 1)}
        finally:
            shared.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

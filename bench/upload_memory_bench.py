"""Peak memory of ``corpus upload --dry-run --json`` over a 100,000-file tree, for one or more code trees.

The probe of ``bench/upload_bench.py`` (peak RSS of the whole process, measured in a fresh parent),
run for each tree given, twice, round-robin, against one private Azurite; plus the RSS of a command
that stops right after building the parser (``corpus upload /nonexistent``: start-up cost).

    git archive BASE | tar -x -C /tmp/base
    .venv/bin/python bench/upload_memory_bench.py /tmp/base .
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import Azurite  # noqa: E402

PROBE = (
    "import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
    "print(json.dumps({'out': p.stdout, 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def main() -> None:
    trees = [str(Path(t).resolve()) for t in sys.argv[1:]] or [str(REPO)]
    files = int(os.environ.get("FILES", "100000"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "drop")
        for i in range(files):
            d = src / f"d{i % 100:03d}"
            if i < 100:
                d.mkdir(parents=True)
            (d / f"f{i:06d}.png").write_bytes(b"\x89PNG" + i.to_bytes(4, "big"))
        az = Azurite(Path(tmp)).start()
        try:
            out: dict[str, list[dict[str, float]]] = {}
            for rnd in range(2):
                for tree in trees:
                    env = {k: v for k, v in os.environ.items() if not k.startswith("CORPUS_")}
                    env.pop("REQUESTS_CA_BUNDLE", None)
                    env.pop("CURL_CA_BUNDLE", None)
                    env |= {
                        "CorpusStorage": az.connection_string,
                        "PYTHONPATH": tree,
                        "CORPUS_CACHE_DIR": f"{tmp}/cache-{rnd}-{len(out)}",
                    }
                    corpus = [sys.executable, "-m", "corpus", "upload"]
                    start = subprocess.run(
                        [sys.executable, "-c", PROBE, *corpus, "/nonexistent", "--domain", "d", "--version", "v"],
                        env=env, capture_output=True, text=True, cwd=tmp,
                    )  # fmt: skip
                    args = [str(src), "--domain", "bench", "--version", "mem", "--json", "--dry-run"]
                    run = subprocess.run(
                        [sys.executable, "-c", PROBE, *corpus, *args],
                        env=env, capture_output=True, text=True, cwd=tmp,
                    )  # fmt: skip
                    probed = json.loads(run.stdout)
                    assert json.loads(probed["out"])["would_upload"] == files
                    out.setdefault(tree, []).append(
                        {
                            "start_rss_mb": round(json.loads(start.stdout)["peak_kb"] / 1024, 1),
                            "upload_peak_rss_mb": round(probed["peak_kb"] / 1024, 1),
                        }
                    )
            print(json.dumps({"files": files, "load_average": os.getloadavg(), "trees": out}, indent=2))
        finally:
            az.stop()


if __name__ == "__main__":
    main()

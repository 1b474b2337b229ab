"""The README cannot drift from what works: its first command and its ten-minute tour, extracted
from README.md and run in order, as a newcomer would, on a fresh copy of the repository.

The copy holds what a clone holds (the files git tracks, plus new files not yet committed and not
ignored). Its ``.venv`` is this test's own environment (``CORPUS_SKIP_SETUP=1``: CI has just set it
up with ``./dev test``), and ``CorpusStorage`` points at a private Azurite, so ``./dev demo`` starts
no Azurite of its own. Everything else (``./dev demo``, activating ``.venv``, each ``corpus``
command with its pipes and here-documents) runs exactly as written in the README, with bash.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.e2e

FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def sh_blocks(markdown: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(markdown)]


def readme_parts() -> tuple[list[str], list[str]]:
    """(the blocks before the tour: the first command and PATH; the tour's blocks, in order)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Ten-minute tour")
    end = text.index("\n---", start)
    return sh_blocks(text[:start]), sh_blocks(text[start:end])


def fresh_copy(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def test_the_readme_is_short_and_its_first_screen_says_how_to_start():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first_screen = "\n".join(text.splitlines()[:40])
    setup, tour = readme_parts()
    assert setup[0].splitlines()[0].startswith("./dev demo") and "./dev test" in setup[0]
    assert ". .venv/bin/activate" in first_screen and "corpus-images" in first_screen
    assert "pip install -e '.[torch]'" in first_screen
    assert len(tour) >= 5


def test_the_readme_first_command_and_tour_run_as_written(env, tmp_path):
    clone = fresh_copy(tmp_path / "clone")
    work_env = {**env, "CORPUS_SKIP_SETUP": "1", "PYTHONPATH": str(clone), "TERM": "dumb"}
    setup, tour = readme_parts()

    first = [line for line in setup[0].splitlines() if line.strip() and not line.startswith("./dev test")]
    demo = subprocess.run(
        ["bash", "-euc", "\n".join(first)], cwd=clone, env=work_env, capture_output=True, text=True, timeout=600
    )
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert demo.stdout.rstrip().endswith(". .venv/bin/activate"), demo.stdout[-2000:]
    assert "birds" in demo.stdout and "Traceback" not in demo.stderr

    # The rest of the first screen (activating .venv), then the tour, block by block, in one shell.
    script = "\n".join(["set -eu", *setup[1:], *tour])
    run = subprocess.run(["bash", "-c", script], cwd=clone, env=work_env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-4000:]}"
    assert "Traceback" not in run.stderr
    out = run.stdout
    assert os.path.exists(clone / "robin-net-1.jsonl") and (clone / "robin-net-1.jsonl").stat().st_size > 0
    cropped = re.search(r"(\d+) images in (\d+) crop sets from (\d+) source originals", out)
    assert cropped and int(cropped.group(1)) > 0 and int(cropped.group(3)) > 0, out
    assert "birds-cls:1  ready" in out
    assert "training sets: birds-cls:1" in out and "models:        robin-net:1" in out
    assert "all" in out and "present with their MD5" in out
    assert any((clone / "data").rglob("*.jpg"))


def test_the_distribution_name_is_ours_and_every_install_line_works_from_a_clone():
    """Trap 1: ``pip install corpus`` installs an unrelated PyPI package (a 2018 dictionary)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "corpus-images" and project["scripts"]["corpus"] == "corpus.cli.main:run"
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "corpus").rglob("*.py"))]
    bare = re.compile(r"pip install[^\n]*?['\" ]corpus(\[|['\" ]|$)", re.M)
    assert [str(p.relative_to(REPO)) for p in pages if bare.search(p.read_text(encoding="utf-8"))] == []
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[torch]'" in readme and "pip install -e ." in readme

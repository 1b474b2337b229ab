"""Import budget of the commands users re-run: WHICH modules load, measured in a subprocess.

A re-run of ``corpus upload`` or ``corpus pull`` with nothing to do is dominated by start-up
(issue 26: imports were ~0.30 s of 0.45 s). Seconds are noise on a shared machine; the set of
modules is not. ``python -X importtime`` prints one line per module imported, so these tests
assert on names (as datachain's ``tests/test_import_time.py`` does): the blob SDK, the gallery's
``urllib.request`` + ``webbrowser``, Pillow and ``requests`` must stay out of these paths.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus.domain.manifest import ManifestEntry, hex_to_b64
from corpus.store.settings import Settings
from tests.support import jpeg
from tests.trainset_support import publish_ready

# Never on a re-run's path: each is a large import that such a run has no use for.
FORBIDDEN = (
    "azure.storage.blob",  # only to send files (upload) or never (pull: plain GETs)
    "urllib.request",  # corpus gallery's probe, at the top of corpus/cli/gallery.py until issue 26
    "webbrowser",  # corpus gallery --open
    "PIL",  # ingest and transforms, never the transfer commands
    "requests",  # only with a proxy configured (corpus.transfer.bloblist)
    "corpus.app",  # the use cases and their runtime
    "http.client",  # both stdlib transports speak through corpus.store.wire (fetch.py imported it, and ssl with it)
    "email",  # http.client's header parser; x-ms-date is bloblist.http_date
)


def imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output (``import time: self | cumulative | name``)."""
    out = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                out.add(name)
    return out


def forbidden_in(mods: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    banned = [f for f in FORBIDDEN if f not in allowed]
    return sorted(m for m in mods if any(m == f or m.startswith(f + ".") for f in banned))


def run_timed(env: dict[str, str], cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "corpus", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    return proc, imported(proc.stderr)


def quiet_env(env: dict[str, str]) -> dict[str, str]:
    """The test environment without this machine's CA-bundle variables (they now change nothing:
    the stdlib transport honours them; kept out so a failure points at code, not at the box)."""
    return {k: v for k, v in env.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}


def test_every_command_starts_without_the_gallery_probe() -> None:
    """Building the parser (which every command does) loads no command's heavy dependencies."""
    code = "from corpus.cli.main import build_parser; build_parser()"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mods = imported(proc.stderr)
    assert "corpus.cli.main" in mods  # the measurement saw the imports at all
    assert forbidden_in(mods) == []
    assert not any(m.startswith("azure") for m in mods)


@pytest.mark.e2e
def test_upload_rerun_with_nothing_to_do_loads_no_sdk(env: dict[str, str], tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    for tag in ("a", "b"):
        (drop / tag).mkdir(parents=True)
        for i in range(3):
            (drop / tag / f"{i}.jpg").write_bytes(jpeg(i + (10 if tag == "b" else 0)))
    args = ("upload", str(drop), "--domain", "birds", "--version", "v1", "--json")
    env = quiet_env(env)
    first, first_mods = run_timed(env, tmp_path, *args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["uploaded"] == 6 and "corpus.upload.sender" in first_mods  # the measurement sees imports
    assert not any(m.startswith("azure") for m in first_mods)  # sending needs no SDK either (corpus.upload.sender)
    again, mods = run_timed(env, tmp_path, *args)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["uploaded"] == 0, summary
    assert forbidden_in(mods) == []
    assert not any(m.startswith("azure") for m in mods)  # the listings (the first is the reachability check): stdlib


@pytest.mark.e2e
def test_pull_rerun_with_nothing_to_do_loads_no_blob_sdk(env: dict[str, str], clients, tmp_path: Path) -> None:
    clients.ensure(containers=("birds",))
    entries = []
    for i in range(4):
        data = jpeg(i)
        name = f"original/red/v1/{i}.jpg"
        clients.container("birds").upload_blob(name, data)
        md5 = hex_to_b64(hashlib.md5(data).hexdigest())
        entries.append(
            ManifestEntry(
                container="birds", blob=name, md5=md5, size=len(data), width=64, height=48, domain="birds",
                path="red", version="v1", transform=None, source_blob=name, source_md5=md5, labels=("red",), split="train",
            )
        )  # fmt: skip
    entries.sort(key=lambda e: e.sort_key)
    publish_ready(clients, Settings.from_env(env).trainsets_container, "birds-cls", "1", entries)
    dest = tmp_path / "out"
    env = quiet_env(env)
    first, _ = run_timed(env, tmp_path, "pull", "birds-cls:1", str(dest), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["downloaded"] == 4
    again, mods = run_timed(env, tmp_path, "pull", "birds-cls:1", str(dest), "--json")
    assert again.returncode == 0, again.stderr
    s = json.loads(again.stdout)
    assert (s["downloaded"], s["present"]) == (0, 4), s
    assert "corpus.pull.runner" in mods
    # The training set's row and its manifest are plain GETs too: no Azure SDK, no `requests`.
    assert forbidden_in(mods) == []
    assert not any(m.startswith("azure") for m in mods)

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from corpus.app.runtime import Runtime
from corpus.store.settings import Settings
from corpus.store.storage import Clients
from tests.support import Azurite, prepare_app_dir

# Hypothesis's per-example deadline is a timed assertion: on a loaded 2-core CI machine a pure test
# fails with DeadlineExceeded for nothing. Properties are checked, time is not (see docs/benchmarks.md).
hypothesis_settings.register_profile("corpus", deadline=None)
hypothesis_settings.load_profile("corpus")

# `./dev test` runs pytest-xdist with --dist loadfile: a file is one unit of work on one worker, handed
# out in collection order (--no-loadscope-reorder). The suite's wall time is then at least its longest
# file, and a long file that starts last ends last: so the slowest files (mostly e2e: a private
# Azurite, `corpus host` subprocesses, waits on conditions) are collected first, the rest after in
# their usual order. Scheduling only: no test depends on another file's, and within a file the order
# is unchanged (the gallery's module world relies on it). Roughly slowest first, from --durations.
SLOW_FILES_FIRST = (
    "test_gallery_e2e.py",
    "test_newcomer_e2e.py",
    "test_ingest_e2e.py",
    "test_readme_tour.py",
    "test_query_e2e.py",
    "test_transforms_e2e.py",
    "test_trainsets_e2e.py",
    "test_devhost_fidelity.py",
    "test_fanout_e2e.py",
    "test_queries_e2e.py",
    "test_export_e2e.py",
    "test_trainset_dataout_e2e.py",
    "test_dupes_e2e.py",
    "test_reconcile_e2e.py",
    "test_pull_e2e.py",
    "test_catalog_engines.py",
    "test_harden_e2e.py",
    "test_harden3_e2e.py",
    "test_upload_e2e.py",
    "test_lean_http.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # only on an xdist worker: a serial run keeps its order
        return
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order is kept


@pytest.fixture(scope="module")
def azurite_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    """One private Azurite for a whole test module (for tests that each use their own table or
    container in it), as SDK clients."""
    az = Azurite(Path(tmp_path_factory.mktemp("azurite"))).start()
    try:
        yield Clients(Settings.from_env({"CorpusStorage": az.connection_string}).connection)
    finally:
        az.stop()


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    az = Azurite(tmp_path).start()
    try:
        yield az
    finally:
        az.stop()


@pytest.fixture
def env(azurite: Azurite, tmp_path: Path) -> dict[str, str]:
    """Environment for subprocesses (host, CLI): both connections point at the private Azurite."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
    return {
        **base,
        "CorpusStorage": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "PYTHONUNBUFFERED": "1",
        "CORPUS_CACHE_DIR": str(tmp_path / "cache"),  # the upload MD5 cache, per test
    }


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CORPUS_CACHE_DIR", env["CORPUS_CACHE_DIR"])  # in-process uploads, too
    return Settings.from_env(env)


@pytest.fixture
def rt(settings: Settings) -> Runtime:
    runtime = Runtime.create(settings)
    runtime.ensure_resources()
    return runtime


@pytest.fixture
def clients(rt: Runtime) -> Clients:
    return rt.clients


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return prepare_app_dir(tmp_path)

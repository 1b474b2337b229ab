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

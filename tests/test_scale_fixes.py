"""What the scale runs (bench/scale_bench.py, docs/scale.md) found growing with the corpus instead
of with the answer, fixed and pinned here on the in-memory store (fast, no Azurite)."""

from __future__ import annotations

import json
import threading

import pytest

from corpus.app.queries import count
from corpus.app.runtime import Runtime
from corpus.app.transform_jobs import on_transform_job
from corpus.domain.messages import TransformJob
from corpus.domain.paths import SetRef
from corpus.store.memory_tables import MemoryTables
from tests.support import jpeg
from tests.test_usecases_memory import drain, stage


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime.in_memory()
    runtime.ensure_resources()
    return runtime


def transform(rt: Runtime, path: str, version: str = "1", size: int = 16) -> None:
    request = {
        "domain": "birds",
        "source": {"path": path, "version": "v1"},
        "transform": {"name": "thumbnail", "version": version, "args": {"size": size}},
    }
    rt.send(rt.settings.transform_queue, json.dumps(request))
    drain(rt)


def images_entities(rt: Runtime) -> int:
    assert isinstance(rt.clients, MemoryTables)
    return sum(n for key, n in rt.clients.entities().items() if key.startswith("Images/"))


def test_distinct_sources_are_exact_under_duplicates_and_versions_and_read_no_image_row(rt: Runtime) -> None:
    for i in range(12):
        stage(rt, f"birds/v1/{'red' if i < 8 else 'blue'}/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    transform(rt, "red")
    transform(rt, "red", version="2", size=8)  # same operation, other version: same sources
    transform(rt, "blue")
    # two more deliveries of a job that is done
    job = TransformJob("birds", ("red",), "v1", "0.jpg", "thumbnail", "1")
    on_transform_job(rt, job)
    on_transform_job(rt, job)
    before = images_entities(rt)
    c = count(rt.catalog, "birds", (), op="thumbnail")
    assert (c.images, c.sets, c.sources) == (8 + 8 + 4, 3, 12)
    # O(sets): counter shards only, however many images the sets hold
    assert images_entities(rt) - before < 20
    assert count(rt.catalog, "birds", ("red",), op="thumbnail").sources == 8
    assert count(rt.catalog, "birds", (), transform="thumbnail:2").sources == 8
    assert count(rt.catalog, "birds", (), transform="thumbnail").sources == 12


def test_source_markers_count_each_file_once_under_concurrent_writers(rt: Runtime) -> None:
    ref = SetRef("birds", ("red",), "v1")
    files = [f"{i}.jpg" for i in range(150)]
    added: list[int] = []

    def writer(k: int) -> None:
        # overlapping batches, in different orders and sizes, from 6 writers at once
        mine = files[k * 20 : k * 20 + 60] if k % 2 else list(reversed(files))
        added.append(rt.catalog.images.mark_sources(ref, "thumbnail", mine))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(added) == 150 == rt.catalog.images.sources_count(ref, "thumbnail")
    assert rt.catalog.images.mark_sources(ref, "thumbnail", files) == 0  # a redelivery adds nothing
    assert rt.catalog.images.sources_count(ref, "thumbnail") == 150
    assert rt.catalog.images.sources_count(ref, "blur") == 0

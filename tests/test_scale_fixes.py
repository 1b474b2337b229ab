"""What the scale runs (bench/scale_bench.py, docs/scale.md) found growing with the corpus instead
of with the answer, fixed and pinned here on the in-memory store (fast, no Azurite)."""

from __future__ import annotations

import json
import threading

import pytest
from azure.data.tables import UpdateMode

from corpus.app import migrate as migrate_mod
from corpus.app.migrate import migrate
from corpus.app.queries import Count, count, find_sets
from corpus.app.runtime import Runtime
from corpus.app.transform_jobs import on_transform_job
from corpus.domain import keys
from corpus.domain.errors import InvalidNameError
from corpus.domain.messages import TransformJob
from corpus.domain.paths import SetRef
from corpus.store.memory_tables import MemoryTables
from corpus.store.rows import schema_of
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


def test_count_transform_by_name_does_not_count_the_sources_of_pipelines_with_that_step(rt: Runtime) -> None:
    """``--transform thumbnail`` is the transforms named thumbnail; a pipeline with a thumbnail step
    is ``--op thumbnail`` only, so the sources it adds are not this name's."""
    for i in range(4):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    transform(rt, "red")
    for i in range(4, 6):  # the set grows after the thumbnail transform ran
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    steps = {"steps": [{"name": "thumbnail", "args": {"size": 8}}]}
    request = {"domain": "birds", "source": {"path": "red", "version": "v1"},
               "transform": {"name": "pipeline", "version": "1", "args": steps}}  # fmt: skip
    rt.send(rt.settings.transform_queue, json.dumps(request))
    drain(rt)
    assert count(rt.catalog, "birds", (), transform="thumbnail") == Count(4, 1, 4)
    assert count(rt.catalog, "birds", (), transform="pipeline") == Count(6, 1, 6)
    assert count(rt.catalog, "birds", (), op="thumbnail") == Count(10, 2, 6)


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


def make_old(rt: Runtime) -> None:
    """Turn the Images table back into what the code before source markers and schema versions
    wrote: no marker partitions, no ``Schema`` property on image rows."""
    assert isinstance(rt.clients, MemoryTables)
    table = rt.clients.table_client("Images")
    for e in list(table.list_entities()):
        if "!s!" in e["PartitionKey"]:
            table.delete_entity(e["PartitionKey"], e["RowKey"])
        elif "Schema" in e:
            old = {k: v for k, v in e.items() if k != "Schema"}
            table.upsert_entity(old, mode=UpdateMode.REPLACE)


def test_migrate_source_markers_is_resumable_and_idempotent(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(9):
        stage(rt, f"birds/v1/{('red', 'blue', 'green')[i % 3]}/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    for path in ("red", "blue", "green"):
        transform(rt, path)
    make_old(rt)
    assert count(rt.catalog, "birds", (), op="thumbnail").sources == 0  # old rows: not counted yet
    monkeypatch.setattr(migrate_mod, "SET_PAGE", 2)  # several pages, so a stop can fall between them

    # stopped after the first page that migrated something (sets: 3 originals, then 3 transformed)
    first = next(p for p in migrate(rt.catalog, "source-markers") if p.rows_migrated)
    assert first.continuation
    assert 0 < count(rt.catalog, "birds", (), op="thumbnail").sources < 9
    rest = list(migrate(rt.catalog, "source-markers", continuation=first.continuation))
    assert rest and rest[-1].continuation is None
    assert first.rows_migrated + rest[-1].rows_migrated == 9
    assert count(rt.catalog, "birds", (), op="thumbnail") == Count(9, 3, 9)
    # a whole second run, and one from the start: nothing left below version 2, nothing counted twice
    again = list(migrate(rt.catalog, "source-markers"))
    assert sum(p.rows_migrated for p in again[-1:]) == 0 and again[-1].rows_below == 0
    assert count(rt.catalog, "birds", (), transform="thumbnail:1") == Count(9, 3, 9)
    # the stamp: every transformed row is at the version the step brings them to
    assert isinstance(rt.clients, MemoryTables)
    rows = [e for e in rt.clients.table_client("Images").list_entities() if "!t!" in e["PartitionKey"] and "File" in e]
    assert len(rows) == 9 and {schema_of(e) for e in rows} == {2}


def test_a_killed_migration_between_marking_and_stamping_counts_each_source_once(rt: Runtime) -> None:
    for i in range(4):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    transform(rt, "red")
    make_old(rt)
    ref, t = SetRef("birds", ("red",), "v1"), ("thumbnail", "1")
    page = next(rt.catalog.images.pages_below(ref, t, 2))
    rt.catalog.mark_sources(ref, t, [image.source for _, image in page[:3]])  # killed here: marked, not stamped
    list(migrate(rt.catalog, "source-markers"))
    assert count(rt.catalog, "birds", (), op="thumbnail").sources == 4
    with pytest.raises(InvalidNameError):
        list(migrate(rt.catalog, "no-such-step"))


def test_gunzip_chunks_inflates_a_bounded_amount_at_a_time() -> None:
    """A manifest range of 4 MiB inflates ~10x: reading one must not hold it all at once."""
    import gzip

    from corpus.domain import manifest

    blocks = [f'{{"n": {i}, "blob": "original/red/v1/{i:07d}.jpg"}}\n'.encode() for i in range(60_000)]
    members = [gzip.compress(b"".join(blocks[k : k + 30_000]), mtime=0) for k in range(0, 60_000, 30_000)]
    stream = b"".join(members)
    step = 4 << 20
    chunks = [stream[i : i + step] for i in range(0, len(stream), step)] + [b""]
    parts = list(manifest.gunzip_chunks(chunks))
    assert b"".join(parts) == b"".join(blocks)
    assert max(len(p) for p in parts) <= manifest.GUNZIP_OUT < len(b"".join(blocks)) // 2
    small = [stream[i : i + 999] for i in range(0, len(stream), 999)]  # small ranges, members split anywhere
    assert b"".join(manifest.gunzip_chunks(small)) == b"".join(blocks)


def test_a_tag_query_reads_entities_in_proportion_to_its_answer_not_to_the_domain(rt: Runtime) -> None:
    """Sets are fetched by point reads: ``RowKey eq a or RowKey eq b`` is a partition scan on
    Azure (the Table design guide), which the in-memory table counts as such."""
    assert isinstance(rt.clients, MemoryTables)
    for j in range(300):
        ref = SetRef("birds", (f"s{j:03d}",), "v1")
        rt.catalog.sets.ensure(ref, ["rare" if j % 100 == 7 else "common", f"s{j:03d}"], ref.original_prefix())
    before = rt.clients.entities()["ImageSets/birds"]
    found = list(find_sets(rt.catalog, ["birds"], ("rare",)))
    assert [r.path for r in found] == ["s007", "s107", "s207"]
    assert rt.clients.entities()["ImageSets/birds"] - before <= 2 * len(found)  # index rows + point reads


def test_the_catalog_reads_images_but_not_the_source_markers_beside_them(rt: Runtime) -> None:
    """Source markers share the ``Images`` table (partitions ``<domain>!s!…``): the catalog's read
    of images skips them instead of refusing a partition with no set."""
    from corpus.catalog.storage import CatalogStorage

    for i in range(3):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    transform(rt, "red")
    assert isinstance(rt.clients, MemoryTables)
    assert any(keys.is_source_partition(pk.split("/", 1)[1]) for pk in rt.clients.entities() if pk.startswith("Images/"))
    store = CatalogStorage(rt.clients, rt.blobs, "catalog")
    images = store.images(None, None)
    assert images.num_rows == 6  # 3 originals, 3 thumbnails


def test_the_facts_backfill_runs_as_a_migration_step_and_a_second_run_fills_nothing(rt: Runtime) -> None:
    from corpus.app.migrate import Context

    for i in range(3):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    assert isinstance(rt.clients, MemoryTables)
    table = rt.clients.table_client("Images")
    base = {"PartitionKey", "RowKey", "File", "BlobPath", "Size", "MD5", "ContentType", "Width", "Height", "Source", "CreatedAt"}
    for e in list(table.list_entities()):
        if "File" in e:  # an image row as recorded before facts existed
            table.upsert_entity({k: v for k, v in e.items() if k in base}, mode=UpdateMode.REPLACE)
    ref = SetRef("birds", ("red",), "v1")
    assert all(r.facts is None for r in rt.catalog.images.iter(ref))
    from datetime import UTC, datetime

    from corpus.store.trainsets_table import snapshot_images

    pk, created = keys.image_partition_key(ref), datetime.now(UTC)  # a training set's snapshot, before the backfill
    assert len(list(snapshot_images(table, pk, "", created))) == 3
    ctx = Context(rt.catalog, rt.blobs, rt.settings.max_pixels)
    done = list(migrate(ctx, "facts"))
    assert done[-1].rows_migrated == 3 and done[-1].failed == 0 and done[-1].continuation is None
    assert all(r.facts is not None for r in rt.catalog.images.iter(ref))
    assert len(list(snapshot_images(table, pk, "", created))) == 3, "the backfill kept each row's insert time"
    assert list(migrate(ctx, "facts"))[-1].rows_migrated == 0


def test_a_migration_during_a_build_leaves_the_builds_snapshot_of_images_whole(rt: Runtime) -> None:
    from datetime import UTC, datetime

    from corpus.store.trainsets_table import snapshot_images

    for i in range(4):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i, size=(32, 24)))
    drain(rt)
    transform(rt, "red")
    make_old(rt)
    ref, t = SetRef("birds", ("red",), "v1"), ("thumbnail", "1")
    pk = keys.image_partition_key(ref, t)
    table = rt.clients.table_client("Images")
    created = datetime.now(UTC)  # a training set registered now: its snapshot holds these 4 images
    assert len(list(snapshot_images(table, pk, "", created))) == 4
    list(migrate(rt.catalog, "source-markers"))  # runs beside the app while the build goes on
    assert len(list(snapshot_images(table, pk, "", created))) == 4, "a continuation or retry reads the same records"

"""The set count refresh keeps the entity's counts and ETag it last wrote (issue 26): it reads the
entity only when another writer changed it since, and is still exact with two processes."""

from __future__ import annotations

from corpus.domain.paths import SetRef
from corpus.store.catalog import Catalog
from corpus.store.memory import MemoryBlobStore
from corpus.store.memory_tables import MemoryTables
from corpus.store.rows import ImageRow
from corpus.store.settings import TABLE_SETS

REF = SetRef("birds", ("red",), "v1")


def image(i: int) -> ImageRow:
    return ImageRow(f"{i}.jpg", f"original/red/v1/{i}.jpg", 100 + i, f"{i:032x}", "image/jpeg", 8, 8)


def set_calls(tables: MemoryTables) -> int:
    return sum(n for key, n in tables.calls().items() if key.startswith(TABLE_SETS + "/"))


def test_two_processes_refresh_to_the_exact_count_and_a_lone_writer_skips_the_read() -> None:
    tables = MemoryTables()
    a, b = Catalog(tables, MemoryBlobStore()), Catalog(tables, MemoryBlobStore())  # two processes, one table
    a.sets.ensure(REF, ["red"], REF.original_prefix())
    assert a.record_images(REF, [image(1), image(2)]) == [True, True]
    assert a.refresh_counts(REF) == (2, 203)  # first refresh: reads the entity, then writes
    before = set_calls(tables)
    assert a.record_images(REF, [image(3)]) == [True]
    assert a.refresh_counts(REF) == (3, 306)
    assert set_calls(tables) - before == 1  # the write alone, on the ETag it kept

    assert b.record_images(REF, [image(4)]) == [True]  # the other process writes meanwhile
    assert b.refresh_counts(REF) == (4, 410)
    assert a.record_images(REF, [image(5)]) == [True]
    before = set_calls(tables)
    assert a.refresh_counts(REF) == (5, 515)  # its kept ETag is stale: 412, read, write
    assert set_calls(tables) - before == 3
    row = a.sets.get(REF)
    assert row is not None and (row.image_count, row.total_bytes) == (5, 515)

    before = set_calls(tables)
    assert b.refresh_counts(REF) == (5, 515)  # b kept (4, 410): not enough, and stale: read, nothing to write
    assert set_calls(tables) - before == 2
    assert b.refresh_counts(REF) == (5, 515)  # now it knows (5, 515) is stored: no request at all
    assert set_calls(tables) - before == 2

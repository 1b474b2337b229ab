"""The packed ``Lineage`` index (version 2): few rows per block, the same answers as one row per image."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from azure.data.tables import UpdateMode
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.domain import keys
from corpus.store.memory_tables import MemoryTable
from corpus.store.storage import Clients
from corpus.store.trainsets_table import (
    MAX_USES_CHARS,
    BlobUse,
    LineageTable,
    blob_bucket,
    packed_rows,
)

_names = itertools.count()


def memory_index(name: str) -> LineageTable:
    table: Any = MemoryTable(name)  # the in-memory TableClient stand-in
    return LineageTable(table)


def legacy_rows(uses: list[BlobUse]) -> list[dict[str, Any]]:
    """Version-1 rows, one per image, exactly as builds before issue 26 wrote them."""
    return [
        {
            "PartitionKey": blob_bucket(u.container, u.source),
            "RowKey": keys.compose(u.container, u.source, u.trainset[0], u.trainset[1], u.blob),
            "Container": u.container,
            "Source": u.source,
            "Blob": u.blob,
            "Name": u.trainset[0],
            "Version": u.trainset[1],
        }
        for u in uses
    ]


def answers(index: LineageTable, sources: set[tuple[str, str]]) -> dict[tuple[str, str], set[BlobUse]]:
    return {s: set(index.uses_of(*s)) for s in sources}


def expected(uses: list[BlobUse]) -> dict[tuple[str, str], set[BlobUse]]:
    out: dict[tuple[str, str], set[BlobUse]] = {}
    for u in uses:
        out.setdefault((u.container, u.source), set()).add(u)
    return out


def a_set(container: str, folder: str, n: int, trainset: tuple[str, str]) -> list[BlobUse]:
    return [BlobUse(container, f"{folder}/{i:05d}.jpg", f"{folder}/{i:05d}.jpg", trainset) for i in range(n)]


def test_a_block_of_10000_images_in_sets_of_1000_is_a_few_hundred_rows_in_a_few_transactions() -> None:
    index = memory_index("Lineage")
    uses = [u for k in range(10) for u in a_set("bench", f"original/s{k:03d}/v1", 1000, ("t", "1"))]
    sent = index.add_blob_uses(uses, 0)
    rows = list(index.table.list_entities())
    assert len(rows) <= 10 * 16 and sent <= 10, (len(rows), sent)
    assert answers(index, {(u.container, u.source) for u in uses[::97]}) == expected(uses[::97])
    again = index.add_blob_uses(uses, 0)  # a retried block: the same rows, nothing added
    assert again == sent and len(list(index.table.list_entities())) == len(rows)


names = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/"), min_size=1, max_size=12)


@st.composite
def builds(draw: Any) -> list[tuple[int, list[BlobUse]]]:
    """Blocks of uses by a few training sets: originals used as themselves, and transforms of them
    (a transformed blob whose source is an original), with hostile names."""
    folders = draw(st.lists(st.sampled_from(["original/a/v1", "original/a/b/v1", "original/é ü/v2", "original"]), min_size=1))
    files = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    blocks = []
    for block in range(draw(st.integers(1, 3))):
        uses = []
        for trainset in draw(st.lists(st.sampled_from([("t", "1"), ("t", "2"), ("other!", "x")]), min_size=1, unique=True)):
            for folder, file in draw(st.lists(st.tuples(st.sampled_from(folders), st.sampled_from(files)), max_size=12)):
                source = f"{folder}/{file}"
                blob = source if draw(st.booleans()) else f"transform/thumb/1/{folder.split('/', 1)[-1]}/{file}.png"
                uses.append(BlobUse(draw(st.sampled_from(["birds", "cats"])), source, blob, trainset))
        blocks.append((block, uses))
    return blocks


@settings(max_examples=150)
@given(blocks=builds())
def test_packed_and_one_row_per_image_give_the_same_answers(blocks: list[tuple[int, list[BlobUse]]]) -> None:
    packed, legacy = memory_index("P"), memory_index("L")
    everything = [u for _, uses in blocks for u in uses]
    for block, uses in blocks:
        packed.add_blob_uses(uses, block)
        for row in legacy_rows(uses):
            legacy.table.upsert_entity(row, mode=UpdateMode.REPLACE)
    sources = {(u.container, u.source) for u in everything} | {("birds", "original/a/v1/unused")}
    want = expected(everything)
    assert answers(packed, sources) == {s: want.get(s, set()) for s in sources}
    assert answers(legacy, sources) == answers(packed, sources)


def test_rows_written_by_older_builds_are_still_read_beside_packed_ones() -> None:
    index = memory_index("Lineage")
    old = BlobUse("birds", "original/red/v1/r1.jpg", "transform/thumb/1/red/v1/r1.png", ("old", "1"))
    new = BlobUse("birds", "original/red/v1/r1.jpg", "original/red/v1/r1.jpg", ("new", "1"))
    for row in legacy_rows([old]):
        index.table.upsert_entity(row, mode=UpdateMode.REPLACE)
    index.add_blob_uses([new], 0)
    assert set(index.uses_of("birds", "original/red/v1/r1.jpg")) == {old, new}
    assert list(index.uses_of("birds", "original/red/v1/r2.jpg")) == []


def test_a_folder_of_long_names_splits_into_parts_under_the_property_limit() -> None:
    index = memory_index("Lineage")
    folder = "original/" + "d" * 200 + "/v1"
    uses = [
        BlobUse("birds", f"{folder}/{'é' * 300}{i:04d}.jpg", f"{folder}/{'é' * 300}{i:04d}.jpg", ("t", "1")) for i in range(2000)
    ]
    rows = packed_rows(uses, 3)
    assert max(len(str(r["Uses"])) for r in rows) <= MAX_USES_CHARS
    assert len(rows) > 16, "more than one part in some bucket"
    index.add_blob_uses(uses, 3)
    assert answers(index, {(u.container, u.source) for u in uses}) == expected(uses)


@pytest.mark.e2e
def test_on_azurite_big_parts_fit_the_service_limits_and_read_back(azurite_clients: Clients) -> None:
    """Rows near the 32 K-unit property limit, several to a transaction under the 4 MiB body limit,
    with non-BMP names (two UTF-16 units each): Azurite takes them and the lookups find every use."""
    name = f"Lineage{next(_names)}"
    azurite_clients.ensure(tables=(name,))
    index = LineageTable(azurite_clients.table_client(name))
    folder = "original/x/v1"
    uses = [
        BlobUse("birds", f"{folder}/{'🐦' * 120}{i:05d}.jpg", f"{folder}/{'🐦' * 120}{i:05d}.jpg", ("t", "1"))
        for i in range(3000)
    ]
    uses += [BlobUse("birds", f"{folder}/{i:05d}.jpg", f"transform/crop/1/x/v1/{i:05d}.png", ("t", "2")) for i in range(500)]
    index.add_blob_uses(uses, 0)
    assert answers(index, {(u.container, u.source) for u in uses[::7]}) == expected(uses[::7])


def test_a_transaction_whose_connection_dropped_is_sent_again() -> None:
    """The pipeline retries no POST whose connection dropped; the index's upserts are safe to send again."""
    from azure.core.exceptions import ServiceResponseError

    class Dropping(MemoryTable):
        drops = 2

        def submit_transaction(self, operations: Any, **kwargs: Any) -> Any:
            if self.drops:
                self.drops -= 1
                raise ServiceResponseError("Connection aborted.")
            return super().submit_transaction(operations, **kwargs)

    table: Any = Dropping("Lineage")
    uses = a_set("birds", "original/red/v1", 50, ("t", "1"))
    LineageTable(table).add_blob_uses(uses, 0)
    assert table.drops == 0 and answers(LineageTable(table), {(u.container, u.source) for u in uses}) == expected(uses)
    table.drops = 3  # more drops than attempts: the error reaches the build (its message is retried)
    with pytest.raises(ServiceResponseError):
        LineageTable(table).add_blob_uses(a_set("birds", "original/blue/v1", 1, ("t", "1")), 0)

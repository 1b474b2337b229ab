"""One conformance suite for the store ports, run against both implementations.

``azurite``: the Azure SDK adapter (corpus.store.azure_ports) on a private Azurite, one per module;
``memory``: corpus.store.memory. Every semantic the use cases rely on is pinned here, so the in-memory
store is a faithful stand-in for unit tests and scale runs. Where Azure and Azurite differ the port
normalises it, and the test that pins it says so.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import timedelta
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode

from corpus.domain.errors import (
    BlobConflict,
    BlobExists,
    BlobNotFound,
    CopyFailed,
    InvalidNameError,
    MessageTooLarge,
    PreconditionFailed,
    SourceChanged,
    StorageError,
)
from corpus.store.azure_ports import AzureBlobStore, AzureOutbox
from corpus.store.memory import MemoryBlobStore, MemoryOutbox
from corpus.store.memory_tables import MemoryTable
from corpus.store.ports import BlobStore, Expected, Outbox, iter_blobs
from corpus.store.storage import Clients
from corpus.store.tables import first_page

_names = itertools.count()


@pytest.fixture(params=["memory", "azurite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest) -> BlobStore:
    if kind == "memory":
        return MemoryBlobStore()
    return AzureBlobStore(request.getfixturevalue("azurite_clients"))


@pytest.fixture
def outbox(kind: str, request: pytest.FixtureRequest) -> Outbox:
    if kind == "memory":
        return MemoryOutbox("base64")
    return AzureOutbox(request.getfixturevalue("azurite_clients"), "base64")


@pytest.fixture
def box(store: BlobStore) -> str:
    """A fresh container per test (the Azurite is shared by the module)."""
    name = f"box{next(_names)}"
    store.ensure_container(name)
    store.ensure_container(name)  # idempotent
    return name


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_put_once_is_if_none_match_and_the_same_md5_is_success(store: BlobStore, box: str) -> None:
    assert store.put_once(box, "a/b.png", b"one", "image/png") is True
    assert store.put_once(box, "a/b.png", b"one", "image/png") is False  # a duplicate run
    with pytest.raises(BlobConflict) as caught:
        store.put_once(box, "a/b.png", b"two", "image/png")
    assert caught.value.stored_md5 == md5(b"one")
    got = store.read(box, "a/b.png")
    assert got.data == b"one"
    assert (got.info.size, got.info.md5, got.info.content_type) == (3, md5(b"one"), "image/png")


def test_info_and_missing_blobs(store: BlobStore, box: str) -> None:
    store.put_once(box, "x", b"abc", "text/plain")
    info = store.info(box, "x")
    assert info.etag.startswith('"') and info.size == 3 and info.blob_type == "BlockBlob"
    assert info.last_modified is not None
    # the same properties as a read of that version tells (on Azure: HEAD headers vs the SDK's download)
    assert info == store.read(box, "x").info
    odd = "d/ä b&c+%25 #?.png"
    store.put_once(box, odd, b"\x89PNG", "image/png")
    assert store.info(box, odd) == store.read(box, odd).info and store.info(box, odd).md5 == md5(b"\x89PNG")
    assert store.exists(box, "x") and not store.exists(box, "y")
    with pytest.raises(BlobNotFound):
        store.info(box, "y")
    with pytest.raises(BlobNotFound):
        store.read(box, "y")
    with pytest.raises(BlobNotFound):
        store.list_page("no-such-container")


def test_every_write_changes_the_etag_and_if_match_pins_a_version(store: BlobStore, box: str) -> None:
    first = store.put(box, "v", b"1")
    second = store.put(box, "v", b"2")
    assert first.etag != second.etag
    assert store.read(box, "v", if_match=second.etag).data == b"2"
    with pytest.raises(PreconditionFailed):
        store.read(box, "v", if_match=first.etag)


def test_read_if_changed_is_none_when_current(store: BlobStore, box: str) -> None:
    """Azure answers 304, which the SDK raises as ResourceModifiedError: the adapter returns None."""
    info = store.put(box, "p", b"img")
    assert store.read_if_changed(box, "p", info.etag) is None
    fresh = store.read_if_changed(box, "p", '"0x0"')
    assert fresh is not None and fresh.data == b"img"


def test_read_ranges(store: BlobStore, box: str) -> None:
    store.put(box, "r", bytes(range(100)))
    assert store.read_ranges(box, "r", [(0, 3), (50, 2), (98, 2)]) == [b"\x00\x01\x02", b"\x32\x33", b"\x62\x63"]


def test_put_if_match_replaces_only_the_version_named(store: BlobStore, box: str) -> None:
    """Optimistic concurrency on one document (the catalog manifest): of two writers holding the
    same ETag, one replaces it and the other gets PreconditionFailed; a missing blob is not at any
    ETag either (Azure answers 412 or 404): PreconditionFailed, never a create."""
    first = store.put(box, "m.json", b"{}", "application/json")
    won = store.put_if_match(box, "m.json", b'{"g":1}', first.etag, "application/json")
    assert won.etag != first.etag and won.size == 7 and won.md5 == md5(b'{"g":1}')
    got = store.read(box, "m.json", if_match=won.etag)  # the returned ETag is the stored version's
    assert got.data == b'{"g":1}'
    assert (got.info.md5, got.info.content_type) == (md5(b'{"g":1}'), "application/json")
    with pytest.raises(PreconditionFailed):
        store.put_if_match(box, "m.json", b'{"g":2}', first.etag, "application/json")  # the loser
    assert store.read(box, "m.json").data == b'{"g":1}'
    with pytest.raises(PreconditionFailed):
        store.put_if_match(box, "none.json", b"{}", first.etag, "application/json")
    assert not store.exists(box, "none.json")


def test_delete_many_if_unchanged_is_one_batch_of_conditional_deletes(store: BlobStore, box: str) -> None:
    """Issue 26: the staged blobs' deletes in one Blob Batch request, each ``If-Match`` its ETag."""
    names = ["a/1.jpg", "a/2 x#.jpg", "b/ü %.jpg", "c.jpg"]
    etags = {n: store.put(box, n, n.encode()).etag for n in names}
    newer = store.put(box, "c.jpg", b"newer")  # replaced since: kept
    items = [(n, etags[n]) for n in names] + [("gone.jpg", '"0x8D000000000000"')]
    assert store.delete_many_if_unchanged(box, items) == [True, True, True, False, False]
    assert [b.name for b in store.list_page(box).items] == ["c.jpg"]
    assert store.delete_many_if_unchanged(box, [("c.jpg", newer.etag), ("a/1.jpg", etags["a/1.jpg"])]) == [True, False]
    assert store.delete_many_if_unchanged(box, []) == []


def test_delete_if_unchanged(store: BlobStore, box: str) -> None:
    """Azure answers 404 for a blob already deleted, Azurite 412: both read as False."""
    old = store.put(box, "d", b"1")
    new = store.put(box, "d", b"2")
    assert store.delete_if_unchanged(box, "d", old.etag) is False  # replaced: kept
    assert store.exists(box, "d")
    assert store.delete_if_unchanged(box, "d", new.etag) is True
    assert store.delete_if_unchanged(box, "d", new.etag) is False  # already gone
    assert not store.exists(box, "d")


def test_copy_once_conditions(store: BlobStore, box: str) -> None:
    """A refused source is SourceChanged and a taken destination BlobExists on both: Azure says
    SourceConditionNotMet, Azurite ConditionNotMet for both, and the adapter asks the destination.
    Azurite (and the memory store) finish copies at once; Azure may not, and copy_once waits."""
    src = store.put(box, "staging/a.png", b"png", "image/png")
    state = store.copy_once(box, "original/a.png", source_container=box, source_name="staging/a.png", source_etag=src.etag)
    assert state.status == "success" and not state.failed
    copied = store.read(box, "original/a.png")
    assert copied.data == b"png" and copied.info.etag == state.etag
    assert store.wait_copy(box, "original/a.png").status == "success"
    with pytest.raises(BlobExists):
        store.copy_once(box, "original/a.png", source_container=box, source_name="staging/a.png", source_etag=src.etag)
    with pytest.raises(SourceChanged):
        store.copy_once(box, "original/b.png", source_container=box, source_name="staging/a.png", source_etag='"0x1"')
    with pytest.raises(SourceChanged):
        store.copy_once(box, "original/c.png", source_container=box, source_name="staging/none", source_etag=src.etag)
    assert not store.exists(box, "original/b.png")
    with pytest.raises(BlobNotFound):
        store.wait_copy(box, "original/b.png")
    # copy_over replaces the destination, still conditional on its source
    other = store.put(box, "staging/o.png", b"other")
    store.copy_over(box, "original/a.png", source_container=box, source_name="staging/o.png", source_etag=other.etag)
    assert store.read(box, "original/a.png").data == b"other"
    with pytest.raises(SourceChanged):
        store.copy_over(box, "original/a.png", source_container=box, source_name="staging/o.png", source_etag=src.etag)


def test_set_headers_if_unchanged(store: BlobStore, box: str) -> None:
    info = store.put(box, "h", b"data")
    store.set_headers_if_unchanged(box, "h", info.etag, content_type="image/png", md5=md5(b"data"))
    now = store.info(box, "h")
    assert (now.content_type, now.md5) == ("image/png", md5(b"data"))
    with pytest.raises(PreconditionFailed):
        store.set_headers_if_unchanged(box, "h", info.etag, content_type="image/gif", md5=md5(b"data"))


def test_blocks_commit_in_order_and_once(store: BlobStore, box: str) -> None:
    big = b"x" * (4 * 1024 * 1024 + 1)  # a block above 4 MiB
    ids = ["YmxrMDAwMA==", "YmxrMDAwMQ=="]
    store.stage_block(box, "t.tar", ids[0], big)
    store.stage_block(box, "t.tar", ids[1], b"tail")
    whole = big + b"tail"
    assert store.commit_blocks_once(box, "t.tar", ids, "application/x-tar", md5(whole)) is True
    info = store.info(box, "t.tar")
    assert (info.size, info.md5) == (len(whole), md5(whole))
    assert store.commit_blocks_once(box, "t.tar", ids, "application/x-tar", md5(whole)) is False
    store.stage_block(box, "t.tar", ids[0], b"other")
    with pytest.raises(BlobConflict):
        store.commit_blocks_once(box, "t.tar", ids[:1], "application/x-tar", md5(b"other"))
    store.stage_block(box, "m.gz", ids[0], b"a")
    store.stage_block(box, "m.gz", ids[1], b"b")
    store.commit_blocks(box, "m.gz", [ids[1], ids[0]], "application/gzip")
    assert store.read(box, "m.gz").data == b"ba"
    assert store.info(box, "m.gz").md5 == ""  # no whole-blob MD5 unless given...
    assert store.content_md5(box, store.info(box, "m.gz")) == md5(b"ba")  # ...then computed from the bytes


def test_a_commit_discards_every_uncommitted_block_it_does_not_name(store: BlobStore, box: str) -> None:
    """Put Block List commits the blocks it names (staged ones first, else the blob's committed
    ones: "Latest") and discards every other uncommitted block of the blob: a writer's commit can
    take another writer's staged blocks away (review 27: a failed training-set build's straggler
    wedged the rebuild that way, so each attempt now writes its own blob). A failed commit changes
    nothing; another blob's staged blocks are untouched."""
    ids = ["YmxrMDAwMA==", "YmxrMDAwMQ==", "YmxrMDAwMg=="]  # blk0000..blk0002
    store.stage_block(box, "m.gz", ids[0], b"a")
    store.stage_block(box, "m.gz", ids[1], b"b")  # another writer's block, not yet committed
    store.stage_block(box, "n.gz", ids[1], b"n")  # another blob's
    store.commit_blocks(box, "m.gz", [ids[0]], "application/gzip")
    assert store.read(box, "m.gz").data == b"a"
    with pytest.raises(StorageError) as caught:
        store.commit_blocks(box, "m.gz", [ids[0], ids[1]], "application/gzip")  # block 1 was discarded
    assert (caught.value.status, caught.value.code) == (400, "InvalidBlockList")
    assert not isinstance(caught.value, PreconditionFailed)
    assert store.read(box, "m.gz").data == b"a"  # the failed commit changed nothing
    store.stage_block(box, "m.gz", ids[2], b"c")
    store.commit_blocks(box, "m.gz", [ids[0], ids[2]], "application/gzip")  # block 0: the committed one
    assert store.read(box, "m.gz").data == b"ac"
    store.commit_blocks(box, "m.gz", [ids[2], ids[0]], "application/gzip")  # committed blocks only, reordered
    assert store.read(box, "m.gz").data == b"ca"
    store.stage_block(box, "m.gz", ids[0], b"A")  # a staged block is taken before a committed one
    store.commit_blocks(box, "m.gz", [ids[0]], "application/gzip")
    assert store.read(box, "m.gz").data == b"A"
    with pytest.raises(StorageError) as caught:
        store.commit_blocks(box, "m.gz", [ids[2]], "application/gzip")  # left out of the last commit: gone
    assert caught.value.code == "InvalidBlockList"
    store.commit_blocks(box, "n.gz", [ids[1]], "application/gzip")
    assert store.read(box, "n.gz").data == b"n"


def test_list_page_in_name_order_with_a_cursor(store: BlobStore, box: str) -> None:
    names = [*sorted(f"p/{i:03d}" for i in range(7)), "q/1"]
    for n in reversed(names):
        store.put(box, n, n.encode())
    page = store.list_page(box, "p/", limit=3)
    assert [b.name for b in page.items] == names[:3] and page.cursor
    page = store.list_page(box, "p/", page.cursor, limit=3)
    assert [b.name for b in page.items] == names[3:6] and page.cursor
    page = store.list_page(box, "p/", page.cursor, limit=3)
    assert [b.name for b in page.items] == names[6:7] and page.cursor is None
    assert [b.name for b in iter_blobs(store, box)] == names
    assert all(b.last_modified for b in iter_blobs(store, box))
    # Azure lists ETags bare and returns them quoted on reads: the port quotes both
    assert [b.etag for b in iter_blobs(store, box)] == [store.info(box, n).etag for n in names]


def test_names_above_1024_characters_are_refused_alike(store: BlobStore, box: str) -> None:
    """Azurite accepts longer names where Azure refuses them: the port refuses them on both."""
    store.put_once(box, "n" * 1024, b"ok", "text/plain")
    with pytest.raises(InvalidNameError):
        store.put_once(box, "n" * 1025, b"no", "text/plain")


def test_messages_round_trip_with_visibility(outbox: Outbox, kind: str, request: pytest.FixtureRequest) -> None:
    queue = f"queue{next(_names)}"
    if kind == "azurite":
        request.getfixturevalue("azurite_clients").ensure(queues=(queue,))
    outbox.send(queue, '{"a": "é"}')
    outbox.send(queue, "second", time_to_live=-1)
    got = outbox.receive(queue, max_messages=1, visibility_timeout=60)
    assert [(m.text, m.dequeue_count) for m in got] == [('{"a": "é"}', 1)]
    rest = outbox.receive(queue, max_messages=32, visibility_timeout=60)
    assert [m.text for m in rest] == ["second"]  # the first is hidden for its visibility timeout
    outbox.delete(queue, got[0])
    assert outbox.receive(queue) == []


def test_messages_above_64_kib_encoded_are_refused(outbox: Outbox) -> None:
    """base64 (host.json's default) makes 48 KiB of text 64 KiB: the limit counts the encoded body."""
    with pytest.raises(MessageTooLarge):
        outbox.send("unused", "x" * (48 * 1024 + 1))


# -- tables: the in-memory TableClient stand-in against the SDK's TableClient on Azurite ----------


@pytest.fixture
def table(kind: str, request: pytest.FixtureRequest) -> Any:
    name = f"Conf{next(_names)}"
    if kind == "memory":
        return MemoryTable(name)
    clients: Clients = request.getfixturevalue("azurite_clients")
    clients.ensure(tables=(name,))
    return clients.table_client(name)


def test_table_insert_only_etags_and_conditions(table: Any) -> None:
    table.create_entity({"PartitionKey": "p", "RowKey": "a", "N": 1, "S": "x"})
    with pytest.raises(ResourceExistsError):
        table.create_entity({"PartitionKey": "p", "RowKey": "a"})
    got = table.get_entity("p", "a")
    assert (got["N"], got["S"]) == (1, "x") and got.metadata["etag"] and got.metadata["timestamp"]
    table.update_entity({"PartitionKey": "p", "RowKey": "a", "T": "y"}, mode=UpdateMode.MERGE)
    merged = table.get_entity("p", "a")
    assert (merged["S"], merged["T"]) == ("x", "y") and merged.metadata["etag"] != got.metadata["etag"]
    with pytest.raises(ResourceModifiedError):  # If-Match on a stale ETag
        table.update_entity(
            {"PartitionKey": "p", "RowKey": "a"},
            mode=UpdateMode.REPLACE,
            etag=got.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    table.update_entity(
        {"PartitionKey": "p", "RowKey": "a", "Only": True},
        mode=UpdateMode.REPLACE,
        etag=merged.metadata["etag"],
        match_condition=MatchConditions.IfNotModified,
    )
    replaced = table.get_entity("p", "a")
    assert replaced["Only"] is True and "S" not in replaced
    with pytest.raises(ResourceNotFoundError):
        table.update_entity({"PartitionKey": "p", "RowKey": "none", "X": 1}, mode=UpdateMode.MERGE)
    table.upsert_entity({"PartitionKey": "p", "RowKey": "b", "X": 1}, mode=UpdateMode.REPLACE)
    table.delete_entity("p", "b")
    table.delete_entity("p", "b")  # the SDK ignores a 404 on delete
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("p", "b")


def test_table_int64_round_trips_and_int32_overflow_is_refused(table: Any) -> None:
    table.create_entity({"PartitionKey": "p", "RowKey": "i", "Big": EntityProperty(2**40, EdmType.INT64), "Small": 7})
    got = table.get_entity("p", "i")
    assert isinstance(got["Big"], EntityProperty) and got["Big"].value == 2**40
    assert got["Small"] == 7 and not isinstance(got["Small"], EntityProperty)
    with pytest.raises(TypeError):
        table.create_entity({"PartitionKey": "p", "RowKey": "j", "Big": 2**40})


def test_table_queries_filter_in_key_order_in_pages_of_1000(table: Any) -> None:
    for start in range(0, 1005, 100):
        table.submit_transaction(
            [
                ("upsert", {"PartitionKey": "big", "RowKey": f"{i:05d}", "Final": i % 2 == 0})
                for i in range(start, min(start + 100, 1005))
            ]
        )
    table.create_entity({"PartitionKey": "other", "RowKey": "00001", "Final": True})
    pages = table.query_entities("PartitionKey eq @pk", parameters={"pk": "big"}).by_page()
    first = list(next(pages))
    assert len(first) == 1000 and [e["RowKey"] for e in first[:2]] == ["00000", "00001"]
    token = pages.continuation_token
    assert token
    rest = list(next(table.query_entities("PartitionKey eq @pk", parameters={"pk": "big"}).by_page(continuation_token=token)))
    assert [e["RowKey"] for e in rest] == ["01000", "01001", "01002", "01003", "01004"]
    ranged = table.query_entities(
        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi", parameters={"pk": "big", "lo": "00010", "hi": "00013"}
    )
    assert [e["RowKey"] for e in ranged] == ["00010", "00011", "00012"]
    ors = table.query_entities(
        "PartitionKey eq @pk and ( RowKey eq @a or RowKey eq @b )", parameters={"pk": "big", "a": "00003", "b": "00999"}
    )
    assert sorted(e["RowKey"] for e in ors) == ["00003", "00999"]
    gt = table.query_entities("PartitionKey eq @pk and RowKey gt @lo", parameters={"pk": "big", "lo": "01003"})
    assert [e["RowKey"] for e in gt] == ["01004"]
    finals = [e for e in table.query_entities("Final eq true") if e["PartitionKey"] == "other"]
    assert len(finals) == 1
    picked = list(table.query_entities("PartitionKey ge @lo", parameters={"lo": "other"}, select=["RowKey"]))
    assert [dict(e) for e in picked] == [{"RowKey": "00001"}]
    page, token = first_page(table.list_entities(results_per_page=3).by_page())
    assert [e["RowKey"] for e in page] == ["00000", "00001", "00002"] and token


def test_table_transactions_are_all_or_nothing_with_the_failing_index(table: Any) -> None:
    table.create_entity({"PartitionKey": "t", "RowKey": "taken"})
    with pytest.raises(TableTransactionError) as caught:
        table.submit_transaction(
            [("create", {"PartitionKey": "t", "RowKey": "new"}), ("create", {"PartitionKey": "t", "RowKey": "taken"})]
        )
    assert caught.value.index == 1 and str(getattr(caught.value, "error_code", "")) in (
        "EntityAlreadyExists",
        "TableErrorCode.ENTITY_ALREADY_EXISTS",
    )
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("t", "new")  # the first operation was rolled back
    with pytest.raises(ValueError):  # refused by the SDK before sending
        table.submit_transaction(
            [("create", {"PartitionKey": "t", "RowKey": "a"}), ("create", {"PartitionKey": "u", "RowKey": "b"})]
        )
    if isinstance(table, MemoryTable):
        # Azure answers 400 to a 101-operation batch; Azurite 3.35 answers with a malformed
        # response (http.client.BadStatusLine). The stores never send one (MAX_TABLE_BATCH = 100):
        # pinned on the in-memory table only.
        with pytest.raises(HttpResponseError):
            table.submit_transaction([("create", {"PartitionKey": "t", "RowKey": f"r{i}"}) for i in range(101)])
        with pytest.raises(ResourceNotFoundError):
            table.get_entity("t", "r0")
    table.submit_transaction([("create", {"PartitionKey": "t", "RowKey": f"r{i}"}) for i in range(100)])
    assert len(list(table.query_entities("PartitionKey eq @pk", parameters={"pk": "t"}))) == 101


@pytest.fixture(params=["memory-copy", "memory-put-from-url", "azurite-copy"])
def copier(request: pytest.FixtureRequest) -> BlobStore:
    """Both ways ``copy_once`` can copy: Copy Blob (Azurite has nothing else) and Put Blob From URL
    (Azure; on the memory store here, and its request on the wire in tests/test_put_from_url.py)."""
    if request.param == "azurite-copy":
        return AzureBlobStore(request.getfixturevalue("azurite_clients"), put_from_url=False)
    return MemoryBlobStore(put_from_url=request.param == "memory-put-from-url")


def test_copy_once_with_expected_bytes_either_verifies_or_leaves_it_to_the_caller(copier: BlobStore) -> None:
    box = f"box{next(_names)}"
    copier.ensure_container(box)
    src = copier.put(box, "staging/a.png", b"png", "application/octet-stream")
    expect = Expected(md5(b"png"), "image/png")
    state = copier.copy_once(
        box, "original/a.png", source_container=box, source_name="staging/a.png", source_etag=src.etag, expect=expect
    )
    got = copier.read(box, "original/a.png")
    assert got.data == b"png" and got.info.etag == state.etag
    if state.verified:  # the store checked the MD5 and wrote the validated headers: nothing left to do
        assert (got.info.md5, got.info.content_type) == (expect.md5, "image/png")
    else:  # Copy Blob: the source's headers, for the caller to verify and fix up
        assert got.info.content_type == "application/octet-stream"
    # the same conditions as without expect
    with pytest.raises(BlobExists):
        copier.copy_once(
            box, "original/a.png", source_container=box, source_name="staging/a.png", source_etag=src.etag, expect=expect
        )
    with pytest.raises(SourceChanged):
        copier.copy_once(
            box, "original/b.png", source_container=box, source_name="staging/a.png", source_etag='"0x1"', expect=expect
        )
    with pytest.raises(SourceChanged):
        copier.copy_once(
            box, "original/c.png", source_container=box, source_name="staging/none", source_etag=src.etag, expect=expect
        )


def test_put_from_url_refuses_other_bytes_and_writes_nothing() -> None:
    store = MemoryBlobStore(put_from_url=True)
    store.ensure_container("box")
    src = store.put("box", "staging/a.png", b"png")
    with pytest.raises(CopyFailed):
        store.copy_once(
            "box", "original/a.png", source_container="box", source_name="staging/a.png", source_etag=src.etag,
            expect=Expected(md5(b"other"), "image/png"),
        )  # fmt: skip
    assert not store.exists("box", "original/a.png")


def test_table_queries_filter_on_the_service_timestamp(table: Any) -> None:
    """The catalog reads "what was written in (lo, hi]" by the service's ``Timestamp``, which the
    SDK returns in the entity's metadata (not as a property): the memory table filters on it too."""
    table.create_entity({"PartitionKey": "p", "RowKey": "a"})
    table.create_entity({"PartitionKey": "p", "RowKey": "b"})
    stamps = {e["RowKey"]: e.metadata["timestamp"] for e in table.list_entities()}
    assert stamps["a"] <= stamps["b"] and "Timestamp" not in table.get_entity("p", "a")
    before, last = stamps["a"] - timedelta(minutes=1), max(stamps.values())

    def rows(flt: str, **params: Any) -> list[str]:
        return [e["RowKey"] for e in table.query_entities(flt, parameters=params)]

    assert rows("Timestamp gt @lo and Timestamp le @hi", lo=before, hi=last) == ["a", "b"]
    assert rows("PartitionKey eq @pk and Timestamp gt @lo", pk="p", lo=last) == []
    assert rows("Timestamp le @hi", hi=before) == []


def test_an_images_rewrite_keeps_the_insert_time_in_recorded(table: Any) -> None:
    """``ImagesTable.rewrite`` (facts backfill, schema stamp): ``Recorded`` is the first insert's
    service ``Timestamp`` after any number of rewrites, round-trips as a datetime comparable with
    ``Timestamp``, while ``Timestamp`` itself moves."""
    from corpus.store.images_table import ImagesTable
    from corpus.store.rows import RECORDED, recorded_at

    images = ImagesTable(table)
    table.create_entity({"PartitionKey": "p", "RowKey": "a", "S": "x"})
    inserted = table.get_entity("p", "a").metadata["timestamp"]
    assert images.rewrite("p", "a", {"Schema": 2}) and images.rewrite("p", "a", {"T": "y"})
    got = table.get_entity("p", "a")
    assert (got["S"], got["T"], got["Schema"]) == ("x", "y", 2)
    assert got[RECORDED] == inserted and recorded_at(got) == inserted
    assert got.metadata["timestamp"] >= got[RECORDED]
    assert not images.rewrite("p", "gone", {"T": "y"}), "a record that is gone is skipped"
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("p", "gone")


def test_a_transaction_returns_each_written_entitys_etag_for_the_next_if_match(table: Any) -> None:
    """``egt.submit`` (the lean ``$batch`` on Azure/Azurite, the SDK's call otherwise) returns the
    ETag of each write: the next conditional write can use it without reading the entity again."""
    from corpus.store import egt

    replies = egt.submit(
        table, [("create", {"PartitionKey": "p", "RowKey": "a", "N": 1}), ("create", {"PartitionKey": "p", "RowKey": "b"})]
    )
    assert len(replies) == 2 and replies[0]["etag"] == table.get_entity("p", "a").metadata["etag"]
    step = (
        "update",
        {"PartitionKey": "p", "RowKey": "a", "N": 2},
        {"mode": UpdateMode.REPLACE, "etag": replies[0]["etag"], "match_condition": MatchConditions.IfNotModified},
    )
    again = egt.submit(table, [step])
    assert table.get_entity("p", "a")["N"] == 2 and again[0]["etag"] != replies[0]["etag"]
    with pytest.raises(TableTransactionError):  # the first ETag is stale now
        egt.submit(table, [step])


def test_counter_shards_kept_in_process_save_reads_and_stay_exact_beside_another_writer(table: Any) -> None:
    """Two ``ImagesTable`` (two processes) record into one set: each keeps the shard value and ETag it
    last wrote, so its next commit reads no shard, and a value made stale by the other fails its
    If-Match, is forgotten and read again. The count stays exact."""
    from corpus.domain.paths import SetRef
    from corpus.store.images_table import ImagesTable
    from corpus.store.rows import ImageRow

    ref = SetRef("birds", ("red",), "v1")
    one, other = ImagesTable(table), ImagesTable(table)
    other.batch_shard = one.batch_shard  # the worst case: both commit batches to the same shard

    def rows(lo: int, hi: int) -> list[ImageRow]:
        return [ImageRow(f"f{i}.jpg", f"original/red/v1/f{i}.jpg", 10, f"{i:032x}", "image/jpeg", 1, 1) for i in range(lo, hi)]

    reads = 0
    real_get = table.get_entity

    def counting_get(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return real_get(*args, **kwargs)

    table.get_entity = counting_get
    one.record_many(ref, rows(0, 5))
    first = reads
    one.record_many(ref, rows(5, 10))
    assert reads == first, "the second commit of this process read no counter shard"
    other.record_many(ref, rows(10, 15))  # makes one's kept ETag stale
    one.record_many(ref, rows(15, 20))  # If-Match fails, the shard is read again, the batch retried
    assert one.record(ref, rows(20, 21)[0]) and not other.record(ref, rows(20, 21)[0])
    assert one.count(ref) == (21, 210) == other.count(ref)

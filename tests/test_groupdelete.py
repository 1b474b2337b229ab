"""Group delete (issue 26): concurrent conditional deletes share Blob Batch requests, and each
caller gets its own answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from corpus.domain.errors import StorageError
from corpus.store.groupdelete import BatchDeleter
from corpus.store.memory import MemoryBlobStore
from tests.support import wait_for


class GatedStore(MemoryBlobStore):
    """The first delete waits for ``gate``: the others queue up meanwhile, as behind a slow request."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail_batches = False

    def delete_if_unchanged(self, container: str, name: str, etag: str) -> bool:
        assert self.gate.wait(30)
        return super().delete_if_unchanged(container, name, etag)

    def delete_many_if_unchanged(self, container: str, items: Sequence[tuple[str, str]]) -> list[bool]:
        if self.fail_batches:
            raise StorageError("batch refused", 503)
        return super().delete_many_if_unchanged(container, items)


def run_all(deleter: BatchDeleter, store: GatedStore, calls: list[tuple[str, str]]) -> list[object]:
    results: list[object] = [None] * len(calls)

    def one(i: int) -> None:
        try:
            results[i] = deleter.delete_if_unchanged("staging", *calls[i])
        except StorageError as exc:
            results[i] = exc

    first = threading.Thread(target=one, args=(0,))
    first.start()
    wait_for(lambda: "staging" in deleter._sending, 10, "the first delete in flight")
    others = [threading.Thread(target=one, args=(i,)) for i in range(1, len(calls))]
    for t in others:
        t.start()
    wait_for(lambda: len(deleter._pending.get("staging", [])) == len(calls) - 1, 10, "every other delete queued")
    store.gate.set()
    for t in [first, *others]:
        t.join()
    return results


def test_callers_queued_behind_a_request_share_the_next_one_and_each_gets_its_own_answer() -> None:
    store = GatedStore()
    store.ensure_container("staging")
    etags = {f"s/{i}.jpg": store.put("staging", f"s/{i}.jpg", b"%d" % i).etag for i in range(40)}
    store.put("staging", "s/7.jpg", b"replaced")  # its delete must fail: kept for its own event
    deleter = BatchDeleter(store, max_batch=32)
    calls = list(etags.items())
    results = run_all(deleter, store, calls)
    assert results == [name != "s/7.jpg" for name, _ in calls]
    # the first alone (a plain Delete Blob), then the 39 queued behind it: 32, then 7
    assert (deleter.requests, store.requests["delete"], store.requests["delete_batch"]) == (3, 1, 2)
    assert [b.name for b in store.list_page("staging").items] == ["s/7.jpg"]
    assert deleter.deleted == 39 and not deleter._sending and not deleter._pending


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_caller_sends_again() -> None:
    store = GatedStore()
    store.ensure_container("staging")
    etags = {f"s/{i}.jpg": store.put("staging", f"s/{i}.jpg", b"%d" % i).etag for i in range(5)}
    store.fail_batches = True
    deleter = BatchDeleter(store)
    results = run_all(deleter, store, list(etags.items()))
    assert results[0] is True and all(isinstance(r, StorageError) for r in results[1:])
    store.fail_batches = False
    assert deleter.delete_if_unchanged("staging", "s/1.jpg", etags["s/1.jpg"]) is True  # the retry
    assert not deleter._sending


@pytest.mark.parametrize("n", [1, 2])
def test_a_lone_caller_sends_at_once(n: int) -> None:
    store = GatedStore()
    store.gate.set()
    store.ensure_container("staging")
    deleter = BatchDeleter(store)
    for i in range(n):
        info = store.put("staging", f"x{i}", b"x")
        assert deleter.delete_if_unchanged("staging", f"x{i}", info.etag) is True
    assert (deleter.requests, store.requests["delete"], store.requests.get("delete_batch", 0)) == (n, n, 0)

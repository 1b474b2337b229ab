"""Group delete: concurrent invocations share Blob Batch requests for their conditional deletes.

Ingest ends every good image by deleting its staged blob, ``If-Match`` the validated ETag. With
many invocations finishing together (group commit releases a whole batch at once), those deletes
go out as one Blob Batch request (:meth:`~corpus.store.ports.BlobStore.delete_many_if_unchanged`)
instead of one request each (issue 26). As in :mod:`corpus.store.groupcommit`, nobody waits on a
timer: the first caller for a container sends at once (a lone caller: one plain Delete Blob, as
before); callers arriving while a request is in flight queue up, and when it returns the first
of them sends everything queued, in one request.

Each caller returns only after *its* delete is answered, with its own result (deleted, or the
blob changed or is gone), or the request's error: a delete is never reported done before it is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from corpus.store.ports import MAX_BATCH_DELETES, BlobStore


@dataclass(eq=False)
class _Item:
    name: str
    etag: str
    wake: threading.Event = field(default_factory=threading.Event)
    promoted: bool = False  # send the next batch
    done: bool = False
    result: bool = False
    error: BaseException | None = None


class BatchDeleter:
    """``delete_if_unchanged`` that batches concurrent callers per container (see the module doc).

    ``requests`` and ``deleted`` are counters for tests and benchmarks.
    """

    def __init__(self, blobs: BlobStore, max_batch: int = MAX_BATCH_DELETES) -> None:
        self._blobs = blobs
        self._max = max_batch
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Item]] = {}
        self._sending: set[str] = set()
        self.requests = 0
        self.deleted = 0

    def delete_if_unchanged(self, container: str, name: str, etag: str) -> bool:
        """Delete ``container/name`` if its ETag is still ``etag``; False when it changed or is gone."""
        item = _Item(name, etag)
        with self._lock:
            self._pending.setdefault(container, []).append(item)
            lead = container not in self._sending
            if lead:
                self._sending.add(container)
        if not lead:
            item.wake.wait()
            if not item.done:  # promoted: this caller sends the next batch, its own item first
                self._send(container)
        else:
            self._send(container)
        if item.error is not None:
            raise item.error
        return item.result

    def _send(self, container: str) -> None:
        with self._lock:
            queue = self._pending[container]
            batch, self._pending[container] = queue[: self._max], queue[self._max :]
        try:
            if len(batch) == 1:
                results = [self._blobs.delete_if_unchanged(container, batch[0].name, batch[0].etag)]
            else:
                results = self._blobs.delete_many_if_unchanged(container, [(i.name, i.etag) for i in batch])
            for it, ok in zip(batch, results, strict=True):
                it.result = ok
        except BaseException as exc:  # noqa: BLE001 - every caller of this batch gets it, and raises it
            for it in batch:
                it.error = exc
        with self._lock:
            self.requests += 1
            self.deleted += sum(1 for it in batch if it.result)
            waiting = self._pending[container]
            if waiting:
                waiting[0].promoted = True
                waiting[0].wake.set()
            else:
                self._sending.discard(container)
                del self._pending[container]
        for it in batch:
            it.done = True
            it.wake.set()

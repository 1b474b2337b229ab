"""Group commit of image records: concurrent invocations in one worker share table transactions.

A worker runs up to ``batchSize + newBatchThreshold`` copy invocations at once, and most of them
finish at nearly the same time, into the same few sets. Recording each image in its own
transaction, and refreshing its set's count each time, costs several round trips per image and
makes the invocations contend for the same counter and set entities. Here, invocations that want
to record into the same set queue up; one of them (the leader) commits everything queued, up to
the 99 images a transaction allows, refreshes the set's count once, and hands leadership to the
next waiter. Nobody waits on a timer: a batch is whatever arrived while the previous one was in
flight, so a lone invocation commits at once.

Each invocation still returns only after its own record is committed, so a message is never
completed before its bookkeeping is durable: at-least-once delivery semantics are unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from corpus.domain import keys
from corpus.domain.paths import SetRef
from corpus.store.rows import ImageRow, Transform

MAX_BATCH = 99
"""An entity-group transaction holds at most 100 operations: 99 images and the counter."""


class Committer(Protocol):
    """What group commit needs of the catalog: the two steps a leader runs for its batch."""

    def record_images(self, ref: SetRef, records: list[ImageRow], transform: Transform | None = None) -> list[bool]: ...

    def refresh_counts(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]: ...


@dataclass(eq=False)
class _Item:
    ref: SetRef
    record: ImageRow
    transform: Transform | None
    wake: threading.Event = field(default_factory=threading.Event)
    promoted: bool = False
    done: bool = False
    result: bool = False
    error: BaseException | None = None


class ImageRecorder:
    def __init__(self, catalog: Committer, max_batch: int = MAX_BATCH) -> None:
        self._catalog = catalog
        self._max = max_batch
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Item]] = {}

    def record(self, ref: SetRef, record: ImageRow, transform: Transform | None = None) -> bool:
        """Record and count one image exactly once, and refresh its set's totals; True if new."""
        pk = keys.image_partition_key(ref, transform)
        item = _Item(ref, record, transform)
        with self._lock:
            queue = self._pending.setdefault(pk, [])
            queue.append(item)
            if len(queue) == 1:
                item.promoted = True  # nobody is committing this set: lead
        if not item.promoted:
            item.wake.wait()
        if not item.done:
            self._commit_next(pk)
        if item.error is not None:
            raise item.error
        return item.result

    def _commit_next(self, pk: str) -> None:
        with self._lock:
            queue = self._pending[pk]
            batch = queue[: self._max]
        first = batch[0]
        try:
            results = self._catalog.record_images(first.ref, [i.record for i in batch], first.transform)
            self._catalog.refresh_counts(first.ref, first.transform)
            for item, result in zip(batch, results, strict=True):
                item.result = result
        except BaseException as exc:  # noqa: BLE001 - each waiter re-raises it in its own invocation
            for item in batch:
                item.error = exc
        with self._lock:
            del queue[: len(batch)]
            for item in batch:
                item.done = True
            if queue:
                queue[0].promoted = True
                queue[0].wake.set()
            else:
                del self._pending[pk]
        for item in batch:
            item.wake.set()

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
import time
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


REFRESH_INTERVAL_S = 1.0
"""Under continuous load into one set, its count is refreshed at least this often (see below)."""


class ImageRecorder:
    """Group commit with debounced count refreshes.

    A leader that commits a batch while more invocations are already queued for the same set
    does not refresh the set's count: the next leader will, after its own commit. The deferred
    invocations do not return until a refresh that *started after their commit* has finished, so
    a completed message always has its image reflected in the set's count, whichever process
    writes last (the refresh sums every shard). Under a queue that never drains, a refresh still
    runs every :data:`REFRESH_INTERVAL_S` so nobody waits for long.
    """

    def __init__(self, catalog: Committer, max_batch: int = MAX_BATCH, refresh_interval: float = REFRESH_INTERVAL_S) -> None:
        self._catalog = catalog
        self._max = max_batch
        self._interval = refresh_interval
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Item]] = {}
        self._awaiting: dict[str, list[_Item]] = {}  # committed, waiting for a refresh that covers them
        self._last_refresh: dict[str, float] = {}
        self.commits = 0
        self.refreshes = 0

    def record(self, ref: SetRef, record: ImageRow, transform: Transform | None = None) -> bool:
        """Record and count one image exactly once, and refresh its set's totals; True if new."""
        pk = keys.image_partition_key(ref, transform)
        item = _Item(ref, record, transform)
        with self._lock:
            queue = self._pending.setdefault(pk, [])
            queue.append(item)
            if len(queue) == 1:
                item.promoted = True  # nobody is committing this set: lead
        while not item.done:
            if item.promoted:
                item.promoted = False
                self._commit_next(pk)
            else:
                item.wake.wait()
                item.wake.clear()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit_next(self, pk: str) -> None:
        with self._lock:
            queue = self._pending[pk]
            batch = queue[: self._max]
        first = batch[0]
        committed = False
        try:
            results = self._catalog.record_images(first.ref, [i.record for i in batch], first.transform)
            for item, result in zip(batch, results, strict=True):
                item.result = result
            committed = True
        except BaseException as exc:  # noqa: BLE001 - each waiter re-raises it in its own invocation
            for item in batch:
                item.error = exc
        with self._lock:
            self.commits += 1
            awaiting = self._awaiting.setdefault(pk, [])
            if committed:
                awaiting.extend(batch)
            more = len(queue) > len(batch)
            due = time.monotonic() - self._last_refresh.get(pk, 0.0) >= self._interval
            covered = list(awaiting) if awaiting and (not more or due) else []
            if covered:
                awaiting.clear()
        if covered:
            try:
                self._catalog.refresh_counts(first.ref, first.transform)
            except BaseException as exc:  # noqa: BLE001 - the refresh failed: so do the invocations it covers
                for item in covered:
                    item.error = exc
        finished = covered + ([] if committed else batch)
        with self._lock:
            if covered:
                self.refreshes += 1
                self._last_refresh[pk] = time.monotonic()
            del queue[: len(batch)]
            for item in finished:
                item.done = True
            if queue:
                queue[0].promoted = True
                queue[0].wake.set()
            else:
                del self._pending[pk]
                self._awaiting.pop(pk, None)
                self._last_refresh.pop(pk, None)
        for item in finished:
            item.wake.set()

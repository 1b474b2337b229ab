"""Group commit of image records: concurrent invocations in one worker share table transactions.

A worker runs up to ``batchSize + newBatchThreshold`` copy invocations at once, and most of them
finish at nearly the same time, into the same few sets. Recording each image in its own
transaction, and refreshing its set's count each time, costs several round trips per image and
makes the invocations contend for the same counter and set entities. Here, invocations that want
to record into the same set queue up; one of them (the leader) commits everything queued, up to
the 99 images a transaction allows, and hands leadership to the next waiter as soon as its commit
returns; the set's count is refreshed alongside (see :class:`ImageRecorder`). Nobody waits on a
timer: a batch is whatever arrived while the previous one was in flight, so a lone invocation
commits at once.

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
    promoted: bool = False  # commit the next batch
    refresh_lead: bool = False  # run the next count refresh
    deferred: bool = False  # its refresh already waited for one later commit
    done: bool = False
    result: bool = False
    error: BaseException | None = None


class ImageRecorder:
    """Group commit, pipelined: a batch's commit never waits for the previous batch's count refresh.

    Two roles per set, each held by one invocation at a time and handed on, never held by a timer:

    * **commit**: the leader takes every queued record (up to :data:`MAX_BATCH`), commits them in
      one transaction, and at once hands the role to the first invocation queued meanwhile, whose
      batch commits while this one is being counted. An invocation therefore waits on another's
      batch for at most one round trip: the commit in flight when it queued.
    * **refresh**: committed records wait for a count refresh that *started after their commit*
      (so a completed message always has its image in the set's count, whichever process writes
      last: the refresh sums every shard and never lowers the count). One refresh runs per set at a
      time; records committed while it runs are covered by the next one, run by one of them. A
      batch committed while the next batch's commit is already under way defers its refresh to
      that commit's end, once (at most one round trip), so that one refresh counts both. So
      refreshes stay few under load and nobody waits for a timer.

    ``commits``, ``refreshes`` and ``waited_s`` (time spent queued behind another's commit, summed
    over calls: the figure of docs/benchmarks.md) are counters for tests and benchmarks.
    """

    def __init__(self, catalog: Committer, max_batch: int = MAX_BATCH) -> None:
        self._catalog = catalog
        self._max = max_batch
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Item]] = {}  # queued, not yet in a batch
        self._committing: set[str] = set()
        self._awaiting: dict[str, list[_Item]] = {}  # committed, waiting for a refresh that covers them
        self._refreshing: set[str] = set()
        self.commits = 0
        self.refreshes = 0
        self.waited_s = 0.0

    def record(self, ref: SetRef, record: ImageRow, transform: Transform | None = None) -> bool:
        """Record and count one image exactly once, and refresh its set's totals; True if new."""
        pk = keys.image_partition_key(ref, transform)
        item = _Item(ref, record, transform)
        queued = time.perf_counter()
        with self._lock:
            self._pending.setdefault(pk, []).append(item)
            if pk not in self._committing:
                self._committing.add(pk)
                item.promoted = True  # nobody is committing this set: lead
        while not item.done:
            if item.promoted:
                item.promoted = False
                waited = time.perf_counter() - queued
                with self._lock:
                    self.waited_s += waited
                self._commit(pk)
            elif item.refresh_lead:
                item.refresh_lead = False
                self._refresh(pk)
            else:
                item.wake.wait()
                item.wake.clear()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit(self, pk: str) -> None:
        with self._lock:
            queue = self._pending[pk]
            batch = queue[: self._max]
            del queue[: len(batch)]
        first = batch[0]
        error: BaseException | None = None
        try:
            results = self._catalog.record_images(first.ref, [i.record for i in batch], first.transform)
            for item, result in zip(batch, results, strict=True):
                item.result = result
        except BaseException as exc:  # noqa: BLE001 - each waiter re-raises it in its own invocation
            error = exc
        lead_refresh = False
        with self._lock:
            self.commits += 1
            if queue:  # hand the commit role on at once: the next batch commits while this one is counted
                nxt = queue[0]
                nxt.promoted = True
                nxt.wake.set()
            else:
                del self._pending[pk]
                self._committing.discard(pk)
            if error is None:
                self._awaiting.setdefault(pk, []).extend(batch)
            else:
                for item in batch:
                    item.error = error
                    item.done = True
            awaiting = self._awaiting.get(pk)
            if awaiting and pk not in self._refreshing:
                if queue and not any(i.deferred for i in awaiting):
                    # The next batch is committing now and will be back within a round trip:
                    # count both with one refresh (deferred once only, so nobody waits longer).
                    for item in awaiting:
                        item.deferred = True
                else:
                    self._refreshing.add(pk)
                    lead_refresh = True
        if error is not None:
            for item in batch:
                item.wake.set()
        if lead_refresh:
            self._refresh(pk)
        # else: a refresh running now started before this commit (the next one covers it, run by
        # one of the records it covers: refresh_lead), or the count waits for the next commit

    def _refresh(self, pk: str) -> None:
        with self._lock:
            covered = self._awaiting.pop(pk, [])
        if not covered:  # pragma: no cover - the role is only handed to a waiting item
            with self._lock:
                self._refreshing.discard(pk)
            return
        first = covered[0]
        error: BaseException | None = None
        try:
            self._catalog.refresh_counts(first.ref, first.transform)
        except BaseException as exc:  # noqa: BLE001 - the refresh failed: so do the invocations it covers
            error = exc
        with self._lock:
            self.refreshes += 1
            for item in covered:
                if error is not None:
                    item.error = error
                item.done = True
            waiting = self._awaiting.get(pk)
            if waiting:  # committed while this refresh ran: one of them runs the next
                waiting[0].refresh_lead = True
                waiting[0].wake.set()
            else:
                self._awaiting.pop(pk, None)
                self._refreshing.discard(pk)
        for item in covered:
            item.wake.set()

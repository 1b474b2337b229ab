"""Group commit's leader/follower hand-off, against a two-method fake of the catalog (no storage)."""

from __future__ import annotations

import threading

import pytest

from corpus.domain.paths import SetRef
from corpus.store.groupcommit import ImageRecorder
from corpus.store.rows import ImageRow, Transform
from tests.support import wait_for

REF = SetRef("birds", ("red",), "v1")
OTHER = SetRef("birds", ("blue",), "v1")


def row(i: int) -> ImageRow:
    return ImageRow(f"f{i}.jpg", f"original/red/v1/f{i}.jpg", 10 + i, f"{i:032x}", "image/jpeg", 1, 1)


class FakeCatalog:
    """Records every batch; the first batch blocks until released, so followers pile up behind it."""

    def __init__(self) -> None:
        self.batches: list[tuple[SetRef, list[str]]] = []
        self.refreshes: list[SetRef] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_files: set[str] = set()
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.events: list[str] = []

    def record_images(self, ref: SetRef, records: list[ImageRow], transform: Transform | None = None) -> list[bool]:
        with self.lock:
            first = not self.batches
            self.batches.append((ref, [r.file for r in records]))
            self.events.append("batch")
        if first:
            self.entered.set()
            assert self.gate.wait(10)
        if any(r.file in self.fail_files for r in records):
            raise RuntimeError("storage said no")
        out = []
        for r in records:
            with self.lock:
                out.append(r.file not in self.seen)
                self.seen.add(r.file)
        return out

    @property
    def refresh_after_last_batch(self) -> bool:
        return self.events[-1] == "refresh"

    def refresh_counts(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]:
        with self.lock:
            self.refreshes.append(ref)
            self.events.append("refresh")
        return len(self.seen), 0


def run_all(recorder: ImageRecorder, items: list[tuple[SetRef, ImageRow]]) -> dict[str, object]:
    results: dict[str, object] = {}

    def one(ref: SetRef, r: ImageRow) -> None:
        try:
            results[r.file] = recorder.record(ref, r)
        except Exception as exc:
            results[r.file] = exc

    threads = [threading.Thread(target=one, args=item) for item in items]
    for t in threads:
        t.start()
    return {"threads": threads, "results": results}


def join(state: dict[str, object]) -> dict[str, object]:
    for t in state["threads"]:  # type: ignore[attr-defined]
        t.join(10)
        assert not t.is_alive()
    return state["results"]  # type: ignore[return-value]


def test_a_lone_record_commits_at_once_and_refreshes_once() -> None:
    fake = FakeCatalog()
    fake.gate.set()
    assert ImageRecorder(fake).record(REF, row(1)) is True
    assert fake.batches == [(REF, ["f1.jpg"])] and fake.refreshes == [REF]


def test_followers_are_committed_together_by_one_leader_in_batches_of_at_most_max() -> None:
    fake = FakeCatalog()
    recorder = ImageRecorder(fake, max_batch=4)
    state = run_all(recorder, [(REF, row(0))])
    assert fake.entered.wait(5)  # the leader is inside its transaction
    more = run_all(recorder, [(REF, row(i)) for i in range(1, 10)])
    wait_for(lambda: _queued(recorder) == 9, 5, "nine followers queued")
    fake.gate.set()
    results = {**join(state), **join(more)}
    assert results == {f"f{i}.jpg": True for i in range(10)}
    sizes = [len(files) for _, files in fake.batches]
    assert sizes[0] == 1 and sizes[1:] == [4, 4, 1]  # followers grouped, never more than max_batch
    assert sorted(f for _, files in fake.batches for f in files) == sorted(f"f{i}.jpg" for i in range(10))
    # Count refreshes are shared: at most one per batch, never per image, and one after the last commit.
    assert 1 <= len(fake.refreshes) <= len(fake.batches)
    assert fake.refresh_after_last_batch


def test_sets_do_not_wait_for_each_other() -> None:
    fake = FakeCatalog()
    recorder = ImageRecorder(fake)
    blocked = run_all(recorder, [(REF, row(0))])
    assert fake.entered.wait(5)
    # Another set commits while the first set's leader is still blocked.
    assert recorder.record(OTHER, row(50)) is True
    fake.gate.set()
    assert join(blocked) == {"f0.jpg": True}


def test_an_error_reaches_exactly_the_waiters_of_its_batch_and_leadership_moves_on() -> None:
    fake = FakeCatalog()
    fake.fail_files = {"f2.jpg"}
    recorder = ImageRecorder(fake, max_batch=3)
    first = run_all(recorder, [(REF, row(0))])
    assert fake.entered.wait(5)
    rest = run_all(recorder, [(REF, row(i)) for i in range(1, 7)])
    wait_for(lambda: _queued(recorder) == 6, 5, "six followers queued")
    fake.gate.set()
    results = {**join(first), **join(rest)}
    failed_batch = next(files for _, files in fake.batches if "f2.jpg" in files)
    for name, result in results.items():
        if name in failed_batch:
            assert isinstance(result, RuntimeError), name
        else:
            assert result is True, name
    assert not recorder._pending  # nothing left queued, nobody left waiting


def test_a_duplicate_in_a_batch_is_reported_as_not_new() -> None:
    fake = FakeCatalog()
    fake.gate.set()
    recorder = ImageRecorder(fake)
    assert recorder.record(REF, row(1)) is True
    assert recorder.record(REF, row(1)) is False


def _queued(recorder: ImageRecorder) -> int:
    """Records queued behind the batch in flight (not yet taken into a batch)."""
    with recorder._lock:
        return sum(len(q) for q in recorder._pending.values())


@pytest.mark.parametrize("n", [1, 99, 100])
def test_default_batches_fit_one_entity_group_transaction(n: int) -> None:
    fake = FakeCatalog()
    recorder = ImageRecorder(fake)
    first = run_all(recorder, [(REF, row(0))])
    assert fake.entered.wait(5)
    rest = run_all(recorder, [(REF, row(i)) for i in range(1, n + 1)])
    wait_for(lambda: _queued(recorder) == n, 10, f"{n} followers queued")
    fake.gate.set()
    join(first)
    join(rest)
    assert max(len(files) for _, files in fake.batches) <= 99  # + 1 counter operation = 100, the transaction limit


class SlowRefresh(FakeCatalog):
    """Commits at once; the first count refresh blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.refresh_gate = threading.Event()
        self.refresh_entered = threading.Event()

    def refresh_counts(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]:
        first = not self.refresh_entered.is_set()
        self.refresh_entered.set()
        if first:
            assert self.refresh_gate.wait(10)
        return super().refresh_counts(ref, transform)


def test_a_batch_commits_while_the_previous_one_is_being_counted() -> None:
    """Nobody's commit waits for another's count refresh (issue 26: group commit must not block a
    caller on another caller's batch longer than one round trip)."""
    fake = SlowRefresh()
    recorder = ImageRecorder(fake)
    first = run_all(recorder, [(REF, row(0))])
    assert fake.refresh_entered.wait(5)  # f0 committed, its refresh blocked
    later = run_all(recorder, [(REF, row(i)) for i in range(1, 4)])
    wait_for(lambda: sum(len(f) for _, f in fake.batches) == 4, 5, "the later records committed meanwhile")
    assert not first["results"] and not later["results"]  # nobody returns before a refresh covers them
    fake.refresh_gate.set()
    assert {**join(first), **join(later)} == {f"f{i}.jpg": True for i in range(4)}
    # f1..f3 were committed after the blocked refresh started: a second refresh covered them
    assert len(fake.refreshes) == 2 and fake.refresh_after_last_batch
    assert recorder.commits == len(fake.batches) and not recorder._refreshing and not recorder._awaiting

"""A failed training-set build's lineage must not outlive its rebuild (in-memory store).

A build that fails half-way (``failed``, a :class:`PermanentError`) has written the ``Lineage``
rows and ``--dedupe`` claims of the blocks it finished. The same definition may be requested
again; the rebuild takes a fresh snapshot and may select other images (new images arrived, an
exact copy earlier in manifest order is now the one ``--dedupe`` keeps). Every lineage answer must
then equal what the ready manifest holds, whichever attempt wrote which rows. On the code before
attempts, ``corpus lineage --blob`` named the training set for images its manifest does not hold
(the first test, the property test, the racers, the first straggler; on Azurite, the last test).
The two other straggler tests were checked by removing their guard alone: the straggler then
replaced the ready manifest, or failed the rebuild.

Review 27: a straggler of the failed attempt that passed its re-read of the row committed its
blocks to the blob the rebuild was staging; Put Block List discards the blob's uncommitted blocks
it does not name, so the rebuild's commit failed on every retry, wedged in ``building``. The
straggler tests below (in memory, on Azurite) and the property test's ``straggle`` cases failed on
the code before a rebuild had a blob of its own (``InvalidBlockList``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corpus.app import trainsets as app
from corpus.app import views
from corpus.app.runtime import Runtime
from corpus.domain import manifest as mf
from corpus.domain import trainsets as ts
from corpus.domain.errors import NotFoundError
from corpus.domain.manifest import parse_line
from corpus.domain.trainsets import TrainsetContinue, TrainsetRequest, parse_trainset_message
from corpus.store.memory import MemoryOutbox
from corpus.store.settings import Settings
from corpus.store.trainsets_table import BUILDING, FAILED, READY, TrainsetRow
from tests.support import at_once, jpeg, run_cli
from tests.test_usecases_memory import drain, stage

NAME, VERSION = "birds-dd", "1"


def runtime(block: int, budget: float | None = None) -> Runtime:
    env = {"CorpusStorage": "UseDevelopmentStorage=true", "CORPUS_TRAINSET_BLOCK_IMAGES": str(block)}
    if budget is not None:
        env["CORPUS_TRAINSET_BUDGET_SECONDS"] = str(budget)
    rt = Runtime.in_memory(Settings.from_env(env))
    rt.ensure_resources()
    return rt


def request(dedupe: str | None = "exact") -> str:
    """Every set of 'birds' tagged 'bird' at v1 (folders bird/a and bird/b), one per exact content."""
    body: dict[str, Any] = {
        "trainset": {"name": NAME, "version": VERSION},
        "sources": [{"domain": "birds", "tags": ["bird"], "version": "v1"}],
    }
    if dedupe is not None:
        body["dedupe"] = dedupe
    return TrainsetRequest.parse(json.dumps(body)).to_json()


def blob(folder: str, file: str) -> str:
    return f"original/bird/{folder}/v1/{file}"


def add(rt: Runtime, folder: str, files: dict[str, int]) -> None:
    """Ingest ``file → content seed`` into set bird/<folder>@v1 (the same seed: an exact copy);
    ``direct`` ingest sends no message, so this works on Azurite as on the in-memory store."""
    for file, seed in files.items():
        assert stage(rt, f"birds/v1/bird/{folder}/{file}", jpeg(seed, size=(8, 8))) == "copied"
    if isinstance(rt.outbox, MemoryOutbox):
        drain(rt)


def expected(corpus: dict[str, dict[str, int]], dedupe: bool) -> list[str]:
    """The manifest's blobs, worked out from the contract alone: sets in folder order, files in
    name order (plain names), the first image of each content when deduplicated."""
    out, seen = [], set()
    for folder in sorted(corpus):
        for file in sorted(corpus[folder]):
            seed = corpus[folder][file]
            if dedupe and seed in seen:
                continue
            seen.add(seed)
            out.append(blob(folder, file))
    return out


def deliver(rt: Runtime, text: str) -> str:
    return app.on_trainset_message(rt, parse_trainset_message(text))


def settle(rt: Runtime, text: str) -> str:
    """Deliver ``text`` then every continuation until the queue is empty (the default budget
    builds these sets in one message: on Azurite there is none to read)."""
    status = deliver(rt, text)
    if not isinstance(rt.outbox, MemoryOutbox):
        return status
    queue = rt.settings.trainset_queue
    while msgs := rt.outbox.receive(queue, max_messages=32):
        for m in msgs:
            status = deliver(rt, m.text)
            rt.outbox.delete(queue, m)
    return status


@contextmanager
def fault(monkeypatch: pytest.MonkeyPatch, at: int, exc: Callable[[], Exception]) -> Iterator[list[int]]:
    """Raise ``exc()`` when the build reads its ``at``-th image (1-based) in this block of code."""
    real = app._entry
    reads = [0]

    def entry(*args: Any) -> Any:
        reads[0] += 1
        if reads[0] == at:
            raise exc()
        return real(*args)

    monkeypatch.setattr(app, "_entry", entry)
    try:
        yield reads
    finally:
        monkeypatch.setattr(app, "_entry", real)


def manifest_blobs(rt: Runtime) -> list[str]:
    row = app.ready_trainset(app.store_of(rt), NAME, VERSION)
    return [parse_line(line).blob for line in app.manifest_lines(rt, row)]


def stored_manifests(rt: Runtime, container: str) -> list[str]:
    """The names of the blobs under the training set's ``<name>/<version>/`` (one listing page)."""
    return [b.name for b in rt.blobs.list_page(container, f"{NAME}/{VERSION}/").items]


def lineage_answers(rt: Runtime, corpus: dict[str, dict[str, int]]) -> set[str]:
    """Every blob of the corpus for which ``corpus lineage --blob`` names the training set."""
    store = app.store_of(rt)
    named = set()
    for folder, files in corpus.items():
        for file in files:
            found = app.lineage_of_blob(rt, store, "birds", blob(folder, file))
            if {"name": NAME, "version": VERSION} in found["trainsets"]:
                named.add(blob(folder, file))
    return named


def assert_lineage_is_the_manifest(rt: Runtime, corpus: dict[str, dict[str, int]], dedupe: bool) -> None:
    held = manifest_blobs(rt)
    assert lineage_answers(rt, corpus) == set(held), "lineage --blob disagrees with the ready manifest"
    assert held == expected(corpus, dedupe)
    model = app.register_model(app.store_of(rt), "net", "1", [(NAME, VERSION)])
    assert model.trainsets == ((NAME, VERSION),)
    store = app.store_of(rt)
    for folder, files in corpus.items():
        for file in files:
            found = app.lineage_of_blob(rt, store, "birds", blob(folder, file))
            assert (found["models"] == [{"name": "net", "version": "1"}]) == (blob(folder, file) in held)


def fail_then_change(monkeypatch: pytest.MonkeyPatch, rt: Runtime, corpus: dict[str, dict[str, int]], fail_at: int) -> None:
    """Request the set (again), its build failing for good at image ``fail_at``: it is ``failed``."""
    injected = fault(monkeypatch, fail_at, lambda: NotFoundError("injected: the build fails half-way"))
    with injected, pytest.raises(NotFoundError, match="injected"):
        deliver(rt, request())
    row = app.store_of(rt).trainsets.get(NAME, VERSION)
    assert row is not None and row.status == FAILED


def test_a_failed_builds_lineage_does_not_outlive_its_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case of the issue: b/0..b/5, blocks of 2, the first build fails on its 5th image (2
    blocks indexed). Then a/ arrives holding exact copies of b/1 and b/2 (and one new image). The
    rebuild keeps a/'s copies (first in manifest order), so b/1 and b/2 are not in it: lineage must
    not name the training set for them, and a/'s copies must be in the manifest."""
    rt = runtime(block=2)
    corpus = the_issues_case(monkeypatch, rt)
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def the_issues_case(monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> dict[str, dict[str, int]]:
    """b/0..b/5 in blocks of 2 (``rt``'s), failing on the 5th image; a/ with copies of b/1, b/2
    and a new image; the rebuild, ready. The corpus, folder → file → content seed."""
    corpus: dict[str, dict[str, int]] = {"b": {f"{i}.jpg": i for i in range(6)}}
    add(rt, "b", corpus["b"])
    fail_then_change(monkeypatch, rt, corpus, fail_at=5)
    corpus["a"] = {"x1.jpg": 1, "x2.jpg": 2, "new.jpg": 100}
    add(rt, "a", corpus["a"])
    assert settle(rt, request()) == READY
    return corpus


@dataclass(frozen=True)
class Case:
    block: int
    originals: int
    fail_at: int
    copies: tuple[int, ...]
    fresh: int
    kill_at: int | None
    straggle: bool = False
    """The failure comes while a delivery of attempt 0 is at its commit (past its re-read of the
    row): the change and the (killed) rebuild run there, then that delivery commits."""


@st.composite
def cases(draw: Any) -> Case:
    block = draw(st.integers(1, 4))
    originals = draw(st.integers(2, 9))
    fail_at = draw(st.integers(1, originals))
    copies = tuple(sorted(draw(st.sets(st.integers(0, originals - 1), max_size=originals))))
    fresh = draw(st.integers(0, 3))
    kill_at = draw(st.none() | st.integers(1, originals + len(copies) + fresh))
    return Case(block, originals, fail_at, copies, fresh, kill_at, draw(st.booleans()))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
@example(case=Case(block=1, originals=2, fail_at=1, copies=(0,), fresh=0, kill_at=3, straggle=True))  # review 27
def test_fail_after_k_blocks_change_the_corpus_rebuild_lineage_is_the_manifest(
    monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    """Fail after any number of blocks (or while a delivery of the failing attempt is at its
    commit); add copies (kept instead of the originals) and new images; rebuild, optionally killed
    at some image and retried (a non-permanent error: the message is delivered again): lineage by
    blob names the training set exactly for the manifest's images."""
    rt = runtime(case.block)
    corpus: dict[str, dict[str, int]] = {"b": {f"{i:02d}.jpg": i for i in range(case.originals)}}
    add(rt, "b", corpus["b"])
    change = {f"c{i:02d}.jpg": i for i in case.copies} | {f"n{i:02d}.jpg": 1000 + i for i in range(case.fresh)}

    def change_and_rebuild() -> None:
        corpus["a"] = change
        if change:
            add(rt, "a", change)
        if case.kill_at is not None:  # the rebuild stages blocks, then is killed: they wait uncommitted
            killed = fault(monkeypatch, case.kill_at, lambda: ConnectionError("injected: the host was killed"))
            with killed, pytest.raises(ConnectionError):
                deliver(rt, request())

    if case.straggle:
        straggler_commits_amid(monkeypatch, rt, change_and_rebuild)
    else:
        fail_then_change(monkeypatch, rt, corpus, case.fail_at)
        change_and_rebuild()
    assert settle(rt, request()) == READY
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def straggler_commits_amid(monkeypatch: pytest.MonkeyPatch, rt: Runtime, meanwhile: Callable[[], None]) -> None:
    """A delivery of attempt 0 builds to its commit, passing its re-read of the row; between that
    read and its Put Block List attempt 0 fails (another delivery's permanent error) and
    ``meanwhile`` runs (a change, a rebuild's delivery). Then it commits its blocks, and stops on
    the If-Match of its ``ready``. On one shared blob that commit discarded every block the rebuild
    had staged, and the rebuild's commit failed on every retry (review 27)."""
    store = app.store_of(rt)
    app.register(rt, store, TrainsetRequest.parse(request()))
    straggler = store.trainsets.get(NAME, VERSION)
    assert straggler is not None and (straggler.status, straggler.attempt) == (BUILDING, 0)
    real_commit = rt.blobs.commit_blocks
    commits: list[str] = []

    def commit(container: str, name: str, ids: Any, *args: Any, **kwargs: Any) -> None:
        if not commits:
            latest = store.trainsets.get(NAME, VERSION)
            assert latest is not None and (latest.status, latest.attempt) == (BUILDING, 0)
            assert store.trainsets.advance(replace(latest, status=FAILED, reason="injected: another delivery failed it"))
            meanwhile()
        commits.append(name)
        real_commit(container, name, ids, *args, **kwargs)

    monkeypatch.setattr(rt.blobs, "commit_blocks", commit)
    try:
        assert app.build(rt, store, straggler) == BUILDING
    finally:
        monkeypatch.setattr(rt.blobs, "commit_blocks", real_commit)
    assert commits[0] == straggler.manifest_blob


def drive(rt: Runtime, limit: int = 20) -> str:
    """Deliver the build's continuations until it is no longer ``building`` (on Azurite the
    queue has no consumer here: each continuation is made from the row, as the queue would)."""
    store = app.store_of(rt)
    for _ in range(limit):
        row = store.trainsets.get(NAME, VERSION)
        assert row is not None
        if row.status != BUILDING:
            return row.status
        deliver(rt, TrainsetContinue(NAME, VERSION, row.state.step).to_json())
    raise AssertionError(f"still building after {limit} continuations")


def a_straggler_commits_while_the_rebuild_has_staged_blocks(monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> None:
    """Review 27's case: one image, so attempt 0's delivery reaches its commit with no checkpoint;
    there, attempt 0 fails, three images arrive, the set is requested again, and attempt 1 stages
    its first block and runs out of budget (``rt``: blocks of 2, budget 0). The straggler then
    commits. Attempt 1 must still end ``ready``, with exactly its own manifest and lineage."""
    corpus: dict[str, dict[str, int]] = {"b": {"0.jpg": 0}}
    add(rt, "b", corpus["b"])
    store = app.store_of(rt)

    def rebuild_stages_a_block() -> None:
        corpus["a"] = {"x1.jpg": 11, "x2.jpg": 12, "x3.jpg": 13}
        add(rt, "a", corpus["a"])
        assert deliver(rt, request()) == BUILDING
        row = store.trainsets.get(NAME, VERSION)
        assert row is not None and (row.attempt, row.state.blocks) == (1, 1)
        assert row.manifest_blob == f"{NAME}/{VERSION}/attempt-1/manifest.jsonl.gz"

    straggler_commits_amid(monkeypatch, rt, rebuild_stages_a_block)
    assert drive(rt) == READY
    ready = store.trainsets.require_ready(NAME, VERSION)
    assert (ready.attempt, ready.state.images) == (1, 4)
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)
    # The straggler committed attempt 0's blob (the contract's name), found its attempt over when
    # its advance failed, and deleted what it had committed (review 27x): no dead manifest stays.
    assert not rt.blobs.exists(ready.manifest_container, mf.manifest_blob(NAME, VERSION))
    assert stored_manifests(rt, ready.manifest_container) == [ready.manifest_blob]


def test_a_rebuild_first_deletes_the_failed_attempts_committed_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed attempt whose manifest was committed (it failed after its commit, or a delivery
    of it committed late) leaves a complete-looking manifest at the contract's path; the rebuild
    deletes it before its first block, so a tool reading that path finds nothing rather than the
    failed attempt's images (review 27x)."""
    rt = runtime(block=2)
    corpus: dict[str, dict[str, int]] = {"b": {f"{i}.jpg": i for i in range(4)}}
    add(rt, "b", corpus["b"])
    fail_then_change(monkeypatch, rt, corpus, fail_at=3)
    failed = app.store_of(rt).trainsets.get(NAME, VERSION)
    assert failed is not None and failed.attempt == 0
    rt.blobs.put(failed.manifest_container, failed.manifest_blob, gzip.compress(b"{}\n"), "application/gzip")
    assert settle(rt, request()) == READY
    ready = app.store_of(rt).trainsets.require_ready(NAME, VERSION)
    assert ready.attempt == 1
    assert stored_manifests(rt, ready.manifest_container) == [ready.manifest_blob]
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def test_a_straggler_committing_while_the_rebuild_has_staged_blocks_does_not_wedge_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_straggler_commits_while_the_rebuild_has_staged_blocks(monkeypatch, runtime(block=2, budget=0))


@pytest.mark.e2e
@pytest.mark.usefixtures("rt")
def test_on_azurite_a_straggler_committing_while_the_rebuild_has_staged_blocks_does_not_wedge_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """The same through the real SDK on a private Azurite, whose Put Block List discards the
    blob's uncommitted blocks it does not name (the reviewer's test, review 27)."""
    settings = Settings.from_env({**env, "CORPUS_TRAINSET_BLOCK_IMAGES": "2", "CORPUS_TRAINSET_BUDGET_SECONDS": "0"})
    a_straggler_commits_while_the_rebuild_has_staged_blocks(monkeypatch, Runtime.create(settings))


def test_two_racers_restart_the_same_failed_set_and_build_it_concurrently(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two deliveries of the request restart the failed set at once: one If-Match wins, both
    build the same attempt (one of them stops when it loses a checkpoint), lineage is the manifest."""
    rt = runtime(block=2)
    corpus: dict[str, dict[str, int]] = {"b": {f"{i}.jpg": i for i in range(8)}}
    add(rt, "b", corpus["b"])
    fail_then_change(monkeypatch, rt, corpus, fail_at=6)
    corpus["a"] = {"x3.jpg": 3, "x4.jpg": 4}
    add(rt, "a", corpus["a"])
    results = at_once(lambda: deliver(rt, request()), 2)
    assert READY in results and set(results) <= {READY, BUILDING}
    row = app.store_of(rt).trainsets.get(NAME, VERSION)
    assert row is not None and row.status == READY
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def failed_with_a_straggler(
    monkeypatch: pytest.MonkeyPatch, rt: Runtime, images: int, fail_at: int
) -> tuple[dict[str, dict[str, int]], TrainsetRow]:
    """b/0..b/<images-1>; the request registered, and its row read by a delivery that will
    straggle (attempt 0, building); then the build fails at image ``fail_at``."""
    corpus: dict[str, dict[str, int]] = {"b": {f"{i}.jpg": i for i in range(images)}}
    add(rt, "b", corpus["b"])
    store = app.store_of(rt)
    app.register(rt, store, TrainsetRequest.parse(request()))
    straggler = store.trainsets.get(NAME, VERSION)
    assert straggler is not None and (straggler.status, straggler.attempt) == (BUILDING, 0)
    fail_then_change(monkeypatch, rt, corpus, fail_at)
    return corpus, straggler


def test_a_straggler_of_the_failed_attempt_changes_nothing_after_the_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery of the failed attempt still running (it read the row before the failure) writes
    its blocks, claims and index rows after the rebuild is ready: the manifest, its hash and every
    lineage answer stay those of the rebuild."""
    rt = runtime(block=2)
    corpus, straggler = failed_with_a_straggler(monkeypatch, rt, images=6, fail_at=3)
    store = app.store_of(rt)
    corpus["a"] = {"x0.jpg": 0, "x5.jpg": 5}
    add(rt, "a", corpus["a"])
    assert settle(rt, request()) == READY
    ready = store.trainsets.require_ready(NAME, VERSION)
    data = rt.blobs.read(ready.manifest_container, ready.manifest_blob).data
    assert app.build(rt, store, straggler) == BUILDING  # it loses its first checkpoint and stops
    assert store.trainsets.require_ready(NAME, VERSION) == ready
    assert rt.blobs.read(ready.manifest_container, ready.manifest_blob).data == data
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def test_without_dedupe_a_rebuild_over_new_images_is_the_manifest_too(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(block=3)
    corpus: dict[str, dict[str, int]] = {"b": {f"{i}.jpg": i for i in range(7)}}
    add(rt, "b", corpus["b"])
    with fault(monkeypatch, 5, lambda: NotFoundError("injected")), pytest.raises(NotFoundError):
        deliver(rt, request(None))
    corpus["a"] = {"y.jpg": 50}
    add(rt, "a", corpus["a"])
    assert settle(rt, request(None)) == READY
    assert_lineage_is_the_manifest(rt, corpus, dedupe=False)


def test_rows_written_before_attempts_read_as_the_first_attempt() -> None:
    """A TrainingSets row without ``Attempt`` (written before it existed) is attempt 0, and so is
    every index row without one: a set built before this change answers as it did."""
    row = TrainsetRow(NAME, VERSION, "{}", manifest_blob=mf.manifest_blob(NAME, VERSION))
    entity = dict(row.to_entity())
    entity.pop("Attempt", None)
    assert TrainsetRow.from_entity(entity).attempt == 0


def test_older_code_rewriting_a_rebuilt_row_does_not_take_its_attempt_back() -> None:
    """Code older than attempts replaces the whole entity without ``Attempt`` (a rolling deploy, a
    rollback) but keeps ``ManifestBlob``: a rebuild's blob names its attempt, so the row stays at
    it; a contract-named blob, or another name, says nothing."""
    entity = dict(TrainsetRow(NAME, VERSION, "{}", manifest_blob=ts.attempt_manifest_blob(NAME, VERSION, 3)).to_entity())
    entity.pop("Attempt")
    assert TrainsetRow.from_entity(entity).attempt == 3
    assert TrainsetRow.from_entity({**entity, "Attempt": 4}).attempt == 4
    assert ts.attempt_manifest_blob(NAME, VERSION, 0) == mf.manifest_blob(NAME, VERSION)
    assert [ts.manifest_attempt(ts.attempt_manifest_blob(NAME, VERSION, n)) for n in (0, 1, 9999999)] == [0, 1, 9999999]
    for other in ("a/1/attempt-0/manifest.jsonl.gz", "a/1/attempt-01/manifest.jsonl.gz", "a/1/attempt-2/other.gz", ""):
        assert ts.manifest_attempt(other) == 0
    # a *version* may be called attempt-3: its first attempt's blob is not attempt 3's (review 27x)
    assert ts.manifest_attempt(ts.attempt_manifest_blob(NAME, "attempt-3", 0)) == 0
    assert ts.manifest_attempt(ts.attempt_manifest_blob(NAME, "attempt-9999999", 2)) == 2
    first = dict(TrainsetRow(NAME, "attempt-9999999", "{}", manifest_blob=mf.manifest_blob(NAME, "attempt-9999999")).to_entity())
    assert TrainsetRow.from_entity(first).attempt == 0
    with pytest.raises(ValueError):
        ts.attempt_manifest_blob(NAME, VERSION, 10**7)


def test_a_straggler_that_reaches_its_commit_commits_nothing_over_the_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """One block: a delivery of the failed attempt (it read the row before the failure) puts its
    only block and reaches its commit after the rebuild is ready. Its block is staged under its
    own attempt's id, so it could commit it; it finds the row at another attempt and commits nothing."""
    rt = runtime(block=8)
    corpus, straggler = failed_with_a_straggler(monkeypatch, rt, images=5, fail_at=4)
    store = app.store_of(rt)
    corpus["a"] = {"x2.jpg": 2}
    add(rt, "a", corpus["a"])
    assert settle(rt, request()) == READY
    ready = store.trainsets.require_ready(NAME, VERSION)
    assert ready.attempt == 1
    assert views.trainset_json(ready)["attempt"] == 1  # `trainset show --json` and the API say which build it is
    data = rt.blobs.read(ready.manifest_container, ready.manifest_blob).data
    assert app.build(rt, store, straggler) == BUILDING
    assert rt.blobs.read(ready.manifest_container, ready.manifest_blob).data == data
    assert store.trainsets.require_ready(NAME, VERSION) == ready
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def test_a_straggler_failing_for_good_does_not_fail_the_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery of the failed attempt meets a permanent error while the rebuild is building:
    it fails its own attempt, which is over, not the rebuild."""
    rt = runtime(block=2)
    corpus, straggler = failed_with_a_straggler(monkeypatch, rt, images=6, fail_at=3)
    store = app.store_of(rt)
    rebuilding = app.register(rt, store, TrainsetRequest.parse(request()))
    assert (rebuilding.status, rebuilding.attempt) == (BUILDING, 1)
    injected = fault(monkeypatch, 2, lambda: NotFoundError("injected: the straggler fails"))
    with injected, pytest.raises(NotFoundError):
        app.build(rt, store, straggler)
    after = store.trainsets.get(NAME, VERSION)
    assert after is not None and (after.status, after.attempt) == (BUILDING, 1)
    assert settle(rt, request()) == READY
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


def test_two_attempts_of_one_block_are_distinct_rows_and_read_back_with_their_attempt() -> None:
    """Packed rows: attempt 0 keeps the old RowKey (no ``Attempt``), attempt n one more segment."""
    from corpus.store.memory_tables import MemoryTable
    from corpus.store.trainsets_table import BlobUse, LineageTable, packed_rows

    first = BlobUse("birds", "original/b/v1/1.jpg", "original/b/v1/1.jpg", (NAME, VERSION))
    again = BlobUse("birds", "original/b/v1/1.jpg", "original/b/v1/1.jpg", (NAME, VERSION), attempt=2)
    old, new = packed_rows([first], 0), packed_rows([again], 0)
    assert "Attempt" not in old[0] and new[0]["Attempt"] == 2
    assert old[0]["PartitionKey"] == new[0]["PartitionKey"] and old[0]["RowKey"] != new[0]["RowKey"]
    assert str(new[0]["RowKey"]).startswith(str(old[0]["RowKey"]))
    index = LineageTable(MemoryTable("Lineage"))  # type: ignore[arg-type]
    index.add_blob_uses([first], 0)
    index.add_blob_uses([again], 0)
    assert sorted(u.attempt for u in index.uses_of("birds", "original/b/v1/1.jpg")) == [0, 2]


def test_failed_twice_then_ready_and_each_set_row_is_read_once_per_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts 0 and 1 fail, attempt 2 is ready: the original b/0.jpg has index rows of all
    three, and a lookup reads the training set's row once, not once per row."""
    rt = runtime(block=1)
    corpus: dict[str, dict[str, int]] = {"b": {f"{i}.jpg": i for i in range(4)}}
    add(rt, "b", corpus["b"])
    fail_then_change(monkeypatch, rt, corpus, fail_at=3)
    fail_then_change(monkeypatch, rt, corpus, fail_at=4)
    corpus["a"] = {"x0.jpg": 0}
    add(rt, "a", corpus["a"])
    assert settle(rt, request()) == READY
    store = app.store_of(rt)
    ready = store.trainsets.require_ready(NAME, VERSION)
    assert (ready.attempt, ready.manifest_blob) == (2, f"{NAME}/{VERSION}/attempt-2/manifest.jsonl.gz")
    source = blob("b", "0.jpg")
    assert sorted(u.attempt for u in store.lineage.uses_of("birds", source)) == [0, 1]  # kept by a/x0 in attempt 2
    reads: list[tuple[str, str]] = []
    real_get = store.trainsets.get

    def get(name: str, version: str) -> TrainsetRow | None:
        reads.append((name, version))
        return real_get(name, version)

    monkeypatch.setattr(store.trainsets, "get", get)
    assert app.lineage_of_blob(rt, store, "birds", source)["trainsets"] == []
    assert reads == [(NAME, VERSION)]
    monkeypatch.setattr(store.trainsets, "get", real_get)
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)


@pytest.mark.e2e
@pytest.mark.usefixtures("rt")  # a private Azurite with the corpus's tables, queues and containers
def test_on_azurite_the_rebuilds_rows_blocks_and_claims_are_its_own(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], tmp_path: Path
) -> None:
    """The issue's case on a private Azurite, through the real SDKs (the ``Attempt`` column, the
    longer RowKeys in ``$batch`` and the lean query decoder, the If-Match restart, block ids of
    another attempt beside the failed attempt's uncommitted ones: Azure wants one length per
    blob), and the answer read by the CLI, ``corpus lineage --blob``, in its own process."""
    rt = Runtime.create(Settings.from_env({**env, "CORPUS_TRAINSET_BLOCK_IMAGES": "2"}))
    assert not isinstance(rt.outbox, MemoryOutbox) and "127.0.0.1" in env["CorpusStorage"]
    corpus = the_issues_case(monkeypatch, rt)
    for file, held in (("1.jpg", False), ("0.jpg", True)):
        proc = run_cli(env, tmp_path, "lineage", "--blob", f"birds/{blob('b', file)}", "--json")
        assert proc.returncode == 0, proc.stderr
        named = {"name": NAME, "version": VERSION} in json.loads(proc.stdout)["trainsets"]
        assert named == held, (file, proc.stdout)
    assert_lineage_is_the_manifest(rt, corpus, dedupe=True)
    assert app.store_of(rt).trainsets.require_ready(NAME, VERSION).attempt == 1


def test_create_wait_settles_on_a_later_attempt_not_on_another_etag() -> None:
    """``trainset create --wait`` of a failed set (attempt 2) waits for a later attempt to end:
    the same failure rewritten (another ETag) is not its answer, a later attempt's end is."""
    from corpus.cli.trainsets import settled

    failed = TrainsetRow(NAME, VERSION, "{}", status=FAILED, attempt=2, etag='W/"1"')
    assert not settled(replace(failed, etag='W/"2"'), 2)
    assert not settled(replace(failed, status=BUILDING, attempt=3), 2)
    assert settled(replace(failed, attempt=3), 2) and settled(replace(failed, status=READY, attempt=3), 2)
    assert settled(failed, None) and not settled(replace(failed, status=BUILDING), None)  # a first request

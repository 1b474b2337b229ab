"""``corpus upload``: a throttled, resumable, verified uploader of image drops into staging.

How it stays correct:

* every file is sent with its MD5 (``Content-MD5``: the service rejects a corrupted body; the blob
  keeps it as its ``Content-MD5`` property, which ingest then verifies the copy against);
* a file is sent only if neither staging nor ``original/`` already holds its name, and never over
  an existing blob (``If-None-Match: *``): same MD5 is skipped, a different one is a *conflict*,
  reported and left alone;
* a single Put Blob is atomic, so a killed run leaves no partial blob: running it again sends
  exactly what is missing.

How it stays fast and small: the tree is walked lazily, directory by directory, a few directories
ahead of the decisions, and what is remote is listed as soon as the walk finds it, so listings
overlap with everything else; files flow through bounded queues to ``--concurrency`` workers, so
memory is bounded by a few directories' listings, not by the drop. What is listed, fewest
requests first (a re-run with nothing to do is mostly waiting for its listings):

* staging: one flat page (:data:`FLAT_LISTING_LIMIT` blobs) of the whole version at the start;
  if that is all of it, no folder is listed again; if not, the folders the page fully covers use
  it and the others are listed one by one (so memory holds at most one page, whatever the drop);
* ``original/``: only for a folder where some file is not already staged. A name both staged and
  ingested is then decided by staging: either way this run writes nothing under it, and ingest
  settles the staged blob against the ingested one.

A re-run reads no file whose size and mtime match the local MD5 cache
(:mod:`corpus.transfer.hashcache`). Every request (listings included) holds one of ``--concurrency``
slots, and ``--cap-mbps`` is a shared token budget, so neither is exceeded.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from corpus.domain.display import valid_text
from corpus.domain.errors import InvalidNameError, StorageError
from corpus.domain.paths import WORST_ACCOUNT_BLOB_URL, check_copy_source
from corpus.store.settings import Settings
from corpus.transfer.bloblist import MAX_PAGE, ListingError
from corpus.transfer.hashcache import HashCache, Md5Cache, NullHashCache
from corpus.transfer.pacing import RateLimiter
from corpus.upload.plan import Action, Decision, content_type, decide, parse_extensions, relative_name, staged_name
from corpus.upload.report import Failure, Progress, Summary
from corpus.upload.sender import RawSender, upload_client
from corpus.upload.walk import LocalDir, retry_dirs, walk


@dataclass
class UploadOptions:
    source: Path
    domain: str
    version: str
    concurrency: int = 32
    cap_mbps: float | None = None
    extensions: frozenset[str] = field(default_factory=lambda: parse_extensions(None))
    dry_run: bool = False
    only: list[str] | None = None  # relative paths (retry-from)
    use_cache: bool = True


@dataclass(frozen=True, slots=True)
class _Task:
    path: str
    rel: str
    staged: str
    size: int
    mtime_ns: int
    staged_md5: str | None  # what the listing said is already remote under this name
    original_md5: str | None


Remote = tuple[dict[str, str], dict[str, str]]
"""Per destination directory: file name → MD5 of what is staged, and of what is ingested."""

_Planned = tuple[str, str, str, tuple[int, int] | None]
"""One file as the planner named it: local path, relative name, destination folder, (size, mtime_ns)
if the walk could stat it. Small on purpose: the planner keeps a few folders of them ahead."""


FLAT_LISTING_LIMIT = MAX_PAGE
"""Blobs of the version's staging prefix listed in one request (List Blobs' largest page)."""

_Cached = dict[str, tuple[int, int, str]]
"""A directory's MD5 cache rows: path → (size, mtime_ns, md5)."""

_SETTLED_UNREAD = (Action.SKIP_STAGED, Action.SKIP_INGESTED)
"""What a file can be settled as from its cached MD5, without reading it."""

_PLANNED_AHEAD = 8
"""Directories walked, and listed remotely, ahead of the one being decided: listings overlap with
deciding, and memory stays bounded by a few directories whatever the size of the drop."""


class Lister(Protocol):
    """Lists what is remote: blob name (relative to ``prefix``) → hex MD5, ``""`` when it has none."""

    def list_md5s(self, container: str, prefix: str) -> dict[str, str]:
        """The blobs directly under ``prefix`` (a delimited listing, every page)."""
        ...

    def list_page(self, container: str, prefix: str, limit: int) -> tuple[dict[str, str], bool]:
        """At most ``limit`` blobs anywhere under ``prefix``, in name order, and whether that was all."""
        ...


@dataclass(frozen=True, slots=True)
class StagedPage:
    """The first page of a flat listing of the version's staging prefix, by folder.

    ``upto`` is None when the page held every staged blob of the version; else the last name it
    held, and a folder is *covered* (its staged files all in the page) when every name in it sorts
    before ``upto``. Listing order is the service's; should it ever differ from Python's for
    some exotic name, a staged file taken for missing is still never overwritten: its Put Blob is
    conditional (``If-None-Match: *``) and then decided against the blob's MD5.
    """

    folders: dict[str, dict[str, str]]
    upto: str | None

    @classmethod
    def of(cls, listed: dict[str, str], complete: bool) -> StagedPage:
        folders: dict[str, dict[str, str]] = {}
        for rel, md5 in listed.items():
            rdir, _, name = rel.rpartition("/")
            folders.setdefault(rdir, {})[name] = md5
        return cls(folders, None if complete else max(listed, default=""))

    def covers(self, rdir: str) -> bool:
        if self.upto is None:
            return True
        prefix = f"{rdir}/" if rdir else ""
        return bool(prefix) and self.upto > prefix and not self.upto.startswith(prefix)

    def folder(self, rdir: str) -> dict[str, str]:
        return self.folders.get(rdir, {})


NOTHING_LISTED = StagedPage({}, "")
"""A page that covers no folder: each is listed on its own (and a listing error is reported per file)."""


class Sender(Protocol):
    """Writes staged blobs. Errors are :class:`~corpus.domain.errors.StorageError` with a reason."""

    def put(self, name: str, data: bytes, md5: bytes, content_type: str) -> bool:
        """Create ``name`` with ``data`` unless it exists (``If-None-Match: *``); False if it existed."""
        ...

    def remote_md5(self, name: str) -> str:
        """The MD5 of what is staged under ``name`` (stored, or computed from its bytes)."""
        ...


class _Workers:
    """``--concurrency`` threads fed through a bounded queue, started with the first task: a re-run
    with nothing to send starts none. Used from the deciding thread only."""

    def __init__(self, n: int, work: Callable[[queue.Queue[_Task | None]], None]) -> None:
        self.n, self.work = n, work
        self.tasks: queue.Queue[_Task | None] = queue.Queue(maxsize=n * 4)
        self.threads: list[threading.Thread] = []

    def put(self, task: _Task) -> None:
        if not self.threads:
            self.threads = [threading.Thread(target=self.work, args=(self.tasks,), daemon=True) for _ in range(self.n)]
            for t in self.threads:
                t.start()
        self.tasks.put(task)

    def finish(self) -> None:
        """Let every worker drain the queue and stop; wait for them."""
        for _ in self.threads:
            self.tasks.put(None)
        for t in self.threads:
            t.join()


class Uploader:
    """Plans, decides and sends one drop. ``lister``, ``sender`` and ``cache`` are seams: by default
    List Blobs and Put Blob without the SDK (:mod:`corpus.transfer.bloblist`,
    :mod:`corpus.upload.sender`), and the on-disk MD5 cache."""

    def __init__(
        self,
        settings: Settings,
        opts: UploadOptions,
        progress: Progress | None = None,
        *,
        lister: Lister | None = None,
        sender: Sender | None = None,
        cache: Md5Cache | None = None,
    ) -> None:
        self.opts = opts
        self.settings = settings
        if lister is None or sender is None:
            client = upload_client(settings)
            lister = lister or client
            sender = sender or RawSender(client, settings.staging_container)
        self.lister: Lister = lister
        self.sender: Sender = sender
        self.summary = Summary(opts.domain, opts.version, str(opts.source))
        self.slots = threading.Semaphore(opts.concurrency)
        self.limiter = RateLimiter(opts.cap_mbps * 1_000_000 / 8) if opts.cap_mbps else None
        self.progress = progress
        self.cache: Md5Cache = cache if cache is not None else (HashCache() if opts.use_cache else NullHashCache())
        self._listers = ThreadPoolExecutor(max_workers=min(4, opts.concurrency), thread_name_prefix="corpus-list")
        self._staged_page: Future[StagedPage] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- orchestration ---------------------------------------------------------------------
    #
    # A planner thread walks the tree and starts the remote listings of the directories it
    # finds, a few directories ahead; this thread decides file by file as listings arrive
    # (skipping, without reading it, a file whose cached MD5 matches what is remote) and hands
    # the rest to ``--concurrency`` workers, which read, hash, decide for real and upload.

    def run(self) -> Summary:
        """Upload the drop; the summary says what happened to each file. Raises
        :class:`~corpus.transfer.bloblist.ListingError`, having sent nothing, if the version's
        staging prefix cannot be listed at all."""
        started = time.monotonic()
        planned: queue.Queue[tuple[str, list[_Planned], dict[str, Future[Remote]], _Cached] | None] = queue.Queue(
            maxsize=_PLANNED_AHEAD
        )
        planner = threading.Thread(target=self._plan, args=(planned,), daemon=True, name="corpus-plan")
        workers = _Workers(self.opts.concurrency, self._work)
        # First in the listers' queue, so no folder's listing (which waits for it) can hold its thread.
        self._staged_page = self._listers.submit(self._list_staged_page)
        planner.start()
        try:
            self._staged_page.result()  # storage down, or refusing to list: nothing is decided, nothing sent
            while (item := planned.get()) is not None:
                self._decide_dir(*item, workers)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._stop.set()
        except ListingError:
            self._stop.set()
            raise
        finally:
            self._listers.shutdown(wait=False, cancel_futures=True)
            try:
                workers.finish()
            except KeyboardInterrupt:
                self.summary.interrupted = True
                self._stop.set()
            self.summary.seconds = time.monotonic() - started
            self.cache.close()
        return self.summary

    def _local_dirs(self) -> Iterator[LocalDir]:
        if self.opts.only is not None:
            return retry_dirs(self.opts.source, self.opts.only, self.opts.extensions, self.summary)
        return walk(self.opts.source, self.opts.extensions, self.summary)

    def _plan(self, planned: queue.Queue[Any]) -> None:
        """Name each file, and start listing each destination directory before it is needed."""
        try:
            for local in self._local_dirs():
                base = relative_name(local.parts)
                entries: list[_Planned] = []
                names: dict[str, set[str]] = {}  # destination folder → the file names planned into it
                for path, name, st in local.files:
                    piece = relative_name([name])  # a backslash in a name is a separator: may go deeper
                    rel = f"{base}/{piece}" if base else piece
                    if not piece:
                        self._fail(path, rel, f"name does not fit the staging contract: {name!r} is only separators")
                        continue
                    # Checked against the staging contract only if it is to be sent (_one): a re-run
                    # skips what is already remote without paying for the validation of every name.
                    rdir, _, file_name = rel.rpartition("/")
                    names.setdefault(rdir, set()).add(file_name)
                    entries.append((path, rel, rdir, (st.st_size, st.st_mtime_ns) if st is not None else None))
                listings = {rdir: self._listers.submit(self._list_remote, rdir, frozenset(n)) for rdir, n in names.items()}
                cached = self.cache.directory(local.path)  # read here, while the listings are on their way
                if not self._put_unless_stopped(planned, (local.path, entries, listings, cached)):
                    return
        except Exception as exc:  # noqa: BLE001 - a bug here must not hang the run: report it as the run's failure
            if not self._stop.is_set():  # stopped: the listers were shut down under it, nothing to report
                self._fail(str(self.opts.source), "", f"planning stopped: {type(exc).__name__}: {exc}")
        finally:
            self._put_unless_stopped(planned, None)

    def _put_unless_stopped(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _list_staged_page(self) -> StagedPage:
        """One flat page of the version's staging prefix (``<domain>/<version>/`` holds nothing
        else: a version has no ``/``). It is also the run's reachability check, the first
        request and the one every decision waits for: if it fails (storage down, which the
        default lister does not retry before the service has answered once; credentials
        refused) :meth:`run` raises its :class:`ListingError` before any file is decided."""
        with self.slots:
            listed, complete = self.lister.list_page(
                self.settings.staging_container, f"{self.opts.domain}/{self.opts.version}/", FLAT_LISTING_LIMIT
            )
        return StagedPage.of(listed, complete)

    def _list_remote(self, rdir: str, names: frozenset[str]) -> Remote:
        """What is staged and ingested *directly* in one destination folder.

        Staging from the flat page when it covers the folder, else a delimited listing.
        ``original/`` only when some of ``names`` (the files planned into the folder) is not
        staged: a re-run right after an upload never lists it. ``original/<dir>/<version>/`` is
        not prefix-free (root set ``v2``'s folder ``original/v2/`` also holds set ``v2@v1``'s
        ``original/v2/v1/``): only the folder's own blobs are read (a delimited listing); sets
        themselves are enumerated from the ``Images`` table.
        """
        sub = rdir + "/" if rdir else ""
        page = self._staged_page.result() if self._staged_page is not None else NOTHING_LISTED
        if page.covers(rdir):
            staged = page.folder(rdir)
        else:
            with self.slots:
                staged = self.lister.list_md5s(self.settings.staging_container, f"{self.opts.domain}/{self.opts.version}/{sub}")
        if names <= staged.keys():
            return staged, {}
        with self.slots:
            ingested = self.lister.list_md5s(self.opts.domain, f"original/{sub}{self.opts.version}/")
        return staged, ingested

    def _decide_dir(
        self,
        directory: str,
        entries: list[_Planned],
        listings: dict[str, Future[Remote]],
        cached: _Cached,
        workers: _Workers,
    ) -> None:
        """Hand each file of one local directory to the workers, or settle it here: a file whose
        cached MD5 (same size and mtime) is what is remote is skipped without being read; those
        are counted once for the directory (a re-run settles thousands of files here)."""
        remote: dict[str, Remote | ListingError] = {}
        seen = seen_bytes = 0
        settled = dict.fromkeys(_SETTLED_UNREAD, 0)
        prefix = f"{self.opts.domain}/{self.opts.version}/"
        for path, rel, rdir, stat in entries:
            if self._stop.is_set():
                break
            staged = prefix + rel
            try:
                if stat is None:
                    st = os.stat(path)
                    stat = (st.st_size, st.st_mtime_ns)
            except OSError as exc:
                self._fail(path, staged, f"cannot read: {exc.strerror or exc}")
                continue
            listed = remote.get(rdir)
            if listed is None:
                try:
                    listed = remote[rdir] = listings[rdir].result()
                except ListingError as exc:
                    listed = remote[rdir] = exc
            if isinstance(listed, ListingError):
                self._fail(path, staged, f"cannot list what is already remote: {listed}")
                continue
            name = rel.rpartition("/")[2]
            staged_md5, original_md5 = listed[0].get(name), listed[1].get(name)
            seen += 1
            seen_bytes += stat[0]
            entry = cached.get(path)
            if entry is not None and entry[0] == stat[0] and entry[1] == stat[1]:
                action = decide(entry[2], staged_md5, original_md5).action
                if action in settled:
                    settled[action] += 1
                    continue
                # to upload or a conflict: a worker reads the file and decides for real
            workers.put(_Task(path, rel, staged, stat[0], stat[1], staged_md5, original_md5))
        with self._lock:
            self.summary.seen_files += seen
            self.summary.seen_bytes += seen_bytes
            self.summary.already_staged += settled[Action.SKIP_STAGED]
            self.summary.already_ingested += settled[Action.SKIP_INGESTED]
        if self.progress:
            for _ in range(sum(settled.values())):
                self.progress.tick(0, None)

    def _work(self, tasks: queue.Queue[_Task | None]) -> None:
        while (task := tasks.get()) is not None:
            if self._stop.is_set():
                continue
            try:
                self._one(task)
            except InvalidNameError as exc:
                self._fail(task.path, task.rel, f"name does not fit the staging contract: {exc}")
            except StorageError as exc:
                self._fail(task.path, task.staged, str(exc))
            except OSError as exc:
                self._fail(task.path, task.staged, f"cannot read: {exc.strerror or exc}")
            except Exception as exc:  # noqa: BLE001 - one bad file never stops a worker: it is reported
                self._fail(task.path, task.staged, f"{type(exc).__name__}: {exc}")

    # -- one file ----------------------------------------------------------------------------

    def _one(self, task: _Task) -> None:
        with open(task.path, "rb") as f:
            data = f.read()
        md5 = hashlib.md5(data, usedforsecurity=False)
        md5_hex = md5.hexdigest()
        staged_md5 = task.staged_md5
        if staged_md5 == "":  # staged without an MD5 (block upload by another tool): hash it
            staged_md5 = self._remote_md5(task.staged)
        decision = decide(md5_hex, staged_md5, task.original_md5)
        if decision.action is Action.UPLOAD:  # what would be sent must fit the staging contract
            staged_name(self.opts.domain, self.opts.version, task.rel)
            check_copy_source(WORST_ACCOUNT_BLOB_URL + self.settings.staging_container, task.staged)
        if decision.action is Action.UPLOAD and not self.opts.dry_run:
            decision = self._put(task, data, md5.digest())
        if decision.action is Action.CONFLICT:
            with self._lock:
                self.summary.failures.append(Failure(task.path, task.staged, decision.reason, "conflict"))
            if self.progress:
                self.progress.tick(0, None)
            return
        if not (self.opts.dry_run and decision.action is Action.UPLOAD):
            self.cache.put(task.path, task.size, task.mtime_ns, md5_hex)
        self._count(decision.action, task, len(data))

    def _count(self, action: Action, task: _Task, nbytes: int) -> None:
        with self._lock:
            s = self.summary
            if action is Action.UPLOAD:
                if self.opts.dry_run:
                    s.would_upload += 1
                    s.would_upload_files.append(valid_text(task.staged))  # printable once, kept once
                else:
                    s.uploaded += 1
                    s.bytes_uploaded += nbytes
            elif action is Action.SKIP_STAGED:
                s.already_staged += 1
            elif action is Action.SKIP_INGESTED:
                s.already_ingested += 1
        if self.progress:
            self.progress.tick(nbytes, task.staged if self.opts.dry_run and action is Action.UPLOAD else None)

    def _put(self, task: _Task, data: bytes, md5: bytes) -> Decision:
        if self.limiter:
            self.limiter.acquire(len(data))
        with self.slots:
            written = self.sender.put(task.staged, data, md5, content_type(task.rel))
        if written:
            return Decision(Action.UPLOAD)
        # Staged meanwhile (another run, or a re-upload racing us): same content is fine.
        return decide(md5.hex(), self._remote_md5(task.staged), None)

    def _remote_md5(self, name: str) -> str:
        with self.slots:
            return self.sender.remote_md5(name)

    def _fail(self, path: str, staged: str, reason: str) -> None:
        with self._lock:
            self.summary.failures.append(Failure(path, staged, reason))
        if self.progress:
            self.progress.tick(0, None)

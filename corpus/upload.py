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
ahead of the decisions, and what is remote is listed once per destination directory (staging and
``original/``) as soon as the walk finds it, so listings overlap with everything else; files flow
through bounded queues to ``--concurrency`` workers, so memory is bounded by a few directories'
listings, not by the drop. A re-run reads no file whose size and mtime match the local MD5 cache
(:mod:`corpus.hashcache`). Every request (listings included) holds one of ``--concurrency``
slots, and ``--cap-mbps`` is a shared token budget, so neither is exceeded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .bloblist import BlobLister, ListingError
from .hashcache import HashCache
from .paths import NameError_
from .settings import Settings
from .upload_plan import Action, Skip, classify, content_type, decide, parse_extensions, relative_name, staged_name

if TYPE_CHECKING:
    from azure.core.exceptions import AzureError
    from azure.storage.blob import ContainerClient

    from .storage import Clients

UPLOAD_CLIENT_OPTIONS = {"retry_total": 5, "initial_backoff": 1, "increment_base": 2, "max_single_put_size": 256 * 1024 * 1024}
"""Transient errors are retried with exponential back-off (1, 3, 5, 9, 17 s) before a file fails."""


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


@dataclass
class Failure:
    path: str
    staged: str
    reason: str
    kind: str = "failed"  # or "conflict"


@dataclass
class Summary:
    domain: str
    version: str
    source: str
    uploaded: int = 0
    bytes_uploaded: int = 0
    already_staged: int = 0
    already_ingested: int = 0
    would_upload: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Skip})
    failures: list[Failure] = field(default_factory=list)
    seen_files: int = 0
    seen_bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def conflicts(self) -> int:
        return sum(1 for f in self.failures if f.kind == "conflict")

    @property
    def failed(self) -> int:
        return sum(1 for f in self.failures if f.kind == "failed")

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain, "version": self.version, "source": self.source,
            "uploaded": self.uploaded, "bytes_uploaded": self.bytes_uploaded,
            "already_staged": self.already_staged, "already_ingested": self.already_ingested,
            "would_upload": self.would_upload, "skipped": self.skipped, "conflicts": self.conflicts,
            "failed": self.failed, "seconds": round(self.seconds, 3),
            "files_per_s": round(self.seen_files / self.seconds, 1) if self.seconds else None,
            "interrupted": self.interrupted,
            "failures": [f.__dict__ for f in self.failures],
        }  # fmt: skip


class RateLimiter:
    """Shared bandwidth budget: each request is scheduled after the bytes before it have drained."""

    def __init__(self, bytes_per_s: float, burst_bytes: float = 256 * 1024) -> None:
        self._rate = bytes_per_s
        self._credit = burst_bytes / bytes_per_s
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self._credit)
            self._next = start + n / self._rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)  # pacing to the cap is the point: there is no event to wait for


@dataclass(frozen=True, slots=True)
class _Task:
    path: str
    rel: str
    staged: str
    size: int
    mtime_ns: int
    staged_md5: str | None  # what the listing said is already remote under this name
    original_md5: str | None


@dataclass(slots=True)
class LocalDir:
    """One local directory's candidate files, in name order: (path, file name, stat or None)."""

    path: str
    parts: list[str]
    files: list[tuple[str, str, os.stat_result | None]]


Remote = tuple[dict[str, str], dict[str, str]]
"""Per destination directory: file name → MD5 of what is staged, and of what is ingested."""

_Planned = tuple[str, str, str, str, os.stat_result | None]
"""One file as the planner named it: local path, relative name, staged name, destination folder, stat."""


def walk(root: Path, extensions: frozenset[str], summary: Summary, under: tuple[str, ...] = ()) -> Iterator[LocalDir]:
    """Yield directories lazily with their image files; skip junk, hidden entries and escaping symlinks.

    ``under`` walks only that subdirectory of ``root`` (names stay relative to ``root``).
    """
    root_real = os.path.realpath(root)
    start = os.path.join(root, *under)
    visited = {os.path.realpath(start)}
    stack: list[tuple[str, list[str]]] = [(start, list(under))]
    while stack:
        directory, parts = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            summary.failures.append(Failure(directory, "", f"cannot list directory: {exc.strerror or exc}"))
            continue
        subdirs = []
        files: list[tuple[str, str, os.stat_result | None]] = []
        for entry in entries:
            if entry.name.startswith("."):
                summary.skipped[(Skip.JUNK if classify(entry.name, extensions) is Skip.JUNK else Skip.HIDDEN).value] += 1
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([root_real, target]) != root_real:
                        summary.skipped[Skip.SYMLINK_OUT.value] += 1
                        continue
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real not in visited:  # a symlink loop inside the source is walked once
                    visited.add(real)
                    subdirs.append((entry.path, [*parts, entry.name]))
                continue
            skip = classify(entry.name, extensions)
            if skip is not None:
                summary.skipped[skip.value] += 1
                continue
            try:
                st: os.stat_result | None = entry.stat()
            except OSError:
                st = None  # reported as unreadable when it is planned
            files.append((entry.path, entry.name, st))
        if files:
            yield LocalDir(directory, parts, files)
        stack.extend(reversed(subdirs))


def retry_dirs(root: Path, rels: list[str], extensions: frozenset[str], summary: Summary) -> Iterator[LocalDir]:
    """What a failures file names, grouped by directory like the walk: files, and directories
    that could not be listed, which are walked again."""
    by_dir: dict[str, list[str]] = {}
    for rel in rels:
        if os.path.isdir(os.path.join(root, rel)):
            yield from walk(root, extensions, summary, tuple(p for p in rel.split("/") if p not in ("", ".")))
            continue
        d, _, name = rel.rpartition("/")
        by_dir.setdefault(d, []).append(name)
    for d in sorted(by_dir):
        parts = d.split("/") if d else []
        directory = os.path.join(root, *parts)
        yield LocalDir(directory, parts, [(os.path.join(directory, n), n, None) for n in sorted(by_dir[d])])


_PLANNED_AHEAD = 8
"""Directories walked, and listed remotely, ahead of the one being decided: listings overlap with
deciding, and memory stays bounded by a few directories whatever the size of the drop."""


class Uploader:
    def __init__(self, settings: Settings, opts: UploadOptions, progress: Progress | None = None) -> None:
        self.opts = opts
        self.settings = settings
        # Listings go out at once, without the SDK (see corpus.bloblist); the SDK, which does the
        # writes, is loaded when the first file is to be sent, while later listings are under way.
        credential = None
        if not settings.connection.connection_string:
            from .storage import identity_credential

            credential = identity_credential(settings.connection)
        self._credential = credential
        self.lister = BlobLister.from_connection(settings.connection, credential)
        self._staging: ContainerClient | None = None
        self._sdk_lock = threading.Lock()
        self.summary = Summary(opts.domain, opts.version, str(opts.source))
        self.slots = threading.Semaphore(opts.concurrency)
        self.limiter = RateLimiter(opts.cap_mbps * 1_000_000 / 8) if opts.cap_mbps else None
        self.progress = progress
        self.cache = HashCache() if opts.use_cache else None
        self._listers = ThreadPoolExecutor(max_workers=min(4, opts.concurrency), thread_name_prefix="corpus-list")
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- orchestration ---------------------------------------------------------------------
    #
    # A planner thread walks the tree and starts the remote listings of the directories it
    # finds, a few directories ahead; this thread decides file by file as listings arrive
    # (skipping, without reading it, a file whose cached MD5 matches what is remote) and hands
    # the rest to ``--concurrency`` workers, which read, hash, decide for real and upload.

    def run(self) -> Summary:
        started = time.monotonic()
        planned: queue.Queue[tuple[str, list[_Planned], dict[str, Future[Remote]]] | None] = queue.Queue(maxsize=_PLANNED_AHEAD)
        tasks: queue.Queue[_Task | None] = queue.Queue(maxsize=self.opts.concurrency * 4)
        planner = threading.Thread(target=self._plan, args=(planned,), daemon=True, name="corpus-plan")
        workers = [threading.Thread(target=self._work, args=(tasks,), daemon=True) for _ in range(self.opts.concurrency)]
        planner.start()
        for w in workers:
            w.start()
        try:
            while (item := planned.get()) is not None:
                self._decide_dir(*item, tasks)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._stop.set()
        finally:
            self._listers.shutdown(wait=False, cancel_futures=True)
            for _ in workers:
                tasks.put(None)
            try:
                for w in workers:
                    w.join()
            except KeyboardInterrupt:
                self.summary.interrupted = True
                self._stop.set()
            self.summary.seconds = time.monotonic() - started
            if self.cache:
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
                listings: dict[str, Future[Remote]] = {}
                for path, name, st in local.files:
                    piece = relative_name([name])  # a backslash in a name is a separator: may go deeper
                    rel = f"{base}/{piece}" if base else piece
                    try:
                        if not piece:
                            raise NameError_(f"{name!r} is only separators")
                        staged = staged_name(self.opts.domain, self.opts.version, rel)
                    except NameError_ as exc:
                        self._fail(path, rel, f"name does not fit the staging contract: {exc}")
                        continue
                    rdir = rel.rpartition("/")[0]
                    if rdir not in listings:
                        listings[rdir] = self._listers.submit(self._list_remote, rdir)
                    entries.append((path, rel, staged, rdir, st))
                if not self._put_unless_stopped(planned, (local.path, entries, listings)):
                    return
        except Exception as exc:  # noqa: BLE001 - a bug here must not hang the run: report it as the run's failure
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

    def _list_remote(self, rdir: str) -> Remote:
        sub = rdir + "/" if rdir else ""
        with self.slots:
            staged = self.lister.list_md5s(self.settings.staging_container, f"{self.opts.domain}/{self.opts.version}/{sub}")
        with self.slots:
            ingested = self.lister.list_md5s(self.opts.domain, f"original/{sub}{self.opts.version}/")
        return staged, ingested

    @property
    def staging(self) -> ContainerClient:
        """The SDK client for writes, made on first use (its import is the slow part of start-up)."""
        with self._sdk_lock:
            if self._staging is None:
                from .storage import Clients

                clients: Clients = Clients(self.settings.connection, dict(UPLOAD_CLIENT_OPTIONS), self._credential)
                self._staging = clients.container(self.settings.staging_container)
            return self._staging

    def _decide_dir(
        self,
        directory: str,
        entries: list[_Planned],
        listings: dict[str, Future[Remote]],
        tasks: queue.Queue[_Task | None],
    ) -> None:
        cached = self.cache.directory(directory) if self.cache else {}
        for path, rel, staged, rdir, st in entries:
            if self._stop.is_set():
                return
            try:
                st = st or os.stat(path)
            except OSError as exc:
                self._fail(path, staged, f"cannot read: {exc.strerror or exc}")
                continue
            try:
                staged_map, ingested_map = listings[rdir].result()
            except ListingError as exc:
                self._fail(path, staged, f"cannot list what is already remote: {exc}")
                continue
            name = rel.rpartition("/")[2]
            task = _Task(path, rel, staged, st.st_size, st.st_mtime_ns, staged_map.get(name), ingested_map.get(name))
            with self._lock:
                self.summary.seen_files += 1
                self.summary.seen_bytes += task.size
            if not self._settled_from_cache(task, cached.get(path)):
                tasks.put(task)

    def _settled_from_cache(self, task: _Task, entry: tuple[int, int, str] | None) -> bool:
        """Skip a file already remote with the MD5 cached for its size and mtime, without reading it."""
        if entry is None or entry[:2] != (task.size, task.mtime_ns):
            return False
        action = decide(entry[2], task.staged_md5, task.original_md5).action
        if action not in (Action.SKIP_STAGED, Action.SKIP_INGESTED):
            return False  # to upload or a conflict: a worker reads the file and decides for real
        self._count(action, task, 0)
        return True

    def _work(self, tasks: queue.Queue[_Task | None]) -> None:
        while (task := tasks.get()) is not None:
            # The first file to send loads the SDK (the other workers wait for that import); a
            # re-run that sends nothing never pays for it.
            from azure.core.exceptions import AzureError

            if self._stop.is_set():
                continue
            try:
                self._one(task)
            except AzureError as exc:
                self._fail(task.path, task.staged, _azure_reason(exc))
            except OSError as exc:
                self._fail(task.path, task.staged, f"cannot read: {exc.strerror or exc}")

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
        if decision.action is Action.UPLOAD and not self.opts.dry_run:
            decision = self._put(task, data, md5.digest())
        if decision.action is Action.CONFLICT:
            with self._lock:
                self.summary.failures.append(Failure(task.path, task.staged, decision.reason, "conflict"))
            if self.progress:
                self.progress.tick(0, None)
            return
        if self.cache and not (self.opts.dry_run and decision.action is Action.UPLOAD):
            self.cache.put(task.path, task.size, task.mtime_ns, md5_hex)
        self._count(decision.action, task, len(data))

    def _count(self, action: Action, task: _Task, nbytes: int) -> None:
        with self._lock:
            s = self.summary
            if action is Action.UPLOAD:
                if self.opts.dry_run:
                    s.would_upload += 1
                else:
                    s.uploaded += 1
                    s.bytes_uploaded += nbytes
            elif action is Action.SKIP_STAGED:
                s.already_staged += 1
            elif action is Action.SKIP_INGESTED:
                s.already_ingested += 1
        if self.progress:
            self.progress.tick(nbytes, task.staged if self.opts.dry_run and action is Action.UPLOAD else None)

    def _put(self, task: _Task, data: bytes, md5: bytes) -> Any:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        from .upload_plan import Decision

        if self.limiter:
            self.limiter.acquire(len(data))
        blob = self.staging.get_blob_client(task.staged)
        try:
            with self.slots:
                blob.upload_blob(
                    data,
                    overwrite=False,
                    content_settings=ContentSettings(content_type=content_type(task.rel), content_md5=bytearray(md5)),
                    headers={"Content-MD5": base64.b64encode(md5).decode()},  # verified by the service
                    max_concurrency=1,
                )
            return Decision(Action.UPLOAD)
        except ResourceExistsError:
            # Staged meanwhile (another run, or a re-upload racing us): same content is fine.
            remote = self._remote_md5(task.staged)
            return decide(md5.hex(), remote, None)

    def _remote_md5(self, name: str) -> str:
        from .storage import blob_md5

        blob = self.staging.get_blob_client(name)
        with self.slots:
            return blob_md5(blob, blob.get_blob_properties())

    def _fail(self, path: str, staged: str, reason: str) -> None:
        with self._lock:
            self.summary.failures.append(Failure(path, staged, reason))
        if self.progress:
            self.progress.tick(0, None)


def _azure_reason(exc: AzureError) -> str:
    from azure.core.exceptions import HttpResponseError

    if isinstance(exc, HttpResponseError):
        first = (exc.message or str(exc)).splitlines()[0]
        return f"storage error {exc.status_code} {getattr(exc, 'error_code', '') or ''}: {first}".strip()
    return f"{type(exc).__name__}: {exc}"


class Progress:
    """A one-line progress bar on a terminal; a log line every few seconds otherwise."""

    def __init__(self, stream: TextIO, summary_ref: Uploader | None = None, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval or (0.2 if self.tty else 5.0)
        self.done_files = 0
        self.done_bytes = 0
        self.uploader = summary_ref
        self._lock = threading.Lock()
        self._last = 0.0
        self._start = time.monotonic()

    def tick(self, nbytes: int, dry_run_name: str | None) -> None:
        with self._lock:
            self.done_files += 1
            self.done_bytes += nbytes
            if dry_run_name:
                print(f"would upload {dry_run_name}", file=self.stream)
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self.render(final=False)

    def render(self, final: bool) -> None:
        s = self.uploader.summary if self.uploader else None
        total_files = s.seen_files if s else 0
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = self.done_bytes / elapsed
        files_rate = self.done_files / elapsed
        remaining = max(total_files - self.done_files, 0)
        eta = f"{remaining / files_rate:,.0f}s" if files_rate and not final else "-"
        line = (f"{self.done_files:,}/{total_files:,}+ files  {self.done_bytes / 1e6:,.1f} MB  "
                f"{rate * 8 / 1e6:,.1f} Mbit/s  {files_rate:,.0f} files/s  ETA {eta}")  # fmt: skip
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
            self.stream.flush()
        else:
            print(line, file=self.stream)


def load_retry_file(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"source", "domain", "version", "failures"} <= set(data):
        raise ValueError(f"{path} is not a failures file written by corpus upload --failures")
    return data


def retry_paths(data: dict[str, Any]) -> list[str]:
    """Relative paths of the files a failures file lists (directories that failed are re-walked)."""
    root = Path(data["source"])
    out = []
    for failure in data["failures"]:
        path = Path(failure["path"])
        try:
            out.append(path.relative_to(root).as_posix())
        except ValueError:
            continue
    return out


def write_failures(path: Path, summary: Summary) -> None:
    body = summary.as_json()
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False), encoding="utf-8")


def human_summary(s: Summary, stream: TextIO = sys.stderr) -> None:
    skipped = ", ".join(f"{n} {k}" for k, n in s.skipped.items() if n) or "none"
    verb = f"would upload {s.would_upload}" if s.would_upload else f"uploaded {s.uploaded} ({s.bytes_uploaded / 1e6:,.1f} MB)"
    print(f"{verb}; already staged {s.already_staged}; already ingested {s.already_ingested}; "
          f"skipped: {skipped}; conflicts {s.conflicts}; failed {s.failed}; {s.seconds:.1f}s", file=stream)  # fmt: skip
    for f in s.failures:
        print(f"  {f.kind}: {f.path}: {f.reason}", file=stream)
    if s.interrupted:
        print("interrupted: run the same command again to send the rest", file=stream)

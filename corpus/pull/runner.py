"""``corpus pull``: a training set (or an ad-hoc selection) onto local disk, verified by MD5.

How it stays correct:

* every file is downloaded to ``<final name>.corpus-part`` in its destination folder, its MD5
  compared with the manifest's, and only then renamed (``os.replace``, atomic on one file
  system): a killed pull leaves no partial file under a final name, and leftovers of a killed
  run are removed by the next one;
* a blob whose bytes do not match the manifest's MD5 (changed behind the corpus's back) is a
  failure naming ``container/blob``; nothing is written for it;
* a re-run fetches only what is missing or differs: a local file of the manifest's size whose
  (path, size, mtime) is in the local MD5 cache with the manifest's MD5 is not even read (the
  cache is :class:`corpus.transfer.hashcache.HashCache` in its own file); one not in the cache is
  hashed once;
* a re-run of a pull that completed, with the same manifest (by the digest of its bytes), is a
  stat of each file it placed (:mod:`corpus.pull.stamp`): any file missing or changed, and the
  pull runs in full.

Same conventions as ``corpus upload``: ``--concurrency`` requests in flight, ``--cap-mbps`` a
shared budget (:class:`corpus.transfer.pacing.RateLimiter`), a progress line, ``--failures FILE``
(JSON) and ``--retry-from FILE``; the CLI exits 1 on failures and 130 when interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from corpus.domain.errors import StorageError
from corpus.pull.fetch import BlobFetcher
from corpus.pull.sources import EntryReader, Source, TrainsetSource
from corpus.pull.stamp import NullStamp, PullStamp
from corpus.store.settings import Settings
from corpus.transfer.hashcache import HashCache, Md5Cache, NullHashCache, default_path

if TYPE_CHECKING:  # a re-run settled by its stamp loads neither the manifest nor the naming modules
    from corpus.domain.layouts import LocalPath
    from corpus.domain.manifest import ManifestEntry
    from corpus.pull.names import NameIndex
from corpus.transfer.pacing import RateLimiter, write_status

NAME_MAP = ".corpus-names.jsonl"
"""In DEST: one JSON line per file whose local name is not its documented one (encoded or renamed
on a collision: ``path``, ``container``, ``blob``, ``lossy``); pulls into one folder merge theirs."""


def cache_path() -> Path:
    return default_path().with_name("pull-md5.sqlite")


def stamp_dir() -> Path:
    return default_path().with_name("pull-stamps")


@dataclass
class PullOptions:
    source: Source
    dest: Path
    layout: str = "imagefolder"
    split: str | None = None
    concurrency: int = 32
    cap_mbps: float | None = None
    dry_run: bool = False
    only: set[tuple[str, str]] | None = None  # (container, blob): retry-from
    use_cache: bool = True


@dataclass
class PullFailure:
    container: str
    blob: str
    path: str
    reason: str


@dataclass
class PullSummary:
    source: dict[str, Any]
    dest: str
    layout: str
    split: str | None
    files: int = 0
    bytes: int = 0
    downloaded: int = 0
    bytes_downloaded: int = 0
    present: int = 0
    would_download: int = 0
    renamed: int = 0
    lossy_names: int = 0
    failures: list[PullFailure] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    stamped: bool = False  # complete by the stamp of the last pull: every file's size and mtime unchanged

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "dest": self.dest, "layout": self.layout, "split": self.split,
            "files": self.files, "bytes": self.bytes, "downloaded": self.downloaded,
            "bytes_downloaded": self.bytes_downloaded, "present": self.present,
            "would_download": self.would_download, "renamed": self.renamed, "lossy_names": self.lossy_names,
            "failed": len(self.failures), "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files / self.seconds, 1) if self.seconds else None,
            "interrupted": self.interrupted, "stamped": self.stamped, "failures": [f.__dict__ for f in self.failures],
        }  # fmt: skip


class PullProgress:
    """A one-line progress bar on a terminal; a log line every few seconds otherwise."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream, self.total = stream, total
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else 5.0
        self.files = self.nbytes = 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def tick(self, nbytes: int) -> None:
        with self._lock:
            self.files += 1
            self.nbytes += nbytes
            if time.monotonic() - self._last >= self.interval:
                self._last = time.monotonic()
                self.render(False)

    def render(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        line = (f"{self.files:,}/{self.total:,} files  {self.nbytes / 1e6:,.1f} MB  "
                f"{self.nbytes * 8 / 1e6 / elapsed:,.1f} Mbit/s  {self.files / elapsed:,.0f} files/s")  # fmt: skip
        write_status(self.stream, self.tty, line, final)


class Puller:
    def __init__(
        self,
        settings: Settings,
        opts: PullOptions,
        *,
        fetcher: BlobFetcher | None = None,
        cache: Md5Cache | None = None,
        progress_stream: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.opts = opts
        self.fetcher = fetcher or BlobFetcher(settings.connection)
        self._given_cache = cache
        self.cache: Md5Cache = NullHashCache()  # opened by run() unless the stamp settles the pull
        self._hashes: HashCache | None = None  # self.cache when it is the on-disk MD5 cache (lookups worth a stat)
        self.limiter = RateLimiter(opts.cap_mbps * 1_000_000 / 8) if opts.cap_mbps else None
        self.summary = PullSummary(opts.source.describe(), str(opts.dest), opts.layout, opts.split)
        self.progress_stream = progress_stream
        self.progress: PullProgress | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: EntryReader | None = None
        self.stamp: PullStamp | NullStamp = NullStamp()

    def selection(self) -> Iterator[ManifestEntry]:
        """Every entry of the source, streamed: names are decided over all of them (every split).
        A training set's manifest is fetched once for both passes."""
        if self._reader is None:
            self._reader = EntryReader(self.settings)
        return self._reader.entries(self.opts.source)

    def _stamp(self) -> PullStamp | NullStamp:
        """The stamp of this pull: a complete pull of a training set into DEST, MD5 cache in use."""
        o = self.opts
        if o.dry_run or o.only is not None or not o.use_cache or not isinstance(o.source, TrainsetSource):
            return NullStamp()
        if self._reader is None:
            self._reader = EntryReader(self.settings)
        digest = self._reader.spooled(o.source).sha256
        return PullStamp(stamp_dir(), o.dest, digest, {"source": o.source.describe(), "layout": o.layout, "split": o.split})

    def wanted(self, e: ManifestEntry) -> bool:
        return (self.opts.split is None or e.split == self.opts.split) and (
            self.opts.only is None or (e.container, e.blob) in self.opts.only
        )

    def run(self) -> PullSummary:
        started = time.monotonic()
        try:
            self.stamp = self._stamp()
            counts = self.stamp.holds()
        except BaseException:
            self._close()
            raise
        if counts is not None:  # nothing to do: every file the last pull placed is as it left it
            s = self.summary
            s.files = s.present = int(counts["files"])
            s.bytes, s.renamed, s.lossy_names = int(counts["bytes"]), int(counts["renamed"]), int(counts["lossy_names"])
            s.stamped = True
            self._close()
            s.seconds = time.monotonic() - started
            return s
        from corpus.pull.names import NameIndex

        if self._given_cache is not None:
            self.cache = self._given_cache
        elif self.opts.use_cache:
            self.cache = HashCache(cache_path())
        self._hashes = self.cache if isinstance(self.cache, HashCache) else None
        self.stamp.begin()
        names = NameIndex(self.opts.layout)
        completed = False
        try:
            for e in self.selection():  # pass 1: every planned name, counted on disk
                names.add(e)
                if self.wanted(e):
                    self.summary.files += 1
                    self.summary.bytes += e.size
            if self.progress_stream is not None:
                self.progress = PullProgress(self.progress_stream, self.summary.files)
            if not self.opts.dry_run:
                self.opts.dest.mkdir(parents=True, exist_ok=True)
                self._sweep_parts()
            self._transfer(self._named(names))  # pass 2: names, then the transfers, streamed
            completed = True
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._stop.set()
        finally:
            try:
                if not self.opts.dry_run and self.opts.dest.is_dir():
                    self.summary.renamed = names.write_map(self.opts.dest / NAME_MAP)
                s = self.summary
                if completed and not s.failures and not s.interrupted:
                    self.stamp.commit({"files": s.files, "bytes": s.bytes, "renamed": s.renamed, "lossy_names": s.lossy_names})
            finally:
                self.stamp.abandon()  # a no-op once committed
                names.close()
                self._close()
                self.summary.seconds = time.monotonic() - started
        if self.progress:
            self.progress.render(True)
        return self.summary

    def _close(self) -> None:
        self.cache.close()
        if self._reader is not None:
            self._reader.close()

    def _named(self, names: NameIndex) -> Iterator[tuple[ManifestEntry, LocalPath]]:
        for e in self.selection():
            if not self.wanted(e):
                continue
            lp = names.local_path(e)
            if lp.changed:
                names.record(e, lp)
            if lp.lossy:
                self.summary.lossy_names += 1
            yield e, lp

    def _sweep_parts(self) -> None:
        """Remove what a killed pull left half-written: only ``*.corpus-part`` files, never a final name."""
        from corpus.domain.layouts import PART_SUFFIX

        for root, _, files in os.walk(self.opts.dest):
            for name in files:
                if name.endswith(PART_SUFFIX):
                    try:
                        os.remove(os.path.join(root, name))
                    except OSError:
                        pass

    def _transfer(self, named: Iterator[tuple[ManifestEntry, LocalPath]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        inflight = threading.Semaphore(self.opts.concurrency * 4)  # bounded: no list of futures
        pool = ThreadPoolExecutor(max_workers=self.opts.concurrency, thread_name_prefix="corpus-pull")
        try:
            for e, p in named:
                final = self.opts.dest / p.rel
                if self._settled(e, str(final), p.rel):
                    continue  # already there, by the cache: no thread, no read
                inflight.acquire()
                if self._stop.is_set():
                    break
                fut = pool.submit(self._safe_one, e, final, p.rel)
                fut.add_done_callback(lambda _f: inflight.release())
            pool.shutdown(wait=True)
        except KeyboardInterrupt:
            self.summary.interrupted = True
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _settled(self, entry: ManifestEntry, path: str, rel: str) -> bool:
        """True (and counted) if ``path`` is the entry's file by the MD5 cache: a stat and a lookup."""
        if self._hashes is None:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != entry.size or self._hashes.get(path, st.st_size, st.st_mtime_ns) != entry.md5_hex:
            return False
        self.stamp.add(rel, st)
        with self._lock:
            self.summary.present += 1
        if self.progress:
            self.progress.tick(0)
        return True

    def _safe_one(self, entry: ManifestEntry, final: Path, rel: str) -> None:
        if self._stop.is_set():
            return
        try:
            nbytes = self._one(entry, final, rel)
        except StorageError as exc:
            self._fail(entry, final, str(exc))
        except OSError as exc:
            self._fail(entry, final, f"cannot write: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the others: it is reported
            self._fail(entry, final, f"{type(exc).__name__}: {exc}")
        else:
            if self.progress:
                self.progress.tick(nbytes)

    def _one(self, entry: ManifestEntry, final: Path, rel: str) -> int:
        """Make ``final`` hold exactly the entry's bytes; the bytes downloaded (0 when already there)."""
        want = entry.md5_hex
        path = str(final)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_size == entry.size:
            have = self._hashes.get(path, st.st_size, st.st_mtime_ns) if self._hashes is not None else None
            if have is None:
                with open(path, "rb") as f:
                    have = hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
                self.cache.put(path, st.st_size, st.st_mtime_ns, have)
            if have == want:
                self.stamp.add(rel, st)
                with self._lock:
                    self.summary.present += 1
                return 0
        if self.opts.dry_run:
            with self._lock:
                self.summary.would_download += 1
            return 0
        if self.limiter:
            self.limiter.acquire(entry.size)
        if self._stop.is_set():  # interrupted while waiting for the budget: leave it to the next run
            return 0
        data = self.fetcher.get(entry.container, entry.blob)
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != want:
            raise StorageError(
                f"{entry.container}/{entry.blob} changed behind the corpus's back: its MD5 is {got}, the manifest says {want}"
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        from corpus.domain.layouts import PART_SUFFIX  # loaded once, by the first download

        part = path + PART_SUFFIX
        with open(part, "wb") as f:
            f.write(data)
        os.replace(part, path)
        st = os.stat(path)
        self.cache.put(path, st.st_size, st.st_mtime_ns, got)
        self.stamp.add(rel, st)
        with self._lock:
            self.summary.downloaded += 1
            self.summary.bytes_downloaded += len(data)
        return len(data)

    def _fail(self, entry: ManifestEntry, final: Path, reason: str) -> None:
        with self._lock:
            self.summary.failures.append(PullFailure(entry.container, entry.blob, str(final), reason))
        if self.progress:
            self.progress.tick(0)


def write_failures(path: Path, summary: PullSummary) -> None:
    path.write_text(json.dumps(summary.as_json(), indent=2, ensure_ascii=False), encoding="utf-8")


def load_retry(path: Path) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """(the summary written by ``--failures``, the (container, blob) pairs to retry)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"source", "dest", "layout", "failures"} <= set(data):
        raise ValueError(f"{path} is not a failures file written by corpus pull --failures")
    return data, {(f["container"], f["blob"]) for f in data["failures"]}


def human_summary(s: PullSummary, stream: TextIO = sys.stderr) -> None:
    verb = (
        f"would download {s.would_download}"
        if s.would_download
        else f"downloaded {s.downloaded} ({s.bytes_downloaded / 1e6:,.1f} MB)"
    )
    renamed = f"{s.renamed} (see {NAME_MAP})" if s.renamed else "0"
    print(f"{verb}; already present {s.present}; of {s.files} files; renamed {renamed}; "
          f"failed {len(s.failures)}; {s.seconds:.1f}s", file=stream)  # fmt: skip
    for f in s.failures:
        print(f"  failed: {f.container}/{f.blob}: {f.reason}", file=stream)
    if s.interrupted:
        print("interrupted: run the same command again to fetch the rest", file=stream)

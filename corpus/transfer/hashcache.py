"""A local cache of file MD5s keyed by (path, size, mtime), so a re-run need not read every file.

Re-running an upload over a drop of tens of thousands of files should cost a directory walk and a
remote listing, not a full read of the drop. A file whose size and modification time are what
they were when it was last hashed is taken to have the same MD5, as rsync and rclone assume by
default; ``corpus upload --no-cache`` hashes everything. The cache is SQLite on disk, so memory
does not grow with the drop. It only ever decides that a file may be *skipped*; whatever is
uploaded is read and hashed afresh.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

log = logging.getLogger("corpus.upload")


class Md5Cache(Protocol):
    """What the uploader asks of the cache."""

    def directory(self, directory: str) -> dict[str, tuple[int, int, str]]: ...

    def put(self, path: str, size: int, mtime_ns: int, md5: str) -> None: ...

    def close(self) -> None: ...


class NullHashCache:
    """``--no-cache``: remembers nothing, so every file is read and hashed."""

    def directory(self, directory: str) -> dict[str, tuple[int, int, str]]:
        return {}

    def put(self, path: str, size: int, mtime_ns: int, md5: str) -> None:
        pass

    def close(self) -> None:
        pass


def default_path() -> Path:
    base = os.environ.get("CORPUS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "corpus"
    )
    return Path(base) / "upload-md5.sqlite"


class HashCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            # A cache is disposable: a corrupt one is set aside (for a bug report) and rebuilt, at
            # the cost of hashing every file once more.
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("MD5 cache %s is unreadable (%s): moved to %s, starting afresh", self.path, exc, aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            os.replace(self.path, aside)
            self._db = self._open()
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int, str]] = []

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, md5 TEXT)")
            db.execute("SELECT count(*) FROM files WHERE path = ''").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        if not _storable(path):
            return None
        with self._lock:
            row = self._db.execute("SELECT size, mtime_ns, md5 FROM files WHERE path = ?", (path,)).fetchone()
        if row and row[0] == size and row[1] == mtime_ns:
            return str(row[2])
        return None

    def directory(self, directory: str) -> dict[str, tuple[int, int, str]]:
        """Every cached file directly inside ``directory``: path → (size, mtime_ns, md5), one query."""
        if not _storable(directory):
            return {}
        lo = directory.rstrip("/") + "/"
        hi = lo[:-1] + "0"  # the character after '/'
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, md5 FROM files WHERE path >= ? AND path < ? AND instr(substr(path, ?), '/') = 0",
                (lo, hi, len(lo) + 1),
            ).fetchall()
        return {path: (size, mtime, md5) for path, size, mtime, md5 in rows}

    def put(self, path: str, size: int, mtime_ns: int, md5: str) -> None:
        if not _storable(path):
            return  # an undecodable name: hashed every run rather than crash the cache
        with self._lock:
            self._pending.append((path, size, mtime_ns, md5))
            if len(self._pending) >= 1000:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", self._pending)
            self._db.execute("COMMIT")
            self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._db.close()


def _storable(path: str) -> bool:
    """SQLite stores UTF-8 text: a path holding undecodable bytes (lone surrogates) is not cached."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

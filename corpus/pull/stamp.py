"""The record of a completed pull, so that a re-run with nothing to do is a stat per file.

A pull that ended with every file in place (no failure, not interrupted, not a dry run, not a
``--retry-from``) writes a *stamp*: the digest of the manifest's bytes, the layout and split, and
each file it placed as (path relative to DEST, size, mtime in ns). The next pull of the same
manifest (same bytes, same layout and split) into the same DEST reads the stamp and stats each
file: if every one is still there with its size and mtime, the pull is complete and nothing else
is done (no names planned, no manifest parsed, no cache lookups). Any difference, a missing or a
changed file, or a stamp that is absent, incomplete or of another manifest, and the pull runs in
full, which fetches what is missing or differs and writes a new stamp. It trusts (size, mtime)
exactly as the MD5 cache does (and rsync and rclone by default); ``--no-cache`` bypasses both.

Stamps live in the cache directory (not in DEST, which holds only the pulled files and the name
map), one per (DEST, source, layout, split), as JSON lines: a header, one line per file, and a
trailer with the counts; a stamp without its trailer is ignored. It is written to a temporary
name and renamed, so a killed pull never leaves a stamp that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

FORMAT = 1


class PullStamp:
    def __init__(self, directory: Path, dest: Path, manifest_sha256: str, key: dict[str, Any]) -> None:
        self.header = {"stamp": FORMAT, "dest": str(dest), "manifest_sha256": manifest_sha256, **key}
        name = hashlib.sha256(json.dumps(self.header, sort_keys=True).encode()).hexdigest()[:32]
        self.dest = dest
        self.path = directory / f"{name}.jsonl"
        self._part = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        self._out: IO[str] | None = None
        self._lock = threading.Lock()

    def holds(self) -> dict[str, Any] | None:
        """The stamp's counts if every file it lists is still there with its size and mtime, else None.

        Streamed: memory does not grow with the number of files.
        """
        try:
            f = self.path.open(encoding="utf-8")
        except OSError:
            return None
        with f:
            try:
                if json.loads(f.readline()) != self.header:
                    return None
                for seen, line in enumerate(f):
                    item = json.loads(line)
                    if isinstance(item, dict):  # the trailer: last, and only after every file
                        return item if item.get("files") == seen and f.readline() == "" else None
                    rel, size, mtime_ns = item
                    st = os.stat(os.path.join(self.dest, rel))
                    if st.st_size != size or st.st_mtime_ns != mtime_ns:
                        return None
            except (OSError, ValueError, TypeError):
                return None
        return None  # no trailer: written by a pull that did not finish

    def begin(self) -> None:
        """Start recording (the previous stamp, if any, no longer holds: it is removed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._out = self._part.open("w", encoding="utf-8")
        self._out.write(json.dumps(self.header) + "\n")

    def add(self, rel: str, st: os.stat_result) -> None:
        """One file in place, as it is on disk now."""
        with self._lock:
            if self._out is not None:
                self._out.write(json.dumps([rel, st.st_size, st.st_mtime_ns]) + "\n")

    def commit(self, counts: dict[str, Any]) -> None:
        """The pull is complete: the stamp holds from now on."""
        with self._lock:
            if self._out is None:
                return
            self._out.write(json.dumps(counts) + "\n")
            self._out.close()
            self._out = None
            os.replace(self._part, self.path)

    def abandon(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
            self._part.unlink(missing_ok=True)


class NullStamp:
    """No stamp (``--no-cache``, a dry run, a retry, an ad-hoc selection): records nothing."""

    def holds(self) -> dict[str, Any] | None:
        return None

    def begin(self) -> None:
        pass

    def add(self, rel: str, st: os.stat_result) -> None:
        pass

    def commit(self, counts: dict[str, Any]) -> None:
        pass

    def abandon(self) -> None:
        pass

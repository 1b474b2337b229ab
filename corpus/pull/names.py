"""The local names of a pull, decided over the whole selection with its state on disk (issue 25, R7).

Whether a file must be renamed depends on every other file of the selection (two blobs whose
documented names are equal up to case). :class:`NameIndex` keeps the count of each case-folded
planned name in a temporary SQLite file, not in memory, so a pull of millions of files keeps
O(block) state; the renamed files' name-map lines go to the same file until the map is written.
Names are always decided over the whole selection (every split, retried or not), so
``--split``, ``--retry-from`` and a full pull give every file the same name (B4, B6).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from corpus.domain.layouts import PART_SUFFIX, LocalPath, planned_path, renamed_file
from corpus.domain.manifest import ManifestEntry


class NameIndex:
    def __init__(self, layout: str) -> None:
        self.layout = layout
        fd, self.path = tempfile.mkstemp(prefix="corpus-pull-names-", suffix=".sqlite")
        os.close(fd)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE names (fold TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE map (path TEXT PRIMARY KEY, line TEXT NOT NULL)")

    def add(self, entry: ManifestEntry) -> None:
        """Pass 1: count the entry's planned name."""
        fold = planned_path(entry, self.layout).fold
        self.db.execute("INSERT INTO names VALUES (?, 1) ON CONFLICT(fold) DO UPDATE SET n = n + 1", (fold,))

    def _count(self, fold: str) -> int:
        row = self.db.execute("SELECT n FROM names WHERE fold = ?", (fold,)).fetchone()
        return int(row[0]) if row else 0

    def local_path(self, entry: ManifestEntry) -> LocalPath:
        """Pass 2: the entry's name; a collision is renamed (:func:`renamed_file`), never onto a name
        another file of the selection has (B2)."""
        p = planned_path(entry, self.layout)
        if self._count(p.fold) > 1:
            return LocalPath(p.rel(renamed_file(p, entry, lambda fold: self._count(fold) > 0)), True, p.lossy)
        return LocalPath(p.rel(), p.changed, p.lossy)

    def record(self, entry: ManifestEntry, lp: LocalPath) -> None:
        """Remember a name-map line for a file whose name is not the documented one."""
        line = json.dumps({"path": lp.rel, "container": entry.container, "blob": entry.blob, "lossy": lp.lossy},
                          ensure_ascii=False)  # fmt: skip
        self.db.execute("INSERT OR REPLACE INTO map VALUES (?, ?)", (lp.rel, line))

    def write_map(self, target: Path) -> int:
        """Merge the recorded lines into ``target`` (one line per path, sorted; lines of earlier pulls
        into the same folder are kept: B6); the number of lines recorded by this pull."""
        mine = int(self.db.execute("SELECT count(*) FROM map").fetchone()[0])
        if not mine:
            return 0
        if target.exists():
            with target.open(encoding="utf-8") as f:
                for raw in f:
                    try:
                        old = json.loads(raw)
                        self.db.execute("INSERT OR IGNORE INTO map VALUES (?, ?)", (str(old["path"]), raw.rstrip("\n")))
                    except (ValueError, KeyError, TypeError):
                        continue  # not one of ours: dropped
        tmp = target.with_name(target.name + PART_SUFFIX)
        with tmp.open("w", encoding="utf-8") as f:
            for (line,) in self.db.execute("SELECT line FROM map ORDER BY path"):
                f.write(line + "\n")
        os.replace(tmp, target)
        return mine

    def lines(self) -> Iterator[str]:
        for (line,) in self.db.execute("SELECT line FROM map ORDER BY path"):
            yield line

    def close(self) -> None:
        self.db.close()
        try:
            os.remove(self.path)
        except OSError:
            pass

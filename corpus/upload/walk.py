"""Walking a local drop lazily, directory by directory: image files, junk and hidden entries
counted, symlinks followed only while they stay inside the source folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corpus.upload.plan import Skip, classify
from corpus.upload.report import Failure, Summary


@dataclass(slots=True)
class LocalDir:
    """One local directory's candidate files, in name order: (path, file name, stat or None)."""

    path: str
    parts: list[str]
    files: list[tuple[str, str, os.stat_result | None]]


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

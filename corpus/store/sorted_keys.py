"""A sorted set of strings whose inserts and deletes stay cheap at millions of keys, for the
in-memory stores (:mod:`corpus.store.memory`, :mod:`corpus.store.memory_tables`).

One sorted Python list costs a memmove of the list's tail per insert or delete: at 1M keys
that is ~4 MB per operation and the store slows as it fills (quadratic in N overall). Here the
keys live in chunks of at most ``2 * load`` sorted keys, found by bisecting the chunks' last
keys, so an insert or delete moves at most one chunk (O(log n + load)) and iteration from a key
is O(log n) to start, then O(1) per key. The same idea as ``sortedcontainers.SortedList``,
reduced to the four verbs the stores use (not a dependency for 60 lines).

Not thread-safe: the stores call it under their own lock, and consume :meth:`iter_from`
within that lock (a split or delete would shift a generator in flight).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator


class SortedKeys:
    """Distinct strings in order; the caller says whether a key is new (it keeps a dict)."""

    __slots__ = ("_chunks", "_load", "_maxes", "_n")

    def __init__(self, load: int = 1_000) -> None:
        self._chunks: list[list[str]] = []
        self._maxes: list[str] = []  # the last key of each chunk, sorted
        self._load = load
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, key: str) -> None:
        """Insert ``key``, which must not be present (the caller checks its own dict)."""
        self._n += 1
        if not self._chunks:
            self._chunks.append([key])
            self._maxes.append(key)
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):  # above every key: the last chunk grows
            i -= 1
            self._chunks[i].append(key)
            self._maxes[i] = key
        else:
            insort(self._chunks[i], key)
        chunk = self._chunks[i]
        if len(chunk) > 2 * self._load:
            half = len(chunk) // 2
            self._chunks[i : i + 1] = [chunk[:half], chunk[half:]]
            self._maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, key: str) -> None:
        """Delete ``key``, which must be present."""
        i = bisect_left(self._maxes, key)
        chunk = self._chunks[i]
        j = bisect_left(chunk, key)
        if chunk[j] != key:
            raise KeyError(key)
        del chunk[j]
        self._n -= 1
        if not chunk:
            del self._chunks[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = chunk[-1]

    def iter_from(self, lo: str) -> Iterator[str]:
        """Every key at or above ``lo``, in order."""
        i = bisect_left(self._maxes, lo)
        if i == len(self._maxes):
            return
        chunk = self._chunks[i]
        yield from chunk[bisect_left(chunk, lo) :]
        for k in range(i + 1, len(self._chunks)):
            yield from self._chunks[k]

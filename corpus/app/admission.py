"""Admission by declared size: the host's memory is bounded by design, not by luck.

A 389 KB PNG can declare 9999 x 9999 pixels; decoding it takes ~300-400 MB. Twenty-four such
uploads decoded at once took a host to 3.1 GB. Every decode therefore first *declares* what it
will allocate (from the header: pixels x bytes per pixel, before any pixel is read) and holds that
much of one per-process budget (``CORPUS_DECODE_BUDGET_BYTES``) while it runs; the others wait.
An image larger than the whole budget (only possible if the budget is set below
``CORPUS_MAX_PIXELS`` x 4) runs alone. Peak decode memory per process is thus at most
``max(budget, largest admissible image)``, whatever the concurrency.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class MemoryBudget:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a memory budget must be positive")
        self.capacity = capacity
        self._used = 0
        self._cv = threading.Condition()
        self.peak = 0  # most bytes held at once (for tests and benchmarks)

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the block, waiting until they are free."""
        n = min(max(nbytes, 0), self.capacity)
        with self._cv:
            while self._used + n > self.capacity:
                self._cv.wait()
            self._used += n
            self.peak = max(self.peak, self._used)
        try:
            yield
        finally:
            with self._cv:
                self._used -= n
                self._cv.notify_all()

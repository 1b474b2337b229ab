"""What ``corpus upload`` and ``corpus pull`` share about moving bytes: a bandwidth budget and a
progress line. (``pull`` may not import ``upload``: what both use lives in :mod:`corpus.transfer`.)"""

from __future__ import annotations

import threading
import time
from typing import TextIO


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


def write_status(stream: TextIO, tty: bool, line: str, final: bool) -> None:
    """A progress line: rewritten in place on a terminal (kept when ``final``), a log line otherwise."""
    if tty:
        stream.write("\r\033[K" + line + ("\n" if final else ""))
        stream.flush()
    else:
        print(line, file=stream)

"""One log line per batch of work done (``ingested 50 (birds/v1) in 2.1 s``), nothing otherwise.

Functions run one image per invocation, many at once; a line per image would drown the log and
no line at all (as before) leaves the operator guessing. :class:`Progress` counts completed items
per key and writes one line when a key has :data:`BATCH` items, or when its oldest uncounted item
is :data:`MAX_AGE` seconds old (a background tick), and at exit. Counting is in memory, per
process: on Azure each instance reports its own share. Redelivered items that find their work
done are not counted (callers count only what they did).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("corpus.progress")

BATCH = 50
MAX_AGE = 5.0


class Progress:
    def __init__(
        self, verb: str, batch: int = BATCH, max_age: float = MAX_AGE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.verb = verb
        self.batch = batch
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, float]] = {}  # key -> (items, first item's start)
        self._ticker: threading.Thread | None = None

    def done(self, key: str, items: int = 1, started: float | None = None) -> None:
        """``items`` of ``key`` finished; ``started`` (this clock) when the first of them began."""
        now = self.clock()
        with self._lock:
            n, since = self._pending.get(key, (0, started if started is not None else now))
            n += items
            if n >= self.batch:
                self._pending.pop(key, None)
                self._emit(key, n, now - since)
            else:
                self._pending[key] = (n, since)
            self._start_ticker()

    def flush(self, older_than: float = 0.0) -> None:
        now = self.clock()
        with self._lock:
            for key, (n, since) in list(self._pending.items()):
                if now - since >= older_than:
                    del self._pending[key]
                    self._emit(key, n, now - since)

    def _emit(self, key: str, n: int, seconds: float) -> None:
        log.info("%s %d (%s) in %.1f s", self.verb, n, key, seconds)

    def _start_ticker(self) -> None:
        if self._ticker is not None:
            return

        def tick() -> None:
            while True:
                time.sleep(1.0)
                self.flush(older_than=self.max_age)

        self._ticker = threading.Thread(target=tick, name=f"progress-{self.verb}", daemon=True)
        self._ticker.start()
        atexit.register(self.flush)


INGESTED = Progress("ingested")
TRANSFORMED = Progress("transformed")


def flush_all() -> None:
    """Write the partial batches now (the local host, before its summary line)."""
    INGESTED.flush()
    TRANSFORMED.flush()

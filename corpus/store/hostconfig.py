"""The parts of ``host.json`` that change behaviour: queue and blob trigger settings.

Blob triggers have their own settings (``extensions.blobs``): ``maxDegreeOfParallelism`` bounds
concurrent blob-triggered invocations per instance, and ``poisonBlobThreshold`` is how many
attempts a blob gets before ``webjobs-blobtrigger-poison``. The queue settings do not apply.

Read by the local host (to behave like the Functions host) and by the job runner (to know when
an attempt is the last one before the poison queue). Defaults are the Functions host's own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus.domain.errors import ConfigError

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?$")


def parse_timespan(value: str) -> float:
    """Seconds in a .NET ``TimeSpan`` string such as ``00:00:05`` or ``1.02:00:00``."""
    match = _TIMESPAN.match(value.strip())
    if not match:
        raise ConfigError(f"not a TimeSpan (d.hh:mm:ss): {value!r}")
    days, hours, minutes, seconds, fraction = match.groups()
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (float("0." + fraction) if fraction else 0.0)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    batch_size: int = 16
    new_batch_threshold: int | None = None
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"

    @property
    def threshold(self) -> int:
        """The host's default threshold is half the batch size (per instance, per function)."""
        return self.batch_size // 2 if self.new_batch_threshold is None else self.new_batch_threshold

    @property
    def max_concurrency(self) -> int:
        """Messages one function processes at once on one instance: the throttle."""
        return self.batch_size + self.threshold


@dataclass(frozen=True, slots=True)
class BlobConfig:
    """``extensions.blobs``; defaults are the Functions host's (8 per core, 5 attempts)."""

    max_degree_of_parallelism: int = 8 * (os.cpu_count() or 1)
    poison_blob_threshold: int = 5


def load_blob_config(host_json: Path | str = "host.json") -> BlobConfig:
    path = Path(host_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        b = data.get("extensions", {}).get("blobs", {})
        default = BlobConfig()
        cfg = BlobConfig(
            max_degree_of_parallelism=int(b.get("maxDegreeOfParallelism", default.max_degree_of_parallelism)),
            poison_blob_threshold=int(b.get("poisonBlobThreshold", default.poison_blob_threshold)),
        )
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable blob settings ({type(exc).__name__}: {exc})") from exc
    if cfg.max_degree_of_parallelism < 1 or cfg.poison_blob_threshold < 1:
        raise ConfigError(f"{path}: blobs.maxDegreeOfParallelism and blobs.poisonBlobThreshold must be at least 1")
    return cfg


def load_queue_config(host_json: Path | str = "host.json") -> QueueConfig:
    path = Path(host_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        q = data.get("extensions", {}).get("queues", {})
        cfg = _queue_config(q)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{path}: {exc}") from exc
        raise ConfigError(f"{path}: unreadable queue settings ({type(exc).__name__}: {exc})") from exc
    return cfg


def _queue_config(q: dict[str, Any]) -> QueueConfig:
    cfg = QueueConfig(
        batch_size=int(q.get("batchSize", 16)),
        new_batch_threshold=int(q["newBatchThreshold"]) if "newBatchThreshold" in q else None,
        max_dequeue_count=int(q.get("maxDequeueCount", 5)),
        visibility_timeout=parse_timespan(q.get("visibilityTimeout", "00:00:00")),
        max_polling_interval=parse_timespan(q.get("maxPollingInterval", "00:01:00")),
        message_encoding=str(q.get("messageEncoding", "base64")).lower(),
    )
    if not 1 <= cfg.batch_size <= 32:
        raise ConfigError("host.json queues.batchSize must be 1..32 (the Functions host's limit)")
    if cfg.message_encoding not in ("base64", "none"):
        raise ConfigError("host.json queues.messageEncoding must be 'base64' or 'none'")
    return cfg


DEFAULT_ROUTE_PREFIX = "api"
"""The Functions host's default ``extensions.http.routePrefix``."""


def load_route_prefix(host_json: Path | str = "host.json") -> str:
    """``extensions.http.routePrefix`` without surrounding slashes (``""``: routes start at the root).

    The corpus sets it to ``""`` so that both ``/api/…`` and ``/gallery/…`` are its own routes.
    """
    path = Path(host_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        prefix = data.get("extensions", {}).get("http", {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable http settings ({type(exc).__name__}: {exc})") from exc
    if not isinstance(prefix, str):
        raise ConfigError(f"{path}: extensions.http.routePrefix must be a string")
    return prefix.strip("/")

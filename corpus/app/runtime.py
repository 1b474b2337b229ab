"""The wiring shared by every function invocation: settings, clients, catalog, host settings.

Built once per worker process (the Functions Python worker keeps the module loaded between
invocations), so clients and their connection pool are reused across invocations.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from corpus.app.admission import MemoryBudget
from corpus.domain.tags import load_extractor
from corpus.store.azure_ports import AzureBlobStore, AzureOutbox, encode_message, put_from_url_supported
from corpus.store.catalog import Catalog
from corpus.store.groupcommit import ImageRecorder
from corpus.store.groupdelete import BatchDeleter
from corpus.store.hostconfig import QueueConfig, load_queue_config
from corpus.store.memory import MemoryBlobStore, MemoryOutbox
from corpus.store.memory_tables import MemoryTables
from corpus.store.ports import BlobStore, Outbox
from corpus.store.rows import FailureRow
from corpus.store.settings import BLOB_POISON_QUEUE, TABLES, Settings, poison_queue
from corpus.store.storage import FUNCTION_RETRY, Clients

__all__ = ["Runtime", "app_root", "check_config", "encode_message", "get_runtime"]

log = logging.getLogger("corpus")

APP_ROOT = Path(__file__).resolve().parents[2]


def app_root() -> Path:
    """Where ``function_app.py`` and ``host.json`` live: the Functions host (and ours) says so in
    ``AzureWebJobsScriptRoot``; otherwise this checkout."""
    return Path(os.environ.get("AzureWebJobsScriptRoot") or APP_ROOT)


@dataclass
class Runtime:
    """Everything a use case touches, built once per process: ``blobs`` and ``outbox`` are the
    store ports (:mod:`corpus.store.ports`); ``catalog`` the table stores; ``clients`` remains for
    the table adapters and the tools that still need a raw client."""

    settings: Settings
    clients: Clients
    catalog: Catalog
    queues: QueueConfig
    recorder: ImageRecorder
    decode_budget: MemoryBudget
    blobs: BlobStore
    outbox: Outbox
    deleter: BatchDeleter  # the staged blobs' conditional deletes, batched across invocations
    _containers: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls, settings: Settings | None = None, host_json: Path | None = None, profile: Mapping[str, Any] = FUNCTION_RETRY
    ) -> Runtime:
        """Wire everything for one process; a bad setting, tag extractor or host.json raises
        :class:`~corpus.domain.errors.ConfigError` here, once, before any input is touched.

        ``profile``: the clients' retry options, :data:`~corpus.store.storage.FUNCTION_RETRY` for
        the function app (a retry beats a failed message), ``FAIL_FAST`` for the CLI (a person waits).
        """
        settings = settings or Settings.from_env()
        load_extractor(settings.tag_extractor)
        return_freed_images_to_the_os()
        clients = Clients(settings.connection, dict(profile))
        blobs = AzureBlobStore(clients, put_from_url=put_from_url_supported(settings))
        catalog = Catalog(clients, blobs)
        queues = load_queue_config(host_json or app_root() / "host.json")
        return cls(
            settings=settings,
            clients=clients,
            catalog=catalog,
            recorder=ImageRecorder(catalog),
            decode_budget=MemoryBudget(settings.decode_budget_bytes),
            queues=queues,
            blobs=blobs,
            outbox=AzureOutbox(clients, queues.message_encoding),
            deleter=BatchDeleter(blobs),
        )

    @classmethod
    def in_memory(cls, settings: Settings | None = None, host_json: Path | None = None) -> Runtime:
        """Every store in memory (:mod:`corpus.store.memory`, :mod:`corpus.store.memory_tables`),
        with the same use-case code: fast unit tests and scale runs, no Azurite."""
        settings = settings or Settings.from_env({"CorpusStorage": "UseDevelopmentStorage=true"})
        load_extractor(settings.tag_extractor)
        tables = MemoryTables()
        # as Azure unless told otherwise: the production copy path (Put Blob From URL) by default
        blobs = MemoryBlobStore(put_from_url=settings.copy_mode != "copy")
        catalog = Catalog(tables, blobs)
        queues = load_queue_config(host_json or app_root() / "host.json")
        return cls(
            settings=settings,
            # MemoryTables answers table_client() and ensure(): all that is asked of clients once
            # blobs and queues go through the ports.
            clients=cast(Clients, tables),
            catalog=catalog,
            recorder=ImageRecorder(catalog),
            decode_budget=MemoryBudget(settings.decode_budget_bytes),
            queues=queues,
            blobs=blobs,
            outbox=MemoryOutbox(queues.message_encoding),
            deleter=BatchDeleter(blobs),
        )

    # -- the failure reporter's seam (corpus.app.failures.Reporter) ---------------------------

    def record_failure(self, row: FailureRow) -> None:
        self.catalog.failures.record(row)

    def record_failure_once(self, row: FailureRow) -> bool:
        return self.catalog.failures.record_once(row)

    def clear_failure(self, source: str, key: str) -> None:
        self.catalog.failures.clear(source, key)

    @property
    def max_dequeue_count(self) -> int:
        return self.queues.max_dequeue_count

    def send(self, queue: str, text: str, time_to_live: int | None = None) -> None:
        """Enqueue ``text`` encoded as host.json's ``messageEncoding`` says the triggers will decode it.

        ``time_to_live=-1``: the message never expires (poison messages: the queue default is 7 days).
        """
        self.outbox.send(queue, text, time_to_live)

    def ensure_container(self, name: str) -> None:
        """Create a domain container on first use; cached, as containers are never deleted by us."""
        if name in self._containers:
            return
        self.blobs.ensure_container(name)
        with self._lock:
            self._containers.add(name)

    def ensure_resources(self) -> None:
        """Create the containers, queues and tables the app needs (Bicep does this in Azure).

        Poison queues too: the failure reporter writes to ``<queue>-poison`` before the Functions
        host ever has (it creates them lazily), and would get 404 on a fresh account; and
        ``<queue>-poison-poison``, where a poison queue's recorder moves what it could not record
        (:func:`corpus.app.failures.record_poisoned`).
        """
        s = self.settings
        containers = (
            s.staging_container,
            s.rejected_container,
            s.deadletter_container,
            s.trainsets_container,
            s.exports_container,
        )
        for name in containers:
            self.blobs.ensure_container(name)
        self.clients.ensure(
            queues=s.queues
            + tuple(poison_queue(q) for q in s.queues)
            + tuple(poison_queue(poison_queue(q)) for q in s.queues)
            + (BLOB_POISON_QUEUE,),
            tables=TABLES,
        )


M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_images_to_the_os() -> bool:
    """Fix glibc's mmap threshold at 1 MiB: every decoded image (Pillow allocates them in blocks
    of up to 16 MiB) is then its own mapping, returned to the OS when freed.

    glibc raises the threshold dynamically (up to 32 MiB) after the first large free, after which
    image blocks come from per-thread heap arenas that keep the memory: renders admitted one at a
    time by the decode budget, on eight request threads, still grew the process to 1.8 GB of RSS
    for 8 previews of 100 MP PNGs (issue 25 R1). Linux/glibc only; elsewhere a no-op (False)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.create()
        return _runtime


def check_config() -> None:
    """Build the runtime now: called when ``function_app`` is imported, so a bad configuration
    fails the app's start-up with one clear line instead of failing every invocation."""
    get_runtime()

"""The wiring shared by every function invocation: settings, clients, catalog, host settings.

Built once per worker process (the Functions Python worker keeps the module loaded between
invocations), so clients and their connection pool are reused across invocations.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from azure.core.exceptions import ResourceExistsError

from corpus.app.admission import MemoryBudget
from corpus.domain.tags import load_extractor
from corpus.store.catalog import Catalog
from corpus.store.groupcommit import ImageRecorder
from corpus.store.hostconfig import QueueConfig, load_queue_config
from corpus.store.rows import FailureRow
from corpus.store.settings import BLOB_POISON_QUEUE, TABLES, Settings, poison_queue
from corpus.store.storage import FUNCTION_RETRY, Clients

log = logging.getLogger("corpus")

APP_ROOT = Path(__file__).resolve().parents[2]


def app_root() -> Path:
    """Where ``function_app.py`` and ``host.json`` live: the Functions host (and ours) says so in
    ``AzureWebJobsScriptRoot``; otherwise this checkout."""
    return Path(os.environ.get("AzureWebJobsScriptRoot") or APP_ROOT)


@dataclass
class Runtime:
    settings: Settings
    clients: Clients
    catalog: Catalog
    queues: QueueConfig
    recorder: ImageRecorder
    decode_budget: MemoryBudget
    _containers: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings | None = None, host_json: Path | None = None) -> Runtime:
        """Wire everything for one process; a bad setting, tag extractor or host.json raises
        :class:`~corpus.domain.errors.ConfigError` here, once, before any input is touched."""
        settings = settings or Settings.from_env()
        load_extractor(settings.tag_extractor)
        clients = Clients(settings.connection, dict(FUNCTION_RETRY))
        catalog = Catalog(clients)
        return cls(
            settings=settings,
            clients=clients,
            catalog=catalog,
            recorder=ImageRecorder(catalog),
            decode_budget=MemoryBudget(settings.decode_budget_bytes),
            queues=load_queue_config(host_json or app_root() / "host.json"),
        )

    # -- the failure reporter's seam (corpus.app.failures.Reporter) ---------------------------

    def record_failure(self, row: FailureRow) -> None:
        self.catalog.failures.record(row)

    def clear_failure(self, source: str, key: str) -> None:
        self.catalog.failures.clear(source, key)

    @property
    def max_dequeue_count(self) -> int:
        return self.queues.max_dequeue_count

    def send(self, queue: str, text: str, time_to_live: int | None = None) -> None:
        """Enqueue ``text`` encoded as host.json's ``messageEncoding`` says the triggers will decode it.

        ``time_to_live=-1``: the message never expires (poison messages: the queue default is 7 days).
        """
        self.clients.queue_client(queue).send_message(
            encode_message(text, self.queues.message_encoding), time_to_live=time_to_live
        )

    def ensure_container(self, name: str) -> None:
        """Create a domain container on first use; cached, as containers are never deleted by us."""
        if name in self._containers:
            return
        try:
            self.clients.container(name).create_container()
        except ResourceExistsError:
            pass
        with self._lock:
            self._containers.add(name)

    def ensure_resources(self) -> None:
        """Create the containers, queues and tables the app needs (Bicep does this in Azure).

        Poison queues too: the failure reporter writes to ``<queue>-poison`` before the Functions
        host ever has (it creates them lazily), and would get 404 on a fresh account.
        """
        s = self.settings
        self.clients.ensure(
            containers=(
                s.staging_container,
                s.rejected_container,
                s.deadletter_container,
                s.trainsets_container,
                s.exports_container,
            ),
            queues=s.queues + tuple(poison_queue(q) for q in s.queues) + (BLOB_POISON_QUEUE,),
            tables=TABLES,
        )


def encode_message(text: str, encoding: str) -> str:
    """A producer must match the trigger's ``messageEncoding``, or its messages go to poison."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii") if encoding == "base64" else text


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

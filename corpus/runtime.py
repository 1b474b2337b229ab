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

from .catalog import Catalog
from .groupcommit import ImageRecorder
from .hostconfig import QueueConfig, load_queue_config
from .settings import TABLES, Settings
from .storage import Clients

log = logging.getLogger("corpus")

APP_ROOT = Path(__file__).resolve().parent.parent


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
    _containers: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings | None = None, host_json: Path | None = None) -> Runtime:
        settings = settings or Settings.from_env()
        clients = Clients(settings.connection)
        catalog = Catalog(clients)
        return cls(
            settings=settings,
            clients=clients,
            catalog=catalog,
            recorder=ImageRecorder(catalog),
            queues=load_queue_config(host_json or app_root() / "host.json"),
        )

    def send(self, queue: str, text: str) -> None:
        """Enqueue ``text`` encoded as host.json's ``messageEncoding`` says the triggers will decode it."""
        self.clients.queue_client(queue).send_message(encode_message(text, self.queues.message_encoding))

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
        """Create the containers, queues and tables the app needs (Bicep does this in Azure)."""
        s = self.settings
        self.clients.ensure(
            containers=(s.staging_container, s.rejected_container),
            queues=s.queues + tuple(q + "-poison" for q in s.queues),
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

"""Thin adapters over the Azure SDK clients: construction, and the few error shapes we branch on.

One HTTP session with a connection pool sized for the throttle is shared by all clients: the
SDK default (10 connections per host) would otherwise serialise a 24-wide batch and log
"connection pool is full" warnings.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient

from .settings import Connection

POOL_SIZE = 64

_session_lock = threading.Lock()
_session: requests.Session | None = None


def _shared_session() -> requests.Session:
    global _session
    with _session_lock:
        if _session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _session = session
        return _session


def _transport() -> RequestsTransport:
    return RequestsTransport(session=_shared_session(), session_owner=False)


def error_code(exc: HttpResponseError) -> str:
    """The storage error code (``BlobAlreadyExists``, ``ConditionNotMet``…), or ``""``."""
    return str(getattr(exc, "error_code", None) or "")


FAIL_FAST = {"retry_total": 1, "initial_backoff": 1, "increment_base": 1, "connection_timeout": 5}
"""Client options for interactive commands: a person waiting should hear of an outage in seconds."""


@dataclass
class Clients:
    """Service clients for one connection, created lazily and shared by threads.

    ``options`` go to every client (retry and timeout settings); the SDK defaults, which retry
    for about a minute with back-off, suit functions, where a retry beats a failed message.
    """

    connection: Connection
    options: dict[str, Any] = field(default_factory=dict)

    def _credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self.connection.client_id)

    @cached_property
    def credential(self) -> Any:
        return None if self.connection.connection_string else self._credential()

    @cached_property
    def blob(self) -> BlobServiceClient:
        c = self.connection
        if c.connection_string:
            return BlobServiceClient.from_connection_string(c.connection_string, transport=_transport(), **self.options)
        return BlobServiceClient(c.blob_uri or "", credential=self.credential, transport=_transport(), **self.options)

    @cached_property
    def queue(self) -> QueueServiceClient:
        # No encode/decode policy: bodies are plain text; see corpus.messages.decode_body.
        c = self.connection
        if c.connection_string:
            return QueueServiceClient.from_connection_string(c.connection_string, transport=_transport(), **self.options)
        return QueueServiceClient(c.queue_uri or "", credential=self.credential, transport=_transport(), **self.options)

    @cached_property
    def table(self) -> TableServiceClient:
        c = self.connection
        if c.connection_string:
            return TableServiceClient.from_connection_string(c.connection_string, transport=_transport(), **self.options)
        return TableServiceClient(c.table_uri or "", credential=self.credential, transport=_transport(), **self.options)

    def container(self, name: str) -> ContainerClient:
        return self.blob.get_container_client(name)

    def queue_client(self, name: str) -> QueueClient:
        return self.queue.get_queue_client(name)

    def table_client(self, name: str) -> TableClient:
        return self.table.get_table_client(name)

    def ensure(self, containers: tuple[str, ...] = (), queues: tuple[str, ...] = (), tables: tuple[str, ...] = ()) -> None:
        """Create what is missing. In Azure the Bicep creates these; locally the host does."""
        for name in containers:
            try:
                self.container(name).create_container()
            except ResourceExistsError:
                pass
        for name in queues:
            try:
                self.queue_client(name).create_queue()
            except ResourceExistsError:
                pass
        for name in tables:
            self.table.create_table_if_not_exists(name)

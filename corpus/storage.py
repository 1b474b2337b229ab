"""Thin adapters over the Azure SDK clients: construction, and the few error shapes we branch on.

One HTTP session with a connection pool sized for the throttle is shared by all clients: the
SDK default (10 connections per host) would otherwise serialise a 24-wide batch and log
"connection pool is full" warnings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, unquote, urlencode
from xml.etree import ElementTree

import requests
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import BlobClient, BlobProperties, BlobServiceClient, ContainerClient
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


def list_md5s(container: ContainerClient, prefix: str) -> dict[str, str]:
    """Names (relative to ``prefix``, direct children only) → hex MD5 ("" when the blob has none).

    The SDK's ``walk_blobs`` spends about half a millisecond of CPU per blob turning XML into
    models; re-running an upload over 20,000 files would spend most of its time there. This sends
    the same List Blobs request through the client's own pipeline (same auth, retries, version)
    and reads only the two fields it needs with ElementTree. A 404 (no container) is empty.
    """
    out: dict[str, str] = {}
    marker = ""
    version = container._client._config.version
    while True:
        query = {"restype": "container", "comp": "list", "prefix": prefix, "delimiter": "/", "maxresults": "5000"}
        if marker:
            query["marker"] = marker
        request = HttpRequest("GET", f"{container.url}?{urlencode(query, quote_via=quote)}", headers={"x-ms-version": version})
        response = container._client._send_request(request)
        if response.status_code == 404:
            return out
        if response.status_code != 200:
            raise HttpResponseError(response=response)
        marker = ""
        # Streamed: each <Blob> is read and then cleared, so a 5,000-blob page never becomes a tree.
        for _, el in ElementTree.iterparse(io.BytesIO(response.body()), events=("end",)):  # noqa: S314 - expat refuses entity bombs
            if el.tag == "Blob":
                name_el = el.find("Name")
                name = (name_el.text or "") if name_el is not None else ""
                if name_el is not None and name_el.get("Encoded") == "true":
                    name = unquote(name)
                md5 = el.findtext("Properties/Content-MD5") or ""
                out[name[len(prefix) :]] = base64.b64decode(md5).hex() if md5 else ""
                el.clear()
            elif el.tag == "NextMarker":
                marker = el.text or ""
        if not marker:
            return out


def stored_md5(props: BlobProperties) -> str:
    """The blob's ``Content-MD5`` property as hex, or ``""`` when it has none (block uploads)."""
    return bytes(props.content_settings.content_md5 or b"").hex()


def blob_md5(blob: BlobClient, props: BlobProperties) -> str:
    """The blob's MD5: its stored property, else computed from the bytes of exactly that version."""
    md5 = stored_md5(props)
    if md5:
        return md5
    content = blob.download_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified).readall()
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


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

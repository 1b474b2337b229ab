"""Thin adapters over the Azure SDK clients: construction, and the few error shapes we branch on.

All clients share one HTTP session (:mod:`corpus.http`), whose pool is sized for the throttle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.pipeline.transport import HttpTransport, RequestsTransport

from corpus.store.http import ca_verify, proxies_configured, shared_session
from corpus.store.lean_http import LeanTransport, lean_enabled
from corpus.store.settings import Connection

if TYPE_CHECKING:  # imported when first used: `corpus upload` needs neither, and each costs ~0.1 s to start
    # (the blob SDK too: a `corpus pull` re-run reads one table row and the manifest without it)
    from azure.data.tables import TableClient, TableServiceClient
    from azure.storage.blob import BlobClient, BlobProperties, BlobServiceClient, ContainerClient
    from azure.storage.queue import QueueClient, QueueServiceClient


def identity_credential(connection: Connection) -> Any:
    """The managed identity in Azure (``clientId`` picks a user-assigned one), else a developer login."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=connection.client_id)


def _transport(options: dict[str, Any] | None = None) -> HttpTransport[Any, Any]:
    """The storage clients' transport: :class:`~corpus.store.lean_http.LeanTransport` over the
    shared ``requests`` session, which serves what the lean one hands on (and everything when a
    proxy is configured, or ``CORPUS_HTTP=requests``).

    The clients' ``connection_timeout``/``read_timeout`` options are given to the transports here:
    a client handed a transport never passes them on (``FAIL_FAST``'s 5 s reached neither before)."""
    opts = options or {}
    timeouts = {k: float(opts[k]) for k in ("connection_timeout", "read_timeout") if isinstance(opts.get(k), int | float)}
    # verify per request as requests itself would (the session no longer reads the environment)
    fallback = RequestsTransport(session=shared_session(), session_owner=False, connection_verify=ca_verify(), **timeouts)
    if proxies_configured() or not lean_enabled():
        return cast("HttpTransport[Any, Any]", fallback)
    return LeanTransport(fallback, ca_verify(), **timeouts)


STORAGE_SDK_TIMEOUTS = {"connection_timeout": 20, "read_timeout": 60}
"""What the blob and queue SDKs set when they build their own transport
(``azure/storage/*/_shared/constants.py``: ``CONNECTION_TIMEOUT``, ``READ_TIMEOUT``); the tables SDK
leaves azure-core's 300 s. Kept when a transport is passed in, which the SDKs then do not touch."""


def _timeouts(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    defaults = {} if cls.__name__ == "TableServiceClient" else STORAGE_SDK_TIMEOUTS
    return {**defaults, **options}


def blob_request(container: ContainerClient, method: str, name: str) -> Any:
    """One ``method`` request for the blob ``name`` through ``container``'s own pipeline (its
    signing, retries and transport), the body left unread and undecoded (``stream``): what the
    store's HEAD and the host's trigger read need, without building a ``BlobClient`` and
    deserialising its ~50 header models. The URL is the SDK's own (``_format_url``, a SAS appended)."""
    from azure.core.rest import HttpRequest
    from azure.storage.blob._blob_client_helpers import _format_url

    url = _format_url(
        container_name=container.container_name,
        scheme=container.scheme,
        blob_name=name,
        query_str=str(getattr(container, "_query_str", "")),
        hostname=container.primary_hostname,
    )
    return container._client._send_request(HttpRequest(method, url, headers={"x-ms-version": container.api_version}), stream=True)


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
    """The storage error code (``BlobAlreadyExists``, ``ConditionNotMet``…), or ``""``.

    The SDK gives a ``StorageErrorCode`` enum member where it knows the code, a ``str`` otherwise;
    ``str()`` of the enum member is ``"StorageErrorCode.CONDITION_NOT_MET"``, never equal to the
    wire code, so the member's ``value`` is taken.
    """
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


FUNCTION_RETRY: dict[str, Any] = {
    "retry_total": 5,
    # Blob and queue clients (ExponentialRetry): 1 + 2**n s, jittered: ~3, 5, 9, 17, 33 s.
    "initial_backoff": 1,
    "increment_base": 2,
    # Table clients (azure-core RetryPolicy): 1, 2, 4, 8, 16 s, at most 30.
    "retry_backoff_factor": 1.0,
    "retry_backoff_max": 30,
}
"""Client options for functions, explicit rather than the SDK's defaults: Azure answers 503
``ServerBusy`` (and 500 ``OperationTimedOut``) when a partition passes ~2,000 entities/s or an
account ~20,000 requests/s; both SDK policies retry 408/429/500/502/503/504 with these back-offs,
about a minute in all, before the failure reaches the failure reporter (and the queue retries)."""

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
    token_credential: Any = None  # share one identity (and its token cache) with another client
    _containers: dict[str, ContainerClient] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def credential(self) -> Any:
        if self.connection.connection_string:
            return None
        return self.token_credential or identity_credential(self.connection)

    def _service(self, cls: Any, uri: str | None, options: dict[str, Any]) -> Any:
        """A service client from the connection string, or from the service URI and identity."""
        if self.connection.connection_string:
            return cls.from_connection_string(
                self.connection.connection_string, transport=_transport(_timeouts(cls, options)), **options
            )
        return cls(uri or "", credential=self.credential, transport=_transport(_timeouts(cls, options)), **options)

    @cached_property
    def blob(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        client: BlobServiceClient = self._service(BlobServiceClient, self.connection.blob_uri, self.options)
        return client

    @cached_property
    def queue(self) -> QueueServiceClient:
        from azure.storage.queue import QueueServiceClient

        # No encode/decode policy: bodies are plain text; see corpus.domain.messages.decode_body.
        client: QueueServiceClient = self._service(QueueServiceClient, self.connection.queue_uri, self.options)
        return client

    @cached_property
    def table(self) -> TableServiceClient:
        from azure.data.tables import TableServiceClient

        client: TableServiceClient = self._service(TableServiceClient, self.connection.table_uri, self.options)
        return client

    def container(self, name: str) -> ContainerClient:
        """One client per container, kept: building one (and its generated client's model tables)
        cost ~0.3 ms of CPU, and the store asked for one on every blob operation. Thread-safe to share."""
        client = self._containers.get(name)
        if client is None:
            client = self._containers.setdefault(name, self.blob.get_container_client(name))
        return client

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

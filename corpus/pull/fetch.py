"""Get Blob for ``corpus pull`` and the datasets: whole small blobs, fast, signed as the SDK would.

A pull is thousands of ~100 KB GETs; the SDK's per-request pipeline costs more CPU than the
transfer itself on a fast link. This reuses the uploader's List Blobs client
(:class:`corpus.transfer.bloblist.BlobLister`: the same Shared Key / SAS / bearer signing and the
same keep-alive socket transport, :mod:`corpus.store.wire`, or ``requests`` when a proxy is configured) for the
one other read-only call needed. Transient failures are retried with the same back-off.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlparse

from corpus.domain.errors import StorageError
from corpus.store.settings import Connection
from corpus.transfer import bloblist
from corpus.transfer.bloblist import BlobLister

_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


class BlobNotFound(StorageError):
    """The blob (or its container) does not exist."""


class BlobFetcher:
    """``get(container, blob) -> bytes``; thread-safe (one connection per thread)."""

    def __init__(self, connection: Connection, credential: Any = None) -> None:
        if not connection.connection_string and credential is None:
            from corpus.store.storage import identity_credential

            credential = identity_credential(connection)
        self.lister = BlobLister.from_connection(connection, credential)

    def url(self, container: str, blob: str) -> str:
        url = f"{self.lister.account_url}/{container}/{quote(blob, safe='/~')}"
        return f"{url}?{self.lister.sas}" if self.lister.sas else url

    def headers(self, url: str, extra: dict[str, str]) -> dict[str, str]:
        """The lister's signed headers, with ``x-ms-*`` ``extra`` headers (a range) signed too."""
        if not extra:
            return self.lister.headers(url, {})
        lister = self.lister
        headers = {"x-ms-version": bloblist.API_VERSION, "x-ms-date": bloblist.http_date(), **extra}
        if lister.account_key is not None and not lister.sas:
            path = urlparse(url).path
            signature = bloblist.shared_key_signature(lister.account_name, lister.account_key, "GET", path, {}, headers)
            headers["Authorization"] = f"SharedKey {lister.account_name}:{signature}"
        elif lister.credential is not None:
            headers["Authorization"] = f"Bearer {lister._bearer()}"
        return headers

    def get(self, container: str, blob: str, start: int | None = None, length: int | None = None) -> bytes:
        """The blob's bytes, or ``length`` bytes from ``start`` (a range read)."""
        url = self.url(container, blob)
        extra = {"x-ms-range": f"bytes={start}-{start + length - 1}"} if start is not None and length else {}
        last = ""
        delays = self.lister.retry_delays
        for attempt in range(len(delays) + 1):
            if attempt:
                time.sleep(delays[attempt - 1])  # back-off between attempts is the point
            try:
                status, body = bloblist._transport().get(url, self.headers(url, extra))
            except OSError as exc:  # every failure of the transports (bloblist.ProtocolError too)
                last = f"cannot reach {self.lister.account_url}: {type(exc).__name__}: {exc}"
                continue
            if status in (200, 206):
                return body
            code, message = bloblist._error(body)
            last = f"storage error {status} {code}: {message}".strip()
            if status == 404:
                raise BlobNotFound(f"{container}/{blob} does not exist ({code or 404})", status, code)
            if status not in _TRANSIENT:
                raise StorageError(last, status, code)
        raise StorageError(last)


RANGE_BYTES = 4 * 1024 * 1024


def iter_blob_ranges(fetcher: BlobFetcher, container: str, blob: str, step: int = RANGE_BYTES) -> Iterator[bytes]:
    """A blob's bytes in ``step``-byte range reads (memory bounded by one range), without a HEAD:
    a short range is the last one; a range starting exactly at the end is answered 416."""
    offset = 0
    while True:
        try:
            chunk = fetcher.get(container, blob, offset, step)
        except StorageError as exc:
            if exc.status == 416 and offset:
                return
            raise
        if chunk:
            yield chunk
        if len(chunk) < step:
            return
        offset += len(chunk)


TABLE_API_VERSION = "2019-02-02"


class TableRowReader:
    """Get Entity (one row by its keys) over the same stdlib transport: a pull re-run reads one
    ``TrainingSets`` row and would otherwise load the Tables SDK, ``azure.core`` and ``requests``
    for it (~250 of its ~450 modules). Signed with Shared Key Lite (account key), a bearer token
    (identity) or the connection's SAS; JSON without metadata (the row's strings are all it reads)."""

    def __init__(self, connection: Connection, lister: BlobLister) -> None:
        self.lister = lister
        if connection.connection_string:
            conn = bloblist.parse_connection_string(connection.connection_string)
            if conn.get("usedevelopmentstorage") == "true":
                url = f"http://127.0.0.1:10002/{lister.account_name}"
            else:
                url = conn.get("tableendpoint") or (
                    f"{conn.get('defaultendpointsprotocol', 'https')}://{lister.account_name}.table."
                    f"{conn.get('endpointsuffix', 'core.windows.net')}"
                )
        else:
            url = connection.table_uri or ""
        self.account_url = url.rstrip("/")

    def get(self, table: str, partition_key: str, row_key: str) -> dict[str, Any] | None:
        """The entity's properties, or ``None`` when there is no such row (or table)."""

        def odata(value: str) -> str:
            return quote(value.replace("'", "''"), safe="")

        url = f"{self.account_url}/{table}(PartitionKey='{odata(partition_key)}',RowKey='{odata(row_key)}')"
        if self.lister.sas:
            url = f"{url}?{self.lister.sas}"
        date = bloblist.http_date()
        headers = {
            "x-ms-date": date,
            "x-ms-version": TABLE_API_VERSION,
            "Accept": "application/json;odata=nometadata",
            "DataServiceVersion": "3.0;NetFx",
            "MaxDataServiceVersion": "3.0;NetFx",
        }
        lister = self.lister
        if lister.account_key is not None and not lister.sas:
            to_sign = f"{date}\n/{lister.account_name}{urlparse(url).path}"
            signature = base64.b64encode(hmac.new(lister.account_key, to_sign.encode("utf-8"), hashlib.sha256).digest()).decode()
            headers["Authorization"] = f"SharedKeyLite {lister.account_name}:{signature}"
        elif lister.credential is not None:
            headers["Authorization"] = f"Bearer {lister._bearer()}"
        last = ""
        delays = lister.retry_delays
        for attempt in range(len(delays) + 1):
            if attempt:
                time.sleep(delays[attempt - 1])  # back-off between attempts is the point
            try:
                status, body = bloblist._transport().get(url, headers)
            except OSError as exc:  # every failure of the transports (bloblist.ProtocolError too)
                last = f"cannot reach {self.account_url}: {type(exc).__name__}: {exc}"
                continue
            if status == 200:
                import json

                row: dict[str, Any] = json.loads(body)
                return row
            if status == 404:
                return None
            last = f"storage error {status}: {body[:200].decode('utf-8', 'replace')}"
            if status not in _TRANSIENT:
                raise StorageError(last, status)
        raise StorageError(last)

"""Get Blob for ``corpus pull`` and the datasets: whole small blobs, fast, signed as the SDK would.

A pull is thousands of ~100 KB GETs; the SDK's per-request pipeline costs more CPU than the
transfer itself on a fast link. This reuses the uploader's List Blobs client
(:class:`corpus.transfer.bloblist.BlobLister`: the same Shared Key / SAS / bearer signing and the
same keep-alive ``http.client`` transport, or ``requests`` when a proxy is configured) for the
one other read-only call needed. Transient failures are retried with the same back-off.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote, urlparse

from corpus.domain.errors import StorageError
from corpus.store.settings import Connection
from corpus.transfer import bloblist
from corpus.transfer.bloblist import BlobLister

_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


class BlobNotFound(StorageError):
    """The blob (or its container) does not exist."""


def _forget_connections() -> None:
    """A forked child (a DataLoader worker) must not reuse its parent's keep-alive sockets."""
    bloblist._the_transport = None
    bloblist._transport_lock = threading.Lock()  # it may have been held by another thread at the fork


os.register_at_fork(after_in_child=_forget_connections)


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
        headers = {"x-ms-version": bloblist.API_VERSION, "x-ms-date": format_datetime(datetime.now(UTC), usegmt=True), **extra}
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
            except (OSError, http.client.HTTPException) as exc:
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

"""Put Blob for ``corpus upload`` over the listing client's transport, without the Azure SDK.

A first upload of thousands of ~100 KB files is CPU-bound in the client on a fast link: the SDK's
per-request pipeline (policies, model serialisation, ``requests``/``urllib3``) costs several times
the transfer's own work. The one write ``corpus upload`` needs is a single-shot Put Blob, so it is
sent the way :mod:`corpus.transfer.bloblist` sends its listings: keep-alive socket
connections (``requests`` when a proxy is configured), signed with Shared Key, a SAS or a bearer
token, transient failures retried with the same back-off. The contract is the SDK sender's:

* ``Content-MD5`` is the transactional MD5 (the service refuses a corrupted body) and
  ``x-ms-blob-content-md5`` stores it on the blob, where ingest verifies the copy against it;
* ``If-None-Match: *``: never over an existing blob (409 or 412: it existed; the caller then
  compares MD5s);
* the staging container is created on first use, as AzCopy and rclone do (a refusal is left to the
  Put Blob to report).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from urllib.parse import quote

from corpus.domain.errors import StorageError
from corpus.store.settings import Settings
from corpus.transfer import bloblist
from corpus.transfer.bloblist import BlobLister

_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


def upload_client(settings: Settings) -> BlobLister:
    """The one client ``corpus upload`` lists and sends with: the connection string's key or
    SAS, else the identity's tokens. It does not retry a service that has never answered, so
    that storage that is down is one line in seconds (its first listing is the reachability
    check)."""
    credential = None
    if not settings.connection.connection_string:
        from corpus.store.storage import identity_credential

        credential = identity_credential(settings.connection)
    client = BlobLister.from_connection(settings.connection, credential)
    client.retry_unreached = False
    return client


class RawSender:
    """:class:`corpus.upload.runner.Sender` for one container; thread-safe."""

    def __init__(self, lister: BlobLister, container: str) -> None:
        self.lister = lister
        self.container = container
        self._created = False
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        url = f"{self.lister.account_url}/{self.container}/{quote(name, safe='/~')}"
        return f"{url}?{self.lister.sas}" if self.lister.sas else url

    def put(self, name: str, data: bytes, md5: bytes, content_type: str) -> bool:
        self._ensure_container()
        b64 = base64.b64encode(md5).decode()
        extra = {
            "x-ms-blob-type": "BlockBlob",
            "Content-Length": str(len(data)),
            "Content-MD5": b64,
            "x-ms-blob-content-md5": b64,
            "x-ms-blob-content-type": content_type,
            "If-None-Match": "*",
        }
        status, _, _ = self._send("PUT", self.url(name), {}, extra, data, ok=(201, 409, 412))
        return status == 201

    def remote_md5(self, name: str) -> str:
        """The MD5 stored on the blob, else computed from its bytes."""
        url = self.url(name)
        _, headers, _ = self._send("HEAD", url, {}, {}, b"", ok=(200,))
        stored = headers.get("content-md5", "")
        if stored:
            return base64.b64decode(stored).hex()
        _, _, body = self._send("GET", url, {}, {}, b"", ok=(200,))
        return hashlib.md5(body, usedforsecurity=False).hexdigest()

    def _ensure_container(self) -> None:
        if self._created:  # every put but the first few: no lock (32 workers queued on it, cProfile)
            return
        with self._lock:
            if self._created:
                return
            query = {"restype": "container"}
            url = f"{self.lister.account_url}/{self.container}?restype=container"
            url = f"{url}&{self.lister.sas}" if self.lister.sas else url
            try:
                self._send("PUT", url, query, {"Content-Length": "0"}, b"", ok=(201, 409))
            except StorageError:
                pass  # this identity may not create containers: the put will say what is wrong
            self._created = True

    def _send(
        self, verb: str, url: str, query: dict[str, str], extra: dict[str, str], body: bytes, ok: tuple[int, ...]
    ) -> tuple[int, dict[str, str], bytes]:
        last = ""
        delays = self.lister.retry_delays
        for attempt in range(len(delays) + 1):
            if attempt:
                time.sleep(delays[attempt - 1])  # back-off between attempts is the point
            headers = self.lister.signed(verb, url, query, extra)  # a fresh date for each attempt
            try:
                status, response_headers, data = bloblist._transport().send(verb, url, headers, body)
            except OSError as exc:  # refused, reset, timeout, TLS, a malformed answer (bloblist.ProtocolError)
                last = f"cannot reach {self.lister.account_url}: {type(exc).__name__}: {exc}"
                continue
            if status in ok:
                return status, response_headers, data
            code = response_headers.get("x-ms-error-code", "")
            _, message = bloblist._error(data) if data else ("", "")
            last = f"storage error {status} {code}: {message}".strip()
            if status not in _TRANSIENT:
                raise StorageError(last, status, code)
        raise StorageError(last)

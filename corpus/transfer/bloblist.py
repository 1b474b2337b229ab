"""List Blobs for ``corpus upload`` (and the transport of its Put Blobs and of ``corpus pull``),
without the Azure SDK.

A re-run of an upload over 20,000 files is a directory walk plus a few List Blobs, and the
listings are bound by the service. Importing ``azure.storage.blob`` takes about 0.4 s of CPU
before the first request could leave, and parsing its models costs ~0.5 ms per blob. This module
speaks the read-only call the planner needs (``GET ?restype=container&comp=list``) over the
standard library's sockets (:class:`_StdlibTransport` on :mod:`corpus.store.wire`: keep-alive, one
connection per thread; ``requests`` alone takes ~0.15 s to import, ``http.client`` ~10 ms and
~0.13 ms of CPU per request), signs it the way the SDK would (Shared Key for an account key, a SAS as given, or a
bearer token from the same identity), and reads two fields per blob (:func:`parse_listing`).
When a proxy is configured in the environment it uses the SDK's ``requests`` session instead,
which honours it the way the SDK does; a CA bundle is handed to ``ssl`` directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlparse, urlsplit

from corpus.domain.errors import ConfigError, StorageError
from corpus.store import wire
from corpus.store.settings import Connection

API_VERSION = "2025-11-05"
"""A service version both Azure and Azurite 3.35 (the newest it knows) accept; the listing XML
has not changed shape in years, so there is no reason to chase the SDK's default."""

DEVSTORE_ACCOUNT_NAME = "devstoreaccount1"
DEVSTORE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""The storage emulator's well-known account (``UseDevelopmentStorage=true``, as in
``local.settings.sample.json``), public in Microsoft's documentation and no secret. Written out
here, not imported from the blob SDK, whose import (~90 ms) a re-run with nothing to send must not
pay; ``tests/test_bloblist.py`` checks it is the SDK's."""

MAX_PAGE = 5000
"""The most blobs one List Blobs returns."""

STORAGE_SCOPE = "https://storage.azure.com/.default"
RETRY_DELAYS = (1.0, 3.0, 5.0, 9.0, 17.0)
"""Back-off between attempts on a transient failure, as the upload's SDK clients are configured."""
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


class ListingError(StorageError):
    """A listing that failed for good: the service's status and error code, or the network error."""


@dataclass
class BlobLister:
    account_url: str  # https://<account>.blob.core.windows.net, or http://127.0.0.1:10000/<account>
    account_name: str = ""
    account_key: bytes | None = None
    sas: str = ""
    credential: Any = None  # an azure.core TokenCredential
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    retry_unreached: bool = True
    """False: until the service has answered once, a request that cannot reach it fails at once
    (``corpus upload``: storage that is down is one line in seconds, not a minute of retries)."""
    _answered: bool = field(default=False, repr=False)
    _prefetched: dict[tuple[str, str, int], Future[tuple[dict[str, str], bool]]] = field(default_factory=dict, repr=False)
    _token: tuple[str, float] | None = field(default=None, repr=False)
    _token_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_connection(cls, connection: Connection, credential: Any = None) -> BlobLister:
        """The lister for a connection: a connection string's key or SAS, else ``credential``."""
        if not connection.connection_string:
            if credential is None:
                raise ValueError("an identity-based connection needs a token credential")
            return cls(account_url=(connection.blob_uri or "").rstrip("/"), credential=credential)
        conn = parse_connection_string(connection.connection_string)
        if conn.get("usedevelopmentstorage") == "true":
            url = f"http://127.0.0.1:10000/{DEVSTORE_ACCOUNT_NAME}"
            return cls(account_url=url, account_name=DEVSTORE_ACCOUNT_NAME, account_key=base64.b64decode(DEVSTORE_ACCOUNT_KEY))
        name = conn.get("accountname", "")
        url = conn.get("blobendpoint") or (
            f"{conn.get('defaultendpointsprotocol', 'https')}://{name}.blob.{conn.get('endpointsuffix', 'core.windows.net')}"
        )
        key = conn.get("accountkey")
        return cls(
            account_url=url.rstrip("/"),
            account_name=name,
            account_key=base64.b64decode(key) if key else None,
            sas=conn.get("sharedaccesssignature", "").lstrip("?"),
        )

    def list_md5s(self, container: str, prefix: str) -> dict[str, str]:
        """Blobs directly under ``prefix`` (relative names) → hex MD5, ``""`` when a blob has none.

        A missing container lists as empty, and so does a prefix that is not valid Unicode (a
        folder name with undecodable bytes: no blob name can hold it). Transient failures are
        retried with back-off.
        """
        out: dict[str, str] = {}
        if not _encodable(prefix):
            return out
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "prefix": prefix, "delimiter": "/", "maxresults": str(MAX_PAGE)}
            if marker:
                query["marker"] = marker
            body = self._get(container, query)
            if body is None:
                return out
            marker = parse_listing(body, prefix, out)
            if not marker:
                return out

    def prefetch_page(self, container: str, prefix: str, limit: int) -> None:
        """Send :meth:`list_page` now, from a thread of its own: the next call with the same
        arguments takes its answer (or raises its error) instead of asking again. ``corpus
        upload`` sends its first listing before it imports and sets up the rest of the run,
        which then happens while the service answers."""
        future: Future[tuple[dict[str, str], bool]] = Future()

        def fetch() -> None:
            try:
                future.set_result(self._list_page(container, prefix, limit))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the page
                future.set_exception(exc)

        with self._token_lock:
            self._prefetched[(container, prefix, limit)] = future
        threading.Thread(target=fetch, daemon=True, name="corpus-first-page").start()

    def list_page(self, container: str, prefix: str, limit: int) -> tuple[dict[str, str], bool]:
        """One page of *every* blob under ``prefix`` (no delimiter: names in sub-folders too), at
        most ``limit`` (≤ :data:`MAX_PAGE`): relative name → hex MD5, and whether that was all of them.

        One request for a whole small tree where :meth:`list_md5s` takes one per folder (and
        ``original/`` one more each): a re-run with nothing to do waits on these round trips.
        A missing container, or a prefix that is not valid Unicode, is an empty, complete page.
        """
        with self._token_lock:
            pending = self._prefetched.pop((container, prefix, limit), None)
        if pending is not None:
            return pending.result()
        return self._list_page(container, prefix, limit)

    def _list_page(self, container: str, prefix: str, limit: int) -> tuple[dict[str, str], bool]:
        query = {"restype": "container", "comp": "list", "prefix": prefix, "maxresults": str(limit)}
        out: dict[str, str] = {}
        if not _encodable(prefix):
            return out, True
        body = self._get(container, query)
        if body is None:
            return out, True
        return out, not parse_listing(body, prefix, out)

    def list_versions(self, container: str, prefix: str = "") -> Iterator[Listed]:
        """Every blob under ``prefix``, page by page: full name, ETag and blob type.

        What an event source needs to tell a new or changed blob from one it has announced
        (``corpus host``'s stand-in for Event Grid lists its containers every fraction of a second,
        and the SDK's model parsing, ~0.1 ms per blob, made that listing its busiest thread).
        A missing container lists as empty.
        """
        if not _encodable(prefix):
            return
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "prefix": prefix, "maxresults": "5000"}
            if marker:
                query["marker"] = marker
            body = self._get(container, query)
            if body is None:
                return
            page, marker = parse_versions(body)
            yield from page
            if not marker:
                return

    # -- transport -------------------------------------------------------------------------

    def url(self, container: str, query: dict[str, str]) -> str:
        url = f"{self.account_url}/{container}?{urlencode(query, quote_via=quote)}"
        return f"{url}&{self.sas}" if self.sas else url

    def _get(self, container: str, query: dict[str, str]) -> bytes | None:
        url = self.url(container, query)
        last = ""
        for attempt in range(len(self.retry_delays) + 1):
            if attempt:
                time.sleep(self.retry_delays[attempt - 1])  # back-off between attempts is the point
            try:
                status, body = _transport().get(url, self.headers(url, query))
            except OSError as exc:  # refused, reset, timeout, TLS, ProtocolError; requests' are OSErrors too
                last = f"cannot reach {self.account_url}: {type(exc).__name__}: {exc}"
                if not (self.retry_unreached or self._answered):
                    break
                continue
            self._answered = True
            if status == 200:
                return body
            if status == 404:
                return None
            code, message = _error(body)
            last = f"storage error {status} {code}: {message}".strip()
            if status not in _TRANSIENT:
                raise ListingError(last, status, code)
        raise ListingError(last)

    def headers(self, url: str, query: dict[str, str]) -> dict[str, str]:
        return self.signed("GET", url, query, {})

    def signed(self, verb: str, url: str, query: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
        """``extra`` with the version, the date and the authorisation (Shared Key, or a bearer
        token; a SAS is in the URL) for a request of ``verb`` to ``url`` with ``query``."""
        headers = {"x-ms-version": API_VERSION, "x-ms-date": http_date(), **extra}
        if self.account_key is not None and not self.sas:
            path = urlparse(url).path
            signature = shared_key_signature(self.account_name, self.account_key, verb, path, query, headers)
            headers["Authorization"] = f"SharedKey {self.account_name}:{signature}"
        elif self.credential is not None:
            headers["Authorization"] = f"Bearer {self._bearer()}"
        return headers

    def _bearer(self) -> str:
        with self._token_lock:
            if self._token is None or self._token[1] - time.time() < 300:
                token = self.credential.get_token(STORAGE_SCOPE)
                self._token = (token.token, float(token.expires_on))
            return self._token[0]


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(when: float | None = None) -> str:
    """RFC 1123 date in GMT (``x-ms-date``), as ``email.utils.format_datetime(…, usegmt=True)``
    writes it, without importing the ``email`` package; English names whatever the locale."""
    t = time.gmtime(when)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


_REQUESTS_ONLY_SETTINGS = ("http_proxy", "https_proxy", "all_proxy")
"""Proxies need ``requests``; a CA bundle does not: :func:`ca_bundle` hands it to ``ssl`` (loading
``requests`` costs a re-run ~0.4 s, and many machines set ``REQUESTS_CA_BUNDLE`` for other tools)."""


def ca_bundle() -> str | None:
    """The CA bundle ``requests`` would trust (``REQUESTS_CA_BUNDLE``, then ``CURL_CA_BUNDLE``), if set."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


TIMEOUT = 120.0
_MAX_HEADERS = 100
"""http.client's limit on a response's header lines."""

ProtocolError = wire.ProtocolError
"""The server's answer is not HTTP/1.x as read here, or the connection broke (an ``OSError``, like
every failure of the transports: retried, then reported as storage that cannot be reached)."""


class HeaderRefused(ListingError, ValueError):
    """A request header (or target) holding CR, LF or NUL, refused before anything was sent: it
    would split the request (header injection), and it will on every retry, so it is not retried
    as a transport failure is. A :class:`ListingError` for the listings' callers, a
    ``StorageError`` for the senders'; a ``ValueError`` as it was (``http.client`` raises one)."""


def _refused(exc: wire.InvalidHeader) -> HeaderRefused:
    return HeaderRefused(f"refused to send a request: {exc}")


class _StdlibTransport:
    """HTTP/1.1 over the standard library's sockets (:mod:`corpus.store.wire`, which
    :mod:`corpus.store.lean_http` speaks too): one keep-alive connection per thread and host
    (:class:`corpus.store.wire.ThreadPool`).

    Not ``http.client``: its response parsing goes through the ``email`` package, ~0.13 ms of CPU
    per request (a first upload of 2,000 files sends 2,000 Put Blobs), and importing it is ~10 ms
    of every re-run's start. What is spoken here is the wire module's: a request line, the headers
    (refused with :class:`HeaderRefused` if one holds CR, LF or NUL), one ``sendall`` of head and
    body; a status line, at most :data:`_MAX_HEADERS` header lines (one without a colon is a
    :data:`ProtocolError`), and a body by ``Content-Length``, chunked, or up to the close (none for
    HEAD, 1xx, 204, 304). A request on a reused connection that meets a closed socket before any
    byte of the response (the server closed it while idle) is sent once more on a fresh one:
    every request sent here may be repeated (reads, and Put Blobs with ``If-None-Match``), so idle
    connections are not polled before reuse. Failures are ``OSError`` s: the socket's own when connecting (refused,
    TLS), the wire's after.
    """

    def __init__(self) -> None:
        self._pool = wire.ThreadPool(check_idle=False)  # every request here may be sent twice
        self._tls: Any = None  # ssl.SSLContext, made (and ssl imported) on the first https request

    def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        status, _, body = self.send("GET", url, headers)
        return status, body

    def send(self, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """One request: (status, response headers with lower-case names, body)."""
        parts = urlsplit(url)
        head = _request_head(
            method, parts.netloc, f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/", headers, body
        )
        key = _key(parts.scheme, parts.netloc)
        response = self._pool.exchange(
            key, head, body, method, TIMEOUT, lambda: self._connect(key), max_headers=_MAX_HEADERS, skip_bad_lines=False
        )
        data = response.read_all()
        return response.status, {name: value for name, (_, value) in response.store.items()}, data

    def forget_in_child(self) -> None:
        self._pool.forget_in_child()

    def _connect(self, key: wire.Key) -> wire.Connection:
        scheme, host, port = key
        sock = wire.open_tcp(host, port, TIMEOUT)
        if scheme == "https":
            if self._tls is None:
                try:
                    self._tls = wire.tls_context(ca_bundle() or True)  # the CA bundle requests (and so the SDK) trusts
                except BaseException:  # one that does not load: the TCP socket is not left open
                    sock.close()
                    raise
            sock = wire.wrap_tls(sock, self._tls, host)
        return wire.Connection(key, sock)


def _key(scheme: str, netloc: str) -> wire.Key:
    """(scheme, host, port) of a URL's parts; an IPv6 literal without its brackets."""
    if scheme not in ("http", "https"):
        raise ProtocolError(f"unsupported URL scheme {scheme!r}")
    host, _, port = netloc.rpartition(":") if netloc.rpartition(":")[2].isdigit() else (netloc, "", "")
    return scheme, host.strip("[]"), int(port) if port else (80 if scheme == "http" else 443)


def _request_head(method: str, netloc: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """Request line and headers, ending in the blank line (:func:`corpus.store.wire.request_head`);
    :class:`HeaderRefused` for a header or target holding CR, LF or NUL."""
    given = any(name.lower() == "content-length" for name in headers)
    try:
        return wire.request_head(method, target, netloc, headers.items(), len(body), length_given=given)
    except wire.InvalidHeader as exc:
        raise _refused(exc) from exc


class _RequestsTransport:
    def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        status, _, body = self.send("GET", url, headers)
        return status, body

    def send(self, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        from corpus.store.http import shared_session

        try:  # requests' InvalidHeader is an OSError, which callers would retry as "cannot reach"
            for name, value in headers.items():
                wire.check_header(name, value)
        except wire.InvalidHeader as exc:
            raise _refused(exc) from exc
        response = shared_session().request(method, url, headers=headers, data=body or None, timeout=(20, TIMEOUT))  # OSErrors
        return response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content


_transport_lock = threading.Lock()
_the_transport: _StdlibTransport | _RequestsTransport | None = None


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) starts with no transport: it closes its copies of the
    parent's keep-alive sockets (closing a copy sends nothing) and makes its own on first use."""
    global _the_transport, _transport_lock
    inherited, _the_transport = _the_transport, None
    _transport_lock = threading.Lock()  # it may have been held by another thread at the fork
    if isinstance(inherited, _StdlibTransport):
        inherited.forget_in_child()


os.register_at_fork(after_in_child=_forget_in_child)


def _transport() -> _StdlibTransport | _RequestsTransport:
    global _the_transport
    with _transport_lock:
        if _the_transport is None:
            env = {k.lower() for k, v in os.environ.items() if v}
            _the_transport = _RequestsTransport() if env & set(_REQUESTS_ONLY_SETTINGS) else _StdlibTransport()
        return _the_transport


_SIGNED_STANDARD_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since",
)  # fmt: skip
"""The standard headers of the string-to-sign, in order; the eleventh, Range, is always empty here
(ranges go in ``x-ms-range``, as the SDK sends them)."""


def shared_key_signature(account: str, key: bytes, verb: str, path: str, query: dict[str, str], headers: dict[str, str]) -> str:
    """Shared Key for the Blob service.

    String-to-sign: the verb, eleven standard headers (``Content-Length`` empty when 0), the
    ``x-ms-`` headers sorted, then ``/<account><path>`` and the query parameters sorted, decoded,
    one per line.
    """
    lower = {k.lower(): v for k, v in headers.items() if v}
    if lower.get("content-length") == "0":
        del lower["content-length"]
    standard = "".join(lower.get(h, "") + "\n" for h in _SIGNED_STANDARD_HEADERS) + "\n"
    canonical_headers = "".join(f"{k}:{v.strip()}\n" for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
    resource = f"/{account}{path}" + "".join(f"\n{k.lower()}:{v}" for k, v in sorted(query.items(), key=lambda kv: kv[0].lower()))
    to_sign = verb + "\n" + standard + canonical_headers + resource
    return base64.b64encode(hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).digest()).decode()


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;…`` with keys lower-cased; values keep their ``=`` (keys and SAS end in them)."""
    out: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError("the storage connection string is malformed: expected Key=Value pairs separated by ';'")
        out[key.strip().lower()] = value.strip()
    return out


def parse_listing(body: bytes, prefix: str, out: dict[str, str]) -> str:
    """Add each listed blob (name relative to ``prefix``) → hex MD5 to ``out``; return the next marker.

    A re-run of ``corpus upload`` waits on this parse: ElementTree takes ~15 ms of CPU for a
    2,000-blob page, a byte scan ~4 ms. The service writes a listing in one fixed shape, so the
    scan (:func:`_parse_plain`) reads the two fields per blob it needs; anything it does not
    fully understand (a character or entity reference, CDATA, a comment, a carriage return, an
    element of another shape) sends the *whole* page to the XML parser instead, which is exact:
    the scan either gives the parser's answer or none (``tests/test_bloblist.py`` checks it
    against the parser on generated names). The XML parser streams: each ``<Blob>`` is read
    and then cleared, so a 5,000-blob page never becomes a tree.
    """
    plain = _parse_plain(body, prefix)
    if plain is not None:
        out.update(plain[0])
        return plain[1]
    return _parse_tree(body, prefix, out)


def _parse_tree(body: bytes, prefix: str, out: dict[str, str]) -> str:
    """:func:`parse_listing` by the XML parser: exact for any well-formed listing."""
    marker: list[str] = []
    for name, props in _tree_blobs(body, marker):
        md5 = props.get("Content-MD5", "")
        out[name[len(prefix) :]] = base64.b64decode(md5).hex() if md5 else ""
    return marker[0] if marker else ""


def _tree_blobs(body: bytes, marker: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each ``<Blob>`` of a listing page, by the XML parser: its name (``Encoded`` names decoded)
    and its ``Properties`` by tag; the page's ``NextMarker`` is appended to ``marker``. Streamed:
    each element is cleared once read, so a 5,000-blob page never becomes a tree."""
    from xml.etree import ElementTree  # here: a pull, which lists nothing, never loads it

    for _, el in ElementTree.iterparse(io.BytesIO(body), events=("end",)):  # noqa: S314 - our own storage account; expat refuses entity bombs
        if el.tag == "Blob":
            name_el = el.find("Name")
            name = (name_el.text or "") if name_el is not None else ""
            if name_el is not None and name_el.get("Encoded") == "true":
                name = unquote(name)
            props = el.find("Properties")
            yield name, {p.tag: p.text or "" for p in props} if props is not None else {}
            el.clear()
        elif el.tag == "NextMarker":
            marker.append(el.text or "")


@dataclass(frozen=True)
class Listed:
    """One blob of a listing: its name, ETag (bare, as listings give it) and REST blob type."""

    name: str
    etag: str
    blob_type: str


_BLOB = re.compile(rb"<Blob>(.*?)</Blob>", re.S)
_ETAG = re.compile(rb"<Etag>([^<]*)</Etag>")
_TYPE = re.compile(rb"<BlobType>([^<]*)</BlobType>")


def parse_versions(body: bytes) -> tuple[list[Listed], str]:
    """The blobs of one List Blobs page (name, ETag, type) and the next marker.

    Read by the same byte scan as :func:`_parse_plain` (see its soundness argument) rather than an
    XML parser: the host's event source reads this page every poll interval, and ``iterparse``
    cost ~8 µs a blob. A page the scan does not vouch for is read by ElementTree instead.
    """
    plain = None if _not_plain(body) else _versions_plain(body)
    return plain if plain is not None else _versions_xml(body)


def _versions_plain(body: bytes) -> tuple[list[Listed], str] | None:
    out: list[Listed] = []
    try:
        for blob in _BLOB.finditer(body):
            inner = blob.group(1)
            name_m = _PLAIN_NAME.match(inner)
            if name_m is None:
                return None
            name = _plain_text(name_m.group(2))
            etag_m, type_m = _ETAG.search(inner), _TYPE.search(inner)
            etag = _plain_text(etag_m.group(1)) if etag_m else ""
            blob_type = _plain_text(type_m.group(1)) if type_m else "BlockBlob"
            if name is None or etag is None or blob_type is None:
                return None
            out.append(Listed(unquote(name) if name_m.group(1) else name, etag.strip('"'), blob_type))
        tail = body[body.rfind(b"</Blobs>") :] if b"</Blobs>" in body else body
        marker_m = _PLAIN_MARKER.search(tail)
        marker = _plain_text(marker_m.group(1)) if marker_m else ""
    except UnicodeDecodeError:
        return None
    return (out, marker) if marker is not None else None


def _versions_xml(body: bytes) -> tuple[list[Listed], str]:
    marker: list[str] = []
    out = [
        Listed(name, props.get("Etag", "").strip('"'), props.get("BlobType") or "BlockBlob")
        for name, props in _tree_blobs(body, marker)
    ]
    return out, marker[0] if marker else ""


_PLAIN_NAME = re.compile(rb'<Name( Encoded="true")?>([^<]*)</Name>')
_PLAIN_MD5 = re.compile(rb"<Content-MD5>([^<]*)</Content-MD5>")
_PLAIN_MARKER = re.compile(rb"<NextMarker>([^<]*)</NextMarker>")
_PLAIN_ENTITY = re.compile(rb"&(amp|lt|gt|quot|apos);")
_PLAIN_ENTITIES = {b"amp": b"&", b"lt": b"<", b"gt": b">", b"quot": b'"', b"apos": b"'"}
_PLAIN_DECLARATION = re.compile(rb"(?:\xef\xbb\xbf)?<\?xml([^>]*)\?>")
_PLAIN_ENCODING = re.compile(rb"""encoding=["']([^"']*)["']""")


def _not_plain(body: bytes) -> bool:
    """Whether ``body`` holds what the byte scan leaves to the XML parser: a declared encoding
    other than UTF-8, a NUL (UTF-16 or -32), a literal CR (XML reads CR LF as LF), a character
    reference (``&#``), CDATA, a comment or a DOCTYPE (``<!``), a processing instruction (``<?``).
    Each two-byte test runs only when its rarer byte is there (a one-byte search is a memchr)."""
    declared = _PLAIN_DECLARATION.match(body)
    if declared:
        encoding = _PLAIN_ENCODING.search(declared.group(1))
        if encoding and encoding.group(1).lower() not in (b"utf-8", b"utf8"):
            return True
    start = declared.end() if declared else 0
    return (
        b"\x00" in body
        or b"\r" in body
        or (b"&" in body and b"&#" in body)
        or (b"!" in body and b"<!" in body)
        or (body.find(b"?", start) >= 0 and body.find(b"<?", start) >= 0)
    )


def _parse_plain(body: bytes, prefix: str) -> tuple[dict[str, str], str] | None:
    """The listing as the service writes it, read by scanning bytes; None if it is not that shape.

    Sound because text in XML cannot hold a literal ``<`` (it is ``&lt;``), so every ``<`` opens
    markup, and with no CDATA or comment present each ``<Blob>`` … ``</Blob>`` is one blob
    element (``<BlobPrefix>``, ``<BlobType>``, ``<Blobs>`` are other names). Each must start
    with its ``<Name>`` (the service's order); its MD5 is ``Properties/Content-MD5``, the only
    ``<Content-MD5>`` a listing without ``include=metadata`` holds.
    """
    if _not_plain(body):
        return None
    parts = body.split(b"<Blob>")
    if body.count(b"</Blob>") != len(parts) - 1:
        return None  # a <Blob ...> with attributes, or markup this scan does not know
    out: dict[str, str] = {}
    try:
        for part in parts[1:]:
            name_m = _PLAIN_NAME.match(part)
            end = part.find(b"</Blob>")
            if name_m is None or end < 0:
                return None
            name = _plain_text(name_m.group(2))
            if name is None:
                return None
            if name_m.group(1):
                name = unquote(name)
            md5_m = _PLAIN_MD5.search(part, name_m.end(), end)
            md5 = md5_m.group(1) if md5_m else b""
            out[name[len(prefix) :]] = base64.b64decode(md5).hex() if md5 else ""
        marker_m = _PLAIN_MARKER.search(parts[-1])
        marker = _plain_text(marker_m.group(1)) if marker_m else ""
    except UnicodeDecodeError:
        return None
    return (out, marker) if marker is not None else None


def _plain_text(raw: bytes) -> str | None:
    """Element text with XML's five named entities decoded; None if it holds any other ``&``."""
    if b"&" in raw:
        decoded, n = _PLAIN_ENTITY.subn(lambda m: _PLAIN_ENTITIES[m.group(1)], raw)
        if n != raw.count(b"&"):
            return None
        raw = decoded
    return raw.decode("utf-8")


def _error(body: bytes) -> tuple[str, str]:
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - an error document from our own storage account
    except ElementTree.ParseError:
        return "", body[:200].decode("utf-8", "replace")
    message = root.findtext("Message") or ""
    return root.findtext("Code") or "", message.splitlines()[0] if message else ""


def _encodable(text: str) -> bool:
    """True if ``text`` encodes as UTF-8 (a path read from disk may hold surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

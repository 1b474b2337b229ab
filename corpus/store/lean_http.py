"""An azure-core transport that speaks HTTP/1.1 itself: the storage SDKs' requests without
``requests``, ``urllib3`` or ``http.client``'s ``email``-based header parser.

Why: every storage request the host makes cost ~0.78 ms of CPU through the SDK on
``RequestsTransport``, most of it in those three layers (issue 26: ``requests`` 27 %,
``http.client`` + ``email`` 19 %, ``urllib3`` 13 % of the ingest host's CPU), and an ingest makes
a dozen of them per image on a host whose Python threads share one GIL. The SDK's own pipeline
(signing, retries, deserialisation) stays as it is: this is only the transport seam azure-core
offers (``transport=``), the way httpx separates its transports.

What it serves, and what it hands on: a request of the ``azure.core.rest`` kind (every storage
SDK's generated code) whose body is absent, ``bytes`` or ``str``, to an ``http``/``https`` URL
with an ASCII target without dot segments. Anything else (a file-like or streamed body, form
files, a legacy request, a configured proxy, a ``connection_verify`` or ``connection_cert`` for one
request, a path with ``.``/``..`` segments, which urllib3 would normalise) goes to the wrapped
``RequestsTransport`` unchanged, so no caller needs to know which one ran. A header name or value
holding CR, LF or NUL is refused with ``ValueError`` before anything is sent (header injection).

Invariants:

* One request at a time per connection; a connection returns to the pool only after its whole
  request was sent, its whole response body read, and the server did not say ``Connection:
  close``. A stream abandoned half-way closes its socket instead. An answer the server sent
  before it stopped reading the request (a 413, a 403) is read and returned, as urllib3 does.
* An idle connection the server has closed is never used (checked before each reuse, as urllib3
  does). A request on a *reused* keep-alive connection that meets a closed socket before any byte
  of the response (the server timed it out just then) is sent again once on a new connection if
  it could not be sent at all or is idempotent (GET, HEAD, PUT, DELETE, OPTIONS); a POST that may
  have reached the server is not: it fails with ``ServiceResponseError``, as on a new connection.
  Nothing else is retried here: retries are the pipeline's policies.
* Errors are azure-core's: ``ServiceRequestError`` (could not connect or send),
  ``ServiceRequestTimeoutError``, ``ServiceResponseError`` (connection broke while reading),
  ``ServiceResponseTimeoutError``, ``IncompleteReadError`` (body shorter than announced), so
  the SDK's retry policies treat them exactly as they treat ``RequestsTransport``'s.
* A body with ``Content-Encoding: gzip``/``x-gzip``/``deflate`` (or a list of them) is
  decompressed when the caller asks for it (``decompress=True``, the default) exactly as
  ``requests`` (urllib3) does: every gzip member, zlib or raw deflate, and a body that does not
  decode is a ``DecodeError`` (a ``ServiceResponseError`` when read whole by ``send``, as there).
  ``Accept-Encoding`` is not sent, so the service compresses nothing on its own.
* A forked child starts with an empty pool (a DataLoader worker must not share sockets).
"""

from __future__ import annotations

import io
import os
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, MutableMapping
from typing import Any, cast
from urllib.parse import urlsplit

from azure.core.exceptions import (
    DecodeError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline._tools import is_rest
from azure.core.pipeline.transport import HttpTransport, RequestsTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

from corpus.store.http import POOL_SIZE

DEFAULT_TIMEOUT = 300.0
"""azure-core's ``ConnectionConfiguration`` defaults: 300 s to connect, 300 s between reads."""
READ_BLOCK = 64 * 1024
MAX_LINE = 64 * 1024
"""Longest status or header line accepted (Azure's are far shorter); longer is a broken response."""
MAX_HEADERS = 256
IDLE_PER_HOST = POOL_SIZE
"""Idle connections kept per endpoint: :data:`corpus.store.http.POOL_SIZE`, for the same reason."""
_NO_BODY_STATUS = frozenset({204, 304})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_UNSAFE = frozenset("\r\n\0")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _Connection:
    """One keep-alive socket and its buffered reader."""

    __slots__ = ("key", "rfile", "sock", "used")

    def __init__(self, key: tuple[str, str, int], sock: socket.socket) -> None:
        self.key = key
        self.sock = sock
        self.rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_BLOCK))
        self.used = False

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()


class _Pool:
    """Idle connections per (scheme, host, port); LIFO, so a warm socket is reused first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    def take(self, key: tuple[str, str, int]) -> _Connection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


_pool = _Pool()

Observer = Callable[[str, str, bytes], None]
_observers: list[Observer] = []


def observe(observer: Observer) -> Callable[[], None]:
    """Call ``observer(method, url, body)`` before each request this transport sends itself (what
    ``requests``' response hooks were to benchmarks and tests that count requests on the wire);
    returns the function that removes it. What goes to the fallback shows in the session's hooks."""
    _observers.append(observer)
    return lambda: _observers.remove(observer)


def _forget_in_child() -> None:
    """A forked child starts with an empty pool and closes its copies of the parent's idle sockets
    (closing a copy sends nothing: the parent's connections are untouched, and the child holds no
    descriptors of connections it will never use)."""
    global _pool
    inherited, _pool = _pool, _Pool()
    for conns in inherited._idle.values():  # no lock: the child has one thread, and the lock may be held by a parent's
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass


os.register_at_fork(after_in_child=_forget_in_child)


class _Raw:
    """The wire response: status, headers, and a body reader that gives the connection back at its end."""

    def __init__(
        self,
        conn: _Connection,
        version: str,
        status: int,
        reason: str,
        headers: MutableMapping[str, str],
        method: str,
        *,
        reusable: bool = True,
    ) -> None:
        self.conn: _Connection | None = conn
        self.status, self.reason, self.headers = status, reason, headers
        tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        # HTTP/1.1 keeps the connection unless told to close it; HTTP/1.0 closes it unless told to keep it
        self.keep_alive = reusable and "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        if method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
            self.remaining: int | None = 0
            self.chunked = False
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.remaining, self.chunked = None, True
        elif "content-length" in headers:
            try:
                self.remaining, self.chunked = int(headers["content-length"]), False
            except ValueError as exc:
                self._abandon()
                raise ServiceResponseError(f"bad Content-Length {headers['content-length']!r}") from exc
            if self.remaining < 0:
                self._abandon()
                raise ServiceResponseError(f"bad Content-Length {headers['content-length']!r}")
        else:  # the body runs to the end of the connection
            self.remaining, self.chunked, self.keep_alive = None, False, False
        self._chunk_left = 0
        self.preloaded: bytes | None = None
        if self.remaining == 0 and not self.chunked:
            self._finish()

    def blocks(self) -> Generator[bytes, None, None]:
        """The body in blocks of at most :data:`READ_BLOCK`; the connection is released at its end."""
        if self.preloaded is not None:
            if self.preloaded:
                yield self.preloaded
            return
        try:
            if self.chunked:
                yield from self._chunked()
            elif self.remaining is None:
                yield from self._to_close()
            else:
                while self.remaining:
                    data = self._read(min(self.remaining, READ_BLOCK))
                    if not data:
                        raise IncompleteReadError(f"connection closed with {self.remaining} bytes of the body unread")
                    self.remaining -= len(data)
                    if not self.remaining:  # released now, for a reader that stops at the announced length
                        self._finish()
                    yield data
            self._finish()
        finally:
            if self.conn is not None:  # not finished: abandoned, or failed half-way
                self._abandon()

    def read_all(self) -> bytes:
        self.preloaded = b"".join(self.blocks())
        return self.preloaded

    def close(self) -> None:
        if self.conn is not None:
            self._abandon()

    def _read(self, n: int) -> bytes:
        assert self.conn is not None
        try:
            return self.conn.rfile.read1(n) if n else b""
        except TimeoutError as exc:
            raise ServiceResponseTimeoutError(f"read timed out: {exc}") from exc
        except OSError as exc:
            raise ServiceResponseError(f"connection broke while reading: {exc}") from exc

    def _line(self) -> bytes:
        assert self.conn is not None
        try:
            line = self.conn.rfile.readline(MAX_LINE + 1)
        except TimeoutError as exc:
            raise ServiceResponseTimeoutError(f"read timed out: {exc}") from exc
        except OSError as exc:
            raise ServiceResponseError(f"connection broke while reading: {exc}") from exc
        if len(line) > MAX_LINE:
            raise ServiceResponseError("a chunk line of the response is too long")
        return line

    def _chunked(self) -> Generator[bytes, None, None]:
        while True:
            line = self._line()
            if not line:
                raise IncompleteReadError("connection closed inside a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or not _HEX.issuperset(size_text):  # int() would take "-5", "0x5", "5_0"
                raise ServiceResponseError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while (trailer := self._line()) not in (b"\r\n", b"\n"):  # trailers, ignored
                    if not trailer:  # closed before the blank line: the body is whole, the connection is not
                        self.keep_alive = False
                        break
                return
            left = size
            while left:
                data = self._read(min(left, READ_BLOCK))
                if not data:
                    raise IncompleteReadError("connection closed inside a chunk")
                left -= len(data)
                yield data
            self._line()  # the CRLF after the chunk

    def _to_close(self) -> Generator[bytes, None, None]:
        while True:
            data = self._read(READ_BLOCK)
            if not data:
                return
            yield data

    def _finish(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.keep_alive:
                _pool.give(conn)
            else:
                conn.close()

    def _abandon(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


class _Gzip:
    """gzip members one after another, as urllib3 decodes them: bytes after a complete member
    start the next member, and bytes that are not one (trailing garbage) end the body."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._after_first = False
        self._done = False

    def decompress(self, data: bytes) -> bytes:
        out = bytearray()
        while data and not self._done:
            try:
                out += self._obj.decompress(data)
            except zlib.error:
                self._done = True
                if self._after_first:
                    break
                raise
            data = self._obj.unused_data  # non-empty only past the end of a member
            if data:
                self._after_first = True
                self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return bytes(out)

    def flush(self) -> bytes:
        return b"" if self._done else self._obj.flush()


class _Deflate:
    """``deflate`` as urllib3 decodes it: the zlib format, or a raw deflate stream if the first
    bytes are not zlib's (servers send both)."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj()
        self._first: bytes | None = b""  # the bytes seen until the format is known

    def decompress(self, data: bytes) -> bytes:
        if self._first is None:
            return self._obj.decompress(data)
        self._first += data
        try:
            out = self._obj.decompress(data)
        except zlib.error:
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            data, self._first = self._first, None
            return self._obj.decompress(data)
        if out:
            self._first = None
        return out

    def flush(self) -> bytes:
        return self._obj.flush()


_DECODERS: dict[str, type[_Gzip | _Deflate]] = {"gzip": _Gzip, "x-gzip": _Gzip, "deflate": _Deflate}


def _decoders(content_encoding: str) -> list[_Gzip | _Deflate]:
    """The decoders for a ``Content-Encoding`` (codings in the order they were applied), or none
    if it names a coding ``requests`` would not decode either (``identity``, ``br`` without brotli…)."""
    codings = [c.strip() for c in content_encoding.lower().split(",") if c.strip()]
    if not codings or any(c not in _DECODERS for c in codings):
        return []
    return [_DECODERS[c]() for c in codings]


def _decoded(blocks: Generator[bytes, None, None], decoders: list[_Gzip | _Deflate]) -> Iterator[bytes]:
    """The body decompressed as it streams (what ``requests`` would do); a body that does not
    decode is azure-core's ``DecodeError``, as from ``RequestsTransport``'s stream."""
    try:
        for block in blocks:
            for decoder in reversed(decoders):  # the last coding applied is undone first
                block = decoder.decompress(block)
            if block:
                yield block
        tail = b""
        for decoder in reversed(decoders):
            tail = decoder.decompress(tail) + decoder.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise DecodeError(f"the body does not decode as its Content-Encoding says: {exc}", error=exc) from exc
    finally:
        blocks.close()  # given up half-way: the connection is closed now, not when collected


class _BodyStream:
    """``stream_download_generator`` of :class:`HttpResponseImpl`, shaped as azure-core's own
    ``StreamDownloadGenerator`` (the blob SDK reads ``content_length``, ``response`` and
    ``request`` from it and sets attributes on it): the body's blocks, decoded if asked."""

    def __init__(self, pipeline: Any, response: HttpResponseImpl, *, decompress: bool = True) -> None:
        self.pipeline = pipeline
        self.response = response
        self.request = response.request
        raw: _Raw = response._internal_response  # the transport's own object
        self.block_size = READ_BLOCK
        self.content_length = int(raw.headers.get("content-length", 0) or 0)
        blocks = raw.blocks()
        decoders = _decoders(raw.headers.get("content-encoding", "")) if decompress else []
        self._blocks = _decoded(blocks, decoders) if decoders else blocks

    def __len__(self) -> int:
        return self.content_length

    def __iter__(self) -> _BodyStream:
        return self

    def __next__(self) -> bytes:
        return next(self._blocks)


class LeanTransport(HttpTransport[Any, Any]):
    """The storage clients' transport: HTTP/1.1 on pooled sockets, ``fallback`` for what it does not serve."""

    def __init__(
        self,
        fallback: RequestsTransport,
        verify: bool | str = True,
        *,
        connection_timeout: float = DEFAULT_TIMEOUT,
        read_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.fallback = fallback
        self._verify = verify
        self._timeouts = (_seconds(connection_timeout), _seconds(read_timeout))
        self._ssl: ssl.SSLContext | None = None
        self._ssl_lock = threading.Lock()

    def __enter__(self) -> LeanTransport:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def open(self) -> None:
        pass

    def close(self) -> None:
        self.fallback.close()

    def send(self, request: Any, **kwargs: Any) -> Any:
        plan = self._plan(request, kwargs)
        if plan is None:
            return self.fallback.send(request, **kwargs)
        key, head, body = plan
        for observer in _observers:
            observer(request.method.upper(), request.url, body)
        connect_timeout = _seconds(kwargs.get("connection_timeout"), self._timeouts[0])
        read_timeout = _seconds(kwargs.get("read_timeout"), self._timeouts[1])
        stream = bool(kwargs.get("stream", False))
        raw = self._exchange(key, head, body, request.method.upper(), connect_timeout, read_timeout)
        response = HttpResponseImpl(
            request=request,
            internal_response=raw,
            status_code=raw.status,
            reason=raw.reason,
            headers=raw.headers,
            content_type=raw.headers.get("content-type"),
            stream_download_generator=_BodyStream,
            block_size=READ_BLOCK,
        )
        if not stream:
            try:
                response.read()  # loads the body and releases the connection, as RequestsTransport does
            except IncompleteReadError:  # a DecodeError too, and one as from RequestsTransport
                raise
            except DecodeError as exc:  # which reports this one so when the body is read inside requests
                raise ServiceResponseError(str(exc), error=exc) from exc
        return response

    # -- what to send ----------------------------------------------------------------------

    def _plan(self, request: Any, kwargs: dict[str, Any]) -> tuple[tuple[str, str, int], bytes, bytes] | None:
        """The connection key, request head and body, or ``None`` for the fallback's cases."""
        if not is_rest(request) or kwargs.get("proxies") or getattr(request, "_files", None):
            return None
        if kwargs.get("connection_cert") or kwargs.get("connection_verify", self._verify) != self._verify:
            return None  # TLS settings for this request alone: requests applies them per request, lean has one context
        return self._head_of(request)

    @staticmethod
    def _head_of(request: Any) -> tuple[tuple[str, str, int], bytes, bytes] | None:
        url = urlsplit(request.url)
        scheme = url.scheme.lower()
        if scheme not in ("http", "https") or not url.hostname:
            return None
        port = url.port or (443 if scheme == "https" else 80)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if not target.isascii() or not target.isprintable() or " " in target:  # controls, DEL, spaces
            return None
        if any(seg in (".", "..") for seg in (url.path or "").split("/")):
            # urllib3 removes dot segments (RFC 3986 5.2.4) before sending, and the signature was
            # made over the path as given: whatever that does (a 403 on Azure), requests does it
            return None
        data = getattr(request, "_data", None)
        if data is None:
            body = b""
        elif isinstance(data, bytes):
            body = data
        elif isinstance(data, str):
            body = data.encode("utf-8")
        else:
            return None  # a stream, a generator, form data: requests knows how
        headers = request.headers
        if "content-length" in headers and headers["content-length"] != str(len(body)):
            return None
        method = request.method.upper()
        lines = [f"{method} {target} HTTP/1.1"]
        if "host" not in headers:
            default = 443 if scheme == "https" else 80
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname  # an IPv6 literal keeps its brackets
            lines.append(f"Host: {host}" + (f":{port}" if port != default else ""))
        for name, value in _items(headers):
            text = str(value)
            if _UNSAFE.intersection(name) or _UNSAFE.intersection(text) or ":" in name:
                raise ValueError(f"invalid header {name!r}")  # as http.client refuses it
            lines.append(f"{name}: {text}")
        if "content-length" not in headers and (body or method not in ("GET", "HEAD")):
            lines.append(f"Content-Length: {len(body)}")  # as requests: 0 on a PUT with no body (Azure wants it)
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            return None
        return (scheme, url.hostname, port), head, body

    # -- the exchange ----------------------------------------------------------------------

    def _exchange(
        self, key: tuple[str, str, int], head: bytes, body: bytes, method: str, connect_timeout: float, read_timeout: float
    ) -> _Raw:
        conn = _pool.take(key)
        while conn is not None and _dropped(conn):  # closed by the server while idle (urllib3 checks too)
            conn.close()
            conn = _pool.take(key)
        if conn is not None:
            try:
                return self._once(conn, head, body, method, read_timeout)
            except _Stale:
                pass  # closed between the check and the send: once more on a new connection
        conn = self._connect(key, connect_timeout)
        try:
            return self._once(conn, head, body, method, read_timeout)
        except _Stale as exc:
            raise ServiceResponseError(f"connection closed before a response: {exc}") from exc

    def _once(self, conn: _Connection, head: bytes, body: bytes, method: str, read_timeout: float) -> _Raw:
        reused, conn.used = conn.used, True
        sent = False
        broke: OSError | None = None
        try:
            conn.sock.settimeout(read_timeout)
            try:
                if len(body) <= READ_BLOCK:
                    conn.sock.sendall(head + body)
                else:
                    conn.sock.sendall(head)
                    conn.sock.sendall(body)
                sent = True
            except (BrokenPipeError, ConnectionResetError) as exc:
                # the server may have answered from the head (413, 403) and closed without reading
                # the body: read that answer, as urllib3 does, rather than report a failed send
                broke = exc
            status_line = conn.rfile.readline(MAX_LINE + 1)
        except TimeoutError as exc:
            conn.close()
            raise ServiceResponseTimeoutError(f"no response within {read_timeout} s") from exc
        except OSError as exc:
            conn.close()
            if reused and (not sent or method in _IDEMPOTENT):
                raise _Stale(str(broke or exc)) from exc
            if not sent:
                raise ServiceRequestError(f"could not send the request: {broke or exc}") from exc
            raise ServiceResponseError(f"connection broke before a response: {exc}") from exc
        if not status_line:
            conn.close()
            if reused and (not sent or method in _IDEMPOTENT):  # a POST is not sent twice here: the policies decide
                raise _Stale(str(broke or "connection closed"))
            if not sent:
                raise ServiceRequestError(f"could not send the request: {broke}") from broke
            raise ServiceResponseError("connection closed before a response")
        try:
            version, status, reason, headers = self._head(conn, status_line)
            while 100 <= status < 200:  # 100 Continue and friends: read on to the real status
                version, status, reason, headers = self._head(conn, conn.rfile.readline(MAX_LINE + 1))
        except TimeoutError as exc:
            conn.close()
            raise ServiceResponseTimeoutError(f"read timed out: {exc}") from exc
        except OSError as exc:
            conn.close()
            raise ServiceResponseError(f"connection broke while reading: {exc}") from exc
        return _Raw(conn, version, status, reason, headers, method, reusable=sent)

    @staticmethod
    def _head(conn: _Connection, status_line: bytes) -> tuple[str, int, str, MutableMapping[str, str]]:
        parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(status_line) > MAX_LINE or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            conn.close()
            raise ServiceResponseError(f"not an HTTP response: {status_line[:80]!r}")
        store: dict[str, tuple[str, str]] = {}  # lower-case name -> (name as sent, value)
        for _ in range(MAX_HEADERS + 1):
            line = conn.rfile.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", _headers(store)
            if not line or len(line) > MAX_LINE:
                conn.close()
                raise ServiceResponseError("the response's headers are cut short or too long")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                continue
            name, value = name.strip(), value.strip()
            key = name.lower()
            seen = store.get(key)
            store[key] = (seen[0], f"{seen[1]}, {value}") if seen else (name, value)
        conn.close()
        raise ServiceResponseError(f"more than {MAX_HEADERS} response headers")

    def _connect(self, key: tuple[str, str, int], timeout: float) -> _Connection:
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise ServiceRequestTimeoutError(f"could not connect to {host}:{port} within {timeout} s") from exc
        except OSError as exc:
            raise ServiceRequestError(f"could not connect to {host}:{port}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls().wrap_socket(sock, server_hostname=host)
        except TimeoutError as exc:
            sock.close()
            raise ServiceRequestTimeoutError(f"TLS handshake with {host}:{port} timed out") from exc
        except OSError as exc:  # ssl.SSLError included: a certificate that does not verify
            sock.close()
            raise ServiceRequestError(f"TLS with {host}:{port} failed: {exc}") from exc
        return _Connection(key, sock)

    def _tls(self) -> ssl.SSLContext:
        with self._ssl_lock:
            if self._ssl is None:
                if self._verify is False:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                elif isinstance(self._verify, str):
                    context = ssl.create_default_context(cafile=self._verify)
                else:
                    context = ssl.create_default_context(cafile=_default_bundle())
                self._ssl = context
            return self._ssl


def _dropped(conn: _Connection) -> bool:
    """True if an idle connection has something to read (the server's close, or garbage) or is
    broken. ``poll``, not ``select``: a busy host has descriptors above ``FD_SETSIZE`` (1024),
    which ``select`` refuses, and every such connection would count as dropped."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([conn.sock], [], [], 0)  # pragma: no cover - Windows
    except (OSError, ValueError):
        return True
    return bool(readable)  # pragma: no cover - Windows


def _headers(store: dict[str, tuple[str, str]]) -> MutableMapping[str, str]:
    """azure-core's case-insensitive headers, filled in one step: its ``__setitem__`` per header was
    a visible share of a request's CPU. The store is the shape ``CaseInsensitiveDict`` keeps (lower-case
    name -> (name as sent, value)); where that class is not what it was, the mapping is built item by item."""
    headers = case_insensitive_dict()
    if _STORE_LAYOUT:
        headers._store = store  # type: ignore[attr-defined]
    else:  # pragma: no cover - another azure-core
        for name, value in store.values():
            headers[name] = value
    return headers


def _items(headers: Any) -> Iterator[tuple[str, Any]]:
    """The request's headers as (name, value), without a ``__getitem__`` per name when they are
    azure-core's ``CaseInsensitiveDict`` (whose ``items()`` is the generic, slower, view)."""
    if _STORE_LAYOUT and isinstance(headers, _CASE_INSENSITIVE):  # its store's layout was probed at import
        return iter(headers._store.values())  # type: ignore[attr-defined]
    return iter(headers.items())


def _store_layout() -> bool:
    """Whether azure-core's ``CaseInsensitiveDict`` keeps ``{lower-case name: (name, value)}`` in
    ``_store``, as 1.x does: probed once, so another layout falls back to its public methods."""
    probe = case_insensitive_dict()
    probe["X-Probe"] = "v"
    store = getattr(probe, "_store", None)
    return isinstance(store, dict) and store == {"x-probe": ("X-Probe", "v")} and probe.get("x-PROBE") == "v"


_STORE_LAYOUT = _store_layout()
_CASE_INSENSITIVE = type(case_insensitive_dict())


class _Stale(Exception):
    """A reused connection that the server had closed: safe to send the request again."""


def _seconds(value: Any, default: float = DEFAULT_TIMEOUT) -> float:
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return default


def _default_bundle() -> str | None:
    """The bundle ``requests`` trusts by default (certifi's), so both transports verify alike."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests depends on certifi
        return None
    path: str = certifi.where()
    return path


def lean_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False if ``CORPUS_HTTP=requests`` asks for azure-core's own transport (a way out, and the peer in benchmarks)."""
    env = os.environ if environ is None else environ
    return env.get("CORPUS_HTTP", "lean").lower() != "requests"

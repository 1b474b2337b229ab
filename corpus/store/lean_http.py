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
holding CR, LF or NUL is refused before anything is sent (header injection) with
:class:`corpus.store.wire.InvalidHeader`, a ``ValueError`` naming the header (never its value),
and deliberately not as ``RequestsTransport`` raises it (``ServiceResponseError`` around requests'
``InvalidHeader``): that is an ``AzureError``, which the blob and queue retry policies retry for
~67 s of back-off, though a deterministic input error fails the same way on every try. A
``ValueError`` passes azure-core's retry policy at once.

The wire work (request heads, the pool, stale connections, response heads and body framing, the
content codings) is :mod:`corpus.store.wire`'s, shared with the SDK-free clients of ``corpus
upload``/``pull``; this module is the azure-core side: what to serve, the response objects, and
the wire's errors as azure-core's.

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
* A forked child starts with empty pools (a DataLoader worker must not share sockets), and each
  transport's TLS context lock fresh (a parent's thread may have held it at the fork).
* One pool per TLS ``verify`` setting: a connection made without verification (or against
  another CA bundle) is never reused by a transport that verifies otherwise.
"""

from __future__ import annotations

import os
import threading
import weakref
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, MutableMapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
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

from corpus.store import wire
from corpus.store.http import POOL_SIZE
from corpus.store.wire import READ_BLOCK

__all__ = ["DEFAULT_TIMEOUT", "READ_BLOCK", "LeanTransport", "lean_enabled", "observe"]

DEFAULT_TIMEOUT = 300.0
"""azure-core's ``ConnectionConfiguration`` defaults: 300 s to connect, 300 s between reads."""
MAX_HEADERS = 256
"""Response header lines accepted (lines without a colon are skipped, as ``http.client`` does)."""
IDLE_PER_HOST = POOL_SIZE
"""Idle connections kept per endpoint: :data:`corpus.store.http.POOL_SIZE`, for the same reason."""

_pool = wire.Pool(IDLE_PER_HOST)
"""The pool of transports that verify with the default bundle (every storage client's)."""
_pools: dict[bool | str, wire.Pool] = {True: _pool}
"""A pool per TLS ``verify`` setting: a connection opened without verification (or against
another bundle) is never handed to a transport that verifies otherwise. (A client certificate
goes to the fallback, so it is no part of the key.)"""
_pools_lock = threading.Lock()


def _pool_for(verify: bool | str) -> wire.Pool:
    pool = _pools.get(verify)
    if pool is None:
        with _pools_lock:
            pool = _pools.setdefault(verify, wire.Pool(IDLE_PER_HOST))
    return pool


_transports: weakref.WeakSet[LeanTransport] = weakref.WeakSet()
"""Every live transport, for the fork hook (their TLS context locks)."""

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
    global _pool, _pools, _pools_lock
    inherited = list(_pools.values())
    _pool = wire.Pool(IDLE_PER_HOST)
    _pools, _pools_lock = {True: _pool}, threading.Lock()  # the lock may have been held by a parent's thread
    for pool in inherited:
        pool.forget_in_child()
    for transport in list(_transports):
        transport._ssl_lock = threading.Lock()  # held by a parent's thread at the fork, it never would be released


os.register_at_fork(after_in_child=_forget_in_child)


def _azure_error(exc: OSError) -> AzureError:
    """The wire's error as azure-core's, so the SDK's retry policies treat it exactly as they treat
    ``RequestsTransport``'s: nothing sent and nothing answered is a request error, a timeout
    waiting for the response a response timeout, a body cut short an incomplete read, anything
    else that broke after the request went out a response error."""
    if isinstance(exc, wire.ReadTimeout):
        return ServiceResponseTimeoutError(str(exc))
    if isinstance(exc, wire.IncompleteRead):
        return IncompleteReadError(str(exc))
    if isinstance(exc, wire.SendFailed):
        return ServiceRequestError(str(exc))
    if isinstance(exc, wire.ProtocolError):
        return ServiceResponseError(str(exc))
    return ServiceResponseError(f"connection broke while reading: {exc}")  # pragma: no cover - the wire wraps these


def _raise_azure(exc: OSError) -> NoReturn:
    raise _azure_error(exc) from exc


_decoders = wire.decoders


def _decoded(blocks: Generator[bytes, None, None], decoders: list[wire.Gzip | wire.Deflate]) -> Iterator[bytes]:
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
    ``request`` from it and sets attributes on it): the body's blocks, decoded if asked, the
    wire's errors as azure-core's."""

    def __init__(self, pipeline: Any, response: HttpResponseImpl, *, decompress: bool = True) -> None:
        self.pipeline = pipeline
        self.response = response
        self.request = response.request
        raw: wire.Response = response._internal_response  # the transport's own object
        headers = response.headers
        self.block_size = READ_BLOCK
        self.content_length = int(headers.get("content-length", 0) or 0)
        blocks = raw.blocks()
        decoders = _decoders(headers.get("content-encoding", "")) if decompress else []
        self._blocks = _decoded(blocks, decoders) if decoders else blocks

    def __len__(self) -> int:
        return self.content_length

    def __iter__(self) -> _BodyStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._blocks)
        except OSError as exc:  # the wire's (a try costs nothing until something is raised)
            _raise_azure(exc)


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
        self._ssl: Any = None  # ssl.SSLContext, made on the first https request
        self._ssl_lock = threading.Lock()
        _transports.add(self)

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
        try:
            raw = _pool_for(self._verify).exchange(
                key, head, body, request.method.upper(), read_timeout, lambda: self._connect(key, connect_timeout),
                max_headers=MAX_HEADERS,
            )  # fmt: skip
        except OSError as exc:  # the wire's; connecting raised azure-core's already
            _raise_azure(exc)
        headers = _headers(raw.store)
        response = HttpResponseImpl(
            request=request,
            internal_response=raw,
            status_code=raw.status,
            reason=raw.reason,
            headers=headers,
            content_type=headers.get("content-type"),
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

    def _plan(self, request: Any, kwargs: dict[str, Any]) -> tuple[wire.Key, bytes, bytes] | None:
        """The connection key, request head and body, or ``None`` for the fallback's cases."""
        if not is_rest(request) or kwargs.get("proxies") or getattr(request, "_files", None):
            return None
        if kwargs.get("connection_cert") or kwargs.get("connection_verify", self._verify) != self._verify:
            return None  # TLS settings for this request alone: requests applies them per request, lean has one context
        return self._head_of(request)

    @staticmethod
    def _head_of(request: Any) -> tuple[wire.Key, bytes, bytes] | None:
        """The connection key, request head and body, or ``None`` for the fallback's cases. A
        header holding CR, LF or NUL is refused with the wire's ``InvalidHeader`` (a ``ValueError``:
        see the module's docstring for why not ``RequestsTransport``'s ``ServiceResponseError``)."""
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
        given = "content-length" in headers
        if given and headers["content-length"] != str(len(body)):
            return None
        method = request.method.upper()
        host = None
        if "host" not in headers:
            default = 443 if scheme == "https" else 80
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname  # an IPv6 literal keeps its brackets
            host += f":{port}" if port != default else ""
        try:  # wire.InvalidHeader (a ValueError, no AzureError) goes to the caller at once
            head = wire.request_head(method, target, host, _items(headers), len(body), length_given=given)
        except UnicodeEncodeError:
            return None
        return (scheme, url.hostname, port), head, body

    # -- connections -----------------------------------------------------------------------

    def _connect(self, key: wire.Key, timeout: float) -> wire.Connection:
        scheme, host, port = key
        try:
            sock = wire.open_tcp(host, port, timeout)
        except TimeoutError as exc:
            raise ServiceRequestTimeoutError(f"could not connect to {host}:{port} within {timeout} s") from exc
        except OSError as exc:
            raise ServiceRequestError(f"could not connect to {host}:{port}: {exc}") from exc
        if scheme == "https":
            try:
                try:
                    context = self._tls()
                except BaseException:  # a CA bundle that does not load: the TCP socket is not left open
                    sock.close()
                    raise
                sock = wire.wrap_tls(sock, context, host)
            except TimeoutError as exc:
                raise ServiceRequestTimeoutError(f"TLS handshake with {host}:{port} timed out") from exc
            except OSError as exc:  # ssl.SSLError included: a certificate that does not verify
                raise ServiceRequestError(f"TLS with {host}:{port} failed: {exc}") from exc
        return wire.Connection(key, sock)

    def _tls(self) -> Any:
        with self._ssl_lock:
            if self._ssl is None:
                self._ssl = wire.tls_context(self._verify)
            return self._ssl


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


def _seconds(value: Any, default: float = DEFAULT_TIMEOUT) -> float:
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return default


def lean_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False if ``CORPUS_HTTP=requests`` asks for azure-core's own transport (a way out, and the peer in benchmarks)."""
    env = os.environ if environ is None else environ
    return env.get("CORPUS_HTTP", "lean").lower() != "requests"

"""HTTP/1.1 on pooled keep-alive sockets, for the two clients that speak it themselves: the
storage SDKs' transport (:mod:`corpus.store.lean_http`) and the SDK-free listings, Put Blobs and
Get Blobs of ``corpus upload``/``corpus pull`` (:mod:`corpus.transfer.bloblist`).

No Azure, no ``requests``, no ``http.client`` here (``tests/test_layering.py``): a re-run of
``corpus upload`` imports this module before its first listing, and its start-up is measured
against rclone's (``tests/test_import_time.py``). ``ssl`` loads on the first https connection
(``select`` and ``zlib`` are on those paths already).

What is spoken, once for both clients:

* A request head: the request line, ``Host``, the headers as given, ``Content-Length`` when there
  is a body or the method is not GET/HEAD (as ``requests`` sends it: Azure wants 0 on an empty PUT)
  unless given. A name or value holding CR, LF or NUL, or a name holding ``:``, is refused with
  :class:`InvalidHeader` before anything is sent (header injection); each client maps it to its
  own error.
* A response: a status line ``HTTP/1.x NNN``, at most ``max_headers`` header lines of at most
  :data:`MAX_LINE` bytes (repeated names joined with ``", "``), interim 1xx answers skipped; a
  body framed by ``Content-Length``, chunked (hex sizes only, trailers ignored) or the close, none
  for HEAD, 1xx, 204 and 304. Streamed in blocks of at most :data:`READ_BLOCK`.
* Keep-alive: a connection goes back to its :class:`Pool` (shared by threads, LIFO; or a
  :class:`ThreadPool`, one idle connection per thread) only after its whole request was sent,
  its whole body read, nothing received beyond the body's framing (a body on a HEAD/204/304, a
  Content-Length short of what was sent: the next request would read it as its answer), and
  neither the version nor ``Connection`` said close; a body abandoned half-way closes its
  socket. An idle connection the server has closed is not used (``poll`` before each reuse, as
  urllib3 does; unless the pool's ``check_idle`` is off, for a client whose every request may be
  sent twice). A request on a *reused* connection that meets a closed socket before any byte of
  the response (once one arrived, the server has the request) is sent again once, on a new
  connection, if it could not be sent at all or is idempotent (GET, HEAD, PUT, DELETE, OPTIONS);
  nothing else is retried here. An answer the server sent before it stopped reading the request
  (a 413, a 403) is read and returned, as urllib3 does.

Errors, all ``OSError`` but :class:`InvalidHeader` (so the SDK-free callers, which retry
``OSError`` s as "cannot reach", treat them as before): :class:`SendFailed` (nothing answered a
request that could not be sent), :class:`ReadTimeout`, :class:`IncompleteRead` (the body stopped
short of its framing), :class:`ProtocolError` (anything else: the connection broke, or the answer
is not HTTP/1.x as read here). Opening a connection (:func:`open_tcp`, :func:`wrap_tls`) raises the
socket's own errors, which each client reports its own way.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import zlib
from collections.abc import Callable, Generator, Iterable
from typing import Any

READ_BLOCK = 64 * 1024
COALESCE = 256 * 1024
"""A body up to this size goes out in one ``sendall`` with the head (one copy, ~20 µs at most);
a larger one after it. Two sends were ~10 % more CPU per 80 KB Put Blob from 32 threads."""
WHOLE_READ = 64 * 1024 * 1024
"""A body of known length up to this size is read in one call (one allocation, no copy: the SDKs'
first Get Blob asks for up to 32 MiB); a larger one in :data:`PIECE`-sized pieces, so memory
follows what arrives, not what ``Content-Length`` announces."""
PIECE = 4 * 1024 * 1024
MAX_LINE = 64 * 1024
"""Longest status, header or chunk-size line accepted (Azure's are far shorter)."""
_LINE_LIMIT = MAX_LINE + 1
_NO_BODY_STATUS = frozenset({204, 304})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_UNSAFE = frozenset("\r\n\0")
_HEX = frozenset(b"0123456789abcdefABCDEF")

Key = tuple[str, str, int]
"""(scheme, host, port): what a pooled connection is for."""
Store = dict[str, tuple[str, str]]
"""Response headers: lower-case name -> (name as sent, value); the layout azure-core's
``CaseInsensitiveDict`` keeps, so :mod:`corpus.store.lean_http` hands it over without a copy."""


class ProtocolError(ConnectionError):
    """The connection broke, or the answer is not HTTP/1.x as read here."""


class SendFailed(ProtocolError):
    """The request could not be sent, and nothing answered it: the server saw none or part of it."""


class IncompleteRead(ProtocolError):
    """The connection closed before the body's framing said it ends."""


class ReadTimeout(TimeoutError):
    """No byte of the response within the read timeout."""


class InvalidHeader(ValueError):
    """A request header or target that would split the request (CR, LF, NUL): nothing was sent.

    The message names the header, never its value (it may be a signature or a token)."""


# -- the request ------------------------------------------------------------------------------


def check_header(name: str, value: str) -> None:
    """Raise :class:`InvalidHeader` if ``name: value`` could not be one header line."""
    if _UNSAFE.intersection(name) or _UNSAFE.intersection(value) or ":" in name:
        raise InvalidHeader(f"the request header {name[:80]!r} holds CR or LF (or NUL, or a ':' in its name): nothing was sent")


def request_head(
    method: str, target: str, host: str | None, headers: Iterable[tuple[str, Any]], body_length: int, *, length_given: bool
) -> bytes:
    """The request line and headers, ending in the blank line, as Latin-1 (``UnicodeEncodeError``
    for a header that is not: the caller decides). ``host`` ``None``: a ``Host`` is among ``headers``.
    ``Content-Length`` is added for a body, and for an empty request of any method but GET and HEAD,
    unless ``length_given``. :class:`InvalidHeader` if the target, a name or a value holds CR, LF or
    NUL, or a name a ``:``: checked on the joined head (three scans in C, not two set
    intersections per header), and only a head that fails is searched for the culprit."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in headers:
        if ":" in name:
            check_header(name, str(value))
        lines.append(f"{name}: {value}")
    if not length_given and (body_length or method not in ("GET", "HEAD")):
        lines.append(f"Content-Length: {body_length}")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        _refuse(lines)
    return (text + "\r\n\r\n").encode("latin-1")


def _refuse(lines: list[str]) -> None:
    """Raise :class:`InvalidHeader` for the first of a head's lines that holds CR, LF or NUL."""
    for i, line in enumerate(lines):
        if _UNSAFE.intersection(line):
            if i == 0:
                raise InvalidHeader("the request target holds CR or LF (or NUL): nothing was sent")
            name, _, value = line.partition(": ")
            check_header(name, value)  # every header line has its ": " (names hold no ":")
    raise AssertionError("unreachable: a head with an unsafe character has a line holding it")  # pragma: no cover


# -- connections ------------------------------------------------------------------------------


class _CountingIO(socket.SocketIO):
    """The socket's raw reader, counting what it received: ``tell()`` is that count, so the
    buffered reader's own ``tell()`` is what was consumed, and the difference is what its buffer
    still holds, known without a system call (``peek`` would block on an empty buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, "rb")
        self.received = 0

    def readinto(self, b: Any) -> int | None:
        n = super().readinto(b)
        if n:
            self.received += n
        return n

    def tell(self) -> int:
        return self.received


class Connection:
    """One keep-alive socket and its buffered reader."""

    __slots__ = ("key", "pending", "raw", "rfile", "sock", "used")

    def __init__(self, key: Key, sock: socket.socket) -> None:
        self.key = key
        self.sock = sock
        self.raw = _CountingIO(sock)
        self.rfile = io.BufferedReader(self.raw, READ_BLOCK)
        self.pending: Callable[[], int] | None = getattr(sock, "pending", None)  # TLS: decrypted bytes ssl holds
        self.used = False

    def leftover(self) -> bool:
        """True if bytes the response's framing did not account for were received already: in the
        reader's buffer, or decrypted and held by ``ssl``. No system call (this runs per response).
        Surplus sent with the answer is in the buffer (each read takes what has arrived, up to
        :data:`READ_BLOCK`); surplus still in the kernel shows to the next reuse's ``poll``
        (:meth:`dropped`) in a pool that checks. A pool that does not (the SDK-free clients': a
        ``poll`` per request cost their 32 threads ~10 % more CPU) misses only surplus that arrives
        after its answer was read, which no client can tell from the next answer once that is sent."""
        return self.raw.received != self.rfile.tell() or bool(self.pending and self.pending())

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def dropped(self) -> bool:
        """True if this idle connection has something to read (the server's close, or garbage) or
        is broken. ``poll``, not ``select``: a busy host has descriptors above ``FD_SETSIZE``
        (1024), which ``select`` refuses, and every such connection would count as dropped."""
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(0))
            readable, _, _ = select.select([self.sock], [], [], 0)  # pragma: no cover - Windows
        except (OSError, ValueError):
            return True
        return bool(readable)  # pragma: no cover - Windows


def open_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket with Nagle off (a head and a small body go out at once). An ASCII
    host is passed as bytes: a ``str`` goes through the ``idna`` codec, imported (~1 ms) and run
    for every connection. Raises the socket's own errors."""
    address: str | bytes = host.encode("ascii") if host.isascii() else host
    sock = socket.create_connection((address, port), timeout=timeout)  # type: ignore[arg-type]
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def wrap_tls(sock: socket.socket, context: Any, host: str) -> socket.socket:
    """``sock`` after a TLS handshake with ``context`` (an ``ssl.SSLContext``), the name
    ``host`` checked; closed if the handshake fails. Raises ``ssl``'s errors (``OSError`` s)."""
    try:
        wrapped: socket.socket = context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return wrapped


def tls_context(verify: bool | str) -> Any:
    """An ``ssl.SSLContext``: ``verify`` a CA bundle's path (a file, or a directory of hashed
    certificates, which ``requests`` takes as ``ca_cert_dir``), ``True`` the bundle ``requests``
    trusts by default (certifi's, so both transports verify alike; the system's without certifi),
    ``False`` no verification at all."""
    import os
    import ssl

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests depends on certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class Pool:
    """Idle connections per :data:`Key`, at most ``idle_per_host`` each; LIFO, so a warm socket is
    reused first. ``check_idle``: ``poll`` an idle connection before reusing it, and drop it if the
    server has closed it. A client whose every request may be sent twice can leave that to the
    stale-connection re-send instead (a ``poll`` per request, which releases the GIL, costs a
    32-thread upload ~10 % more CPU per Put Blob)."""

    def __init__(self, idle_per_host: int, *, check_idle: bool = True) -> None:
        self.idle_per_host = idle_per_host
        self.check_idle = check_idle
        self._lock = threading.Lock()
        self._idle: dict[Key, list[Connection]] = {}

    def take(self, key: Key) -> Connection | None:
        """An idle connection to ``key`` the server has not closed, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None or not self.check_idle or not conn.dropped():
                return conn
            conn.close()  # closed by the server while idle (urllib3 checks too)

    def give(self, conn: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.idle_per_host:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def forget_in_child(self) -> None:
        """Close this pool's copies of the parent's idle sockets in a forked child (closing a copy
        sends nothing: the parent's connections are untouched). No lock: the child has one
        thread, and the lock may be held by a parent's."""
        for conns in self._idle.values():
            for conn in conns:
                try:
                    conn.close()
                except OSError:
                    pass
        self._idle = {}
        self._lock = threading.Lock()  # usable again, should anything still hold this pool

    def exchange(
        self,
        key: Key,
        head: bytes,
        body: bytes,
        method: str,
        read_timeout: float,
        connect: Callable[[], Connection],
        *,
        max_headers: int,
        skip_bad_lines: bool = True,
    ) -> Response:
        """Send one request on a pooled connection to ``key`` (else one from ``connect()``, whose
        errors are the caller's) and read the response's head; the body is the response's to read.
        A stale reused connection is replaced once (see the module's docstring)."""
        conn = self.take(key)
        if conn is not None:
            try:
                return self._once(conn, head, body, method, read_timeout, max_headers, skip_bad_lines)
            except _Stale:
                pass  # closed between the check and the send: once more on a new connection
        conn = connect()
        try:
            return self._once(conn, head, body, method, read_timeout, max_headers, skip_bad_lines)
        except _Stale as exc:
            raise ProtocolError(f"connection closed before a response: {exc}") from exc

    def _once(
        self, conn: Connection, head: bytes, body: bytes, method: str, read_timeout: float, max_headers: int, skip: bool
    ) -> Response:
        reused, conn.used = conn.used, True
        sent = False
        broke: OSError | None = None
        try:
            if conn.sock.gettimeout() != read_timeout:  # setting it is two fcntl calls with the GIL released
                conn.sock.settimeout(read_timeout)
            try:
                if len(body) <= COALESCE:
                    conn.sock.sendall(head + body)
                else:
                    conn.sock.sendall(head)
                    conn.sock.sendall(body)
                sent = True
            except (BrokenPipeError, ConnectionResetError) as exc:
                # the server may have answered from the head (413, 403) and closed without reading
                # the body: read that answer, as urllib3 does, rather than report a failed send
                broke = exc
            # the first byte of the answer, not its line: a line cut short by a reset would be
            # lost in the reader, and the request sent again though the server processed it
            first = conn.rfile.peek(1)
        except TimeoutError as exc:
            conn.close()
            raise ReadTimeout(f"no response within {read_timeout} s") from exc
        except OSError as exc:
            conn.close()
            if reused and (not sent or method in _IDEMPOTENT):
                raise _Stale(str(broke or exc)) from exc
            if not sent:
                raise SendFailed(f"could not send the request: {broke or exc}") from exc
            raise ProtocolError(f"connection broke before a response: {exc}") from exc
        if not first:
            conn.close()
            if reused and (not sent or method in _IDEMPOTENT):  # a POST is not sent twice here
                raise _Stale(str(broke or "connection closed"))
            if not sent:
                raise SendFailed(f"could not send the request: {broke}") from broke
            raise ProtocolError("connection closed before a response")
        try:  # a byte of the answer arrived: from here on nothing is sent again
            version, status, reason, headers = _head(conn, conn.rfile.readline(MAX_LINE + 1), max_headers, skip)
            while 100 <= status < 200:  # 100 Continue and friends: read on to the real status
                version, status, reason, headers = _head(conn, conn.rfile.readline(MAX_LINE + 1), max_headers, skip)
        except TimeoutError as exc:
            conn.close()
            raise ReadTimeout(f"read timed out: {exc}") from exc
        except ProtocolError:
            conn.close()
            raise
        except OSError as exc:
            conn.close()
            raise ProtocolError(f"connection broke while reading: {exc}") from exc
        return Response(self, conn, version, status, reason, headers, method, reusable=sent)


class ThreadPool(Pool):
    """One idle connection per :data:`Key` per thread, kept by that thread: no lock and no
    hand-over between threads, for clients whose threads each send a stream of requests (the
    SDK-free upload and pull: a shared pool cost their 32 threads more CPU per request as the
    service slowed)."""

    def __init__(self, *, check_idle: bool = True) -> None:
        super().__init__(1, check_idle=check_idle)
        self._local = threading.local()

    def take(self, key: Key) -> Connection | None:
        conns: dict[Key, Connection] | None = self._local.__dict__.get("conns")
        conn = conns.pop(key, None) if conns else None
        if conn is not None and self.check_idle and conn.dropped():
            conn.close()
            return None
        return conn

    def give(self, conn: Connection) -> None:
        conns: dict[Key, Connection] = self._local.__dict__.setdefault("conns", {})
        kept = conns.get(conn.key)
        conns[conn.key] = conn
        if kept is not None:
            kept.close()

    def clear(self) -> None:
        """This thread's idle connections (the others' are theirs)."""
        conns: dict[Key, Connection] = self._local.__dict__.pop("conns", {})
        for conn in conns.values():
            conn.close()

    def forget_in_child(self) -> None:
        """In a forked child: close the copies of the forking thread's idle sockets (the child's
        one thread is that thread; the other threads' copies went with them) and start empty."""
        conns: dict[Key, Connection] = self._local.__dict__.pop("conns", {})
        for conn in conns.values():
            try:
                conn.close()
            except OSError:
                pass
        self._local = threading.local()


class _Stale(Exception):
    """A reused connection that the server had closed: safe to send the request again."""


def _head(conn: Connection, status_line: bytes, max_headers: int, skip_bad_lines: bool) -> tuple[str, int, str, Store]:
    """(version, status, reason, headers) from a status line and the header lines after it."""
    version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    well_formed = version.startswith("HTTP/1.") and len(code) == 3 and code.isascii() and code.isdigit()
    if len(status_line) > MAX_LINE or not well_formed:
        raise ProtocolError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    store: Store = {}
    readline = conn.rfile.readline
    for _ in range(max_headers + 1):
        line = readline(_LINE_LIMIT)
        if line == b"\r\n" or line == b"\n":
            return version, int(code), reason, store
        if not line or len(line) > MAX_LINE:
            raise ProtocolError("the response's headers are cut short or too long")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            if skip_bad_lines:
                continue
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        name = name.strip()
        key = name.lower()
        if key in store:  # a repeated header: one value, as requests (urllib3) joins them
            first, seen = store[key]
            store[key] = (first, f"{seen}, {value.strip()}")
        else:
            store[key] = (name, value.strip())
    raise ProtocolError(f"more than {max_headers} response headers")


# -- the response -----------------------------------------------------------------------------


class Response:
    """Status, headers (:data:`Store`), and a body reader that gives the connection back to its
    pool at the body's end (or closes it if the body is abandoned, broken, or runs to the close)."""

    def __init__(
        self, pool: Pool, conn: Connection, version: str, status: int, reason: str, store: Store, method: str, *, reusable: bool
    ) -> None:
        self.pool = pool
        self.conn: Connection | None = conn
        self.status, self.reason, self.store = status, reason, store
        connection = store.get("connection")
        tokens = {token.strip().lower() for token in connection[1].split(",")} if connection else set()
        # HTTP/1.1 keeps the connection unless told to close it; HTTP/1.0 closes it unless told to keep it
        self.keep_alive = reusable and "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        encoding = store.get("transfer-encoding")
        length = store.get("content-length")
        if method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
            self.remaining: int | None = 0
            self.chunked = False
        elif encoding is not None and "chunked" in encoding[1].lower():
            self.remaining, self.chunked = None, True
        elif length is not None:
            if not (length[1].isascii() and length[1].isdigit()):  # "-1", "+5", "5, 5", "x": not one length
                self._abandon()
                raise ProtocolError(f"bad Content-Length {length[1][:40]!r}")
            self.remaining, self.chunked = int(length[1]), False
        else:  # the body runs to the end of the connection
            self.remaining, self.chunked, self.keep_alive = None, False, False
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
                        raise IncompleteRead(f"connection closed with {self.remaining} bytes of the body unread")
                    self.remaining -= len(data)
                    if not self.remaining:  # released now, for a reader that stops at the announced length
                        self._finish()
                    yield data
            self._finish()
        finally:
            if self.conn is not None:  # not finished: abandoned, or failed half-way
                self._abandon()

    def read_all(self) -> bytes:
        """The whole body (kept: :meth:`blocks` gives it again). A body of known length is one
        buffered read, not a block at a time: with 32 threads sending, each extra call that
        releases the GIL cost the SDK-free clients ~30 % more CPU per Get Blob."""
        if self.preloaded is None:
            if self.chunked or self.remaining is None or self.conn is None:
                self.preloaded = b"".join(self.blocks())
            else:
                try:
                    data = self._read_exactly(self.remaining)
                except TimeoutError as exc:
                    self._abandon()
                    raise ReadTimeout(f"read timed out: {exc}") from exc
                except OSError as exc:
                    self._abandon()
                    raise ProtocolError(f"connection broke while reading: {exc}") from exc
                if len(data) != self.remaining:
                    self._abandon()
                    raise IncompleteRead(f"connection closed with {self.remaining - len(data)} bytes of the body unread")
                self.remaining = 0
                self._finish()
                self.preloaded = data
        return self.preloaded

    def close(self) -> None:
        if self.conn is not None:
            self._abandon()

    def _read_exactly(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the close): one buffered read for a body up to
        :data:`WHOLE_READ`, else pieces of it into a growing buffer, so memory follows what
        arrives, not what ``Content-Length`` announces (10**14 would be a ``MemoryError``)."""
        assert self.conn is not None
        read = self.conn.rfile.read
        if n <= WHOLE_READ:
            return read(n)
        out = bytearray()
        while len(out) < n:
            piece = read(min(n - len(out), PIECE))
            if not piece:
                break
            out += piece
        return bytes(out)

    def _read(self, n: int) -> bytes:
        assert self.conn is not None
        try:
            return self.conn.rfile.read1(n) if n else b""
        except TimeoutError as exc:
            raise ReadTimeout(f"read timed out: {exc}") from exc
        except OSError as exc:
            raise ProtocolError(f"connection broke while reading: {exc}") from exc

    def _line(self) -> bytes:
        assert self.conn is not None
        try:
            line = self.conn.rfile.readline(MAX_LINE + 1)
        except TimeoutError as exc:
            raise ReadTimeout(f"read timed out: {exc}") from exc
        except OSError as exc:
            raise ProtocolError(f"connection broke while reading: {exc}") from exc
        if len(line) > MAX_LINE:
            raise ProtocolError("a chunk line of the response is too long")
        return line

    def _chunked(self) -> Generator[bytes, None, None]:
        while True:
            line = self._line()
            if not line:
                raise IncompleteRead("connection closed inside a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or not _HEX.issuperset(size_text):  # int() would take "-5", "0x5", "5_0"
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
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
                    raise IncompleteRead("connection closed inside a chunk")
                left -= len(data)
                yield data
            end = self._line()  # the CRLF after the chunk
            if end not in (b"\r\n", b"\n"):
                if not end:
                    raise IncompleteRead("connection closed inside a chunked body")
                raise ProtocolError("a chunk does not end where its size says")

    def _to_close(self) -> Generator[bytes, None, None]:
        while True:
            data = self._read(READ_BLOCK)
            if not data:
                return
            yield data

    def _finish(self) -> None:
        """Release the connection at the body's end: back to the pool only if nothing beyond the
        framing was received (a body on a HEAD/204/304, a Content-Length short of what was sent),
        which the next request on it would read as its answer, and every later one off by one."""
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.keep_alive and not conn.leftover():
                self.pool.give(conn)
            else:
                conn.close()

    def _abandon(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


# -- content codings (what requests/urllib3 decode) -------------------------------------------


class Gzip:
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


class Deflate:
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


_DECODERS: dict[str, type[Gzip | Deflate]] = {"gzip": Gzip, "x-gzip": Gzip, "deflate": Deflate}


def decoders(content_encoding: str) -> list[Gzip | Deflate]:
    """The decoders for a ``Content-Encoding`` (codings in the order they were applied), or none
    if it names a coding ``requests`` would not decode either (``identity``, ``br`` without brotli…).
    They raise ``zlib.error`` on a body that does not decode."""
    codings = [c.strip() for c in content_encoding.lower().split(",") if c.strip()]
    if not codings or any(c not in _DECODERS for c in codings):
        return []
    return [_DECODERS[c]() for c in codings]

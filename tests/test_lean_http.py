"""LeanTransport (:mod:`corpus.store.lean_http`) on the wire, then under the real SDKs on Azurite.

The wire tests talk to :class:`Scripted`, a loopback HTTP server that answers each request with
bytes scripted by the test and records what it received (raw and parsed) and how many connections
it accepted, so keep-alive, stale connections and error mapping are asserted on the wire. Where
``RequestsTransport`` is the reference (body decoding, error classes), the same script runs
through both transports and the results must agree.
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core import PipelineClient
from azure.core.exceptions import (
    AzureError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.policies import RequestIdPolicy
from azure.core.pipeline.transport import HttpRequest as LegacyHttpRequest
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.store import lean_http
from corpus.store.http import PROXY_VARIABLES
from corpus.store.lean_http import READ_BLOCK, LeanTransport
from corpus.store.storage import Clients
from tests.support import at_once, fd_closed, in_forked_child, wait_for

# -- the scripted server ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What the server does with one request: send ``reply`` (in ``pieces`` of these sizes, then
    the rest), then ``close`` the connection, or ``reset`` it (RST: after ``reply`` as one piece)
    or ``hang`` without answering;
    ``echo``: the reply is the request's target and body instead; ``early``: answer after the
    request's head, without reading its body (then close: the unread body makes it a reset)."""

    reply: bytes = b""
    close: bool = False
    reset: bool = False
    hang: bool = False
    pieces: tuple[int, ...] = ()
    echo: bool = False
    early: bool = False


@dataclass
class Seen:
    """One request as the server read it."""

    conn: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    raw: bytes


def _head(headers: tuple[str, ...]) -> str:
    return "".join(f"{h}\r\n" for h in headers)


def ok(body: bytes = b"", *headers: str, status: str = "200 OK") -> bytes:
    head = _head(headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def chunked(pieces: list[bytes], *, extension: str = "", trailers: tuple[str, ...] = (), headers: tuple[str, ...] = ()) -> bytes:
    head = _head(headers)
    out = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{head}\r\n".encode()
    for piece in pieces:
        out += f"{len(piece):x}{extension}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n" + "".join(f"{t}\r\n" for t in trailers).encode() + b"\r\n"


UNSCRIPTED = ok(b"unscripted request", status="599 Unscripted")


class Scripted:
    """A loopback HTTP/1.1 server answering requests, in the order they arrive, with scripted steps."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.port: int = self.listener.getsockname()[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"
        self.tls = tls
        self.steps: list[Step] = []
        self.seen: list[Seen] = []
        self.accepts = 0
        self.closed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def script(self, *steps: Step | bytes) -> None:
        with self._lock:
            self.steps.extend(s if isinstance(s, Step) else Step(s) for s in steps)

    def stop(self) -> None:
        self._stop.set()
        with socket.create_connection(self.listener.getsockname()[:2]):  # wakes the accept loop to see it
            pass
        for sock in list(self._socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self._stop.is_set():
                sock.close()
                return
            with self._lock:
                index, self.accepts = self.accepts, self.accepts + 1
                self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        if self.tls:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True)
            except OSError:  # a client that did not trust the certificate
                sock.close()
                return
            with self._lock:
                self._socks.append(sock)  # the wrapped one: stop() shuts it down
        rfile = sock.makefile("rb")
        try:
            while True:
                with self._lock:
                    early = bool(self.steps) and self.steps[0].early
                seen = _read_request(rfile, index, body=not early)
                if seen is None:
                    return
                with self._lock:
                    self.seen.append(seen)
                    step = self.steps.pop(0) if self.steps else Step(UNSCRIPTED, close=True)
                if step.hang:
                    self._stop.wait()
                    return
                if step.reset:
                    sock.sendall(step.reply)  # a part of an answer, then the reset (it keeps what arrived)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                reply = ok(seen.target.encode() + b" " + seen.body) if step.echo else step.reply
                at = 0
                for size in step.pieces:
                    sock.sendall(reply[at : at + size])
                    at += size
                sock.sendall(reply[at:])
                if step.close:
                    return
        except OSError:
            return
        finally:
            rfile.close()
            sock.close()
            with self._lock:
                self.closed += 1


def _read_request(rfile: Any, conn: int, *, body: bool = True) -> Seen | None:
    line = rfile.readline()
    if not line:
        return None
    raw = line
    headers: dict[str, str] = {}
    while True:
        header = rfile.readline()
        raw += header
        if header in (b"\r\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    content = b""
    if not body:
        pass
    elif "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size_line = rfile.readline()
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            data = rfile.read(size + 2)
            raw += data
            content += data[:size]
            if size == 0:
                break
    elif "content-length" in headers:
        content = rfile.read(int(headers["content-length"]))
        raw += content
    method, target, _ = line.decode("latin-1").split(" ", 2)
    return Seen(conn, method, target, headers, content, raw)


def serving() -> Iterator[Scripted]:
    """A scripted server, stopped at the end with the idle sockets to it (other tests reconnect if theirs go)."""
    srv = Scripted()
    try:
        yield srv
    finally:
        srv.stop()
        lean_http._pool.clear()


server = pytest.fixture(serving, name="server")
shared_server = pytest.fixture(serving, scope="module", name="shared_server")
"""One server for the property tests (a function-scoped fixture would be shared by examples anyway)."""


# -- transports ---------------------------------------------------------------------------------


class Recording(RequestsTransport):
    """A fallback that records what it was handed, and sends it (with requests) anyway."""

    def __init__(self) -> None:
        super().__init__(use_env_settings=False)
        self.sent: list[Any] = []

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.sent.append(request)
        return super().send(request, **kwargs)


def lean(fallback: RequestsTransport | None = None) -> LeanTransport:
    return LeanTransport(fallback or Recording(), True)


def requests_transport() -> RequestsTransport:
    return RequestsTransport(use_env_settings=False)


TRANSPORTS = {"lean": lean, "requests": requests_transport}


@pytest.fixture(params=sorted(TRANSPORTS))
def either(request: pytest.FixtureRequest) -> Any:
    """Each transport in turn: for behaviour LeanTransport must share with RequestsTransport."""
    return TRANSPORTS[request.param]()


def client(server: Scripted, transport: Any) -> PipelineClient[HttpRequest, Any]:
    """A pipeline as the SDKs run it, without ContentDecodePolicy (it would parse the test bodies as JSON)."""
    return PipelineClient(server.url, transport=transport, policies=[RequestIdPolicy()])


def send(server: Scripted, transport: Any, method: str = "GET", path: str = "/", **kwargs: Any) -> Any:
    """``method path`` through a PipelineClient, the way the SDKs send (``send_request``)."""
    content = kwargs.pop("content", None)
    headers = kwargs.pop("headers", None)
    request = HttpRequest(method, server.url + path, content=content, headers=headers)
    return client(server, transport).send_request(request, **kwargs)


# -- response framing ---------------------------------------------------------------------------


def test_a_content_length_body_is_read_and_the_connection_kept(server: Scripted) -> None:
    server.script(ok(b"hello", "Content-Type: text/plain"), ok(b"again"))
    t = lean()
    first = send(server, t)
    assert (first.status_code, first.reason, first.content, first.headers["content-type"]) == (200, "OK", b"hello", "text/plain")
    assert send(server, t).content == b"again"
    assert server.accepts == 1
    assert [s.conn for s in server.seen] == [0, 0]
    assert t.fallback.sent == []


def test_a_chunked_body_with_extensions_and_trailers(server: Scripted) -> None:
    pieces = [b"a" * 10, b"", b"bc" * 3000, b"d"]
    reply = chunked([p for p in pieces if p], extension=";name=value;x", trailers=("X-Trailer: 1", "X-Other: 2"))
    server.script(Step(reply, pieces=(5, 17, 300)), ok(b"next"))
    t = lean()
    response = send(server, t)
    assert response.content == b"".join(pieces)
    assert "content-length" not in response.headers
    # the trailers were consumed: the next response on the same connection parses
    assert send(server, t).content == b"next"
    assert server.accepts == 1


def test_a_body_without_length_runs_to_the_close_and_the_connection_is_not_reused(server: Scripted) -> None:
    body = b"until the end" + b"x" * 100_000
    server.script(Step(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body, close=True), ok(b"2"))
    t = lean()
    assert send(server, t).content == body
    assert send(server, t).content == b"2"
    assert server.accepts == 2


def test_head_with_a_content_length_has_no_body(server: Scripted) -> None:
    server.script(b'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: "e"\r\n\r\n', ok(b"after"))
    t = lean()
    head = send(server, t, "HEAD", "/blob")
    assert (head.status_code, head.content, head.headers["content-length"], head.headers["etag"]) == (200, b"", "1234", '"e"')
    assert send(server, t).content == b"after"
    assert server.accepts == 1  # the HEAD left nothing unread on the connection


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_204_and_304_have_no_body(server: Scripted, status: str) -> None:
    server.script(f'HTTP/1.1 {status}\r\nETag: "e"\r\n\r\n'.encode(), ok(b"after"))
    t = lean()
    response = send(server, t)
    assert (response.status_code, response.content) == (int(status[:3]), b"")
    assert send(server, t).content == b"after"
    assert server.accepts == 1


def test_interim_100_continue_is_skipped(server: Scripted) -> None:
    server.script(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real", "X-Real: yes", status="201 Created"), ok(b"after"))
    t = lean()
    response = send(server, t, "PUT", "/x", content=b"body")
    assert (response.status_code, response.content, response.headers["x-real"]) == (201, b"real", "yes")
    assert send(server, t).content == b"after"
    assert server.accepts == 1


# -- keep-alive and stale connections -----------------------------------------------------------


def test_connection_close_is_honoured(server: Scripted) -> None:
    server.script(Step(ok(b"one", "Connection: close"), close=True), ok(b"two"), ok(b"three"))
    t = lean()
    assert [send(server, t).content for _ in range(3)] == [b"one", b"two", b"three"]
    assert server.accepts == 2
    assert [s.conn for s in server.seen] == [0, 1, 1]


def _idle_connection_closed_by_server(server: Scripted) -> LeanTransport:
    """A kept-alive connection (no ``Connection: close``) that the server then closes while it idles."""
    server.script(Step(ok(b"first"), close=True))
    t = lean()
    assert send(server, t).content == b"first"
    wait_for(lambda: server.closed == 1, 5, "the server to close the idle connection")
    return t


@pytest.mark.parametrize("method", ["GET", "PUT", "POST", "DELETE"])
def test_an_idle_connection_the_server_closed_is_not_used(server: Scripted, method: str) -> None:
    t = _idle_connection_closed_by_server(server)
    server.script(ok(b"fresh"))
    assert send(server, t, method, "/x", content=b"body").content == b"fresh"
    assert server.accepts == 2
    assert [(s.conn, s.method) for s in server.seen] == [(0, "GET"), (1, method)]  # sent once, on the new one


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_an_idempotent_request_on_a_reused_connection_closed_before_any_response_is_sent_again_once(
    server: Scripted, method: str, how: str
) -> None:
    server.script(ok(b"first"), Step(close=how == "close", reset=how == "reset"), ok(b""))
    t = lean()
    assert send(server, t).content == b"first"
    assert send(server, t, method, "/again").status_code == 200
    assert server.accepts == 2
    assert [(s.conn, s.method) for s in server.seen] == [(0, "GET"), (0, method), (1, method)]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_post_on_a_reused_connection_closed_before_any_response_is_not_sent_again(server: Scripted, how: str) -> None:
    server.script(ok(b"first"), Step(close=how == "close", reset=how == "reset"))
    t = lean()
    assert send(server, t).content == b"first"
    with pytest.raises(ServiceResponseError):
        send(server, t, "POST", "/messages", content=b"<QueueMessage/>")
    assert [(s.conn, s.method) for s in server.seen] == [(0, "GET"), (0, "POST")]
    assert server.accepts == 1


def test_a_fresh_connection_closed_before_any_response_is_not_sent_again(server: Scripted) -> None:
    server.script(Step(close=True))
    with pytest.raises(ServiceResponseError):
        send(server, lean(), "GET", "/once")
    assert [(s.conn, s.method) for s in server.seen] == [(0, "GET")]


_BEYOND = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"  # what a next request must not read
BEYOND_THE_FRAMING = {
    "head-with-a-body": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"),
    "204-with-a-body": ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nbody"),
    "304-with-a-body": ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\nbody"),
    "short-content-length": ("GET", ok(b"ok") + _BEYOND),
    "after-a-chunked-body": ("GET", chunked([b"ok"]) + _BEYOND),
}


@pytest.mark.parametrize("case", sorted(BEYOND_THE_FRAMING))
def test_bytes_beyond_the_framing_are_not_read_as_the_next_response(server: Scripted, case: str) -> None:
    """A server that sends more than its framing says (review 27w): the connection is not reused,
    so the next request reads its own answer (it read the surplus as its answer, and every later
    one was off by one). requests gets the Content-Length case right (a fresh reader per response:
    ``test_requests_discards_bytes_beyond_a_content_length``). Bytes that arrive after the answer
    was read and the next request sent cannot be told from its answer by any client."""
    method, reply = BEYOND_THE_FRAMING[case]
    server.script(reply, ok(b"real"), ok(b"real2"))
    t = lean()
    assert send(server, t, method).status_code in (200, 204, 304)
    assert send(server, t).content == b"real"
    assert send(server, t).content == b"real2"
    assert [s.conn for s in server.seen] == [0, 1, 1]


def test_requests_discards_bytes_beyond_a_content_length(server: Scripted) -> None:
    """The reference lean now agrees with."""
    server.script(ok(b"ok") + _BEYOND, ok(b"real"))
    t = requests_transport()
    assert send(server, t).content == b"ok"
    assert send(server, t).content == b"real"


@pytest.mark.parametrize("size", [2, 100_000])
def test_bytes_beyond_the_framing_over_tls_are_not_read_as_the_next_response(
    tls_server: Scripted, certificate: tuple[str, str], size: int
) -> None:
    """Over TLS the surplus may also be decrypted and held by ssl (``pending``) rather than by the
    reader's buffer: a body read straight into its result, shorter than the last record."""
    body = b"b" * size
    tls_server.script(ok(body) + _BEYOND, ok(b"real"))
    t = LeanTransport(Recording(), certificate[0])
    assert t.send(HttpRequest("GET", tls_server.url)).content == body
    assert t.send(HttpRequest("GET", tls_server.url)).content == b"real"
    assert [s.conn for s in tls_server.seen] == [0, 1]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET"])
def test_a_request_is_not_sent_again_once_a_byte_of_its_answer_arrived(server: Scripted, method: str) -> None:
    """On a reused connection, part of a status line then a reset: the server processed the
    request (a queue Update Message, a table Update with If-Match), so sending it again would fail
    it (404, 412) or repeat it; it is a response error, as requests reports it."""
    server.script(ok(b"first"), Step(b"HTTP/1.1 20", reset=True), ok(b"must not be sent"))
    t = lean()
    assert send(server, t).content == b"first"
    with pytest.raises(ServiceResponseError):
        send(server, t, method, "/once", content=b"body" if method != "GET" else None)
    assert [(s.conn, s.method) for s in server.seen] == [(0, "GET"), (0, method)]


def test_a_huge_content_length_is_an_incomplete_read_not_a_memory_error(server: Scripted, either: Any) -> None:
    """Memory follows what arrives, not what Content-Length announces (10**14 was a MemoryError)."""
    server.script(Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000000\r\n\r\nshort", close=True))
    with pytest.raises(IncompleteReadError):
        send(server, either)


def test_a_body_larger_than_one_whole_read_is_read_exactly(server: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    from corpus.store import wire

    monkeypatch.setattr(wire, "WHOLE_READ", 256 * 1024)  # pieces of PIECE above it (4 MiB: the body spans three)
    body = bytes(range(256)) * (wire.PIECE // 256 * 2 + 3)
    server.script(ok(body), ok(b"next"))
    t = lean()
    assert send(server, t).content == body
    assert send(server, t).content == b"next"
    assert server.accepts == 1


# -- errors -------------------------------------------------------------------------------------


def test_a_truncated_content_length_body_is_an_incomplete_read(server: Scripted, either: Any) -> None:
    server.script(Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", close=True))
    with pytest.raises(IncompleteReadError):
        send(server, either)


def test_a_truncated_chunked_body_is_an_incomplete_read(server: Scripted, either: Any) -> None:
    server.script(Step(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly this", close=True))
    with pytest.raises(IncompleteReadError):
        send(server, either)


def test_a_server_that_never_answers_times_out(server: Scripted, either: Any) -> None:
    server.script(Step(hang=True))
    with pytest.raises(ServiceResponseTimeoutError):
        send(server, either, read_timeout=0.2)


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_that_stalls_times_out(server: Scripted, stream: bool) -> None:
    """(RequestsTransport calls this one a ServiceRequestError when not streaming: a read is a response's.)"""
    server.script(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")  # and then nothing
    with pytest.raises(ServiceResponseTimeoutError):
        send(server, lean(), read_timeout=0.2, stream=stream).read()


def test_a_refused_port_is_a_request_error(either: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ServiceRequestError):
            either.send(HttpRequest("GET", f"http://127.0.0.1:{port}/"))


@pytest.mark.parametrize("garbage", [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n", b"\r\n"])
def test_a_response_that_is_not_http_is_a_response_error(server: Scripted, either: Any, garbage: bytes) -> None:
    server.script(Step(garbage, close=True))
    with pytest.raises(ServiceResponseError):
        send(server, either)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain",  # headers cut short
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 300 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["letters", "negative", "cut", "too-many", "too-long"],
)
def test_a_broken_response_head_is_a_response_error(server: Scripted, head: bytes) -> None:
    """(RequestsTransport lets a ValueError out for the first one.)"""
    server.script(Step(head, close=True), ok(b"next"))
    t = lean()
    with pytest.raises(ServiceResponseError):
        send(server, t)
    assert send(server, t).content == b"next"


# -- streaming ----------------------------------------------------------------------------------


def test_a_streamed_body_comes_in_blocks_and_releases_the_connection_at_its_end(server: Scripted) -> None:
    body = os.urandom(300_000)
    server.script(ok(body), ok(body), ok(b"after"))
    t = lean()
    response = send(server, t, stream=True)
    blocks = list(response.iter_bytes())
    assert b"".join(blocks) == body
    assert len(blocks) > 1
    assert all(len(b) <= READ_BLOCK for b in blocks)
    # the blob SDK's way: the generator stream_download gives, joined, with its content_length
    sdk_style = send(server, t, stream=True)
    generator = sdk_style.stream_download(None)
    assert (len(generator), generator.response) == (len(body), sdk_style)
    assert b"".join(list(generator)) == body
    assert send(server, t).content == b"after"
    assert server.accepts == 1


@pytest.mark.parametrize("ending", ["close", "keep-reference", "drop"])
def test_a_stream_abandoned_half_way_is_not_reused(server: Scripted, ending: str) -> None:
    body = os.urandom(500_000)
    server.script(ok(body), ok(b"after"))
    t = lean()
    response = send(server, t, stream=True)
    blocks = response.iter_bytes()
    assert len(next(blocks)) > 0
    if ending == "close":
        response.close()
    elif ending == "drop":
        del response, blocks
    assert send(server, t).content == b"after"
    assert [s.conn for s in server.seen] == [0, 1]
    if ending != "keep-reference":  # its socket is closed, not left open
        wait_for(lambda: server.closed >= 1, 5, "the abandoned connection to close")


def test_a_stream_closed_before_reading_is_not_reused(server: Scripted) -> None:
    server.script(ok(b"never read"), ok(b"after"))
    t = lean()
    send(server, t, stream=True).close()
    assert send(server, t).content == b"after"
    assert server.accepts == 2


# -- content encoding: as RequestsTransport decodes ---------------------------------------------

TEXT = b"The quick brown fox jumps over the lazy dog. " * 2000


def _deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


ENCODED = {
    "gzip": ("gzip", gzip.compress(TEXT)),
    "gzip-upper": ("GZIP", gzip.compress(TEXT)),
    "x-gzip": ("x-gzip", gzip.compress(TEXT)),
    "gzip-two-members": ("gzip", gzip.compress(TEXT[:5000]) + gzip.compress(TEXT[5000:])),
    "gzip-trailing-garbage": ("gzip", gzip.compress(TEXT) + b"\x00garbage"),
    "gzip-corrupt": ("gzip", gzip.compress(TEXT)[:20] + b"\xff" * 50 + gzip.compress(TEXT)[70:]),
    "gzip-not-gzip": ("gzip", b"plain text"),
    "deflate-zlib": ("deflate", zlib.compress(TEXT)),
    "deflate-raw": ("deflate", _deflate(TEXT, -zlib.MAX_WBITS)),
    "deflate-then-gzip": ("deflate, gzip", gzip.compress(zlib.compress(TEXT))),
    "identity": ("identity", TEXT),
    "unknown": ("compress", b"whatever it is"),
    "empty-gzip": ("gzip", b""),
}


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:
        return "error", type(exc).__name__


def _body_with(server: Scripted, transport: Any, mode: str, chunks: bool) -> Any:
    response = send(server, transport, stream=mode != "read")
    if mode == "read":
        return response.content
    return b"".join(response.iter_bytes() if mode == "iter_bytes" else response.iter_raw())


@pytest.mark.parametrize("chunks", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("mode", ["read", "iter_bytes", "iter_raw"])
@pytest.mark.parametrize("case", sorted(ENCODED))
def test_content_encoding_is_decoded_as_requests_decodes_it(server: Scripted, case: str, mode: str, chunks: bool) -> None:
    encoding, body = ENCODED[case]
    header = f"Content-Encoding: {encoding}"
    reply = chunked([body[i : i + 7000] for i in range(0, len(body), 7000)], headers=(header,)) if chunks else ok(body, header)
    server.script(reply, reply)
    reference = _outcome(lambda: _body_with(server, requests_transport(), mode, chunks))
    assert _outcome(lambda: _body_with(server, lean(), mode, chunks)) == reference
    if mode == "iter_raw":
        assert reference == ("ok", body)
    elif case in ("gzip", "gzip-upper", "deflate-zlib", "gzip-two-members"):
        assert reference == ("ok", TEXT)


@st.composite
def _encoded_bodies(draw: st.DrawFn) -> tuple[str, bytes, list[int]]:
    members = draw(st.lists(st.binary(max_size=3000), min_size=1, max_size=3))
    coding = draw(st.sampled_from(["gzip", "deflate-zlib", "deflate-raw", "deflate, gzip"]))
    if coding == "gzip":
        body = b"".join(gzip.compress(m) for m in members)
    elif coding == "deflate-zlib":
        body = zlib.compress(members[0])
    elif coding == "deflate-raw":
        body = _deflate(members[0], -zlib.MAX_WBITS)
    else:
        body = gzip.compress(zlib.compress(members[0]))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return coding.replace("-zlib", "").replace("-raw", ""), body, cuts


@given(_encoded_bodies())
@settings(max_examples=150, deadline=None)
def test_decoding_any_split_of_any_encoded_body_matches_urllib3(case: tuple[str, bytes, list[int]]) -> None:
    from urllib3.response import _get_decoder  # the decoder requests uses: the reference

    coding, body, cuts = case
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    reference = _get_decoder(coding)
    expected = b"".join(reference.decompress(p) for p in pieces) + reference.flush()
    got = b"".join(lean_http._decoded((p for p in pieces), lean_http._decoders(coding)))
    assert got == expected


# -- the request on the wire --------------------------------------------------------------------


def test_a_put_without_body_sends_content_length_0(server: Scripted) -> None:
    server.script(ok(status="201 Created"))
    t = lean()
    assert t.send(HttpRequest("PUT", f"{server.url}/c/b?comp=block&blockid=QQ%3D%3D")).status_code == 201
    assert server.seen[0].raw == (
        f"PUT /c/b?comp=block&blockid=QQ%3D%3D HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 0\r\n\r\n".encode()
    )


def test_a_get_sends_no_content_length(server: Scripted) -> None:
    server.script(ok())
    lean().send(HttpRequest("GET", server.url, headers={"x-ms-version": "2025-11-05"}))
    assert server.seen[0].raw == f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nx-ms-version: 2025-11-05\r\n\r\n".encode()


def test_a_post_with_a_bytes_body(server: Scripted) -> None:
    body = bytes(range(256)) * 300  # larger than one send block, every byte value
    server.script(ok(status="201 Created"))
    lean().send(HttpRequest("POST", f"{server.url}/q/messages", content=body, headers={"x-ms-version": "2025-11-05"}))
    head = (
        f"POST /q/messages HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Length: {len(body)}\r\nx-ms-version: 2025-11-05\r\n\r\n"
    )
    assert server.seen[0].raw == head.encode() + body


def test_a_post_with_a_str_body(server: Scripted) -> None:
    server.script(ok(status="201 Created"))
    lean().send(HttpRequest("POST", f"{server.url}/t", content='{"PartitionKey": "p"}'))
    head = f"POST /t HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
    assert server.seen[0].raw == head.encode() + b'{"PartitionKey": "p"}'


def test_a_non_ascii_str_body_is_sent_as_requests_sends_it(server: Scripted) -> None:
    """azure-core announces ``len(str)``; requests sends UTF-8 with the UTF-8 length: the fallback serves it."""
    server.script(ok(), ok())
    for transport in (requests_transport(), lean()):
        transport.send(HttpRequest("POST", f"{server.url}/t", content="bl\u00e5b\u00e6r"))
    assert server.seen[0].body == server.seen[1].body == "bl\u00e5b\u00e6r".encode()
    assert server.seen[1].headers["content-length"] == "8"


def test_the_host_header_names_a_non_default_port_only(server: Scripted) -> None:
    head_of = LeanTransport._head_of
    assert b"\r\nHost: example.com\r\n" in head_of(HttpRequest("GET", "http://example.com/x"))[1]  # type: ignore[index]
    assert b"\r\nHost: example.com\r\n" in head_of(HttpRequest("GET", "https://example.com:443/x"))[1]  # type: ignore[index]
    assert b"\r\nHost: example.com:8443\r\n" in head_of(HttpRequest("GET", "https://example.com:8443/x"))[1]  # type: ignore[index]
    assert b"\r\nHost: example.com:80\r\n" in head_of(HttpRequest("GET", "https://example.com:80/x"))[1]  # type: ignore[index]
    server.script(ok())
    lean().send(HttpRequest("GET", f"{server.url}/x"))
    assert server.seen[0].headers["host"] == f"127.0.0.1:{server.port}"


def test_an_ipv6_host_is_bracketed() -> None:
    try:
        server = Scripted("::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        server.script(ok(b"over v6"))
        assert lean().send(HttpRequest("GET", f"{server.url}/x")).content == b"over v6"
        assert server.seen[0].headers["host"] == f"[::1]:{server.port}"
    finally:
        server.stop()


def test_an_explicit_host_header_is_not_doubled(server: Scripted) -> None:
    server.script(ok())
    lean().send(HttpRequest("GET", server.url, headers={"Host": "account.blob.core.windows.net"}))
    assert server.seen[0].raw.count(b"Host:") == 1
    assert server.seen[0].headers["host"] == "account.blob.core.windows.net"


@pytest.mark.parametrize(
    "headers",
    [{"x-ms-meta-a": "v\r\nX-Injected: 1"}, {"x-ms-meta-a": "v\nX"}, {"x-ms-meta-a": "v\rX"}, {"x-bad\r\nX": "v"}],
    ids=["crlf", "lf", "cr", "in-name"],
)
def test_a_header_with_a_line_break_is_refused_and_nothing_is_sent(
    server: Scripted, either: Any, headers: dict[str, str]
) -> None:
    """Lean raises the wire's InvalidHeader, a ValueError and no AzureError, so no retry policy
    retries it (a deterministic input error: every try fails alike); RequestsTransport wraps
    requests' InvalidHeader in a ServiceResponseError, which the storage policies retry. Lean's
    message names the header, not its value (a signature or a token may be one)."""
    from corpus.store import wire

    request = HttpRequest("PUT", f"{server.url}/x", headers=headers, content=b"body")
    if isinstance(either, LeanTransport):
        with pytest.raises(wire.InvalidHeader) as refused:
            either.send(request)
        assert not isinstance(refused.value, AzureError)
        assert "Injected" not in str(refused.value) and "CR or LF" in str(refused.value)
    else:
        with pytest.raises(ServiceResponseError) as wrapped:
            either.send(request)
        assert isinstance(wrapped.value.inner_exception, ValueError)
    assert (server.accepts, server.seen) == (0, [])


@pytest.mark.parametrize("http", ["lean", "requests"])
def test_a_header_refused_fails_the_sdk_call_at_once_on_lean(
    azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch, http: str
) -> None:
    """Through a blob client's whole pipeline, retries as configured in production for lean (one
    refusal, no back-off), none for requests (whose ServiceResponseError would be retried for ~67 s)."""
    from corpus.store import wire

    monkeypatch.setenv("CORPUS_HTTP", http)
    seen: list[str] = []
    refusals: list[str] = []
    real = wire._refuse

    def counting(lines: list[str]) -> None:
        refusals.append(lines[0])
        real(lines)

    monkeypatch.setattr(wire, "_refuse", counting)
    stop = lean_http.observe(lambda method, url, body: seen.append(url))
    try:
        clients = Clients(azurite_clients.connection, options={} if http == "lean" else {"retry_total": 0})
        assert type(_transport_of(clients.blob)) is (LeanTransport if http == "lean" else RequestsTransport)
        blob = clients.container("refused").get_blob_client("b")
        with pytest.raises(wire.InvalidHeader if http == "lean" else ServiceResponseError):
            blob.upload_blob(b"x", metadata={"a": "1\r\nx-ms-meta-b: 2"}, overwrite=True)
    finally:
        stop()
    assert seen == []
    assert len(refusals) == (1 if http == "lean" else 0)  # refused once: not retried


# -- what goes to the fallback ------------------------------------------------------------------


def _gen() -> Iterator[bytes]:
    yield b"streamed "
    yield b"body"


FALLBACK_CASES: dict[str, tuple[Any, dict[str, Any], str, bytes]] = {
    # request, send kwargs, the target the server sees, the body it receives
    "non-ascii-path": (lambda url: HttpRequest("GET", url + "/\u00e6\u00f8\u00e5"), {}, "/%C3%A6%C3%B8%C3%A5", b""),
    "space-in-path": (lambda url: HttpRequest("GET", url + "/a b"), {}, "/a%20b", b""),
    # urllib3 removes dot segments before sending (issue 25 R9 relies on what that does)
    "dot-segments": (lambda url: HttpRequest("GET", url + "/c/v1/red/../x.jpg"), {}, "/c/v1/x.jpg", b""),
    "generator-body": (lambda url: HttpRequest("PUT", url + "/g", content=_gen()), {}, "/g", b"streamed body"),
    "file-body": (lambda url: HttpRequest("PUT", url + "/f", content=io.BytesIO(b"file body")), {}, "/f", b"file body"),
    "form": (lambda url: HttpRequest("POST", url + "/form", data={"a": "b c"}), {}, "/form", b"a=b+c"),
    "files": (lambda url: HttpRequest("POST", url + "/up", files={"f": ("n.txt", b"xyz")}), {}, "/up", b""),
    "legacy-request": (lambda url: LegacyHttpRequest("GET", url + "/legacy"), {}, "/legacy", b""),
    "length-mismatch": (
        lambda url: HttpRequest("PUT", url + "/m", content=b"abc", headers={"Content-Length": "3 "}),
        {},
        "/m",
        b"abc",
    ),
}


@pytest.mark.parametrize("case", sorted(FALLBACK_CASES))
def test_what_lean_does_not_serve_goes_to_the_fallback(server: Scripted, case: str) -> None:
    make, kwargs, target, body = FALLBACK_CASES[case]
    server.script(ok(b"served"))
    t = lean()
    request = make(server.url)
    response = t.send(request, **kwargs)
    assert t.fallback.sent == [request]
    seen = server.seen[0]
    assert seen.target == target
    if case == "files":
        assert b'filename="n.txt"' in seen.body and b"xyz" in seen.body
    else:
        assert seen.body == body
    assert (response.status_code, response.read() if hasattr(response, "read") else response.body()) == (200, b"served")


def test_a_proxy_goes_to_the_fallback(server: Scripted) -> None:
    """``proxies`` is requests' business: here the scripted server plays the proxy."""
    server.script(ok(b"via proxy"))
    t = lean()
    response = t.send(HttpRequest("GET", "http://account.invalid/c/b"), proxies={"http": server.url})
    assert response.content == b"via proxy"
    assert len(t.fallback.sent) == 1
    assert server.seen[0].target == "http://account.invalid/c/b"


def test_lean_serves_the_rest_itself(server: Scripted) -> None:
    server.script(*[ok()] * 4)
    t = lean()
    for request in (
        HttpRequest("GET", server.url + "/a?b=c%20d"),
        HttpRequest("PUT", server.url + "/a", content=b"x"),
        HttpRequest("POST", server.url + "/a", json={"k": "v"}),
        HttpRequest("DELETE", server.url + "/a", headers={"If-Match": '"e"'}),
    ):
        t.send(request)
    assert t.fallback.sent == []
    assert server.accepts == 1


# -- multipart (the Tables $batch reply) --------------------------------------------------------

BATCH_REPLY = (
    b"--batchresponse_1\r\n"
    b"Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n"
    b"\r\n"
    b"--changesetresponse_2\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"HTTP/1.1 204 No Content\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"DataServiceVersion: 1.0;\r\n"
    b"ETag: W/\"datetime'2026-12-05T16%3A00%3A00.0000000Z'\"\r\n"
    b"\r\n"
    b"\r\n"
    b"--changesetresponse_2\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"HTTP/1.1 201 Created\r\n"
    b"Content-Type: application/json;odata=minimalmetadata\r\n"
    b"ETag: W/\"datetime'2026-12-05T16%3A00%3A01.0000000Z'\"\r\n"
    b"\r\n"
    b'{"PartitionKey":"p","RowKey":"r2"}\r\n'
    b"--changesetresponse_2--\r\n"
    b"--batchresponse_1--\r\n"
)


def test_a_multipart_batch_reply_splits_into_parts(server: Scripted, either: Any) -> None:
    reply = ok(BATCH_REPLY, "Content-Type: multipart/mixed; boundary=batchresponse_1", status="202 Accepted")
    server.script(Step(reply, pieces=(100, 300)))
    changeset = HttpRequest("POST", "")
    changeset.set_multipart_mixed(
        HttpRequest("PATCH", f"{server.url}/t(PartitionKey='p',RowKey='r1')", json={"v": 1}),
        HttpRequest("POST", f"{server.url}/t", json={"PartitionKey": "p", "RowKey": "r2"}),
        boundary="changeset_3",
    )
    batch = HttpRequest("POST", f"{server.url}/$batch", headers={"Content-Type": "application/json"})
    batch.set_multipart_mixed(changeset, boundary="batch_4", enforce_https=False)
    response = client(server, either).send_request(batch, stream=True)  # as the Tables SDK sends it
    parts = list(response.parts())
    assert [p.status_code for p in parts] == [204, 201]
    assert parts[1].headers["etag"].startswith('W/"datetime')
    assert b"PATCH " in server.seen[0].body and b"--changeset_3" in server.seen[0].body


# -- fork ---------------------------------------------------------------------------------------


def test_a_forked_child_starts_with_an_empty_pool(server: Scripted) -> None:
    server.script(ok(b"parent"), ok(b"child"), ok(b"parent again"))
    t = lean()
    assert send(server, t).content == b"parent"
    parent_pool = lean_http._pool
    (idle,) = parent_pool._idle[("http", "127.0.0.1", server.port)]  # one idle connection to the server
    inherited = idle.sock.fileno()

    def child() -> str:
        fresh = lean_http._pool is not parent_pool and not lean_http._pool._idle
        closed = fd_closed(inherited)  # before the child's own connection, which may get the same number
        body = t.send(HttpRequest("GET", server.url), read_timeout=10).content
        return f"{fresh} {closed} {body.decode()}"

    assert in_forked_child(child) == ("True True child", 0)
    assert send(server, t).content == b"parent again"
    assert lean_http._pool is parent_pool
    assert [s.conn for s in server.seen] == [0, 1, 0]  # the child on its own connection, the parent on its old one


def test_a_forked_child_gets_a_fresh_tls_lock_if_a_parent_thread_held_it() -> None:
    t = lean()
    with t._ssl_lock:  # held (by this thread here; by any other thread in production) at the fork
        report = in_forked_child(lambda: f"{t._ssl_lock.acquire(blocking=False)} {len(lean_http._pools)}")
    assert report == ("True 1", 0)


# -- what the first draft got wrong, pinned --------------------------------------------------------


@pytest.mark.parametrize(
    ("status_line", "connection", "reused"),
    [
        ("HTTP/1.0 200 OK", "", False),  # HTTP/1.0 closes unless it says keep-alive
        ("HTTP/1.0 200 OK", "Connection: keep-alive", True),
        ("HTTP/1.1 200 OK", "Connection: Keep-Alive, Close", False),
        ("HTTP/1.1 200 OK", "Connection: TE, close", False),
        ("HTTP/1.1 200 OK", "Connection: keep-alive", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_tokens(
    server: Scripted, status_line: str, connection: str, reused: bool
) -> None:
    headers = f"{connection}\r\n" if connection else ""
    server.script(f"{status_line}\r\nContent-Length: 2\r\n{headers}\r\nhi".encode(), ok(b"next"))  # the server keeps it open
    t = lean()
    assert send(server, t).content == b"hi"
    assert send(server, t).content == b"next"
    assert server.accepts == (1 if reused else 2)


@pytest.mark.parametrize("size", [b"-5", b"+5", b"0x5", b"5_0", b" ", b"5 5"])
def test_a_chunk_size_that_is_not_hex_digits_is_refused_at_once(server: Scripted, size: bytes) -> None:
    server.script(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n")  # kept open
    with pytest.raises(ServiceResponseError) as caught:
        send(server, lean(), read_timeout=5)
    assert not isinstance(caught.value, ServiceResponseTimeoutError)


def test_a_connection_closed_inside_the_trailers_is_not_pooled(server: Scripted) -> None:
    server.script(Step(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: 1\r\n", close=True))
    assert send(server, lean()).content == b"hi"
    assert not lean_http._pool._idle.get(("http", "127.0.0.1", server.port))


def test_a_stream_read_to_its_length_releases_the_connection_without_a_last_call(server: Scripted) -> None:
    """A consumer that stops after the announced length (and never calls ``next`` again) leaves nothing to read."""
    body = os.urandom(3 * READ_BLOCK)
    server.script(ok(body), ok(b"after"))
    t = lean()
    blocks = send(server, t, stream=True).iter_bytes()
    got = b""
    while len(got) < len(body):
        got += next(blocks)
    assert got == body
    assert send(server, t).content == b"after"
    assert server.accepts == 1


def test_a_connect_timeout_is_a_request_timeout(either: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # one connection fills the backlog: the next SYN is dropped (Linux; a kernel set to reset instead is skipped)
        with socket.create_connection(("127.0.0.1", port)):
            with socket.socket() as probe:
                probe.settimeout(0.3)
                try:
                    probe.connect(("127.0.0.1", port))
                except TimeoutError:
                    pass
                except OSError as exc:
                    pytest.skip(f"a connection beyond the backlog is not left hanging here: {exc}")
                else:
                    pytest.skip("a connection beyond the backlog is accepted here")
            with pytest.raises(ServiceRequestTimeoutError):
                either.send(HttpRequest("GET", f"http://127.0.0.1:{port}/"), connection_timeout=0.3)


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate file, key file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corpus test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_server(certificate: tuple[str, str]) -> Iterator[Scripted]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    srv = Scripted(tls=context)
    try:
        yield srv
    finally:
        srv.stop()
        lean_http._pool.clear()


def test_a_tls_context_that_fails_closes_the_tcp_socket(
    tls_server: Scripted, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from corpus.store import wire

    opened: list[socket.socket] = []
    real = wire.open_tcp
    monkeypatch.setattr(wire, "open_tcp", lambda *a: opened.append(real(*a)) or opened[-1])
    with pytest.raises(ServiceRequestError):
        LeanTransport(Recording(), str(tmp_path / "no-such-bundle.pem")).send(HttpRequest("GET", tls_server.url))
    (sock,) = opened
    assert sock.fileno() == -1


def test_a_connection_made_without_verification_is_not_reused_by_a_verifying_transport(
    tls_server: Scripted, certificate: tuple[str, str]
) -> None:
    """Transports share pools per verify setting (review 27w): the verifying one makes its own
    connection, and fails its handshake against a certificate it does not trust."""
    tls_server.script(ok(b"unverified"), ok(b"must not be served"), ok(b"verified"))
    assert LeanTransport(Recording(), False).send(HttpRequest("GET", tls_server.url)).content == b"unverified"
    with pytest.raises(ServiceRequestError):
        LeanTransport(Recording(), True).send(HttpRequest("GET", tls_server.url))
    assert LeanTransport(Recording(), certificate[0]).send(HttpRequest("GET", tls_server.url)).content == b"must not be served"
    assert [s.conn for s in tls_server.seen] == [0, 2]  # the bundle's transport did not take conn 0 either
    for pool in list(lean_http._pools.values()):
        pool.clear()


def test_https_verifies_against_the_given_bundle_and_keeps_the_connection(
    tls_server: Scripted, certificate: tuple[str, str]
) -> None:
    tls_server.script(ok(b"secret"), ok(b"again"))
    t = LeanTransport(Recording(), certificate[0])
    assert t.send(HttpRequest("GET", f"{tls_server.url}/x")).content == b"secret"
    assert t.send(HttpRequest("GET", f"{tls_server.url}/y")).content == b"again"
    assert (tls_server.accepts, t.fallback.sent) == (1, [])
    assert tls_server.seen[0].headers["host"] == f"127.0.0.1:{tls_server.port}"


def test_https_refuses_a_certificate_that_does_not_verify(tls_server: Scripted, either: Any) -> None:
    with pytest.raises(ServiceRequestError):
        either.send(HttpRequest("GET", f"{tls_server.url}/x"))  # certifi's bundle does not know it
    assert tls_server.seen == []


def test_https_without_verification(tls_server: Scripted) -> None:
    tls_server.script(ok(b"unverified"))
    assert LeanTransport(Recording(), False).send(HttpRequest("GET", tls_server.url)).content == b"unverified"


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("setting", ["connection_verify", "connection_cert"])
def test_per_request_tls_settings_go_to_the_fallback(tls_server: Scripted, certificate: tuple[str, str], setting: str) -> None:
    """requests honours them per request; lean has one TLS context, so it hands such a request on."""
    tls_server.script(ok(b"served"))
    fallback = Recording()
    fallback.connection_config.verify = certificate[0]
    t = LeanTransport(fallback, certificate[0])
    request = HttpRequest("GET", tls_server.url)
    per_request = {"connection_verify": False} if setting == "connection_verify" else {"connection_cert": certificate}
    assert t.send(request, **per_request).content == b"served"
    assert t.fallback.sent == [request]


# -- property: any framing of any body reassembles exactly ----------------------------------------


@st.composite
def _framed_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, tuple[int, ...]]:
    """(body, the whole response, how the server splits its sends)."""
    body = draw(
        st.binary(max_size=5000) | st.builds(lambda n, b: b * n, st.integers(1, 200_000), st.binary(min_size=1, max_size=3))
    )
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        extension = draw(st.sampled_from(["", ";x", ";name=value", ';q="a;b"']))
        trailers = tuple(draw(st.lists(st.sampled_from(["X-A: 1", "X-Checksum: abc"]), max_size=2)))
        reply = chunked([p for p in pieces if p], extension=extension, trailers=trailers)
    else:
        reply = ok(body)
    sends = tuple(draw(st.lists(st.integers(1, 4000), max_size=6)))
    return body, reply, sends


@given(_framed_bodies(), st.booleans())
@settings(max_examples=60, deadline=None)
def test_any_framing_of_any_body_reassembles_exactly(
    shared_server: Scripted, case: tuple[bytes, bytes, tuple[int, ...]], stream: bool
) -> None:
    body, reply, sends = case
    shared_server.script(Step(reply, pieces=sends))
    response = send(shared_server, lean(), stream=stream)
    assert (b"".join(response.iter_bytes()) if stream else response.content) == body
    assert lean_http._pool._idle[("http", "127.0.0.1", shared_server.port)]  # read to its end: back in the pool


# -- the real SDKs on Azurite -----------------------------------------------------------------------

SMALL_TRANSFERS = {
    # every transfer in many requests: 5 MB up in 256 KiB blocks, down in 1 MiB + 512 KiB ranges
    "max_single_put_size": 512 * 1024,
    "max_block_size": 256 * 1024,
    "max_single_get_size": 1024 * 1024,
    "max_chunk_get_size": 512 * 1024,
}


class Counted:
    """How many requests each transport served while installed (a wrapper on both ``send``s)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lean = self.requests = 0
        lean_send, requests_send = LeanTransport.send, RequestsTransport.send

        def lean_counted(transport: Any, request: Any, **kwargs: Any) -> Any:
            self.lean += 1
            return lean_send(transport, request, **kwargs)

        def requests_counted(transport: Any, request: Any, **kwargs: Any) -> Any:
            self.requests += 1
            return requests_send(transport, request, **kwargs)

        monkeypatch.setattr(LeanTransport, "send", lean_counted)
        monkeypatch.setattr(RequestsTransport, "send", requests_counted)


def _clients(base: Clients, monkeypatch: pytest.MonkeyPatch, transport: str, **options: Any) -> Clients:
    """Fresh clients on ``base``'s Azurite, their transport chosen as in production (``CORPUS_HTTP``)."""
    with monkeypatch.context() as env:
        env.setenv("CORPUS_HTTP", transport)
        clients = Clients(base.connection, options=options)
        for service in (clients.blob, clients.table, clients.queue):  # built (and their transport chosen) now
            assert service is not None
    return clients


def _transport_of(client: Any) -> Any:
    pipeline = getattr(client, "_pipeline", None) or client._client._client._pipeline  # blob/queue, or tables
    return pipeline._transport


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, LeanTransport),
        ({"CORPUS_HTTP": "requests"}, RequestsTransport),
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, RequestsTransport),
    ],
    ids=["default", "corpus-http-requests", "proxy"],
)
def test_clients_choose_the_transport_from_the_environment(
    azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: type
) -> None:
    for name in [*os.environ]:
        if name.lower() in ("corpus_http", *PROXY_VARIABLES):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    clients = Clients(azurite_clients.connection)
    for service in (clients.blob, clients.table, clients.queue):
        assert type(_transport_of(service)) is expected
        if expected is LeanTransport:
            assert isinstance(_transport_of(service).fallback, RequestsTransport)


def test_client_timeouts_reach_both_transports(azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAIL_FAST's 5 s to connect: a client handed a transport never passes it on, so Clients does."""
    from corpus.store.storage import FAIL_FAST

    monkeypatch.delenv("CORPUS_HTTP", raising=False)
    transport = _transport_of(Clients(azurite_clients.connection, options=dict(FAIL_FAST)).blob)
    assert isinstance(transport, LeanTransport) and transport._timeouts == (5.0, 60.0)
    assert transport.fallback.connection_config.timeout == 5
    # without options: the blob and queue SDKs' own defaults (20 s, 60 s), the tables SDK's (azure-core's 300 s)
    clients = Clients(azurite_clients.connection)
    assert _transport_of(clients.blob)._timeouts == _transport_of(clients.queue)._timeouts == (20.0, 60.0)
    assert _transport_of(clients.table)._timeouts == (lean_http.DEFAULT_TIMEOUT, lean_http.DEFAULT_TIMEOUT)


@pytest.mark.parametrize("transport", ["lean", "requests"])
def test_a_5mb_blob_goes_up_in_blocks_and_down_in_ranges(
    azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    clients = _clients(azurite_clients, monkeypatch, transport, **SMALL_TRANSFERS)
    container = clients.container(f"big-{transport}")
    container.create_container()
    data = os.urandom(5 * 1024 * 1024 + 123)
    counted = Counted(monkeypatch)

    def stream() -> Iterator[bytes]:  # an upload from a generator: the SDK reads it into blocks
        for at in range(0, len(data), 100_000):
            yield data[at : at + 100_000]

    container.upload_blob("from-bytes", data)
    container.upload_blob("from-stream", stream(), length=len(data))
    for name in ("from-bytes", "from-stream"):
        blob = container.get_blob_client(name)
        assert blob.download_blob().readall() == data
        assert blob.download_blob(max_concurrency=4).readall() == data
        chunks = list(blob.download_blob().chunks())
        assert b"".join(chunks) == data
        assert len(chunks) > 5
        assert blob.download_blob(offset=1_000_000, length=3_000_000).readall() == data[1_000_000:4_000_000]
    served = counted.lean if transport == "lean" else counted.requests
    assert served > 2 * (len(data) // SMALL_TRANSFERS["max_block_size"])  # every block and range a request of its own
    if transport == "lean":
        assert counted.requests == 0  # bytes bodies and ranged GETs: nothing for the fallback


def _download_outcomes(clients: Clients, container: str, name: str, **kwargs: Any) -> dict[str, Any]:
    blob = clients.container(container).get_blob_client(name)
    return {
        "readall": _outcome(lambda: blob.download_blob(**kwargs).readall()),
        "chunks": _outcome(lambda: b"".join(blob.download_blob(**kwargs).chunks())),
        "raw": _outcome(lambda: blob.download_blob(decompress=False, **kwargs).readall()),
        "ranged": _outcome(lambda: blob.download_blob(offset=0, length=50, **kwargs).readall()),
    }


@pytest.mark.parametrize("size", ["one-get", "ranged"])
def test_a_gzip_encoded_blob_downloads_alike_with_either_transport(
    azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    from azure.storage.blob import ContentSettings

    text = os.urandom(1_500_000 if size == "ranged" else 20_000).hex().encode()  # compresses to about half
    packed = gzip.compress(text, mtime=0)
    if size == "ranged":
        assert len(packed) > SMALL_TRANSFERS["max_single_get_size"]
    container = f"gz-{size}"
    azurite_clients.container(container).create_container()
    azurite_clients.container(container).upload_blob("doc.txt", packed, content_settings=ContentSettings(content_encoding="gzip"))
    outcomes = {
        transport: _download_outcomes(_clients(azurite_clients, monkeypatch, transport, **SMALL_TRANSFERS), container, "doc.txt")
        for transport in ("requests", "lean")
    }
    assert outcomes["lean"] == outcomes["requests"]
    assert outcomes["lean"]["raw"] == ("ok", packed)
    if size == "one-get":
        assert outcomes["lean"]["readall"] == outcomes["lean"]["chunks"] == ("ok", text)
    # (ranged: the SDK decompresses each range of one gzip stream on its own; what comes out is not
    # the text, with either transport alike: download such a blob with decompress=False)


@pytest.mark.parametrize("transport", ["lean", "requests"])
def test_a_table_batch_commits_and_a_failing_one_commits_nothing(
    azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    from azure.data.tables import TableTransactionError

    clients = _clients(azurite_clients, monkeypatch, transport)
    table = clients.table.create_table(f"batch{transport}")
    counted = Counted(monkeypatch)
    rows = [{"PartitionKey": "p", "RowKey": f"r{i}", "n": i, "text": "bl\u00e5b\u00e6r"} for i in range(5)]
    results = table.submit_transaction([("create", row) for row in rows])
    assert len(results) == 5
    assert all(result.get("etag") for result in results)
    table.submit_transaction([("upsert", {"PartitionKey": "p", "RowKey": "r0", "n": 10}, {"mode": "merge"}), ("delete", rows[1])])
    with pytest.raises(TableTransactionError):
        table.submit_transaction([("create", {"PartitionKey": "p", "RowKey": "new"}), ("create", rows[2])])  # r2 exists
    stored = {e["RowKey"]: e for e in table.list_entities()}
    assert sorted(stored) == ["r0", "r2", "r3", "r4"]
    assert (stored["r0"]["n"], stored["r0"]["text"], stored["r3"]["text"]) == (10, "bl\u00e5b\u00e6r", "bl\u00e5b\u00e6r")
    if transport == "lean":
        assert (counted.lean, counted.requests) == (counted.lean, 0)
        assert counted.lean >= 4


@pytest.mark.parametrize("transport", ["lean", "requests"])
def test_queue_messages_are_sent_received_and_deleted(
    azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    clients = _clients(azurite_clients, monkeypatch, transport)
    queue = clients.queue_client(f"q-{transport}")
    queue.create_queue()
    counted = Counted(monkeypatch)
    sent = ["plain", "bl\u00e5b\u00e6r \u2603", "<xml & stuff>", "x" * 40_000]
    for text in sent:
        queue.send_message(text)
    received = list(queue.receive_messages(messages_per_page=32, visibility_timeout=30))
    assert sorted(m.content for m in received) == sorted(sent)
    for message in received:
        queue.delete_message(message)
    assert queue.get_queue_properties().approximate_message_count == 0
    assert list(queue.peek_messages(max_messages=32)) == []
    if transport == "lean":
        assert counted.requests == 0
        assert counted.lean >= len(sent) * 2 + 2


# -- threads ------------------------------------------------------------------------------------


def test_threads_sharing_a_transport_each_get_their_own_response(server: Scripted) -> None:
    """One request at a time per connection: under concurrency no response reaches the wrong caller."""
    threads, each = 8, 25
    server.script(*[Step(echo=True)] * (threads * each))
    t = lean()
    ids = iter(range(threads * each))
    lock = threading.Lock()

    def caller() -> list[tuple[bytes, bytes]]:
        pairs = []
        for _ in range(each):
            with lock:
                n = next(ids)
            payload = os.urandom(n % 3000)
            stream = n % 2 == 0
            response = send(server, t, "PUT", f"/item/{n}", content=payload, stream=stream)
            got = b"".join(response.iter_bytes()) if stream else response.content
            pairs.append((got, f"/item/{n} ".encode() + payload))
        return pairs

    results = at_once(caller, threads)
    assert all(got == expected for pairs in results for got, expected in pairs)
    assert len(server.seen) == threads * each
    assert server.accepts <= threads  # connections are reused, never shared by two requests at once
    assert t.fallback.sent == []


@pytest.mark.parametrize(
    ("size", "close"),
    # (a small body is all sent before the answer: a server that closes without saying so races the next request)
    [(10_000_000, True), (10_000_000, False), (100, True)],
    ids=["big-says-close", "big-just-closes", "small-says-close"],
)
def test_an_answer_before_the_body_was_read_reaches_the_caller(server: Scripted, either: Any, size: int, close: bool) -> None:
    """A server may refuse a request from its head (413, 403) and close without reading the body:
    the send then breaks, and the answer is read anyway, as urllib3 does; that connection is done."""
    error = b"<Error><Code>RequestBodyTooLarge</Code></Error>"
    refusal = ok(error, *(["Connection: close"] if close else []), status="413 Request Entity Too Large")
    server.script(Step(refusal, early=True, close=True), ok(b"next"))
    response = either.send(HttpRequest("PUT", f"{server.url}/c/b", content=b"x" * size))
    assert (response.status_code, response.content) == (413, error)
    if isinstance(either, LeanTransport):
        assert not lean_http._pool._idle.get(("http", "127.0.0.1", server.port))
    assert either.send(HttpRequest("GET", f"{server.url}/c/b")).content == b"next"
    assert server.accepts == 2


def test_connections_with_high_descriptor_numbers_are_reused(server: Scripted) -> None:
    """A busy host holds over 1024 descriptors; select() cannot watch those, so an idle-check built
    on it would take every such connection for dropped and connect anew for each request."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"this process may open only {soft} descriptors")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        server.script(ok(b"one"), ok(b"two"))
        t = lean()
        assert send(server, t).content == b"one"
        assert max(conn.sock.fileno() for conn in lean_http._pool._idle[("http", "127.0.0.1", server.port)]) >= 1024
        assert send(server, t).content == b"two"
        assert server.accepts == 1
    finally:
        for fd in filler:
            os.close(fd)


# -- header text, both ways -----------------------------------------------------------------------


def test_header_text_is_latin_1_both_ways_as_with_requests(server: Scripted) -> None:
    reply = b"HTTP/1.1 200\r\nContent-Length: 0\r\nx-ms-meta-name: bl\xc3\xa5\r\nX-Twice: 1\r\nx-twice: 2\r\n\r\n"
    server.script(reply, reply)
    seen = []
    for transport in (requests_transport(), lean()):
        response = transport.send(HttpRequest("PUT", f"{server.url}/b", headers={"x-ms-meta-fruit": "bl\u00e5b\u00e6r"}))
        seen.append((response.status_code, response.reason, response.headers["x-ms-meta-name"], response.headers["x-twice"]))
    assert seen[0] == seen[1] == (200, "", "bl\u00c3\u00a5", "1, 2")
    assert (
        server.seen[0].raw.count(b"x-ms-meta-fruit: bl\xe5b\xe6r\r\n")
        == server.seen[1].raw.count(b"x-ms-meta-fruit: bl\xe5b\xe6r\r\n")
        == 1
    )


def test_a_header_latin_1_cannot_carry_goes_to_the_fallback(server: Scripted) -> None:
    t = lean()
    request = HttpRequest("PUT", f"{server.url}/b", headers={"x-ms-meta-snow": "\u2603"})
    with pytest.raises(UnicodeEncodeError):  # requests' (http.client's) own refusal, as without lean
        t.send(request)
    assert t.fallback.sent == [request]

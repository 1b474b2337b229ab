"""The socket transport of the SDK-free clients (corpus.transfer.bloblist._StdlibTransport): what it
sends, and every response framing it reads, against a scripted server on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from corpus.store import wire
from corpus.transfer import bloblist
from corpus.transfer.bloblist import ProtocolError, _StdlibTransport, http_date
from tests.support import fd_closed, in_forked_child


@pytest.fixture(autouse=True)
def _short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bloblist, "TIMEOUT", 10.0)  # a framing bug fails in seconds, not after 120 s


class Scripted:
    """A loopback server that answers each request with the next scripted bytes (``None``: close
    the connection without answering), and keeps what each request sent."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as reader:  # both closed, or the client never sees the end
                while self.answers:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = next(
                        (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0
                    )
                    self.requests.append(head + reader.read(length))
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                    if b"connection: close" in answer.lower() or b"HTTP/1.0" in answer.split(b"\r\n")[0]:
                        break

    def url(self, path: str = "/acct/c") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.sock.close()


@contextmanager
def scripted(*answers: bytes | None) -> Iterator[Scripted]:
    server = Scripted(list(answers))
    try:
        yield server
    finally:
        server.close()


def test_it_sends_one_request_line_host_headers_and_body() -> None:
    with scripted(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nx-ms-request-id: r1\r\n\r\n") as server:
        status, headers, body = _StdlibTransport().send("PUT", server.url("/acct/c/a%20b.jpg?comp=x"), {"x-ms-a": "1"}, b"DATA")
    assert (status, headers["x-ms-request-id"], body) == (201, "r1", b"")
    (sent,) = server.requests
    assert sent.startswith(b"PUT /acct/c/a%20b.jpg?comp=x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nx-ms-a: 1\r\nContent-Length: 4\r\n\r\nDATA" in sent


@pytest.mark.parametrize(
    ("answer", "want"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"hello world",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", b""),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the close", b"until the close"),
    ],
)
def test_each_framing_of_a_body_is_read_exactly(answer: bytes, want: bytes) -> None:
    with scripted(answer, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext") as server:
        transport = _StdlibTransport()
        assert transport.get(server.url(), {}) == (200 if b" 204 " not in answer else 204, want)
        assert transport.get(server.url(), {}) == (200, b"next")  # the connection is still in step (or was reopened)
    closes = b"HTTP/1.0" in answer
    assert server.connections == (2 if closes else 1)


def test_a_head_reads_no_body_and_keeps_the_connection() -> None:
    with scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-MD5: AAAA\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    ) as server:
        transport = _StdlibTransport()
        status, headers, body = transport.send("HEAD", server.url(), {})
        assert (status, headers["content-md5"], body) == (200, "AAAA", b"")
        assert transport.get(server.url(), {}) == (200, b"x")
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_once() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with scripted(ok, None, ok) as server:  # answers, then drops the kept connection unanswered
        transport = _StdlibTransport()
        assert transport.get(server.url(), {}) == (200, b"ok")
        assert transport.get(server.url(), {}) == (200, b"ok")
    assert server.connections == 2 and len(server.requests) == 3


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",  # truncated
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n",
    ],
)
def test_a_malformed_answer_is_an_oserror_as_every_transport_failure(answer: bytes) -> None:
    with scripted(answer) as server, pytest.raises(ProtocolError):
        _StdlibTransport().get(server.url(), {})
    assert issubclass(ProtocolError, OSError)  # retried, then "cannot reach", by every caller


def test_a_header_or_target_holding_cr_or_lf_is_refused_before_sending() -> None:
    with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as server:
        transport = _StdlibTransport()
        with pytest.raises(ValueError, match="CR or LF"):
            transport.get(server.url(), {"x-ms-meta-a": "1\r\nInjected: yes"})
        with pytest.raises(ValueError, match="CR or LF"):
            bloblist._request_head("GET", "h", "/acct/c/a\r\nInjected: yes", {}, b"")  # (urlsplit drops them from URLs)
        assert transport.get(server.url(), {}) == (200, b"")
    assert len(server.requests) == 1


def test_http_date_is_the_email_packages() -> None:
    from datetime import UTC, datetime
    from email.utils import format_datetime

    for when in (0, 951782400, 1764950400.5, 4102444799):
        assert http_date(when) == format_datetime(datetime.fromtimestamp(int(when), UTC), usegmt=True)


def test_https_verifies_the_server_against_the_ca_bundle_given(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Production speaks TLS: the socket is wrapped with the bundle ``REQUESTS_CA_BUNDLE`` names,
    the host name checked; an untrusted server is refused (an OSError: retried, then reported)."""
    import datetime
    import ipaddress
    import ssl

    x509 = pytest.importorskip("cryptography.x509", reason="cryptography comes with azure-identity (msal)")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(times: int) -> None:
        for _ in range(times):
            raw, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(raw, server_side=True) as conn, conn.makefile("rb") as reader:
                    while reader.readline() not in (b"\r\n", b""):
                        pass
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")
            except (ssl.SSLError, OSError):
                raw.close()  # the client refused our certificate

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
        assert _StdlibTransport().get(f"https://127.0.0.1:{port}/acct/c", {}) == (200, b"secret")
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        with pytest.raises(ssl.SSLCertVerificationError):  # an OSError
            _StdlibTransport().get(f"https://127.0.0.1:{port}/acct/c", {})
    finally:
        thread.join(10)
        listener.close()


# -- branch wire27: the wire module's rules, and a refused header as a storage error -----------


def test_a_refused_header_is_a_storage_error_naming_the_header_not_its_value() -> None:
    """Was a bare ValueError (a traceback from ``corpus upload``; one file's bad header stopped the
    run): now a ``StorageError`` (a ``ListingError`` for the listings), nothing sent, no retry."""
    from corpus.domain.errors import StorageError

    with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as server:
        transport = _StdlibTransport()
        for headers in ({"x-ms-meta-a": "secret\r\nInjected: yes"}, {"x-ms-meta-a": "a\nb"}, {"x-bad\rname": "v"}):
            with pytest.raises(bloblist.HeaderRefused) as refused:
                transport.get(server.url(), headers)
            assert isinstance(refused.value, StorageError) and isinstance(refused.value, bloblist.ListingError)
            assert "CR or LF" in str(refused.value) and "secret" not in str(refused.value)
        assert transport.get(server.url(), {}) == (200, b"")
    assert len(server.requests) == 1


def test_the_proxy_transport_refuses_such_a_header_too_rather_than_report_it_unreachable() -> None:
    """``requests`` raises its InvalidHeader, an OSError, which every caller retried with back-off
    as "cannot reach" storage; the proxy path refuses it as the socket path does."""
    with pytest.raises(bloblist.HeaderRefused):
        bloblist._RequestsTransport().send("GET", "http://127.0.0.1:9/acct/c", {"x-ms-meta-a": "1\r\nInjected: yes"})


def test_a_put_with_such_a_header_fails_that_file_at_once(tmp_path) -> None:
    """Through the upload's sender: a StorageError (the runner reports that file and goes on), not
    retried, and the Put Blob never sent."""
    from corpus.domain.errors import StorageError
    from corpus.upload.sender import RawSender

    with scripted(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n") as server:
        lister = bloblist.BlobLister(account_url=server.url("/acct"), retry_delays=(60.0,))  # a retry would wait a minute
        with pytest.raises(StorageError, match="CR or LF"):
            RawSender(lister, "c").put("a.jpg", b"DATA", b"\0" * 16, "image/jpeg\r\nInjected: yes")
    (created,) = server.requests  # the container's creation only
    assert created.startswith(b"PUT /acct/c?restype=container HTTP/1.1\r\n")


def test_interim_1xx_answers_are_skipped_not_taken_for_the_answer() -> None:
    """Only 100 was skipped: a 103 Early Hints was returned as the answer, and the real one then
    read as the next request's."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with scripted(early, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext") as server:
        transport = _StdlibTransport()
        assert transport.get(server.url(), {}) == (200, b"ok")
        assert transport.get(server.url(), {}) == (200, b"next")
    assert server.connections == 1


@pytest.mark.parametrize("length", [b"\xb2", b"+2", b"2, 2"])
def test_a_content_length_that_is_not_ascii_digits_is_a_protocol_error(length: bytes) -> None:
    """``"\\xb2"`` (superscript two, Latin-1) passed ``str.isdigit`` and then failed ``int()`` with a
    bare ValueError, which no caller catches as a transport failure."""
    with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nok") as server, pytest.raises(ProtocolError):
        _StdlibTransport().get(server.url(), {})


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nbody",
    ],
    ids=["short-content-length", "204-with-a-body"],
)
def test_bytes_beyond_the_framing_are_not_read_as_the_next_response(answer: bytes) -> None:
    with scripted(answer, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal") as server:
        transport = _StdlibTransport()
        assert transport.get(server.url(), {})[0] in (200, 204)
        assert transport.get(server.url(), {}) == (200, b"real")
    assert server.connections == 2


def test_a_huge_content_length_is_an_oserror_not_a_memory_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000000\r\n\r\nshort"
    with scripted(answer) as server, pytest.raises(wire.IncompleteRead):  # an OSError: the retry loops see it
        _StdlibTransport().get(server.url(), {})


def test_a_tls_context_that_fails_closes_the_tcp_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    opened: list[socket.socket] = []
    real = wire.open_tcp
    monkeypatch.setattr(wire, "open_tcp", lambda *a: opened.append(real(*a)) or opened[-1])
    with scripted(None) as server, pytest.raises(OSError):
        _StdlibTransport().get(server.url().replace("http:", "https:"), {})
    (sock,) = opened
    assert sock.fileno() == -1


def test_a_forked_child_closes_its_copy_of_the_parent_connection_and_starts_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """bloblist's own at-fork hook (it was fetch.py's, registered only when fetch was imported)."""

    with scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\np", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nq") as server:
        monkeypatch.setattr(bloblist, "_the_transport", None)
        parent = bloblist._transport()
        assert parent.get(server.url(), {}) == (200, b"p")
        assert isinstance(parent, _StdlibTransport)
        (conn,) = parent._pool._local.conns.values()
        inherited = conn.sock.fileno()
        report = in_forked_child(lambda: f"{bloblist._the_transport is None} {fd_closed(inherited)}")
        assert report == ("True True", 0)
        assert parent.get(server.url(), {}) == (200, b"q")  # the parent's connection is untouched
    assert server.connections == 1

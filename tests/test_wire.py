"""corpus.store.wire on its own: the request head's refusals (checked on the joined head) against
the plain per-header rule, and the per-thread pool of the SDK-free clients."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.store import wire

_text = st.text(alphabet=st.sampled_from("ab:- \r\n\0\t"), max_size=6)


@given(target=_text, headers=st.lists(st.tuples(_text, _text), max_size=4))
def test_a_head_is_refused_exactly_when_a_target_name_or_value_would_split_it(
    target: str, headers: list[tuple[str, str]]
) -> None:
    unsafe = set("\r\n\0")
    bad = bool(unsafe & set(target)) or any(unsafe & set(n) or unsafe & set(v) or ":" in n for n, v in headers)
    try:
        head = wire.request_head("PUT", "/" + target, "h", headers, 0, length_given=False)
    except wire.InvalidHeader:
        assert bad
    else:
        assert not bad
        assert head.count(b"\r\n") == len(headers) + 4  # request line, Host, the headers, Content-Length, blank


@pytest.mark.parametrize(
    ("target", "headers", "named"),
    [
        ("/a\r\nX: y", [], "target"),
        ("/a", [("x-ms-meta-a", "secret\r\nX: y")], "'x-ms-meta-a'"),
        ("/a", [("ok", "1"), ("x-bad\nname", "v")], "'x-bad\\nname'"),
        ("/a", [("x-nul", "a\0b")], "'x-nul'"),
        ("/a", [("x:colon", "v")], "'x:colon'"),
    ],
)
def test_the_refusal_names_the_header_never_its_value(target: str, headers: list[tuple[str, str]], named: str) -> None:
    with pytest.raises(wire.InvalidHeader) as refused:
        wire.request_head("GET", target, None, headers, 0, length_given=False)
    assert named in str(refused.value) and "secret" not in str(refused.value)


def test_the_thread_pool_keeps_one_connection_per_thread_and_key() -> None:
    pool = wire.ThreadPool(check_idle=False)
    key = ("http", "127.0.0.1", 1)
    a, b = socket.socketpair()
    try:
        conn = wire.Connection(key, a)
        pool.give(conn)
        seen: list[wire.Connection | None] = []
        other = threading.Thread(target=lambda: seen.append(pool.take(key)))
        other.start()
        other.join(10)
        assert seen == [None]  # another thread's idle connection is not handed over
        assert pool.take(key) is conn and pool.take(key) is None
    finally:
        a.close()
        b.close()


def test_a_checking_pool_drops_an_idle_connection_the_server_closed() -> None:
    key = ("http", "127.0.0.1", 1)
    for pool in (wire.Pool(4), wire.ThreadPool()):
        a, b = socket.socketpair()
        pool.give(wire.Connection(key, a))
        b.close()  # the server's close: readable at once
        assert pool.take(key) is None
        assert a.fileno() == -1  # and closed


def test_a_ca_bundle_directory_is_taken_as_requests_takes_it(tmp_path: Path) -> None:
    """``REQUESTS_CA_BUNDLE=/etc/ssl/certs``: requests uses a directory as ``ca_cert_dir``."""
    import ssl

    context = wire.tls_context(str(tmp_path))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_leftover_counts_what_the_reader_holds_beyond_what_was_read() -> None:
    a, b = socket.socketpair()
    conn = wire.Connection(("http", "127.0.0.1", 1), a)
    try:
        b.sendall(b"line\r\nmore")
        assert conn.rfile.readline() == b"line\r\n" and conn.leftover()
        assert conn.rfile.read(4) == b"more" and not conn.leftover()
    finally:
        conn.close()
        b.close()

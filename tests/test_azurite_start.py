"""The test fixture's Azurite starts without a port race, and a failed start shows Azurite's log."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import Azurite


def test_azurite_listens_on_the_ports_it_reports(tmp_path):
    az = Azurite(tmp_path).start()
    try:
        assert set(az.ports) == {"blob", "queue", "table"}
        for port in az.ports.values():
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        assert f":{az.ports['queue']}/" in az.connection_string
    finally:
        az.stop()


def test_a_failed_start_is_retried_then_reported_with_azurite_s_log(tmp_path):
    # A port Azurite cannot bind (taken and held here): every attempt fails the same way.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        az = Azurite(tmp_path, requested={"blob": port})
        started = time.monotonic()
        with pytest.raises(RuntimeError) as failed:
            az.start(attempts=2, timeout=30)
    text = str(failed.value)
    assert "attempt 1:" in text and "attempt 2:" in text
    assert "EADDRINUSE" in text  # Azurite's own words, from its log
    assert time.monotonic() - started < 60  # detected from the exit, not by waiting out the timeout
    assert az.proc is not None and az.proc.poll() is not None  # nothing left running

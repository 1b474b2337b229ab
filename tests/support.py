"""Test support: a private Azurite per test, the local host as a subprocess, read-back helpers.

Each Azurite runs in memory on free loopback ports with an account whose key is generated per
run (``AZURITE_ACCOUNTS``), so no key is written anywhere and tests can't see each other's data.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / "node_modules" / ".bin" / "azurite"
ACCOUNT = "corpustest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def at_once(call: Callable[[], T], times: int) -> list[T]:
    """Run ``call`` in ``times`` threads released together (a barrier): the results, in finishing
    order. Any exception of any thread is raised after all have finished (the first one)."""
    import threading

    results: list[T] = []
    errors: list[BaseException] = []
    start = threading.Barrier(times)

    def run() -> None:
        start.wait()
        try:
            results.append(call())
        except BaseException as exc:  # raised below, after every thread is done
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(times)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Azurite:
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    key: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(64)).decode())
    extra_args: tuple[str, ...] = ()  # e.g. ("--debug", path): Azurite logs every request there
    requested: dict[str, int] = field(default_factory=dict)  # fixed ports (tests of a failed start); default 0: any

    def start(self, attempts: int = 3, timeout: float = 60.0) -> Azurite:
        """Start Azurite on ports the kernel picks (``--blobPort 0`` …), read back from its log.

        Choosing a free port, closing it and handing it to Azurite left a window in which another
        process could take it (a fresh-clone CI run once lost a test to "timed out after 30s
        waiting for Azurite"). With port 0 there is no window: Node binds, then Azurite logs
        "… service is successfully listening at http://127.0.0.1:<port>". If Azurite exits or does
        not report all three services in time, it is started again (``attempts`` times); the
        failure shows every attempt's log.
        """
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: run ./dev setup (npm ci) first")
        failures = []
        for attempt in range(1, attempts + 1):
            log_path = self.workdir / f"azurite-{attempt}.log"
            why = self._start_once(log_path, timeout)
            if why is None:
                return self
            failures.append(f"attempt {attempt}: {why}\n--- {log_path.name} ---\n{_tail(log_path)}")
        raise RuntimeError("Azurite did not start:\n" + "\n".join(failures))

    def _start_once(self, log_path: Path, timeout: float) -> str | None:
        """Start one Azurite process; None once all three services listen, else why not (stopped)."""
        env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{self.key}"}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(AZURITE),
                    "--silent",
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--blobHost",
                    "127.0.0.1",
                    "--queueHost",
                    "127.0.0.1",
                    "--tableHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.requested.get("blob", 0)),
                    "--queuePort",
                    str(self.requested.get("queue", 0)),
                    "--tablePort",
                    str(self.requested.get("table", 0)),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while True:
            self.ports = _listening_ports(log_path.read_text(errors="replace"))
            if len(self.ports) == 3 and all(_listening(p) for p in self.ports.values()):
                return None
            code = self.proc.poll()
            if code is not None:
                return f"Azurite exited with code {code} before listening"
            if time.monotonic() > deadline:
                self.stop()
                missing = sorted({"blob", "queue", "table"} - set(self.ports))
                return f"no 'successfully listening' line for {missing} within {timeout}s"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def connection_string(self) -> str:
        p = self.ports
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={self.key};"
            f"BlobEndpoint=http://127.0.0.1:{p['blob']}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{p['queue']}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{p['table']}/{ACCOUNT};"
        )


_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://127\.0\.0\.1:(\d+)")


def _listening_ports(log: str) -> dict[str, int]:
    return {m.group(1).lower(): int(m.group(2)) for m in _LISTENING.finditer(log)}


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as exc:
        return f"(no log: {exc})"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def jpeg(seed: int, size: tuple[int, int] = (64, 48), quality: int = 85) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
    for _ in range(20):
        img.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), (rng.randrange(256), 0, 0))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGBA", size, tuple(rng.randint(0, 255) for _ in range(4)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def prepare_app_dir(tmp: Path, queues: dict[str, Any] | None = None) -> Path:
    """A copy of the app folder, optionally with host.json's queue settings overridden."""
    app = tmp / "app"
    app.mkdir(exist_ok=True)
    shutil.copy(REPO / "function_app.py", app / "function_app.py")
    host = json.loads((REPO / "host.json").read_text())
    if queues:
        host["extensions"]["queues"].update(queues)
    (app / "host.json").write_text(json.dumps(host, indent=2))
    return app


def host_command(app_dir: Path, *args: str) -> list[str]:
    """``corpus host`` on ``app_dir``. A host that serves HTTP (no ``--until-idle``) gets ``--port 0``
    unless a port is given: the default, 7071, is shared by every test (and every developer) on the
    machine, so two hosts at once (``pytest -n``, or a ``corpus host`` left running) would collide."""
    if "--until-idle" not in args and "--port" not in args:
        args = ("--port", "0", *args)
    return [sys.executable, "-m", "corpus", "host", "--app-dir", str(app_dir), "--blob-poll", "0.2", *args]


_SERVING = re.compile(r"corpus host: listening on (http://127\.0\.0\.1:\d+)")


def served_url(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    """The URL a ``corpus host --port 0`` (``proc``, its stderr in ``log``) reports it listens on."""

    def url() -> str | None:
        m = _SERVING.search(log.read_text(errors="replace"))
        if m:
            return m.group(1)
        assert proc.poll() is None, f"corpus host exited {proc.returncode}:\n{_tail(log, 3000)}"
        return None

    return str(wait_for(url, timeout, "corpus host to report its HTTP port"))


@contextmanager
def serving_host(env: dict[str, str], app_dir: Path, cwd: Path) -> Iterator[str]:
    """A ``corpus host --port 0`` (its stderr in ``cwd/host.log``) that answers HTTP: yields its URL,
    and stops it afterwards."""

    log = cwd / "host.log"
    with log.open("wb") as err:  # the child keeps its own descriptor
        host = subprocess.Popen(host_command(app_dir, "--port", "0"), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url = served_url(host, log)

        def up() -> bool:
            assert host.poll() is None, _tail(log, 3000)
            return serves_http(url)

        wait_for(up, 60, "corpus host serving HTTP")
        yield url
    finally:
        host.terminate()
        host.wait(20)


def run_host(env: dict[str, str], app_dir: Path, *args: str, timeout: float = 240) -> dict[str, Any]:
    """Run the host until idle; return its summary (the last stderr line is JSON)."""
    proc = subprocess.run(
        host_command(app_dir, "--until-idle", "--timeout", str(timeout), *args),
        env=env,
        cwd=app_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
    )
    if proc.returncode != 0:
        raise AssertionError(f"host exited {proc.returncode}:\n{proc.stderr[-5000:]}")
    return json.loads(proc.stderr.strip().splitlines()[-1])


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corpus", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def max_overlap(trace: Path, fn: str) -> int:
    """Largest number of ``fn`` invocations whose [start, end] intervals overlap, from a host trace."""
    events: list[tuple[float, int]] = []
    for line in trace.read_text().splitlines():
        rec = json.loads(line)
        if rec["fn"] == fn:
            events += [(rec["start"], 1), (rec["end"], -1)]
    best = cur = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # ends sort before starts at a tie
        cur += delta
        best = max(best, cur)
    return best


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A flat-coloured JPEG, distinct per seed (quality 90)."""
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 128))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def ingest(env: dict[str, str], clients: Any, app_dir: Path, files: dict[str, bytes]) -> None:
    """Stage ``files`` (staged name → bytes) as plain uploads, then run the host until idle."""
    from azure.storage.blob import ContentSettings

    st = clients.container("staging")
    for name, data in files.items():
        st.upload_blob(name, data, content_settings=ContentSettings(content_type="image/jpeg"))
    run_host(env, app_dir)


@contextmanager
def requests_seen() -> Iterator[list[str]]:
    """The URL of every storage request this process sends while inside: through corpus's own
    transport (``corpus.store.lean_http.observe``) and through the shared ``requests`` session."""
    from corpus.store import lean_http
    from corpus.store.http import shared_session

    seen: list[str] = []
    stop = lean_http.observe(lambda method, url, body: seen.append(url))
    hook = lambda response, *a, **k: seen.append(response.request.url)  # noqa: E731
    shared_session().hooks["response"].append(hook)
    try:
        yield seen
    finally:
        stop()
        shared_session().hooks["response"].remove(hook)


def in_forked_child(child: Callable[[], str]) -> tuple[str, int]:
    """Fork; in the child run ``child`` and send back what it returns, never returning into
    pytest (``os._exit``); in the parent, ``(what the child said, its exit code)``. For the
    at-fork hooks' tests: what a forked DataLoader worker inherits."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, child().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return report, os.waitstatus_to_exitcode(status)


def fd_closed(fd: int) -> bool:
    """Whether file descriptor ``fd`` is closed in this process."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def serves_http(base: str) -> bool:
    """Whether ``corpus host`` at ``base`` answers an API request (the readiness probe of tests and benches)."""
    import urllib.request

    try:
        urllib.request.urlopen(base + "/api/sets?limit=1", timeout=2).close()
        return True
    except OSError:
        return False

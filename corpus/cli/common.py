"""What every command shares: settings read the way ``func start`` reads them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from corpus.cli.parsing import bounded_int
from corpus.store.settings import Settings, load_local_settings


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def settings_from_cwd() -> Settings:
    """The environment, then ``local.settings.json`` in the current folder (the environment wins)."""
    load_local_settings(Path.cwd())
    return Settings.from_env()


def enqueue(settings: Settings, queue: str, body: str) -> str:
    """Send ``body`` to ``queue`` as host.json's ``messageEncoding`` says the trigger decodes it,
    failing fast (a person is waiting); returns the message id."""
    from corpus.app.runtime import app_root, encode_message
    from corpus.store.hostconfig import load_queue_config
    from corpus.store.storage import FAIL_FAST, Clients

    encoding = load_queue_config(app_root() / "host.json").message_encoding
    sent = Clients(settings.connection, FAIL_FAST).queue_client(queue).send_message(encode_message(body, encoding))
    return str(sent.id)


class RunSummary(Protocol):
    """What ``corpus upload`` and ``corpus pull`` report at the end of a run."""

    @property
    def failures(self) -> Any: ...

    @property
    def interrupted(self) -> bool: ...

    def as_json(self) -> dict[str, Any]: ...


def finish(
    summary: RunSummary,
    failures_file: str | None,
    as_json: bool,
    write_failures: Callable[[Path, Any], None],
    human_summary: Callable[[Any], None],
) -> int:
    """The end of a transfer: the failures file, the summary (JSON or lines), the exit status
    (130 interrupted: run it again; 1 if anything failed)."""
    import json

    if failures_file:
        write_failures(Path(failures_file), summary)
    if as_json:
        # streamed, not built as one string: a dry run's file list is 100,000 names
        json.dump(summary.as_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        human_summary(summary)
    if summary.interrupted:
        return 130
    return 1 if summary.failures else 0


def add_transfer_options(p: Any, dry_run_help: str, failures_help: str) -> None:
    """The options ``corpus upload`` and ``corpus pull`` share, with the same meaning in both."""
    p.add_argument("--concurrency", type=bounded_int(1, 1024), default=32, help="requests in flight (default 32)")
    p.add_argument("--cap-mbps", type=float, help="bandwidth cap in megabits per second (as AzCopy's --cap-mbps)")
    p.add_argument("--no-cache", action="store_true", help="hash every file, ignoring the local (path, size, mtime) → MD5 cache")
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("--failures", metavar="FILE", help=failures_help)
    p.add_argument("--retry-from", metavar="FILE", help="retry exactly the files of a failures file")


QUEUED_HINT_SECONDS = 10.0
"""After this long without progress, a ``--wait`` says why it may be waiting (once)."""
POLL_SECONDS = 0.5


def wait_for_progress(poll: Callable[[], tuple[bool, Any]], timeout: float, what: str) -> None:
    """Poll until ``poll()`` says done. ``poll`` returns (done, progress): any change of
    ``progress`` is progress. After :data:`QUEUED_HINT_SECONDS` without any, say once that the
    request is still queued and a host must be running, then keep waiting until ``timeout``."""
    import sys
    import time

    start = time.monotonic()
    deadline = start + timeout
    last: Any = object()
    changed = start
    hinted = False
    while True:
        done, progress = poll()
        if done:
            return
        now = time.monotonic()
        if progress != last:
            last, changed = progress, now
        elif not hinted and now - changed >= QUEUED_HINT_SECONDS:
            hinted = True
            print(
                f"corpus: {what}: no progress after {now - start:.0f} s: the request is still queued. "
                "A host must be running to process it: `corpus host` here, or the function app in Azure. "
                f"Still waiting (up to --timeout {timeout:g} s).",
                file=sys.stderr,
                flush=True,
            )
        if now > deadline:
            raise CliError(f"{what}: not done after --timeout {timeout:g} s (see `corpus status`)")
        time.sleep(POLL_SECONDS)


def catalog_of(settings: Settings) -> Any:
    """(clients, catalog) for a person waiting: fail fast rather than retry for minutes."""
    from corpus.store.catalog import Catalog
    from corpus.store.storage import FAIL_FAST, Clients

    clients = Clients(settings.connection, FAIL_FAST)
    return clients, Catalog(clients)

"""What every command shares: settings read the way ``func start`` reads them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from corpus.store.settings import Settings, load_local_settings


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def settings_from_cwd() -> Settings:
    """The environment, then ``local.settings.json`` in the current folder (the environment wins)."""
    load_local_settings(Path.cwd())
    return Settings.from_env()


def enqueue(settings: Settings, queue: str, body: str) -> None:
    """Send ``body`` to ``queue`` as host.json's ``messageEncoding`` says the trigger decodes it,
    failing fast (a person is waiting)."""
    from corpus.app.runtime import app_root, encode_message
    from corpus.store.hostconfig import load_queue_config
    from corpus.store.storage import FAIL_FAST, Clients

    encoding = load_queue_config(app_root() / "host.json").message_encoding
    Clients(settings.connection, FAIL_FAST).queue_client(queue).send_message(encode_message(body, encoding))


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
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    p.add_argument("--cap-mbps", type=float, help="bandwidth cap in megabits per second (as AzCopy's --cap-mbps)")
    p.add_argument("--no-cache", action="store_true", help="hash every file, ignoring the local (path, size, mtime) → MD5 cache")
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("--failures", metavar="FILE", help=failures_help)
    p.add_argument("--retry-from", metavar="FILE", help="retry exactly the files of a failures file")

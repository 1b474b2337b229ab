"""What every command shares: settings read the way ``func start`` reads them."""

from __future__ import annotations

from pathlib import Path

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

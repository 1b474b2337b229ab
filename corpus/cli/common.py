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

"""The public Python API of training sets, models and lineage (``corpus.lineage.register_model``).

A thin facade over :mod:`corpus.app.trainsets`: it builds the wiring from the same settings the
command line reads (``local.settings.json`` in the working directory, then the environment),
unless a :class:`~corpus.store.settings.Settings` is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from corpus.app import trainsets as _ts
from corpus.app.runtime import Runtime
from corpus.store.settings import Settings, load_local_settings
from corpus.store.trainsets_table import ModelRow, TrainsetRow

__all__ = ["ModelRow", "TrainsetRow", "blob_lineage", "model_images", "register_model", "trainset", "trainset_images"]


def _runtime(settings: Settings | None) -> Runtime:
    if settings is None:
        load_local_settings(Path.cwd())
        settings = Settings.from_env()
    return Runtime.create(settings)


def _pair(ref: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(ref, tuple):
        return ref
    from corpus.domain.manifest import parse_ref

    return parse_ref(ref)


def register_model(
    name: str,
    version: str,
    trainsets: Iterable[str | tuple[str, str]],
    uri: str = "",
    metrics: dict[str, Any] | None = None,
    *,
    settings: Settings | None = None,
) -> ModelRow:
    """Register model ``name:version`` trained on ``trainsets`` (``"N:V"`` or ``(N, V)``), each ``ready``.

    Immutable: registering the same again returns the existing model; anything different raises
    :class:`corpus.app.trainsets.ModelError`, as does a missing or unready training set.
    """
    rt = _runtime(settings)
    return _ts.register_model(_ts.store_of(rt), name, version, [_pair(t) for t in trainsets], uri, metrics)


def trainset(ref: str | tuple[str, str], *, settings: Settings | None = None) -> TrainsetRow | None:
    rt = _runtime(settings)
    return _ts.store_of(rt).trainsets.get(*_pair(ref))


def trainset_images(ref: str | tuple[str, str], *, settings: Settings | None = None) -> Iterator[str]:
    """The manifest lines (JSON text) of a ready training set."""
    rt = _runtime(settings)
    yield from _ts.manifest_lines(rt, _ts.ready_trainset(_ts.store_of(rt), *_pair(ref)))


def model_images(ref: str | tuple[str, str], *, settings: Settings | None = None) -> Iterator[str]:
    """The manifest lines of every training set of a model."""
    rt = _runtime(settings)
    for row in _ts.trainsets_of_model(_ts.store_of(rt), *_pair(ref)):
        yield from _ts.manifest_lines(rt, row)


def blob_lineage(container: str, blob: str, *, settings: Settings | None = None) -> dict[str, list[dict[str, str]]]:
    """``{"trainsets": [...], "models": [...]}`` that used ``container/blob`` (or any transform of it)."""
    rt = _runtime(settings)
    return _ts.lineage_of_blob(rt, _ts.store_of(rt), container, blob)

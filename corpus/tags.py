"""Compatibility: ``corpus.tags:path_components`` is the documented default of
``CORPUS_TAG_EXTRACTOR`` and may be in users' settings. The code lives in :mod:`corpus.domain.tags`."""

from corpus.domain.tags import path_components

__all__ = ["path_components"]

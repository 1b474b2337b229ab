"""Tags of an image set, derived from its directory path.

The original design let each corpus choose how directories become tags, so the extractor is a
setting (``CORPUS_TAG_EXTRACTOR``: ``module:function``) rather than code to edit. An extractor
takes the directory components and returns tags; :func:`normalize` is applied afterwards, so
every extractor gets the same trimming, case folding and de-duplication for free.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import cast

from corpus.domain.errors import ConfigError, InvalidNameError
from corpus.domain.limits import MAX_TAGS_PER_SET

TagExtractor = Callable[[Sequence[str]], Iterable[str]]

DEFAULT_EXTRACTOR = "corpus.tags:path_components"


def path_components(dirs: Sequence[str]) -> Iterable[str]:
    """Every directory component is a tag: ``red/angry/robin`` → red, angry, robin."""
    return dirs


def normalize_tag(tag: str) -> str:
    """The form tags are stored and compared in: trimmed and case-folded."""
    return tag.strip().casefold()


def normalize(tags: Iterable[str]) -> list[str]:
    """Trim, case-fold, drop empty tags and duplicates, keep first-seen order."""
    seen: dict[str, None] = {}
    for tag in tags:
        norm = normalize_tag(tag)
        if norm:
            seen.setdefault(norm)
    return list(seen)


@cache
def load_extractor(spec: str) -> TagExtractor:
    """Resolve ``module:function`` once; a bad spec is a configuration error, raised early."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"CORPUS_TAG_EXTRACTOR must look like 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"CORPUS_TAG_EXTRACTOR {spec!r}: cannot import {module_name!r} ({exc})") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"CORPUS_TAG_EXTRACTOR {spec!r} does not name a callable")
    return cast(TagExtractor, func)


def tags_for(dirs: Sequence[str], spec: str = DEFAULT_EXTRACTOR) -> list[str]:
    """The set's normalised tags; more than :data:`MAX_TAGS_PER_SET` is refused
    (:class:`InvalidNameError`: ingest rejects the file with this reason)."""
    return check_tag_count(normalize(load_extractor(spec)(dirs)))


def check_tag_count(tags: list[str]) -> list[str]:
    """A set and its tag-index rows are written in one transaction of at most 100 operations."""
    if len(tags) > MAX_TAGS_PER_SET:
        raise InvalidNameError(
            f"the folder path gives {len(tags)} tags; a set may carry at most {MAX_TAGS_PER_SET} "
            "(its tag index is written in one table transaction)"
        )
    return tags


def matches(set_tags: Iterable[str], wanted: Iterable[str]) -> bool:
    """True when every wanted tag is among the set's tags (case-insensitive)."""
    have = {normalize_tag(t) for t in set_tags}
    return all(normalize_tag(w) in have for w in wanted)

"""Checks a command runs *before* it queues work or answers a question, so that a request bound
to fail, or a question about something that does not exist, is one line and exit status 1 now,
not a poison message later or a silent zero.

What is checked is only what reads can tell (the issue's list): the domain exists, the tags
select at least one set, a set named by path exists, a transform version is free or registered
with the same arguments, a training set's transform exists, a blob exists. The functions the
requests reach check the same things again (messages may come from anywhere); these checks only
move the verdict to where a person is waiting. ``--force`` on the commands skips them.

A real zero stays a zero: a tag carried by some set, with no images yet, counts 0.

Every error names what was not found and, where a near name exists, the nearest one
(difflib over a bounded sample: :data:`SAMPLE` sets or blobs, never a full scan).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from itertools import islice

from corpus.domain.errors import NotFoundError, TransformConflictError
from corpus.domain.paths import SetRef
from corpus.domain.tags import normalize
from corpus.store.catalog import Catalog
from corpus.store.rows import dirs_of
from corpus.store.settings import Settings
from corpus.store.storage import Clients

SAMPLE = 2000
"""At most this many sets (or blobs) are read to find a near name; one or two requests."""


def did_you_mean(got: str, names: Iterable[str]) -> str:
    near = difflib.get_close_matches(got, sorted(set(names)), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def require_domain(clients: Clients, settings: Settings, domain: str, catalog: Catalog | None = None) -> None:
    """A domain is one the catalog holds sets of: refuse one that it does not.

    Only the ``ImageSets`` table is read (one request), which every operator may read
    (Table Data Reader); the list of domains for "did you mean" needs List Containers, which an
    operator's roles may not grant: without it, the error has no suggestion.
    """
    catalog = catalog or Catalog(clients)
    if domain not in settings.reserved_containers and next(catalog.sets.query(domain), None) is not None:
        return
    from corpus.app.queries import domains

    try:
        near = did_you_mean(domain, domains(clients, settings))
    except Exception:  # noqa: BLE001 - a suggestion is best effort: whatever denies the listing (403), the error stands
        near = ""
    raise NotFoundError(f"no domain {domain!r}{near}")


def _known_tags(catalog: Catalog, domain: str) -> set[str]:
    return {t for row in islice(catalog.sets.query(domain), SAMPLE) for t in row.tags}


def require_tags(
    catalog: Catalog,
    domain: str,
    tags: Iterable[str],
    transform: str | None = None,
    version: str | None = None,
) -> None:
    """At least one set of ``domain`` carries every tag (of ``transform``, at ``version``).

    A tag no set carries at all is named (with the nearest known tag); otherwise the combination is.
    """
    wanted = tuple(normalize(tags))
    if not wanted:
        return
    found = catalog.sets.query(domain, wanted, transform=transform, version=version, originals_only=transform is None)
    if next(found, None) is not None:
        return
    for tag in wanted:
        if next(catalog.sets.query(domain, (tag,)), None) is None:
            known = _known_tags(catalog, domain)
            if tag in known:  # sets carry it, the index does not: sets made before the index existed
                raise NotFoundError(
                    f"the tag index of domain {domain!r} has no entry for {tag!r}, which sets carry: "
                    f"run `corpus reindex --domain {domain}` once"
                )
            raise NotFoundError(f"no set of domain {domain!r} carries the tag {tag!r}{did_you_mean(tag, known)}")
    where = (f" at version {version}" if version else "") + (f" transformed by {transform}" if transform else "")
    raise NotFoundError(f"no set of domain {domain!r} carries all of the tags {list(wanted)}{where}")


def require_set(catalog: Catalog, domain: str, path: str, version: str, transform: tuple[str, str] | None = None) -> None:
    """The set ``domain/path`` at ``version`` exists (transformed by ``transform`` when given)."""
    if catalog.sets.get(SetRef(domain, dirs_of(path), version), transform) is not None:
        return
    what = f" transformed by {transform[0]}:{transform[1]}" if transform else ""
    paths = [row.path for row in islice(catalog.sets.query(domain), SAMPLE)]
    raise NotFoundError(f"no image set {domain}/{path} at version {version}{what}{did_you_mean(path, paths)}")


def require_transform(catalog: Catalog, name: str, tversion: str) -> None:
    """A registered transform version (sources of training sets name one)."""
    if catalog.transforms.get(name, tversion) is not None:
        return
    known = [f"{r.name}:{r.version}" for r in catalog.transforms.list()]
    raise NotFoundError(f"no transform {name}:{tversion} has run{did_you_mean(f'{name}:{tversion}', known)}")


def require_free_or_equal(catalog: Catalog, name: str, tversion: str, args_json: str) -> None:
    """A transform version is free, or registered with exactly these canonical arguments."""
    existing = catalog.transforms.get(name, tversion)
    if existing is not None and existing.args != args_json:
        raise TransformConflictError(
            f"transform {name}:{tversion} already exists with {existing.args}, not {args_json}; "
            "a transform version is immutable: use a new version"
        )


def require_blob(catalog: Catalog, container: str, blob: str) -> None:
    """``container/blob`` is an image of the corpus (an original or a transformed image with its
    record in the ``Images`` table: table reads only); otherwise name it, with the nearest file of
    its set."""
    parsed = _parse_image_blob(blob)
    if parsed is not None:
        ref, transform, file = SetRef(container, parsed[0], parsed[1]), parsed[2], parsed[3]
        if catalog.images.get(ref, file, transform) is not None:
            return
        names = [row.blob for _, row in islice(catalog.images.iter_after(ref, transform=transform), SAMPLE)]
        raise NotFoundError(f"no blob {container}/{blob}{did_you_mean(blob, names)}")
    raise NotFoundError(f"no blob {container}/{blob}: an image of the corpus is original/… or transform/…")


def _parse_image_blob(blob: str) -> tuple[tuple[str, ...], str, tuple[str, str] | None, str] | None:
    """(dirs, version, transform, file) of ``original/<dir…>/<version>/<file>`` or
    ``transform/<name>/<tversion>/<dir…>/<version>/<file>``; None for anything else."""
    segs = blob.split("/")
    if segs[0] == "original" and len(segs) >= 3 and all(segs):
        return tuple(segs[1:-2]), segs[-2], None, segs[-1]
    if segs[0] == "transform" and len(segs) >= 5 and all(segs):
        return tuple(segs[3:-2]), segs[-2], (segs[1], segs[2]), segs[-1]
    return None

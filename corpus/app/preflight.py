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


def require_domain(clients: Clients, settings: Settings, domain: str) -> None:
    """A domain is a container of the account that the catalog knows: refuse one that is not."""
    if domain not in settings.reserved_containers and clients.container(domain).exists():
        return
    from corpus.app.queries import domains

    raise NotFoundError(f"no domain {domain!r}{did_you_mean(domain, domains(clients, settings))}")


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


def require_blob(clients: Clients, container: str, blob: str) -> None:
    """The blob exists; otherwise name it, with the nearest name in its folder."""
    cc = clients.container(container)
    if cc.exists() and cc.get_blob_client(blob).exists():
        return
    folder = blob.rsplit("/", 1)[0] + "/" if "/" in blob else ""
    names = [b.name for b in islice(cc.list_blobs(name_starts_with=folder), SAMPLE)] if cc.exists() else []
    raise NotFoundError(f"no blob {container}/{blob}{did_you_mean(blob, names)}")

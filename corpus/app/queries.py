"""Queries at corpus scale: sets by tag through the tag index, exact counts by tag × transform,
and the one-off backfill of the index (``corpus reindex``).

Costs (requests), with ``D`` a domain, ``k`` tags, ``S`` matching sets, ``I`` their images:

* :func:`find_sets` with ``--domain`` and tags: the index range of the most selective tag
  (k × its size, :meth:`~corpus.store.sets_table.SetsTable.most_selective`) + S / 14 reads;
  without ``--domain``: the same per domain, domains being the account's containers named like
  one (a Table partition can't be listed; a container per domain always exists), so one list
  request per 5,000 containers more. Nothing reads sets that don't carry the tags.
* :func:`count`: the above, plus one counter-shard query per matching set (O(S)) for images
  and sets; ``sources`` one counter query per distinct source set of the matching transformed
  sets (O(S)): the insert-only source markers (:meth:`~corpus.store.images_table.ImagesTable.mark_sources`)
  count each (source original, operation) once, however many versions or deliveries wrote it.

Counts are summed from the counter shards (:meth:`corpus.store.images_table.ImagesTable.count`),
the same exactly-once records ingest and transform jobs write, not from the derived
``ImageCount`` (which a crash can leave behind until the redelivery refreshes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from corpus.domain import transforms
from corpus.domain.errors import InvalidNameError, TransformError
from corpus.domain.paths import RESERVED_DOMAINS_PREFIXES, validate_domain
from corpus.domain.refs import TransformRef
from corpus.domain.where import Expr, evaluate, values_of
from corpus.store.catalog import Catalog
from corpus.store.rows import ImageSetRow, TransformRow
from corpus.store.settings import Settings
from corpus.store.storage import Clients

PARALLEL = 16


def domains(clients: Clients, settings: Settings) -> list[str]:
    """Every container that can be a domain (valid name, not staging/rejected/host-owned), sorted."""
    found = []
    for c in clients.blob.list_containers():
        name = str(c.name)
        if name in settings.reserved_containers or name.startswith(RESERVED_DOMAINS_PREFIXES):
            continue
        try:
            found.append(validate_domain(name))
        except InvalidNameError:
            continue
    return sorted(found)


def find_sets(
    catalog: Catalog,
    domain_list: list[str],
    tags: tuple[str, ...] = (),
    transform: str | None = None,
    version: str | None = None,
    start: tuple[str, str] | None = None,
) -> Iterator[ImageSetRow]:
    """Sets in (domain, row key) order, streamed; ``start`` = (domain, set row key) resumes after that set."""
    for domain in domain_list:
        after = ""
        if start is not None:
            if domain < start[0]:
                continue
            if domain == start[0]:
                after = start[1]
        yield from catalog.sets.query(
            domain, tags, transform=transform, version=version, originals_only=transform is None, start_after=after
        )


@dataclass(frozen=True, slots=True)
class Count:
    images: int
    sets: int
    sources: int | None = None

    def as_json(self) -> dict[str, int]:
        out = {"images": self.images, "sets": self.sets}
        if self.sources is not None:
            out["sources"] = self.sources
        return out


def steps_of(row: TransformRow) -> list[str]:
    """The operations a registered transform applies: itself, or each step of a pipeline."""
    return row.steps()


def matching_transforms(catalog: Catalog, op: str | None = None, transform: str | None = None) -> list[TransformRow]:
    """Registered transform versions that are or contain ``op``, or that ``transform`` (``NAME[:VER]``) names."""
    rows = catalog.transforms.list()
    if op is not None:
        transforms.get(op)  # TransformError for an unknown operation
        return [r for r in rows if op in steps_of(r)]
    if transform is not None:
        ref = TransformRef.from_label(transform) or TransformRef("")
        return [r for r in rows if r.name == ref.name and (not ref.version or r.version == ref.version)]
    return []


def count(
    catalog: Catalog,
    domain: str,
    tags: tuple[str, ...] = (),
    op: str | None = None,
    transform: str | None = None,
    where: Expr | None = None,
) -> Count:
    """Images and sets of the originals carrying ``tags``; with ``op``/``transform``, of the
    transformed sets of the matching transforms whose source carries them, and the number of
    distinct source originals with at least one such output (see the module docstring).

    With ``where`` (:mod:`corpus.domain.where`), only images whose facts match are counted, and
    only sets holding at least one of them: that reads every image record of the selected sets
    (the exact counters can't answer it), concurrently per set."""
    if where is not None:
        if op is not None or transform is not None:
            raise TransformError("--where counts originals; it does not combine with --op or --transform")
        matching = [n for n in matching_per_set(catalog, catalog.sets.query(domain, tags, originals_only=True), where) if n]
        return Count(sum(matching), len(matching))
    if op is None and transform is None:
        sets = list(catalog.sets.query(domain, tags, originals_only=True))
        return Count(_images(catalog, sets), len(sets))
    if op is not None and transform is not None:
        raise TransformError("give --op or --transform, not both")
    sets = []
    for row in matching_transforms(catalog, op, transform):
        sets += catalog.sets.query(domain, tags, transform=f"{row.name}:{row.version}")
    if op is not None:
        what = op
    else:
        ref = TransformRef.from_label(transform or "") or TransformRef("")
        what = f"{ref.name}:{ref.version}"  # "NAME:" without a version: see TransformRow.source_keys
    # Distinct sources: the marker counters of each distinct source set (one query per set), not
    # a read of every transformed image; see ImagesTable.mark_sources.
    source_sets = sorted({s.ref for s in sets}, key=lambda r: (r.domain, r.dirs, r.version))
    with ThreadPoolExecutor(PARALLEL) as pool:
        sources = sum(pool.map(lambda ref: catalog.images.sources_count(ref, what), source_sets))
    return Count(_images(catalog, sets), len(sets), sources)


def matching_in(catalog: Catalog, row: ImageSetRow, where: Expr) -> int:
    """How many images of one set match ``where`` (reads the set's records in pages)."""
    return sum(
        evaluate(where, values_of(i.size, i.width, i.height, i.facts)) for i in catalog.images.iter(row.ref, row.transform)
    )


def matching_per_set(catalog: Catalog, rows: Iterable[ImageSetRow], where: Expr) -> Iterator[int]:
    """:func:`matching_in` of each set, in order, :data:`PARALLEL` sets at a time."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        yield from pool.map(lambda r: matching_in(catalog, r, where), rows)


def _images(catalog: Catalog, sets: list[ImageSetRow]) -> int:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return sum(pool.map(lambda s: catalog.images.count(s.ref, s.transform)[0], sets))


@dataclass
class ReindexProgress:
    sets: int = 0
    rows: int = 0
    continuation: str | None = None


def reindex(
    catalog: Catalog, domain: str | None = None, continuation: str | None = None, page: int = 1000
) -> Iterator[ReindexProgress]:
    """Write the tag-index rows of every set (idempotent merge upserts: safe to run twice, or
    while ingest creates sets). Yields progress after each page of sets, with the continuation
    token to resume from after an interruption (``corpus reindex --resume TOKEN``)."""
    progress = ReindexProgress(continuation=continuation)
    for rows, token in catalog.sets.scan_all(domain, continuation, page):
        with ThreadPoolExecutor(PARALLEL) as pool:
            progress.rows += sum(pool.map(catalog.sets.write_index, rows))
        progress.sets += len(rows)
        progress.continuation = token
        yield progress

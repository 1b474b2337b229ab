"""Duplicates and versions, the use cases: index an arriving original, list clusters, diff versions.

:func:`index_original` is what ingest runs for every original before recording it (the rules are
:mod:`corpus.domain.dupindex`'s, the rows :mod:`corpus.store.dupes_table`'s). Per image it costs
one transaction (band rows), 4 bounded range reads (band ranges) plus one point read per near
neighbour found, and one insert of its content row, which carries its member rows in the same
transaction when it has near duplicates (an exact copy, or a second delivery, reads its content
row and writes its member rows in one transaction of their own): a fixed number
whatever the size of the corpus: 6 requests for an original without duplicates (the 4 band reads
in flight together: 3 round trips; why no fewer, docs/dedupe.md "Requests per image"). It is
idempotent: delivered twice, or two exact copies at once, give the same content row (insert-only,
the first decision stands) and the same member rows (fixed values).

Waiting: a content whose undecided neighbour wrote its band rows first (by the rows' service
``Timestamp``, ties broken by SHA-256: :func:`corpus.domain.dupindex.written_first`; its own write
time comes back with its own band rows in the same band reads) waits (polling the neighbour's
content row with back-off, up to :data:`WAIT_SECONDS`) for it to decide; past the deadline it
decides without it (the neighbour's worker died mid-way; waiting longer would only poison this
image's copy request while that message is invisible). Ordering by write time, not by SHA-256,
is what makes concurrent arrivals safe: the content that wrote second always reads the first's
band rows (each writes before it reads), so it is the one that waits; the first may have read
before the second wrote, and never waits for it (issue 19).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from corpus.domain import dupindex as d
from corpus.domain.diff import Diff, diff
from corpus.domain.imagefacts import ImageFacts
from corpus.domain.keys import image_row_key
from corpus.domain.paths import SetRef
from corpus.store.dupes_table import Content, DupesTable, Nearby
from corpus.store.rows import ImageRow

WAIT_SECONDS = 20.0


def index_original(
    dupes: DupesTable,
    domain: str,
    blob: str,
    md5: str,
    facts: ImageFacts,
    wait_seconds: float = WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> d.Cluster:
    """Index one original of ``domain`` and return its cluster; see the module docstring."""
    structured = d.has_structure(facts.contrast)
    # New band rows mean nobody indexed this content before: its content row can only appear
    # through a concurrent exact copy, which decide() below resolves; so it is not read.
    fresh = structured and dupes.add_bands(domain, facts, md5)
    deadline = clock() + wait_seconds
    delay = 0.05
    while True:
        nearby = dupes.nearby(domain, facts) if structured else Nearby(None, [])
        neighbours = nearby.neighbours
        own = None if fresh else dupes.content(domain, facts.sha256)
        fresh = False
        if own is None:
            try:
                waiting = clock() <= deadline
                cluster = d.choose_cluster(facts.sha256, md5, [n for n, _ in neighbours], waiting, nearby.written)
            except d.NotReady:
                time.sleep(delay)  # another worker's decision: there is no event to wait on
                delay = min(2 * delay, 1.0)
                continue
            mine = Content(facts.sha256, cluster, domain, blob, facts.phash)
            # the member rows ride in the content row's transaction (one request, all or nothing)
            own = dupes.decide(domain, mine, _members(domain, blob, facts, mine, near_of(neighbours)))
            if own is mine:
                return own.cluster
        break
    dupes.add_members(domain, _members(domain, blob, facts, own, near_of(neighbours)))
    return own.cluster


def near_of(neighbours: list[tuple[d.Neighbour, Content | None]]) -> list[Content]:
    return [c for _, c in neighbours if c is not None]


def _members(domain: str, blob: str, facts: ImageFacts, own: Content, near: list[Content]) -> list[d.Member]:
    """Member rows for this image, the first image of its content and its neighbours in its cluster,
    when that makes a cluster of two or more (single images are not listed: no rows)."""
    cluster = own.cluster.id
    others = [c for c in near if c.cluster.id == cluster]
    if own.blob == blob and not others:
        return []
    members = [d.Member(cluster, domain, blob, facts.sha256, facts.phash_int)]
    for c in [own, *others]:
        if c.blob and c.phash:
            members.append(d.Member(cluster, c.container, c.blob, c.sha256, d.hash_int(c.phash)))
    return members


# -- reading ----------------------------------------------------------------------------------


def set_of_original(domain: str, blob: str) -> SetRef | None:
    """The set an original's blob name (``original/<dirs…>/<version>/<file>``) belongs to."""
    parts = blob.split("/")
    if len(parts) < 3 or parts[0] != "original":
        return None
    return SetRef(domain, tuple(parts[1:-2]), parts[-2])


@dataclass(frozen=True, slots=True)
class MemberFilter:
    """Which members ``corpus dupes`` shows: originals of sets carrying all ``tags``, of ``version``."""

    tags: tuple[str, ...] = ()
    version: str | None = None

    def keeps(self, ref: SetRef | None, set_tags: Callable[[SetRef], tuple[str, ...]]) -> bool:
        if ref is None:
            return False
        if self.version is not None and ref.version != self.version:
            return False
        return not self.tags or set(self.tags) <= set(set_tags(ref))


def dupes_lines(
    dupes: DupesTable,
    domain: str,
    near: bool,
    keep: MemberFilter | None = None,
    set_tags: Callable[[SetRef], tuple[str, ...]] = lambda ref: (),
) -> Iterator[dict[str, object]]:
    """``corpus dupes``: one line per cluster (see :func:`corpus.domain.dupindex.cluster_lines`),
    streamed from the member rows in key order: time and memory proportional to the result."""
    keep = keep or MemberFilter()
    members = (m for m in dupes.members(domain) if keep.keeps(set_of_original(domain, m.blob), set_tags))
    yield from d.cluster_lines(members, near)


@dataclass(frozen=True, slots=True)
class DupesPage:
    """One page of ``corpus dupes --limit``: its lines and the place of the next line (None: the last page)."""

    lines: list[dict[str, object]]
    next_key: str | None


def dupes_page(
    dupes: DupesTable,
    domain: str,
    near: bool,
    limit: int,
    start: str | None = None,
    keep: MemberFilter | None = None,
    set_tags: Callable[[SetRef], tuple[str, ...]] = lambda ref: (),
) -> DupesPage:
    """``corpus dupes --limit N [--continuation T]``: at most ``limit`` lines from RowKey ``start``
    on, and the RowKey of the line after them. The member rows are read in requests of a few rows
    per line asked for, and reading stops at the first row of the line after the page: rows read
    are proportional to the page (plus the rows a filter drops), whatever the size of the domain.
    Every line is listed exactly once across pages: a line's key is its first member row's, and a
    page resumes at that key (rows are insert-only or idempotent; a row inserted behind the place
    of a later page appears on a later read of those keys, never twice)."""
    if limit < 1:
        raise ValueError("limit must be positive")
    keep = keep or MemberFilter()
    rows = dupes.members(domain, start=start, per_page=min(1000, 4 * limit + 4))
    members = (m for m in rows if keep.keeps(set_of_original(domain, m.blob), set_tags))
    lines: list[dict[str, object]] = []
    for key, line in d.keyed_cluster_lines(members, near):
        if len(lines) == limit:
            return DupesPage(lines, key)
        lines.append(line)
    return DupesPage(lines, None)


def diff_versions(
    images: Callable[[SetRef], Iterable[tuple[str, str]]], domain: str, dirs: tuple[str, ...], old: str, new: str, listing: bool
) -> Diff:
    """``corpus diff``: the sets (domain, dirs) at versions ``old`` and ``new`` compared by SHA-256;
    ``images(ref)`` yields a set's (file, sha256) in ``Images`` RowKey order (None if no set)."""
    return diff(images(SetRef(domain, dirs, old)), images(SetRef(domain, dirs, new)), key=image_row_key, listing=listing)


def crossing_pairs(dupes: DupesTable, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """``corpus dupes --trainset``: duplicate pairs a training set put in different splits.

    The member rows of each domain the manifest names are read once (memory proportional to the
    domain's *duplicates*, not its size); the manifest then streams, and each line whose image (or,
    for a transformed image, its original) is a member is noted under its cluster. For every
    cluster found in two or more splits, one pair per extra split is reported: the first image of
    the first split beside the first image of each other split, ``kind`` ``exact`` when they have
    the same SHA-256 (or, for transformed images, the same original).
    """
    from corpus.domain.manifest import parse_line

    clusters: dict[str, dict[tuple[str, str], tuple[str, str]]] = {}  # domain → (container, blob) → (cluster, sha)
    seen: dict[str, dict[str, tuple[str, str]]] = {}  # cluster → split → (blob, original's sha)
    for lineno, line in enumerate(lines, start=1):
        entry = parse_line(line, lineno)
        members = clusters.get(entry.domain)
        if members is None:
            members = {(m.container, m.blob): (m.cluster, m.sha256) for m in dupes.members(entry.domain)}
            clusters[entry.domain] = members
        found = members.get((entry.container, entry.source_blob or entry.blob))
        if found is None:
            continue
        seen.setdefault(found[0], {}).setdefault(entry.split, (entry.blob, found[1]))
    for splits in seen.values():
        if len(splits) < 2:
            continue
        (split_a, (blob_a, sha_a)), *rest = sorted(splits.items())
        for split_b, (blob_b, sha_b) in rest:
            yield {
                "kind": "exact" if sha_a == sha_b else "near",
                "a": {"blob": blob_a, "split": split_a},
                "b": {"blob": blob_b, "split": split_b},
            }


MAX_SHOWN = 200
"""Members of one cluster listed on an image's page and by ``GET /api/dupes`` (the rest are counted)."""


def duplicates_of(dupes: DupesTable, domain: str, blob: str, record: ImageRow) -> dict[str, Any]:
    """An original's facts and its duplicates (its cluster's other members), for the gallery and
    ``GET /api/dupes``: one range read of one cluster, at most :data:`MAX_SHOWN` listed."""
    facts = record.facts
    out: dict[str, Any] = {
        "blob": f"{domain}/{blob}",
        "facts": facts.to_json() if facts else None,
        "cluster": record.cluster.id if record.cluster else None,
        "duplicates": [],
        "more": 0,
    }
    if record.cluster is None or facts is None:
        return out
    for m in dupes.members(domain, record.cluster.id):
        if (m.container, m.blob) == (domain, blob):
            continue
        if len(out["duplicates"]) >= MAX_SHOWN:
            out["more"] += 1
            continue
        item = m.to_json(d.hamming(facts.phash_int, m.phash))
        item["kind"] = "exact" if m.sha256 == facts.sha256 else "near"
        out["duplicates"].append(item)
    return out

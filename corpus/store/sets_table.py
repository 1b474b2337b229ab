"""Table ``ImageSets``: one entity per set (domain partition), created once, counts raised later,
and a tag index beside the sets (Azure's *Index Table* pattern, in the same partition).

Layout of a domain's partition (row keys, see :mod:`corpus.domain.keys`)::

    o!<path>!<version>                       a set of originals
    t!<name>!<tversion>!<path>!<version>     a transformed set
    x!<tag>!<set row key>                    one per tag of each set: the tag index

Every set row sorts below ``x!``, so readers of sets ask for ``RowKey lt 'x!'`` (or a narrower
``o!``/``t!`` range) and never see index rows.

**The index can't go stale.** A set's entity and its index rows are created by *one*
entity-group transaction (:meth:`SetsTable.ensure`), insert-only: if the set exists the whole
transaction fails and nothing changes. A set's tags are a function of its identity (its path and
the tag extractor), never updated afterwards, so redelivery, crashes and concurrent creators all
leave either nothing or the set with all of its index rows. At most ``MAX_TAGS_PER_SET`` (64)
tags fit one transaction with the set; ingest rejects a path giving more.

**Queries by tag** (:meth:`SetsTable.query` with ``tags``) read one tag's index range, then the
matching sets by key. With several tags, the ranges are read a page at a time in turn until the
first one ends: that tag is the most selective one, found for the price of reading k × its size
(k tags), with no counters to maintain. Sets are then fetched by point reads, in parallel
(:meth:`SetsTable.get_many`): one entity per result, whatever the domain's size. (``RowKey eq``
filters joined by ``or`` would be fewer requests but a scan of the whole partition on Azure.)

Never enumerate a set by listing its ``BlobPath`` prefix in blob storage: ``original/<dir>/<version>/``
is not prefix-free (the root set ``v2`` has BlobPath ``original/v2/``, which also holds set
``v2@v1``'s ``original/v2/v1/…``). A set's images are its ``Images`` partition, nothing else.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, TypedDict, Unpack

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from corpus.domain import keys
from corpus.domain.errors import InvalidNameError
from corpus.domain.limits import MAX_FILTER_COMPARISONS, MAX_TABLE_BATCH
from corpus.domain.paths import SetRef
from corpus.domain.refs import TransformRef
from corpus.domain.tags import check_tag_count, matches, normalize, normalize_tag
from corpus.store import egt
from corpus.store.rows import ImageSetRow, TagIndexRow, Transform, is_set_entity
from corpus.store.tables import decode_continuation, encode_continuation, entity_or_none, first_page

KEYS_PER_QUERY = MAX_FILTER_COMPARISONS - 1
"""``PartitionKey eq`` plus this many ``RowKey eq`` comparisons per filter; also how many point
reads :meth:`SetsTable.get_many` reads ahead of its consumer (bounded memory)."""

INDEX_PAGE = 1000
POINT_READS = 8
"""Concurrent point reads of :meth:`SetsTable.get_many`."""
FIRST_PAGE = 16


class SetQuery(TypedDict, total=False):
    """Which sets :meth:`SetsTable.query` and :meth:`SetsTable.list` return."""

    domain: str | None
    tags: tuple[str, ...]
    transform: str | None
    version: str | None
    originals_only: bool


class SetsTable:
    def __init__(self, table: TableClient) -> None:
        self.table = table
        self._known: set[tuple[str, str]] = set()

    def ensure(
        self,
        ref: SetRef,
        tags: list[str],
        blob_prefix: str,
        transform: Transform | None = None,
        transform_keys: tuple[str, str] = ("", ""),
    ) -> None:
        """Create the set's entity and its tag-index rows, in one transaction, if the set does not
        exist yet; an existing one is left alone (see the module docstring).

        Every field written here is a function of the set's identity, so "create if missing" is
        an upsert that can't regress counts another writer has already raised.
        """
        rk = keys.set_row_key(ref, transform)
        if (ref.domain, rk) in self._known:
            return
        tags = check_tag_count(normalize(tags))
        row = ImageSetRow(ref.domain, ref.path, ref.version, tuple(tags), blob_prefix, transform, transform_keys)
        ops: list[Any] = [("create", row.to_entity())]
        ops += [("create", TagIndexRow(ref.domain, tag, rk).to_entity()) for tag in tags]
        try:
            self.table.submit_transaction(ops)
        except TableTransactionError as exc:
            if exc.index == 0:
                if getattr(exc, "error_code", None) != "EntityAlreadyExists":
                    raise
                # The set exists, hence so do its index rows (or a backfill will write them).
            else:
                # An index row exists without its set: only a backfill racing this creation can do
                # that. Finish both: index rows (idempotent upserts), then the set.
                self.write_index(row)
                try:
                    self.table.create_entity(row.to_entity())
                except ResourceExistsError:
                    pass
        self._known.add((ref.domain, rk))

    def write_index(self, row: ImageSetRow) -> int:
        """Write ``row``'s index rows (idempotent merge upserts; a backfill of sets created before
        the index existed). Returns how many were written."""
        entities = [TagIndexRow(row.domain, tag, row.row_key).to_entity() for tag in normalize(row.tags)]
        for i in range(0, len(entities), MAX_TABLE_BATCH):
            egt.submit(self.table, [("upsert", e, {"mode": UpdateMode.MERGE}) for e in entities[i : i + MAX_TABLE_BATCH]])
        return len(entities)

    def get(self, ref: SetRef, transform: Transform | None = None) -> ImageSetRow | None:
        entity = entity_or_none(self.table, ref.domain, keys.set_row_key(ref, transform))
        return None if entity is None else ImageSetRow.from_entity(entity)

    def tagged_from(
        self, domain: str, tags: tuple[str, ...], set_prefix: str, start_at: str = "", version: str | None = None
    ) -> Iterator[tuple[ImageSetRow, bool]]:
        """Sets carrying the first tag, in key order from ``start_at``, each with whether it
        carries every tag (and has ``version``): walking the first tag's index range, a set at a
        time (bounded work per step, for paged fan-out; put the most selective tag first)."""
        it = self.index_keys(domain, tags[0], set_prefix, start_at)
        while True:
            chunk = [k for k in (next(it, None) for _ in range(KEYS_PER_QUERY)) if k is not None]
            if not chunk:
                return
            for row in self.get_many(domain, chunk):
                yield row, matches(row.tags, tags) and (not version or row.version == version)
            if len(chunk) < KEYS_PER_QUERY:
                return

    def versions_of(self, domain: str, dirs: tuple[str, ...]) -> builtins.list[ImageSetRow]:
        """Every version of one set path (originals): a key range ``o!<path>!…``, O(versions)."""
        lo = keys.set_row_key(SetRef(domain, dirs, "")).removesuffix(keys.escape(""))
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi", parameters={"pk": domain, "lo": lo, "hi": keys.after(lo)}
        )
        return [ImageSetRow.from_entity(e) for e in rows]

    def get_many(self, domain: str, set_keys: Iterable[str]) -> Iterator[ImageSetRow]:
        """The sets with these row keys in ``domain`` (missing ones are skipped), in key order.

        Point reads, :data:`KEYS_PER_QUERY` at a time concurrently: a filter of ``RowKey eq``
        comparisons joined by ``or`` is *not* a range query for the Table service but a scan of the
        whole partition (every set of the domain, per request), which made each page of
        ``/api/sets?domain=&tag=`` cost O(domain) rows (issue 25 R4).
        """
        wanted = sorted(set(set_keys))
        with ThreadPoolExecutor(POINT_READS) as pool:
            for i in range(0, len(wanted), KEYS_PER_QUERY):
                chunk = wanted[i : i + KEYS_PER_QUERY]
                for row in pool.map(lambda k: self._get_key(domain, k), chunk):
                    if row is not None:
                        yield row

    def _get_key(self, domain: str, row_key: str) -> ImageSetRow | None:
        entity = entity_or_none(self.table, domain, row_key)
        return None if entity is None else ImageSetRow.from_entity(entity)

    def index_keys(
        self, domain: str, tag: str, set_prefix: str = "", start_at: str = "", page: int = INDEX_PAGE
    ) -> Iterator[str]:
        """Set row keys of ``domain`` carrying ``tag`` (normalised here), in key order, from the
        index; from ``start_at`` (a set row key, inclusive) on if given."""
        tag = normalize_tag(tag)
        lo = keys.tag_index_prefix(tag, set_prefix)
        hi = keys.after(lo)
        lo = max(lo, keys.tag_index_row_key(tag, start_at))
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": domain, "lo": lo, "hi": hi},
            select=["RowKey"],
            results_per_page=page,
        )
        for entity in rows:
            yield keys.set_key_of_index(tag, str(entity["RowKey"]))

    def most_selective(self, domain: str, tags: tuple[str, ...], set_prefix: str = "") -> list[str]:
        """The index range of the tag with the fewest sets (see the module docstring): its set
        keys, read in full. The tags' ranges are read in turn, in pages growing 16, 64, 256,
        1000 rows, until one ends: at most k requests per round and about 4 × k × the smallest
        range's size in rows, however large the other ranges are."""
        wanted = normalize(tags)
        if len(wanted) == 1:
            return list(self.index_keys(domain, wanted[0], set_prefix))
        found: dict[str, list[str]] = {tag: [] for tag in wanted}
        size = FIRST_PAGE
        while True:
            for tag in wanted:
                start = keys.successor(found[tag][-1]) if found[tag] else ""
                page = list(islice(self.index_keys(domain, tag, set_prefix, start, size), size))  # one request
                found[tag] += page
                if len(page) < size:
                    return found[tag]
            size = min(size * 4, INDEX_PAGE)

    def _lazy_candidates(self, domain: str, tags: tuple[str, ...], prefix: str, start: str, page: int) -> Iterator[str]:
        """Set keys from ``start`` on carrying every tag: the tags' index ranges walked together
        (a sorted merge, each read lazily in requests of ``page`` rows) and intersected, so a page
        costs the index rows between its first and last set, per tag."""
        streams = [self.index_keys(domain, tag, prefix, start, page) for tag in normalize(tags)]
        heads = [next(it, None) for it in streams]
        while all(h is not None for h in heads):
            top = max(h for h in heads if h is not None)
            if all(h == top for h in heads):
                yield top
                heads = [next(it, None) for it in streams]
                continue
            heads = [h if h == top else _advance_to(it, h, top) for it, h in zip(streams, heads, strict=True)]

    def query(
        self,
        domain: str | None = None,
        tags: tuple[str, ...] = (),
        transform: str | None = None,
        version: str | None = None,
        originals_only: bool = False,
        start_after: str = "",
        paged: int = 0,
    ) -> Iterator[ImageSetRow]:
        """Sets, optionally of one domain, carrying every tag, of one transform (``NAME[:VER]``).

        In (domain, row key) order when ``domain`` is given. With ``domain`` and ``tags`` the tag
        index is read (O(result)); without a domain the tags are filtered over every set (callers
        with many domains should ask per domain, see :mod:`corpus.cli.queries`). ``start_after``
        (a set row key of ``domain``) resumes a listing after that set.

        ``paged``: the caller takes a page of this many sets and stops (the API): the index is read
        from ``start_after`` on, lazily, in requests of about a page, so a page costs O(page) rows,
        not the whole range (issue 25 R4).
        """
        prefix = _set_prefix(transform, originals_only)
        if domain and tags:
            start = keys.successor(start_after) if start_after else ""
            candidates = (
                self._lazy_candidates(domain, tags, prefix, start, min(INDEX_PAGE, paged + 1))
                if paged
                else self.most_selective(domain, tags, prefix)
            )
            for chunk in _chunks((k for k in candidates if k > start_after), KEYS_PER_QUERY):
                for row in self.get_many(domain, chunk):
                    if matches(row.tags, tags) and (not version or row.version == version):
                        yield row
            return
        flt, params = _range_filter(domain, prefix, keys.successor(start_after) if start_after and domain else "", version)
        for entity in self.table.query_entities(flt, parameters=params):
            if not is_set_entity(entity):
                continue
            row = ImageSetRow.from_entity(entity)
            if not tags or matches(row.tags, tags):
                yield row

    def page(
        self,
        limit: int,
        continuation: dict[str, Any] | None = None,
        domain: str | None = None,
        tags: tuple[str, ...] = (),
        transform: str | None = None,
        originals_only: bool = False,
    ) -> tuple[builtins.list[ImageSetRow], str | None]:
        """One page of sets in table order (domain, then row key) and the next page's token (the API's paging).

        ``limit`` rows are read; tags are matched here, so a page may hold fewer (even none) while
        a token remains. Every set is on exactly one page: pages are key ranges.
        """
        flt, params = _range_filter(domain, _set_prefix(transform, originals_only))
        found = self.table.query_entities(flt, parameters=params, results_per_page=limit)
        entities, token = first_page(found.by_page(continuation_token=continuation))  # type: ignore[arg-type]  # the SDK's token is a dict
        rows = [ImageSetRow.from_entity(e) for e in entities if is_set_entity(e)]
        return [r for r in rows if not tags or matches(r.tags, tags)], token

    def list(self, **where: Unpack[SetQuery]) -> builtins.list[ImageSetRow]:
        """:meth:`query`, sorted by domain, transform, path and version."""
        return sorted(self.query(**where), key=lambda r: (r.domain, r.transform_label, r.path, r.version))

    def scan_all(
        self, domain: str | None = None, continuation: str | None = None, page: int = INDEX_PAGE
    ) -> Iterator[tuple[builtins.list[ImageSetRow], str | None]]:
        """Every set (no index rows), a page at a time, with an opaque continuation token (text)
        after each page, ``None`` after the last."""
        flt = "RowKey lt @hi" + (" and PartitionKey eq @pk" if domain else "")
        params = {"hi": keys.SETS_UPPER} | ({"pk": domain} if domain else {})
        query = self.table.query_entities(flt, parameters=params, results_per_page=page)
        try:
            start = decode_continuation(continuation)
        except ValueError as exc:
            raise InvalidNameError("not a continuation token printed by this command") from exc
        pages: Any = query.by_page(continuation_token=start)  # type: ignore[arg-type]  # the SDK's token is a dict
        for entities in pages:
            rows = [ImageSetRow.from_entity(e) for e in entities if is_set_entity(e)]
            yield rows, encode_continuation(pages.continuation_token)


def _advance_to(it: Iterator[str], head: str | None, target: str) -> str | None:
    """The first key of ``it`` (whose current key is ``head``) at or past ``target``."""
    while head is not None and head < target:
        head = next(it, None)
    return head


def _chunks(items: Iterable[str], size: int) -> Iterator[builtins.list[str]]:
    it = iter(items)
    while chunk := builtins.list(islice(it, size)):
        yield chunk


def _set_prefix(transform: str | None, originals_only: bool) -> str:
    """The row-key prefix of originals (``o!``), of one transform's sets, or "" for every set."""
    if originals_only:
        return keys.ORIGINALS_PREFIX
    if transform:
        ref = TransformRef.from_label(transform)  # a filter: an unknown one matches nothing
        return keys.transform_set_prefix(*ref.pair) if ref else ""
    return ""


def _range_filter(domain: str | None, prefix: str, lo: str = "", version: str | None = None) -> tuple[str, dict[str, str]]:
    """The filter of a key-range read of sets: never the tag index rows (they sort above every set)."""
    clauses, params = ["RowKey lt @hi"], {"hi": keys.after(prefix) if prefix else keys.SETS_UPPER}
    if domain:
        clauses.append("PartitionKey eq @pk")
        params["pk"] = domain
    lo = max(lo, prefix)
    if lo:
        clauses.append("RowKey ge @lo")
        params["lo"] = lo
    if version:
        clauses.append("Version eq @version")
        params["version"] = version
    return " and ".join(clauses), params

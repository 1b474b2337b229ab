"""Table ``Duplicates``: the duplicate index of every domain (rules and keys: :mod:`corpus.domain.dupindex`).

One partition per domain holds three kinds of rows, all insert-only or idempotent:

* band rows ``b<i>!<value>!<phash>!<sha256>``: one per band of each distinct content (props
  ``SHA256``, ``MD5``, ``PHash``, ``DHash``), written in one transaction (:meth:`add_bands`);
* content rows ``c!<sha256>``: the cluster the content joined (``Cluster``, ``ClusterMD5``) and
  the first image seen with it (``Container``, ``Blob``); insert-only, so the first decision
  stands and every later delivery or exact copy reads it (:meth:`decide`);
* member rows ``m!<cluster>!<sha256>!<container>!<blob>``: the images of clusters with two or
  more images, upserted with fixed values (idempotent), for ``corpus dupes`` (:meth:`members`).

Reads are bounded: one point read, and at most :data:`~corpus.domain.dupindex.MAX_BAND_ROWS`
rows of each of the 4 band ranges, whatever the size of the domain; the 4 band reads (and the
neighbours' content reads) are in flight together. Why these requests and no fewer: docs/dedupe.md,
"Requests per image".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from itertools import islice
from typing import Any, TypeVar

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableTransactionError, UpdateMode

from corpus.domain import dupindex as d
from corpus.domain.imagefacts import ImageFacts
from corpus.store import egt, tablequery

MAX_BATCH = 100
READ_THREADS = 16
"""Threads shared by every ingest worker of the process for the concurrent reads of :meth:`DupesTable.neighbours`."""

T = TypeVar("T")
R = TypeVar("R")


@cache
def _pool_of(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dupes-read")


def _pool() -> ThreadPoolExecutor:
    """One pool per process (a forked worker does not inherit its parent's threads)."""
    return _pool_of(os.getpid())


def _concurrently(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, the calls in flight at once (results in order; the first error raised)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    return list(_pool().map(fn, items))


@dataclass(frozen=True, slots=True)
class Content:
    """A content row: its cluster and the first image seen with it."""

    sha256: str
    cluster: d.Cluster
    container: str
    blob: str
    phash: str


def _written(entity: Any) -> datetime | None:
    """The row's service ``Timestamp`` (when it was written), if the service sent one."""
    stamp = getattr(entity, "metadata", {}).get("timestamp")
    return stamp if isinstance(stamp, datetime) else None


def _age_seconds(entity: Any) -> float:
    stamp = _written(entity)
    if stamp is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - stamp).total_seconds())


@dataclass(frozen=True, slots=True)
class Nearby:
    """What one read of the band ranges found: when this content's own band rows were written
    (None if they were not among the rows read) and its near neighbours, each with its content row."""

    written: datetime | None
    neighbours: list[tuple[d.Neighbour, Content | None]]


def _exists(exc: TableTransactionError) -> bool:
    """A transaction refused because one of its inserts exists."""
    return getattr(exc, "error_code", "") == "EntityAlreadyExists" or "AlreadyExists" in str(exc)


class DupesTable:
    def __init__(self, table: Any) -> None:
        self.table = table

    def add_bands(self, domain: str, facts: ImageFacts, md5: str) -> bool:
        """Insert the content's band rows in one transaction; False when they exist (a redelivery,
        or an exact copy indexed before)."""
        pk = d.partition(domain)
        props = {"SHA256": facts.sha256, "MD5": md5, "PHash": facts.phash, "DHash": facts.dhash}
        ops = [("create", {"PartitionKey": pk, "RowKey": rk, **props}) for rk in d.band_row_keys(facts.phash, facts.sha256)]
        try:
            egt.submit(self.table, ops)
            return True
        except TableTransactionError as exc:
            if _exists(exc):
                return False
            raise

    def content(self, domain: str, sha256: str) -> Content | None:
        # a query on both keys: a point read on Azure, decoded without the SDK's deserialiser
        found = tablequery.query_entities(
            self.table,
            "PartitionKey eq @pk and RowKey eq @rk",
            parameters={"pk": d.partition(domain), "rk": d.content_row_key(sha256)},
        )
        e = next(iter(found), None)
        if e is None:
            return None
        return Content(
            sha256,
            d.Cluster(str(e["Cluster"]), str(e["ClusterMD5"])),
            str(e["Container"]),
            str(e["Blob"]),
            str(e.get("PHash") or ""),
        )

    def neighbours(self, domain: str, facts: ImageFacts) -> list[tuple[d.Neighbour, Content | None]]:
        """Indexed contents near ``facts`` (not itself), each with its content row if it has one."""
        return self.nearby(domain, facts).neighbours

    def nearby(self, domain: str, facts: ImageFacts) -> Nearby:
        """Indexed contents near ``facts`` (not itself), each with its content row if it has one,
        and when its own band rows were written (they come back in the same band ranges).

        The :data:`~corpus.domain.dupindex.BANDS` band ranges are read concurrently (one request
        each: an ``or`` of RowKey ranges would be a partition scan on Azure), then the neighbours'
        content rows, also concurrently: the latency of one read of each kind, not of six."""
        pk = d.partition(domain)

        def band(bounds: tuple[str, str]) -> list[d.Neighbour]:
            low, high = bounds
            rows = tablequery.query_entities(
                self.table,
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": pk, "lo": low, "hi": high},
                results_per_page=d.MAX_BAND_ROWS,
            )
            return [
                d.Neighbour(
                    str(e["SHA256"]),
                    str(e["MD5"]),
                    d.hash_int(str(e["PHash"])),
                    d.hash_int(str(e["DHash"])),
                    None,
                    _age_seconds(e),
                    _written(e),
                )
                for e in islice(rows, d.MAX_BAND_ROWS)  # the first page's worth: a query is lazy
            ]

        rows = [n for found in _concurrently(band, d.band_ranges(facts.phash_int)) for n in found]
        written = min((n.written for n in rows if n.sha256 == facts.sha256 and n.written), default=None)
        near = list(d.candidates(facts.phash_int, facts.dhash_int, rows, facts.sha256))
        contents = _concurrently(lambda n: self.content(domain, n.sha256), near)
        return Nearby(
            written,
            [
                (d.Neighbour(n.sha256, n.md5, n.phash, n.dhash, c.cluster if c else None, n.age_seconds, n.written), c)
                for n, c in zip(near, contents, strict=True)
            ],
        )

    def decide(self, domain: str, content: Content, members: list[d.Member] | None = None) -> Content:
        """Insert the content row; if another delivery got there first, theirs stands and is returned.

        ``members``: the member rows that go with *this* decision, inserted in the same transaction
        (one request instead of two for an image with duplicates; all or nothing, so a losing
        decision writes none of them: the caller then writes the members of the one that stands)."""
        entity = {
            "PartitionKey": d.partition(domain),
            "RowKey": d.content_row_key(content.sha256),
            "Cluster": content.cluster.id,
            "ClusterMD5": content.cluster.md5,
            "Container": content.container,
            "Blob": content.blob,
            "PHash": content.phash,
        }
        try:
            if members:
                ops = [("create", entity), *self._member_ops(domain, members)]
                egt.submit(self.table, ops[:MAX_BATCH])
                self._submit(ops[MAX_BATCH:])
            else:
                self.table.create_entity(entity)
            return content
        except (ResourceExistsError, TableTransactionError) as exc:
            if isinstance(exc, TableTransactionError) and not _exists(exc):
                raise
            existing = self.content(domain, content.sha256)
            if existing is None:  # pragma: no cover - rows are never deleted
                raise
            return existing

    def add_members(self, domain: str, members: list[d.Member]) -> None:
        """Upsert member rows (fixed values: idempotent), in transactions of at most 100."""
        self._submit(self._member_ops(domain, members))

    def _submit(self, ops: list[Any]) -> None:
        for start in range(0, len(ops), MAX_BATCH):
            egt.submit(self.table, ops[start : start + MAX_BATCH])

    @staticmethod
    def _member_ops(domain: str, members: list[d.Member]) -> list[Any]:
        pk = d.partition(domain)
        ops = [
            (
                "upsert",
                {
                    "PartitionKey": pk,
                    "RowKey": d.member_row_key(m.cluster, m.sha256, m.container, m.blob),
                    "Cluster": m.cluster,
                    "SHA256": m.sha256,
                    "Container": m.container,
                    "Blob": m.blob,
                    "PHash": f"{m.phash:016x}",
                },
                {"mode": UpdateMode.REPLACE},
            )
            for m in members
        ]
        return list({op[1]["RowKey"]: op for op in ops}.values())

    def members(
        self, domain: str, cluster: str | None = None, start: str | None = None, per_page: int = 1000
    ) -> Iterator[d.Member]:
        """Member rows of ``domain`` (or of one cluster) in RowKey order: grouped by cluster, then content.
        ``start``: from this RowKey on (a paged listing's place, :func:`~corpus.domain.dupindex.keyed_cluster_lines`);
        ``per_page``: rows per request (a short listing asks for few, so it reads few)."""
        low, high = d.cluster_range(cluster) if cluster else d.MEMBERS
        if start is not None:
            low = max(low, start)
        for e in self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": d.partition(domain), "lo": low, "hi": high},
            results_per_page=per_page,
        ):
            yield d.Member(str(e["Cluster"]), str(e["Container"]), str(e["Blob"]), str(e["SHA256"]), d.hash_int(str(e["PHash"])))

    def claim(self, trainset: tuple[str, str], key: str, place: str) -> bool:
        """``--dedupe``: does ``place`` (``container/blob``) hold ``key`` (a content or cluster) in the
        training set? The first claim is inserted and stands; a claim by the same place again (a
        retried build) is still true; any other place's is false. A build claims in manifest order,
        one chunk after the other, so the first image in manifest order holds each key."""
        entity = {"PartitionKey": d.claims_partition(*trainset), "RowKey": key, "Place": place}
        try:
            self.table.create_entity(entity)
            return True
        except ResourceExistsError:
            return str(self.table.get_entity(entity["PartitionKey"], key).get("Place")) == place

"""Table ``ImageSets``: one entity per set (domain partition), created once, counts raised later.

Never enumerate a set by listing its ``BlobPath`` prefix in blob storage: ``original/<dir>/<version>/``
is not prefix-free (the root set ``v2`` has BlobPath ``original/v2/``, which also holds set
``v2@v1``'s ``original/v2/v1/…``). A set's images are its ``Images`` partition, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient

from corpus.domain import keys
from corpus.domain.paths import SetRef
from corpus.domain.tags import matches
from corpus.store.rows import ImageSetRow, Transform
from corpus.store.tables import first_page


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
        """Create the set's entity if it does not exist yet; an existing one is left alone.

        Every field written here is a function of the set's identity, so "create if missing" is
        an upsert that can't regress counts another writer has already raised.
        """
        rk = keys.set_row_key(ref, transform)
        if (ref.domain, rk) in self._known:
            return
        row = ImageSetRow(ref.domain, ref.path, ref.version, tuple(tags), blob_prefix, transform, transform_keys)
        try:
            self.table.create_entity(row.to_entity())
        except ResourceExistsError:
            pass
        self._known.add((ref.domain, rk))

    def get(self, ref: SetRef, transform: Transform | None = None) -> ImageSetRow | None:
        try:
            return ImageSetRow.from_entity(self.table.get_entity(ref.domain, keys.set_row_key(ref, transform)))
        except ResourceNotFoundError:
            return None

    @staticmethod
    def _filter(
        domain: str | None, transform: str | None, version: str | None, originals_only: bool
    ) -> tuple[str, dict[str, str]]:
        clauses: list[str] = []
        params: dict[str, str] = {}
        if domain:
            clauses.append("PartitionKey eq @pk")
            params["pk"] = domain
        lo = hi = None
        if originals_only:
            lo, hi = "o!", 'o"'
        elif transform:
            name, _, tversion = transform.partition(":")
            lo = "t!" + keys.escape(name) + "!" + (keys.escape(tversion) + "!" if tversion else "")
            hi = lo[:-1] + '"'
        if lo and hi:
            clauses.append("RowKey ge @lo and RowKey lt @hi")
            params.update(lo=lo, hi=hi)
        if version:
            clauses.append("Version eq @version")
            params["version"] = version
        return " and ".join(clauses), params

    def query(
        self,
        domain: str | None = None,
        tags: tuple[str, ...] = (),
        transform: str | None = None,
        version: str | None = None,
        originals_only: bool = False,
    ) -> Iterator[ImageSetRow]:
        """Sets, optionally of one domain, carrying every tag, of one transform (``NAME[:VER]``), unsorted."""
        query, params = self._filter(domain, transform, version, originals_only)
        rows = self.table.query_entities(query, parameters=params) if query else self.table.list_entities()
        for entity in rows:
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
    ) -> tuple[list[ImageSetRow], str | None]:
        """One page of :meth:`query` in table order (domain, then row key) and the next page's token.

        ``limit`` rows are read; tags are matched here, so a page may hold fewer (even none) while
        a token remains. Every set is on exactly one page: pages are key ranges.
        """
        query, params = self._filter(domain, transform, None, originals_only)
        if query:
            found = self.table.query_entities(query, parameters=params, results_per_page=limit)
        else:
            found = self.table.list_entities(results_per_page=limit)
        entities, token = first_page(found.by_page(continuation_token=continuation))  # type: ignore[arg-type]  # the Tables SDK's token is a dict
        rows = [ImageSetRow.from_entity(e) for e in entities]
        return [r for r in rows if not tags or matches(r.tags, tags)], token

    def list(
        self,
        domain: str | None = None,
        tags: tuple[str, ...] = (),
        transform: str | None = None,
        version: str | None = None,
        originals_only: bool = False,
    ) -> list[ImageSetRow]:
        """:meth:`query`, sorted by domain, transform, path and version."""
        found = self.query(domain, tags, transform, version, originals_only)
        return sorted(found, key=lambda r: (r.domain, r.transform_label, r.path, r.version))

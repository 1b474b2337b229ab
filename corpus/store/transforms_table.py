"""Table ``ImageTransforms``: each transform (name, version) with its canonical arguments, immutable."""

from __future__ import annotations

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient

from corpus.domain import keys
from corpus.domain.errors import TransformConflictError
from corpus.store.rows import PageMarkerRow, PagePlanRow, TransformRow
from corpus.store.tables import entity_or_none


class TransformsTable:
    """Also holds the fan-out page markers (partitions ``!page!<request>``, which no escaped
    transform name can equal; :meth:`list` skips them)."""

    def __init__(self, table: TableClient) -> None:
        self.table = table
        self._cache: dict[tuple[str, str], TransformRow] = {}

    def registered(self, name: str, tversion: str) -> TransformRow | None:
        """:meth:`get`, cached once found: a registered transform version never changes."""
        row = self._cache.get((name, tversion))
        if row is None:
            row = self.get(name, tversion)
            if row is not None:
                self._cache[(name, tversion)] = row
        return row

    def page_done(self, request: str, page: int) -> bool:
        try:
            self.table.get_entity(*self._marker_keys(request, page), select=["RowKey"])
        except ResourceNotFoundError:
            return False
        return True

    def mark_page(self, request: str, page: int, jobs: int) -> None:
        """Insert-only: a second marker for the same page (a concurrent duplicate) is left alone."""
        try:
            self.table.create_entity(PageMarkerRow(request, page, jobs).to_entity())
        except ResourceExistsError:
            pass

    def plan_page(self, plan: PagePlanRow) -> PagePlanRow:
        """Insert the plan of the next page unless one exists; return the stored one (the first
        run's cursor wins, so a rerun of a page sends the very continuation it planned)."""
        try:
            self.table.create_entity(plan.to_entity())
        except ResourceExistsError:
            stored = self.planned(plan.request, plan.page)
            if stored is not None:
                return stored
        return plan

    def planned(self, request: str, page: int) -> PagePlanRow | None:
        """The plan a fan-out stored for page ``page`` of ``request``, or None (never planned)."""
        try:
            e = self.table.get_entity(keys.page_marker_partition(request), PagePlanRow.row_key(page))
        except ResourceNotFoundError:
            return None
        return PagePlanRow.from_entity(request, page, e)

    @staticmethod
    def _marker_keys(request: str, page: int) -> tuple[str, str]:
        e = PageMarkerRow(request, page).to_entity()
        return str(e["PartitionKey"]), str(e["RowKey"])

    def register(self, name: str, tversion: str, canonical_args: str) -> tuple[str, str]:
        """Record (name, version) with its canonical arguments, once; refuse different arguments.

        Returns the entity's (PartitionKey, RowKey), which transformed sets link to.
        """
        row = TransformRow(name, tversion, canonical_args)
        try:
            self.table.create_entity(row.to_entity())
        except ResourceExistsError:
            existing = self.get(name, tversion)
            if existing is not None and existing.args != canonical_args:
                raise TransformConflictError(
                    f"transform {name}:{tversion} already exists with {existing.args}, not {canonical_args}; "
                    "a transform version is immutable: use a new version"
                ) from None
        return row.keys

    def get(self, name: str, tversion: str) -> TransformRow | None:
        entity = entity_or_none(self.table, *keys.transform_keys(name, tversion))
        return None if entity is None else TransformRow.from_entity(entity)

    def list(self) -> list[TransformRow]:
        """Every registered transform version (page markers, partitions ``!page!…``, excluded)."""
        rows = self.table.query_entities("PartitionKey ge @lo", parameters={"lo": keys.after(keys.SEPARATOR)})
        found = (TransformRow.from_entity(e) for e in rows)
        return sorted(found, key=lambda r: (r.name, r.version))

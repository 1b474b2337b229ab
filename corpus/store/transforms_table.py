"""Table ``ImageTransforms``: each transform (name, version) with its canonical arguments, immutable."""

from __future__ import annotations

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient

from corpus.domain import keys
from corpus.domain.errors import TransformConflictError
from corpus.store.rows import TransformRow


class TransformsTable:
    def __init__(self, table: TableClient) -> None:
        self.table = table

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
        try:
            return TransformRow.from_entity(self.table.get_entity(*keys.transform_keys(name, tversion)))
        except ResourceNotFoundError:
            return None

    def list(self) -> list[TransformRow]:
        """Every registered transform version (page markers, partitions ``!page!…``, excluded)."""
        rows = self.table.query_entities("PartitionKey ge @lo", parameters={"lo": keys.after(keys.SEPARATOR)})
        found = (TransformRow.from_entity(e) for e in rows)
        return sorted(found, key=lambda r: (r.name, r.version))

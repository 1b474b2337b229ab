"""Tables ``Rejections`` and ``Failures``: where users find what did not go through, and why."""

from __future__ import annotations

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from corpus.domain import keys
from corpus.store.rows import FailureRow, RejectionRow


class RejectionsTable:
    """Rejected (``rejected``) and junk (``junk``) staged names, latest rejection per name."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, row: RejectionRow) -> None:
        """Upsert: the latest rejection of a staged name is the one that matters to its owner."""
        self.table.upsert_entity(row.to_entity(), mode=UpdateMode.REPLACE)

    def get(self, kind: str, name: str) -> RejectionRow | None:
        try:
            return RejectionRow.from_entity(self.table.get_entity(kind, keys.escape(name)))
        except ResourceNotFoundError:
            return None

    def list(self, kind: str | None = None) -> list[RejectionRow]:
        rows = self.table.query_entities("PartitionKey eq @k", parameters={"k": kind}) if kind else self.table.list_entities()
        return sorted((RejectionRow.from_entity(r) for r in rows), key=lambda r: (r.at is None, r.at))


class FailuresTable:
    """Why a message or delivery failed, per (source, key); ``final`` once it is poisoned."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, row: FailureRow) -> None:
        self.table.upsert_entity(row.to_entity(), mode=UpdateMode.REPLACE)

    def clear(self, source: str, key: str) -> None:
        self.table.delete_entity(keys.escape(source), keys.escape(key))

    def list(self, final_only: bool = True) -> list[FailureRow]:
        rows = self.table.query_entities("Final eq true") if final_only else self.table.list_entities()
        return sorted((FailureRow.from_entity(r) for r in rows), key=lambda r: (r.at is None, r.at))

"""Tables ``Rejections``, ``Failures`` and ``Redrives``: where users find what did not go through, and why."""

from __future__ import annotations

from datetime import datetime, timedelta

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from corpus.domain import keys
from corpus.store.rows import REDRIVE_PARTITION, FailureRow, RedriveRow, RejectionRow
from corpus.store.tables import RowTable


class RejectionsTable(RowTable[RejectionRow]):
    """Rejected (``rejected``) and junk (``junk``) staged names, latest rejection per name."""

    row = RejectionRow

    def record(self, row: RejectionRow) -> None:
        """Upsert: the latest rejection of a staged name is the one that matters to its owner."""
        self._upsert(row)

    def get(self, kind: str, name: str) -> RejectionRow | None:
        return self._get(kind, keys.escape(name))

    def list(self, kind: str | None = None) -> list[RejectionRow]:
        rows = self.table.query_entities("PartitionKey eq @k", parameters={"k": kind}) if kind else self.table.list_entities()
        return sorted((RejectionRow.from_entity(r) for r in rows), key=lambda r: (r.at is None, r.at))


class FailuresTable(RowTable[FailureRow]):
    """Why a message or delivery failed, per (source, key); ``final`` once it is poisoned."""

    row = FailureRow

    def record(self, row: FailureRow) -> None:
        self._upsert(row)

    def record_once(self, row: FailureRow) -> bool:
        """Insert-only: False when a row with this key exists (kept as it is, with its reason)."""
        return self._insert_once(row)

    def clear(self, source: str, key: str) -> None:
        self.table.delete_entity(keys.escape(source), keys.escape(key))

    def acknowledge(self, source: str, key: str) -> bool:
        """Mark one failure seen (a merge of one property); False if there is no such failure."""
        try:
            self.table.update_entity(
                {"PartitionKey": keys.escape(source), "RowKey": keys.escape(key), "Acknowledged": True}, mode=UpdateMode.MERGE
            )
            return True
        except ResourceNotFoundError:
            return False

    def list(self, final_only: bool = True) -> list[FailureRow]:
        rows = self.table.query_entities("Final eq true") if final_only else self.table.list_entities()
        return sorted((FailureRow.from_entity(r) for r in rows), key=lambda r: (r.at is None, r.at))


class RedrivesTable(RowTable[RedriveRow]):
    """What reconciliation handed to ingest again: one row per staged name, its latest re-drive."""

    row = RedriveRow

    def claim(self, name: str, etag: str, why: str, at: datetime, grace: timedelta) -> RedriveRow | None:
        """Claim the re-drive of this version of ``name`` now, or None when another reconciler
        re-drove the same version less than ``grace`` ago (insert-only create, or replace with
        If-Match: of two concurrent claims exactly one wins)."""
        key = keys.escape(name)
        try:
            entity = self.table.get_entity(REDRIVE_PARTITION, key)
        except ResourceNotFoundError:
            row = RedriveRow(name, etag, why, at=at)
            try:
                self.table.create_entity(row.to_entity())
            except ResourceExistsError:
                return None
            return row
        last = RedriveRow.from_entity(entity)
        if last.etag == etag and last.at is not None and last.at > at - grace:
            return None
        row = RedriveRow(name, etag, why, times=last.times + 1, at=at)
        try:
            self.table.update_entity(
                row.to_entity(),
                mode=UpdateMode.REPLACE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return row

    def finish(self, row: RedriveRow, outcome: str) -> None:
        entity = {"PartitionKey": REDRIVE_PARTITION, "RowKey": keys.escape(row.name), "Outcome": outcome}
        self.table.update_entity(entity, mode=UpdateMode.MERGE)

    def list(self) -> list[RedriveRow]:
        rows = self.table.query_entities("PartitionKey eq @p", parameters={"p": REDRIVE_PARTITION})
        return sorted((RedriveRow.from_entity(r) for r in rows), key=lambda r: (r.at is None, r.at))

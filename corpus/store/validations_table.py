"""Table ``Validations``: the blob trigger's verdict on one staged upload, keyed by name and ETag.

Written by the trigger before it queues the copy request; read by the copy function, which takes
size, MD5, content type and dimensions from here and nothing but the staged name and ETag from the
message; deleted by the copy function once the staged blob is gone (a redelivery after that finds
the image recorded, or nothing to do).
"""

from __future__ import annotations

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from corpus.domain import keys
from corpus.store.rows import ValidationRow, bare_etag
from corpus.store.tables import entity_or_none


class ValidationsTable:
    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, row: ValidationRow) -> None:
        """Upsert: the same (name, ETag) always describes the same bytes, so a rewrite is identical."""
        self.table.upsert_entity(row.to_entity(), mode=UpdateMode.REPLACE)

    def get(self, name: str, etag: str) -> ValidationRow | None:
        entity = entity_or_none(self.table, keys.escape(name), keys.escape(bare_etag(etag)))
        return None if entity is None else ValidationRow.from_entity(entity)

    def delete(self, name: str, etag: str) -> None:
        """Idempotent: a record already gone (another delivery's delete) is no error."""
        try:
            self.table.delete_entity(keys.escape(name), keys.escape(bare_etag(etag)))
        except ResourceNotFoundError:
            pass

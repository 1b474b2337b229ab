"""Table ``Validations``: the blob trigger's verdict on one staged upload, keyed by name and ETag.

Written by the trigger before it queues the copy request; read by the copy function, which takes
size, MD5, content type and dimensions from here and nothing but the staged name and ETag from the
message; deleted by the copy function once the staged blob is gone (a redelivery after that finds
the image recorded, or nothing to do).
"""

from __future__ import annotations

from azure.core.exceptions import ResourceNotFoundError

from corpus.domain import keys
from corpus.store.rows import ValidationRow, bare_etag
from corpus.store.tables import RowTable


class ValidationsTable(RowTable[ValidationRow]):
    row = ValidationRow

    def record(self, row: ValidationRow) -> None:
        """Upsert: the same (name, ETag) always describes the same bytes, so a rewrite is identical."""
        self._upsert(row)

    def get(self, name: str, etag: str) -> ValidationRow | None:
        return self._get(keys.escape(name), keys.escape(bare_etag(etag)))

    def delete(self, name: str, etag: str) -> None:
        """Idempotent: a record already gone (another delivery's delete) is no error."""
        try:
            self.table.delete_entity(keys.escape(name), keys.escape(bare_etag(etag)))
        except ResourceNotFoundError:
            pass

"""Numbers the design must respect, each with where it comes from. Pure constants: no imports.

Azure's documented limits are stricter than Azurite's; code checks against these, not against
what the emulator happens to accept.
"""

DEFAULT_MAX_PIXELS = 100_000_000
"""100 megapixels: far above any camera in the corpus, far below what would exhaust a worker."""

DEFAULT_MAX_BLOB_BYTES = 256 * 1024 * 1024
"""Largest staged file accepted (``CORPUS_MAX_BLOB_BYTES``)."""

DEFAULT_DECODE_BUDGET_BYTES = 512 * 1024 * 1024
"""Bytes of decoded pixels one worker process holds at once (``CORPUS_DECODE_BUDGET_BYTES``):
one largest admissible image (100 MP at up to 4 bytes a pixel = 400 MB) fits, two do not."""

MAX_BLOB_NAME = 1024
"""Characters in a blob name (Azure: "Naming and referencing containers, blobs, and metadata")."""

MAX_BLOB_SEGMENTS = 254
"""Path segments in a blob name on a flat-namespace account (same page)."""

MAX_COPY_SOURCE_URL = 2 * 1024
"""Bytes of the percent-encoded ``x-ms-copy-source`` URL of Copy Blob (Copy Blob REST reference)."""

MAX_TABLE_BATCH = 100
"""Operations in one entity-group transaction (Table service: "Performing entity group transactions")."""

MAX_STRING_PROPERTY_CHARS = 32 * 1024
"""A Table string property holds 64 KiB, i.e. 32 K UTF-16 code units ("Understanding the Table
service data model")."""

MAX_MESSAGE_BYTES = 64 * 1024
"""A queue message body ("Put Message" REST reference)."""

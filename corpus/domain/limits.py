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

MAX_TAGS_PER_SET = 64
"""Tags one image set may carry: the set's entity and one tag-index row per tag are written in ONE
entity-group transaction (:data:`MAX_TABLE_BATCH` = 100 operations), so the index can never
disagree with the set. 64 leaves room and is far above any real folder depth."""

MAX_FILTER_COMPARISONS = 15
"""Discrete comparisons in one Table query filter ("Querying tables and entities")."""

MAX_PIPELINE_STEPS = 32
"""Steps in one ``pipeline`` transform: every step is decoded pixels in memory, one after the other."""

MAX_TRANSFORM_DEFINITION_CHARS = 8 * 1024
"""Characters of a transform's canonical JSON definition (stored whole in ``ImageTransforms.Args``,
far below :data:`MAX_STRING_PROPERTY_CHARS`). Jobs name a transform by (name, version) only and
read the definition from the registry, so job messages stay small whatever the definition."""

DEFAULT_TRANSFORM_PAGE_SIZE = 256
"""Jobs one transform-request invocation enqueues before handing the rest to a continuation
message (``CORPUS_TRANSFORM_PAGE_SIZE``)."""

"""Every setting in one place, read from the same app settings the Functions host reads.

Names here are the contract with ``infra/`` (Bicep) and ``local.settings.sample.json``; a test
checks that they agree. Connections follow the Functions conventions exactly, so one set of app
settings serves the host's bindings and our SDK clients alike:

* ``CorpusStorage`` holding a connection string (Azurite, or keys where a user insists), or
* ``CorpusStorage__blobServiceUri`` / ``__queueServiceUri`` / ``__tableServiceUri`` with
  ``__credential=managedidentity`` and ``__clientId`` (production: no keys anywhere).

With nothing set, the connection is ``UseDevelopmentStorage=true``: Azurite on its default ports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from corpus.domain.errors import ConfigError
from corpus.domain.limits import (
    DEFAULT_DECODE_BUDGET_BYTES,
    DEFAULT_MAX_BLOB_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TRANSFORM_PAGE_SIZE,
)
from corpus.domain.tags import DEFAULT_EXTRACTOR

CONNECTION = "CorpusStorage"
"""Name of the connection used by every trigger and by our own clients."""

DEV_CONNECTION_STRING = "UseDevelopmentStorage=true"

# Tables are not bindable by expression in triggers, so their names are fixed constants.
TABLE_SETS = "ImageSets"
TABLE_IMAGES = "Images"
TABLE_TRANSFORMS = "ImageTransforms"
TABLE_REJECTIONS = "Rejections"
TABLE_FAILURES = "Failures"
TABLE_REDRIVES = "Redrives"
TABLE_VALIDATIONS = "Validations"
"""What the blob trigger validated, per staged name and ETag: the only thing a copy acts on."""
TABLE_TRAINSETS = "TrainingSets"
TABLE_MODELS = "Models"
TABLE_LINEAGE = "Lineage"
TABLE_DUPES = "Duplicates"
"""The duplicate index of every domain (:mod:`corpus.store.dupes_table`)."""
TABLES = (
    TABLE_SETS,
    TABLE_IMAGES,
    TABLE_TRANSFORMS,
    TABLE_REJECTIONS,
    TABLE_FAILURES,
    TABLE_REDRIVES,
    TABLE_VALIDATIONS,
    TABLE_TRAINSETS,
    TABLE_MODELS,
    TABLE_LINEAGE,
    TABLE_DUPES,
)

POISON_SUFFIX = "-poison"


def poison_queue(queue: str) -> str:
    """Where the Functions host (and ``corpus host``) moves a message that failed every attempt."""
    return queue + POISON_SUFFIX


POISON_TTL = -1
"""Time to live of a poison message: never expires (a queue's default is 7 days, after which the
evidence of a failure would silently vanish)."""

BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"
"""Where the Functions host puts a blob that failed every attempt: in the trigger's own storage
account (the Event Grid blob trigger's connection needs a queue endpoint for this reason)."""

# App-setting names and their defaults. Trigger bindings refer to them as %NAME%.
STAGING_CONTAINER = "CORPUS_STAGING_CONTAINER"
REJECTED_CONTAINER = "CORPUS_REJECTED_CONTAINER"
COPY_QUEUE = "CORPUS_COPY_QUEUE"
TRANSFORM_QUEUE = "CORPUS_TRANSFORM_QUEUE"
TRANSFORM_JOBS_QUEUE = "CORPUS_TRANSFORM_JOBS_QUEUE"
TAG_EXTRACTOR = "CORPUS_TAG_EXTRACTOR"
MAX_PIXELS = "CORPUS_MAX_PIXELS"
MAX_BLOB_BYTES = "CORPUS_MAX_BLOB_BYTES"
DEADLETTER_CONTAINER = "CORPUS_DEADLETTER_CONTAINER"
RECONCILE_SCHEDULE = "CORPUS_RECONCILE_SCHEDULE"
RECONCILE_GRACE_SECONDS = "CORPUS_RECONCILE_GRACE_SECONDS"
RECONCILE_MAX_BLOBS = "CORPUS_RECONCILE_MAX_BLOBS"
DECODE_BUDGET_BYTES = "CORPUS_DECODE_BUDGET_BYTES"
TRAINSETS_CONTAINER = "CORPUS_TRAINSETS_CONTAINER"
EXPORTS_CONTAINER = "CORPUS_EXPORTS_CONTAINER"
EXPORT_QUEUE = "CORPUS_EXPORT_QUEUE"
TRANSFORM_PAGE_SIZE = "CORPUS_TRANSFORM_PAGE_SIZE"
TRAINSET_QUEUE = "CORPUS_TRAINSET_QUEUE"
TRAINSET_BLOCK_IMAGES = "CORPUS_TRAINSET_BLOCK_IMAGES"
TRAINSET_BUDGET_SECONDS = "CORPUS_TRAINSET_BUDGET_SECONDS"
COPY_MODE = "CORPUS_COPY_MODE"
COPY_MODES = ("auto", "put-from-url", "copy")
"""How ingest copies a validated upload into ``original/``: ``put-from-url`` (one synchronous Put Blob
From URL, the service checking the MD5), ``copy`` (Copy Blob, then a read of its properties: Azurite
3.35 has no Put Blob From URL), or ``auto``: ``copy`` on the storage emulator, else ``put-from-url``."""
INGEST = "CORPUS_INGEST"
INGEST_MODES = ("direct", "queued")
"""How the blob trigger hands a validated upload on: ``direct`` (default: it copies, records and
clears the upload itself, in the same invocation; copies are then bounded by the blob trigger's
concurrency, host.json ``extensions.blobs.maxDegreeOfParallelism`` per instance) or ``queued``
(it records a ``Validations`` row and queues a copy request for ``copy_to_original``, whose queue
settings throttle copies separately from validation: 4 to 5 more storage requests per image). The
copy function consumes the queue in both modes, so a backlog queued before a switch still drains
(docs/deploy.md, "Ingest: direct or queued")."""
CATALOG_CONTAINER = "CORPUS_CATALOG_CONTAINER"
CATALOG_SCHEDULE = "CORPUS_CATALOG_SCHEDULE"

DEFAULTS: dict[str, str] = {
    STAGING_CONTAINER: "staging",
    REJECTED_CONTAINER: "rejected",
    COPY_QUEUE: "copy-requests",
    TRANSFORM_QUEUE: "transform-requests",
    TRANSFORM_JOBS_QUEUE: "transform-jobs",
    TAG_EXTRACTOR: DEFAULT_EXTRACTOR,
    MAX_PIXELS: str(DEFAULT_MAX_PIXELS),
    MAX_BLOB_BYTES: str(DEFAULT_MAX_BLOB_BYTES),
    DEADLETTER_CONTAINER: "eventgrid-deadletter",
    RECONCILE_SCHEDULE: "0 */5 * * * *",
    RECONCILE_GRACE_SECONDS: "900",
    RECONCILE_MAX_BLOBS: "2000",
    DECODE_BUDGET_BYTES: str(DEFAULT_DECODE_BUDGET_BYTES),
    TRAINSETS_CONTAINER: "trainsets",
    EXPORTS_CONTAINER: "exports",
    EXPORT_QUEUE: "export-requests",
    TRANSFORM_PAGE_SIZE: str(DEFAULT_TRANSFORM_PAGE_SIZE),
    TRAINSET_QUEUE: "trainset-requests",
    TRAINSET_BLOCK_IMAGES: "10000",
    TRAINSET_BUDGET_SECONDS: "240",
    COPY_MODE: "auto",
    INGEST: "direct",
    CATALOG_CONTAINER: "catalog",
    CATALOG_SCHEDULE: "0 */15 * * * *",
}


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the corpus storage account: a connection string or service URIs + identity."""

    connection_string: str | None = None
    blob_uri: str | None = None
    queue_uri: str | None = None
    table_uri: str | None = None
    client_id: str | None = None

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None

    @classmethod
    def from_env(cls, env: Mapping[str, str], name: str = CONNECTION) -> Connection:
        if env.get(name):
            return cls(connection_string=_checked_connection_string(name, env[name]))
        prefix = name + "__"
        account = env.get(prefix + "accountName")
        blob = env.get(prefix + "blobServiceUri") or (account and f"https://{account}.blob.core.windows.net")
        queue = env.get(prefix + "queueServiceUri") or (account and f"https://{account}.queue.core.windows.net")
        table = env.get(prefix + "tableServiceUri") or (account and f"https://{account}.table.core.windows.net")
        if not (blob or queue or table):
            return cls(connection_string=DEV_CONNECTION_STRING)
        missing = [k for k, v in (("blobServiceUri", blob), ("queueServiceUri", queue), ("tableServiceUri", table)) if not v]
        if missing:
            raise ConfigError(f"identity-based connection {name!r} lacks {', '.join(prefix + m for m in missing)}")
        return cls(blob_uri=blob, queue_uri=queue, table_uri=table, client_id=env.get(prefix + "clientId") or None)


_CONNECTION_KEYS = frozenset(
    k.lower()
    for k in (
        "DefaultEndpointsProtocol", "AccountName", "AccountKey", "EndpointSuffix", "BlobEndpoint", "QueueEndpoint",
        "TableEndpoint", "FileEndpoint", "SharedAccessSignature", "UseDevelopmentStorage", "DevelopmentStorageProxyUri",
        "BlobSecondaryEndpoint", "QueueSecondaryEndpoint", "TableSecondaryEndpoint",
    )
)  # fmt: skip


def _checked_connection_string(name: str, value: str) -> str:
    """A storage connection string is ``Key=Value;`` pairs with known keys and an account; anything
    else fails here with one line, instead of deep inside the SDK with a traceback."""
    pairs = [p for p in value.strip().split(";") if p.strip()]
    keys = set()
    for pair in pairs:
        key, eq, _ = pair.partition("=")
        if not eq or key.strip().lower() not in _CONNECTION_KEYS:
            raise ConfigError(f"{name} is not a storage connection string (expected Key=Value; pairs such as AccountName=…)")
        keys.add(key.strip().lower())
    if not keys & {"accountname", "blobendpoint", "queueendpoint", "tableendpoint", "usedevelopmentstorage"}:
        raise ConfigError(f"{name} names no account or endpoint")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    connection: Connection
    staging_container: str
    rejected_container: str
    copy_queue: str
    transform_queue: str
    transform_jobs_queue: str
    tag_extractor: str
    max_pixels: int
    max_blob_bytes: int
    decode_budget_bytes: int
    deadletter_container: str = "eventgrid-deadletter"
    reconcile_grace_seconds: float = 900.0
    reconcile_max_blobs: int = 2000
    trainsets_container: str = DEFAULTS[TRAINSETS_CONTAINER]
    exports_container: str = DEFAULTS[EXPORTS_CONTAINER]
    export_queue: str = DEFAULTS[EXPORT_QUEUE]
    transform_page_size: int = DEFAULT_TRANSFORM_PAGE_SIZE
    trainset_queue: str = "trainset-requests"
    trainset_block_images: int = 10000
    """Manifest lines per block (one gzip member, one Put Block); fixes the compressed bytes."""
    trainset_budget_seconds: float = 240.0
    """A build message stops after this long (at a block boundary) and continues in a new message."""
    copy_mode: str = "auto"
    """:data:`COPY_MODES`; see :data:`COPY_MODE`."""
    ingest: str = "direct"
    """:data:`INGEST_MODES`; see :data:`INGEST`."""
    values: Mapping[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        v = {k: env.get(k) or d for k, d in DEFAULTS.items()}
        try:
            max_pixels = int(v[MAX_PIXELS])
            max_blob_bytes = int(v[MAX_BLOB_BYTES])
            decode_budget_bytes = int(v[DECODE_BUDGET_BYTES])
            grace = float(v[RECONCILE_GRACE_SECONDS])
            max_redrive = int(v[RECONCILE_MAX_BLOBS])
            page_size = int(v[TRANSFORM_PAGE_SIZE])
            block_images = int(v[TRAINSET_BLOCK_IMAGES])
            budget = float(v[TRAINSET_BUDGET_SECONDS])
        except ValueError as exc:
            names = (
                MAX_PIXELS,
                MAX_BLOB_BYTES,
                DECODE_BUDGET_BYTES,
                RECONCILE_GRACE_SECONDS,
                RECONCILE_MAX_BLOBS,
                TRANSFORM_PAGE_SIZE,
                TRAINSET_BLOCK_IMAGES,
                TRAINSET_BUDGET_SECONDS,
            )
            raise ConfigError(f"{', '.join(names)} must be numbers") from exc
        if min(max_pixels, max_blob_bytes, decode_budget_bytes) <= 0:
            raise ConfigError(f"{MAX_PIXELS}, {MAX_BLOB_BYTES} and {DECODE_BUDGET_BYTES} must be positive")
        if not 1 <= page_size <= 5000:
            raise ConfigError(f"{TRANSFORM_PAGE_SIZE} must be between 1 and 5000, got {page_size}")
        if v[COPY_MODE] not in COPY_MODES:
            raise ConfigError(f"{COPY_MODE} must be one of {', '.join(COPY_MODES)}, got {v[COPY_MODE]!r}")
        if v[INGEST] not in INGEST_MODES:
            raise ConfigError(f"{INGEST} must be one of {', '.join(INGEST_MODES)}, got {v[INGEST]!r}")
        if block_images < 1 or budget < 0:
            raise ConfigError(f"{TRAINSET_BLOCK_IMAGES} must be positive and {TRAINSET_BUDGET_SECONDS} not negative")
        return cls(
            connection=Connection.from_env(env),
            staging_container=v[STAGING_CONTAINER],
            rejected_container=v[REJECTED_CONTAINER],
            copy_queue=v[COPY_QUEUE],
            transform_queue=v[TRANSFORM_QUEUE],
            transform_jobs_queue=v[TRANSFORM_JOBS_QUEUE],
            tag_extractor=v[TAG_EXTRACTOR],
            max_pixels=max_pixels,
            max_blob_bytes=max_blob_bytes,
            deadletter_container=v[DEADLETTER_CONTAINER],
            reconcile_grace_seconds=grace,
            reconcile_max_blobs=max_redrive,
            decode_budget_bytes=decode_budget_bytes,
            trainsets_container=v[TRAINSETS_CONTAINER],
            exports_container=v[EXPORTS_CONTAINER],
            export_queue=v[EXPORT_QUEUE],
            transform_page_size=page_size,
            trainset_queue=v[TRAINSET_QUEUE],
            trainset_block_images=block_images,
            trainset_budget_seconds=budget,
            copy_mode=v[COPY_MODE],
            ingest=v[INGEST],
            values={**env, **v},
        )

    @property
    def reserved_containers(self) -> frozenset[str]:
        return frozenset(
            {
                self.staging_container,
                self.rejected_container,
                self.trainsets_container,
                self.exports_container,
                self.deadletter_container,
                self.values.get(CATALOG_CONTAINER) or DEFAULTS[CATALOG_CONTAINER],
            }
        )

    @property
    def queues(self) -> tuple[str, ...]:
        return (self.copy_queue, self.transform_queue, self.transform_jobs_queue, self.export_queue, self.trainset_queue)


def load_local_settings(directory: Path | str = ".", env: dict[str, str] | None = None) -> None:
    """Merge ``local.settings.json``'s ``Values`` into the environment, as ``func start`` does.

    Values already in the environment win, so a shell export always overrides the file.
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
    path = Path(directory) / "local.settings.json"
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for key, value in values.items():
        env.setdefault(key, str(value))  # type: ignore[union-attr]

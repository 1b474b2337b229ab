"""The catalog: every table the corpus keeps, each in its own home, behind one object.

* ``sets`` (:mod:`corpus.store.sets_table`): ``ImageSets``;
* ``images`` (:mod:`corpus.store.images_table`): ``Images`` records and counter shards;
* ``transforms`` (:mod:`corpus.store.transforms_table`): ``ImageTransforms``;
* ``rejections``, ``failures``, ``redrives`` (:mod:`corpus.store.reports_table`);
* ``validations`` (:mod:`corpus.store.validations_table`): what the blob trigger validated;
* ``dupes`` (:mod:`corpus.store.dupes_table`): ``Duplicates``, the duplicate index.

Exact counts under at-least-once delivery: each image is recorded by an insert-only row in the
same transaction as its counter shard (see :mod:`corpus.store.images_table`). The set's
``ImageCount``/``TotalBytes`` in ``ImageSets`` is then *derived* (:meth:`Catalog.refresh_counts`):
the shards are summed and written only if larger than what is stored (counts only grow, as
versions are immutable), with an ETag condition. Whichever writer runs last after the last
insert writes the exact total; a crash between the two steps is repaired by the redelivery,
which re-runs the derivation.

The set entity's counts and ETag as this process last wrote them are kept (:class:`_Written`):
counts only grow, so they are a lower bound of what is stored; a refresh that needs no more
than that writes nothing, and otherwise writes with If-Match on the kept ETag, reading the
entity only when another writer changed it since (issue 26: one table read fewer per refresh).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import UpdateMode

from corpus.domain import keys
from corpus.domain.errors import NotFoundError
from corpus.domain.paths import SetRef
from corpus.store.dupes_table import DupesTable
from corpus.store.images_table import ImagesTable
from corpus.store.ports import BlobStore
from corpus.store.reports_table import FailuresTable, RedrivesTable, RejectionsTable
from corpus.store.rows import ImageRow, ImageSetRow, Transform
from corpus.store.sets_table import SetsTable
from corpus.store.settings import (
    TABLE_DUPES,
    TABLE_FAILURES,
    TABLE_IMAGES,
    TABLE_REDRIVES,
    TABLE_REJECTIONS,
    TABLE_SETS,
    TABLE_TRANSFORMS,
    TABLE_VALIDATIONS,
)
from corpus.store.tables import MAX_ATTEMPTS, TableSource, backoff
from corpus.store.trainsets_table import TrainsetStore
from corpus.store.transforms_table import TransformsTable
from corpus.store.validations_table import ValidationsTable


@dataclass(frozen=True, slots=True)
class _Written:
    """A set entity's counts and ETag after this process's last write (or read) of them."""

    counts: tuple[int, int]
    etag: str


class Catalog:
    """All table reads and writes; callers never build keys or entities themselves."""

    def __init__(self, clients: TableSource, blobs: BlobStore | None = None) -> None:
        """Built once per process (:class:`corpus.app.runtime.Runtime`); ``blobs`` reads the
        training sets' manifests (see :class:`~corpus.store.trainsets_table.TrainsetStore`)."""
        self.sets = SetsTable(clients.table_client(TABLE_SETS))
        self.images = ImagesTable(clients.table_client(TABLE_IMAGES))
        self.transforms = TransformsTable(clients.table_client(TABLE_TRANSFORMS))
        self.rejections = RejectionsTable(clients.table_client(TABLE_REJECTIONS))
        self.failures = FailuresTable(clients.table_client(TABLE_FAILURES))
        self.redrives = RedrivesTable(clients.table_client(TABLE_REDRIVES))
        self.validations = ValidationsTable(clients.table_client(TABLE_VALIDATIONS))
        self.dupes = DupesTable(clients.table_client(TABLE_DUPES))
        # Training sets, models and lineage: built here once, not per call.
        self.training = TrainsetStore(clients, blobs)
        self._written: dict[tuple[str, str], _Written] = {}
        self._written_lock = threading.Lock()

    # The two steps of group commit (corpus.store.groupcommit.Committer).

    def record_images(self, ref: SetRef, records: list[ImageRow], transform: Transform | None = None) -> list[bool]:
        """Record (and count) images exactly once; for transformed images first mark their sources
        (:meth:`mark_sources`), so that a recorded image always has its markers: a delivery that
        dies in between finds the image unrecorded and marks again (a no-op), then records it."""
        if transform is not None:
            self.mark_sources(ref, transform, [r.source for r in records])
        return self.images.record_many(ref, records, transform)

    def mark_sources(self, ref: SetRef, transform: Transform, sources: list[str]) -> int:
        """Count the source originals (blob names in ``ref``) of ``transform``'s outputs under each
        of its :meth:`~corpus.store.rows.TransformRow.source_keys`, each once ever."""
        row = self.transforms.registered(*transform)
        if row is None:
            raise NotFoundError(f"transform {transform[0]}:{transform[1]} is not registered")
        prefix = ref.original_prefix()
        files = [s[len(prefix) :] for s in sources if s.startswith(prefix)]
        return sum(self.images.mark_sources(ref, what, files) for what in row.source_keys())

    def refresh_counts(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]:
        """Copy the exact count into the set's entity, never lowering it; see the module doc."""
        rk = keys.set_row_key(ref, transform)
        table = self.sets.table
        key = (ref.domain, rk)
        with self._written_lock:
            known = self._written.get(key)
        for attempt in range(MAX_ATTEMPTS):
            images, total = self.images.count(ref, transform)
            if known is not None and known.counts >= (images, total):
                return images, total  # stored counts never shrink: at least what this process saw
            if known is None:
                entity = table.get_entity(ref.domain, rk)
                known = _Written(ImageSetRow.counts_of(entity), str(entity.metadata["etag"]))
                self._remember(key, known)
                if known.counts >= (images, total):
                    return images, total
            try:
                reply = table.update_entity(
                    ImageSetRow.counts_entity(ref.domain, rk, images, total),
                    mode=UpdateMode.MERGE,
                    etag=known.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                etag = reply.get("etag") if isinstance(reply, dict) else None
                self._remember(key, _Written((images, total), str(etag)) if etag else None)
                return images, total
            except ResourceModifiedError:
                known = None  # another writer changed it: read it again
                self._remember(key, None)
                backoff(attempt)
        raise RuntimeError(f"ImageCount of {ref.path!r} at version {ref.version!r} stayed contended; retry")

    def _remember(self, key: tuple[str, str], written: _Written | None) -> None:
        with self._written_lock:
            if written is None:
                self._written.pop(key, None)
            else:
                self._written[key] = written

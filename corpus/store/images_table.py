"""Table ``Images``: per-image records and the counter shards of each set, exactly once.

A copy message can run twice, or twice at once. Counting "+1 per run" would over-count, and a
read-modify-write of one counter would lose updates under concurrency. So each image is recorded
once, by an insert-only row in the ``Images`` table, *in the same entity-group transaction* as
the increment of a counter row in the same partition (the set's partition). The insert fails if
the image was already counted, the conditional counter update fails if another writer got there
first; either way nothing is half-applied, and the loop retries or stops.

Counters are sharded (:data:`SHARDS` rows) so that a few dozen concurrent copies into one set
rarely contend: a single record picks its shard by a hash of the file name, a batch by this
process's own shard (:attr:`ImagesTable.batch_shard`), so two instances committing batches into
the same set collide only when they drew the same shard. Counts are ``Edm.Int64``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from corpus.domain import keys
from corpus.domain.display import md5_shown
from corpus.domain.errors import ConflictError
from corpus.domain.paths import SetRef
from corpus.store import egt
from corpus.store.rows import RECORDED, SCHEMA, CounterRow, ImageRow, SourceMarkerRow, Transform, facts_properties, schema_of
from corpus.store.tables import MAX_ATTEMPTS, backoff, entity_or_none, first_page, if_match, if_unchanged

SHARDS = 16
MAX_MARKERS = 99
"""Source markers per transaction: 99 inserts and one counter step make Azure's 100."""

MAX_KEPT_SHARDS = 4096
"""Counter shards whose last written value and ETag a process keeps (~100 bytes each)."""

IMAGES_FROM = keys.after(keys.SEPARATOR)
"""Counter rows (``!count!NN``) sort below every escaped file name; image rows are ``>= '"'``."""


class ImagesTable:
    def __init__(self, table: TableClient) -> None:
        self.table = table
        self.batch_shard = keys.counter_row_key(random.randrange(SHARDS))  # noqa: S311 - load spreading per process
        self._shards: dict[tuple[str, str], tuple[CounterRow, str]] = {}
        """(partition, shard) -> the value and ETag this process last wrote there (see :meth:`_transact`)."""

    def get(self, ref: SetRef, file: str, transform: Transform | None = None) -> ImageRow | None:
        try:
            entity = self.table.get_entity(keys.image_partition_key(ref, transform), keys.image_row_key(file))
        except ResourceNotFoundError:
            return None
        return ImageRow.from_entity(entity)

    def record(self, ref: SetRef, record: ImageRow, transform: Transform | None = None) -> bool:
        """Record one image and count it, exactly once. True if this call counted it."""
        pk = keys.image_partition_key(ref, transform)
        rk = keys.image_row_key(record.file)
        shard_key = keys.counter_row_key(zlib.crc32(rk.encode()) % SHARDS)
        for attempt in range(MAX_ATTEMPTS):
            try:
                self._transact([("create", record.to_entity(pk))], pk, shard_key, 1, record.size)
                return True
            except TableTransactionError:
                existing = self.get(ref, record.file, transform)
                if existing is not None:
                    if existing.md5 != record.md5:
                        raise ConflictError(
                            f"{record.blob} is recorded with MD5 {md5_shown(existing.md5)}, not {md5_shown(record.md5)}"
                        ) from None
                    return False
                backoff(attempt)  # lost the race for the counter shard: try again
        raise RuntimeError(f"could not record {record.blob}: counter contention did not resolve")

    def record_many(self, ref: SetRef, records: list[ImageRow], transform: Transform | None = None) -> list[bool]:
        """Record several images of one set in one transaction; fall back to one by one.

        The batch path is the common case (new images, one writer per partition in this
        process). A counter race with another instance retries the batch as a batch; anything
        else (a duplicate delivery, two deliveries of one file in the same batch) falls back to
        :meth:`record`, which sorts out each image on its own with the same exactly-once guarantee.
        """
        if len(records) == 1 or len({r.file for r in records}) != len(records):
            return self._one_by_one(ref, records, transform)
        pk = keys.image_partition_key(ref, transform)
        n = len(records)
        for attempt in range(8):
            ops: list[Any] = [("create", r.to_entity(pk)) for r in records]
            try:
                # lean: a failure is replayed through the SDK for its typed error
                self._transact(ops, pk, self.batch_shard, n, sum(r.size for r in records), lean=True)
                return [True] * n
            except TableTransactionError as exc:
                if exc.index == n:  # only the counter step failed: another writer raced us for the shard
                    backoff(attempt)
                    continue
                break
        return self._one_by_one(ref, records, transform)

    def _one_by_one(self, ref: SetRef, records: list[ImageRow], transform: Transform | None) -> list[bool]:
        """:meth:`record` each image; one that fails does not stop the others being recorded (the
        first error is raised after all were tried, so their retries find them done)."""
        results: list[bool] = []
        first: Exception | None = None
        for r in records:
            try:
                results.append(self.record(ref, r, transform))
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others
                first = first or exc
                results.append(False)
        if first is not None:
            raise first
        return results

    def _transact(self, ops: list[Any], pk: str, shard_key: str, n: int, size: int, lean: bool = False) -> None:
        """Submit ``ops`` and the step adding ``n`` images of ``size`` bytes to counter shard
        ``(pk, shard_key)`` as one transaction; raises :class:`TableTransactionError` (the counter
        step is at index ``len(ops)``).

        The counter step creates the shard, or replaces it only if nobody changed it since it was
        read: read from the table, or taken from :attr:`_shards`, the value and ETag this process
        last wrote to it (the transaction's reply carries the new ETag), which saves a read per
        commit while this process is the shard's only writer. A kept ETag that another writer has
        made stale fails the counter step like a stale read would; it is then forgotten, and the
        caller's retry reads the shard again. Any failure forgets it (a commit whose reply was lost
        may have been applied)."""
        key = (pk, shard_key)
        kept = self._shards.get(key)
        if kept is not None:
            counter = CounterRow(pk, shard_key, kept[0].count + n, kept[0].bytes + size)
            step: tuple[Any, ...] = ("update", counter.to_entity(), if_match(kept[1]))
        else:
            entity = entity_or_none(self.table, pk, shard_key)
            if entity is None:
                counter = CounterRow(pk, shard_key, n, size)
                step = ("create", counter.to_entity())
            else:
                shard = CounterRow.from_entity(entity)
                counter = CounterRow(pk, shard_key, shard.count + n, shard.bytes + size)
                step = ("update", counter.to_entity(), if_unchanged(entity))
        try:
            replies = egt.submit(self.table, [*ops, step]) if lean else self.table.submit_transaction([*ops, step])
        except BaseException:
            self._shards.pop(key, None)
            raise
        etag = replies[-1].get("etag") if replies and len(replies) == len(ops) + 1 else None
        if not etag:
            self._shards.pop(key, None)
            return
        if len(self._shards) >= MAX_KEPT_SHARDS and key not in self._shards:
            self._shards.clear()
        self._shards[key] = (counter, str(etag))

    def mark_sources(self, ref: SetRef, what: str, files: list[str]) -> int:
        """Count ``files`` (originals of set ``ref``) as sources of ``what`` (an operation or a
        transform label), each once ever: an insert-only marker row per (set, what, file) in the
        same transaction as the increment of a counter shard of its partition
        (:func:`corpus.domain.keys.source_partition_key`), exactly as :meth:`record` counts images.
        A duplicate delivery, a second transform version with the same operation, or two writers
        at once find the marker there and add nothing. Returns how many were new.

        One transaction per 99 new markers (the batch path); any marker already there sends the
        batch one by one."""
        pk = keys.source_partition_key(ref, what)
        todo = sorted(set(files))
        added = 0
        for i in range(0, len(todo), MAX_MARKERS):
            chunk = todo[i : i + MAX_MARKERS]
            added += self._mark_batch(pk, chunk) if len(chunk) > 1 else self._mark_one(pk, chunk[0])
        return added

    def _mark_batch(self, pk: str, files: list[str]) -> int:
        n = len(files)
        for attempt in range(8):
            ops: list[Any] = [("create", SourceMarkerRow(pk, keys.image_row_key(f)).to_entity()) for f in files]
            try:
                self._transact(ops, pk, self.batch_shard, n, 0)
                return n
            except TableTransactionError as exc:
                if exc.index == n:  # only the counter step failed: another writer raced us for the shard
                    backoff(attempt)
                    continue
                break
        return sum(self._mark_one(pk, f) for f in files)

    def _mark_one(self, pk: str, file: str) -> int:
        rk = keys.image_row_key(file)
        shard_key = keys.counter_row_key(zlib.crc32(rk.encode()) % SHARDS)
        for attempt in range(MAX_ATTEMPTS):
            try:
                self._transact([("create", SourceMarkerRow(pk, rk).to_entity())], pk, shard_key, 1, 0)
                return 1
            except TableTransactionError:
                try:
                    self.table.get_entity(pk, rk, select=["RowKey"])
                    return 0  # counted before
                except ResourceNotFoundError:
                    backoff(attempt)  # lost the race for the counter shard: try again
        raise RuntimeError(f"could not mark {file} in {pk}: counter contention did not resolve")

    def sources_count(self, ref: SetRef, what: str) -> int:
        """How many distinct originals of ``ref`` have an output of ``what``: one counter query."""
        return self._count(keys.source_partition_key(ref, what))[0]

    def count(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]:
        """(images, bytes) of a set, summed from its counter shards: exact, not cached."""
        return self._count(keys.image_partition_key(ref, transform))

    def _count(self, pk: str) -> tuple[int, int]:
        lo = keys.COUNTER_PREFIX
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": lo, "hi": lo[:-1] + '"'},
            select=["PartitionKey", "RowKey", "Count", "Bytes"],
        )
        images = total = 0
        for entity in rows:
            shard = CounterRow.from_entity(entity)
            images += shard.count
            total += shard.bytes
        return images, total

    def add_facts(self, ref: SetRef, image: ImageRow, transform: Transform | None = None) -> None:
        """Merge ``image``'s facts and cluster into its existing record (``corpus reindex --facts``).

        A rewrite of an existing row (:meth:`rewrite`, which keeps its insert time in ``Recorded``):
        the facts are a pure function of the immutable bytes (and the cluster is decided once,
        insert-only, in ``Duplicates``), so writing them twice, or racing another backfill, writes
        the same values. A record that is gone raises ``ResourceNotFoundError``, as before."""
        pk, rk = keys.image_partition_key(ref, transform), keys.image_row_key(image.file)
        if not self.rewrite(pk, rk, facts_properties(image.facts, image.cluster)):
            raise ResourceNotFoundError(f"no image record {pk}/{rk}")

    def rewrite(self, pk: str, rk: str, properties: dict[str, Any]) -> bool:
        """MERGE ``properties`` into an existing ``Images`` row, keeping its insert time: the one way
        an ``Images`` row is written after its insert. Returns False if the row is gone.

        Readers that need "inserted by time T" (a training set's snapshot,
        :func:`corpus.store.trainsets_table.snapshot_images`; the catalog sync's watermark) cannot
        use the service ``Timestamp`` of a rewritten row (it is the time of the rewrite), so the
        row is read first and written, ``If-Match`` its ETag, with ``Recorded`` = its ``Recorded``
        if it has one, else its current ``Timestamp``, which is then still its insert time. Any
        number of rewrites, concurrent or retried, keep the first insert time: a write that lost the
        ``If-Match`` race reads the row again (now carrying ``Recorded``) and retries."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                entity = self.table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return False
            recorded = entity.get(RECORDED) or entity.metadata["timestamp"]
            try:
                self.table.update_entity(
                    {"PartitionKey": pk, "RowKey": rk, **properties, RECORDED: recorded},
                    mode=UpdateMode.MERGE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return True
            except ResourceNotFoundError:
                return False
            except ResourceModifiedError:
                backoff(attempt)  # another rewriter got there first: read its write and keep its Recorded
        raise RuntimeError(f"image record {pk}/{rk} stayed contended for {MAX_ATTEMPTS} attempts; run again")

    def iter(self, ref: SetRef, transform: Transform | None = None) -> Iterator[ImageRow]:
        """Every image record of a set (its partition, counters excluded), in row-key order."""
        for _, row in self.iter_after(ref, transform=transform):
            yield row

    def page(
        self, ref: SetRef, transform: Transform | None, limit: int, continuation: dict[str, Any] | None = None
    ) -> tuple[list[ImageRow], str | None]:
        """One page of a set's image records in row-key order, and the next page's token (None: last).

        Counter rows (``!count!NN``) sort before every escaped file name, so the range starts after them.
        """
        pk = keys.image_partition_key(ref, transform)
        found = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo", parameters={"pk": pk, "lo": IMAGES_FROM}, results_per_page=limit
        )
        entities, token = first_page(found.by_page(continuation_token=continuation))  # type: ignore[arg-type]  # the Tables SDK's token is a dict
        return [ImageRow.from_entity(e) for e in entities], token

    def derived_from(self, ref: SetRef, transform: Transform, files: list[str]) -> dict[str, ImageRow]:
        """The records of ``transform``'s set whose sources are ``files`` of the original set, by source blob.

        A transformed image is named ``file`` or ``file`` + extension
        (:func:`corpus.domain.transforms.output_name`), so its escaped row key starts with the
        escaped ``file``: one range query covers a page, from the first file to just past the last
        (``~~`` sorts after every continuation of an escaped key). Hashed keys of very long names may
        fall outside the range: those images simply show a preview instead.
        """
        if not files:
            return {}
        escaped = sorted(keys.image_row_key(f) for f in files)
        wanted = {ref.original_prefix() + f for f in files}
        found = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": keys.image_partition_key(ref, transform), "lo": escaped[0], "hi": escaped[-1] + "~~"},
        )
        out: dict[str, ImageRow] = {}
        for entity in found:
            row = ImageRow.from_entity(entity)
            if row.source in wanted:
                out[row.source] = row
        return out

    def pages_below(
        self, ref: SetRef, transform: Transform | None, schema: int, page: int = 1000
    ) -> Iterator[list[tuple[str, ImageRow]]]:
        """A set's image records written at a schema version below ``schema``, a page of the
        partition at a time (a page may be empty: its rows are up to date). Filtered here, not by
        the service: rows written before versions existed have no ``Schema`` property, and a
        comparison with a missing property is false on Azure."""
        pk = keys.image_partition_key(ref, transform)
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo", parameters={"pk": pk, "lo": IMAGES_FROM}, results_per_page=page
        )
        for entities in rows.by_page():
            yield [(str(e["RowKey"]), ImageRow.from_entity(e)) for e in entities if schema_of(e) < schema]

    def stamp_schema(self, ref: SetRef, transform: Transform | None, row_keys: list[str], schema: int) -> int:
        """Set ``Schema`` to ``schema`` on these records (MERGE through :meth:`rewrite`, which keeps
        each row's insert time in ``Recorded``; nothing else changes); a record that is gone is
        skipped. Returns how many were stamped. A read and a conditional write per row: a batch
        could not carry each row's own ``Recorded`` without reading it first anyway."""
        pk = keys.image_partition_key(ref, transform)
        return sum(self.rewrite(pk, rk, {SCHEMA: schema}) for rk in row_keys)

    def iter_after(
        self, ref: SetRef, after: str = "", page: int = 1000, transform: Transform | None = None
    ) -> Iterator[tuple[str, ImageRow]]:
        """(row key, record) of a set's images with row keys above ``after``, in key order, read
        ``page`` rows per request (a fan-out page reads no more than it needs). The key range starts
        at :data:`IMAGES_FROM`, so counter rows are never read."""
        pk = keys.image_partition_key(ref, transform)
        rows = self.table.query_entities(
            "PartitionKey eq @pk and RowKey gt @lo",
            parameters={"pk": pk, "lo": max(after, IMAGES_FROM)},
            results_per_page=page,
        )
        for entity in rows:
            yield str(entity["RowKey"]), ImageRow.from_entity(entity)

"""Metadata in Table Storage: image sets, per-image records, exact counts, rejections, failures.

Exact counts under at-least-once delivery
-----------------------------------------
A copy message can run twice, or twice at once. Counting "+1 per run" would over-count, and a
read-modify-write of one counter would lose updates under concurrency. So each image is recorded
once, by an insert-only row in the ``Images`` table, *in the same entity-group transaction* as
the increment of a counter row in the same partition (the set's partition). The insert fails if
the image was already counted, the conditional counter update fails if another writer got there
first; either way nothing is half-applied, and the loop retries or stops.

Counters are sharded (:data:`SHARDS` rows, picked by a hash of the file name) so that a few dozen
concurrent copies into one set rarely contend. The set's ``ImageCount``/``TotalBytes`` in
``ImageSets`` is then *derived*: the shards are summed and written only if larger than what is
stored (counts only grow, as versions are immutable), with an ETag condition. Whichever writer
runs last after the last insert writes the exact total; a crash between the two steps is
repaired by the redelivery, which re-runs the derivation.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from . import keys
from .paths import SetRef
from .settings import TABLE_FAILURES, TABLE_IMAGES, TABLE_REJECTIONS, TABLE_SETS, TABLE_TRANSFORMS
from .storage import Clients
from .tags import matches

SHARDS = 16
MAX_ATTEMPTS = 200

Transform = tuple[str, str]
"""(name, version) of a transform; ``None`` stands for originals."""


class ConflictError(Exception):
    """The same image name was already recorded with different content."""


class TransformConflictError(Exception):
    """A transform (name, version) already registered with different arguments."""


def now() -> datetime:
    return datetime.now(UTC)


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** min(attempt, 6))))  # noqa: S311 - jitter


def _if_unchanged(entity: Any) -> dict[str, Any]:
    """Transaction options: replace ``entity`` only if nobody changed it since we read it."""
    return {"mode": UpdateMode.REPLACE, "etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified}


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What is known of one stored image: enough to verify it and to count it."""

    file: str
    blob: str
    size: int
    md5: str
    content_type: str
    width: int
    height: int
    source: str = ""

    def entity(self, pk: str) -> dict[str, Any]:
        return {
            "PartitionKey": pk,
            "RowKey": keys.image_row_key(self.file),
            "File": self.file,
            "BlobPath": self.blob,
            "Size": self.size,
            "MD5": self.md5,
            "ContentType": self.content_type,
            "Width": self.width,
            "Height": self.height,
            "Source": self.source,
            "CreatedAt": now(),
        }


class Catalog:
    """All table reads and writes; callers never build keys or entities themselves."""

    def __init__(self, clients: Clients) -> None:
        self._sets = clients.table_client(TABLE_SETS)
        self._images = clients.table_client(TABLE_IMAGES)
        self._rejections = clients.table_client(TABLE_REJECTIONS)
        self._failures = clients.table_client(TABLE_FAILURES)
        self._transforms = clients.table_client(TABLE_TRANSFORMS)
        self._known_sets: set[tuple[str, str]] = set()

    # -- image sets -------------------------------------------------------------------------

    def ensure_set(
        self,
        ref: SetRef,
        tags: list[str],
        blob_prefix: str,
        transform: Transform | None = None,
        transform_keys: tuple[str, str] = ("", ""),
    ) -> None:
        """Create the set's entity if it does not exist yet; an existing one is left alone.

        Every field written here is a function of the set's identity, so "create if missing" is
        an upsert that can't regress counts another writer has already raised.
        """
        rk = keys.set_row_key(ref, transform)
        if (ref.domain, rk) in self._known_sets:
            return
        stamp = now()
        entity = {
            "PartitionKey": ref.domain,
            "RowKey": rk,
            "Domain": ref.domain,
            "Path": ref.path,
            "Version": ref.version,
            "Tags": json.dumps(tags, ensure_ascii=False),
            "BlobPath": blob_prefix,
            "Transform": f"{transform[0]}:{transform[1]}" if transform else "",
            "TransformPartitionKey": transform_keys[0],
            "TransformRowKey": transform_keys[1],
            "ImagesPartitionKey": keys.image_partition_key(ref, transform),
            "ImageCount": 0,
            "TotalBytes": 0,
            "CreatedAt": stamp,
            "UpdatedAt": stamp,
        }
        try:
            self._sets.create_entity(entity)
        except ResourceExistsError:
            pass
        self._known_sets.add((ref.domain, rk))

    def get_set(self, ref: SetRef, transform: Transform | None = None) -> dict[str, Any] | None:
        try:
            return dict(self._sets.get_entity(ref.domain, keys.set_row_key(ref, transform)))
        except ResourceNotFoundError:
            return None

    def list_sets(
        self,
        domain: str | None = None,
        tags: tuple[str, ...] = (),
        transform: str | None = None,
        version: str | None = None,
        originals_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Sets, optionally of one domain, carrying every tag, of one transform (``NAME[:VER]``)."""
        clauses, params = [], {}
        if domain:
            clauses.append("PartitionKey eq @pk")
            params["pk"] = domain
        lo = hi = None
        if originals_only:
            lo, hi = "o!", 'o"'
        elif transform:
            name, _, tversion = transform.partition(":")
            lo = "t!" + keys.escape(name) + "!" + (keys.escape(tversion) + "!" if tversion else "")
            hi = lo[:-1] + '"'
        if lo:
            clauses.append("RowKey ge @lo and RowKey lt @hi")
            params.update(lo=lo, hi=hi)
        if version:
            clauses.append("Version eq @version")
            params["version"] = version
        if clauses:
            rows = self._sets.query_entities(" and ".join(clauses), parameters=params)
        else:
            rows = self._sets.list_entities()
        out = [dict(r) for r in rows]
        if tags:
            out = [r for r in out if matches(json.loads(r.get("Tags") or "[]"), tags)]
        return sorted(out, key=lambda r: (r["Domain"], r.get("Transform", ""), r["Path"], r["Version"]))

    # -- images and exact counts ------------------------------------------------------------

    def get_image(self, ref: SetRef, file: str, transform: Transform | None = None) -> dict[str, Any] | None:
        try:
            return dict(self._images.get_entity(keys.image_partition_key(ref, transform), keys.image_row_key(file)))
        except ResourceNotFoundError:
            return None

    def record_image(self, ref: SetRef, record: ImageRecord, transform: Transform | None = None) -> bool:
        """Record one image and count it, exactly once. True if this call counted it."""
        pk = keys.image_partition_key(ref, transform)
        rk = keys.image_row_key(record.file)
        shard_key = keys.counter_row_key(zlib.crc32(rk.encode()) % SHARDS)
        for attempt in range(MAX_ATTEMPTS):
            ops: list[Any] = [("create", record.entity(pk)), self._counter_op(pk, shard_key, 1, record.size)]
            try:
                self._images.submit_transaction(ops)
                return True
            except TableTransactionError:
                existing = self.get_image(ref, record.file, transform)
                if existing is not None:
                    if existing["MD5"] != record.md5:
                        raise ConflictError(f"{record.blob} is recorded with MD5 {existing['MD5']}, not {record.md5}") from None
                    return False
                _backoff(attempt)  # lost the race for the counter shard: try again
        raise RuntimeError(f"could not record {record.blob}: counter contention did not resolve")

    def record_images(self, ref: SetRef, records: list[ImageRecord], transform: Transform | None = None) -> list[bool]:
        """Record several images of one set in one transaction; fall back to one by one.

        The batch path is the common case (new images, one writer per partition in this
        process). Any failure (a duplicate delivery, two deliveries of one file in the same
        batch, a counter race with another instance) falls back to :meth:`record_image`, which
        sorts out each image on its own with the same exactly-once guarantee.
        """
        if len(records) == 1 or len({r.file for r in records}) != len(records):
            return [self.record_image(ref, r, transform) for r in records]
        pk = keys.image_partition_key(ref, transform)
        shard_key = keys.counter_row_key(random.randrange(SHARDS))  # noqa: S311 - load spreading
        n = len(records)
        ops: list[Any] = [("create", r.entity(pk)) for r in records]
        ops.append(self._counter_op(pk, shard_key, n, sum(r.size for r in records)))
        try:
            self._images.submit_transaction(ops)
            return [True] * n
        except TableTransactionError:
            return [self.record_image(ref, r, transform) for r in records]

    def _counter_op(self, pk: str, shard_key: str, n: int, size: int) -> tuple[Any, ...]:
        """The transaction step adding ``n`` images of ``size`` bytes to a counter shard: create it,
        or replace it only if nobody changed it since this read (else the transaction fails)."""
        try:
            shard = self._images.get_entity(pk, shard_key)
        except ResourceNotFoundError:
            return ("create", {"PartitionKey": pk, "RowKey": shard_key, "Count": n, "Bytes": size})
        counter = {"PartitionKey": pk, "RowKey": shard_key, "Count": shard["Count"] + n, "Bytes": shard["Bytes"] + size}
        return ("update", counter, _if_unchanged(shard))

    def count(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]:
        """(images, bytes) of a set, summed from its counter shards: exact, not cached."""
        pk = keys.image_partition_key(ref, transform)
        lo = keys.COUNTER_PREFIX
        rows = self._images.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": lo, "hi": lo[:-1] + '"'},
            select=["Count", "Bytes"],
        )
        images = total = 0
        for row in rows:
            images += int(row["Count"])
            total += int(row["Bytes"])
        return images, total

    def refresh_counts(self, ref: SetRef, transform: Transform | None = None) -> tuple[int, int]:
        """Copy the exact count into the set's entity, never lowering it; see the module doc."""
        rk = keys.set_row_key(ref, transform)
        for attempt in range(MAX_ATTEMPTS):
            images, total = self.count(ref, transform)
            entity = self._sets.get_entity(ref.domain, rk)
            if (entity.get("ImageCount", 0), entity.get("TotalBytes", 0)) >= (images, total):
                return images, total
            try:
                self._sets.update_entity(
                    {"PartitionKey": ref.domain, "RowKey": rk, "ImageCount": images, "TotalBytes": total, "UpdatedAt": now()},
                    mode=UpdateMode.MERGE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return images, total
            except ResourceModifiedError:
                _backoff(attempt)
        raise RuntimeError(f"ImageCount of {ref.path!r} at version {ref.version!r} stayed contended; retry")

    def iter_images(self, ref: SetRef, transform: Transform | None = None) -> Iterator[dict[str, Any]]:
        pk = keys.image_partition_key(ref, transform)
        for row in self._images.query_entities("PartitionKey eq @pk", parameters={"pk": pk}):
            if not row["RowKey"].startswith(keys.COUNTER_PREFIX):
                yield dict(row)

    # -- transforms ---------------------------------------------------------------------------

    def register_transform(self, name: str, tversion: str, canonical_args: str) -> tuple[str, str]:
        """Record (name, version) with its canonical arguments, once; refuse different arguments.

        Returns the entity's (PartitionKey, RowKey), which transformed sets link to.
        """
        pk, rk = keys.transform_keys(name, tversion)
        try:
            self._transforms.create_entity(
                {"PartitionKey": pk, "RowKey": rk, "Name": name, "Version": tversion, "Args": canonical_args, "CreatedAt": now()}
            )
        except ResourceExistsError:
            existing = self._transforms.get_entity(pk, rk)
            if existing["Args"] != canonical_args:
                raise TransformConflictError(
                    f"transform {name}:{tversion} already exists with {existing['Args']}, not {canonical_args}; "
                    "a transform version is immutable: use a new version"
                ) from None
        return pk, rk

    # -- rejections and failures ------------------------------------------------------------

    def record_rejection(self, kind: str, name: str, reason: str, size: int, etag: str, kept_as: str) -> None:
        """Upsert: the latest rejection of a staged name is the one that matters to its owner."""
        self._rejections.upsert_entity(
            {
                "PartitionKey": kind,
                "RowKey": keys.escape(name),
                "Name": name,
                "Reason": reason[:16000],
                "Size": size,
                "ETag": etag,
                "KeptAs": kept_as,
                "At": now(),
            },
            mode=UpdateMode.REPLACE,
        )

    def list_rejections(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows = (
            self._rejections.query_entities("PartitionKey eq @k", parameters={"k": kind})
            if kind
            else self._rejections.list_entities()
        )
        return sorted((dict(r) for r in rows), key=lambda r: r["At"])

    def record_failure(self, source: str, key: str, reason: str, attempts: int, final: bool, body: str) -> None:
        self._failures.upsert_entity(
            {
                "PartitionKey": keys.escape(source),
                "RowKey": keys.escape(key),
                "Source": source,
                "Key": key,
                "Reason": reason[:16000],
                "Attempts": attempts,
                "Final": final,
                "Body": body[:16000],
                "At": now(),
            },
            mode=UpdateMode.REPLACE,
        )

    def clear_failure(self, source: str, key: str) -> None:
        self._failures.delete_entity(keys.escape(source), keys.escape(key))

    def list_failures(self, final_only: bool = True) -> list[dict[str, Any]]:
        rows = self._failures.query_entities("Final eq true") if final_only else self._failures.list_entities()
        return sorted((dict(r) for r in rows), key=lambda r: r["At"])

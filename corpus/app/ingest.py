"""Ingest: a staged blob becomes an immutable original, recorded in its image set, exactly once.

:func:`on_staged_blob` (the blob trigger) classifies the blob by name and content. Junk is removed
and counted; anything else that can't be ingested is moved to the rejected container with its
reason; a good image is then handed on, as ``CORPUS_INGEST`` says:

* ``direct`` (default): the trigger runs the copy step itself with the verdict it holds in memory
  (:func:`ingest_validated`): nothing is written between validation and copy, so no
  ``Validations`` row, no copy request and no queue hop (issue 26).
* ``queued``: the verdict is written as a ``Validations`` row and a :class:`CopyRequest` queued;
  :func:`on_copy_request` (queue trigger, throttled by the queue's batch settings) reads the row
  and runs the same copy step. The queue is consumed in both modes (a backlog queued before a
  switch to ``direct`` still drains).

The copy step: server-side copy into ``original/`` (never over an existing blob) of exactly the
validated bytes (source ETag, MD5), record and count the image, and only then delete the staged
blob, conditionally on the ETag that was validated. Every step is conditional or insert-only, so
a delivery run twice, concurrently, or killed half-way and run again gives the same result
whichever process runs it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from corpus.app.dupes import index_original
from corpus.app.progress import INGESTED
from corpus.app.runtime import Runtime
from corpus.domain.display import md5_shown
from corpus.domain.errors import (
    BlobExists,
    BlobNotFound,
    ConflictError,
    CopyFailed,
    ImageError,
    InvalidNameError,
    MessageError,
    PreconditionFailed,
    SourceChanged,
)
from corpus.domain.images import inspect
from corpus.domain.limits import MAX_COPY_SOURCE_URL
from corpus.domain.messages import CopyRequest
from corpus.domain.paths import (
    DOT_SEGMENT_REASON,
    StagedName,
    check_copy_source,
    has_dot_segment,
    is_junk_file,
    parse_staged_name,
)
from corpus.domain.tags import tags_for
from corpus.store.ports import BlobStore, CopyState, Expected
from corpus.store.rows import REJECT_INVALID, REJECT_JUNK, ImageRow, RejectionRow, ValidationRow, bare_etag

log = logging.getLogger("corpus.ingest")


class StagedOutcome(StrEnum):
    """What the blob trigger did with one staged blob."""

    QUEUED = "queued"  # CORPUS_INGEST=queued: validated, copy request sent
    COPIED = "copied"  # direct: copied, recorded and cleared by this delivery
    EXISTS = "exists"  # direct: an earlier or concurrent delivery had copied it (recorded, cleared)
    CONFLICT = "conflict"  # direct: original/ holds other bytes under this name: rejected with a reason
    JUNK = "junk"
    REJECTED = "rejected"
    GONE = "gone"
    SUPERSEDED = "superseded"


class CopyOutcome(StrEnum):
    """What one copy request did."""

    COPIED = "copied"
    EXISTS = "exists"
    CONFLICT = "conflict"
    SUPERSEDED = "superseded"
    SOURCE_GONE = "source-gone"


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A staged blob as the trigger delivered it."""

    name: str  # relative to the staging container
    data: bytes
    etag: str
    metadata: Mapping[str, str]
    blob_type: str = ""  # "BlockBlob", "AppendBlob", "PageBlob"; "" when the trigger did not say


def staged_from_trigger(
    trigger_name: str,
    container: str,
    data: bytes,
    properties: Mapping[str, Any] | None,
    metadata: Mapping[str, str] | None,
) -> StagedBlob:
    """Strip the container from the trigger's blob path and find the ETag among the properties.

    A blob outside ``container`` (the trigger path pins it, so that is a misconfiguration) raises
    :class:`~corpus.domain.errors.InvalidNameError`, recorded by the failure reporter like any failure.
    """
    prefix = container + "/"
    if not trigger_name.startswith(prefix):
        raise InvalidNameError(f"blob {trigger_name!r} is not in the staging container {container!r}")
    props = {k.lower(): v for k, v in (properties or {}).items()}
    etag = str(props.get("etag") or "")
    return StagedBlob(
        name=trigger_name[len(prefix) :],
        data=data,
        etag=etag,
        metadata=dict(metadata or {}),
        blob_type=blob_type(props.get("blobtype")),
    )


def blob_type(value: Any) -> str:
    """The trigger's ``BlobType`` property as the REST name; .NET may serialise its enum as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {0: "BlockBlob", 1: "PageBlob", 2: "AppendBlob"}.get(value, "")
    text = str(value or "").lower()
    return next(
        (name for key, name in (("append", "AppendBlob"), ("page", "PageBlob"), ("block", "BlockBlob")) if key in text), ""
    )


# -- step 1: the blob trigger ---------------------------------------------------------------


def on_staged_blob(rt: Runtime, blob: StagedBlob, mode: str | None = None) -> StagedOutcome:
    """Classify one staged blob and hand a good image on; return what was done (for logs and tests).

    ``mode``: ``direct`` or ``queued`` (:data:`~corpus.store.settings.INGEST_MODES`); ``None``: the
    setting ``CORPUS_INGEST``. Reconciliation passes ``queued`` (:data:`corpus.app.reconcile.REDRIVE_MODE`).
    """
    s = rt.settings
    staging = s.staging_container
    etag, kind = blob.etag, blob.blob_type
    if has_dot_segment(blob.name):
        # Before any blob request: every request by this name would reach another blob.
        reject_in_place(rt, blob.name, etag, len(blob.data))
        return StagedOutcome.REJECTED
    if not etag or not kind:
        # Some trigger sources omit properties: read the ETag, and make sure it describes the
        # bytes we were given (same length) rather than a newer upload.
        try:
            props = rt.blobs.info(staging, blob.name)
        except BlobNotFound:
            return StagedOutcome.GONE
        if props.size != len(blob.data) or (etag and bare_etag(etag) != bare_etag(props.etag)):
            return StagedOutcome.SUPERSEDED
        etag, kind = props.etag, props.blob_type

    file_name = blob.name.rsplit("/", 1)[-1]
    if blob.name.endswith("/") or is_junk_file(file_name) or not blob.data or _is_folder_marker(blob.metadata):
        reason = (
            "folder marker"
            if blob.name.endswith("/") or _is_folder_marker(blob.metadata)
            else ("empty file" if not blob.data else "operating-system junk file")
        )
        rt.catalog.rejections.record(RejectionRow(REJECT_JUNK, blob.name, reason, len(blob.data), etag))
        _delete_if_unchanged(rt.blobs, staging, blob.name, etag)
        return StagedOutcome.JUNK

    try:
        if kind != "BlockBlob":
            # An append blob copied into original/ would stay appendable: versions must be immutable.
            raise ImageError(f"{kind or 'unknown blob type'}: only block blobs are stored; upload the file as a block blob")
        staged = parse_staged_name(blob.name, reserved=s.reserved_containers)
        check_copy_source(rt.blobs.url(staging), blob.name)
        if len(blob.data) > s.max_blob_bytes:
            raise ImageError(f"file is {len(blob.data)} bytes, above CORPUS_MAX_BLOB_BYTES={s.max_blob_bytes}")
        tags = tags_for(staged.set.dirs, s.tag_extractor)  # at most MAX_TAGS_PER_SET, else rejected
        info = inspect(blob.data, s.max_pixels, admit=rt.decode_budget.hold)
    except (InvalidNameError, ImageError) as exc:
        reject(rt, blob.name, etag, len(blob.data), str(exc), data=blob.data)
        return StagedOutcome.REJECTED

    validated = ValidationRow(
        name=blob.name,
        etag=etag,
        size=len(blob.data),
        md5=hashlib.md5(blob.data, usedforsecurity=False).hexdigest(),
        content_type=info.content_type,
        width=info.width,
        height=info.height,
        format=info.format,
        facts=info.facts,
    )
    if (mode or s.ingest) == "direct":
        return StagedOutcome(ingest_validated(rt, staged, validated).value)
    rt.catalog.sets.ensure(staged.set, tags, blob_prefix=staged.set.original_prefix())
    # The verdict is recorded before the request is queued: the copy acts on this row only.
    rt.catalog.validations.record(validated)
    rt.send(s.copy_queue, CopyRequest(staged_name=blob.name, staged_etag=etag).to_json())
    return StagedOutcome.QUEUED


def _too_long_to_copy(blobs: BlobStore, container: str, name: str) -> bool:
    return len(blobs.url(container, name)) > MAX_COPY_SOURCE_URL


def _is_folder_marker(metadata: Mapping[str, str]) -> bool:
    """ADLS Gen2 and Storage Explorer mark folders with zero-byte blobs carrying ``hdi_isfolder``."""
    return any(k.lower() == "hdi_isfolder" and str(v).lower() == "true" for k, v in metadata.items())


def reject_in_place(rt: Runtime, name: str, etag: str, size: int) -> None:
    """Record a staged name with a '.' or '..' segment as rejected, and touch no blob (issue 25 R9).

    Storage clients (the SDK with a token credential, the Functions host) normalise the URL path,
    so a copy, delete or read "of" ``a/../b`` acts on ``b``: the blob stays staged, and the
    rejection (``corpus status``) says why and how to remove it. Idempotent (an upsert).
    """
    rt.catalog.rejections.record(RejectionRow(REJECT_INVALID, name, f"{name!r}: {DOT_SEGMENT_REASON}", size, etag, ""))
    log.warning("rejected staged blob %s in place: '.' or '..' segment", name)


def reject(rt: Runtime, name: str, etag: str, size: int, reason: str, data: bytes | None = None) -> None:
    """Move a staged blob to the rejected container, record why, and remove it from staging.

    ``data`` (the bytes at ``etag``, when the caller holds them) is uploaded instead of copied when
    the name's URL is too long to be a copy source (2 KiB), which may be why it is rejected.

    Order matters for at-least-once delivery: keep a copy, write the record, then delete; a crash
    at any point leaves the staged blob in place for the redelivery to finish the job.
    """
    s = rt.settings
    staging, rejected = s.staging_container, s.rejected_container
    try:
        if data is not None and _too_long_to_copy(rt.blobs, staging, name):
            rt.blobs.put(rejected, name, data)
            state = CopyState("success", "")
        else:
            state = rt.blobs.copy_over(rejected, name, source_container=staging, source_name=name, source_etag=etag)
        if state.failed:  # the next attempt overwrites it: rejected/ has no If-None-Match
            raise CopyFailed(f"server-side copy to {rejected}/{name} {state.status}: {state.why}")
    except (SourceChanged, BlobNotFound):
        log.info("staged blob %s changed or vanished before it could be rejected", name)
        return
    rt.catalog.rejections.record(RejectionRow(REJECT_INVALID, name, reason, size, etag, f"{rejected}/{name}"))
    _delete_if_unchanged(rt.blobs, staging, name, etag)
    log.warning("rejected staged blob %s: %s", name, reason)


# -- the copy step, and its queue (CORPUS_INGEST=queued, and any backlog) -------------------


def on_copy_request(rt: Runtime, req: CopyRequest) -> CopyOutcome:
    """Copy, verify, record, count, then delete the staged blob. Returns what was done.

    Only what the blob trigger validated is acted on: size, MD5, content type and dimensions come
    from its :class:`ValidationRow` for (staged name, ETag), never from the message. The row is
    deleted once the staged blob is gone (or kept in ``rejected``).
    """
    s = rt.settings
    try:
        staged_name = parse_staged_name(req.staged_name, reserved=s.reserved_containers)
    except InvalidNameError as exc:
        raise MessageError(f"copy request names no valid staged blob: {exc}") from exc
    validated = rt.catalog.validations.get(req.staged_name, req.staged_etag)
    if validated is None:
        return _unvalidated(rt, staged_name, req)
    outcome = _copy_step(rt, staged_name, validated)
    if outcome is not CopyOutcome.SUPERSEDED:
        _forget(rt, validated)  # the staged blob is gone, or kept in rejected/
    return outcome


def ingest_validated(rt: Runtime, staged_name: StagedName, validated: ValidationRow) -> CopyOutcome:
    """The copy step for a verdict held in memory (``CORPUS_INGEST=direct``): no ``Validations`` row.

    Called by the blob trigger right after it validated the bytes at ``validated.etag``; the
    verdict never leaves the process, so nothing else can forge or lose it. A redelivery (or a
    concurrent delivery) validates again and takes the same conditional steps: the copy finds the
    destination (``exists``), the insert-only record is not repeated, the delete on the ETag is a
    no-op. A delivery killed half-way leaves the staged blob (deleted last), so the host's retry,
    or failing that ``reconcile``, finishes the job.
    """
    return _copy_step(rt, staged_name, validated)


def _copy_step(rt: Runtime, staged_name: StagedName, validated: ValidationRow) -> CopyOutcome:
    """Copy, verify, record, count, then delete the staged blob; 'superseded' when the source moved on."""
    s = rt.settings
    domain, dest = staged_name.set.domain, staged_name.original_blob
    rt.ensure_container(domain)

    outcome = _ensure_original(rt.blobs, validated, s.staging_container, domain, dest)
    if outcome is CopyOutcome.CONFLICT:
        existing = rt.blobs.info(domain, dest)
        md5 = md5_shown(existing.md5) or "unknown"
        reject(
            rt,
            validated.name,
            validated.etag,
            validated.size,
            f"conflict: {staged_name.set.domain}/{staged_name.original_blob} already exists with different "
            f"content (MD5 {md5}, {existing.size} bytes); versions are immutable, upload under a new version",
        )
        return CopyOutcome.CONFLICT
    if outcome is CopyOutcome.SOURCE_GONE:
        log.info("staged blob %s changed or vanished before copy; its newer upload has its own event", validated.name)
        return CopyOutcome.SUPERSEDED

    _record(rt, staged_name, validated)
    # batched with the deletes of concurrent invocations (corpus/store/groupdelete.py)
    _delete_if_unchanged(rt.deleter, s.staging_container, validated.name, validated.etag)
    return outcome


def _unvalidated(rt: Runtime, staged: StagedName, req: CopyRequest) -> CopyOutcome:
    """A request without a validation record: done already, superseded, or never validated (refused).

    The record is deleted only after the staged blob is, so a staged blob still at the requested
    ETag with no record was never validated: the request did not come from the blob trigger.
    """
    try:
        current = bare_etag(rt.blobs.info(rt.settings.staging_container, req.staged_name).etag)
    except BlobNotFound:
        current = ""
    if current == bare_etag(req.staged_etag):
        raise MessageError(
            f"copy request for {req.staged_name!r} at ETag {req.staged_etag}: that upload was never validated "
            "(only uploads the blob trigger accepted are copied)"
        )
    done = rt.catalog.images.get(staged.set, staged.file)
    if done is not None and done.source == req.staged_name:
        return CopyOutcome.EXISTS  # an earlier delivery finished the job
    return CopyOutcome.SUPERSEDED


def _forget(rt: Runtime, validated: ValidationRow) -> None:
    """Drop the validation record once the staged blob is gone (or kept in ``rejected``)."""
    rt.catalog.validations.delete(validated.name, validated.etag)


def _record(rt: Runtime, staged: StagedName, validated: ValidationRow) -> None:
    ref = staged.set
    rt.catalog.sets.ensure(ref, tags_for(ref.dirs, rt.settings.tag_extractor), blob_prefix=ref.original_prefix())
    # The duplicate index first (idempotent), so the record, insert-only, carries the cluster.
    cluster = (
        index_original(rt.catalog.dupes, ref.domain, staged.original_blob, validated.md5, validated.facts)
        if validated.facts is not None
        else None
    )
    record = ImageRow(
        file=staged.file,
        blob=staged.original_blob,
        size=validated.size,
        md5=validated.md5,
        content_type=validated.content_type,
        width=validated.width,
        height=validated.height,
        source=validated.name,
        facts=validated.facts,
        cluster=cluster,
    )
    try:
        if rt.recorder.record(ref, record):
            INGESTED.done(f"{ref.domain}/{ref.version}")
    except ConflictError as exc:
        # The blob verified against this MD5, so the table disagrees with storage: never paper over it.
        raise CopyFailed(str(exc)) from exc


COPY_ATTEMPTS = 3
"""Server-side copies started per delivery; a failed or aborted copy is cleared and tried again."""


def _ensure_original(blobs: BlobStore, v: ValidationRow, staging: str, domain: str, dest: str) -> CopyOutcome:
    """Make ``domain/dest`` hold exactly the validated bytes; 'copied', 'exists', 'conflict' or 'source-gone'.

    Azure may finish a copy asynchronously: it creates the destination at once, and marks the copy
    ``failed`` or ``aborted`` if, say, the source changes meanwhile (the port waits for the end).
    Such a destination would block the name for good (If-None-Match: * says "exists"), so it is
    deleted, on its own ETag (never a destination that someone else has since replaced), and the
    copy started again.
    """
    for _ in range(COPY_ATTEMPTS):
        outcome = CopyOutcome.COPIED
        try:
            state = blobs.copy_once(
                domain,
                dest,
                source_container=staging,
                source_name=v.name,
                source_etag=v.etag,
                expect=Expected(v.md5, v.content_type),
            )
        except (BlobExists, SourceChanged):
            # The destination is taken, or the source moved on (perhaps because an earlier delivery
            # copied and deleted it): the destination decides.
            outcome = CopyOutcome.EXISTS
            try:
                state = blobs.wait_copy(domain, dest)
            except BlobNotFound:
                if _source_is(blobs, staging, v.name, v.etag):
                    continue  # a failed copy was cleared meanwhile: start again
                return CopyOutcome.SOURCE_GONE
        if state.failed:
            log.warning("server-side copy to %s %s (%s): clearing it to copy again", dest, state.status, state.why)
            # only if it is still that blob (If-Match): else already cleared, or replaced by another
            # delivery's copy: look again
            blobs.delete_if_unchanged(domain, dest, state.etag)
            continue
        if state.verified:
            return outcome  # Put Blob From URL: the service checked the MD5 and wrote the headers
        return _verify(blobs, domain, dest, v, created=outcome is CopyOutcome.COPIED) or outcome
    raise CopyFailed(f"server-side copy to {dest} failed {COPY_ATTEMPTS} times in a row")


def _verify(blobs: BlobStore, domain: str, dest: str, req: ValidationRow, created: bool) -> CopyOutcome | None:
    """Check length and MD5 of ``dest``; return 'conflict' when an existing blob differs.

    Concurrent deliveries may both fix up the headers; the loser's ETag condition fails, and
    it simply looks again (by then the headers are right and there is nothing left to do).
    """
    for _ in range(10):
        try:
            return _verify_once(blobs, domain, dest, req, created)
        except PreconditionFailed:
            continue
    raise CopyFailed(f"{dest} kept changing while being verified")


def _verify_once(blobs: BlobStore, domain: str, dest: str, req: ValidationRow, created: bool) -> CopyOutcome | None:
    props = blobs.info(domain, dest)
    has_md5 = bool(props.md5)
    # Block uploads (Storage Explorer, large files) carry no whole-blob MD5: computed once, only
    # when the length already matches.
    md5 = blobs.content_md5(domain, props) if has_md5 or props.size == req.size else ""
    if props.size == req.size and md5 == req.md5:
        if not has_md5 or props.content_type != req.content_type:
            blobs.set_headers_if_unchanged(domain, dest, props.etag, content_type=req.content_type, md5=req.md5)
        return None
    if created:
        # We wrote this blob and it does not match what was validated: remove our bad copy so a
        # retry can start clean, and fail loudly.
        blobs.delete_if_unchanged(domain, dest, props.etag)
        raise CopyFailed(
            f"copy of {req.name} did not verify: got {props.size} bytes MD5 {md5_shown(md5) or '-'}, "
            f"expected {req.size} bytes MD5 {md5_shown(req.md5)}"
        )
    return CopyOutcome.CONFLICT


def _source_is(blobs: BlobStore, container: str, name: str, etag: str) -> bool:
    """True if the staged blob still exists at ``etag``."""
    try:
        return bare_etag(blobs.info(container, name).etag) == bare_etag(etag)
    except BlobNotFound:
        return False


class _Deletes(Protocol):
    def delete_if_unchanged(self, container: str, name: str, etag: str) -> bool: ...


def _delete_if_unchanged(blobs: _Deletes, container: str, name: str, etag: str) -> None:
    """Delete the staged blob only if it is still the upload we processed."""
    if not blobs.delete_if_unchanged(container, name, etag):
        # Replaced by a newer upload (kept: it has its own event), or already deleted by an
        # earlier delivery.
        log.debug("staged blob %s changed or is gone; not deleting", name)

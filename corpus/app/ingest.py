"""Ingest: a staged blob becomes an immutable original, recorded in its image set, exactly once.

Two steps, each safe to run twice or concurrently on the same input:

1. :func:`on_staged_blob` (blob trigger): classify the blob by name and content. Junk is
   removed and counted; anything else that can't be ingested is moved to the rejected container
   with its reason; a good image gets its set created and a :class:`CopyRequest` queued.
2. :func:`on_copy_request` (queue trigger, throttled by the queue's batch settings): server-side
   copy into ``original/`` (never over an existing blob), verify length and MD5, record and count
   the image, and only then delete the staged blob, conditionally on the ETag that was validated.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContentSettings

from corpus.app.dupes import index_original
from corpus.app.runtime import Runtime
from corpus.domain.errors import ConflictError, CopyFailed, ImageError, InvalidNameError, MessageError
from corpus.domain.images import inspect
from corpus.domain.limits import MAX_COPY_SOURCE_URL
from corpus.domain.messages import CopyRequest
from corpus.domain.paths import StagedName, check_copy_source, is_junk_file, parse_staged_name
from corpus.domain.tags import tags_for
from corpus.store.rows import REJECT_INVALID, REJECT_JUNK, ImageRow, RejectionRow, ValidationRow, bare_etag
from corpus.store.storage import blob_md5, error_code, stored_md5

log = logging.getLogger("corpus.ingest")

COPY_DEADLINE_S = 120.0


class StagedOutcome(StrEnum):
    """What the blob trigger did with one staged blob."""

    QUEUED = "queued"
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


def on_staged_blob(rt: Runtime, blob: StagedBlob) -> StagedOutcome:
    """Classify one staged blob; return what was done (for logs and tests)."""
    s = rt.settings
    staging = rt.clients.container(s.staging_container)
    client = staging.get_blob_client(blob.name)
    etag, kind = blob.etag, blob.blob_type
    if not etag or not kind:
        # Some trigger sources omit properties: read the ETag, and make sure it describes the
        # bytes we were given (same length) rather than a newer upload.
        try:
            props = client.get_blob_properties()
        except ResourceNotFoundError:
            return StagedOutcome.GONE
        if props.size != len(blob.data) or (etag and bare_etag(etag) != bare_etag(props.etag)):
            return StagedOutcome.SUPERSEDED
        etag, kind = props.etag, blob_type(props.blob_type)

    file_name = blob.name.rsplit("/", 1)[-1]
    if blob.name.endswith("/") or is_junk_file(file_name) or not blob.data or _is_folder_marker(blob.metadata):
        reason = (
            "folder marker"
            if blob.name.endswith("/") or _is_folder_marker(blob.metadata)
            else ("empty file" if not blob.data else "operating-system junk file")
        )
        rt.catalog.rejections.record(RejectionRow(REJECT_JUNK, blob.name, reason, len(blob.data), etag))
        _delete_if_unchanged(client, etag)
        return StagedOutcome.JUNK

    try:
        if kind != "BlockBlob":
            # An append blob copied into original/ would stay appendable: versions must be immutable.
            raise ImageError(f"{kind or 'unknown blob type'}: only block blobs are stored; upload the file as a block blob")
        staged = parse_staged_name(blob.name, reserved=s.reserved_containers)
        check_copy_source(staging.url, blob.name)
        if len(blob.data) > s.max_blob_bytes:
            raise ImageError(f"file is {len(blob.data)} bytes, above CORPUS_MAX_BLOB_BYTES={s.max_blob_bytes}")
        tags = tags_for(staged.set.dirs, s.tag_extractor)  # at most MAX_TAGS_PER_SET, else rejected
        info = inspect(blob.data, s.max_pixels, admit=rt.decode_budget.hold)
    except (InvalidNameError, ImageError) as exc:
        reject(rt, blob.name, etag, len(blob.data), str(exc), data=blob.data)
        return StagedOutcome.REJECTED

    rt.catalog.sets.ensure(staged.set, tags, blob_prefix=staged.set.original_prefix())
    # The verdict is recorded before the request is queued: the copy acts on this row only.
    rt.catalog.validations.record(
        ValidationRow(
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
    )
    rt.send(s.copy_queue, CopyRequest(staged_name=blob.name, staged_etag=etag).to_json())
    return StagedOutcome.QUEUED


def _too_long_to_copy(client: BlobClient) -> bool:
    return len(client.url) > MAX_COPY_SOURCE_URL


def _is_folder_marker(metadata: Mapping[str, str]) -> bool:
    """ADLS Gen2 and Storage Explorer mark folders with zero-byte blobs carrying ``hdi_isfolder``."""
    return any(k.lower() == "hdi_isfolder" and str(v).lower() == "true" for k, v in metadata.items())


def reject(rt: Runtime, name: str, etag: str, size: int, reason: str, data: bytes | None = None) -> None:
    """Move a staged blob to the rejected container, record why, and remove it from staging.

    ``data`` (the bytes at ``etag``, when the caller holds them) is uploaded instead of copied when
    the name's URL is too long to be a copy source (2 KiB), which may be why it is rejected.

    Order matters for at-least-once delivery: keep a copy, write the record, then delete; a crash
    at any point leaves the staged blob in place for the redelivery to finish the job.
    """
    s = rt.settings
    staged = rt.clients.container(s.staging_container).get_blob_client(name)
    kept = rt.clients.container(s.rejected_container).get_blob_client(name)
    try:
        if data is not None and _too_long_to_copy(staged):
            kept.upload_blob(data, overwrite=True)
            result: Mapping[str, Any] | None = {"copy_status": "success"}
        else:
            result = kept.start_copy_from_url(
                staged.url,
                source_etag=etag,
                source_match_condition=MatchConditions.IfNotModified,
            )
        state = _wait_for_copy(kept, result)
        if state.failed:  # the next attempt overwrites it: rejected/ has no If-None-Match
            raise CopyFailed(f"server-side copy to {s.rejected_container}/{name} {state.status}: {state.why}")
    except HttpResponseError as exc:
        if _source_changed_or_gone(exc):
            log.info("staged blob %s changed or vanished before it could be rejected", name)
            return
        raise
    rt.catalog.rejections.record(RejectionRow(REJECT_INVALID, name, reason, size, etag, f"{s.rejected_container}/{name}"))
    _delete_if_unchanged(staged, etag)
    log.warning("rejected staged blob %s: %s", name, reason)


# -- step 2: the copy queue -----------------------------------------------------------------


def on_copy_request(rt: Runtime, req: CopyRequest) -> CopyOutcome:
    """Copy, verify, record, count, then delete the staged blob. Returns what was done.

    Only what the blob trigger validated is acted on: size, MD5, content type and dimensions come
    from its :class:`ValidationRow` for (staged name, ETag), never from the message.
    """
    s = rt.settings
    try:
        staged_name = parse_staged_name(req.staged_name, reserved=s.reserved_containers)
    except InvalidNameError as exc:
        raise MessageError(f"copy request names no valid staged blob: {exc}") from exc
    src = rt.clients.container(s.staging_container).get_blob_client(req.staged_name)
    validated = rt.catalog.validations.get(req.staged_name, req.staged_etag)
    if validated is None:
        return _unvalidated(rt, staged_name, req, src)
    rt.ensure_container(staged_name.set.domain)
    dest = rt.clients.container(staged_name.set.domain).get_blob_client(staged_name.original_blob)

    outcome = _ensure_original(src, dest, validated)
    if outcome is CopyOutcome.CONFLICT:
        existing = dest.get_blob_properties()
        md5 = stored_md5(existing) or "unknown"
        reject(
            rt,
            validated.name,
            validated.etag,
            validated.size,
            f"conflict: {staged_name.set.domain}/{staged_name.original_blob} already exists with different "
            f"content (MD5 {md5}, {existing.size} bytes); versions are immutable, upload under a new version",
        )
        _forget(rt, validated)
        return CopyOutcome.CONFLICT
    if outcome is CopyOutcome.SOURCE_GONE:
        log.info("staged blob %s changed or vanished before copy; its newer upload has its own event", req.staged_name)
        return CopyOutcome.SUPERSEDED

    _record(rt, staged_name, validated)
    _delete_if_unchanged(src, validated.etag)
    _forget(rt, validated)
    return outcome


def _unvalidated(rt: Runtime, staged: StagedName, req: CopyRequest, src: BlobClient) -> CopyOutcome:
    """A request without a validation record: done already, superseded, or never validated (refused).

    The record is deleted only after the staged blob is, so a staged blob still at the requested
    ETag with no record was never validated: the request did not come from the blob trigger.
    """
    try:
        current = bare_etag(src.get_blob_properties().etag)
    except ResourceNotFoundError:
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
    try:
        rt.catalog.validations.delete(validated.name, validated.etag)
    except ResourceNotFoundError:
        pass


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
        rt.recorder.record(ref, record)
    except ConflictError as exc:
        # The blob verified against this MD5, so the table disagrees with storage: never paper over it.
        raise CopyFailed(str(exc)) from exc


COPY_ATTEMPTS = 3
"""Server-side copies started per delivery; a failed or aborted copy is cleared and tried again."""


def _ensure_original(src: BlobClient, dest: BlobClient, v: ValidationRow) -> CopyOutcome:
    """Make ``dest`` hold exactly the validated bytes; 'copied', 'exists', 'conflict' or 'source-gone'.

    Azure may finish a copy asynchronously: it creates the destination at once, and marks the copy
    ``failed`` or ``aborted`` if, say, the source changes meanwhile. Such a destination would block
    the name for good (If-None-Match: * says "exists"), so it is deleted, on its own ETag (never a
    destination that someone else has since replaced), and the copy started again.
    """
    for _ in range(COPY_ATTEMPTS):
        outcome = CopyOutcome.COPIED
        try:
            result = dest.start_copy_from_url(
                src.url,
                source_etag=v.etag,
                source_match_condition=MatchConditions.IfNotModified,
                match_condition=MatchConditions.IfMissing,
            )
            state = _wait_for_copy(dest, result)
        except HttpResponseError as exc:
            # 409/412 from the destination's If-None-Match, or 412/404 from the source's If-Match
            # (Azure says SourceConditionNotMet, Azurite ConditionNotMet): the destination decides.
            if not (isinstance(exc, ResourceModifiedError) or _refused(exc)):
                raise
            outcome = CopyOutcome.EXISTS
            try:
                state = _wait_for_copy(dest, None)
            except ResourceNotFoundError:
                if _source_is(src, v.etag):
                    continue  # a failed copy was cleared meanwhile: start again
                return CopyOutcome.SOURCE_GONE
        if state.failed:
            log.warning("server-side copy to %s %s (%s): clearing it to copy again", dest.blob_name, state.status, state.why)
            _delete_failed_copy(dest, state.etag)
            continue
        return _verify(dest, v, created=outcome is CopyOutcome.COPIED) or outcome
    raise CopyFailed(f"server-side copy to {dest.blob_name} failed {COPY_ATTEMPTS} times in a row")


def _delete_failed_copy(dest: BlobClient, etag: str) -> None:
    """Delete the destination of a failed copy, only if it is still that blob (If-Match)."""
    try:
        dest.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
    except (ResourceNotFoundError, ResourceModifiedError):
        pass  # already cleared, or replaced by another delivery's copy: look again


def _verify(dest: BlobClient, req: ValidationRow, created: bool) -> CopyOutcome | None:
    """Check length and MD5 of ``dest``; return 'conflict' when an existing blob differs.

    Concurrent deliveries may both fix up the headers; the loser's ETag condition fails, and
    it simply looks again (by then the headers are right and there is nothing left to do).
    """
    for _ in range(10):
        try:
            return _verify_once(dest, req, created)
        except ResourceModifiedError:
            continue
    raise CopyFailed(f"{dest.blob_name} kept changing while being verified")


def _verify_once(dest: BlobClient, req: ValidationRow, created: bool) -> CopyOutcome | None:
    props = dest.get_blob_properties()
    has_md5 = bool(stored_md5(props))
    # Block uploads (Storage Explorer, large files) carry no whole-blob MD5: computed once, only
    # when the length already matches.
    md5 = blob_md5(dest, props) if has_md5 or props.size == req.size else ""
    if props.size == req.size and md5 == req.md5:
        if not has_md5 or props.content_settings.content_type != req.content_type:
            dest.set_http_headers(
                ContentSettings(content_type=req.content_type, content_md5=bytearray(bytes.fromhex(req.md5))),
                etag=props.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        return None
    if created:
        # We wrote this blob and it does not match what was validated: remove our bad copy so a
        # retry can start clean, and fail loudly.
        try:
            dest.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
        except HttpResponseError:
            pass
        raise CopyFailed(
            f"copy of {req.name} did not verify: got {props.size} bytes MD5 {md5 or '-'}, expected {req.size} bytes MD5 {req.md5}"
        )
    return CopyOutcome.CONFLICT


@dataclass(frozen=True, slots=True)
class CopyState:
    """How a server-side copy ended: ``success`` (or no copy at all), ``failed`` or ``aborted``."""

    status: str
    etag: str
    why: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "aborted")


def _wait_for_copy(dest: BlobClient, result: Mapping[str, Any] | None) -> CopyState:
    """Same-account copies usually finish at once; otherwise poll the destination until done.

    Returns how the copy ended; still pending after :data:`COPY_DEADLINE_S` raises :class:`CopyFailed`
    (retried by the queue). A destination that is no copy at all reads as ``success``.
    """
    if result is not None and result.get("copy_status") == "success":
        return CopyState("success", str(result.get("etag") or ""))
    deadline = time.monotonic() + COPY_DEADLINE_S
    delay = 0.05
    while True:
        props = dest.get_blob_properties()
        status = props.copy.status if props.copy else None
        if status in (None, "success", "failed", "aborted"):
            why = (props.copy.status_description if props.copy else "") or ""
            return CopyState(status or "success", props.etag, why)
        if time.monotonic() > deadline:
            raise CopyFailed(f"server-side copy to {dest.blob_name} still pending after {COPY_DEADLINE_S:.0f}s")
        time.sleep(delay)  # polling a remote copy: there is no event to wait on
        delay = min(delay * 2, 2.0)


def _refused(exc: HttpResponseError) -> bool:
    """The copy was refused by a condition, or its source is gone (not an outage)."""
    return error_code(exc) in ("BlobAlreadyExists", "ConditionNotMet") or _source_changed_or_gone(exc)


def _source_is(src: BlobClient, etag: str) -> bool:
    """True if the staged blob still exists at ``etag``."""
    try:
        return bare_etag(src.get_blob_properties().etag) == bare_etag(etag)
    except ResourceNotFoundError:
        return False


def _source_changed_or_gone(exc: HttpResponseError) -> bool:
    return error_code(exc) in ("SourceConditionNotMet", "CannotVerifyCopySource", "BlobNotFound") or (
        isinstance(exc, ResourceNotFoundError)
    )


def _delete_if_unchanged(client: BlobClient, etag: str) -> None:
    """Delete the staged blob only if it is still the upload we processed."""
    try:
        client.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
    except ResourceNotFoundError:
        pass
    except ResourceModifiedError:
        # Replaced by a newer upload (kept: it has its own event), or already deleted by an
        # earlier delivery (the emulator answers 412 rather than 404 then).
        log.debug("staged blob %s changed or is gone; not deleting", client.blob_name)

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
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobClient, ContentSettings

from .catalog import ConflictError, ImageRecord
from .images import ImageError, inspect
from .messages import CopyRequest, MessageError
from .paths import NameError_, StagedName, is_junk_file, parse_staged_name
from .runtime import Runtime
from .storage import blob_md5, error_code, stored_md5
from .tags import tags_for

log = logging.getLogger("corpus.ingest")

COPY_DEADLINE_S = 120.0

REJECT_JUNK = "junk"
REJECT_INVALID = "rejected"


class CopyFailed(RuntimeError):
    """A copy that did not verify; retried by the queue, then poisoned with this reason."""


@dataclass(frozen=True, slots=True)
class StagedBlob:
    """A staged blob as the trigger delivered it."""

    name: str  # relative to the staging container
    data: bytes
    etag: str
    metadata: Mapping[str, str]


def staged_from_trigger(
    trigger_name: str,
    container: str,
    data: bytes,
    properties: Mapping[str, Any] | None,
    metadata: Mapping[str, str] | None,
) -> StagedBlob | None:
    """Strip the container from the trigger's blob path and find the ETag among the properties.

    Returns None for a blob outside ``container`` (the trigger path pins it, so that is a
    misconfiguration and is logged by the caller).
    """
    prefix = container + "/"
    if not trigger_name.startswith(prefix):
        return None
    props = {k.lower(): v for k, v in (properties or {}).items()}
    etag = str(props.get("etag") or "")
    return StagedBlob(name=trigger_name[len(prefix) :], data=data, etag=etag, metadata=dict(metadata or {}))


# -- step 1: the blob trigger ---------------------------------------------------------------


def on_staged_blob(rt: Runtime, blob: StagedBlob) -> str:
    """Classify one staged blob; return what was done (for logs and tests)."""
    s = rt.settings
    staging = rt.clients.container(s.staging_container)
    client = staging.get_blob_client(blob.name)
    etag = blob.etag
    if not etag:
        # Some trigger sources omit properties: read the ETag, and make sure it describes the
        # bytes we were given (same length) rather than a newer upload.
        try:
            props = client.get_blob_properties()
        except ResourceNotFoundError:
            return "gone"
        if props.size != len(blob.data):
            return "superseded"
        etag = props.etag

    file_name = blob.name.rsplit("/", 1)[-1]
    if blob.name.endswith("/") or is_junk_file(file_name) or not blob.data or _is_folder_marker(blob.metadata):
        reason = (
            "folder marker"
            if blob.name.endswith("/") or _is_folder_marker(blob.metadata)
            else ("empty file" if not blob.data else "operating-system junk file")
        )
        rt.catalog.record_rejection(REJECT_JUNK, blob.name, reason, len(blob.data), etag, kept_as="")
        _delete_if_unchanged(client, etag)
        return "junk"

    try:
        staged = parse_staged_name(blob.name, reserved=s.reserved_containers)
        if len(blob.data) > s.max_blob_bytes:
            raise ImageError(f"file is {len(blob.data)} bytes, above CORPUS_MAX_BLOB_BYTES={s.max_blob_bytes}")
        info = inspect(blob.data, s.max_pixels)
    except (NameError_, ImageError) as exc:
        reject(rt, blob.name, etag, len(blob.data), str(exc))
        return "rejected"

    tags = tags_for(staged.set.dirs, s.tag_extractor)
    rt.catalog.ensure_set(staged.set, tags, blob_prefix=staged.set.original_prefix())
    request = CopyRequest(
        staged_name=blob.name,
        staged_etag=etag,
        size=len(blob.data),
        md5=hashlib.md5(blob.data, usedforsecurity=False).hexdigest(),
        content_type=info.content_type,
        width=info.width,
        height=info.height,
        format=info.format,
    )
    rt.send(s.copy_queue, request.to_json())
    return "queued"


def _is_folder_marker(metadata: Mapping[str, str]) -> bool:
    """ADLS Gen2 and Storage Explorer mark folders with zero-byte blobs carrying ``hdi_isfolder``."""
    return any(k.lower() == "hdi_isfolder" and str(v).lower() == "true" for k, v in metadata.items())


def reject(rt: Runtime, name: str, etag: str, size: int, reason: str) -> None:
    """Move a staged blob to the rejected container, record why, and remove it from staging.

    Order matters for at-least-once delivery: keep a copy, write the record, then delete; a crash
    at any point leaves the staged blob in place for the redelivery to finish the job.
    """
    s = rt.settings
    staged = rt.clients.container(s.staging_container).get_blob_client(name)
    kept = rt.clients.container(s.rejected_container).get_blob_client(name)
    try:
        result = kept.start_copy_from_url(
            staged.url,
            source_etag=etag,
            source_match_condition=MatchConditions.IfNotModified,
        )
        _wait_for_copy(kept, result)
    except HttpResponseError as exc:
        if _source_changed_or_gone(exc):
            log.info("staged blob %s changed or vanished before it could be rejected", name)
            return
        raise
    rt.catalog.record_rejection(REJECT_INVALID, name, reason, size, etag, kept_as=f"{s.rejected_container}/{name}")
    _delete_if_unchanged(staged, etag)
    log.warning("rejected staged blob %s: %s", name, reason)


# -- step 2: the copy queue -----------------------------------------------------------------


def on_copy_request(rt: Runtime, req: CopyRequest) -> str:
    """Copy, verify, record, count, then delete the staged blob. Returns what was done."""
    s = rt.settings
    try:
        staged_name = parse_staged_name(req.staged_name, reserved=s.reserved_containers)
    except NameError_ as exc:
        raise MessageError(f"copy request names no valid staged blob: {exc}") from exc
    src = rt.clients.container(s.staging_container).get_blob_client(req.staged_name)
    rt.ensure_container(staged_name.set.domain)
    dest = rt.clients.container(staged_name.set.domain).get_blob_client(staged_name.original_blob)

    outcome = _ensure_original(src, dest, req)
    if outcome == "conflict":
        existing = dest.get_blob_properties()
        md5 = stored_md5(existing) or "unknown"
        reject(
            rt,
            req.staged_name,
            req.staged_etag,
            req.size,
            f"conflict: {staged_name.set.domain}/{staged_name.original_blob} already exists with different "
            f"content (MD5 {md5}, {existing.size} bytes); versions are immutable, upload under a new version",
        )
        return "conflict"
    if outcome == "source-gone":
        log.info("staged blob %s changed or vanished before copy; its newer upload has its own event", req.staged_name)
        return "superseded"

    _record(rt, staged_name, req)
    _delete_if_unchanged(src, req.staged_etag)
    return outcome


def _record(rt: Runtime, staged: StagedName, req: CopyRequest) -> None:
    ref = staged.set
    rt.catalog.ensure_set(ref, tags_for(ref.dirs, rt.settings.tag_extractor), blob_prefix=ref.original_prefix())
    record = ImageRecord(
        file=staged.file,
        blob=staged.original_blob,
        size=req.size,
        md5=req.md5,
        content_type=req.content_type,
        width=req.width,
        height=req.height,
        source=req.staged_name,
    )
    try:
        rt.recorder.record(ref, record)
    except ConflictError as exc:
        # The blob verified against this MD5, so the table disagrees with storage: never paper over it.
        raise CopyFailed(str(exc)) from exc


def _ensure_original(src: BlobClient, dest: BlobClient, req: CopyRequest) -> str:
    """Make ``dest`` hold exactly the validated bytes; 'copied', 'exists', 'conflict' or 'source-gone'."""
    outcome = "copied"
    try:
        result = dest.start_copy_from_url(
            src.url,
            source_etag=req.staged_etag,
            source_match_condition=MatchConditions.IfNotModified,
            match_condition=MatchConditions.IfMissing,
        )
        _wait_for_copy(dest, result)
    except HttpResponseError as exc:
        code = error_code(exc)
        if (isinstance(exc, ResourceModifiedError) and code != "SourceConditionNotMet") or code in (
            "BlobAlreadyExists",
            "ConditionNotMet",
        ):
            outcome = "exists"
            _wait_for_copy(dest, None)
        elif _source_changed_or_gone(exc):
            try:
                dest.get_blob_properties()
            except ResourceNotFoundError:
                return "source-gone"
            outcome = "exists"  # copied by an earlier delivery, which then deleted the staged blob
        else:
            raise
    return _verify(dest, req, created=outcome == "copied") or outcome


def _verify(dest: BlobClient, req: CopyRequest, created: bool) -> str | None:
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


def _verify_once(dest: BlobClient, req: CopyRequest, created: bool) -> str | None:
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
            f"copy of {req.staged_name} did not verify: got {props.size} bytes MD5 {md5 or '-'}, "
            f"expected {req.size} bytes MD5 {req.md5}"
        )
    return "conflict"


def _wait_for_copy(dest: BlobClient, result: Mapping[str, Any] | None) -> None:
    """Same-account copies usually finish at once; otherwise poll the destination until done."""
    if result is not None and result.get("copy_status") == "success":
        return
    deadline = time.monotonic() + COPY_DEADLINE_S
    delay = 0.05
    while True:
        props = dest.get_blob_properties()
        status = props.copy.status if props.copy else None
        if status in (None, "success"):
            return
        if status in ("failed", "aborted"):
            raise CopyFailed(f"server-side copy to {dest.blob_name} {status}: {props.copy.status_description}")
        if time.monotonic() > deadline:
            raise CopyFailed(f"server-side copy to {dest.blob_name} still pending after {COPY_DEADLINE_S:.0f}s")
        time.sleep(delay)  # polling a remote copy: there is no event to wait on
        delay = min(delay * 2, 2.0)


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

"""Reconciliation: staged blobs whose BlobCreated event was lost are handed to ingest again.

On Flex Consumption the blob trigger is fed only by Event Grid, and Event Grid drops some events
for good (webhook 400/401/413 at once, others after its retries or TTL). A staged blob whose event
was lost would stay in staging forever and nothing would say so. This use case, run by a timer
trigger (``reconcile_staging``) and by ``corpus reconcile``, closes that gap:

* **Scan**: every staged blob older than the grace period (``CORPUS_RECONCILE_GRACE_SECONDS``)
  is still in staging only because its handling did not finish (ingest deletes or moves every
  blob it handles): it is re-driven through the same :func:`corpus.app.ingest.on_staged_blob`
  the trigger calls, its copy through the copy queue (:data:`REDRIVE_MODE`). Cost: one List
  Blobs page per 5,000 staged blobs, O(staged), never O(corpus).
* **Dead letters**: Event Grid's dead-lettered events (blobs of JSON event arrays in
  ``CORPUS_DEADLETTER_CONTAINER``) name staged blobs whose delivery failed; those still staged are
  re-driven at once, whatever their age, and the dead-letter blob is then deleted (If-Match).

Safe at any time: ingest is exactly-once, so a re-drive of a blob whose event is merely late, or
two reconcilers at once, can cost work but never a duplicate. Each re-drive of a blob version is
claimed in table ``Redrives`` (insert-only, or replace with If-Match), so a version is re-driven at
most once per :data:`REDRIVE_INTERVAL` (or grace period, if longer) even by concurrent reconcilers;
the row is what ``corpus status`` shows. At most ``CORPUS_RECONCILE_MAX_BLOBS`` blobs are downloaded
(and so re-driven) per run; the next run continues. A blob's validation record and its claim are
looked up *before* its bytes are read: a version in the copy backlog, or re-driven recently by
another pass, costs one table read, not a download, so an aged backlog is not re-read every run.
One blob that fails is recorded in ``Failures`` (source ``reconcile``) and does not stop the others.

* **Names with '.' or '..' segments** are never read nor re-driven (a client resolves them to
  another blob): recorded as rejected in place, once per version (issue 25 R9).
* **Stuck training-set builds**: a ``building`` row with no progress for
  :func:`corpus.app.trainsets.stuck_after` (its message most likely poisoned) gets a continuation
  (issue 25 B5): O(training sets) per pass, a property filter on a small table.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from corpus.app import ingest
from corpus.app.runtime import Runtime
from corpus.app.trainsets import resume_stuck
from corpus.domain.errors import BlobNotFound, PreconditionFailed, StorageError, reason
from corpus.domain.paths import DOT_SEGMENT_REASON, has_dot_segment
from corpus.store.ports import iter_blobs
from corpus.store.rows import REJECT_INVALID, FailureRow

log = logging.getLogger("corpus.reconcile")

SOURCE = "reconcile"
VALIDATED_RECENTLY = timedelta(hours=24)
"""A staged version the blob trigger validated less than this long ago is in the copy backlog, not
lost: the scan leaves it alone (dead-lettered events are re-driven whatever their validation)."""
REDRIVE_INTERVAL = timedelta(minutes=10)
"""A blob version is re-driven at most once per this interval (or per grace period, if longer), whatever
the grace period: two reconcilers started together must not both re-drive it, even with ``--grace 0``."""
REDRIVE_MODE = "queued"
"""Re-driven uploads are handed to the copy queue whatever ``CORPUS_INGEST`` says: a pass then only
validates (up to ``CORPUS_RECONCILE_MAX_BLOBS`` downloads, well within the timer's
``functionTimeout``) while ``copy_to_original`` copies them in parallel; and ``corpus reconcile``,
run by an admin, needs no write access to the domain containers (corpus/cli/access.py). Re-drives
are rare, so the queue's extra requests per image do not matter here."""
WHY_SCAN = "still staged after the grace period (event lost or handling unfinished)"


@dataclass
class ReconcileReport:
    scanned: int = 0
    redriven: dict[str, str] = field(default_factory=dict)  # staged name -> outcome
    skipped_recent: int = 0
    deadletters: int = 0
    downloaded: int = 0  # staged blobs read: bounded by max_blobs
    failed: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # staged name -> why it is rejected in place (never read)
    resumed: list[str] = field(default_factory=list)  # training sets N:V found stuck in 'building' and resumed

    def as_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "redriven": len(self.redriven),
            "outcomes": dict(sorted(self.redriven.items())),
            "skipped_recent": self.skipped_recent,
            "deadletter_blobs": self.deadletters,
            "downloaded": self.downloaded,
            "failed": dict(sorted(self.failed.items())),
            "refused": dict(sorted(self.refused.items())),
            "resumed_trainsets": list(self.resumed),
        }


OUTCOME_GONE = "gone meanwhile"
"""A claimed version that was no longer staged when read: ingested by its own event meanwhile."""
OUTCOME_REPLACED = "replaced meanwhile"
"""A claimed version replaced by a newer upload before it was read (which has its own event)."""


def reconcile(
    rt: Runtime, grace_seconds: float | None = None, max_blobs: int | None = None, stuck_after: timedelta | None = None
) -> ReconcileReport:
    """One reconciliation pass; see the module docstring. ``stuck_after``: how long a training-set
    build may go without progress before it is resumed (default :func:`corpus.app.trainsets.stuck_after`)."""
    s = rt.settings
    grace = timedelta(seconds=s.reconcile_grace_seconds if grace_seconds is None else grace_seconds)
    budget = s.reconcile_max_blobs if max_blobs is None else max_blobs
    now = datetime.now(UTC)
    report = ReconcileReport()
    for name, why in _dead_lettered(rt, report):
        if report.downloaded >= budget:
            break
        _redrive(rt, name, None, why, now, REDRIVE_INTERVAL, report)
    for blob in iter_blobs(rt.blobs, s.staging_container):
        report.scanned += 1
        if report.downloaded >= budget:
            break
        if blob.last_modified is not None and blob.last_modified > now - grace:
            continue  # its event may still be on the way
        _redrive(rt, blob.name, blob.etag, WHY_SCAN, now, max(grace, REDRIVE_INTERVAL), report)
    try:
        report.resumed = resume_stuck(rt, now, stuck_after)
    except Exception as exc:  # noqa: BLE001 - staging's reconciliation stands; the failure is recorded
        rt.record_failure(FailureRow(SOURCE, "trainsets", f"resuming stuck builds failed: {reason(exc)}", 1, False))
    if report.redriven or report.failed:
        log.warning("reconcile: re-drove %d staged blob(s), %d failed", len(report.redriven), len(report.failed))
    return report


def _redrive(
    rt: Runtime, name: str, etag: str | None, why: str, now: datetime, grace: timedelta, report: ReconcileReport
) -> None:
    """Re-drive one staged version: validation record and claim first (table reads), then its bytes.

    ``etag`` is the listing's; ``None`` for a dead-lettered name, whose current version is looked up
    (a HEAD, not a download) and re-driven whatever its validation.
    """
    container = rt.settings.staging_container
    if has_dot_segment(name):
        _refuse(rt, name, etag or "", report)
        return
    if etag is None:
        try:
            etag = rt.blobs.info(container, name).etag
        except BlobNotFound:
            return  # handled meanwhile
    else:
        # Written by re-drives and by CORPUS_INGEST=queued; with direct ingest the trigger writes
        # none, and this read finds none for a blob whose event was lost.
        validated = rt.catalog.validations.get(name, etag)
        if validated is not None and validated.at is not None and validated.at > now - VALIDATED_RECENTLY:
            # The trigger saw this version and queued its copy: it is in the copy backlog (or poisoned,
            # with its reason in `corpus status`), not lost. Re-driving it would only add to the backlog.
            report.skipped_recent += 1
            return
    claim = rt.catalog.redrives.claim(name, etag, why, now, grace)
    if claim is None:
        report.skipped_recent += 1
        return
    report.downloaded += 1
    try:
        blob = rt.blobs.read(container, name, if_match=etag)
    except (BlobNotFound, PreconditionFailed) as exc:
        # Ingested meanwhile (its own event), or replaced since the listing (the new upload has its
        # own event): nothing to re-drive, but the claim is recorded, so its outcome is too, and
        # `corpus status` counts no re-drive without one.
        outcome = OUTCOME_GONE if isinstance(exc, BlobNotFound) else OUTCOME_REPLACED
        rt.catalog.redrives.finish(claim, outcome)
        report.redriven[name] = outcome
        return
    data, props = blob.data, blob.info
    try:
        staged = ingest.StagedBlob(
            name=name, data=data, etag=props.etag, metadata=dict(props.metadata), blob_type=props.blob_type
        )
        outcome = str(ingest.on_staged_blob(rt, staged, REDRIVE_MODE))
        rt.catalog.redrives.finish(claim, outcome)
        report.redriven[name] = outcome
    except Exception as exc:  # noqa: BLE001 - one bad blob never stops the others; it is recorded
        why_failed = reason(exc)
        report.failed[name] = why_failed
        rt.record_failure(FailureRow(SOURCE, name, why_failed + "\n" + traceback.format_exc(limit=5), claim.times, False, name))


def _refuse(rt: Runtime, name: str, etag: str, report: ReconcileReport) -> None:
    """A staged name with a '.' or '..' segment is never read nor re-driven (every request by that
    name reaches another blob, issue 25 R9): recorded as rejected in place, once per version."""
    known = rt.catalog.rejections.get(REJECT_INVALID, name)
    if known is not None and known.kept_as == "" and (not etag or known.etag == etag):
        report.skipped_recent += 1
        return
    ingest.reject_in_place(rt, name, etag, 0)
    report.refused[name] = DOT_SEGMENT_REASON


def _dead_lettered(rt: Runtime, report: ReconcileReport) -> Iterator[tuple[str, str]]:
    """Staged names from Event Grid's dead-letter blobs; each blob is deleted once read."""
    container = rt.settings.deadletter_container
    prefix = f"/blobServices/default/containers/{rt.settings.staging_container}/blobs/"
    try:
        blobs = list(iter_blobs(rt.blobs, container))
    except BlobNotFound:
        return
    for item in blobs:
        try:
            blob = rt.blobs.read(container, item.name)
            events = json.loads(blob.data)
        except BlobNotFound:
            continue
        except (ValueError, StorageError) as exc:
            rt.record_failure(FailureRow(SOURCE, f"deadletter/{item.name}", f"unreadable dead-letter blob: {exc}", 1, True))
            continue
        report.deadletters += 1
        for event in events if isinstance(events, list) else [events]:
            subject = str(event.get("subject", "")) if isinstance(event, dict) else ""
            if subject.startswith(prefix):
                why = f"dead-lettered by Event Grid: {event.get('deadLetterReason', 'unknown reason')}"
                yield subject[len(prefix) :], why  # subjects carry the blob name as is
        # deleted by a concurrent reconciler, or replaced (False): the next run reads it again
        rt.blobs.delete_if_unchanged(container, item.name, blob.info.etag)

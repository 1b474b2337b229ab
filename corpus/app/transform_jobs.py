"""Transforms on request: a request fans out, a page at a time, into one job per source image;
each job writes one transformed image and counts it in the transformed set, exactly once.

Request (queue ``transform-requests``): validate the transform and its arguments (bounded: at
most ``MAX_PIPELINE_STEPS`` steps, ``MAX_TRANSFORM_DEFINITION_CHARS`` of definition, no step
certain to exceed the pixel cap), register the (name, version) in ``ImageTransforms`` (refusing
the same version with other arguments), then run page 0 of the fan-out.

**Paged fan-out.** A page walks the source sets (by path, or the first tag's index range) and
their images in row-key order from a cursor (source set row key, image row key), creates the
transformed sets it meets, and queues a job for each image with no transformed record yet, until
``CORPUS_TRANSFORM_PAGE_SIZE`` jobs are queued (or 4 × that many rows were read); then it sends
a :class:`~corpus.domain.messages.TransformPage` continuation for the rest on the same queue.
No invocation's work grows with the selection. The request id is the id of the user's request
message (stable across its redeliveries), so pages are named (request, page index).

**Exactly once.** After sending a page's jobs and its continuation, the page writes an
insert-only marker row (request, page) in ``ImageTransforms``; a page whose marker exists does
nothing. So a page delivered again after it finished (the at-least-once redelivery, or
``corpus host --deliver-twice``) queues nothing: *one job message per source image*. A page
killed after sending and before its marker, or two copies of one page running at the very same
moment, queue that page's jobs again; those duplicate jobs find the transformed record and end
``exists`` after one table read (nothing rendered, nothing written, nothing counted twice). In
every case each source image ends with exactly one transformed image, recorded and counted once.

Job (queue ``transform-jobs``, throttled by the queue's batch settings): a job names the source
image and the transform by (name, version) only. It is validated with ingest's naming rules,
renders with the arguments *registered* for that version (never from the message), and must name
a recorded original. It reads the original, renders in process (each step's output size is
estimated and checked against the pixel cap before it runs, :mod:`corpus.domain.transforms`),
writes under ``transform/…`` without ever overwriting, records and counts it. A corrupt source
fails only its own job; after ``maxDequeueCount`` attempts it is in ``transform-jobs-poison``
with its reason in ``Failures``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from corpus.app.progress import TRANSFORMED
from corpus.app.runtime import Runtime
from corpus.domain import keys, transforms
from corpus.domain.errors import BlobConflict, BlobNotFound, MessageError, NotFoundError
from corpus.domain.messages import TransformJob, TransformPage, TransformRequest, is_transform_page
from corpus.domain.paths import SetRef
from corpus.domain.tags import tags_for
from corpus.store.rows import ImageRow, ImageSetRow, dirs_of

log = logging.getLogger("corpus.transform")

SCAN_FACTOR = 4
"""A page reads at most this many rows (sets and images) per job it may queue."""

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class JobOutcome(StrEnum):
    WRITTEN = "written"
    EXISTS = "exists"


def on_transform_message(rt: Runtime, body: str, message_id: str | None = None) -> int:
    """The transform-requests queue carries user requests and fan-out continuations."""
    if is_transform_page(body):
        return fan_out_page(rt, TransformPage.parse(body))
    return on_transform_request(rt, TransformRequest.parse(body), message_id)


def on_transform_request(rt: Runtime, req: TransformRequest, message_id: str | None = None) -> int:
    """Validate, register and run page 0 of the fan-out; return how many jobs it queued."""
    args = transforms.canonical(req.name, req.args)  # TransformError: permanent, poisoned with its reason
    transforms.check_request(req.name, args, rt.settings.max_pixels)
    # TransformConflictError (same version, other arguments) is permanent too.
    rt.catalog.transforms.register(req.name, req.version, transforms.args_json(args))
    request = message_id if message_id and _ID.match(message_id) else None
    request = request or hashlib.sha256(req.to_json().encode()).hexdigest()[:32]
    page = TransformPage(request, 0, req.domain, req.source, req.name, req.version, ("", ""))
    return fan_out_page(rt, page)


def fan_out_page(rt: Runtime, page: TransformPage) -> int:
    """Queue the jobs of one page and the continuation for the rest; see the module docstring."""
    catalog = rt.catalog
    if catalog.transforms.page_done(page.request, page.page):
        log.info("transform %s page %d already queued; nothing to do", page.request, page.page)
        return 0
    registered = catalog.transforms.registered(page.name, page.tversion)
    if registered is None:
        raise MessageError(f"transform page: transform {page.name}:{page.tversion} is not registered")
    args = json.loads(registered.args)
    transform = (page.name, page.tversion)
    limit = rt.settings.transform_page_size
    budget = SCAN_FACTOR * limit
    start_set, start_image = page.cursor
    candidates: list[tuple[SetRef, ImageRow]] = []
    next_cursor: tuple[str, str] | None = None
    seen_any = False
    for row, wanted in _sets_from(rt, page, start_set):
        budget -= 1
        if wanted:
            seen_any = True
            ref = row.ref
            catalog.sets.ensure(ref, list(row.tags), ref.transform_prefix(*transform), transform, registered.keys)
            after = start_image if row.row_key == start_set else ""
            for rk, image in catalog.images.iter_after(ref, after, page=max(1, min(1000, budget + 1))):
                budget -= 1
                candidates.append((ref, image))
                if len(candidates) >= limit or budget <= 0:
                    next_cursor = (row.row_key, rk)
                    break
        if next_cursor is None and budget <= 0:
            next_cursor = (keys.successor(row.row_key), "")  # this set is done; resume with the next one
        if next_cursor is not None:
            break
    if page.page == 0 and not seen_any and next_cursor is None:
        raise NotFoundError(_nothing_found(page))

    def pending(item: tuple[SetRef, ImageRow]) -> str | None:
        ref, image = item
        out = transforms.output_name(image.file, transforms.output_extension(page.name, args, image.content_type))
        if catalog.images.get(ref, out, transform) is not None:
            return None
        return TransformJob(ref.domain, ref.dirs, ref.version, image.file, page.name, page.tversion).to_json()

    queue = rt.settings.transform_jobs_queue
    with ThreadPoolExecutor(16) as pool:
        jobs = [body for body in pool.map(pending, candidates) if body is not None]
        list(pool.map(lambda body: rt.send(queue, body), jobs))
    if next_cursor is not None:
        cont = TransformPage(page.request, page.page + 1, page.domain, page.source, page.name, page.tversion, next_cursor)
        rt.send(rt.settings.transform_queue, cont.to_json())
    catalog.transforms.mark_page(page.request, page.page, len(jobs))
    log.info(
        "transform %s:%s request %s page %d: %d job(s) queued%s",
        page.name,
        page.tversion,
        page.request,
        page.page,
        len(jobs),
        ", continued" if next_cursor else "",
    )
    return len(jobs)


def _sets_from(rt: Runtime, page: TransformPage, start: str) -> Iterator[tuple[ImageSetRow, bool]]:
    """Source sets from row key ``start`` on, in key order, each with whether it is selected."""
    sel = page.source
    if sel.path is not None:
        ref = SetRef(page.domain, dirs_of(sel.path), sel.version or "")
        if keys.set_row_key(ref) < start:
            return
        row = rt.catalog.sets.get(ref)
        if row is None:
            raise NotFoundError(f"no image set {page.domain}/{sel.path} at version {sel.version}")
        yield row, True
        return
    yield from rt.catalog.sets.tagged_from(page.domain, sel.tags, keys.ORIGINALS_PREFIX, start, sel.version)


def _nothing_found(page: TransformPage) -> str:
    return f"no image set of domain {page.domain!r} carries all of the tags {list(page.source.tags)}" + (
        f" at version {page.source.version}" if page.source.version else ""
    )


def on_transform_job(rt: Runtime, job: TransformJob) -> JobOutcome:
    """Render and store one transformed image; 'written' or 'exists'."""
    job.validate(rt.settings.reserved_containers)
    registered = rt.catalog.transforms.registered(job.name, job.tversion)
    if registered is None:
        raise MessageError(f"transform job: transform {job.name}:{job.tversion} is not registered")
    args = transforms.canonical(job.name, json.loads(registered.args))
    ref = SetRef(job.domain, job.dirs, job.version)
    transform = (job.name, job.tversion)
    source = rt.catalog.images.get(ref, job.file)
    if source is None or source.blob != ref.original_prefix() + job.file:
        raise NotFoundError(f"transform job: {job.domain}/{ref.original_prefix()}{job.file} is not a recorded original")
    name = transforms.output_name(job.file, transforms.output_extension(job.name, args, source.content_type))
    if rt.catalog.images.get(ref, name, transform) is not None:
        # A duplicate job, done by an earlier one: nothing to render. Its count refresh may have been
        # deferred to a leader that then died (group commit debounces refreshes): make sure of it here.
        rt.catalog.refresh_counts(ref, transform)
        return JobOutcome.EXISTS

    try:
        data = rt.blobs.read(job.domain, source.blob).data
    except BlobNotFound as exc:
        raise NotFoundError(f"source image {job.domain}/{source.blob} does not exist") from exc

    out = transforms.render(data, job.name, args, rt.settings.max_pixels, admit=rt.decode_budget.hold)
    name = transforms.output_name(job.file, out.extension)
    dest_name = ref.transform_prefix(*transform) + name
    md5 = hashlib.md5(out.data, usedforsecurity=False).hexdigest()
    outcome = JobOutcome.WRITTEN
    size = len(out.data)
    try:
        if not rt.blobs.put_once(job.domain, dest_name, out.data, out.content_type):
            outcome = JobOutcome.EXISTS  # the same bytes, written by an earlier delivery
    except BlobConflict as exc:
        # Written by an earlier delivery with other bytes (the encoder changed since). It stands
        # (transformed images are immutable too); count what is stored.
        md5, size, outcome = exc.stored_md5, exc.stored_size, JobOutcome.EXISTS

    rt.catalog.sets.ensure(
        ref,
        tags_for(ref.dirs, rt.settings.tag_extractor),
        ref.transform_prefix(*transform),
        transform,
        registered.keys,
    )
    record = ImageRow(
        file=name,
        blob=dest_name,
        size=size,
        md5=md5,
        content_type=out.content_type,
        width=out.width,
        height=out.height,
        source=source.blob,
        # Facts describe the bytes stored: those of an earlier delivery may differ (another
        # encoder version); then they are left to ``corpus reindex --facts``.
        facts=out.facts
        if outcome is JobOutcome.WRITTEN or md5 == hashlib.md5(out.data, usedforsecurity=False).hexdigest()
        else None,
    )
    if rt.recorder.record(ref, record, transform):
        TRANSFORMED.done(f"{job.name}:{job.tversion} {ref.domain}/{ref.version}")
    return outcome

"""Transforms on request: a request fans out into one job per source image; each job writes one
transformed image and counts it in the transformed set, exactly once.

Request (queue ``transform-requests``): validate the transform and its arguments, register the
(name, version) in ``ImageTransforms`` (refusing the same version with other arguments), find the
source sets (by path or by tags), create the transformed sets, and queue a job for every source
image that has no transformed record yet. Re-requesting therefore does no duplicate work, and
brings a set up to date after images were added to its source version.

Job (queue ``transform-jobs``, throttled by the queue's batch settings): read the original, render
the transform in process (:mod:`corpus.domain.transforms`), write it under ``transform/…`` without ever
overwriting, record and count it. A corrupt source fails only its own job; after
``maxDequeueCount`` attempts it is in ``transform-jobs-poison`` with its reason in ``Failures``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from corpus.app.runtime import Runtime
from corpus.domain import keys, transforms
from corpus.domain.errors import MessageError, NotFoundError
from corpus.domain.messages import TransformJob, TransformRequest
from corpus.domain.paths import SetRef
from corpus.domain.tags import tags_for
from corpus.store.rows import ImageRow, ImageSetRow, dirs_of
from corpus.store.storage import blob_md5

log = logging.getLogger("corpus.transform")


class JobOutcome(StrEnum):
    WRITTEN = "written"
    EXISTS = "exists"


def on_transform_request(rt: Runtime, req: TransformRequest) -> int:
    """Fan a request out into jobs; return how many were queued."""
    args = transforms.canonical(req.name, req.args)  # TransformError: permanent, poisoned with its reason
    # TransformConflictError (same version, other arguments) is permanent too.
    tkeys = rt.catalog.transforms.register(req.name, req.version, json.dumps(args, sort_keys=True, separators=(",", ":")))

    sources = _source_sets(rt, req)
    transform = (req.name, req.version)
    jobs: list[str] = []
    for source in sources:
        ref = source.ref
        rt.catalog.sets.ensure(ref, list(source.tags), ref.transform_prefix(*transform), transform, tkeys)
        done = {row.source for row in rt.catalog.images.iter(ref, transform)}
        for image in rt.catalog.images.iter(ref):
            if image.blob in done:
                continue
            jobs.append(TransformJob(req.domain, ref.dirs, ref.version, image.file, req.name, req.version, args).to_json())
    queue = rt.settings.transform_jobs_queue
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda body: rt.send(queue, body), jobs))
    log.info("transform %s:%s over %d set(s): %d job(s) queued", req.name, req.version, len(sources), len(jobs))
    return len(jobs)


def _source_sets(rt: Runtime, req: TransformRequest) -> list[ImageSetRow]:
    sel = req.source
    if sel.path is not None:
        ref = SetRef(req.domain, dirs_of(sel.path), sel.version or "")
        row = rt.catalog.sets.get(ref)
        if row is None:
            raise NotFoundError(f"no image set {req.domain}/{sel.path} at version {sel.version}")
        return [row]
    found = rt.catalog.sets.list(domain=req.domain, tags=sel.tags, version=sel.version, originals_only=True)
    if not found:
        raise NotFoundError(f"no image set of domain {req.domain!r} carries all of the tags {list(sel.tags)}")
    return found


def on_transform_job(rt: Runtime, job: TransformJob) -> JobOutcome:
    """Render and store one transformed image; 'written' or 'exists'."""
    if transforms.canonical(job.name, job.args) != job.args:
        raise MessageError("transform job: args are not in canonical form")
    ref = SetRef(job.domain, job.dirs, job.version)
    transform = (job.name, job.tversion)
    container = rt.clients.container(job.domain)
    source_blob = ref.original_prefix() + job.file
    try:
        data = container.get_blob_client(source_blob).download_blob().readall()
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"source image {job.domain}/{source_blob} does not exist") from exc

    out = transforms.render(data, job.name, job.args, rt.settings.max_pixels)
    name = transforms.output_name(job.file, out.extension)
    dest_name = ref.transform_prefix(*transform) + name
    dest = container.get_blob_client(dest_name)
    md5 = hashlib.md5(out.data, usedforsecurity=False).hexdigest()
    outcome = JobOutcome.WRITTEN
    size = len(out.data)
    try:
        dest.upload_blob(
            out.data,
            overwrite=False,
            content_settings=ContentSettings(content_type=out.content_type, content_md5=bytearray(bytes.fromhex(md5))),
        )
    except ResourceExistsError:
        # Written by an earlier delivery. It stands (transformed images are immutable too); count
        # what is stored, which may differ in bytes if the encoder changed since.
        props = dest.get_blob_properties()
        md5, size, outcome = blob_md5(dest, props), props.size, JobOutcome.EXISTS

    rt.catalog.sets.ensure(
        ref,
        tags_for(ref.dirs, rt.settings.tag_extractor),
        ref.transform_prefix(*transform),
        transform,
        keys.transform_keys(*transform),
    )
    record = ImageRow(
        file=name,
        blob=dest_name,
        size=size,
        md5=md5,
        content_type=out.content_type,
        width=out.width,
        height=out.height,
        source=source_blob,
    )
    rt.recorder.record(ref, record, transform)
    return outcome

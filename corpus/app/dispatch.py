"""Which use case consumes which queue: one table for everything that drains queues in process.

``function_app.py`` binds each queue to its function for the Functions host; the in-memory runs
(the use-case unit tests, ``bench/scale_bench.py`` and ``bench/harden_bench.py``) drain the
outbox through this table instead, so both call the same use case with the same parsing.
"""

from __future__ import annotations

from collections.abc import Callable

from corpus.app import ingest
from corpus.app.exports import on_export_message
from corpus.app.runtime import Runtime
from corpus.app.trainsets import on_trainset_message
from corpus.app.transform_jobs import on_transform_job, on_transform_message
from corpus.domain.exports import parse_export_message
from corpus.domain.messages import CopyRequest, TransformJob
from corpus.domain.trainsets import parse_trainset_message


def queue_handlers(rt: Runtime) -> dict[str, Callable[[str], object]]:
    """Queue name → a function of a message body, for every queue the app's functions consume."""
    s = rt.settings
    return {
        s.copy_queue: lambda body: ingest.on_copy_request(rt, CopyRequest.parse(body)),
        s.transform_queue: lambda body: on_transform_message(rt, body),
        s.transform_jobs_queue: lambda body: on_transform_job(rt, TransformJob.parse(body)),
        s.trainset_queue: lambda body: on_trainset_message(rt, parse_trainset_message(body)),
        s.export_queue: lambda body: on_export_message(rt, parse_export_message(body)),
    }

"""Hardening round 3 (issue 25) on the in-memory store: the findings that are not end to end.

Each test failed on the code before its fix (the report of issue 25 says how each was checked).
The end-to-end ones (through ``corpus host`` on Azurite) are in test_harden3_e2e.py.
"""

from __future__ import annotations

import pytest

from corpus.app.runtime import Runtime
from corpus.app.transform_jobs import on_transform_message
from corpus.domain.errors import MessageError
from corpus.domain.messages import SourceSelector, TransformPage, TransformRequest
from corpus.domain.paths import SetRef
from corpus.store.memory import MemoryOutbox
from corpus.store.settings import Settings
from tests.support import jpeg
from tests.test_usecases_memory import drain, stage


def runtime(**env: str) -> Runtime:
    rt = Runtime.in_memory(Settings.from_env({"CorpusStorage": "UseDevelopmentStorage=true", **env}))
    rt.ensure_resources()
    return rt


@pytest.fixture
def rt() -> Runtime:
    return runtime()


def outbox(rt: Runtime) -> MemoryOutbox:
    assert isinstance(rt.outbox, MemoryOutbox)
    return rt.outbox


# -- B7: a crafted transform-page message reusing a request's id ---------------------------------


def test_a_crafted_transform_page_reusing_a_request_id_is_refused_and_the_request_queues_every_job() -> None:
    """B7: an operator peeks request X on transform-requests and sends a ``transform-page`` for
    (X, page 1) whose cursor is past the end. Before the fix it ran first, marked (X, 1) done with
    0 jobs, and the real request's continuation then queued nothing: 2 of 5 images transformed."""
    rt = runtime(CORPUS_TRANSFORM_PAGE_SIZE="2")
    for i in range(5):
        stage(rt, f"birds/v1/red/{i}.jpg", jpeg(i))
    drain(rt)
    source = SourceSelector(path="red", version="v1")
    req = TransformRequest("birds", source, "thumbnail", "1", {"size": 16})
    rt.catalog.transforms.register("thumbnail", "1", '{"size":16}')  # registered by an earlier request
    crafted = TransformPage("msg-42", 1, "birds", source, "thumbnail", "1", ("~", ""))
    with pytest.raises(MessageError, match="not a continuation"):
        on_transform_message(rt, crafted.to_json(), "crafted-id")
    assert not rt.catalog.transforms.page_done("msg-42", 1)
    on_transform_message(rt, req.to_json(), "msg-42")  # the real request, its id as the queue gave it
    # The continuations the fan-out sent itself are accepted (drain delivers them)
    drain(rt)
    ref = SetRef("birds", ("red",), "v1")
    assert len(list(rt.catalog.images.iter_after(ref, "", transform=("thumbnail", "1")))) == 5
    # Once the fan-out has run, a page with a tampered cursor is still refused
    tampered = TransformPage("msg-42", 2, "birds", source, "thumbnail", "1", ("~", "x"))
    with pytest.raises(MessageError, match="not a continuation"):
        on_transform_message(rt, tampered.to_json())

"""Azure Functions entry points (Python v2 model). Thin by design: bind, parse, call ``corpus``.

Binding values in ``%…%`` are app settings (see ``corpus/store/settings.py`` and ``infra/``); the
connection ``CorpusStorage`` is a connection string locally and identity-based in Azure. Parsing
happens inside the failure reporter, so a malformed input is recorded like any other failure.
"""

import azure.functions as func

from corpus.app import ingest
from corpus.app.failures import run_blob_job, run_queue_job
from corpus.app.runtime import check_config, get_runtime
from corpus.app.transform_jobs import on_transform_job, on_transform_request
from corpus.domain.messages import CopyRequest, TransformJob, TransformRequest
from corpus.store.settings import CONNECTION

check_config()  # a bad setting, tag extractor or host.json stops start-up here, with one line

app = func.FunctionApp()


@app.function_name("ingest_staged_blob")
@app.blob_trigger(
    arg_name="blob",
    path="%CORPUS_STAGING_CONTAINER%/{name}",
    connection=CONNECTION,
    source=func.BlobSource.EVENT_GRID,
)
def ingest_staged_blob(blob: func.InputStream) -> None:
    """A blob landed in staging: classify it and queue its copy, or reject it with a reason."""
    rt = get_runtime()
    name = blob.name or ""

    def handle() -> ingest.StagedOutcome:
        # The concrete InputStream carries the trigger's properties and metadata; the abstract type does not declare them.
        properties, metadata = getattr(blob, "blob_properties", None), getattr(blob, "metadata", None)
        staged = ingest.staged_from_trigger(name, rt.settings.staging_container, blob.read(), properties, metadata)
        return ingest.on_staged_blob(rt, staged)

    run_blob_job(rt, "ingest_staged_blob", name, handle)


@app.function_name("copy_to_original")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_COPY_QUEUE%", connection=CONNECTION)
def copy_to_original(msg: func.QueueMessage) -> None:
    """Copy one validated staged image into original/, verify it, count it, clear staging."""
    rt = get_runtime()
    run_queue_job(rt, rt.settings.copy_queue, msg, lambda body: ingest.on_copy_request(rt, CopyRequest.parse(body)))


@app.function_name("transform_request")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRANSFORM_QUEUE%", connection=CONNECTION)
def transform_request(msg: func.QueueMessage) -> None:
    """A user asked for a transform: validate it, register it, fan out one job per source image."""
    rt = get_runtime()
    run_queue_job(rt, rt.settings.transform_queue, msg, lambda body: on_transform_request(rt, TransformRequest.parse(body)))


@app.function_name("transform_job")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRANSFORM_JOBS_QUEUE%", connection=CONNECTION)
def transform_job(msg: func.QueueMessage) -> None:
    """Render one transformed image, store it under transform/, count it exactly once."""
    rt = get_runtime()
    run_queue_job(rt, rt.settings.transform_jobs_queue, msg, lambda body: on_transform_job(rt, TransformJob.parse(body)))


@app.function_name("build_trainset")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRAINSET_QUEUE%", connection=CONNECTION)
def build_trainset(msg: func.QueueMessage) -> None:
    """Register a training set and build its manifest, continuing in follow-up messages if needed."""
    from corpus.app.trainsets import on_trainset_message
    from corpus.domain.trainsets import parse_trainset_message

    rt = get_runtime()
    run_queue_job(rt, rt.settings.trainset_queue, msg, lambda body: on_trainset_message(rt, parse_trainset_message(body)))

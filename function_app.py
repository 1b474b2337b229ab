"""Azure Functions entry points (Python v2 model). Thin by design: bind, parse, call ``corpus``.

Binding values in ``%…%`` are app settings (see ``corpus/store/settings.py`` and ``infra/``); the
connection ``CorpusStorage`` is a connection string locally and identity-based in Azure. Parsing
happens inside the failure reporter, so a malformed input is recorded like any other failure.
"""

from collections.abc import Callable
from typing import Any

import azure.functions as func

from corpus.app import ingest
from corpus.app.failures import record_poisoned, run_blob_job, run_queue_job
from corpus.app.reconcile import reconcile
from corpus.app.runtime import check_config, get_runtime
from corpus.app.transform_jobs import on_transform_job, on_transform_message
from corpus.domain.messages import CopyRequest, TransformJob
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
    """A blob landed in staging: classify it, then copy and record it (or queue its copy,
    CORPUS_INGEST=queued), or reject it with a reason."""
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
    """Copy one validated staged image into original/, verify it, count it, clear staging
    (CORPUS_INGEST=queued, re-drives by reconcile, and any backlog queued before a switch to direct)."""
    rt = get_runtime()
    run_queue_job(rt, rt.settings.copy_queue, msg, lambda body: ingest.on_copy_request(rt, CopyRequest.parse(body)))


@app.function_name("transform_request")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRANSFORM_QUEUE%", connection=CONNECTION)
def transform_request(msg: func.QueueMessage) -> None:
    """A user asked for a transform (validate, register, fan out page 0), or a fan-out continues (one more page)."""
    rt = get_runtime()
    run_queue_job(rt, rt.settings.transform_queue, msg, lambda body: on_transform_message(rt, body, msg.id))


@app.function_name("transform_job")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRANSFORM_JOBS_QUEUE%", connection=CONNECTION)
def transform_job(msg: func.QueueMessage) -> None:
    """Render one transformed image, store it under transform/, count it exactly once."""
    rt = get_runtime()
    run_queue_job(rt, rt.settings.transform_jobs_queue, msg, lambda body: on_transform_job(rt, TransformJob.parse(body)))


@app.function_name("reconcile_staging")
@app.timer_trigger(arg_name="timer", schedule="%CORPUS_RECONCILE_SCHEDULE%")
def reconcile_staging(timer: func.TimerRequest) -> None:
    """Hand staged blobs whose event was lost (or dead-lettered) to ingest again; see corpus/app/reconcile.py."""
    rt = get_runtime()
    run_blob_job(rt, "reconcile_staging", "timer", lambda: reconcile(rt))


@app.function_name("catalog_sync")
@app.timer_trigger(arg_name="timer", schedule="%CORPUS_CATALOG_SCHEDULE%")
def catalog_sync(timer: func.TimerRequest) -> None:
    """Append what the tables gained since the last sync to the Parquet catalog; see corpus/catalog/sync.py."""
    from corpus.catalog.sync import sync_settings

    rt = get_runtime()
    run_blob_job(rt, "catalog_sync", "timer", lambda: sync_settings(rt.clients, rt.settings, rt.blobs))


# -- Poison queues: each message becomes a final Failures row ------------------------------------
# The host's own poison messages (a timeout, a dead worker, dequeue count over maxDequeueCount)
# carry no reason and expire after 7 days; these recorders keep them (see record_poisoned). They
# are not wrapped in run_queue_job, and bound themselves: a *-poison queue has no poison queue of
# its own, so on its last attempt a recorder that cannot record moves the body to
# <queue>-poison-poison, which nothing reads. QueueAttribute.QueueName is [AutoResolve]: the
# host resolves every %SETTING% token inside the string, so "%X%-poison" is X's poison queue.


@app.function_name("copy_to_original_poisoned")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_COPY_QUEUE%-poison", connection=CONNECTION)
def copy_to_original_poisoned(msg: func.QueueMessage) -> None:
    rt = get_runtime()
    record_poisoned(rt, rt.settings.copy_queue, msg)


@app.function_name("transform_request_poisoned")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRANSFORM_QUEUE%-poison", connection=CONNECTION)
def transform_request_poisoned(msg: func.QueueMessage) -> None:
    rt = get_runtime()
    record_poisoned(rt, rt.settings.transform_queue, msg)


@app.function_name("transform_job_poisoned")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRANSFORM_JOBS_QUEUE%-poison", connection=CONNECTION)
def transform_job_poisoned(msg: func.QueueMessage) -> None:
    rt = get_runtime()
    record_poisoned(rt, rt.settings.transform_jobs_queue, msg)


@app.function_name("export_request_poisoned")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_EXPORT_QUEUE%-poison", connection=CONNECTION)
def export_request_poisoned(msg: func.QueueMessage) -> None:
    rt = get_runtime()
    record_poisoned(rt, rt.settings.export_queue, msg)


@app.function_name("build_trainset_poisoned")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRAINSET_QUEUE%-poison", connection=CONNECTION)
def build_trainset_poisoned(msg: func.QueueMessage) -> None:
    rt = get_runtime()
    record_poisoned(rt, rt.settings.trainset_queue, msg)


# -- Read-only HTTP: the JSON API and the gallery ------------------------------------------------
# Routes are the contract (/api/…, /gallery/…): host.json sets routePrefix to "". Anonymous at the
# function level because App Service Authentication (Easy Auth, infra/resources.bicep) admits only
# signed-in users of the tenant before a request reaches the app; see docs/gallery.md.

from corpus.app import gallery, gallery_ml, renditions, web  # noqa: E402 - grouped with the functions that use it


def _http(
    req: func.HttpRequest, handler: web.Handler, error: Callable[[int, str], web.Response] = web.json_error
) -> func.HttpResponse:
    """Bind: HttpRequest → corpus.app.web.Request; the handler's Response → HttpResponse."""
    request = web.Request.of(req.method, req.url, req.route_params, dict(req.headers))
    res = web.handle(get_runtime(), request, handler, error)
    return func.HttpResponse(res.body, status_code=res.status, headers=res.headers)


def _route(route: str) -> Callable[[Callable[..., Any]], Any]:
    return app.route(route=route, methods=["GET", "HEAD"], auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("api_sets")
@_route("api/sets")
def api_sets(req: func.HttpRequest) -> func.HttpResponse:
    """The rows of `corpus sets --json`, paged."""
    return _http(req, web.api_sets)


@app.function_name("api_set_images")
@_route("api/sets/{domain}/images")
def api_set_images(req: func.HttpRequest) -> func.HttpResponse:
    """One set's image records, paged."""
    return _http(req, web.api_set_images)


@app.function_name("gallery_home")
@_route("gallery")
def gallery_home(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery.home, gallery.html_error)


@app.function_name("gallery_trainsets")
@_route("gallery/-/trainsets")
def gallery_trainsets(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery_ml.trainsets_page, gallery.html_error)


@app.function_name("gallery_trainset")
@_route("gallery/-/trainsets/{name}/{version}")
def gallery_trainset(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery_ml.trainset_page, gallery.html_error)


@app.function_name("gallery_models")
@_route("gallery/-/models")
def gallery_models(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery_ml.models_page, gallery.html_error)


@app.function_name("gallery_model")
@_route("gallery/-/models/{name}/{version}")
def gallery_model(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery_ml.model_page, gallery.html_error)


@app.function_name("gallery_domain")
@_route("gallery/{domain}")
def gallery_domain(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery.domain_page, gallery.html_error)


@app.function_name("gallery_set")
@_route("gallery/{domain}/set")
def gallery_set(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery.set_page, gallery.html_error)


@app.function_name("gallery_image")
@_route("gallery/{domain}/image")
def gallery_image(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, gallery.image_page, gallery.html_error)


@app.function_name("gallery_file")
@_route("gallery/{domain}/file")
def gallery_file(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, renditions.serve_blob)


@app.function_name("gallery_preview")
@_route("gallery/{domain}/preview")
def gallery_preview(req: func.HttpRequest) -> func.HttpResponse:
    return _http(req, renditions.serve_preview)


@app.function_name("export_request")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_EXPORT_QUEUE%", connection=CONNECTION)
def export_request(msg: func.QueueMessage) -> None:
    """Export a training set: plan and fan out WebDataset shards, write one shard, or write Azure ML JSONL."""
    from corpus.app.exports import on_export_message
    from corpus.domain.exports import parse_export_message

    rt = get_runtime()
    run_queue_job(rt, rt.settings.export_queue, msg, lambda body: on_export_message(rt, parse_export_message(body)))


@app.function_name("build_trainset")
@app.queue_trigger(arg_name="msg", queue_name="%CORPUS_TRAINSET_QUEUE%", connection=CONNECTION)
def build_trainset(msg: func.QueueMessage) -> None:
    """Register a training set and build its manifest, continuing in follow-up messages if needed."""
    from corpus.app.trainsets import on_trainset_message
    from corpus.domain.trainsets import parse_trainset_message

    rt = get_runtime()
    run_queue_job(rt, rt.settings.trainset_queue, msg, lambda body: on_trainset_message(rt, parse_trainset_message(body)))


# -- Read-only HTTP: training sets, models, lineage (the same JSON as `corpus trainset|model show --json`, `corpus lineage`)


@app.function_name("api_trainsets")
@_route("api/trainsets")
def api_trainsets(req: func.HttpRequest) -> func.HttpResponse:
    """The rows of `corpus trainset list --json`, paged."""
    return _http(req, web.api_trainsets)


@app.function_name("api_trainset")
@_route("api/trainsets/{name}/{version}")
def api_trainset(req: func.HttpRequest) -> func.HttpResponse:
    """One training set, as `corpus trainset show N:V --json`."""
    return _http(req, web.api_trainset)


@app.function_name("api_models")
@_route("api/models")
def api_models(req: func.HttpRequest) -> func.HttpResponse:
    """The rows of `corpus model list --json`, paged."""
    return _http(req, web.api_models)


@app.function_name("api_model")
@_route("api/models/{name}/{version}")
def api_model(req: func.HttpRequest) -> func.HttpResponse:
    """One model, as `corpus model show M:V --json`."""
    return _http(req, web.api_model)


@app.function_name("api_lineage")
@_route("api/lineage")
def api_lineage(req: func.HttpRequest) -> func.HttpResponse:
    """The training sets and models that used a blob, as `corpus lineage --blob CONTAINER/BLOB --json`."""
    return _http(req, web.api_lineage)


@app.function_name("api_dupes")
@_route("api/dupes")
def api_dupes(req: func.HttpRequest) -> func.HttpResponse:
    """An original's facts and duplicates, as the gallery's image page lists them."""
    return _http(req, web.api_dupes)

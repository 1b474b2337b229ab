"""The read-only HTTP API: requests and responses as plain data, errors as JSON with a status.

``function_app.py`` turns an ``azure.functions.HttpRequest`` into a :class:`Request` and a
:class:`Response` back into an ``HttpResponse``; everything between is here, testable without
the Functions library. Every handler runs inside :func:`handle`, which maps the error tree to a
status code and never lets a stack trace reach a client (it goes to the log instead).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from corpus.app import preflight, views
from corpus.app.runtime import Runtime
from corpus.app.trainsets import lineage_of_blob, store_of
from corpus.domain import keys
from corpus.domain.errors import BlobNotFound, ImageError, InvalidNameError, NotFoundError
from corpus.domain.limits import MAX_BLOB_NAME
from corpus.domain.paths import validate_domain, validate_version
from corpus.store.azure_ports import as_storage_error
from corpus.store.tables import encode_continuation

log = logging.getLogger("corpus.web")

JSON = "application/json; charset=utf-8"


class HttpError(Exception):
    """A client-facing failure with its status code; the message is shown to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """What a handler sees: the method, route values, every query value in order, headers (lower-case)."""

    method: str
    route: Mapping[str, str] = field(default_factory=dict)
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, url: str, route: Mapping[str, str], headers: Mapping[str, str]) -> Request:
        """Query values come from the URL itself: ``HttpRequest.params`` keeps one value per name."""
        query = tuple(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        return cls(method.upper(), dict(route), query, {k.lower(): v for k, v in headers.items()})

    def arg(self, name: str) -> str | None:
        """The last value of a query parameter, or None (an empty value counts as absent)."""
        values = [v for k, v in self.query if k == name]
        return values[-1] if values and values[-1] != "" else None

    def args(self, name: str) -> tuple[str, ...]:
        return tuple(v for k, v in self.query if k == name and v != "")

    def limit(self, default: int, maximum: int) -> int:
        raw = self.arg("limit")
        if raw is None:
            return default
        try:
            n = int(raw)
        except ValueError:
            raise HttpError(400, f"limit must be a whole number, not {raw!r}") from None
        if not 1 <= n <= maximum:
            raise HttpError(400, f"limit must be 1..{maximum}")
        return n

    def domain(self) -> str:
        return validate_domain(self.route.get("domain", ""))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, default=str, ensure_ascii=False, indent=2).encode("utf-8")
    return Response(status, body, {"Content-Type": JSON, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def json_error(status: int, message: str) -> Response:
    return json_response({"error": message, "status": status}, status)


Handler = Callable[[Runtime, Request], Response]


def status_of(exc: Exception) -> tuple[int, str]:
    """The status and client-safe message of an error; anything unexpected is a bare 500."""
    if isinstance(exc, HttpError):
        return exc.status, str(exc)
    if isinstance(exc, InvalidNameError):
        return 400, str(exc)
    storage = as_storage_error(exc)
    if isinstance(exc, NotFoundError) or isinstance(storage, BlobNotFound):
        return 404, str(exc) if isinstance(exc, NotFoundError) else "not found"
    if isinstance(exc, ImageError):
        return 422, str(exc)
    if storage is not None:
        return 503, "storage is unavailable or refused the request; try again"
    return 500, "internal error (logged on the server)"


def handle(rt: Runtime, req: Request, handler: Handler, error: Callable[[int, str], Response] = json_error) -> Response:
    """Run ``handler``; map errors to ``error(status, message)``. Only GET and HEAD are served."""
    if req.method not in ("GET", "HEAD"):
        return error(405, "read-only: only GET and HEAD")
    named = req.route.get("domain")
    if named is not None and named in rt.settings.reserved_containers:
        # The pipeline's own containers (staging, rejected, ...) are not domains: never serve or render from them.
        return error(404, f"{named!r} is not a domain of the corpus")
    try:
        return handler(rt, req)
    except Exception as exc:  # every failure becomes a response; the trace goes to the log
        status, message = status_of(exc)
        if status >= 500:
            log.exception("%s failed", getattr(handler, "__name__", "handler"))
        return error(status, message)


# -- JSON API ------------------------------------------------------------------------------------

SETS_PAGE = views.MAX_PAGE
IMAGES_PAGE = 100


def api_sets(rt: Runtime, req: Request) -> Response:
    """``GET /api/sets?domain=&tag=&transform=&limit=&continuation=``: the rows of ``corpus sets --json``.

    Without ``continuation`` and with fewer than ``limit`` (default 1,000) sets whose JSON fits
    :data:`MAX_PAGE_BYTES`, the one page is exactly the CLI's list. With paging, each page is a key
    range sorted the CLI's way, and every set is on exactly one page; the end is the page without
    ``continuation``. A page stopped by its size continues at the first set it left out.
    """
    domain = req.arg("domain")
    if domain:
        validate_domain(domain)
        preflight.require_domain(rt.clients, rt.settings, domain, rt.catalog)  # 404 naming it, as the CLI: not an empty list
    limit = req.limit(SETS_PAGE, views.MAX_PAGE)
    tags = req.args("tag")
    rows, token = views.page_sets(rt.catalog, limit, req.arg("continuation"), domain, tags, req.arg("transform"))
    page, cut = cut_page(rows, views.set_row)  # bounded in bytes too (MAX_PAGE_BYTES)
    if cut is not None and domain and tags:  # a tag-index token is the last set listed: the next page starts after it
        token = views.after_set(domain, rows[cut - 1])
    elif cut is not None:  # a key-range token starts *at* its keys: the first set left out
        token = encode_continuation({"PartitionKey": rows[cut].domain, "RowKey": rows[cut].row_key})
    return json_response({"sets": page, "continuation": token})


def api_set_images(rt: Runtime, req: Request) -> Response:
    """``GET /api/sets/{domain}/images?path=&version=&transform=&limit=&continuation=``: image records,
    in row-key order, at most ``limit`` and :data:`MAX_PAGE_BYTES` of JSON a page."""
    sel = views.SetSelector.parse(req.domain(), req.arg("path"), req.arg("version"), req.arg("transform"))
    limit = req.limit(IMAGES_PAGE, views.MAX_PAGE)
    rows, token = views.page_images(rt.catalog, sel, limit, req.arg("continuation"))
    pk = keys.image_partition_key(sel.ref, sel.transform)
    page, token = bounded_page(rows, token, views.image_row, lambda r: (pk, keys.image_row_key(r.file)))
    return json_response({"images": page, "continuation": token})


# -- training sets, models, lineage --------------------------------------------------------------

MAX_PAGE_BYTES = 1024 * 1024
"""A page of every ``/api/`` listing (sets, a set's images, training sets, models) stops before
this much JSON (issue 25 R8: a training set's row can carry ~90 KB, so 1,000 rows were 29 MiB;
1,000 sets or images with long names pass 1 MiB too); never fewer than one row."""


def cut_page(rows: list[Any], to_json: Callable[[Any], dict[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """The rows' JSON up to :data:`MAX_PAGE_BYTES` as :func:`json_response` prints it (each line of
    a row indented 4 more), and the index of the first row left out (None: all fit). Never fewer
    than one row, so paging always advances."""
    out: list[dict[str, Any]] = []
    size = 128  # the envelope and the continuation
    for i, row in enumerate(rows):
        data = to_json(row)
        text = json.dumps(data, default=str, ensure_ascii=False, indent=2)
        n = len(text.encode("utf-8")) + 4 * (text.count("\n") + 1) + 2
        if out and size + n > MAX_PAGE_BYTES:
            return out, i
        out.append(data)
        size += n
    return out, None


def bounded_page(
    rows: list[Any], token: str | None, to_json: Callable[[Any], dict[str, Any]], keys_of: Callable[[Any], tuple[str, str]]
) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`cut_page` of rows read as a key range, and the token of the first row left out (a
    table continuation starts *at* its keys), else ``token``."""
    out, cut = cut_page(rows, to_json)
    if cut is None:
        return out, token
    pk, rk = keys_of(rows[cut])
    return out, encode_continuation({"PartitionKey": pk, "RowKey": rk})


TRAINSETS_PAGE = 100
"""A training set's row can carry ~90 KB (definition, label counts, reason): 100 keep a page small."""
MODELS_PAGE = 100


def _name_version(req: Request, what: str) -> tuple[str, str]:
    """``{name}/{version}`` of the route, validated as ``corpus trainset show N:V`` validates them."""
    name = validate_version(req.route.get("name", ""), f"{what} name")
    return name, validate_version(req.route.get("version", ""), f"{what} version")


def api_trainsets(rt: Runtime, req: Request) -> Response:
    """``GET /api/trainsets?limit=&continuation=``: the rows of ``corpus trainset list --json``, paged.

    Pages are key ranges in the CLI's (name, version) order; with fewer than ``limit`` (default
    100) training sets and no ``continuation``, the one page is exactly the CLI's list. A page is
    also bounded in bytes (:data:`MAX_PAGE_BYTES`): it may hold fewer rows, with a continuation.
    """
    limit = req.limit(TRAINSETS_PAGE, views.MAX_PAGE)
    rows, token = views.page_trainsets(store_of(rt), limit, req.arg("continuation"))
    page, token = bounded_page(rows, token, views.trainset_json, lambda r: r.keys)
    return json_response({"trainsets": page, "continuation": token})


def api_trainset(rt: Runtime, req: Request) -> Response:
    """``GET /api/trainsets/{name}/{version}``: what ``corpus trainset show N:V --json`` prints (any status)."""
    return _show(req, "training set", store_of(rt).trainsets.get, views.trainset_json)


def api_models(rt: Runtime, req: Request) -> Response:
    """``GET /api/models?limit=&continuation=``: the rows of ``corpus model list --json``, paged as training sets."""
    limit = req.limit(MODELS_PAGE, views.MAX_PAGE)
    rows, token = views.page_models(store_of(rt), limit, req.arg("continuation"))
    page, token = bounded_page(rows, token, views.model_json, lambda m: (keys.escape(m.name), keys.escape(m.version)))
    return json_response({"models": page, "continuation": token})


def api_model(rt: Runtime, req: Request) -> Response:
    """``GET /api/models/{name}/{version}``: what ``corpus model show M:V --json`` prints."""
    return _show(req, "model", store_of(rt).models.get, views.model_json)


def _show(req: Request, what: str, get: Callable[[str, str], Any], to_json: Callable[[Any], dict[str, Any]]) -> Response:
    """One training set or model named by the route, as JSON; 404 when there is none."""
    name, version = _name_version(req, what)
    row = get(name, version)
    if row is None:
        raise NotFoundError(f"no {what} {name}:{version}")
    return json_response(to_json(row))


def blob_arg(req: Request) -> tuple[str, str]:
    """``?blob=CONTAINER/BLOB`` → (container, blob): a valid domain container, a blob name Azure allows."""
    raw = req.arg("blob")
    container, sep, blob = (raw or "").partition("/")
    if not sep or not blob:
        raise HttpError(400, "blob must be CONTAINER/BLOB, e.g. birds/original/red/v1/r0.jpg")
    if len(blob) > MAX_BLOB_NAME:
        raise HttpError(400, f"a blob name has at most {MAX_BLOB_NAME} characters")
    return validate_domain(container), blob


def api_lineage(rt: Runtime, req: Request) -> Response:
    """``GET /api/lineage?blob=CONTAINER/BLOB``: what ``corpus lineage --blob CONTAINER/BLOB --json`` prints.

    ``{"trainsets": [{"name", "version"}…], "models": [{"name", "version"}…]}``: the ready training
    sets that list the blob (an original: it or any transform of it), and the models trained on them.
    """
    container, blob = blob_arg(req)
    return json_response(lineage_of_blob(rt, store_of(rt), container, blob))


def api_dupes(rt: Runtime, req: Request) -> Response:
    """``GET /api/dupes?blob=CONTAINER/BLOB``: an original's facts and its duplicates (docs/dedupe.md):
    ``{"blob", "facts", "cluster", "duplicates": [{"container", "blob", "sha256", "distance", "kind"}…], "more"}``."""
    from corpus.app.dupes import duplicates_of, set_of_original

    container, blob = blob_arg(req)
    ref = set_of_original(container, blob)
    if ref is None:
        raise HttpError(400, "blob must name an original: CONTAINER/original/<dir…>/<version>/<file>")
    record = rt.catalog.images.get(ref, blob.rsplit("/", 1)[-1])
    if record is None or record.blob != blob:
        raise NotFoundError(f"no image {container}/{blob}")
    return json_response(duplicates_of(rt.catalog.dupes, container, blob, record))

"""Image bytes for the gallery, served by the function itself: stored blobs and cached previews.

Why through the function and not SAS links: the function already holds the identity and the
Easy Auth session; a SAS link would need the identity to hold ``generateUserDelegationKey`` on the
account and would be a bearer token valid for anyone it leaks to. Serving through the function keeps
the images behind the same sign-in as the pages.

Previews: a set without a ``thumbnail`` transform still shows a grid. The first request for an
image's preview reads the original once, renders it with
``corpus.domain.transforms.render(data, "thumbnail", {"size": 256})`` (under the pixel cap) and
stores it as ``preview/256/<sha256 of the source blob name>`` in the domain's container,
written with If-None-Match:* so concurrent first requests store one preview. Every later request
reads only the preview. Why there: previews live and die with the domain's images (delete the
container, they go too), need no new container or role, and ``preview/`` is no prefix the pipeline
lists (``original/`` and ``transform/`` are). Originals and transformed images are immutable, so a
preview never goes stale; the hashed name stays far below the 1,024-character blob name limit.

Every image response carries the blob's ``ETag`` and ``Cache-Control: private, max-age=86400``;
a request with a matching ``If-None-Match`` is answered ``304`` from a conditional read that
transfers no bytes.
"""

from __future__ import annotations

import hashlib
import logging

from corpus.app.runtime import Runtime
from corpus.app.web import HttpError, Request, Response
from corpus.domain import transforms
from corpus.domain.errors import BlobConflict, BlobNotFound
from corpus.domain.limits import MAX_BLOB_NAME
from corpus.domain.media import CONTENT_TYPES

log = logging.getLogger("corpus.web")

PREVIEW_SIZE = 256
PREVIEW_PREFIX = f"preview/{PREVIEW_SIZE}/"
SERVED_PREFIXES = ("original/", "transform/", "preview/")
PREVIEW_SOURCES = ("original/", "transform/")
MAX_SERVED_BYTES = 32 * 1024 * 1024
"""Largest blob the gallery streams through the function (one download's first request reads this much)."""
CACHE_CONTROL = "private, max-age=86400"
"""Served blobs never change (versions are immutable); ``private``: they are behind sign-in."""
IMAGE_TYPES = frozenset(CONTENT_TYPES.values())


def preview_name(source_blob: str) -> str:
    """Named by a digest of the source's name (its content type is the blob's property)."""
    return PREVIEW_PREFIX + hashlib.sha256(source_blob.encode("utf-8", "surrogatepass")).hexdigest()


def _blob_arg(req: Request, prefixes: tuple[str, ...]) -> str:
    blob = req.arg("blob")
    if not blob or len(blob) > MAX_BLOB_NAME or not blob.startswith(prefixes):
        raise HttpError(400, f"blob must name an image under {', '.join(prefixes)}")
    if any(seg in ("", ".", "..") for seg in blob.split("/")):
        raise HttpError(400, "blob has an empty, '.' or '..' segment")
    return blob


def _served(rt: Runtime, domain: str, blob: str, inm: str | None) -> Response:
    """Read one blob (conditionally on ``If-None-Match``) and answer it as an image."""
    got = rt.blobs.read_if_changed(domain, blob, inm) if inm else rt.blobs.read(domain, blob)
    if got is None:  # storage answered 304: the client's copy is current
        return Response(304, b"", {"ETag": inm or "", "Cache-Control": CACHE_CONTROL})
    props = got.info
    if props.size > MAX_SERVED_BYTES:
        raise HttpError(413, f"{blob} is {props.size} bytes: too large to show here")
    data = got.data
    ctype = props.content_type
    return Response(
        200,
        data,
        {
            "Content-Type": ctype if ctype in IMAGE_TYPES else "application/octet-stream",
            "ETag": props.etag,
            "Cache-Control": CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


def serve_blob(rt: Runtime, req: Request) -> Response:
    """``GET /gallery/{domain}/file?blob=``: a stored image (original, transformed or preview) as it is."""
    domain = req.domain()
    return _served(rt, domain, _blob_arg(req, SERVED_PREFIXES), req.headers.get("if-none-match"))


def serve_preview(rt: Runtime, req: Request) -> Response:
    """``GET /gallery/{domain}/preview?blob=``: the cached preview of an image, made on first request.

    A cached preview costs one storage request (a conditional read); a missing one is rendered
    from its source once, stored, then served.
    """
    domain = req.domain()
    source = _blob_arg(req, PREVIEW_SOURCES)
    name = preview_name(source)
    try:
        return _served(rt, domain, name, req.headers.get("if-none-match"))
    except BlobNotFound:
        pass
    ensure_preview(rt, domain, source)
    return _served(rt, domain, name, None)


def ensure_preview(rt: Runtime, domain: str, source: str) -> str:
    """Render and store the preview of ``source`` unless it exists; return its blob name. Idempotent."""
    name = preview_name(source)
    got = rt.blobs.read(domain, source)
    if got.info.size > rt.settings.max_blob_bytes:
        raise HttpError(413, f"{source} is larger than {rt.settings.max_blob_bytes} bytes")
    out = transforms.render(got.data, "thumbnail", {"size": PREVIEW_SIZE}, rt.settings.max_pixels, admit=rt.decode_budget.hold)
    try:
        if rt.blobs.put_once(domain, name, out.data, out.content_type):
            log.info("stored preview %s/%s of %s", domain, name, source)
    except BlobConflict:
        pass  # another request stored it first with other bytes (a renderer changed): it stands
    return name

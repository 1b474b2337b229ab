"""The gallery: server-rendered HTML pages over the catalog, no JavaScript, no external assets.

Pages (the URLs are a contract, see ``function_app.py``)::

    /gallery                                   domains
    /gallery/{domain}?tag=…&transform=…        its sets, filtered by tags (all of them), originals or a transform
    /gallery/{domain}/set?path=&version=&transform=&limit=&continuation=   a paged grid
    /gallery/{domain}/image?blob=              one image, its metadata, its transforms side by side,
                                               the training sets and models that used it

Everything users name (domains are validated; paths, tags, file names and transform names are not
restricted) is written through :func:`html.escape`, in text and in attributes alike; URLs are built
with ``urlencode``. The Content-Security-Policy allows no script at all and only this page's own
style (by hash), so even a missed escape could not run code.

A grid page never reads an original: each cell shows the set's ``thumbnail`` transform of the
image when it exists (found with one range query per page), else its cached preview
(:mod:`corpus.app.renditions`), which reads the original once, ever.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from itertools import islice
from typing import Any
from urllib.parse import quote, urlencode

from corpus.app import views
from corpus.app.dupes import duplicates_of
from corpus.app.renditions import PREVIEW_SOURCES
from corpus.app.runtime import Runtime
from corpus.app.trainsets import lineage_of_blob, store_of
from corpus.app.web import HttpError, Request, Response
from corpus.catalog.facets import facets
from corpus.catalog.storage import CatalogStorage
from corpus.domain.errors import NotFoundError
from corpus.domain.paths import SetRef, validate_version
from corpus.store.rows import ImageRow, ImageSetRow, Transform

log = logging.getLogger("corpus.gallery")

GRID_PAGE = 48
MAX_GRID_PAGE = 200
THUMBNAIL = "thumbnail"

CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:.6em 1em}header a{color:#fff}
main{padding:1em}a{color:#1f5fa8}
nav.crumbs{font-size:.95em}nav.crumbs a,nav.crumbs span{margin-right:.4em}
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.tag{display:inline-block;background:#e4ecf7;border-radius:3px;padding:0 .4em;margin:0 .2em .2em 0;font-size:.9em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:.8em}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:.4em;text-align:center}
figure img{max-width:100%;height:160px;object-fit:contain;display:block;margin:0 auto}
figcaption{font-size:.8em;word-break:break-all}
.side{display:flex;flex-wrap:wrap;gap:1em}.side img{max-height:256px}
form{margin:.5em 0}.muted{color:#777}.error{color:#a00}
""".strip()

CSP = (
    "default-src 'none'; img-src 'self' data:; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()}'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def e(text: object) -> str:
    """HTML-escape any value, quotes included (safe in text and in quoted attributes)."""
    return html.escape(str(text), quote=True)


def url(where: str, /, **params: str | list[str] | tuple[str, ...] | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "", (), [])}, doseq=True)
    return where + ("?" + query if query else "")


def html_response(title: str, crumbs: list[tuple[str, str | None]], body: str, status: int = 200) -> Response:
    nav = " / ".join(f'<a href="{e(href)}">{e(text)}</a>' if href else f"<span>{e(text)}</span>" for text, href in crumbs)
    page = (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)} · corpus</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<style>{CSS}</style></head>"
        f'<body><header><nav class="crumbs">{nav}</nav></header><main>{body}</main></body></html>\n'
    )
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    return Response(status, page.encode("utf-8"), headers)


def html_error(status: int, message: str) -> Response:
    return html_response(f"Error {status}", [("corpus", "/gallery")], f'<p class="error">{e(message)}</p>', status)


def _tags(tags: tuple[str, ...], domain: str) -> str:
    return "".join(f'<a class="tag" href="{e(url(f"/gallery/{domain}", tag=t))}">{e(t)}</a>' for t in tags)


def _set_link(r: ImageSetRow) -> str:
    return url(f"/gallery/{r.domain}/set", path=r.path, version=r.version, transform=r.transform_label or None)


def home(rt: Runtime, req: Request) -> Response:
    """``/gallery``: every domain with its number of sets and images (originals)."""
    per_domain: dict[str, list[ImageSetRow]] = {}
    for r in rt.catalog.sets.query(originals_only=True):
        per_domain.setdefault(r.domain, []).append(r)
    rows = "".join(
        f'<tr><td><a href="{e(url("/gallery/" + d))}">{e(d)}</a></td><td>{len(sets)}</td>'
        f"<td>{sum(s.image_count for s in sets)}</td></tr>"
        for d, sets in sorted(per_domain.items())
    )
    body = (
        "<h1>Domains</h1><table><tr><th>domain</th><th>sets</th><th>images</th></tr>" + rows + "</table>"
        if rows
        else '<p class="muted">No image sets yet: upload a folder with <code>corpus upload</code>.</p>'
    )
    body += '<p><a href="/gallery/-/trainsets">training sets</a> · <a href="/gallery/-/models">models</a></p>'
    return html_response("Domains", [("corpus", None)], body)


def domain_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/{domain}?tag=…&transform=…``: the domain's sets that carry every tag given."""
    domain = req.domain()
    tags = req.args("tag")
    transform = req.arg("transform")
    everything = rt.catalog.sets.list(domain=domain)
    if not everything:
        raise NotFoundError(f"no image sets in domain {domain!r}")
    labels = sorted({r.transform_label for r in everything if r.transform_label})
    shown = views.list_sets(rt.catalog, domain=domain, tags=tags, transform=transform)
    options = '<option value="">originals</option>' + "".join(
        f'<option value="{e(t)}"{" selected" if t == transform else ""}>{e(t)}</option>' for t in labels
    )
    kept = "".join(f'<input type="hidden" name="tag" value="{e(t)}">' for t in tags)
    active = "".join(
        f'<span class="tag">{e(t)} <a href="{e(url(f"/gallery/{domain}", tag=[x for x in tags if x != t], transform=transform))}"'
        ' title="remove this filter">remove</a></span>'
        for t in tags
    )
    form = (
        f'<form method="get" action="{e("/gallery/" + domain)}">{kept}'
        '<label>tag <input name="tag" id="tag" autocomplete="off"></label> '
        f'<label>show <select name="transform" id="transform">{options}</select></label> '
        '<button type="submit" id="filter">filter</button></form>'
    )
    rows = "".join(
        f'<tr class="set"><td><a class="set-link" href="{e(_set_link(r))}">{e(r.path)}</a></td><td>{e(r.version)}</td>'
        f"<td>{e(r.transform_label or 'original')}</td><td>{r.image_count}</td><td>{human_bytes(r.total_bytes)}</td>"
        f"<td>{_tags(r.tags, domain)}</td></tr>"
        for r in shown
    )
    table = (
        "<table><tr><th>path</th><th>version</th><th>images of</th><th>images</th><th>size</th><th>tags</th></tr>"
        + rows
        + "</table>"
        if rows
        else '<p class="muted">No set matches.</p>'
    )
    filters = f"<p>Filtered by {active}</p>" if active else ""
    body = f"<h1>{e(domain)}</h1>{form}{filters}{table}{_facet_table(rt, domain)}"
    return html_response(domain, [("corpus", "/gallery"), (domain, None)], body)


MAX_FACETS = 300


def _facet_table(rt: Runtime, domain: str) -> str:
    """Images per tag × transform, per version, from the catalog snapshot (docs/query.md), as of its watermark."""
    try:
        found = facets(CatalogStorage.of(rt.clients, rt.settings, rt.blobs), domain)
    except Exception:
        log.exception("facet table of %s", domain)
        return '<h2>Facets</h2><p class="muted" id="facets">The catalog snapshot could not be read.</p>'
    if found is None or not found.counts:
        return '<h2>Facets</h2><p class="muted" id="facets">No catalog snapshot of this domain yet (corpus catalog sync).</p>'
    rows = sorted(found.counts.items())
    shown = "".join(
        f"<tr><td>{e(v)}</td><td>{e(tag)}</td><td>{e(t or 'original')}</td><td>{n}</td></tr>"
        for (v, tag, t), n in rows[:MAX_FACETS]
    )
    left = len(rows) - MAX_FACETS
    more = f'<p class="muted">{left} more rows: ask <code>corpus query</code>.</p>' if left > 0 else ""
    return (
        f'<h2>Facets</h2><table id="facets"><tr><th>version</th><th>tag</th><th>images of</th><th>images</th></tr>{shown}</table>'
        f'{more}<p class="muted">From the catalog snapshot as of {e(found.watermark)}.</p>'
    )


def _thumbnail_set(rt: Runtime, ref: SetRef) -> Transform | None:
    """The newest ``thumbnail`` transform of this set that holds images, if any."""
    found = [
        r
        for r in rt.catalog.sets.list(domain=ref.domain, transform=THUMBNAIL, version=ref.version)
        if r.path == ref.path and r.image_count > 0 and r.transform
    ]
    return found[-1].transform if found else None


def rendition_url(domain: str, blob: str, is_small: bool) -> str:
    """A stored small image as it is, or the preview of a larger one."""
    return url(f"/gallery/{domain}/file" if is_small else f"/gallery/{domain}/preview", blob=blob)


def set_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/{domain}/set?path=&version=&transform=``: one page of the set's images as a grid."""
    sel = views.SetSelector.parse(req.domain(), req.arg("path"), req.arg("version"), req.arg("transform"))
    row = views.get_set(rt.catalog, sel)
    ref, domain = sel.ref, sel.ref.domain
    limit = req.limit(GRID_PAGE, MAX_GRID_PAGE)
    images, token = views.page_images(rt.catalog, sel, limit, req.arg("continuation"), known=row)
    thumbs: dict[str, ImageRow] = {}
    if sel.transform is None:
        thumb = _thumbnail_set(rt, ref)
        if thumb:
            thumbs = rt.catalog.images.derived_from(ref, thumb, [i.file for i in images])
    cells = []
    for img in images:
        small = thumbs.get(img.blob)
        if small is not None:
            src = rendition_url(domain, small.blob, True)
        else:
            src = rendition_url(domain, img.blob, sel.transform is not None and sel.transform[0] == THUMBNAIL)
        cells.append(
            f'<figure><a href="{e(url(f"/gallery/{domain}/image", blob=img.blob))}">'
            f'<img src="{e(src)}" alt="{e(img.file)}"></a><figcaption>{e(img.file)}</figcaption></figure>'
        )
    label = f" · {row.transform_label}" if row.transform_label else ""
    more = _pager(domain, ref, row, limit, req, token)
    body = (
        f'<h1 id="set-name">{e(ref.path)} <span class="muted">@ {e(ref.version)}{e(label)}</span></h1>'
        f"<p>{row.image_count} images, {human_bytes(row.total_bytes)}. {_tags(row.tags, domain)}</p>"
        f'<div class="grid" id="grid">{"".join(cells)}</div>{more}'
        if cells
        else f'<h1 id="set-name">{e(ref.path)}</h1><p class="muted">No images on this page.</p>'
    )
    crumbs = [("corpus", "/gallery"), (domain, f"/gallery/{domain}"), (f"{ref.path} @ {ref.version}{label}", None)]
    return html_response(f"{ref.path} @ {ref.version}", crumbs, body)


MAX_BACK = 20
"""Earlier pages a grid page remembers (in its links) for "previous"; past that, "first page"."""
FIRST = "-"
"""Stands for the first page in the ``back`` stack (an empty value counts as absent)."""


def _pager(domain: str, ref: SetRef, row: ImageSetRow, limit: int, req: Request, token: str | None) -> str:
    """Previous / first / next links. Continuation tokens only go forward, so each link carries the
    tokens of the pages before it (``back``, at most :data:`MAX_BACK`)."""
    here = req.arg("continuation")
    back = list(req.args("back"))[-MAX_BACK:]

    def link(ident: str, text: str, continuation: str | None, stack: list[str]) -> str:
        href = url(
            f"/gallery/{domain}/set",
            path=ref.path,
            version=ref.version,
            transform=row.transform_label or None,
            limit=str(limit),
            continuation=continuation,
            back=stack,
        )
        return f'<a id="{ident}" href="{e(href)}">{text}</a>'

    links = []
    if here:
        links.append(link("first", "« first page", None, []))
        if back:
            previous = back[-1]
            links.append(link("previous", "← previous page", None if previous == FIRST else previous, back[:-1]))
    if token:
        links.append(link("next", "next page →", token, [*back, here or FIRST][-MAX_BACK:]))
    return f"<p>{' · '.join(links)}</p>" if links else ""


def _versions(rt: Runtime, domain: str, ref: SetRef, file: str) -> str:
    """Links to the same file in the other versions of its set (originals), newest listed last."""
    found = []
    for s in islice(rt.catalog.sets.query(domain, originals_only=True), MAX_SETS_SCANNED):
        if s.path != ref.path or s.version == ref.version:
            continue
        other = rt.catalog.images.get(SetRef(domain, ref.dirs, s.version), file)
        if other is not None:
            found.append(f'<a class="version" href="{e(url(f"/gallery/{domain}/image", blob=other.blob))}">{e(s.version)}</a>')
    return "".join(f'<span class="tag">{a}</span>' for a in found) or '<span class="muted">none</span>'


MAX_SETS_SCANNED = 5000


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``; exact bytes below 1 KiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def parse_blob(blob: str) -> tuple[SetRef, Transform | None, str]:
    """``original/<dir…>/<version>/<file>`` or ``transform/<name>/<tversion>/<dir…>/<version>/<file>``.

    Unambiguous because a file name has no ``/``: the version is always the second-to-last segment.
    """
    segs = blob.split("/")
    if segs[0] == "original" and len(segs) >= 3:
        return SetRef("", tuple(segs[1:-2]), validate_version(segs[-2])), None, segs[-1]
    if segs[0] == "transform" and len(segs) >= 5:
        t = (segs[1], validate_version(segs[2], "transform version"))
        return SetRef("", tuple(segs[3:-2]), validate_version(segs[-2])), t, segs[-1]
    raise HttpError(400, "blob must be original/<dir…>/<version>/<file> or transform/<name>/<version>/<dir…>/<version>/<file>")


def image_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/{domain}/image?blob=``: one image, its record, and every transform of it side by side."""
    domain = req.domain()
    blob = req.arg("blob") or ""
    if not blob.startswith(PREVIEW_SOURCES):
        raise HttpError(400, "blob must name an image under original/ or transform/")
    bare, transform, file = parse_blob(blob)
    ref = SetRef(domain, bare.dirs, bare.version)
    record = rt.catalog.images.get(ref, file, transform)
    row = rt.catalog.sets.get(ref, transform)
    if record is None or row is None or record.blob != blob:
        raise NotFoundError(f"no image {blob!r} in domain {domain!r}")
    facts = [
        ("set", f'<a href="{e(_set_link(row))}">{e(ref.path)} @ {e(ref.version)}</a>'),
        ("file", e(record.file)),
        ("blob", e(record.blob)),
        ("size", f"{human_bytes(record.size)} ({record.size:,} bytes)"),
        ("pixels", f"{record.width} x {record.height}"),
        ("type", e(record.content_type)),
        ("MD5 (base64)", e(views.md5_shown(record.md5))),
        ("tags", _tags(row.tags, domain)),
        *([("other versions", _versions(rt, domain, ref, file))] if transform is None else []),
        ("added", e(record.created_at or "")),
    ]
    if transform:
        facts.insert(1, ("transform", e(f"{transform[0]}:{transform[1]}")))
        facts.append(("made from", f'<a href="{e(url(f"/gallery/{domain}/image", blob=record.source))}">{e(record.source)}</a>'))
    else:
        facts.append(("staged as", e(record.source)))
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"
    is_thumb = transform is not None and transform[0] == THUMBNAIL
    main = (
        f'<figure><img id="image" src="{e(rendition_url(domain, blob, is_thumb))}" alt="{e(record.file)}">'
        f'<figcaption><a href="{e(url(f"/gallery/{domain}/file", blob=blob))}">full size</a></figcaption></figure>'
    )
    side = ""
    if transform is None:
        cells = []
        for t in rt.catalog.sets.list(domain=domain, version=ref.version):
            if t.transform is None or t.path != ref.path:
                continue
            made = rt.catalog.images.derived_from(ref, t.transform, [file]).get(blob)
            if made is None:
                continue
            small = t.transform[0] == THUMBNAIL
            cells.append(
                f'<figure><a href="{e(url(f"/gallery/{domain}/image", blob=made.blob))}">'
                f'<img src="{e(rendition_url(domain, made.blob, small))}" alt="{e(t.transform_label)}"></a>'
                f"<figcaption>{e(t.transform_label)} · {made.width} x {made.height}</figcaption></figure>"
            )
        side = "<h2>Transforms</h2>" + (
            f'<div class="side">{"".join(cells)}</div>' if cells else '<p class="muted">No transform of this image yet.</p>'
        )
    used = _used_in(rt, domain, blob, transform is None)
    dupes = _duplicates(rt, domain, blob, record) if transform is None else _facts_table(record)
    body = f'<h1>{e(record.file)}</h1><div class="side">{main}{table}</div>{side}{dupes}{used}'
    crumbs = [
        ("corpus", "/gallery"),
        (domain, f"/gallery/{domain}"),
        (f"{ref.path} @ {ref.version}", _set_link(row)),
        (file, None),
    ]
    return html_response(record.file, crumbs, body)


def _facts_table(record: ImageRow) -> str:
    """The "Quality" section: the image's facts (docs/dedupe.md), or why there are none."""
    if record.facts is None:
        return '<h2>Quality</h2><p class="muted" id="facts">No facts yet: run <code>corpus reindex --facts</code>.</p>'
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in record.facts.to_json().items())
    return f'<h2>Quality</h2><table id="facts">{rows}</table>'


def _duplicates(rt: Runtime, domain: str, blob: str, record: ImageRow) -> str:
    """The image's facts and its duplicates, linked (what ``GET /api/dupes`` returns)."""
    found = duplicates_of(rt.catalog.dupes, domain, blob, record)

    def item(d: dict[str, Any]) -> str:
        how = f"near · {d['distance']} bits" if d["kind"] == "near" else "exact copy"
        href = url(f"/gallery/{domain}/image", blob=d["blob"])
        return f'<li><a class="dupe" href="{e(href)}">{e(d["blob"])}</a> {e(how)}</li>'

    items = "".join(item(d) for d in found["duplicates"])
    more = f"<li>and {found['more']} more</li>" if found["more"] else ""
    listing = f'<ul id="duplicates">{items}{more}</ul>' if items else '<p class="muted" id="duplicates">No duplicates.</p>'
    return _facts_table(record) + "<h2>Duplicates</h2>" + listing


def _used_in(rt: Runtime, domain: str, blob: str, original: bool) -> str:
    """The "Used in" section: what ``GET /api/lineage`` (and ``corpus lineage --blob``) returns for the image.

    For an original, the ready training sets that list it or any transform of it; for a transformed
    image, those that list it. Each links to its JSON record (``/api/trainsets/…``, ``/api/models/…``).
    """
    found = lineage_of_blob(rt, store_of(rt), domain, blob)

    def links(kind: str, refs: list[dict[str, str]]) -> str:
        out = []
        for r in refs:
            href = f"/api/{kind}s/{quote(r['name'], safe='')}/{quote(r['version'], safe='')}"
            out.append(f'<a class="{kind}" href="{e(href)}">{e(r["name"])}:{e(r["version"])}</a>')
        return ", ".join(out)

    how = "this image or any transform of it" if original else "this image"
    if not found["trainsets"]:
        return f'<h2>Used in</h2><p class="muted" id="used-in">No ready training set lists {how}.</p>'
    models = links("model", found["models"]) or '<span class="muted">none registered</span>'
    return (
        f'<h2>Used in</h2><table id="used-in"><tr><th>training sets</th><td>{links("trainset", found["trainsets"])}</td></tr>'
        f"<tr><th>models</th><td>{models}</td></tr></table>"
        f'<p class="muted">Training sets that list {how}, and the models trained on them.</p>'
    )

"""Gallery pages for training sets and models (HTML beside ``/api/trainsets`` and ``/api/models``)::

    /gallery/-/trainsets                        every training set: status, images, SHA-256
    /gallery/-/trainsets/{name}/{version}       counts per split x label, a sample grid per label, its models
    /gallery/-/models                           every model and its training sets
    /gallery/-/models/{name}/{version}          its training sets, metrics, URI

``-`` is no domain (a container name cannot start with a hyphen), so these routes never shadow
``/gallery/{domain}``. Names, labels, metric names and values, and URIs are user input: all are
escaped (:func:`corpus.app.gallery.e`); a model's URI is shown as text, never as a link (it may be
``javascript:…``).

The split x label table and the samples come from one streamed read of the manifest, stopped after
:data:`MAX_SCAN` lines (said on the page), so a page of a training set of any size costs at most that.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from urllib.parse import quote

from corpus.app import views
from corpus.app.gallery import THUMBNAIL, e, html_response, rendition_url, url
from corpus.app.runtime import Runtime
from corpus.app.trainsets import manifest_lines, store_of
from corpus.app.web import Request, Response
from corpus.domain.errors import NotFoundError
from corpus.store.trainsets_table import READY, TrainsetRow

MAX_SCAN = 100_000
SAMPLES_PER_LABEL = 6
LIST_PAGE = 200
UNLABELED = "(no label)"


def _trainset_href(name: str, version: str) -> str:
    return f"/gallery/-/trainsets/{quote(name, safe='')}/{quote(version, safe='')}"


def _model_href(name: str, version: str) -> str:
    return f"/gallery/-/models/{quote(name, safe='')}/{quote(version, safe='')}"


def _crumbs(kind: str, here: str | None = None) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = [("corpus", "/gallery"), (kind, f"/gallery/-/{kind}" if here else None)]
    if here:
        out.append((here, None))
    return out


def trainsets_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/-/trainsets``: one page of training sets in the CLI's order."""
    rows, token = views.page_trainsets(store_of(rt), req.limit(LIST_PAGE, LIST_PAGE), req.arg("continuation"))
    cells = "".join(
        f'<tr><td><a class="trainset" href="{e(_trainset_href(r.name, r.version))}">{e(r.name)}:{e(r.version)}</a></td>'
        f"<td>{e(r.status)}</td><td>{r.state.images}</td><td><code>{e(r.sha256[:16] or '-')}</code></td></tr>"
        for r in rows
    )
    more = f'<p><a id="next" href="{e(url("/gallery/-/trainsets", continuation=token))}">next page →</a></p>' if token else ""
    body = (
        "<h1>Training sets</h1>"
        + (
            f"<table><tr><th>training set</th><th>status</th><th>images</th><th>SHA-256</th></tr>{cells}</table>"
            if cells
            else '<p class="muted">No training sets yet: <code>corpus trainset create</code>.</p>'
        )
        + more
        + '<p><a href="/gallery/-/models">models</a></p>'
    )
    return html_response("Training sets", _crumbs("trainsets"), body)


def trainset_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/-/trainsets/{name}/{version}``: counts per split x label and a sample grid per label."""
    name, version = req.route.get("name", ""), req.route.get("version", "")
    store = store_of(rt)
    row = store.trainsets.get(name, version)
    if row is None:
        raise NotFoundError(f"no training set {name}:{version}")
    facts = [
        ("status", e(row.status) + (f" — {e(row.reason)}" if row.reason else "")),
        ("images", str(row.state.images)),
        ("SHA-256", f"<code>{e(row.sha256 or '-')}</code>"),
        ("manifest", e(f"{row.manifest_container}/{row.manifest_blob}")),
        ("created", e(row.created_at or "")),
    ]
    models = store.lineage.models_of((row.name, row.version))
    if models:
        facts.append(
            ("models", ", ".join(f'<a class="model" href="{e(_model_href(m, v))}">{e(m)}:{e(v)}</a>' for m, v in sorted(models)))
        )
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"
    detail = _contents(rt, row) if row.status == READY else '<p class="muted">Not ready: no manifest to show.</p>'
    body = f"<h1>{e(row.name)}:{e(row.version)}</h1>{table}{detail}"
    return html_response(f"{row.name}:{row.version}", _crumbs("trainsets", f"{row.name}:{row.version}"), body)


def _contents(rt: Runtime, row: TrainsetRow) -> str:
    counts: Counter[tuple[str, str]] = Counter()
    samples: dict[str, list[dict[str, object]]] = {}
    scanned = 0
    for line in islice(manifest_lines(rt, row), MAX_SCAN):
        scanned += 1
        rec = json.loads(line)
        labels = [str(x) for x in rec.get("labels") or []] or [UNLABELED]
        for label in labels:
            counts[(label, str(rec["split"]))] += 1
            kept = samples.setdefault(label, [])
            if len(kept) < SAMPLES_PER_LABEL:
                kept.append(rec)
    splits = sorted({s for _, s in counts})
    labels = sorted({lb for lb, _ in counts})
    head = "<tr><th>label</th>" + "".join(f"<th>{e(s)}</th>" for s in splits) + "<th>all</th></tr>"
    rows = "".join(
        f"<tr><td>{e(lb)}</td>"
        + "".join(f"<td>{counts[(lb, s)]}</td>" for s in splits)
        + f"<td>{sum(counts[(lb, s)] for s in splits)}</td></tr>"
        for lb in labels
    )
    partial = f'<p class="muted">Counted over the first {MAX_SCAN:,} images of the manifest.</p>' if scanned >= MAX_SCAN else ""
    grids = []
    for lb in labels:
        cells = []
        for rec in samples.get(lb, []):
            domain, blob = str(rec["container"]), str(rec["blob"])
            small = blob.startswith(f"transform/{THUMBNAIL}/")
            cells.append(
                f'<figure><a href="{e(url(f"/gallery/{domain}/image", blob=blob))}">'
                f'<img src="{e(rendition_url(domain, blob, small))}" alt="{e(blob.rsplit("/", 1)[-1])}"></a>'
                f"<figcaption>{e(rec['split'])}</figcaption></figure>"
            )
        grids.append(f'<h3>{e(lb)}</h3><div class="grid">{"".join(cells)}</div>')
    return (
        f'<h2>Images per split and label</h2><table id="split-label">{head}{rows}</table>{partial}'
        f"<h2>Samples per label</h2>{''.join(grids)}"
    )


def models_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/-/models``: one page of models with their training sets."""
    rows, token = views.page_models(store_of(rt), req.limit(LIST_PAGE, LIST_PAGE), req.arg("continuation"))
    cells = "".join(
        f'<tr><td><a class="model" href="{e(_model_href(m.name, m.version))}">{e(m.name)}:{e(m.version)}</a></td><td>'
        + ", ".join(f'<a href="{e(_trainset_href(n, v))}">{e(n)}:{e(v)}</a>' for n, v in m.trainsets)
        + "</td></tr>"
        for m in rows
    )
    more = f'<p><a id="next" href="{e(url("/gallery/-/models", continuation=token))}">next page →</a></p>' if token else ""
    body = (
        "<h1>Models</h1>"
        + (
            f"<table><tr><th>model</th><th>training sets</th></tr>{cells}</table>"
            if cells
            else '<p class="muted">No models yet: <code>corpus model register</code>.</p>'
        )
        + more
    )
    return html_response("Models", _crumbs("models"), body)


def model_page(rt: Runtime, req: Request) -> Response:
    """``/gallery/-/models/{name}/{version}``: the model's training sets, metrics and URI."""
    name, version = req.route.get("name", ""), req.route.get("version", "")
    m = store_of(rt).models.get(name, version)
    if m is None:
        raise NotFoundError(f"no model {name}:{version}")
    data = views.model_json(m)
    sets = ", ".join(f'<a class="trainset" href="{e(_trainset_href(n, v))}">{e(n)}:{e(v)}</a>' for n, v in m.trainsets)
    metrics = data["metrics"] or {}
    metric_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in sorted(metrics.items())
    )
    body = (
        f"<h1>{e(m.name)}:{e(m.version)}</h1><table>"
        f"<tr><th>training sets</th><td>{sets}</td></tr>"
        f"<tr><th>URI</th><td><code>{e(m.uri or '-')}</code></td></tr>"
        f"<tr><th>created</th><td>{e(data['created'] or '')}</td></tr></table>"
        + (f'<h2>Metrics</h2><table id="metrics">{metric_rows}</table>' if metric_rows else "")
    )
    return html_response(f"{m.name}:{m.version}", _crumbs("models", f"{m.name}:{m.version}"), body)

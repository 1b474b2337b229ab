"""What ``corpus status`` and ``corpus sets`` report: collected as data, rendered separately."""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from corpus.domain.display import shown
from corpus.store.catalog import Catalog
from corpus.store.rows import REJECT_INVALID, REJECT_JUNK, FailureRow, RejectionRow
from corpus.store.settings import BLOB_POISON_QUEUE, Settings, poison_queue
from corpus.store.storage import FAIL_FAST, Clients


def _depth(clients: Clients, queue: str) -> int | None:
    try:
        return int(clients.queue_client(queue).get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return None


def acknowledge(settings: Settings, ident: str | None) -> list[str]:
    """Acknowledge the failure ``ident`` (as ``corpus status`` prints it), or every listed one (``None``)."""
    catalog = Catalog(Clients(settings.connection, FAIL_FAST))
    if ident is None:
        pending = [f for f in catalog.failures.list(final_only=True) if not f.acknowledged]
        return [f.id for f in pending if catalog.failures.acknowledge(f.source, f.key)]
    source, sep, key = ident.partition("/")
    if not sep or not catalog.failures.acknowledge(source, key):
        from corpus.domain.errors import NotFoundError

        known = [f.id for f in catalog.failures.list(final_only=True)]
        from corpus.app.preflight import did_you_mean

        raise NotFoundError(f"no failure {ident!r}{did_you_mean(ident, known)}")
    return [ident]


def collect(settings: Settings, limit: int = 20, show_acknowledged: bool = False) -> dict[str, Any]:
    clients = Clients(settings.connection, FAIL_FAST)
    catalog = Catalog(clients)
    queues = {}
    for q in (*settings.queues, BLOB_POISON_QUEUE):
        queues[q] = _depth(clients, q)
        if q != BLOB_POISON_QUEUE:
            # <q>-poison is drained into Failures by its recorder; <q>-poison-poison holds what it could not record.
            for p in (poison_queue(q), poison_queue(poison_queue(q))):
                queues[p] = _depth(clients, p)
    try:
        staged = sum(1 for _ in clients.container(settings.staging_container).list_blobs())
    except ResourceNotFoundError:
        staged = 0
    rejected = catalog.rejections.list(REJECT_INVALID)
    junk = catalog.rejections.list(REJECT_JUNK)
    every_failure = catalog.failures.list(final_only=True)
    failures = [f for f in every_failure if show_acknowledged or not f.acknowledged]
    redrives = catalog.redrives.list()
    sets = list(catalog.sets.query())
    return {
        "queues": queues,
        "staged": staged,
        "rejected": {
            "count": len(rejected),
            "container": settings.rejected_container,
            "latest": [_rejection(r) for r in rejected[-limit:]],
        },
        "junk_removed": len(junk),
        "failures": {
            "count": len(failures),
            "acknowledged_hidden": len(every_failure) - len(failures),
            "latest": [_failure(f) for f in failures[-limit:]],
        },
        "sets": {"count": len(sets), "images": sum(s.image_count for s in sets)},
        "redriven": {
            "count": len(redrives),
            "latest": [
                {"Name": r.name, "Why": r.why, "Outcome": r.outcome, "Times": r.times, "At": r.at} for r in redrives[-limit:]
            ],
        },
    }


def _rejection(r: RejectionRow) -> dict[str, Any]:
    return {"Name": r.name, "Reason": r.reason, "KeptAs": r.kept_as, "At": r.at}


def _failure(f: FailureRow) -> dict[str, Any]:
    return {
        "Id": f.id,
        "Source": f.source,
        "Key": f.key,
        "Reason": f.reason,
        "Attempts": f.attempts,
        "At": f.at,
        "Acknowledged": f.acknowledged,
    }


def render(report: dict[str, Any]) -> str:
    lines = ["queues:"]
    for q, n in report["queues"].items():
        lines.append(f"  {q:<32} {'(missing)' if n is None else n}")
    lines.append(f"staged blobs waiting:            {report['staged']}")
    lines.append(f"junk files removed:              {report['junk_removed']}")
    rej = report["rejected"]
    lines.append(f"rejected (kept in '{rej['container']}'): {rej['count']}")
    for r in rej["latest"]:
        lines.append(f"  {shown(r['Name'])}: {shown(r['Reason'])}")
    fail = report["failures"]
    hidden = f" (+{fail['acknowledged_hidden']} acknowledged: --all)" if fail["acknowledged_hidden"] else ""
    lines.append(f"failed messages (poisoned):      {fail['count']}{hidden}")
    for f in fail["latest"]:
        reason = str(f["Reason"]).splitlines()[0] if f["Reason"] else ""
        ack = " [acknowledged]" if f["Acknowledged"] else ""
        lines.append(f"  {shown(f['Id'])}{ack} after {f['Attempts']} attempt(s): {shown(reason)}")
    if fail["latest"] and not all(f["Acknowledged"] for f in fail["latest"]):
        lines.append("  (corpus status --ack ID, or --ack --all, hides them once dealt with)")
    red = report["redriven"]
    lines.append(f"re-driven by reconciliation:     {red['count']}")
    for r in red["latest"]:
        lines.append(f"  {shown(r['Name'])}: {r['Why']} -> {r['Outcome'] or 'in progress'} ({r['Times']}x)")
    lines.append(f"image sets: {report['sets']['count']} holding {report['sets']['images']} images")
    return "\n".join(lines)


def set_header() -> str:
    return f"{'DOMAIN':<16} {'PATH':<32} {'VERSION':<10} {'IMAGES':>7} {'BYTES':>12}  TAGS"


def render_set_line(r: dict[str, Any]) -> str:
    label = shown(r["path"]) + (f" [{shown(r['transform'])}]" if r["transform"] else "")
    tags = shown(",".join(r["tags"]))
    return f"{shown(r['domain']):<16} {label:<32} {shown(r['version']):<10} {r['images']:>7} {r['bytes']:>12}  {tags}"

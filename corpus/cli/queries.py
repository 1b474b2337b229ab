"""``corpus sets`` (streamed, paged), ``corpus count`` and ``corpus reindex``: see :mod:`corpus.app.queries`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corpus.cli.parsing import add_shared
from corpus.domain.errors import CorpusError, InvalidNameError
from corpus.domain.paths import validate_domain
from corpus.store.settings import Settings, load_local_settings

if TYPE_CHECKING:  # the SDK is slow to import; `corpus upload` starts without it
    from corpus.store.rows import ImageSetRow


class QueryError(CorpusError):
    """A bad argument: printed as one line by ``corpus``'s error handler."""


def _settings() -> Settings:
    load_local_settings(Path.cwd())
    return Settings.from_env()


def _catalog(settings: Settings) -> Any:
    from corpus.store.catalog import Catalog
    from corpus.store.storage import FAIL_FAST, Clients

    clients = Clients(settings.connection, FAIL_FAST)
    return clients, Catalog(clients)


def encode_token(domain: str, set_key: str) -> str:
    """The cursor after one set: the same token ``GET /api/sets`` pages with."""
    from corpus.store.tables import encode_continuation  # not at import: the CLI starts without the Tables SDK

    return encode_continuation({"PartitionKey": domain, "RowKey": set_key}) or ""


def decode_token(token: str) -> tuple[str, str]:
    from corpus.store.tables import decode_continuation

    try:
        value = decode_continuation(token)
    except ValueError as exc:
        raise QueryError(f"--continuation: not a token printed by 'corpus sets' ({exc})") from None
    if not value or not isinstance(value.get("PartitionKey"), str) or not isinstance(value.get("RowKey"), str):
        raise QueryError("--continuation: not a token printed by 'corpus sets'")
    return value["PartitionKey"], value["RowKey"]


def _domains(clients: Any, settings: Settings, domain: str | None) -> list[str]:
    from corpus.app.queries import domains

    if domain is None:
        return domains(clients, settings)
    try:
        return [validate_domain(domain)]
    except InvalidNameError as exc:
        raise QueryError(str(exc)) from None


def _require(
    clients: Any, settings: Settings, catalog: Any, domain: str | None, tags: list[str] | None, transform: str | None = None
) -> None:
    """No silent zeros: an unknown domain, or a tag no set of the domain carries, is an error
    naming it (with the nearest name), not an empty answer. A real zero stays a zero."""
    from corpus.app import preflight

    if domain is None:
        return
    preflight.require_domain(clients, settings, domain, catalog)
    if tags:
        preflight.require_tags(catalog, domain, tags, transform=transform)


def iter_sets(args: argparse.Namespace) -> tuple[Iterator[ImageSetRow], Any]:
    from corpus.app.queries import find_sets

    settings = _settings()
    clients, catalog = _catalog(settings)
    _require(clients, settings, catalog, args.domain, args.tag, args.transform)
    start = decode_token(args.continuation) if args.continuation else None
    rows = find_sets(catalog, _domains(clients, settings, args.domain), tuple(args.tag or ()), args.transform, start=start)
    where = _where(args)
    if where is not None:
        from corpus.app.queries import matching_per_set

        found = list(rows)  # sets (not images) are held: --where reads each set's image records
        rows = iter([r for r, n in zip(found, matching_per_set(catalog, found, where), strict=True) if n])
    return rows, catalog


def cmd_sets(args: argparse.Namespace) -> int:
    """Streamed in (domain, row key) order: the first lines appear before the last set is read."""
    from corpus.app.views import set_row
    from corpus.cli.status import render_set_line, set_header

    if args.limit is not None and args.limit < 1:
        raise QueryError("--limit must be positive")
    rows, catalog = iter_sets(args)
    out = sys.stdout
    if args.limit is not None:
        page = list(islice(rows, args.limit + 1))
        more = len(page) > args.limit
        page = page[: args.limit]
        token = encode_token(page[-1].domain, page[-1].row_key) if more else None
        if args.json:
            body = {"sets": [set_row(r) for r in page], "continuation": token}
            out.write(json.dumps(body, indent=2, default=str, ensure_ascii=False))
            out.write("\n")
        else:
            out.write(set_header() + "\n")
            for r in page:
                out.write(render_set_line(set_row(r)) + "\n")
            if token:
                out.write(f"more: --continuation {token}\n")
        return 0
    n = 0
    if args.json:
        out.write("[")
        for r in rows:
            out.write(("," if n else "") + "\n" + json.dumps(set_row(r), default=str, ensure_ascii=False))
            n += 1
        out.write("\n]\n" if n else "]\n")
        return 0
    for r in rows:
        if n == 0:
            out.write(set_header() + "\n")
        out.write(render_set_line(set_row(r)) + "\n")
        out.flush()
        n += 1
    if n == 0:
        out.write("no image sets match\n")
    if not args.transform:
        ran = sorted({f"{t.name}:{t.version}" for t in catalog.transforms.list()})
        if ran:
            out.write(f"(originals only; transformed sets: corpus sets --transform NAME[:VERSION], one of {', '.join(ran)})\n")
    return 0


def cmd_count(args: argparse.Namespace) -> int:
    from corpus.app.queries import count

    settings = _settings()
    clients, catalog = _catalog(settings)
    (domain,) = _domains(clients, settings, args.domain)
    _require(clients, settings, catalog, domain, args.tag)
    result = count(catalog, domain, tuple(args.tag or ()), op=args.op, transform=args.transform, where=_where(args))
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        what = f" {args.op or args.transform}" if (args.op or args.transform) else ""
        line = f"{result.images} images in {result.sets}{what} sets"
        if result.sources is not None:
            line += f" from {result.sources} source originals"
        print(line)
    return 0


def _where(args: argparse.Namespace) -> Any:
    """``--where`` parsed (docs/dedupe.md), or None."""
    from corpus.domain.where import parse

    return parse(args.where) if getattr(args, "where", None) else None


def cmd_reindex(args: argparse.Namespace) -> int:
    from corpus.app.queries import reindex

    settings = _settings()
    clients, catalog = _catalog(settings)
    domain = _domains(clients, settings, args.domain)[0] if args.domain else None
    _require(clients, settings, catalog, domain, None)
    if args.facts:
        from corpus.cli.dupes import reindex_facts

        return reindex_facts(domain, args.resume, args.json)
    last = None
    for progress in reindex(catalog, domain, args.resume):
        last = progress
        if progress.continuation:
            done = f"{progress.sets} sets, {progress.rows} index rows"
            print(f"{done}; resume with --resume {progress.continuation}", file=sys.stderr)
    sets, rows = (last.sets, last.rows) if last else (0, 0)
    print(json.dumps({"sets": sets, "index_rows": rows}) if args.json else f"reindexed {sets} sets ({rows} index rows)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("count", help="count images and sets by tag, and by transform or operation")
    c.add_argument("--domain", required=True)
    c.add_argument("--tag", action="append", help="only sets carrying this tag (repeat: all of them)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--op", help="transformed sets whose transform is or contains this operation (e.g. crop)")
    g.add_argument("--transform", metavar="NAME[:VERSION]", help="transformed sets of this transform")
    add_shared(c, "--where")
    c.add_argument("--json", action="store_true", help='print {"images": N, "sets": K[, "sources": S]}')
    c.set_defaults(func=cmd_count)

    r = sub.add_parser("reindex", help="backfill the tag index of sets created before it existed (idempotent)")
    r.add_argument("--domain", help="only this domain")
    add_shared(r, "--resume")
    r.add_argument("--facts", action="store_true", help="backfill image facts and the duplicate index instead (docs/dedupe.md)")
    add_shared(r, "--json")
    r.set_defaults(func=cmd_reindex)

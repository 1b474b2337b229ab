"""``corpus dupes`` and ``corpus diff``: duplicate clusters and version differences (docs/dedupe.md).

The work is in :mod:`corpus.app.dupes`; this module parses, prints and wires. Output streams: a
line is printed as soon as its cluster has been read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from corpus.cli.common import CliError, settings_from_cwd
from corpus.domain.errors import CorpusError, InvalidNameError


def _runtime() -> Any:
    from corpus.app.runtime import Runtime, app_root

    return Runtime.create(settings_from_cwd(), app_root() / "host.json")


def _domain(value: str) -> str:
    from corpus.domain.paths import validate_domain

    try:
        return validate_domain(value)
    except InvalidNameError as exc:
        raise CliError(str(exc)) from None


def _print_cluster(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(line, ensure_ascii=False, separators=(",", ":")), flush=True)
        return
    members = ", ".join(
        f"{m['container']}/{m['blob']}" + (f" (+{m['distance']})" if m["distance"] else "") for m in line["members"]
    )
    print(f"{line['kind']} {len(line['members'])}: {members}", flush=True)


def cmd_dupes(args: argparse.Namespace) -> int:
    from corpus.app import dupes as app

    rt = _runtime()
    if args.trainset:
        if args.domain or args.tag or args.version or args.near or args.limit is not None or args.continuation:
            raise CliError(
                "--trainset lists the pairs of one training set; it takes no --domain, --tag, --version, --near, --limit "
                "or --continuation"
            )
        return _crossing(rt, args.trainset, args.json)
    if not args.domain:
        raise CliError("give --domain D (or --trainset N:V)")
    domain = _domain(args.domain)
    from corpus.domain.tags import normalize

    @lru_cache(maxsize=4096)
    def set_tags(ref: Any) -> tuple[str, ...]:
        row = rt.catalog.sets.get(ref)
        return tuple(row.tags) if row is not None else ()

    keep = app.MemberFilter(tags=tuple(normalize(args.tag or ())), version=args.version)
    if args.limit is not None or args.continuation:
        return _page(rt, domain, args, keep, set_tags)
    n = 0
    for line in app.dupes_lines(rt.catalog.dupes, domain, near=args.near, keep=keep, set_tags=set_tags):
        _print_cluster(line, args.json)
        n += 1
    if not args.json:
        print(f"{n} cluster(s)" + ("" if args.near else " of exact duplicates (--near for near duplicates too)"))
    return 0


def _decode_place(domain: str, token: str) -> str:
    """``--continuation``: the token a previous page printed, for this domain (the codec every listing
    uses, :class:`~corpus.domain.refs.Cursor`), naming a member row of the domain's partition."""
    from corpus.domain import dupindex as d
    from corpus.store.tables import decode_continuation

    try:
        value = decode_continuation(token)
    except ValueError as exc:
        raise CliError(f"--continuation: not a token printed by 'corpus dupes' ({exc})") from None
    low, high = d.MEMBERS
    rk = value.get("RowKey") if value else None
    if not value or value.get("PartitionKey") != d.partition(domain) or not isinstance(rk, str) or not low <= rk < high:
        raise CliError(f"--continuation: not a token printed by 'corpus dupes --domain {domain}'")
    return rk


def _page(rt: Any, domain: str, args: argparse.Namespace, keep: Any, set_tags: Any) -> int:
    """``--limit N [--continuation T]``: one page; the token of the next is the last line (JSON:
    ``{"continuation": T}``; text: ``more: --continuation T``) when more remain."""
    from corpus.app import dupes as app
    from corpus.domain import dupindex as d
    from corpus.store.tables import encode_continuation

    limit = 100 if args.limit is None else args.limit
    if limit < 1:
        raise CliError("--limit must be positive")
    start = _decode_place(domain, args.continuation) if args.continuation else None
    page = app.dupes_page(rt.catalog.dupes, domain, args.near, limit, start, keep, set_tags)
    for line in page.lines:
        _print_cluster(line, args.json)
    token = encode_continuation({"PartitionKey": d.partition(domain), "RowKey": page.next_key}) if page.next_key else None
    if args.json:
        if token:
            print(json.dumps({"continuation": token}), flush=True)
    else:
        print(f"{len(page.lines)} cluster(s) on this page")
        if token:
            print(f"more: --continuation {token}")
    return 0


def _crossing(rt: Any, ref: str, as_json: bool) -> int:
    from corpus.app.dupes import crossing_pairs
    from corpus.app.trainsets import manifest_lines, ready_trainset, store_of
    from corpus.domain.manifest import parse_ref

    try:
        name, version = parse_ref(ref)
        row = ready_trainset(store_of(rt), name, version)
    except CorpusError as exc:
        raise CliError(str(exc)) from None
    n = 0
    for pair in crossing_pairs(rt.catalog.dupes, manifest_lines(rt, row)):
        n += 1
        if as_json:
            print(json.dumps(pair, ensure_ascii=False, separators=(",", ":")), flush=True)
        else:
            a, b = pair["a"], pair["b"]
            print(f"{pair['kind']}: {a['blob']} ({a['split']})  ~  {b['blob']} ({b['split']})", flush=True)
    if not as_json:
        print(f"{n} duplicate pair(s) cross splits in {ref}")
    return 1 if n else 0


def cmd_diff(args: argparse.Namespace) -> int:
    from corpus.app.dupes import diff_versions
    from corpus.domain.errors import MessageError
    from corpus.domain.paths import validate_version
    from corpus.store.rows import dirs_of

    rt = _runtime()
    domain = _domain(args.domain)
    try:
        old, new = validate_version(args.old), validate_version(args.new)
    except InvalidNameError as exc:
        raise CliError(str(exc)) from None
    dirs = dirs_of(args.path)

    def images(ref: Any) -> Iterator[tuple[str, str]]:
        if rt.catalog.sets.get(ref) is None:
            raise CliError(f"no image set {domain}/{args.path} at version {ref.version}")
        for image in rt.catalog.images.iter(ref):
            yield image.file, image.facts.sha256 if image.facts else ""

    try:
        result = diff_versions(images, domain, dirs, old, new, listing=args.list)
    except MessageError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_json(listing=args.list), ensure_ascii=False))
        return 0
    c = result.counts
    print(
        f"{domain}/{args.path} {old} → {new}: {c['added']} added, {c['removed']} removed, {c['changed']} changed, "
        f"{c['moved']} moved, {c['unchanged']} unchanged"
    )
    if args.list:
        for kind in ("added", "removed", "changed", "moved"):
            for name in result.names[kind]:
                print(f"  {kind}: {name}")
    return 0


def reindex_facts(domain: str | None, resume: str | None, as_json: bool) -> int:
    """``corpus reindex --facts``: :func:`corpus.app.backfill.backfill_facts`, with progress on stderr."""
    import sys

    from corpus.app.backfill import FactsProgress, backfill_facts

    rt = _runtime()

    def read(container: str, blob: str) -> bytes:
        return bytes(rt.blobs.read(container, blob).data)

    catalog, settings = rt.catalog, rt.settings
    last = None
    for progress in backfill_facts(catalog, read, settings.max_pixels, domain, resume):
        last = progress
        print(
            f"{progress.sets} sets, {progress.images} images: {progress.filled} filled, {progress.skipped} had facts, "
            f"{progress.failed} failed" + (f"; resume with --resume {progress.continuation}" if progress.continuation else ""),
            file=sys.stderr,
            flush=True,
        )
    report = (last or FactsProgress()).as_json()
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(f"facts: {report['filled']} images filled, {report['skipped']} had them, {report['failed']} failed")
        for example in report["examples"]:  # type: ignore[attr-defined]
            print(f"  failed: {example}")
    return 1 if report["failed"] else 0


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("dupes", help="duplicate clusters of a domain, or duplicates crossing a training set's splits")
    d.add_argument("--domain", help="the domain (duplicates are found within one domain)")
    d.add_argument("--tag", action="append", help="only images of sets carrying this tag (repeat: all of them)")
    d.add_argument("--version", help="only images of sets of this version")
    d.add_argument("--near", action="store_true", help="near-duplicate clusters too (default: exact copies only)")
    d.add_argument("--trainset", metavar="N:V", help="pairs of duplicates that a training set put in different splits")
    d.add_argument("--json", action="store_true", help='one JSON object per line: {"kind", "members": [...]}')
    d.add_argument("--limit", type=int, metavar="N", help="at most N clusters (a page; the next page's token is printed last)")
    d.add_argument(
        "--continuation",
        metavar="TOKEN",
        help='the next page: the token a previous page printed ({"continuation": …} or "more:")',
    )
    d.set_defaults(func=cmd_dupes)

    f = sub.add_parser("diff", help="what changed between two versions of an image set, by content (SHA-256)")
    f.add_argument("--domain", required=True)
    f.add_argument("--path", required=True, help="the set's path (folders under the domain; <root> for none)")
    f.add_argument("--from", dest="old", required=True, metavar="V1")
    f.add_argument("--to", dest="new", required=True, metavar="V2")
    f.add_argument("--list", action="store_true", help="list the names, not only the counts")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_diff)

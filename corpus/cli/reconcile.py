"""``corpus reconcile``: the timer function's reconciliation pass, run once from the command line."""

from __future__ import annotations

import argparse
import json
from typing import Any

from corpus.cli.common import settings_from_cwd
from corpus.cli.parsing import add_shared, bounded_int


def cmd_reconcile(args: argparse.Namespace) -> int:
    from corpus.app.reconcile import reconcile
    from corpus.app.runtime import Runtime, app_root

    rt = Runtime.create(settings_from_cwd(), app_root() / "host.json")
    from datetime import timedelta

    stuck = None if args.stuck_after is None else timedelta(seconds=args.stuck_after)
    report = reconcile(rt, grace_seconds=args.grace, max_blobs=args.max, stuck_after=stuck).as_json()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(
            f"scanned {report['scanned']} staged blob(s); re-drove {report['redriven']}; "
            f"{report['skipped_recent']} re-driven recently by another pass; "
            f"{report['deadletter_blobs']} dead-letter blob(s) read; {len(report['failed'])} failed"
        )
        for name, outcome in report["outcomes"].items():
            print(f"  {outcome}: {name!r}")
        for name, why in report["failed"].items():
            print(f"  failed: {name!r}: {why}")
        for name in report["refused"]:
            print(f"  rejected in place ('.' or '..' segment): {name!r}")
        for ref in report["resumed_trainsets"]:
            print(f"  resumed stuck training-set build {ref}")
    return 1 if report["failed"] else 0


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("reconcile", help="hand staged blobs whose event was lost (or dead-lettered) to ingest again")
    r.add_argument("--grace", type=float, help="only blobs staged longer ago than this many seconds (default: the setting)")
    r.add_argument("--max", type=bounded_int(1, 10**9), help="re-drive at most this many blobs (default: the setting)")
    add_shared(r, "--stuck-after", "--json")
    r.set_defaults(func=cmd_reconcile)

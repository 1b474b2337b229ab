"""``corpus migrate``: list the schema migration steps, or run one (resumable); see :mod:`corpus.app.migrate`."""

from __future__ import annotations

import argparse
import json
import sys

from corpus.cli.parsing import add_shared
from corpus.cli.queries import _domains, _settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from corpus.app.migrate import STEPS, Context, MigrateProgress, migrate
    from corpus.app.runtime import Runtime
    from corpus.store.storage import FAIL_FAST

    if args.step is None:
        for s in STEPS.values():
            to = f"to Schema {s.version}" if s.version is not None else "rows lacking the column"
            print(f"{s.name}  (table {s.table}, {to}): {s.summary}")
        return 0
    settings = _settings()
    rt = Runtime.create(settings, profile=FAIL_FAST)
    domain = _domains(rt.clients, settings, args.domain)[0] if args.domain else None
    ctx = Context(rt.catalog, rt.blobs, settings.max_pixels)
    last = MigrateProgress(args.step)
    for progress in migrate(ctx, args.step, domain, args.resume):
        last = progress
        if progress.continuation:
            done = f"{progress.sets} sets, {progress.rows_migrated} rows migrated"
            print(f"{done}; resume with --resume {progress.continuation}", file=sys.stderr)
    if args.json:
        print(json.dumps(last.as_json()))
    else:
        print(f"{args.step}: {last.sets} sets, {last.rows_migrated} of {last.rows_below} old rows migrated")
        for example in last.examples:
            print(f"  failed: {example}")
    return 1 if last.failed else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    m = sub.add_parser("migrate", help="bring old table rows up to the current schema (resumable, idempotent)")
    m.add_argument("step", nargs="?", help="the step to run; without it, list the steps")
    m.add_argument("--domain", help="only this domain")
    add_shared(m, "--resume", "--json")
    m.set_defaults(func=cmd_migrate)

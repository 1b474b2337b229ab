"""``python -m corpus.deploycheck [--infra DIR]``: a what-if we can run without a subscription.

Loads every ``.bicep`` file with pycep and checks every rule in :mod:`corpus.deploycheck.rules`;
prints one line per rule and one per violation; exits 1 if any rule is broken.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corpus.deploycheck.rules import Infra, check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m corpus.deploycheck", description=__doc__)
    ap.add_argument("--infra", type=Path, default=Path(__file__).resolve().parents[2] / "infra")
    ap.add_argument("--host-json", type=Path, help="default: host.json beside the infra folder")
    args = ap.parse_args(argv)
    results = check(Infra(args.infra.resolve(), args.host_json))
    broken = 0
    for rule, violations in results.items():
        print(f"{'FAIL' if violations else 'ok  '} {rule}")
        for v in violations:
            print(f"     {v}")
        broken += bool(violations)
    print(f"deploycheck: {len(results) - broken} of {len(results)} rules obeyed", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

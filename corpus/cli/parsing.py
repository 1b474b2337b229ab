"""What every ``corpus`` command's arguments share: one-line errors with "did you mean",
bounded integers, JSON arguments that never raise past the CLI, help pages with examples,
and output that stops quietly when its reader does (``corpus sets | head``).

Invariants:

* A mistyped command or choice is one line naming the nearest valid name (difflib), exit 2,
  as argparse exits for every usage error.
* Every integer option is parsed from at most :data:`MAX_INT_DIGITS` characters and checked
  against its bounds *before* ``int()`` runs: Python's 4,300-digit conversion limit never
  shows as a traceback, and no number reaches the code that would not fit its use.
* A closed stdout (the reader exited) ends the command with status 141 (as a process killed
  by SIGPIPE) and nothing on stderr. SIGPIPE itself stays ignored: the SDKs' sockets must
  see EPIPE as an error, not kill the process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

MAX_INT_DIGITS = 19
"""Enough for any 64-bit value; a longer argument is refused before it is converted."""

INT64 = 2**63 - 1
EXIT_PIPE = 141
"""128 + SIGPIPE: what a shell reports for ``yes | head``'s ``yes``."""

_INVALID_CHOICE = re.compile(r"argument (?P<arg>[^:]+): invalid choice: '(?P<got>[^']*)' \(choose from (?P<choices>.*)\)")


def suggestion(got: str, names: list[str] | tuple[str, ...]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest of ``names``, or ``""`` when none is near."""
    import difflib  # here: only a mistake needs it

    near = difflib.get_close_matches(got, list(names), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


class CorpusParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose invalid choices say what was meant, and whose help text may be
    computed only when asked for (``transform --help`` lists the transforms without importing
    Pillow on every run)."""

    lazy_epilog: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog = self.lazy_epilog() + ("\n\n" + self.epilog if self.epilog else "")
            self.lazy_epilog = None
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match["choices"])
            got = match["got"]
            what = "command" if match["arg"] in ("command",) or match["arg"].endswith("_command") else match["arg"]
            hint = suggestion(got, choices) or f" (one of: {', '.join(choices)})"
            self.exit(2, f"{self.prog}: error: unknown {what} {got!r}{hint}\n")
        if message.startswith("unrecognized arguments:"):
            options = _option_strings(self)
            unknown = [o for o in message.split(":", 1)[1].split() if o.startswith("-")]
            hints = [f"{o!r}{suggestion(o.split('=')[0], options)}" for o in unknown]
            if hints:
                self.exit(2, f"{self.prog}: error: unknown option {', '.join(hints)}\n")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--option`` of the parser and of its sub-commands (argparse reports unknown ones at the top)."""
    found: list[str] = []
    for action in parser._actions:
        found += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _option_strings(sub)
    return sorted(set(found))


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer in ``[low, high]``, refusing long input before ``int()``."""

    def parse(text: str) -> int:
        digits = text.strip()
        if len(digits.lstrip("+-")) > MAX_INT_DIGITS or not re.fullmatch(r"[+-]?[0-9]+", digits):
            raise argparse.ArgumentTypeError(f"not an integer between {low} and {high}: {text[:24]!r}")
        value = int(digits)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


ANY_INT = bounded_int(-INT64, INT64)


def finite_float(text: str) -> float:
    """An argparse ``type`` for a finite number (``nan`` and ``inf`` would make a deadline that never comes)."""
    import math

    try:
        value = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text[:24]!r}")
    return value


finite_float.__name__ = "number"


SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "--where": {"help": "only images whose facts match, e.g. 'width>=224 and not grey' (docs/dedupe.md)"},
    "--stuck-after": {
        "type": finite_float,
        "metavar": "SECONDS",
        "help": "resume a training-set build left building with no progress for this long "
        "(default: max(900, 4 x the build budget))",
    },
    "--resume": {"metavar": "TOKEN", "help": "continue after the page this token names"},
    "--json": {"action": "store_true"},
}
"""Options that several commands take, declared once: a flag means the same, and is parsed the
same way, in every command that has it."""


def add_shared(parser: argparse.ArgumentParser, *flags: str, **changes: Any) -> None:
    """Add each of ``flags`` as :data:`SHARED_OPTIONS` declares it; ``changes`` replace some of its
    keywords (a command's own help text, say) for every flag named."""
    for flag in flags:
        parser.add_argument(flag, **(SHARED_OPTIONS[flag] | changes))


def bound_every_int(parser: argparse.ArgumentParser) -> None:
    """Replace ``type=int`` on every option of every sub-command (including ones other modules
    add) with :data:`ANY_INT`, and ``type=float`` with :func:`finite_float`, so no number option
    can be a traceback, an unbounded value or a NaN."""
    for action in parser._actions:
        if action.type is int:
            action.type = ANY_INT
        elif action.type is float:
            action.type = finite_float
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                bound_every_int(sub)


def json_arg(text: str | None, option: str, max_chars: int = 64 * 1024) -> Any:
    """Parse a JSON option. Bad JSON, a number past Python's digit limit and an oversized value are
    one-line errors (:class:`ValueError` with the option named), never tracebacks."""
    if text is None:
        return None
    if len(text) > max_chars:
        raise ValueError(f"{option} is {len(text)} characters; at most {max_chars}")
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and int() refusing more than 4,300 digits
        raise ValueError(f"{option} is not valid JSON: {exc}") from None


def add_examples(parser: argparse.ArgumentParser, examples: dict[str, str], path: str = "") -> None:
    """Attach ``examples[path]`` (``"trainset create"``…) as each command's help epilog."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            key = f"{path} {name}".strip()
            if key in examples:
                sub.formatter_class = argparse.RawDescriptionHelpFormatter
                sub.epilog = "examples:\n" + "\n".join("  " + line for line in examples[key].strip().splitlines())
            add_examples(sub, examples, key)


def commands(parser: argparse.ArgumentParser) -> list[str]:
    return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]


def quiet_pipe() -> int:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's final
    flush cannot print a BrokenPipeError, and report it as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_PIPE

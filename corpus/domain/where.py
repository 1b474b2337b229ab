"""``--where``: a small filter language over an image's facts, parsed by a grammar, never ``eval``.

Grammar (keywords case-insensitive, whitespace free)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | atom
    atom       := "(" expr ")" | FIELD OP NUMBER | FLAG
    OP         := ">=" | "<=" | ">" | "<" | "==" | "=" | "!="
    NUMBER     := [-+]? digits [. digits] [e [-+]? digits]      (finite)

Fields (:data:`NUMERIC`): ``width``, ``height`` (as displayed), ``size`` (bytes), ``sharpness``,
``brightness``, ``contrast``, ``entropy``, ``aspect``; flags (:data:`FLAGS`): ``grey``. Their
definitions are :mod:`corpus.domain.facts`'. ``not`` binds tighter than ``and``, ``and`` tighter
than ``or``, as in Python and SQL. An expression is at most :data:`MAX_WHERE` characters and
:data:`MAX_DEPTH` levels deep; anything else is one :class:`~corpus.domain.errors.MessageError`
line naming what is wrong (an unknown field is named, with the fields that exist).

An image without facts (ingested before facts existed and not yet backfilled by
``corpus reindex --facts``) has no value for a fact: every comparison with it, and the flag, are
false (so ``not grey`` is true for it). :func:`render` writes an expression back in canonical
form (every compound operand in parentheses, numbers as Python's ``repr``), which is what the
canonical training-set definition stores: ``parse(render(e)) == e``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from corpus.domain.errors import MessageError
from corpus.domain.imagefacts import ImageFacts

MAX_WHERE = 512
MAX_DEPTH = 32

NUMERIC = ("width", "height", "size", "sharpness", "brightness", "contrast", "entropy", "aspect")
FLAGS = ("grey",)
FIELDS = NUMERIC + FLAGS

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_ALIASES = {"=": "=="}

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op>>=|<=|==|!=|=|>|<)"
    r"|(?P<paren>[()])|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>\S))"
)


@dataclass(frozen=True, slots=True)
class Cmp:
    field: str
    op: str
    value: float


@dataclass(frozen=True, slots=True)
class Flag:
    field: str


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class _Binary:
    """``left`` and ``right`` joined by the connective the class names (equal only to its own kind)."""

    left: Expr
    right: Expr


class And(_Binary):
    __slots__ = ()


class Or(_Binary):
    __slots__ = ()


Expr = Cmp | Flag | Not | And | Or


def _error(text: str, why: str) -> MessageError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return MessageError(f"--where {shown!r}: {why}")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:  # only trailing whitespace is left
            break
        pos = m.end()
        kind = m.lastgroup or "bad"
        if kind == "bad":
            raise _error(text, f"unexpected character {m.group(kind)!r}")
        out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].lower() == word:
            self.i += 1
            return True
        return False

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _error(self.text, "unexpected end of expression")
        self.i += 1
        return tok

    def expr(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise _error(self.text, f"nested more than {MAX_DEPTH} levels deep")
        left = self.and_expr(depth)
        while self.keyword("or"):
            left = Or(left, self.and_expr(depth))
        return left

    def and_expr(self, depth: int) -> Expr:
        left = self.not_expr(depth)
        while self.keyword("and"):
            left = And(left, self.not_expr(depth))
        return left

    def not_expr(self, depth: int) -> Expr:
        if self.keyword("not"):
            if depth > MAX_DEPTH:
                raise _error(self.text, f"nested more than {MAX_DEPTH} levels deep")
            return Not(self.not_expr(depth + 1))
        return self.atom(depth)

    def atom(self, depth: int) -> Expr:
        kind, value = self.take()
        if kind == "paren" and value == "(":
            inner = self.expr(depth + 1)
            if self.take() != ("paren", ")"):
                raise _error(self.text, "expected ')'")
            return inner
        if kind != "word" or value.lower() in ("and", "or", "not"):
            raise _error(self.text, f"expected a field, 'not' or '(', found {value!r}")
        name = value.lower()
        if name not in FIELDS:
            raise _error(self.text, f"unknown field {value!r} (fields: {', '.join(FIELDS)})")
        if name in FLAGS:
            return Flag(name)
        tok = self.peek()
        if tok is None or tok[0] != "op":
            raise _error(self.text, f"{name} needs a comparison, e.g. {name}>=100")
        self.i += 1
        op = _ALIASES.get(tok[1], tok[1])
        nkind, number = self.take()
        if nkind != "num":
            raise _error(self.text, f"{name}{op} needs a number, found {number!r}")
        num = float(number)
        if not math.isfinite(num):
            raise _error(self.text, f"{number!r} is not a finite number")
        return Cmp(name, op, num)


def parse(text: str) -> Expr:
    """Parse a ``--where`` expression (see the module docstring); raises ``MessageError``."""
    if len(text) > MAX_WHERE:
        raise _error(text, f"longer than {MAX_WHERE} characters")
    p = _Parser(text)
    if not p.toks:
        raise _error(text, "empty expression")
    tree = p.expr(0)
    if p.peek() is not None:
        raise _error(text, f"unexpected {p.peek()[1]!r} after a complete expression")  # type: ignore[index]
    return tree


def render(e: Expr) -> str:
    """The canonical text of ``e``: ``parse(render(e)) == e``."""

    def sub(x: Expr) -> str:
        return render(x) if isinstance(x, Cmp | Flag) else f"({render(x)})"

    if isinstance(e, Cmp):
        return f"{e.field}{e.op}{e.value!r}"
    if isinstance(e, Flag):
        return e.field
    if isinstance(e, Not):
        return f"not {sub(e.operand)}"
    word = "and" if isinstance(e, And) else "or"
    return f"{sub(e.left)} {word} {sub(e.right)}"


def canonical(text: str) -> str:
    """``render(parse(text))``: what a definition stores for ``text``."""
    return render(parse(text))


def evaluate(e: Expr, facts: Mapping[str, float | int | bool | None]) -> bool:
    """Does an image with ``facts`` (field → value; absent or None = unknown) match ``e``?"""
    if isinstance(e, Cmp):
        value = facts.get(e.field)
        return value is not None and OPS[e.op](float(value), e.value)
    if isinstance(e, Flag):
        return bool(facts.get(e.field))
    if isinstance(e, Not):
        return not evaluate(e.operand, facts)
    if isinstance(e, And):
        return evaluate(e.left, facts) and evaluate(e.right, facts)
    return evaluate(e.left, facts) or evaluate(e.right, facts)


def fields_of(e: Expr) -> set[str]:
    """The fields ``e`` reads."""
    if isinstance(e, Cmp | Flag):
        return {e.field}
    if isinstance(e, Not):
        return fields_of(e.operand)
    return fields_of(e.left) | fields_of(e.right)


def values_of(size: int, width: int, height: int, facts: ImageFacts | None) -> dict[str, float | int | bool | None]:
    """The fields of one image for :func:`evaluate`: ``size``, ``width`` and ``height`` from its
    record (as displayed once it has facts), the rest from its facts (None without facts)."""
    out: dict[str, float | int | bool | None] = {"size": size, "width": width, "height": height}
    for name in ("sharpness", "brightness", "contrast", "entropy", "aspect", "grey"):
        out[name] = getattr(facts, name) if facts is not None else None
    return out

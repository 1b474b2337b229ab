"""Route templates of HTTP triggers, matched as the Functions host (ASP.NET Core routing) does.

The subset the host's templates use: literal segments (matched case-insensitively),
``{name}``, ``{name?}`` (optional, last segments only), ``{name:int}`` / ``{name:alpha}``
constraints and a final catch-all ``{*name}``. ``extensions.http.routePrefix`` (``host.json``) is
prepended to every template. Among templates that match, the most specific wins: segment by
segment, literal before constrained before plain before optional before catch-all, as ASP.NET
orders them. Route values are percent-decoded per segment, so ``%2F`` stays inside its segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_PARAM = re.compile(r"^\{(\*?)([A-Za-z_][A-Za-z0-9_]*)((?::[a-z]+)*)(\??)\}$")
_CONSTRAINTS = {"int": re.compile(r"^-?\d+$"), "alpha": re.compile(r"^[A-Za-z]+$")}

LITERAL, CONSTRAINED, PLAIN, OPTIONAL, CATCH_ALL = range(5)


@dataclass(frozen=True, slots=True)
class Segment:
    kind: int
    text: str  # the literal, or the parameter's name
    constraints: tuple[str, ...] = ()

    def accepts(self, value: str) -> bool:
        if self.kind == LITERAL:
            return value.casefold() == self.text.casefold()
        return all(_CONSTRAINTS[c].match(value) for c in self.constraints)


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    segments: tuple[Segment, ...]

    @property
    def precedence(self) -> tuple[int, ...]:
        """Smaller sorts first: the more specific template is tried first."""
        return tuple(s.kind for s in self.segments)

    def match(self, path: str) -> dict[str, str] | None:
        """Route values if ``path`` (as sent, still percent-encoded, no query) fits, else None."""
        parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
        values: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if seg.kind == CATCH_ALL:
                values[seg.text] = unquote("/".join(parts[i:]))
                return values
            if i >= len(parts):
                if seg.kind == OPTIONAL:
                    continue
                return None
            value = unquote(parts[i])
            if not value or not seg.accepts(value):
                return None
            if seg.kind != LITERAL:
                values[seg.text] = value
        return values if len(parts) <= len(self.segments) else None


def parse(template: str, prefix: str = "") -> Route:
    """Parse ``prefix/template``; a template the host would refuse raises ValueError."""
    full = "/".join(p for p in (prefix.strip("/"), template.strip("/")) if p)
    segments: list[Segment] = []
    raw = full.split("/") if full else []
    for i, part in enumerate(raw):
        m = _PARAM.match(part)
        if not m:
            if not part or "{" in part or "}" in part:
                raise ValueError(f"route {full!r}: unsupported segment {part!r}")
            segments.append(Segment(LITERAL, part))
            continue
        star, name, constraints, optional = m.groups()
        names = tuple(c for c in constraints.split(":") if c)
        unknown = [c for c in names if c not in _CONSTRAINTS]
        if unknown:
            raise ValueError(f"route {full!r}: unsupported constraint(s) {unknown} (this host knows {sorted(_CONSTRAINTS)})")
        if star and i != len(raw) - 1:
            raise ValueError(f"route {full!r}: a catch-all parameter must be the last segment")
        kind = CATCH_ALL if star else OPTIONAL if optional else CONSTRAINED if names else PLAIN
        segments.append(Segment(kind, name, names))
    seen = [s.text for s in segments if s.kind != LITERAL]
    if len(seen) != len(set(seen)):
        raise ValueError(f"route {full!r}: a parameter name is used twice")
    return Route(full, tuple(segments))

"""Discovery for ``corpus host``: the app's own functions, from ``function_app.app.get_functions()``.

Trigger type, path or queue and connection come from the decorators, never from a second list;
``%SETTING%`` expressions are resolved from app settings, as the Functions host does.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

log = logging.getLogger("corpus.host")

_SETTING_EXPR = re.compile(r"%([^%]+)%")

_functions_cache: dict[int, list[Any]] = {}


def app_functions(app: func.FunctionApp) -> list[Any]:
    """``get_functions()`` may be called once per app object: cache its answer."""
    key = id(app)
    if key not in _functions_cache:
        _functions_cache[key] = app.get_functions()
    return _functions_cache[key]


def resolve(expr: str, values: dict[str, str] | Any) -> str:
    """Resolve ``%NAME%`` binding expressions from app settings, as the host does."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"binding expression %{name}% names an app setting that is not set")
        return str(values[name])

    return _SETTING_EXPR.sub(sub, expr)


@dataclass(frozen=True)
class Target:
    """One discovered function: what triggers it and how to call it."""

    name: str
    kind: str  # "blob" | "queue" | "timer" | "http"
    source: str  # container, queue name, timer schedule or route template, resolved
    connection: str
    arg_name: str
    call: Callable[..., Any]
    methods: tuple[str, ...] = ()  # http: the methods it answers; empty: all of them
    path: str = ""  # blob: the blob-name template after the container ("{name}", "in/{stem}.jpg")
    scan: bool = False  # blob: source LogsAndContainerScan (the library's default), not EventGrid

    @property
    def function_id(self) -> str:
        """The FunctionId the Functions host puts on this function's blob-trigger messages: the
        FunctionDescriptor.Id of a script function (the Event Grid webhook of a Python function is
        ``/runtime/webhooks/blobs?functionName=Host.Functions.<name>``)."""
        return f"Host.Functions.{self.name}"


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _template_parts(template: str) -> tuple[list[str], list[str]]:
    """A blob-name template split as ``BindingTemplateSource`` tokenises it: the literals (one more
    than the parameters; ``{{``/``}}`` are literal braces) and the parameter names. A malformed
    template (a lone brace, a parameter that is not an identifier, one used twice) is a
    ValueError, as the host refuses to index such a function."""
    literals, names, pos, text = [], [], 0, ""
    for m in _TEMPLATE_TOKEN.finditer(template):
        text += template[pos : m.start()]
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            text += token[0]
        elif m.group(1) is None:
            raise ValueError(f"blob path template {template!r}: unmatched {token!r} at {m.start()}")
        else:
            name = m.group(1)
            if not _IDENT.fullmatch(name):
                raise ValueError(f"blob path template {template!r}: the parameter name {name!r} is invalid")
            if name in names:
                raise ValueError(f"blob path template {template!r}: the parameter {name!r} appears twice")
            names.append(name)
            literals.append(text)
            text = ""
    literals.append(text + template[pos:])
    return literals, names


def blob_name_regex(template: str) -> re.Pattern[str]:
    """The regular expression the WebJobs SDK builds from a blob-name template
    (``BindingTemplateSource.FromString``; ``BindingTemplateToken.BuildCapturePattern``): anchored,
    each ``{param}`` a greedy ``(?<param>.*)``, every literal escaped, case-sensitive; here with
    ``re.DOTALL`` and ``\\Z`` (see :class:`NamePattern`).

    This is the *specification* :class:`NamePattern` implements, not what runs on listings: with
    several parameters a backtracking engine takes polynomial time on a name that almost matches
    (``{a}-{b}-{c}-{d}.jpg`` against 200 dashes: ~0.4 s; names may be 1,024 characters)."""
    literals, names = _template_parts(template)
    out = [re.escape(literals[0])]
    for name, literal in zip(names, literals[1:], strict=True):
        out.append(f"(?P<{name}>.*)")
        out.append(re.escape(literal))
    return re.compile("^" + "".join(out) + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class NamePattern:
    """A blob-name template as a matcher: the same matches and captures as :func:`blob_name_regex`
    (the WebJobs SDK's regex: every ``{param}`` a greedy ``.*``), in time linear in the name.

    A name matches when it starts with the first literal, ends with the last, and the literals
    between are found in order, without overlapping, in what is left. Greedy captures (the first
    parameter as long as possible, then the second, …) put each middle literal at its rightmost
    possible place; searching right to left, each literal at the rightmost occurrence that ends
    before the one after it, gives every literal that place at once. So a match costs one
    ``startswith``, one ``endswith`` and one ``rfind`` per middle literal (:attr:`probes`), whatever
    the name, and never backtracks.

    One difference from the host: a parameter here spans line breaks too (the regex's
    ``re.DOTALL`` and ``\\Z``). .NET's ``.`` stops at ``\\n`` and its ``$`` also matches before a
    final ``\\n``; in the host that only leaves such a blob without binding data; here the pattern
    also stands for the Event Grid subscription's filter, which sees every name, and a name with a
    control character must reach the function (which rejects it) rather than vanish."""

    template: str
    literals: tuple[str, ...]  # one more than names: before the first parameter, between, after the last
    names: tuple[str, ...]

    @classmethod
    def of(cls, template: str) -> NamePattern:
        literals, names = _template_parts(template)
        return cls(template, tuple(literals), tuple(names))

    @property
    def probes(self) -> int:
        """String searches one :meth:`match` makes at most: a bound that does not depend on the name."""
        return len(self.literals) + 1

    def match(self, name: str) -> dict[str, str] | None:
        """The parameters' values if ``name`` matches the template, else None."""
        first, last = self.literals[0], self.literals[-1]
        if not self.names:
            return {} if name == first else None
        lo, hi = len(first), len(name) - len(last)
        if hi < lo or not name.startswith(first) or not name.endswith(last):
            return None
        # Right to left: each middle literal at its rightmost place ending at or before `end`.
        starts: list[int] = []
        end = hi
        for literal in reversed(self.literals[1:-1]):
            at = name.rfind(literal, lo, end)
            if at < 0:
                return None
            starts.append(at)
            end = at
        starts.reverse()
        values, pos = {}, lo
        for param, literal, at in zip(self.names, self.literals[1:-1], starts, strict=False):
            values[param] = name[pos:at]
            pos = at + len(literal)
        values[self.names[-1]] = name[pos:hi]
        return values


def blob_name_pattern(template: str) -> NamePattern:
    """The matcher of a blob-name template (a ValueError if the template is malformed)."""
    return NamePattern.of(template)


def discover(app_dir: Path, values: dict[str, str] | Any) -> list[Target]:
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module = importlib.import_module("function_app")
    targets = []
    for fn in app_functions(module.app):
        trigger = fn.get_trigger()
        ttype = trigger.get_binding_name()
        if ttype == "blobTrigger":
            name = fn.get_function_name()
            path = resolve(trigger.path, values)
            container, _, template = path.partition("/")
            if not container or not template or "{" in container or "}" in container:
                raise ValueError(f"{name}: blob path {path!r} is not '<container>/<blob name template>' with a literal container")
            try:
                blob_name_pattern(template)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            scan = str(getattr(trigger, "source", None) or "LogsAndContainerScan") != "EventGrid"
            call = fn.get_user_function()
            targets.append(Target(name, "blob", container, trigger.connection, trigger.name, call, path=template, scan=scan))
        elif ttype == "queueTrigger":
            targets.append(
                Target(
                    fn.get_function_name(),
                    "queue",
                    resolve(trigger.queue_name, values),
                    trigger.connection,
                    trigger.name,
                    fn.get_user_function(),
                )
            )
        elif ttype == "timerTrigger":
            schedule = resolve(trigger.schedule, values)
            targets.append(Target(fn.get_function_name(), "timer", schedule, "", trigger.name, fn.get_user_function()))
        elif ttype == "httpTrigger":
            route = trigger.route if trigger.route is not None else fn.get_function_name()
            methods = tuple(str(getattr(m, "value", m)).upper() for m in (trigger.methods or ()))
            targets.append(Target(fn.get_function_name(), "http", route, "", trigger.name, fn.get_user_function(), methods))
        else:
            log.warning("function %s has a %s trigger, which this host does not run", fn.get_function_name(), ttype)
    return targets

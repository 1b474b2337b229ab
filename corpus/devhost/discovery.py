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


def blob_name_pattern(template: str) -> re.Pattern[str]:
    """The regular expression the WebJobs SDK builds from a blob-name template to match blob names
    and capture binding data (``BindingTemplateSource.FromString``; ``BindingTemplateToken.
    BuildCapturePattern``): anchored ``^…$``, each ``{param}`` a greedy ``(?<param>.*)``, every
    literal escaped, ``{{``/``}}`` literal braces, case-sensitive. One difference: a parameter
    here spans line breaks too (``re.DOTALL``, and ``\\Z`` for ``$``). .NET's ``.`` stops at
    ``\\n``, which in the host only leaves such a blob without binding data; here the pattern also
    stands for the Event Grid subscription's filter, which sees every name, and a name with a
    control character must reach the function (which rejects it) rather than vanish.
    A malformed template (a lone brace, a parameter that is not an identifier, one used twice) is
    a ValueError, as the host refuses to index such a function."""
    out, names, pos = ["^"], set(), 0
    for m in _TEMPLATE_TOKEN.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            out.append(re.escape(token[0]))
        elif m.group(1) is None:
            raise ValueError(f"blob path template {template!r}: unmatched {token!r} at {m.start()}")
        else:
            name = m.group(1)
            if not _IDENT.fullmatch(name):
                raise ValueError(f"blob path template {template!r}: the parameter name {name!r} is invalid")
            if name in names:
                raise ValueError(f"blob path template {template!r}: the parameter {name!r} appears twice")
            names.add(name)
            out.append(f"(?P<{name}>.*)")
    out.append(re.escape(template[pos:]))
    out.append(r"\Z")
    return re.compile("".join(out), re.DOTALL)


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

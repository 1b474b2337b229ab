"""Reading Bicep without a compiler: the pycep AST, variable resolution, and Bicep's deploy-time rule.

The Bicep CLI can't be installed here, so the templates are parsed with pycep-parser and the rules
the compiler and ARM pre-flight would apply are re-implemented over its AST (see
:mod:`corpus.deploycheck.rules`). pycep gives literals and identifiers alike as ``str``: a string
that names a parameter, variable, resource or module is that symbol, anything else is a literal.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser


@cache
def parse(path: Path) -> dict[str, Any]:
    tree: Any = BicepParser().parse(file_path=path)
    return dict(tree)


class Template:
    """One parsed ``.bicep`` file with its variables, able to resolve simple expressions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = parse(path)
        self.params: dict[str, Any] = self.tree.get("parameters", {})
        self.vars: dict[str, Any] = {k: v["value"] for k, v in self.tree.get("variables", {}).items()}
        self.resources: dict[str, Any] = self.tree.get("resources", {})
        self.modules: dict[str, Any] = self.tree.get("modules", {})

    def resolve(self, value: Any, local: dict[str, Any] | None = None) -> Any:
        """Substitute variable references (bare identifiers and ${…} interpolations) by their values;
        evaluates concat() and map() with a lambda, which is all the name variables use."""
        vars_ = {**self.vars, **(local or {})}
        if isinstance(value, str):
            if value in vars_:
                return self.resolve(vars_[value], local)
            return re.sub(r"\$\{(\w+)\}", lambda m: str(self.resolve(vars_.get(m.group(1), m.group(0)), local)), value)
        if isinstance(value, list):
            return [self.resolve(v, local) for v in value]
        fn = value.get("function") if isinstance(value, dict) else None
        if fn and fn["type"] == "concat":
            return [x for arg in fn["parameters"].values() for x in self.resolve(arg, local)]
        if fn and fn["type"] == "map":
            items, lam = self.resolve(fn["parameters"]["arg_1"], local), fn["parameters"]["arg_2"]["detail"]
            return [self.resolve(lam["expression"], {**(local or {}), lam["var_1"]: item}) for item in items]
        return value

    def param_default(self, name: str) -> Any:
        return self.params[name].get("default")

    def decorator(self, param: str, kind: str) -> Any:
        for d in self.params.get(param, {}).get("decorators", []):
            if d.get("type") == kind:
                return d.get("argument")
        return None


def body_of(config: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's body, under its loop or condition if it has one."""
    if "loop_type" in config or ("condition" in config and isinstance(config.get("config"), dict)):
        body: dict[str, Any] = config["config"]
        return body
    return config


# -- deploy-time constants (Bicep BCP120) ------------------------------------------------------------
# Bicep requires a resource's `name`, `parent` and `scope`, a module's `name` and `scope`, and so every
# `guid()` seed of a role-assignment name, to be computable when the deployment starts: from
# parameters, variables, literals, and the `id`/`name`/`type` of resources whose own names are
# constants. A module output or a resource's `properties` (e.g. a managed identity's principalId) is
# a runtime value. The compiler's own tests (Azure/bicep,
# src/Bicep.Core.IntegrationTests/DeployTimeConstantTests.cs) expect BCP120 for a `scope` or `parent`
# that is an `existing` resource with a runtime name ("Properties of vnet which can be calculated at
# the start include apiVersion, type": no id, no name) and for a role assignment named from
# `.properties.principalId`. Bicep itself accepts a runtime name on an `existing` resource that is
# never used as a scope, parent or guid() seed; this check is stricter and rejects it outright.
# Inside a module, its parameters are constants: hence names are passed to modules as parameters.

CONSTANT_PROPERTIES = {"id", "name", "type", "apiVersion"}
RUNTIME_FUNCTIONS = {"reference", "list_keys", "list_account_sas", "list_service_sas", "list", "list_secrets"}
IDENT = re.compile(r"[A-Za-z_]\w*")


class DeployTimeConstants:
    """Answers "is this expression a deploy-time constant?" for one parsed Bicep file."""

    def __init__(self, tree: dict[str, Any]) -> None:
        self.params = set(tree.get("parameters", {}))
        self.vars = {k: v["value"] for k, v in tree.get("variables", {}).items()}
        self.resources = tree.get("resources", {})
        self.modules = tree.get("modules", {})
        self._resource_memo: dict[str, bool] = {}

    # A resource symbol can be used as a constant (its .id, .name, as a scope) if its name and its
    # parent's and scope's are constants.
    def resource_is_constant(self, symbol: str) -> bool:
        if symbol not in self._resource_memo:
            self._resource_memo[symbol] = False  # cycles are not constant
            body, local = body_and_locals(self.resources[symbol]["config"], self)
            ok = self.is_constant(body.get("name"), local)
            for key in ("parent", "scope"):
                if key in body:
                    ok = ok and self.is_constant(body[key], local)
            self._resource_memo[symbol] = ok
        return self._resource_memo[symbol]

    def symbol_is_constant(self, name: str, local: frozenset[str], prop: str | None) -> bool | None:
        """None: not a symbol (so a literal)."""
        if name in local or name in self.params:
            return True
        if name in self.vars:
            return self.is_constant(self.vars[name], local)
        if name in self.resources:
            return self.resource_is_constant(name) and (prop is None or prop in CONSTANT_PROPERTIES)
        if name in self.modules and prop is not None:
            return prop == "name"  # module.outputs.* is a runtime value
        return None  # pycep gives literals and identifiers alike as str: a non-symbol is a literal

    def interpolation_is_constant(self, text: str, local: frozenset[str]) -> bool:
        for inner in re.findall(r"\$\{([^}]*)\}", text):
            for m in re.finditer(r"([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?", inner):
                if inner[m.end() :].lstrip().startswith("("):
                    continue  # a function name
                if self.symbol_is_constant(m.group(1), local, m.group(2)) is False:
                    return False
        return True

    def is_constant(self, expr: Any, local: frozenset[str] = frozenset()) -> bool:
        if expr is None or isinstance(expr, bool | int | float):
            return True
        if isinstance(expr, str):
            if IDENT.fullmatch(expr):
                return self.symbol_is_constant(expr, local, None) is not False
            return self.interpolation_is_constant(expr, local)
        if isinstance(expr, list):
            return all(self.is_constant(e, local) for e in expr)
        if isinstance(expr, dict):
            if expr.get("type") == "lambda_expression":
                detail = expr["detail"]
                names = {v for k, v in detail.items() if k.startswith("var_") and isinstance(v, str)}
                return self.is_constant(detail["expression"], local | names)
            op = expr.get("operator")
            if isinstance(op, dict) and op.get("type") == "property_accessor":
                first, rest = op["operands"]["operand_1"], op["operands"]["operand_2"]
                prop = rest if isinstance(rest, str) else rest.get("operator", {}).get("operands", {}).get("operand_1")
                if isinstance(first, str) and IDENT.fullmatch(first):
                    known = self.symbol_is_constant(first, local, prop if isinstance(prop, str) else None)
                    return known is not False
                return self.is_constant(first, local)
            fn = expr.get("function")
            if isinstance(fn, dict) and fn.get("type") in RUNTIME_FUNCTIONS:
                return False
            return all(self.is_constant(v, local) for v in expr.values())
        return True


def body_and_locals(config: dict[str, Any], dtc: DeployTimeConstants) -> tuple[dict[str, Any], frozenset[str]]:
    """A resource or module body, and its loop variables (constant when the looped array is)."""
    if "loop_type" not in config:
        if "condition" in config and isinstance(config.get("config"), dict):
            return config["config"], frozenset()  # `= if (…) {…}`
        return config, frozenset()
    detail = config["loop_type"]["detail"]
    names = frozenset(v for k, v in detail.items() if k in ("item_name", "index_name") and v)
    source = detail.get("array_name", detail.get("range"))
    if not dtc.is_constant(source):
        names = frozenset()
    return config["config"], names


def deploy_time_violations(tree: dict[str, Any]) -> list[str]:
    dtc = DeployTimeConstants(tree)
    found = []
    for symbol, res in tree.get("resources", {}).items():
        body, local = body_and_locals(res["config"], dtc)
        what = f"resource {symbol} ({res['type']})"
        if not dtc.is_constant(body.get("name"), local):
            kind = (
                "role-assignment name (its guid() seeds)"
                if res["type"].lower() == "microsoft.authorization/roleassignments"
                else "name"
            )
            found.append(f"{what}: {kind} is not a deploy-time constant")
        for key in ("scope", "parent"):
            if key in body and not dtc.is_constant(body[key], local):
                found.append(f"{what}: {key} is not a deploy-time constant")
    for symbol, mod in tree.get("modules", {}).items():
        body, local = body_and_locals(mod["config"], dtc)
        for key in ("name", "scope"):
            if key in body and not dtc.is_constant(body[key], local):
                found.append(f"module {symbol}: {key} is not a deploy-time constant")
    return found

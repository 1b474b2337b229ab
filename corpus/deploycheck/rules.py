"""Every rule we know a deployment of ``infra/`` must obey, checked on the parsed Bicep.

A ``what-if`` we can run without a subscription: each rule returns one line per violation (empty:
obeyed). The rules come from the compiler (BCP120), ARM pre-flight (empty-segment scopes), the
Flex Consumption plan (lowest maximum instance count), the Functions host and the Python worker
(host-account roles, the worker's thread pool), and from our own code (the roles the CLI's
commands need, :mod:`corpus.cli.access`). ``python -m corpus.deploycheck`` runs them all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corpus.cli.access import ANY, Grant, missing
from corpus.deploycheck.bicep import IDENT, Template, body_of, deploy_time_violations, parse
from corpus.store.hostconfig import load_queue_config

ROLE_ASSIGNMENT = "microsoft.authorization/roleassignments"


class Infra:
    """The templates of one ``infra/`` folder (and the app's host.json beside it)."""

    def __init__(self, root: Path, host_json: Path | None = None) -> None:
        self.root = root
        self.host_json = host_json or root.parent / "host.json"

    def template(self, name: str) -> Template:
        return Template(self.root / name)

    def files(self) -> list[Path]:
        return sorted(self.root.rglob("*.bicep"))

    def parameters_file(self) -> dict[str, Any]:
        values: dict[str, Any] = json.loads((self.root / "main.parameters.json").read_text())["parameters"]
        return values

    def hook(self, name: str = "postdeploy.sh") -> str:
        return (self.root / "hooks" / name).read_text()


# -- BCP120 -----------------------------------------------------------------------------------------
def deploy_time_constants(infra: Infra) -> list[str]:
    return [f"{p.relative_to(infra.root)}: {v}" for p in infra.files() for v in deploy_time_violations(parse(p))]


# -- empty-segment scopes (Azure/bicep#1492, #7733, #10596) -----------------------------------------
# ARM pre-flight validates the name and scope of every resource in the template, including those
# whose condition is false (and it is the deployment that fails, not the one resource). A role
# assignment scoped to an `existing` child resource named by a parameter that is empty has a scope
# like `…/blobServices/default/containers/` (an empty last segment): the whole deployment fails.
# So: every `existing` resource used as a `scope` or `parent` must be named by a value that cannot
# be empty in ANY call of its module, whatever the condition or loop around the resource using it.
def _existing_chain(mod: Template, symbol: str) -> list[str]:
    chain = []
    while symbol in mod.resources:
        res = mod.resources[symbol]
        if not res.get("existing"):
            break
        chain.append(symbol)
        parent = body_of(res["config"]).get("parent")
        if not isinstance(parent, str):
            break
        symbol = parent
    return chain


def _possibly_empty(value: Any, caller: Template, local: dict[str, Any]) -> str | None:
    """Why ``value`` (an argument in ``caller``) may be an empty string, or None if it cannot."""
    if value is None:
        return "not passed and no default"
    if isinstance(value, str) and value == "":
        return "''"
    if isinstance(value, str) and IDENT.fullmatch(value):
        if value in local:
            return local[value]  # type: ignore[no-any-return]
        if value in caller.vars:
            return _possibly_empty(caller.vars[value], caller, local)
        if value in caller.params:
            default = caller.param_default(value)
            min_length = caller.decorator(value, "min_length")
            if default == "" or (default is None and not min_length):
                return f"{caller.path.name} parameter {value} (default {default!r}, no @minLength)"
    return None


def empty_segment_scopes(infra: Infra) -> list[str]:
    found = []
    for path in infra.files():
        caller = Template(path)
        for msym, mod_decl in caller.modules.items():
            if mod_decl.get("type") != "local":
                continue
            config = mod_decl["config"]
            body = body_of(config)
            local: dict[str, Any] = {}
            loop = config.get("loop_type", {}).get("detail", {}) if "loop_type" in config else {}
            if loop.get("item_name"):
                source = loop.get("array_name")
                items = caller.resolve(source) if isinstance(source, str) else None
                empty = isinstance(items, list) and any(i == "" for i in items)
                local[loop["item_name"]] = f"an item of {source} is ''" if empty else None
            mod = Template((path.parent / mod_decl["detail"]["path"]).resolve())
            args = body.get("params", {})
            for rsym, res in mod.resources.items():
                rbody = body_of(res["config"])
                for key in ("scope", "parent"):
                    target = rbody.get(key)
                    if not isinstance(target, str):
                        continue
                    for esym in _existing_chain(mod, target):
                        name = body_of(mod.resources[esym]["config"]).get("name")
                        if not (isinstance(name, str) and name in mod.params):
                            continue
                        passed = args.get(name, mod.param_default(name))
                        why = _possibly_empty(passed, caller, local)
                        if why:
                            found.append(
                                f"{path.relative_to(infra.root)}: module {msym} ({mod.path.name}): resource {rsym}'s {key} "
                                f"{esym} is named by parameter {name}, which may be empty ({why}): an empty-segment scope "
                                "fails ARM pre-flight even when the resource's condition is false"
                            )
    return sorted(set(found))


# -- Flex Consumption: the lowest maximumInstanceCount -----------------------------------------------
MIN_MAX_INSTANCES = 40
"""Below 40 is a preview in three regions only (Azure/azure-functions-host#10523, 2026-01-05)."""


def maximum_instance_count(infra: Infra) -> list[str]:
    main = infra.template("main.bicep")
    found = []
    default = main.param_default("maximumInstanceCount")
    if not isinstance(default, int) or default < MIN_MAX_INSTANCES:
        found.append(f"main.bicep: maximumInstanceCount defaults to {default}; most regions reject < {MIN_MAX_INSTANCES}")
    low = main.decorator("maximumInstanceCount", "min_value")
    if not isinstance(low, int) or low < MIN_MAX_INSTANCES:
        found.append(f"main.bicep: maximumInstanceCount allows {low}; most regions reject < {MIN_MAX_INSTANCES}")
    value = infra.parameters_file().get("maximumInstanceCount", {}).get("value")
    if value is not None and (not isinstance(value, int) or value < MIN_MAX_INSTANCES):
        found.append(f"main.parameters.json: maximumInstanceCount is {value}; most regions reject < {MIN_MAX_INSTANCES}")
    return found


# -- the host account: what the Functions host does with it -------------------------------------------
HOST_ROLES = {"storageBlobDataOwner", "storageQueueDataContributor", "storageTableDataContributor"}
"""Blobs (leases, keys, the package), queues (blob-trigger retries), tables (diagnostic events):
"Connecting to host storage with an identity" in the Functions docs."""


def _role_names(tpl: Template, var: str) -> set[str]:
    names = set()
    for r in tpl.vars.get(var, []):
        op = r.get("operator", {}) if isinstance(r, dict) else {}
        if op.get("type") == "property_accessor":
            names.add(op["operands"]["operand_2"])
    return names


def host_account_roles(infra: Infra) -> list[str]:
    res = infra.template("resources.bicep")
    call = body_of(res.modules["hostRbac"]["config"])["params"]
    var = call.get("roleIds", call.get("appRoleIds"))
    have = _role_names(res, var) if isinstance(var, str) else set()
    return [f"resources.bicep: the app identity lacks {r} on the host account" for r in sorted(HOST_ROLES - have)]


# -- the Python worker's thread pool ---------------------------------------------------------------
def _app_settings(res: Template) -> dict[str, Any]:
    site = body_of(res.resources["functionApp"]["config"])
    return {res.resolve(e["name"]): e["value"] for e in site["properties"]["siteConfig"]["appSettings"]}


def python_threads(infra: Infra) -> list[str]:
    res, main = infra.template("resources.bicep"), infra.template("main.bicep")
    setting = _app_settings(res).get("PYTHON_THREADPOOL_THREAD_COUNT")
    if setting is None:
        return [
            "resources.bicep: no PYTHON_THREADPOOL_THREAD_COUNT: the 3.11 worker then runs min(32, cores + 4) "
            "synchronous invocations at once (about 5 on one core), not what host.json dispatches"
        ]
    per_instance = load_queue_config(infra.host_json).max_concurrency
    default = main.param_default("pythonThreadCount")
    value = infra.parameters_file().get("pythonThreadCount", {}).get("value", default)
    found = []
    for where, n in (("main.bicep default", default), ("main.parameters.json", value)):
        if n != per_instance:
            found.append(
                f"{where}: pythonThreadCount is {n}, but host.json dispatches {per_instance} messages per queue "
                "function and instance (batchSize + newBatchThreshold)"
            )
    return found


# -- the roles the CLI's commands need (corpus/cli/access.py) -----------------------------------------
CHILD_ROLE_MODULES = {"container-role.bicep": "containerName", "queue-sender.bicep": "queueName", "table-role.bicep": "tableName"}


def rbac_grants(infra: Infra) -> dict[str, set[Grant]]:
    """What storage-rbac.bicep grants the ``operators`` and the ``admins`` of the corpus account."""
    res = infra.template("resources.bicep")
    call = body_of(res.modules["corpusRbac"]["config"])["params"]
    mod = infra.template("modules/storage-rbac.bicep")

    def arg(name: str) -> Any:
        return res.resolve(call.get(name, mod.param_default(name)))

    grants: dict[str, set[Grant]] = {"operators": set(), "admins": set()}
    for r in mod.resources.values():
        if r["type"].lower() != ROLE_ASSIGNMENT or "loop_type" not in r["config"]:
            continue
        tier = r["config"]["loop_type"]["detail"].get("array_name")
        body = body_of(r["config"])
        role = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        scope_sym = body.get("scope")
        if scope_sym == "account":
            scope = ANY
        else:  # an `existing` child named by one of the module's parameters
            name = body_of(mod.resources[scope_sym]["config"]).get("name") if scope_sym in mod.resources else None
            scope = str(arg(name)) if isinstance(name, str) and name in mod.params else f"?{scope_sym}"
        if isinstance(tier, str) and tier in grants:
            grants[tier].add(Grant(role, scope))
    for m in mod.modules.values():
        param = CHILD_ROLE_MODULES.get(m["detail"]["path"])
        if not param:
            continue
        config = m["config"]
        body = body_of(config)
        tier, role, target = body["params"]["principals"], body["params"]["roleId"], body["params"][param]
        if not isinstance(tier, str) or tier not in grants:
            continue
        loop = config.get("loop_type", {}).get("detail", {}) if "loop_type" in config else {}
        names = arg(loop["array_name"]) if loop.get("item_name") == target else [arg(target)]
        grants[tier].update(Grant(role, n) for n in names)
    return grants


def operator_roles(infra: Infra) -> list[str]:
    grants = rbac_grants(infra)
    found = missing("operators", grants["operators"])
    # The admins (the deployer) are operators too.
    found += missing("admins", grants["admins"] | grants["operators"])
    res = infra.template("resources.bicep")
    call = body_of(res.modules["corpusRbac"]["config"])["params"]
    if call.get("admins") != "admins" or res.vars.get("admins") != "deployerOperator":
        found.append("resources.bicep: storage-rbac.bicep's admins must be the deployer only (var admins = deployerOperator)")
    return [f"storage-rbac.bicep: {line}" for line in found]


# -- the postdeploy hook's contract ------------------------------------------------------------------
def hook_contract(infra: Infra) -> list[str]:
    found = []
    main = infra.template("main.bicep")
    res = infra.template("resources.bicep")
    out = main.tree.get("outputs", {}).get("AZURE_FUNCTION_APP_HOST", {}).get("value")
    inner = res.tree.get("outputs", {}).get("functionAppHostName", {}).get("value")
    if "functionAppHostName" not in json.dumps(out) or "defaultHostName" not in json.dumps(inner):
        found.append("main.bicep: no AZURE_FUNCTION_APP_HOST output from the function app's defaultHostName")
    for name in ("postdeploy.sh", "postdeploy.ps1"):
        hook = infra.hook(name)
        if re.search(r"(APP_NAME\}?|\$app)\.azurewebsites\.net", hook):
            found.append(f"hooks/{name}: builds the host name; use AZURE_FUNCTION_APP_HOST (defaultHostName)")
        if "AZURE_FUNCTION_APP_HOST" not in hook:
            found.append(f"hooks/{name}: does not use AZURE_FUNCTION_APP_HOST")
        if "provisioningState" not in hook:
            found.append(f"hooks/{name}: does not wait for the event subscription's provisioningState")
        if "anonymous" not in hook.lower():
            found.append(f"hooks/{name}: does not check that Easy Auth refuses anonymous calls")
    return found


# -- storage redundancy ------------------------------------------------------------------------------
def storage_redundancy(infra: Infra) -> list[str]:
    found = []
    main = infra.template("main.bicep")
    if main.param_default("storageSku") != "Standard_GRS":
        found.append("main.bicep: storageSku must default to Standard_GRS (losing no data is the first requirement)")
    account = infra.template("modules/storage-account.bicep")
    sku = body_of(account.resources["account"]["config"]).get("sku", {}).get("name")
    if sku != "skuName":
        found.append(f"modules/storage-account.bicep: sku.name is {sku!r}, not the skuName parameter")
    return found


# -- turn 2's rules: keyless storage, no secrets in settings, Flex specifics, the hook is fatal -----------
SECRET_MARKERS = ("accountkey", "sharedaccesssignature", "defaultendpointsprotocol", "usedevelopmentstorage", "listkeys", "sig=")


def keyless_and_flex(infra: Infra) -> list[str]:
    found = []
    account = body_of(infra.template("modules/storage-account.bicep").resources["account"]["config"])["properties"]
    for key, want in (
        ("allowSharedKeyAccess", False),
        ("allowBlobPublicAccess", False),
        ("minimumTlsVersion", "TLS1_2"),
        ("supportsHttpsTrafficOnly", True),
    ):
        if account.get(key) != want:
            found.append(f"modules/storage-account.bicep: {key} is {account.get(key)!r}, not {want!r}")
    res = infra.template("resources.bicep")
    settings = _app_settings(res)
    text = json.dumps(settings).lower()
    found += [f"resources.bicep: an app setting holds a secret ({m})" for m in SECRET_MARKERS if m in text]
    for conn in ("AzureWebJobsStorage", "CorpusStorage"):
        if settings.get(f"{conn}__credential") != "managedidentity":
            found.append(f"resources.bicep: {conn} is not identity-based ({conn}__credential)")
    site = body_of(res.resources["functionApp"]["config"])["properties"]
    if "ftpsState" in site.get("siteConfig", {}):
        found.append("resources.bicep: siteConfig.ftpsState is rejected by Flex Consumption (error 51021)")
    if "preview" in res.resources["systemTopic"]["api_version"]:
        found.append("resources.bicep: the Event Grid system topic uses a preview API version")
    azure_yaml = (infra.root.parent / "azure.yaml").read_text()
    if "continueOnError: true" in azure_yaml or azure_yaml.count("continueOnError: false") < 2:
        found.append("azure.yaml: a postdeploy hook failure must stop azd up (continueOnError: false, both shells)")
    return found


RULES: dict[str, Callable[[Infra], list[str]]] = {
    "deploy-time constants (BCP120)": deploy_time_constants,
    "no empty-segment scopes, whatever the condition": empty_segment_scopes,
    "maximumInstanceCount >= 40": maximum_instance_count,
    "host account roles (blob, queue, table)": host_account_roles,
    "Python worker threads = host.json's per-instance dispatch": python_threads,
    "operators' and admins' roles cover corpus/cli/access.py": operator_roles,
    "postdeploy hook: defaultHostName, waits, anonymous check": hook_contract,
    "storage redundancy is a parameter, GRS by default": storage_redundancy,
    "keyless storage, no secrets, Flex-valid site, GA Event Grid, fatal hook": keyless_and_flex,
}


def check(infra: Infra) -> dict[str, list[str]]:
    results = {}
    for name, rule in RULES.items():
        try:
            results[name] = rule(infra)
        except (KeyError, TypeError, AttributeError, OSError, ValueError) as exc:
            results[name] = [f"could not check (the templates are not in the shape this rule reads): {type(exc).__name__}: {exc}"]
    return results

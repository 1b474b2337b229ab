"""infra/ agrees with the code: names, identity-based settings, and the security properties.

The Bicep CLI can't be installed here, so the templates are parsed with pycep-parser (CI also
scans them with checkov). A queue renamed in corpus/store/settings.py without the matching Bicep change
fails here.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

import function_app
from corpus.devhost.discovery import app_functions
from corpus.store import settings as s

# CORPUS_INFRA_DIR points the tests at another copy of infra/ (e.g. an older commit's, to show that
# the deploy-time-constant check fails on it).
INFRA = Path(os.environ.get("CORPUS_INFRA_DIR") or Path(__file__).resolve().parent.parent / "infra")


@cache
def parse(name: str) -> dict[str, Any]:
    return BicepParser().parse(file_path=INFRA / name)


def variables() -> dict[str, Any]:
    return {k: v["value"] for k, v in parse("resources.bicep")["variables"].items()}


def resolve(value: Any, local: dict[str, Any] | None = None) -> Any:
    """Substitute variable references (bare identifiers and ${…} interpolations) by their values;
    evaluates concat() and map() with a lambda, which is all the name variables use."""
    vars_ = {**variables(), **(local or {})}
    if isinstance(value, str):
        if value in vars_:
            return resolve(vars_[value], local)
        return re.sub(r"\$\{(\w+)\}", lambda m: str(resolve(vars_.get(m.group(1), m.group(0)), local)), value)
    if isinstance(value, list):
        return [resolve(v, local) for v in value]
    fn = value.get("function") if isinstance(value, dict) else None
    if fn and fn["type"] == "concat":
        return [x for arg in fn["parameters"].values() for x in resolve(arg, local)]
    if fn and fn["type"] == "map":
        items, lam = resolve(fn["parameters"]["arg_1"], local), fn["parameters"]["arg_2"]["detail"]
        return [resolve(lam["expression"], {**(local or {}), lam["var_1"]: item}) for item in items]
    return value


def app_settings() -> dict[str, Any]:
    site = parse("resources.bicep")["resources"]["functionApp"]["config"]
    return {resolve(e["name"]): e["value"] for e in site["properties"]["siteConfig"]["appSettings"]}


def corpus_storage_params() -> dict[str, Any]:
    return parse("resources.bicep")["modules"]["corpusStorage"]["config"]["params"]


def test_every_template_parses():
    for path in INFRA.rglob("*.bicep"):
        assert parse(str(path.relative_to(INFRA)))["resources"] or parse(str(path.relative_to(INFRA)))["modules"]


# Names of features landing this week (trainsets, exports) and the Event Grid dead-letter container,
# not yet in corpus/settings.py: listed here explicitly until the code defines them (to reconcile on
# merge: then compare with s.DEFAULTS like the others).
NEW_SETTINGS = {
    "CORPUS_TRAINSET_QUEUE": "trainset-requests",
    "CORPUS_TRAINSETS_CONTAINER": "trainsets",
    "CORPUS_EXPORT_QUEUE": "export-requests",
    "CORPUS_EXPORTS_CONTAINER": "exports",
    "CORPUS_DEADLETTER_CONTAINER": s.DEFAULTS[s.DEADLETTER_CONTAINER],
}
NEW_TABLES = ["TrainingSets", "Models", "Lineage"]


def test_containers_queues_tables_match_the_code():
    d = s.DEFAULTS
    params = corpus_storage_params()
    new = NEW_SETTINGS
    assert resolve(params["containers"]) == [
        d[s.STAGING_CONTAINER],
        d[s.REJECTED_CONTAINER],
        new["CORPUS_TRAINSETS_CONTAINER"],
        new["CORPUS_EXPORTS_CONTAINER"],
        new["CORPUS_DEADLETTER_CONTAINER"],
        d[s.CATALOG_CONTAINER],
    ]
    triggered = [
        d[s.COPY_QUEUE],
        d[s.TRANSFORM_QUEUE],
        d[s.TRANSFORM_JOBS_QUEUE],
        new["CORPUS_TRAINSET_QUEUE"],
        new["CORPUS_EXPORT_QUEUE"],
    ]
    # Every queue has its poison queue provisioned up front, and so does the blob trigger.
    assert resolve(params["queues"]) == [*triggered, *(q + "-poison" for q in triggered), s.BLOB_POISON_QUEUE]
    assert set(resolve(params["tables"])) == {*s.TABLES, *NEW_TABLES}


def test_new_feature_and_dead_letter_settings_are_set_and_output():
    got = app_settings()
    for key, value in NEW_SETTINGS.items():
        assert resolve(got[key]) == value, key
    outputs = parse("main.bicep")["outputs"]
    assert "CORPUS_DEADLETTER_CONTAINER" in outputs and "CORPUS_STORAGE_ACCOUNT_ID" in outputs


def test_app_settings_name_the_same_resources_as_the_code_defaults():
    got = app_settings()
    for key in (
        s.STAGING_CONTAINER,
        s.REJECTED_CONTAINER,
        s.COPY_QUEUE,
        s.TRANSFORM_QUEUE,
        s.TRANSFORM_JOBS_QUEUE,
        s.TRAINSET_QUEUE,
        s.TRAINSETS_CONTAINER,
        s.CATALOG_CONTAINER,
        s.CATALOG_SCHEDULE,
    ):
        assert resolve(got[key]) == s.DEFAULTS[key], key


def test_every_binding_expression_and_connection_is_provided_by_the_app_settings():
    got = app_settings()
    for fn in app_functions(function_app.app):
        trigger = fn.get_trigger()
        if trigger.get_binding_name() == "httpTrigger":
            continue  # no binding expression, no connection
        expr = getattr(trigger, "path", None) or getattr(trigger, "queue_name", None) or trigger.schedule
        for setting in re.findall(r"%([^%]+)%", expr):
            assert setting in got, f"{fn.get_function_name()} binds %{setting}%, which Bicep does not set"
            if setting in s.DEFAULTS:
                assert resolve(got[setting]) == s.DEFAULTS[setting], setting
        if trigger.get_binding_name() == "timerTrigger":
            continue  # no connection
        conn = trigger.connection
        assert conn == s.CONNECTION
        # Identity-based: blob AND queue URIs (the Event Grid blob trigger uses a queue), credential, client id.
        for suffix in ("blobServiceUri", "queueServiceUri", "tableServiceUri", "credential", "clientId"):
            assert f"{conn}__{suffix}" in got, suffix
        assert got[f"{conn}__credential"] == "managedidentity"
    assert resolve(variables()["blobFunctionName"]) in {f.get_function_name() for f in app_functions(function_app.app)}


def test_host_storage_is_identity_based_too():
    got = app_settings()
    assert "AzureWebJobsStorage" not in got
    for suffix in ("blobServiceUri", "queueServiceUri", "tableServiceUri", "credential", "clientId"):
        assert f"AzureWebJobsStorage__{suffix}" in got
    assert got["AzureWebJobsStorage__credential"] == "managedidentity"


def test_app_settings_hold_no_connection_string_and_no_key():
    got = app_settings()
    text = json.dumps(got).lower()
    secrets = ("accountkey", "sharedaccesssignature", "defaultendpointsprotocol", "usedevelopmentstorage", "listkeys", "sig=")
    for secret in secrets:
        assert secret not in text, secret
    # The one *_CONNECTION_STRING is Application Insights' endpoint locator; ingestion is Entra-only.
    assert [k for k in got if "CONNECTION_STRING" in k.upper()] == ["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    assert "Authorization=AAD" in got["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    insights = parse("resources.bicep")["resources"]["appInsights"]["config"]["properties"]
    assert insights["DisableLocalAuth"] is True


def test_storage_accounts_are_keyless_private_and_tls12():
    props = parse("modules/storage-account.bicep")["resources"]["account"]["config"]["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    containers = parse("modules/storage-account.bicep")["resources"]["blobContainers"]["config"]["config"]
    assert containers["properties"]["publicAccess"] == "None"


def test_function_app_is_flex_python311_https_with_a_user_assigned_identity():
    res = parse("resources.bicep")["resources"]
    assert res["plan"]["config"]["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    app = res["functionApp"]["config"]
    assert app["identity"]["type"] == "UserAssigned"
    props = app["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    # Flex Consumption rejects ftpsState (error 51021, Azure/azure-cli#31414).
    assert "ftpsState" not in props["siteConfig"]
    fac = props["functionAppConfig"]
    assert fac["runtime"] == {"name": "python", "version": "3.11"}
    assert fac["scaleAndConcurrency"]["maximumInstanceCount"] == "maximumInstanceCount"
    assert fac["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    assert set(app["dependsOn"]) == {"hostRbac", "corpusRbac"}  # no start before the data roles exist


def test_maximum_instance_count_is_documented_per_function_group():
    doc = json.dumps(parse("main.bicep")["parameters"]["maximumInstanceCount"]["decorators"])
    assert "PER FUNCTION GROUP" in doc and "batchSize + newBatchThreshold" in doc
    assert "global" not in doc.lower().replace("for a global cap", "")
    text = (INFRA / "main.bicep").read_text()
    assert "per-function-scaling" in text and "floor(G / (24 x N))" in text


def rbac(module: str) -> dict[str, Any]:
    return parse("resources.bicep")["modules"][module]["config"]["params"]


def test_least_roles_for_the_app_identity():
    for module, var, roles in [
        ("hostRbac", "hostRoles", {"storageBlobDataOwner", "storageQueueDataContributor"}),
        ("corpusRbac", "corpusRoles", {"storageBlobDataOwner", "storageQueueDataContributor", "storageTableDataContributor"}),
    ]:
        assert rbac(module)["appRoleIds"] == var
        names = {r["operator"]["operands"]["operand_2"] for r in variables()[var]}
        assert names == roles
    assert "monitoringMetricsPublisher" in variables()["roles"]
    assert "Contributor" not in json.dumps(variables()["roles"]).replace("DataContributor", "")


def test_operators_may_write_only_staging_and_the_request_queues():
    params = rbac("corpusRbac")
    assert resolve(params["stagingContainerName"]) == s.DEFAULTS[s.STAGING_CONTAINER]
    # Internal queues (copy-requests, transform-jobs, every -poison queue) are never operator-writable.
    assert resolve(params["requestQueueNames"]) == [s.DEFAULTS[s.TRANSFORM_QUEUE], "trainset-requests", "export-requests"]
    mod = parse("modules/storage-rbac.bicep")
    res, var = mod["resources"], {k: v["value"] for k, v in mod["variables"].items()}
    staging = res["operatorStaging"]["config"]["config"]
    assert staging["scope"] == "stagingContainer"
    assert staging["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"] == "storageBlobDataContributor"
    # Account-wide, operators only read (corpus status / corpus sets).
    for symbol, role in [("operatorQueueReaders", "storageQueueDataReader"), ("operatorTableReaders", "storageTableDataReader")]:
        body = res[symbol]["config"]["config"]
        assert body["scope"] == "account"
        assert body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"] == role
    dead = res["operatorDeadLetterReaders"]["config"]["config"]
    assert dead["scope"] == "deadLetterContainer"
    assert dead["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"] == "storageBlobDataReader"
    assert var["storageBlobDataReader"] == "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
    assert not any("Contributor" in k or "Owner" in k for k in var if k != "storageBlobDataContributor")
    queue_module = mod["modules"]["operatorQueues"]["config"]
    assert queue_module["loop_type"]["detail"]["array_name"] == "requestQueueNames"
    assert queue_module["config"]["params"]["roleId"] == "storageQueueDataMessageSender"
    sender = parse("modules/queue-sender.bicep")["resources"]
    assert sender["queue"]["type"] == "Microsoft.Storage/storageAccounts/queueServices/queues"
    assert sender["senders"]["config"]["config"]["scope"] == "queue"
    # Role ids: Blob Data Contributor, Queue Data Message Sender, Queue Data Reader, Table Data Reader.
    assert var["storageBlobDataContributor"] == "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
    assert var["storageQueueDataMessageSender"] == "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
    assert var["storageQueueDataReader"] == "19e7f393-937e-4f77-808e-94535e297925"
    assert var["storageTableDataReader"] == "76199698-9eea-4c19-bc75-cec21354c6b6"


def test_principal_types_are_parameters_mapped_by_azd():
    main = parse("main.bicep")["parameters"]
    assert "ServicePrincipal" in json.dumps(main["principalType"]["decorators"])
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"
    assert params["operatorPrincipalId"]["value"] == "${CORPUS_OPERATOR_PRINCIPAL_ID=}"
    assert params["operatorPrincipalType"]["value"] == "${CORPUS_OPERATOR_PRINCIPAL_TYPE=Group}"


def test_azd_env_files_are_not_committed():
    assert ".azure/" in (INFRA.parent / ".gitignore").read_text().splitlines()


def test_event_grid_topic_on_the_corpus_account_and_a_hook_for_the_subscription():
    topic = parse("resources.bicep")["resources"]["systemTopic"]
    assert topic["config"]["properties"]["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert "preview" not in topic["api_version"]  # GA API version
    assert topic["config"]["identity"]["type"] == "SystemAssigned"  # dead-letters with its identity
    assert rbac("corpusRbac")["deadLetterContainerName"] == "deadLetterContainerName"
    writer = parse("modules/storage-rbac.bicep")["resources"]["deadLetterWriter"]["config"]["config"]
    assert writer["scope"] == "deadLetterContainer"
    azure_yaml = (INFRA.parent / "azure.yaml").read_text()
    assert "postdeploy" in azure_yaml and "infra/hooks/postdeploy.sh" in azure_yaml
    assert "infra/hooks/postdeploy.ps1" in azure_yaml  # Windows variant
    for name in ("postdeploy.sh", "postdeploy.ps1"):
        hook = (INFRA / "hooks" / name).read_text()
        assert "Microsoft.Storage.BlobCreated" in hook and "blobs_extension" in hook, name
        assert "/blobServices/default/containers/" in hook and "CORPUS_STAGING_CONTAINER" in hook, name
        assert "deadLetterWithResourceIdentity" in hook and "CORPUS_DEADLETTER_CONTAINER" in hook, name
        assert "az account show" in hook and "AZURE_SUBSCRIPTION_ID" in hook, name  # wrong login fails fast
        assert "2>/dev/null || true" not in hook, name
        assert topic["api_version"] in hook, name


# -- deploy-time constants (Bicep BCP120), checked on the pycep AST ---------------------------------
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
# The Bicep CLI can't be installed here, so this is the rule, re-implemented over pycep's AST.

CONSTANT_PROPERTIES = {"id", "name", "type", "apiVersion"}
RUNTIME_FUNCTIONS = {"reference", "list_keys", "list_account_sas", "list_service_sas", "list", "list_secrets"}
IDENT = re.compile(r"[A-Za-z_]\w*")


class DeployTimeConstants:
    """Answers "is this expression a deploy-time constant?" for one parsed Bicep file."""

    def __init__(self, tree: dict[str, Any]):
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


@pytest.mark.parametrize("path", sorted(str(p.relative_to(INFRA)) for p in INFRA.rglob("*.bicep")))
def test_names_scopes_and_role_assignment_seeds_are_deploy_time_constants(path):
    assert deploy_time_violations(parse(path)) == []


# Today's mistake, reduced: an `existing` account named by a module output, used as a role
# assignment's scope and inside guid(); and the same through a runtime property. The check must
# flag all of them (BCP120), and accept the same thing written with a variable name.
BCP120_SAMPLE = """
param token string
var accountName = 'st${token}'
module storage 'storage.bicep' = {
  name: 'storage'
  params: { name: accountName }
}
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${token}'
  location: 'westeurope'
}
resource viaOutput 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storage.outputs.name
}
resource viaVariable 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}
resource bad 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(viaOutput.id, identity.id, 'r')
  scope: viaOutput
  properties: { principalId: identity.properties.principalId, roleDefinitionId: 'r' }
}
resource badSeed 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(viaVariable.id, identity.properties.principalId, 'r')
  scope: viaVariable
  properties: { principalId: identity.properties.principalId, roleDefinitionId: 'r' }
}
resource badIf 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (token != '') {
  name: guid(storage.outputs.name, 'r')
  scope: viaVariable
  properties: { principalId: identity.properties.principalId, roleDefinitionId: 'r' }
}
resource good 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(viaVariable.id, identity.id, 'r')
  scope: viaVariable
  properties: { principalId: identity.properties.principalId, roleDefinitionId: 'r' }
}
"""


def test_the_deploy_time_constant_check_catches_bcp120(tmp_path):
    sample = tmp_path / "sample.bicep"
    sample.write_text(BCP120_SAMPLE)
    found = deploy_time_violations(BicepParser().parse(file_path=sample))
    ra = "(Microsoft.Authorization/roleAssignments)"
    seeds = "role-assignment name (its guid() seeds) is not a deploy-time constant"
    assert sorted(found) == sorted(
        [
            "resource viaOutput (Microsoft.Storage/storageAccounts): name is not a deploy-time constant",
            f"resource bad {ra}: {seeds}",
            f"resource bad {ra}: scope is not a deploy-time constant",
            f"resource badSeed {ra}: {seeds}",
            f"resource badIf {ra}: {seeds}",
        ]
    )


def test_api_and_gallery_admit_only_signed_in_users_of_the_tenant():
    """Easy Auth (authsettingsV2) on the function app: sign-in required, Entra ID of this tenant,
    only the Event Grid webhook excluded; the HTTP functions rely on it (anonymous at function level)."""
    auth = parse("resources.bicep")["resources"]["functionAppAuth"]
    assert auth["type"] == "Microsoft.Web/sites/config"
    assert auth["config"]["parent"] == "functionApp" and auth["config"]["name"] == "authsettingsV2"
    props = auth["config"]["properties"]
    assert props["platform"]["enabled"] is True
    gv = props["globalValidation"]
    assert gv["requireAuthentication"] is True
    assert gv["redirectToProvider"] == "azureactivedirectory"
    assert gv["excludedPaths"] == ["/runtime/webhooks/blobs"]  # Event Grid's webhook, keyed by the blobs extension
    action = gv["unauthenticatedClientAction"]["operator"]["operands"]
    assert {action["true_value"], action["false_value"]} == {"Return401", "RedirectToLoginPage"}  # never AllowAnonymous
    assert props["httpSettings"]["requireHttps"] is True
    aad = props["identityProviders"]["azureActiveDirectory"]
    assert aad["registration"]["clientId"] == "galleryAuthClientId"
    assert aad["registration"]["openIdIssuer"].endswith("${tenant().tenantId}/v2.0")  # this tenant only
    assert "clientSecretSettingName" not in aad["registration"]  # no secret to leak or rotate
    assert "galleryAuthClientId" in parse("resources.bicep")["parameters"]
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["galleryAuthClientId"]["value"] == "${CORPUS_GALLERY_CLIENT_ID=}"
    http = [fn.get_trigger() for fn in app_functions(function_app.app) if fn.get_trigger().get_binding_name() == "httpTrigger"]
    assert http, "the app has HTTP functions"
    for trigger in http:
        assert str(getattr(trigger.auth_level, "value", trigger.auth_level)).lower() == "anonymous"
        assert trigger.route.startswith(("api/", "gallery"))
        assert [str(getattr(m, "value", m)) for m in trigger.methods] == ["GET", "HEAD"]  # read-only

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
from corpus.cli import access
from corpus.cli.access import ANY, Grant
from corpus.deploycheck.bicep import deploy_time_violations
from corpus.deploycheck.rules import RULES, Infra, operator_roles, rbac_grants
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
NEW_TABLES = ["TrainingSets", "Models", "Lineage", "Duplicates"]


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
    # Every queue has its poison queue provisioned up front, and so does the blob trigger; every
    # poison queue has a recorder function, whose own poison queue is provisioned too.
    assert resolve(params["queues"]) == [
        *triggered,
        *(q + "-poison" for q in triggered),
        *(q + "-poison-poison" for q in triggered),
        s.BLOB_POISON_QUEUE,
    ]
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
    every = {"storageBlobDataOwner", "storageQueueDataContributor", "storageTableDataContributor"}
    for module, param, var, roles in [
        # P7: the host writes its diagnostic events to the host account's tables.
        ("hostRbac", "roleIds", "hostRoles", every),
        ("corpusRbac", "appRoleIds", "corpusRoles", every),
    ]:
        assert rbac(module)[param] == var
        names = {r["operator"]["operands"]["operand_2"] for r in variables()[var]}
        assert names == roles
    assert "monitoringMetricsPublisher" in variables()["roles"]
    assert "Contributor" not in json.dumps(variables()["roles"]).replace("DataContributor", "")


def test_operators_may_write_only_staging_the_request_queues_and_the_model_tables():
    params = rbac("corpusRbac")
    assert resolve(params["stagingContainerName"]) == s.DEFAULTS[s.STAGING_CONTAINER]
    # Internal queues (copy-requests, transform-jobs, every -poison queue) are never operator-writable.
    assert resolve(params["requestQueueNames"]) == [s.DEFAULTS[s.TRANSFORM_QUEUE], "trainset-requests", "export-requests"]
    assert resolve(params["operatorTableNames"]) == [s.TABLE_MODELS, s.TABLE_LINEAGE]
    # Only the admins (the deployer) may send to copy-requests (reconcile).
    assert resolve(params["adminQueueNames"]) == [s.DEFAULTS[s.COPY_QUEUE]]
    grants = rbac_grants(Infra(INFRA))
    writes = {g for g in grants["operators"] if "Contributor" in g.role or "Sender" in g.role or "Owner" in g.role}
    assert writes == {
        Grant("storageBlobDataContributor", "staging"),
        Grant("storageQueueDataMessageSender", "transform-requests"),
        Grant("storageQueueDataMessageSender", "trainset-requests"),
        Grant("storageQueueDataMessageSender", "export-requests"),
        Grant("storageTableDataContributor", "Models"),
        Grant("storageTableDataContributor", "Lineage"),
    }
    assert {g.role for g in grants["operators"] if g.scope == ANY} == {
        "storageBlobDataReader",
        "storageQueueDataReader",
        "storageTableDataReader",
    }
    var = {k: v["value"] for k, v in parse("modules/storage-rbac.bicep")["variables"].items()}
    # Role ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
    assert var == {
        "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "storageBlobDataReader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        "storageQueueDataMessageSender": "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
        "storageQueueDataReader": "19e7f393-937e-4f77-808e-94535e297925",
        "storageTableDataReader": "76199698-9eea-4c19-bc75-cec21354c6b6",
        "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    }
    sender = parse("modules/queue-sender.bicep")["resources"]
    assert sender["queue"]["type"] == "Microsoft.Storage/storageAccounts/queueServices/queues"
    assert sender["senders"]["config"]["config"]["scope"] == "queue"
    table = parse("modules/table-role.bicep")["resources"]
    assert table["table"]["type"] == "Microsoft.Storage/storageAccounts/tableServices/tables"


def test_p6_every_role_the_cli_needs_is_granted_derived_from_the_command_table():
    """P6: operators got 403 on pull, trainset manifest/verify, TrainsetDataset, model register,
    reindex, reconcile. corpus/cli/access.py lists each command's storage operations; every role
    they need must be granted (operators), and the admin commands' to the deployer."""
    assert operator_roles(Infra(INFRA)) == []
    for cmd in ("pull", "trainset manifest", "trainset verify", "TrainsetDataset", "model register", "reindex", "reconcile"):
        assert access.COMMANDS[cmd], cmd
    # With no account-wide Blob Data Reader (today's grant before P6), pull is refused:
    grants = rbac_grants(Infra(INFRA))
    fewer = {g for g in grants["operators"] if g != Grant("storageBlobDataReader", ANY)}
    assert any("pull" in line for line in access.missing("operators", fewer))


def _cli_commands() -> set[str]:
    import argparse

    from corpus.cli import main as cli_main

    names: set[str] = set()
    for action in cli_main.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                names |= {f"{name} {n}" for a in inner for n in a.choices} if inner else {name}
    return names


def test_the_command_table_lists_every_cli_command():
    commands = _cli_commands()
    assert commands, "could not read the CLI's sub-commands"
    assert commands - {"host"} <= set(access.COMMANDS), sorted(commands - {"host"} - set(access.COMMANDS))


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
    writer = parse("modules/storage-rbac.bicep")["modules"]["deadLetterWriter"]
    assert writer["detail"]["path"] == "container-role.bicep"
    assert writer["config"]["params"]["containerName"] == "deadLetterContainerName"
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
# The Bicep CLI can't be installed here, so this is the rule, re-implemented over pycep's AST in
# corpus/deploycheck/bicep.py (shared with `python -m corpus.deploycheck`).


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


# -- the what-if: every rule of corpus.deploycheck, on today's infra/ -------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
def test_deploycheck_rule_is_obeyed(rule):
    """`python -m corpus.deploycheck` as a test: one case per rule (P1, P2, P5, P6, P7, P12, BCP120…)."""
    assert RULES[rule](Infra(INFRA)) == []


def test_deploycheck_command_exits_0_here_and_1_on_a_broken_copy(tmp_path):
    import shutil
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(INFRA.parent)}
    cmd = [sys.executable, "-m", "corpus.deploycheck", "--infra"]
    ok = subprocess.run([*cmd, str(INFRA)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "infra"
    shutil.copytree(INFRA, broken)
    main = broken / "main.bicep"
    main.write_text(main.read_text().replace("param maximumInstanceCount int = 40", "param maximumInstanceCount int = 10"))
    shutil.copy(INFRA.parent / "host.json", tmp_path / "host.json")
    bad = subprocess.run([*cmd, str(broken)], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert "maximumInstanceCount defaults to 10" in bad.stdout


def test_p1_no_container_scope_can_have_an_empty_name():
    """P1: the host's RBAC module got no dead-letter container name, so a condition-false role
    assignment had the scope `…/containers/`; ARM pre-flight rejects it (Azure/bicep#1492)."""
    from corpus.deploycheck.rules import empty_segment_scopes

    assert empty_segment_scopes(Infra(INFRA)) == []
    for name in ("container-role.bicep", "queue-sender.bicep", "table-role.bicep"):
        params = parse(f"modules/{name}")["parameters"]
        named = {"container-role.bicep": "containerName", "queue-sender.bicep": "queueName"}.get(name, "tableName")
        for p in ("accountName", named):
            assert params[p]["default"] is None, (name, p)  # required: no '' default to fall back on
            assert {"type": "min_length", "argument": 3} in params[p]["decorators"], (name, p)


EMPTY_SEGMENT_SAMPLE_MAIN = """
param token string
module good 'child.bicep' = {
  name: 'good'
  params: { containerName: 'staging', principalId: token }
}
module bad 'child.bicep' = {
  name: 'bad'
  params: { principalId: token }
}
"""
EMPTY_SEGMENT_SAMPLE_CHILD = """
param containerName string = ''
param principalId string
resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: 'stcorpus'
}
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}
resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}
resource ra 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(containerName)) {
  name: guid(container.id, principalId)
  scope: container
  properties: { principalId: principalId, roleDefinitionId: 'r' }
}
"""


def test_the_empty_segment_rule_flags_a_condition_false_assignment(tmp_path):
    from corpus.deploycheck.rules import empty_segment_scopes

    (tmp_path / "main.bicep").write_text(EMPTY_SEGMENT_SAMPLE_MAIN)
    (tmp_path / "child.bicep").write_text(EMPTY_SEGMENT_SAMPLE_CHILD)
    found = empty_segment_scopes(Infra(tmp_path))
    assert len(found) == 1 and "module bad" in found[0] and "resource ra's scope container" in found[0], found


def test_p2_maximum_instance_count_is_at_least_40():
    """P2: below 40 is a preview in three regions (Azure/azure-functions-host#10523)."""
    main = parse("main.bicep")["parameters"]["maximumInstanceCount"]
    assert main["default"] >= 40
    assert {"type": "min_value", "argument": 40} in main["decorators"]
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["maximumInstanceCount"]["value"] >= 40


def test_p5_the_worker_runs_as_many_threads_as_the_host_dispatches():
    """P5: unset, the 3.11 worker's pool is min(32, cores + 4) (about 5 on one core)."""
    from corpus.store.hostconfig import load_queue_config

    got = app_settings()
    assert got["PYTHON_THREADPOOL_THREAD_COUNT"]["function"]["type"] == "string"
    per_instance = load_queue_config(INFRA.parent / "host.json").max_concurrency
    assert parse("main.bicep")["parameters"]["pythonThreadCount"]["default"] == per_instance == 24
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["pythonThreadCount"]["value"] == per_instance
    assert got["MALLOC_ARENA_MAX"] == "2"


def test_direct_ingest_copies_in_the_blob_trigger_within_the_worker_s_threads():
    """Issue 26: with CORPUS_INGEST=direct (deployed as the code's default) the blob trigger copies,
    so its per-instance dispatch (extensions.blobs.maxDegreeOfParallelism, the Storage extension's
    SharedBlobQueueListenerFactory.BlobsOptionsToQueuesOptions) is the copy throttle: set
    explicitly, and no larger than the worker's thread pool (else invocations wait for a thread)."""
    from corpus.store.hostconfig import load_blob_config

    got = app_settings()
    assert resolve(got["CORPUS_INGEST"]) == s.DEFAULTS[s.INGEST] == "direct"
    host = json.loads((INFRA.parent / "host.json").read_text())
    assert "maxDegreeOfParallelism" in host["extensions"]["blobs"]
    blob = load_blob_config(INFRA.parent / "host.json").max_degree_of_parallelism
    assert 1 < blob <= parse("main.bicep")["parameters"]["pythonThreadCount"]["default"]


def test_storage_redundancy_is_a_parameter_grs_by_default():
    assert parse("main.bicep")["parameters"]["storageSku"]["default"] == "Standard_GRS"
    assert parse("modules/storage-account.bicep")["parameters"]["skuName"]["default"] == "Standard_GRS"
    for module in ("hostStorage", "corpusStorage"):
        assert parse("resources.bicep")["modules"][module]["config"]["params"]["skuName"] == "storageSku"
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["storageSku"]["value"] == "${CORPUS_STORAGE_SKU=Standard_GRS}"


# -- the postdeploy hook, run with a fake `az` and `curl` on PATH ---------------------------------
FAKE_AZ = r"""#!/bin/sh
# Fake az: answers the hook's calls from files in $FAKE_DIR, records every call.
echo "$*" >> "$FAKE_DIR/calls"
case "$*" in
  "account show"*) echo 00000000-0000-0000-0000-000000000001 ;;
  "functionapp keys list"*) echo secret-key ;;
  "eventgrid system-topic show"*) echo /subscriptions/s/resourceGroups/rg/providers/Microsoft.EventGrid/systemTopics/evgt ;;
  "rest --method put"*)
    body=$(echo "$*" | sed -n 's/.*--body @\([^ ]*\).*/\1/p')
    cp "$body" "$FAKE_DIR/put-body.json" ;;
  "rest --method get"*)
    # One state per call from $FAKE_DIR/states (the last one repeats).
    n=$(wc -l < "$FAKE_DIR/calls")
    state=$(sed -n "$((n - 4))p" "$FAKE_DIR/states")
    [ -n "$state" ] || state=$(tail -n 1 "$FAKE_DIR/states")
    echo "$state" ;;
  *) echo "fake az: unexpected call: $*" >&2; exit 2 ;;
esac
"""

FAKE_CURL = """#!/bin/sh
echo "$*" >> "$FAKE_DIR/curl-calls"
printf '%s' "$(cat "$FAKE_DIR/anonymous-code")"
"""


def run_hook(tmp_path, states: list[str], anonymous_code: str) -> Any:
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("az", FAKE_AZ), ("curl", FAKE_CURL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    (tmp_path / "anonymous-code").write_text(anonymous_code)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_DIR": str(tmp_path),
        "AZURE_RESOURCE_GROUP": "rg-corpus-dev",
        "AZURE_FUNCTION_APP_NAME": "func-corpus-abc",
        "AZURE_FUNCTION_APP_HOST": "func-corpus-abc-h4sh.westeurope-01.azurewebsites.net",
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
        "CORPUS_EVENTGRID_SYSTEM_TOPIC": "evgt",
        "CORPUS_STAGING_CONTAINER": "staging",
        "CORPUS_BLOB_FUNCTION": "ingest_staged_blob",
        "CORPUS_STORAGE_ACCOUNT_ID": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st",
        "CORPUS_DEADLETTER_CONTAINER": "eventgrid-deadletter",
        "POSTDEPLOY_WAIT_SECONDS": "3",
        "POSTDEPLOY_POLL_SECONDS": "1",
    }
    return subprocess.run(["sh", str(INFRA / "hooks" / "postdeploy.sh")], env=env, capture_output=True, text=True, timeout=60)


def test_postdeploy_hook_waits_for_the_subscription_and_uses_the_default_host_name(tmp_path):
    """P3 + P12: the PUT's long-running operation is polled until Succeeded; the webhook URL is
    built from AZURE_FUNCTION_APP_HOST (the Bicep output of defaultHostName)."""
    done = run_hook(tmp_path, ["Creating", "AwaitingManualAction", "Succeeded"], "401")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    calls = (tmp_path / "calls").read_text().splitlines()
    assert sum(c.startswith("rest --method get") for c in calls) == 3  # waited until Succeeded
    endpoint = json.loads((tmp_path / "put-body.json").read_text())["properties"]["destination"]["properties"]["endpointUrl"]
    assert endpoint.startswith("https://func-corpus-abc-h4sh.westeurope-01.azurewebsites.net/runtime/webhooks/blobs?")
    assert "functionName=Host.Functions.ingest_staged_blob&code=secret-key" in endpoint
    assert "https://func-corpus-abc-h4sh.westeurope-01.azurewebsites.net/api/sets" in (tmp_path / "curl-calls").read_text()
    assert "Easy Auth is in front of the app" in done.stdout


def test_postdeploy_hook_fails_with_one_line_when_the_handshake_fails(tmp_path):
    """P3: Event Grid's validation handshake failed: the hook (and so `azd up`) fails, one line."""
    done = run_hook(tmp_path, ["Creating", "Failed"], "401")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("postdeploy: Event Grid subscription staging-blob-created is Failed: ")
    assert "the webhook validation handshake with https://func-corpus-abc-h4sh" in lines[0]
    assert "in place" not in done.stdout


def test_postdeploy_hook_fails_with_one_line_when_the_subscription_never_settles(tmp_path):
    done = run_hook(tmp_path, ["Creating"], "401")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "postdeploy: Event Grid subscription staging-blob-created still Creating after 3s; re-run: azd hooks run postdeploy"
    ]


def test_postdeploy_hook_fails_with_one_line_on_an_anonymous_200(tmp_path):
    """P8: Easy Auth must refuse anonymous calls; an anonymous 200 from the API fails the hook."""
    done = run_hook(tmp_path, ["Succeeded"], "200")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    host = "func-corpus-abc-h4sh.westeurope-01.azurewebsites.net"
    assert lines[0].startswith(f"postdeploy: an anonymous GET https://{host}/api/sets answered 200: Easy Auth is not protecting")


def test_postdeploy_hook_waits_through_a_cold_start_then_accepts_a_redirect_to_sign_in(tmp_path):
    done = run_hook(tmp_path, ["Succeeded"], "302")
    assert done.returncode == 0, done.stderr


def test_the_keyless_rule_catches_shared_keys_and_a_non_fatal_hook(tmp_path):
    import shutil

    from corpus.deploycheck.rules import keyless_and_flex

    broken = tmp_path / "infra"
    shutil.copytree(INFRA, broken)
    account = broken / "modules" / "storage-account.bicep"
    account.write_text(account.read_text().replace("allowSharedKeyAccess: false", "allowSharedKeyAccess: true"))
    azure_yaml = (INFRA.parent / "azure.yaml").read_text()
    (tmp_path / "azure.yaml").write_text(azure_yaml.replace("continueOnError: false", "continueOnError: true"))
    found = keyless_and_flex(Infra(broken))
    assert "modules/storage-account.bicep: allowSharedKeyAccess is True, not False" in found
    assert any(line.startswith("azure.yaml:") for line in found)


def test_every_queue_a_function_listens_on_is_provisioned_with_its_poison_queue():
    """The poison queues' recorders (``*_poisoned``) listen on ``%X%-poison``; the host moves what
    they cannot record to ``<queue>-poison-poison``. Both must exist before the host needs them."""
    from corpus.devhost.discovery import app_functions
    from corpus.devhost.discovery import resolve as resolve_setting

    settings = {**s.DEFAULTS, **NEW_SETTINGS}
    provisioned = set(resolve(corpus_storage_params()["queues"]))
    listened = {
        resolve_setting(fn.get_trigger().queue_name, settings)
        for fn in app_functions(function_app.app)
        if fn.get_trigger().get_binding_name() == "queueTrigger"
    }
    assert {"copy-requests-poison", "transform-jobs-poison", "export-requests-poison"} <= listened
    assert listened <= provisioned
    assert {q + "-poison" for q in listened} <= provisioned


def _fail_messages(hook: str, call: str) -> list[str]:
    """The literal start of each failure message (up to the first variable) in a hook."""
    heads = [re.split(r"[$`]", m)[0].strip() for m in re.findall(call + r""" ["']([^"'\n]+)""", hook)]
    return [h for h in heads if len(h) > 12]


def test_the_powershell_hook_fails_where_the_posix_hook_fails():
    """No pwsh here to run postdeploy.ps1: at least every failure of the tested POSIX hook has its
    twin (same words, so docs/deploy.md's table holds for both), and the same waits and codes."""
    sh = (INFRA / "hooks" / "postdeploy.sh").read_text()
    ps1 = (INFRA / "hooks" / "postdeploy.ps1").read_text()
    posix = [m for m in _fail_messages(sh, "fail") if not m.startswith("curl is required")]  # ps1: Invoke-WebRequest
    assert len(posix) >= 10
    missing = [m for m in posix if m not in ps1]
    assert missing == []
    for needle in ("POSTDEPLOY_WAIT_SECONDS", "POSTDEPLOY_POLL_SECONDS", "provisioningState", "'Failed', 'Canceled'"):
        assert needle in ps1
    assert "401|302|403" in sh and "401, 302, 403" in ps1
    assert "az rest --method put" in sh and "Invoke-Az rest --method put" in ps1
    # Every az call whose failure ends the hook has its stderr captured into the one line.
    assert re.findall(r"^\$\w+ = az ", ps1, re.M) == ["$current = az "]  # az account show: its error is shown above

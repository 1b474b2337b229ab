"""infra/ agrees with the code: names, identity-based settings, and the security properties.

The Bicep CLI can't be installed here, so the templates are parsed with pycep-parser (CI also
scans them with checkov). A queue renamed in corpus/store/settings.py without the matching Bicep change
fails here.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

import function_app
from corpus.devhost.discovery import app_functions
from corpus.store import settings as s

INFRA = Path(__file__).resolve().parent.parent / "infra"


@cache
def parse(name: str) -> dict[str, Any]:
    return BicepParser().parse(file_path=INFRA / name)


def variables() -> dict[str, Any]:
    return {k: v["value"] for k, v in parse("resources.bicep")["variables"].items()}


def resolve(value: Any) -> Any:
    """Substitute variable references (bare identifiers and ${…} interpolations) by their values."""
    vars_ = variables()
    if isinstance(value, str):
        if value in vars_:
            return resolve(vars_[value])
        return re.sub(r"\$\{(\w+)\}", lambda m: str(resolve(vars_.get(m.group(1), m.group(0)))), value)
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


def app_settings() -> dict[str, Any]:
    site = parse("resources.bicep")["resources"]["functionApp"]["config"]
    return {resolve(e["name"]): e["value"] for e in site["properties"]["siteConfig"]["appSettings"]}


def corpus_storage_params() -> dict[str, Any]:
    return parse("resources.bicep")["modules"]["corpusStorage"]["config"]["params"]


def test_every_template_parses():
    for path in INFRA.rglob("*.bicep"):
        assert parse(str(path.relative_to(INFRA)))["resources"] or parse(str(path.relative_to(INFRA)))["modules"]


def test_containers_queues_tables_match_the_code():
    d = s.DEFAULTS
    params = corpus_storage_params()
    assert resolve(params["containers"]) == [d[s.STAGING_CONTAINER], d[s.REJECTED_CONTAINER], d[s.TRAINSETS_CONTAINER]]
    assert resolve(params["queues"]) == [d[s.COPY_QUEUE], d[s.TRANSFORM_QUEUE], d[s.TRANSFORM_JOBS_QUEUE], d[s.TRAINSET_QUEUE]]
    assert resolve(params["tables"]) == list(s.TABLES)


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
    ):
        assert resolve(got[key]) == s.DEFAULTS[key], key


def test_every_binding_expression_and_connection_is_provided_by_the_app_settings():
    got = app_settings()
    for fn in app_functions(function_app.app):
        trigger = fn.get_trigger()
        expr = getattr(trigger, "path", None) or trigger.queue_name
        for setting in re.findall(r"%([^%]+)%", expr):
            assert setting in got, f"{fn.get_function_name()} binds %{setting}%, which Bicep does not set"
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
    assert props["siteConfig"]["minTlsVersion"] == "1.2" and props["siteConfig"]["ftpsState"] == "Disabled"
    fac = props["functionAppConfig"]
    assert fac["runtime"] == {"name": "python", "version": "3.11"}
    assert fac["scaleAndConcurrency"]["maximumInstanceCount"] == "maximumInstanceCount"
    assert fac["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    main_params = parse("main.bicep")["parameters"]
    doc = json.dumps(main_params["maximumInstanceCount"]["decorators"])
    assert "MULTIPLIES" in doc and "batchSize + newBatchThreshold" in doc


@pytest.mark.parametrize(
    ("var", "roles"),
    [
        ("hostRoles", {"storageBlobDataOwner", "storageQueueDataContributor"}),
        ("corpusRoles", {"storageBlobDataOwner", "storageQueueDataContributor", "storageTableDataContributor"}),
    ],
)
def test_least_roles(var, roles):
    got = variables()[var]
    names = {r["operator"]["operands"]["operand_2"] for r in got}
    assert names == roles
    assert "monitoringMetricsPublisher" in variables()["roles"]
    assert "Contributor" not in json.dumps(variables()["roles"]).replace("DataContributor", "")


def test_event_grid_topic_on_the_corpus_account_and_a_hook_for_the_subscription():
    topic = parse("resources.bicep")["resources"]["systemTopic"]["config"]["properties"]
    assert topic["topicType"] == "Microsoft.Storage.StorageAccounts"
    hook = (INFRA / "hooks" / "postdeploy.sh").read_text()
    assert "Microsoft.Storage.BlobCreated" in hook and "blobs_extension" in hook
    assert "/blobServices/default/containers/${CORPUS_STAGING_CONTAINER}/" in hook
    azure_yaml = (INFRA.parent / "azure.yaml").read_text()
    assert "postdeploy" in azure_yaml and "infra/hooks/postdeploy.sh" in azure_yaml

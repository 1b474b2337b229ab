#!/bin/sh
# azd postdeploy hook (POSIX; infra/hooks/postdeploy.ps1 is the Windows twin): subscribe the blob
# trigger to BlobCreated events in the staging container, with identity-based dead-lettering.
# It runs after deployment because the webhook needs the host's blobs_extension system key, which
# the Functions host creates when it first starts with an Event Grid blob trigger.
#
# The subscription is PUT through ARM (`az rest`) rather than `az eventgrid system-topic
# event-subscription create`, because that command exposes only key-based --deadletter-endpoint;
# the corpus account refuses shared keys, so dead-lettering must use the system topic's managed
# identity (deadLetterWithResourceIdentity), which Bicep grants Storage Blob Data Contributor on
# the dead-letter container. Errors from az are shown, never hidden.
set -eu
: "${AZURE_RESOURCE_GROUP:?}" "${AZURE_FUNCTION_APP_NAME:?}" "${CORPUS_EVENTGRID_SYSTEM_TOPIC:?}"
: "${CORPUS_STAGING_CONTAINER:?}" "${CORPUS_BLOB_FUNCTION:?}"
: "${CORPUS_STORAGE_ACCOUNT_ID:?}" "${CORPUS_DEADLETTER_CONTAINER:?}"
API_VERSION=2025-02-15
SUBSCRIPTION_NAME=staging-blob-created

fail() { echo "postdeploy: $*" >&2; exit 1; }

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is required: https://learn.microsoft.com/cli/azure/install-azure-cli"

# 1. az must be signed in, on the subscription azd deployed to.
current=$(az account show --query id -o tsv) \
  || fail "az is not signed in (see its error above). Run: az login  (azd's own login does not sign in az)"
if [ -n "${AZURE_SUBSCRIPTION_ID:-}" ] && [ "$current" != "$AZURE_SUBSCRIPTION_ID" ]; then
  fail "az is on subscription $current but azd deployed to $AZURE_SUBSCRIPTION_ID. Run: az account set --subscription $AZURE_SUBSCRIPTION_ID"
fi

# 2. The blobs_extension key appears when the host first starts; wait for it, showing az's errors.
err=$(mktemp)
body=$(mktemp)
trap 'rm -f "$err" "$body"' EXIT
key=""
for attempt in 1 2 3 4 5 6 7 8 9 10 11 12; do
  if key=$(az functionapp keys list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
             --query "systemKeys.blobs_extension" -o tsv 2>"$err"); then
    [ -n "$key" ] && break
    echo "waiting for the blobs_extension key (the host creates it on first start; $attempt/12)..."
  else
    echo "az functionapp keys list failed ($attempt/12):" >&2
    cat "$err" >&2
    # Authorization and not-found errors will not go away by waiting.
    if grep -qiE 'AuthorizationFailed|ResourceNotFound|ResourceGroupNotFound|az login' "$err"; then
      fail "cannot read the function app's keys; fix the error above and run: azd hooks run postdeploy"
    fi
  fi
  key=""
  sleep 10
done
[ -n "$key" ] || fail "no blobs_extension key on $AZURE_FUNCTION_APP_NAME after 2 minutes: is the app deployed and started? (az functionapp show -g $AZURE_RESOURCE_GROUP -n $AZURE_FUNCTION_APP_NAME --query state)"

# 3. The event subscription, with dead-lettering through the system topic's identity.
topic_id=$(az eventgrid system-topic show -g "$AZURE_RESOURCE_GROUP" -n "$CORPUS_EVENTGRID_SYSTEM_TOPIC" --query id -o tsv) \
  || fail "system topic $CORPUS_EVENTGRID_SYSTEM_TOPIC not found (see the error above)"
endpoint="https://${AZURE_FUNCTION_APP_NAME}.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.${CORPUS_BLOB_FUNCTION}&code=${key}"
cat > "$body" <<JSON
{
  "properties": {
    "destination": { "endpointType": "WebHook", "properties": { "endpointUrl": "${endpoint}" } },
    "filter": {
      "includedEventTypes": ["Microsoft.Storage.BlobCreated"],
      "subjectBeginsWith": "/blobServices/default/containers/${CORPUS_STAGING_CONTAINER}/"
    },
    "eventDeliverySchema": "EventGridSchema",
    "retryPolicy": { "maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440 },
    "deadLetterWithResourceIdentity": {
      "identity": { "type": "SystemAssigned" },
      "deadLetterDestination": {
        "endpointType": "StorageBlob",
        "properties": { "resourceId": "${CORPUS_STORAGE_ACCOUNT_ID}", "blobContainerName": "${CORPUS_DEADLETTER_CONTAINER}" }
      }
    }
  }
}
JSON
az rest --method put \
  --url "https://management.azure.com${topic_id}/eventSubscriptions/${SUBSCRIPTION_NAME}?api-version=${API_VERSION}" \
  --body "@$body" --output none \
  || fail "creating the Event Grid subscription failed (see the error above)"
echo "Event Grid subscription ${SUBSCRIPTION_NAME} → ${CORPUS_BLOB_FUNCTION} is in place;"
echo "undeliverable events are dead-lettered to the ${CORPUS_DEADLETTER_CONTAINER} container; list them with:"
echo "  az storage blob list --auth-mode login --account-name ${CORPUS_STORAGE_ACCOUNT:-<corpus account>} -c ${CORPUS_DEADLETTER_CONTAINER} -o table"

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
#
# `az rest` does not wait for a long-running operation (Azure/azure-cli#14223): the PUT returns
# while Event Grid is still doing the webhook validation handshake, which may fail (wrong key,
# host not started, Easy Auth in the way). So the hook polls the subscription's provisioningState
# until Succeeded, and fails with one line on Failed/Canceled or after POSTDEPLOY_WAIT_SECONDS.
# Then it checks that Easy Auth refuses an anonymous request to the API (an anonymous 2xx fails).
# Every failure is ONE line on stderr, starting with "postdeploy:" (azd then stops `azd up`).
# Tested with a fake `az` and `curl` on PATH: tests/test_infra.py::test_postdeploy_hook_*.
set -eu
: "${AZURE_RESOURCE_GROUP:?}" "${AZURE_FUNCTION_APP_NAME:?}" "${AZURE_FUNCTION_APP_HOST:?}" "${CORPUS_EVENTGRID_SYSTEM_TOPIC:?}"
: "${CORPUS_STAGING_CONTAINER:?}" "${CORPUS_BLOB_FUNCTION:?}"
: "${CORPUS_STORAGE_ACCOUNT_ID:?}" "${CORPUS_DEADLETTER_CONTAINER:?}"
API_VERSION=2025-02-15
SUBSCRIPTION_NAME=staging-blob-created
WAIT_SECONDS=${POSTDEPLOY_WAIT_SECONDS:-600}
POLL_SECONDS=${POSTDEPLOY_POLL_SECONDS:-10}

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
  sleep "$POLL_SECONDS"
done
[ -n "$key" ] || fail "no blobs_extension key on $AZURE_FUNCTION_APP_NAME after 2 minutes: is the app deployed and started? (az functionapp show -g $AZURE_RESOURCE_GROUP -n $AZURE_FUNCTION_APP_NAME --query state)"

# 3. The event subscription, with dead-lettering through the system topic's identity.
topic_id=$(az eventgrid system-topic show -g "$AZURE_RESOURCE_GROUP" -n "$CORPUS_EVENTGRID_SYSTEM_TOPIC" --query id -o tsv) \
  || fail "system topic $CORPUS_EVENTGRID_SYSTEM_TOPIC not found (see the error above)"
# The host name is the deployment's output (defaultHostName): Flex apps may have a unique
# regional default host name rather than <name>.azurewebsites.net.
endpoint="https://${AZURE_FUNCTION_APP_HOST}/runtime/webhooks/blobs?functionName=Host.Functions.${CORPUS_BLOB_FUNCTION}&code=${key}"
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
sub_url="https://management.azure.com${topic_id}/eventSubscriptions/${SUBSCRIPTION_NAME}?api-version=${API_VERSION}"
az rest --method put --url "$sub_url" --body "@$body" --output none 2>"$err" \
  || fail "creating the Event Grid subscription failed: $(tr '\n' ' ' <"$err")"

# 4. Wait for the long-running operation: the webhook validation handshake happens now.
waited=0
while :; do
  state=$(az rest --method get --url "$sub_url" --query properties.provisioningState -o tsv 2>"$err") \
    || fail "reading the Event Grid subscription failed: $(tr '\n' ' ' <"$err")"
  case "$state" in
    Succeeded) break ;;
    Failed|Canceled)
      fail "Event Grid subscription ${SUBSCRIPTION_NAME} is ${state}: the webhook validation handshake with https://${AZURE_FUNCTION_APP_HOST}/runtime/webhooks/blobs failed (is ${CORPUS_BLOB_FUNCTION} deployed and running? details: az eventgrid system-topic event-subscription show -g ${AZURE_RESOURCE_GROUP} --system-topic-name ${CORPUS_EVENTGRID_SYSTEM_TOPIC} -n ${SUBSCRIPTION_NAME})" ;;
  esac
  [ "$waited" -lt "$WAIT_SECONDS" ] \
    || fail "Event Grid subscription ${SUBSCRIPTION_NAME} still ${state:-unknown} after ${WAIT_SECONDS}s; re-run: azd hooks run postdeploy"
  echo "waiting for the Event Grid subscription (${state:-unknown}; the webhook handshake runs now)..."
  sleep "$POLL_SECONDS"
  waited=$((waited + POLL_SECONDS))
done

# 5. Easy Auth must refuse anonymous calls: an anonymous request to the API gets 401 (no
#    provider configured) or a 302 to the sign-in page, never the data. 5xx or no answer means the
#    app is still starting: retry until the deadline.
command -v curl >/dev/null 2>&1 || fail "curl is required to check that the API refuses anonymous calls"
probe="https://${AZURE_FUNCTION_APP_HOST}/api/sets"
waited=0
while :; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$probe" || true)
  case "$code" in
    401|302|403) break ;;
    2??) fail "an anonymous GET $probe answered $code: Easy Auth is not protecting the API (check the authsettingsV2 of $AZURE_FUNCTION_APP_NAME)" ;;
  esac
  [ "$waited" -lt "$WAIT_SECONDS" ] \
    || fail "cannot confirm that the API refuses anonymous calls: GET $probe answered ${code:-nothing} for ${WAIT_SECONDS}s"
  echo "waiting for the app to answer anonymous calls with 401 (got ${code:-nothing})..."
  sleep "$POLL_SECONDS"
  waited=$((waited + POLL_SECONDS))
done
echo "anonymous GET /api/sets is refused ($code): Easy Auth is in front of the app."
echo "Event Grid subscription ${SUBSCRIPTION_NAME} → ${CORPUS_BLOB_FUNCTION} is in place;"
echo "undeliverable events are dead-lettered to the ${CORPUS_DEADLETTER_CONTAINER} container; list them with:"
echo "  az storage blob list --auth-mode login --account-name ${CORPUS_STORAGE_ACCOUNT:-<corpus account>} -c ${CORPUS_DEADLETTER_CONTAINER} -o table"

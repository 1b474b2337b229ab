#!/bin/sh
# azd postdeploy hook: subscribe the blob trigger to BlobCreated events in the staging container.
# It runs after deployment because the webhook needs the host's blobs_extension system key, which
# the Functions host creates when it first starts with an Event Grid blob trigger.
set -eu
: "${AZURE_RESOURCE_GROUP:?}" "${AZURE_FUNCTION_APP_NAME:?}" "${CORPUS_EVENTGRID_SYSTEM_TOPIC:?}"
: "${CORPUS_STAGING_CONTAINER:?}" "${CORPUS_BLOB_FUNCTION:?}"

key=""
for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do
  key=$(az functionapp keys list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
        --query "systemKeys.blobs_extension" -o tsv 2>/dev/null || true)
  [ -n "$key" ] && break
  echo "waiting for the blobs_extension key (the host creates it on first start)..."
  sleep 10
done
[ -n "$key" ] || { echo "no blobs_extension key on $AZURE_FUNCTION_APP_NAME; is the app running?" >&2; exit 1; }

endpoint="https://${AZURE_FUNCTION_APP_NAME}.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.${CORPUS_BLOB_FUNCTION}&code=${key}"
az eventgrid system-topic event-subscription create \
  --name "staging-blob-created" \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --system-topic-name "$CORPUS_EVENTGRID_SYSTEM_TOPIC" \
  --endpoint-type webhook \
  --endpoint "$endpoint" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with "/blobServices/default/containers/${CORPUS_STAGING_CONTAINER}/" \
  --event-delivery-schema EventGridSchema \
  --max-delivery-attempts 30 \
  --event-ttl 1440 \
  --output none
echo "Event Grid subscription staging-blob-created → ${CORPUS_BLOB_FUNCTION} is in place."

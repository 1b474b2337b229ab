# azd postdeploy hook (Windows/PowerShell twin of infra/hooks/postdeploy.sh; keep them in step):
# subscribe the blob trigger to BlobCreated events in the staging container, with identity-based
# dead-lettering into the dead-letter container. See postdeploy.sh for why it runs after deploy
# and why the subscription is PUT through ARM with `az rest`, why it then waits for the
# subscription's provisioningState (the webhook handshake), and why it checks that an anonymous
# request to the API is refused. Every failure is one line on stderr starting with "postdeploy:".
$ErrorActionPreference = 'Stop'
$ApiVersion = '2025-02-15'
$SubscriptionName = 'staging-blob-created'
$WaitSeconds = if ($env:POSTDEPLOY_WAIT_SECONDS) { [int]$env:POSTDEPLOY_WAIT_SECONDS } else { 600 }
$PollSeconds = if ($env:POSTDEPLOY_POLL_SECONDS) { [int]$env:POSTDEPLOY_POLL_SECONDS } else { 10 }

function Fail([string]$Message) { [Console]::Error.WriteLine("postdeploy: $Message"); exit 1 }

foreach ($name in 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_HOST', 'CORPUS_EVENTGRID_SYSTEM_TOPIC',
                  'CORPUS_STAGING_CONTAINER', 'CORPUS_BLOB_FUNCTION', 'CORPUS_STORAGE_ACCOUNT_ID',
                  'CORPUS_DEADLETTER_CONTAINER') {
  if (-not [Environment]::GetEnvironmentVariable($name)) { Fail "$name is not set (run through azd, or set it)" }
}
$rg = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME
$appHost = $env:AZURE_FUNCTION_APP_HOST  # defaultHostName: Flex may give a unique regional host name

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail 'the Azure CLI (az) is required' }

# 1. az must be signed in, on the subscription azd deployed to.
$current = az account show --query id -o tsv
if ($LASTEXITCODE -ne 0) { Fail "az is not signed in (see its error above). Run: az login" }
if ($env:AZURE_SUBSCRIPTION_ID -and $current -ne $env:AZURE_SUBSCRIPTION_ID) {
  Fail "az is on subscription $current but azd deployed to $($env:AZURE_SUBSCRIPTION_ID). Run: az account set --subscription $($env:AZURE_SUBSCRIPTION_ID)"
}

# 2. Wait for the blobs_extension key, showing az's errors.
$key = ''
$errFile = New-TemporaryFile
try {
  for ($attempt = 1; $attempt -le 12; $attempt++) {
    # stderr goes to a file, so az warnings never end up in the key.
    $out = & { $ErrorActionPreference = 'Continue'; az functionapp keys list -g $rg -n $app --query 'systemKeys.blobs_extension' -o tsv 2>$errFile }
    if ($LASTEXITCODE -eq 0) {
      $key = "$out".Trim()
      if ($key) { break }
      Write-Host "waiting for the blobs_extension key (the host creates it on first start; $attempt/12)..."
    } else {
      $err = Get-Content -Raw $errFile
      [Console]::Error.WriteLine("az functionapp keys list failed ($attempt/12): $err")
      if ($err -match 'AuthorizationFailed|ResourceNotFound|ResourceGroupNotFound|az login') {
        Fail "cannot read the function app's keys; fix the error above and run: azd hooks run postdeploy"
      }
    }
    Start-Sleep -Seconds $PollSeconds
  }
} finally {
  Remove-Item $errFile -ErrorAction SilentlyContinue
}
if (-not $key) { Fail "no blobs_extension key on $app after 2 minutes: is the app deployed and started?" }

# 3. The event subscription, with dead-lettering through the system topic's identity.
$topicId = az eventgrid system-topic show -g $rg -n $env:CORPUS_EVENTGRID_SYSTEM_TOPIC --query id -o tsv
if ($LASTEXITCODE -ne 0) { Fail "system topic $($env:CORPUS_EVENTGRID_SYSTEM_TOPIC) not found (see the error above)" }
$endpoint = "https://$appHost/runtime/webhooks/blobs?functionName=Host.Functions.$($env:CORPUS_BLOB_FUNCTION)&code=$key"
$body = @{
  properties = @{
    destination = @{ endpointType = 'WebHook'; properties = @{ endpointUrl = $endpoint } }
    filter = @{
      includedEventTypes = @('Microsoft.Storage.BlobCreated')
      subjectBeginsWith = "/blobServices/default/containers/$($env:CORPUS_STAGING_CONTAINER)/"
    }
    eventDeliverySchema = 'EventGridSchema'
    retryPolicy = @{ maxDeliveryAttempts = 30; eventTimeToLiveInMinutes = 1440 }
    deadLetterWithResourceIdentity = @{
      identity = @{ type = 'SystemAssigned' }
      deadLetterDestination = @{
        endpointType = 'StorageBlob'
        properties = @{ resourceId = $env:CORPUS_STORAGE_ACCOUNT_ID; blobContainerName = $env:CORPUS_DEADLETTER_CONTAINER }
      }
    }
  }
} | ConvertTo-Json -Depth 10
$file = New-TemporaryFile
try {
  Set-Content -Path $file -Value $body -Encoding utf8
  $subUrl = "https://management.azure.com$topicId/eventSubscriptions/$($SubscriptionName)?api-version=$ApiVersion"
  az rest --method put --url $subUrl --body "@$file" --output none
  if ($LASTEXITCODE -ne 0) { Fail 'creating the Event Grid subscription failed (see the error above)' }
} finally {
  Remove-Item $file -ErrorAction SilentlyContinue
}

# 4. az rest does not wait for the long-running operation (Azure/azure-cli#14223): poll it.
$waited = 0
while ($true) {
  $state = "$(az rest --method get --url $subUrl --query properties.provisioningState -o tsv)".Trim()
  if ($LASTEXITCODE -ne 0) { Fail 'reading the Event Grid subscription failed (see the error above)' }
  if ($state -eq 'Succeeded') { break }
  if ($state -in 'Failed', 'Canceled') {
    Fail "Event Grid subscription $SubscriptionName is $($state): the webhook validation handshake with https://$appHost/runtime/webhooks/blobs failed (is $($env:CORPUS_BLOB_FUNCTION) deployed and running?)"
  }
  if ($waited -ge $WaitSeconds) { Fail "Event Grid subscription $SubscriptionName still $state after $($WaitSeconds)s; re-run: azd hooks run postdeploy" }
  Write-Host "waiting for the Event Grid subscription ($state; the webhook handshake runs now)..."
  Start-Sleep -Seconds $PollSeconds
  $waited += $PollSeconds
}

# 5. Easy Auth must refuse anonymous calls (401, or 302 to the sign-in page); 5xx: still starting.
$probe = "https://$appHost/api/sets"
$waited = 0
while ($true) {
  try {
    $code = (Invoke-WebRequest -Uri $probe -Method Get -MaximumRedirection 0 -SkipHttpErrorCheck -TimeoutSec 30 -ErrorAction Stop).StatusCode
  } catch { $code = 0 }
  if ($code -in 401, 302, 403) { break }
  if ($code -ge 200 -and $code -lt 300) { Fail "an anonymous GET $probe answered $($code): Easy Auth is not protecting the API (check the authsettingsV2 of $app)" }
  if ($waited -ge $WaitSeconds) { Fail "cannot confirm that the API refuses anonymous calls: GET $probe answered $code for $($WaitSeconds)s" }
  Write-Host "waiting for the app to answer anonymous calls with 401 (got $code)..."
  Start-Sleep -Seconds $PollSeconds
  $waited += $PollSeconds
}
Write-Host "anonymous GET /api/sets is refused ($code): Easy Auth is in front of the app."
Write-Host "Event Grid subscription $SubscriptionName -> $($env:CORPUS_BLOB_FUNCTION) is in place;"
Write-Host "undeliverable events are dead-lettered to the $($env:CORPUS_DEADLETTER_CONTAINER) container; list them with:"
Write-Host "  az storage blob list --auth-mode login --account-name $($env:CORPUS_STORAGE_ACCOUNT) -c $($env:CORPUS_DEADLETTER_CONTAINER) -o table"

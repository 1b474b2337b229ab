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

# az's stderr goes to this file (so warnings never mix with its output) and into Fail's one line,
# as postdeploy.sh does with "$err". Fail removes it; so does the end of the script.
$errFile = New-TemporaryFile
function Fail([string]$Message) {
  Remove-Item $errFile -ErrorAction SilentlyContinue
  [Console]::Error.WriteLine("postdeploy: $Message")
  exit 1
}
# Run az with stderr in $errFile; its trimmed stdout. $LASTEXITCODE is az's. EAP 'Continue' here:
# Windows PowerShell 5.1 turns redirected native stderr into error records, which 'Stop' would throw.
function Invoke-Az {
  $ErrorActionPreference = 'Continue'
  $out = az @args 2>$errFile
  "$out".Trim()
}
function Get-AzError { "$(Get-Content -Raw $errFile -ErrorAction SilentlyContinue)" -replace '\s+', ' ' }

foreach ($name in 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_HOST', 'CORPUS_EVENTGRID_SYSTEM_TOPIC',
                  'CORPUS_STAGING_CONTAINER', 'CORPUS_BLOB_FUNCTION', 'CORPUS_STORAGE_ACCOUNT_ID',
                  'CORPUS_DEADLETTER_CONTAINER') {
  if (-not [Environment]::GetEnvironmentVariable($name)) { Fail "$name is not set (run through azd, or set it)" }
}
$rg = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME
$appHost = $env:AZURE_FUNCTION_APP_HOST  # defaultHostName: Flex may give a unique regional host name

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail 'the Azure CLI (az) is required: https://learn.microsoft.com/cli/azure/install-azure-cli' }

# 1. az must be signed in, on the subscription azd deployed to.
$current = az account show --query id -o tsv
if ($LASTEXITCODE -ne 0) { Fail "az is not signed in (see its error above). Run: az login  (azd's own login does not sign in az)" }
if ($env:AZURE_SUBSCRIPTION_ID -and $current -ne $env:AZURE_SUBSCRIPTION_ID) {
  Fail "az is on subscription $current but azd deployed to $($env:AZURE_SUBSCRIPTION_ID). Run: az account set --subscription $($env:AZURE_SUBSCRIPTION_ID)"
}

# 2. Wait for the blobs_extension key, showing az's errors.
$key = ''
for ($attempt = 1; $attempt -le 12; $attempt++) {
  $out = Invoke-Az functionapp keys list -g $rg -n $app --query 'systemKeys.blobs_extension' -o tsv
  if ($LASTEXITCODE -eq 0) {
    $key = $out
    if ($key) { break }
    Write-Host "waiting for the blobs_extension key (the host creates it on first start; $attempt/12)..."
  } else {
    $err = Get-AzError
    [Console]::Error.WriteLine("az functionapp keys list failed ($attempt/12): $err")
    # Authorization and not-found errors will not go away by waiting.
    if ($err -match 'AuthorizationFailed|ResourceNotFound|ResourceGroupNotFound|az login') {
      Fail "cannot read the function app's keys; fix the error above and run: azd hooks run postdeploy"
    }
  }
  $key = ''
  Start-Sleep -Seconds $PollSeconds
}
if (-not $key) { Fail "no blobs_extension key on $app after 2 minutes: is the app deployed and started? (az functionapp show -g $rg -n $app --query state)" }

# 3. The event subscription, with dead-lettering through the system topic's identity.
$topicId = Invoke-Az eventgrid system-topic show -g $rg -n $env:CORPUS_EVENTGRID_SYSTEM_TOPIC --query id -o tsv
if ($LASTEXITCODE -ne 0) { Fail "system topic $($env:CORPUS_EVENTGRID_SYSTEM_TOPIC) not found: $(Get-AzError)" }
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
$subUrl = "https://management.azure.com$topicId/eventSubscriptions/$($SubscriptionName)?api-version=$ApiVersion"
$file = New-TemporaryFile
# UTF-8 without a BOM on 5.1 and 7 alike (Set-Content -Encoding utf8 writes a BOM on 5.1).
[IO.File]::WriteAllText($file.FullName, $body)
$null = Invoke-Az rest --method put --url $subUrl --body "@$($file.FullName)" --output none
$putExit = $LASTEXITCODE
Remove-Item $file -ErrorAction SilentlyContinue
if ($putExit -ne 0) { Fail "creating the Event Grid subscription failed: $(Get-AzError)" }

# 4. az rest does not wait for the long-running operation (Azure/azure-cli#14223): poll it.
$waited = 0
while ($true) {
  $state = Invoke-Az rest --method get --url $subUrl --query properties.provisioningState -o tsv
  if ($LASTEXITCODE -ne 0) { Fail "reading the Event Grid subscription failed: $(Get-AzError)" }
  if ($state -eq 'Succeeded') { break }
  if ($state -in 'Failed', 'Canceled') {
    Fail "Event Grid subscription $SubscriptionName is $($state): the webhook validation handshake with https://$appHost/runtime/webhooks/blobs failed (is $($env:CORPUS_BLOB_FUNCTION) deployed and running? details: az eventgrid system-topic event-subscription show -g $rg --system-topic-name $($env:CORPUS_EVENTGRID_SYSTEM_TOPIC) -n $SubscriptionName)"
  }
  if (-not $state) { $state = 'unknown' }
  if ($waited -ge $WaitSeconds) { Fail "Event Grid subscription $SubscriptionName still $state after $($WaitSeconds)s; re-run: azd hooks run postdeploy" }
  Write-Host "waiting for the Event Grid subscription ($state; the webhook handshake runs now)..."
  Start-Sleep -Seconds $PollSeconds
  $waited += $PollSeconds
}

# 5. Easy Auth must refuse anonymous calls (401, or 302 to the sign-in page); 5xx: still starting.
#    -SkipHttpErrorCheck exists from PowerShell 7 on; without it (5.1) a 4xx throws, and its status
#    is read from the exception's response. No answer at all is 0, retried like a 5xx.
$probe = "https://$appHost/api/sets"
$request = @{ Uri = $probe; Method = 'Get'; MaximumRedirection = 0; TimeoutSec = 30; UseBasicParsing = $true; ErrorAction = 'Stop' }
if ((Get-Command Invoke-WebRequest).Parameters.ContainsKey('SkipHttpErrorCheck')) { $request.SkipHttpErrorCheck = $true }
$waited = 0
while ($true) {
  $code = 0
  try {
    $code = [int](Invoke-WebRequest @request).StatusCode
  } catch {
    if ($_.Exception.Response) { $code = [int]$_.Exception.Response.StatusCode }
  }
  if ($code -in 401, 302, 403) { break }
  if ($code -ge 200 -and $code -lt 300) { Fail "an anonymous GET $probe answered $($code): Easy Auth is not protecting the API (check the authsettingsV2 of $app)" }
  if ($waited -ge $WaitSeconds) { Fail "cannot confirm that the API refuses anonymous calls: GET $probe answered $(if ($code) { $code } else { 'nothing' }) for $($WaitSeconds)s" }
  Write-Host "waiting for the app to answer anonymous calls with 401 (got $code)..."
  Start-Sleep -Seconds $PollSeconds
  $waited += $PollSeconds
}
Remove-Item $errFile -ErrorAction SilentlyContinue
Write-Host "anonymous GET /api/sets is refused ($code): Easy Auth is in front of the app."
Write-Host "Event Grid subscription $SubscriptionName -> $($env:CORPUS_BLOB_FUNCTION) is in place;"
Write-Host "undeliverable events are dead-lettered to the $($env:CORPUS_DEADLETTER_CONTAINER) container; list them with:"
Write-Host "  az storage blob list --auth-mode login --account-name $(if ($env:CORPUS_STORAGE_ACCOUNT) { $env:CORPUS_STORAGE_ACCOUNT } else { '<corpus account>' }) -c $($env:CORPUS_DEADLETTER_CONTAINER) -o table"

// corpus: production deployment (Azure Functions Flex Consumption + Azure Storage), keyless.
// `azd up` provisions this and deploys the app; see README "Deploy to Azure".
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used to derive unique resource names.')
param environmentName string

@minLength(1)
@description('Azure region for every resource.')
@metadata({ azd: { type: 'location' } })
param location string

// Flex Consumption scales PER FUNCTION: each queue-triggered function (copy_to_original,
// transform_request, transform_job, and the trainset/export functions to come) scales in its own
// group of instances, and all Blob (Event Grid) functions share one group. maximumInstanceCount
// caps the on-demand instances of EACH group, not of the app; always-ready instances don't count
// (https://learn.microsoft.com/azure/azure-functions/event-driven-scaling#limit-scale-out and
// #per-function-scaling). So copies and transform jobs can EACH reach
// (batchSize + newBatchThreshold) x maximumInstanceCount = 24 x 10 = 240 at the same time, and the
// app's worst case is that figure times the number of queue-triggered functions, plus the blob group.
// For a real global cap G on all queue work: maximumInstanceCount = floor(G / (24 x N)) with N the
// number of queue-triggered functions (and lower batchSize in host.json below 24 per instance);
// a cap shared across functions needs separate function apps or a shared semaphore in the code.
// The lowest value ARM accepts is 40 in most regions: below 40 is a preview in West Europe,
// Australia East and West US 2 only (Azure/azure-functions-host#10523, 2026-01-05; the docs PR
// MicrosoftDocs/azure-docs#128255 corrects "1" to "40"). So 40 is both the default and the
// minimum here: a lower value would fail the deployment in most regions. Throttle below that
// through host.json (batchSize, newBatchThreshold) and PYTHON_THREADPOOL_THREAD_COUNT.
@minValue(40)
@maxValue(1000)
@description('Most on-demand instances PER FUNCTION GROUP (Flex per-function scaling), not per app. It MULTIPLIES the queue throttle of each queue-triggered function separately: copies and transform jobs can each run (batchSize + newBatchThreshold) x maximumInstanceCount at once. See docs/deploy.md for a global cap.')
param maximumInstanceCount int = 40

@allowed([2048, 4096])
@description('Memory per instance, MB. Image transforms of large photos want 4096.')
param instanceMemoryMB int = 2048

@description('Object id of the deployer, granted operator access (upload to staging, send requests, read status). azd sets it (AZURE_PRINCIPAL_ID). Empty: none.')
param principalId string = ''

@description('Type of principalId: User when a person runs azd, ServicePrincipal from CI (set AZURE_PRINCIPAL_TYPE), else ARM fails with UnmatchedPrincipalType.')
@allowed(['User', 'ServicePrincipal', 'Group'])
param principalType string = 'User'

@description('Object id of an extra operator principal, typically the group of people and upload tools (CORPUS_OPERATOR_PRINCIPAL_ID). Empty: none.')
param operatorPrincipalId string = ''

@allowed(['User', 'ServicePrincipal', 'Group'])
param operatorPrincipalType string = 'Group'

@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_RAGRS', 'Standard_GZRS', 'Standard_RAGZRS'])
@description('Redundancy of both storage accounts (CORPUS_STORAGE_SKU). GRS by default: losing no data is the first requirement; LRS is cheaper (docs/deploy.md, cost table) and loses the corpus with its datacenter.')
param storageSku string = 'Standard_GRS'

// The Python worker runs synchronous functions on ThreadPoolExecutor(max_workers=N): N is this
// setting, or, unset, Python's own default min(32, cores + 4) since the 3.9 workers
// (azure-functions-python-worker, azure_functions_worker/dispatcher.py, _get_sync_tp_max_workers
// and _create_sync_call_tp): about 5 on a 1-core instance. host.json dispatches batchSize +
// newBatchThreshold = 24 messages per queue function and instance; with 5 threads 19 of them wait
// in the worker, leased, for a thread. 24 makes the worker run what the host dispatches (and what
// `corpus host` runs); memory stays bounded by the decode budget (CORPUS_DECODE_BUDGET_BYTES).
// tests/test_infra.py keeps it equal to host.json's per-instance queue concurrency.
@minValue(1)
@maxValue(32)
@description('PYTHON_THREADPOOL_THREAD_COUNT: synchronous invocations one instance runs at once (set in infra/main.parameters.json).')
param pythonThreadCount int = 24

@description('Client id of the Entra ID app registration for signing in to the API and gallery (CORPUS_GALLERY_CLIENT_ID). Empty: HTTP routes answer 401.')
param galleryAuthClientId string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-corpus-${environmentName}'
  location: location
  tags: tags
}

module app 'resources.bicep' = {
  name: 'corpus-resources'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    principalId: principalId
    principalType: principalType
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
    galleryAuthClientId: galleryAuthClientId
    storageSku: storageSku
    pythonThreadCount: pythonThreadCount
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
// The app's real host name (defaultHostName): Flex apps may get a unique regional default host
// name, not <name>.azurewebsites.net, so the hook builds the webhook URL from this output.
output AZURE_FUNCTION_APP_HOST string = app.outputs.functionAppHostName
output CORPUS_STORAGE_ACCOUNT string = app.outputs.corpusStorageAccountName
output CORPUS_STORAGE_ACCOUNT_ID string = app.outputs.corpusStorageAccountId
output CORPUS_EVENTGRID_SYSTEM_TOPIC string = app.outputs.systemTopicName
output CORPUS_GALLERY_URL string = 'https://${app.outputs.functionAppHostName}/gallery'
output CORPUS_STAGING_CONTAINER string = app.outputs.stagingContainerName
output CORPUS_DEADLETTER_CONTAINER string = app.outputs.deadLetterContainerName
output CORPUS_BLOB_FUNCTION string = app.outputs.blobFunctionName

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

@minValue(1)
@maxValue(1000)
@description('Most instances the function app scales out to. This MULTIPLIES the queue throttle: at most (batchSize + newBatchThreshold) x maximumInstanceCount copies or transform jobs run at once across the app.')
param maximumInstanceCount int = 10

@allowed([2048, 4096])
@description('Memory per instance, MB. Image transforms of large photos want 4096.')
param instanceMemoryMB int = 2048

@description('Object id of a person to grant data access for debugging (azd sets it to the deployer). Empty: none.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal'])
param principalType string = 'User'

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
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output CORPUS_STORAGE_ACCOUNT string = app.outputs.corpusStorageAccountName
output CORPUS_EVENTGRID_SYSTEM_TOPIC string = app.outputs.systemTopicName
output CORPUS_STAGING_CONTAINER string = app.outputs.stagingContainerName
output CORPUS_BLOB_FUNCTION string = app.outputs.blobFunctionName

// Everything corpus needs inside one resource group. Names of containers, queues, tables and
// app settings mirror corpus/settings.py; tests/test_infra.py fails CI if they drift apart.
param location string
param tags object
param resourceToken string
param maximumInstanceCount int
param instanceMemoryMB int
param principalId string
@allowed(['User', 'ServicePrincipal'])
param principalType string

// -- names the code relies on (corpus/settings.py) --------------------------------------------
var corpusConnection = 'CorpusStorage'
var stagingContainerName = 'staging'
var rejectedContainerName = 'rejected'
var copyQueueName = 'copy-requests'
var transformQueueName = 'transform-requests'
var transformJobsQueueName = 'transform-jobs'
var trainsetQueueName = 'trainset-requests'
var trainsetsContainerName = 'trainsets'
var tableNames = ['ImageSets', 'Images', 'ImageTransforms', 'Rejections', 'Failures', 'TrainingSets', 'Models', 'Lineage']
var blobFunctionName = 'ingest_staged_blob'

var functionAppName = 'func-corpus-${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 12)}'

// Built-in role definition ids.
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// -- identity ------------------------------------------------------------------------------------
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-corpus-${resourceToken}'
  location: location
  tags: tags
}

// -- storage: one account for the Functions host, one for the corpus -----------------------------
module hostStorage 'modules/storage-account.bicep' = {
  name: 'host-storage'
  params: {
    name: 'sthost${take(resourceToken, 18)}'
    location: location
    tags: tags
    containers: [deploymentContainerName]
  }
}

module corpusStorage 'modules/storage-account.bicep' = {
  name: 'corpus-storage'
  params: {
    name: 'stcorpus${take(resourceToken, 16)}'
    location: location
    tags: tags
    containers: [stagingContainerName, rejectedContainerName, trainsetsContainerName]
    // Poison queues (<queue>-poison, webjobs-blobtrigger-poison) are created by the Functions host.
    queues: [copyQueueName, transformQueueName, transformJobsQueueName, trainsetQueueName]
    tables: tableNames
  }
}

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorage.outputs.name
}

resource corpusAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: corpusStorage.outputs.name
}

// -- least-privilege data roles for the app's identity --------------------------------------------
// Host storage: the Functions host keeps leases, keys and the deployment package in blobs and uses
// queues internally (Storage Blob Data Owner + Storage Queue Data Contributor, per the host's docs).
// Corpus storage: the blob trigger needs Blob Data Owner (its documented requirement) and the
// queue role (poison queue); the code copies/deletes blobs, uses the queues and writes the tables.
var hostRoles = [roles.storageBlobDataOwner, roles.storageQueueDataContributor]
var corpusRoles = [roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor]

resource hostRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in hostRoles: {
  name: guid(hostAccount.id, identity.id, r)
  scope: hostAccount
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
  }
}]

resource corpusRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in corpusRoles: {
  name: guid(corpusAccount.id, identity.id, r)
  scope: corpusAccount
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
  }
}]

// The deployer gets the same data access to the corpus, to run `corpus status` and uploads.
var userRoles = empty(principalId) ? [] : corpusRoles

resource userCorpusRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in userRoles: {
  name: guid(corpusAccount.id, principalId, r)
  scope: corpusAccount
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
  }
}]

// -- monitoring --------------------------------------------------------------------------------
resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-corpus-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-corpus-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true // ingestion requires Entra ID: the connection string below carries no usable secret
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

// -- the function app (Flex Consumption) ---------------------------------------------------------
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-corpus-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy exists only in some regions and fails deployment elsewhere; set zoneRedundant: true where your region supports it.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, { 'azd-service-name': 'corpus' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    // checkov:skip=CKV_AZURE_56: no HTTP functions are exposed; triggers are storage queues and Event Grid (webhook secured by the blobs extension key).
    // checkov:skip=CKV_AZURE_221: public network access is needed for the Event Grid webhook without a VNet.
    // checkov:skip=CKV_AZURE_222: same as CKV_AZURE_221: Event Grid delivers BlobCreated to the app's public webhook.
    // checkov:skip=CKV_AZURE_17: Event Grid webhooks present no client certificate; the webhook is authorised by the blobs_extension key.
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; failed work is retried from the queues, so always-ready instances would only add cost.
    // checkov:skip=CKV_AZURE_213: the app serves no HTTP endpoint to probe; queue and Event Grid retries cover unhealthy instances.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage, identity-based.
        { name: 'AzureWebJobsStorage__blobServiceUri', value: hostStorage.outputs.blobEndpoint }
        { name: 'AzureWebJobsStorage__queueServiceUri', value: hostStorage.outputs.queueEndpoint }
        { name: 'AzureWebJobsStorage__tableServiceUri', value: hostStorage.outputs.tableEndpoint }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        // Corpus storage, identity-based: blob AND queue URIs (the Event Grid blob trigger uses a queue).
        { name: '${corpusConnection}__blobServiceUri', value: corpusStorage.outputs.blobEndpoint }
        { name: '${corpusConnection}__queueServiceUri', value: corpusStorage.outputs.queueEndpoint }
        { name: '${corpusConnection}__tableServiceUri', value: corpusStorage.outputs.tableEndpoint }
        { name: '${corpusConnection}__credential', value: 'managedidentity' }
        { name: '${corpusConnection}__clientId', value: identity.properties.clientId }
        // Names the code reads (corpus/settings.py).
        { name: 'CORPUS_STAGING_CONTAINER', value: stagingContainerName }
        { name: 'CORPUS_REJECTED_CONTAINER', value: rejectedContainerName }
        { name: 'CORPUS_COPY_QUEUE', value: copyQueueName }
        { name: 'CORPUS_TRANSFORM_QUEUE', value: transformQueueName }
        { name: 'CORPUS_TRANSFORM_JOBS_QUEUE', value: transformJobsQueueName }
        { name: 'CORPUS_TRAINSET_QUEUE', value: trainsetQueueName }
        { name: 'CORPUS_TRAINSETS_CONTAINER', value: trainsetsContainerName }
        // Monitoring, Entra ID only.
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.outputs.blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [hostRoleAssignments, corpusRoleAssignments]
}

// -- Event Grid: BlobCreated in staging feeds the blob trigger ------------------------------------
// The system topic is created here. Its subscription is created by infra/hooks/postdeploy.sh,
// after the code is deployed, because its webhook URL needs the host's `blobs_extension` system
// key, which exists only once the host has started with a blob trigger.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' = {
  name: 'evgt-corpus-${resourceToken}'
  location: location
  tags: tags
  properties: {
    source: corpusAccount.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output functionAppName string = functionApp.name
output corpusStorageAccountName string = corpusStorage.outputs.name
output systemTopicName string = systemTopic.name
output stagingContainerName string = stagingContainerName
output blobFunctionName string = blobFunctionName

// Data-plane role assignments on one storage account, in the Azure-Samples Flex quickstarts'
// `rbac.bicep` pattern: the account, containers and queues are `existing` resources named by this
// module's parameters, which are deploy-time constants here. Every `scope` and every `guid()` seed
// is therefore known when the deployment starts, as Bicep requires (BCP120).
//
// Three kinds of principals:
//   * the function app's identity: account-wide roles (it creates a container per domain, owns the
//     internal queues and writes the tables); nobody else can write the internal queues;
//   * operators and upload tools (people, groups, CI): Blob Data Contributor on the `staging`
//     container only, Queue Data Message Sender on the request queues only, and account-wide
//     readers for `corpus status` / `corpus sets` (Table Data Reader, Queue Data Reader), and
//     Blob Data Reader on the dead-letter container (to see lost events);
//   * the Event Grid system topic's identity: Blob Data Contributor on the dead-letter container.
param accountName string

@description('Principal id of the function app\'s managed identity (empty: none).')
param appPrincipalId string = ''

@description('Account-wide roles for the app identity (role definition ids).')
param appRoleIds array = []

@description('Principals allowed to upload drops and send requests: [{ id: string, type: User|Group|ServicePrincipal }].')
param operators array = []

@description('Container operators may write (the staging container).')
param stagingContainerName string = ''

@description('Queues operators may send to (request queues only, never the internal ones).')
param requestQueueNames array = []

@description('Principal id of the Event Grid system topic\'s identity (empty: none).')
param deadLetterWriterPrincipalId string = ''

@description('Container Event Grid dead-letters undeliverable events into.')
param deadLetterContainerName string = ''

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageQueueDataMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
var storageQueueDataReader = '19e7f393-937e-4f77-808e-94535e297925'
var storageTableDataReader = '76199698-9eea-4c19-bc75-cec21354c6b6'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource stagingContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: stagingContainerName
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

// -- the function app: account-wide ------------------------------------------------------------
resource appRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in (empty(appPrincipalId) ? [] : appRoleIds): {
  name: guid(account.id, appPrincipalId, r)
  scope: account
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
  }
}]

// -- operators: staging container, request queues, readers -------------------------------------
resource operatorStaging 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in (empty(stagingContainerName) ? [] : operators): {
  name: guid(stagingContainer.id, p.id, storageBlobDataContributor)
  scope: stagingContainer
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}]

resource operatorQueueReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in operators: {
  name: guid(account.id, p.id, storageQueueDataReader)
  scope: account
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataReader)
  }
}]

resource operatorTableReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in operators: {
  name: guid(account.id, p.id, storageTableDataReader)
  scope: account
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataReader)
  }
}]

resource operatorDeadLetterReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in (empty(deadLetterContainerName) ? [] : operators): {
  name: guid(deadLetterContainer.id, p.id, storageBlobDataReader)
  scope: deadLetterContainer
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}]

// One module per request queue: a role assignment's scope is a single resource, and a queue can
// be one (`Microsoft.Storage/storageAccounts/queueServices/queues`).
module operatorQueues 'queue-sender.bicep' = [for q in requestQueueNames: {
  name: 'queue-sender-${q}'
  params: {
    accountName: accountName
    queueName: q
    principals: operators
    roleId: storageQueueDataMessageSender
  }
}]

// -- Event Grid: dead-letter container only -------------------------------------------------------
resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deadLetterWriterPrincipalId) && !empty(deadLetterContainerName)) {
  name: guid(deadLetterContainer.id, deadLetterWriterPrincipalId, storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    principalId: deadLetterWriterPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

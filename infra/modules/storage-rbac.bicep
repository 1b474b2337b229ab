// Data-plane role assignments on the corpus storage account, in the Azure-Samples Flex quickstarts'
// `rbac.bicep` pattern: the account and its children are `existing` resources named by this
// module's parameters, which are deploy-time constants here. Every `scope` and every `guid()` seed
// is therefore known when the deployment starts, as Bicep requires (BCP120).
//
// No parameter that names a scope has a default: ARM pre-flight validates the names and scopes of
// condition-false resources too (Azure/bicep#1492, #7733, #10596), so a container scope built from
// an empty name (`…/containers/`) fails the deployment even when nothing would be assigned there.
// Container-, queue- and table-scoped roles are modules called only with real names.
//
// Who gets what is derived from corpus/cli/access.py (the storage operations of every CLI command):
//   * the function app's identity: account-wide roles (it creates a container per domain, owns the
//     internal queues and writes the tables); with the admins, the only writer of copy-requests;
//   * operators (the deployer and an optional group of people and upload tools): readers of blobs,
//     queues and tables account-wide (pull, trainset manifest/verify, TrainsetDataset, status,
//     sets, lineage), Blob Data Contributor on `staging` (upload, sample), Queue Data Message
//     Sender on the request queues only, Table Data Contributor on the tables `model register`
//     writes (Models, Lineage);
//   * admins (the deployer only): Table Data Contributor account-wide (reindex, reconcile), Blob
//     Data Contributor on `rejected` and Queue Data Message Sender on `copy-requests` (reconcile
//     re-drives staged blobs through the same ingest the trigger runs), Blob Data Contributor on
//     `catalog` (`corpus catalog sync`, which the timer function otherwise runs);
//   * the Event Grid system topic's identity: Blob Data Contributor on the dead-letter container.
@minLength(3)
param accountName string

@description('Principal id of the function app\'s managed identity.')
param appPrincipalId string

@description('Account-wide roles for the app identity (role definition ids).')
param appRoleIds array

@description('Principals allowed to upload drops, send requests and read: [{ id: string, type: User|Group|ServicePrincipal }].')
param operators array

@description('Principals allowed to run the admin commands (reindex, reconcile): [{ id, type }].')
param admins array

@minLength(3)
@description('Container operators may write (the staging container).')
param stagingContainerName string

@minLength(3)
@description('Container reconcile moves rejected uploads into.')
param rejectedContainerName string

@minLength(3)
@description('Container of the Parquet catalog, which `corpus catalog sync` writes.')
param catalogContainerName string
@description('Queues operators may send to (request queues only, never the internal ones).')
param requestQueueNames array

@description('Internal queues admins may send to (reconcile re-drives into copy-requests).')
param adminQueueNames array

@description('Tables operators may write (model register: Models, Lineage).')
param operatorTableNames array

@description('Principal id of the Event Grid system topic\'s identity.')
param deadLetterWriterPrincipalId string

@minLength(3)
@description('Container Event Grid dead-letters undeliverable events into.')
param deadLetterContainerName string

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageQueueDataMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
var storageQueueDataReader = '19e7f393-937e-4f77-808e-94535e297925'
var storageTableDataReader = '76199698-9eea-4c19-bc75-cec21354c6b6'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

// -- the function app: account-wide ------------------------------------------------------------
module appRoles 'app-roles.bicep' = {
  name: 'app-roles-${accountName}'
  params: {
    accountName: accountName
    principalId: appPrincipalId
    roleIds: appRoleIds
  }
}

// -- operators: account-wide readers -------------------------------------------------------------
resource operatorBlobReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in operators: {
  name: guid(account.id, p.id, storageBlobDataReader)
  scope: account
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
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

// -- operators: the staging container, the request queues, the model tables -----------------------
module operatorStaging 'container-role.bicep' = {
  name: 'staging-writers'
  params: {
    accountName: accountName
    containerName: stagingContainerName
    principals: operators
    roleId: storageBlobDataContributor
  }
}

// One module per queue or table: a role assignment's scope is a single resource, and a queue
// (`…/queueServices/queues`) or a table (`…/tableServices/tables`) can be one.
module operatorQueues 'queue-sender.bicep' = [for q in requestQueueNames: {
  name: 'queue-sender-${q}'
  params: {
    accountName: accountName
    queueName: q
    principals: operators
    roleId: storageQueueDataMessageSender
  }
}]

module operatorTables 'table-role.bicep' = [for t in operatorTableNames: {
  name: 'table-writer-${t}'
  params: {
    accountName: accountName
    tableName: t
    principals: operators
    roleId: storageTableDataContributor
  }
}]

// -- admins: reindex and reconcile ----------------------------------------------------------------
resource adminTableWriters 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in admins: {
  name: guid(account.id, p.id, storageTableDataContributor)
  scope: account
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
  }
}]

module adminRejected 'container-role.bicep' = {
  name: 'rejected-writers'
  params: {
    accountName: accountName
    containerName: rejectedContainerName
    principals: admins
    roleId: storageBlobDataContributor
  }
}

module adminCatalog 'container-role.bicep' = {
  name: 'catalog-writers'
  params: {
    accountName: accountName
    containerName: catalogContainerName
    principals: admins
    roleId: storageBlobDataContributor
  }
}

module adminQueues 'queue-sender.bicep' = [for q in adminQueueNames: {
  name: 'queue-admin-${q}'
  params: {
    accountName: accountName
    queueName: q
    principals: admins
    roleId: storageQueueDataMessageSender
  }
}]

// -- Event Grid: dead-letter container only -------------------------------------------------------
module deadLetterWriter 'container-role.bicep' = {
  name: 'deadletter-writer'
  params: {
    accountName: accountName
    containerName: deadLetterContainerName
    principals: [{ id: deadLetterWriterPrincipalId, type: 'ServicePrincipal' }]
    roleId: storageBlobDataContributor
  }
}

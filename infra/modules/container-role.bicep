// One role on ONE blob container for each principal. The container's name is a required,
// non-empty parameter: a role assignment whose scope ends in `…/containers/` (an empty segment)
// fails ARM pre-flight even when its condition is false or its loop is empty (Azure/bicep#1492,
// #7733, #10596), so this module is only ever called with a real name (tests/test_infra.py and
// `python -m corpus.deploycheck` check every caller).
@minLength(3)
param accountName string

@minLength(3)
param containerName string

@description('[{ id: string, type: User|Group|ServicePrincipal }]')
param principals array

param roleId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in principals: {
  name: guid(container.id, p.id, roleId)
  scope: container
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
  }
}]

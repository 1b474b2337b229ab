// Account-wide data roles for one service principal (the function app's identity). Names come
// from parameters, so every scope and guid() seed is a deploy-time constant (BCP120).
@minLength(3)
param accountName string

@description('Principal id of the function app\'s managed identity.')
param principalId string

@description('Account-wide roles (role definition ids).')
param roleIds array

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource roles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in roleIds: {
  name: guid(account.id, principalId, r)
  scope: account
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
  }
}]

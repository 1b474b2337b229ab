// One role on ONE table for each principal (a role can be scoped to
// `Microsoft.Storage/storageAccounts/tableServices/tables`). The table name is a required,
// non-empty parameter (no empty-segment scope, see container-role.bicep).
@minLength(3)
param accountName string

@minLength(3)
param tableName string

@description('[{ id: string, type: User|Group|ServicePrincipal }]')
param principals array

param roleId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource table 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = {
  parent: tableService
  name: tableName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in principals: {
  name: guid(table.id, p.id, roleId)
  scope: table
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
  }
}]

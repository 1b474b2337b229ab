// One role (Storage Queue Data Message Sender) on ONE queue for each principal: operators may send
// requests to this queue and to no other. Names come from parameters (deploy-time constants), and
// are required and non-empty (no empty-segment scope, see container-role.bicep).
@minLength(3)
param accountName string

@minLength(3)
param queueName string

@description('[{ id: string, type: User|Group|ServicePrincipal }]')
param principals array

param roleId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: queueName
}

resource senders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in principals: {
  name: guid(queue.id, p.id, roleId)
  scope: queue
  properties: {
    principalId: p.id
    principalType: p.type
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
  }
}]

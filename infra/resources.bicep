// Everything corpus needs inside one resource group. Names of containers, queues, tables and
// app settings mirror corpus/settings.py; tests/test_infra.py fails CI if they drift apart.
//
// Deploy-time constants: every resource `name`, every `scope` and every `guid()` seed of a role
// assignment is computed from parameters and variables only, never from another resource's
// runtime output (Bicep rejects that with BCP120; `existing` resources named by module outputs
// were the original mistake). tests/test_infra.py enforces the rule on the parsed templates.
param location string
param tags object
param resourceToken string
param maximumInstanceCount int
param instanceMemoryMB int
param principalId string
@allowed(['User', 'ServicePrincipal', 'Group'])
param principalType string
param operatorPrincipalId string
@allowed(['User', 'ServicePrincipal', 'Group'])
param operatorPrincipalType string
@description('Client id of the Entra ID app registration users sign in with to the API and gallery (Easy Auth). Empty: every HTTP route answers 401.')
param galleryAuthClientId string = ''
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_RAGRS', 'Standard_GZRS', 'Standard_RAGZRS'])
@description('Redundancy of both storage accounts (see main.bicep).')
param storageSku string
@minValue(1)
@maxValue(32)
@description('Threads of the Python worker per instance (PYTHON_THREADPOOL_THREAD_COUNT, see main.bicep).')
param pythonThreadCount int

// -- names the code relies on (corpus/settings.py) --------------------------------------------
var corpusConnection = 'CorpusStorage'
var stagingContainerName = 'staging'
var rejectedContainerName = 'rejected'
var trainsetsContainerName = 'trainsets'
var exportsContainerName = 'exports'
var catalogContainerName = 'catalog'
var deadLetterContainerName = 'eventgrid-deadletter'
var copyQueueName = 'copy-requests'
var transformQueueName = 'transform-requests'
var transformJobsQueueName = 'transform-jobs'
var trainsetQueueName = 'trainset-requests'
var exportQueueName = 'export-requests'
var blobPoisonQueueName = 'webjobs-blobtrigger-poison'
var tableNames = ['ImageSets', 'Images', 'ImageTransforms', 'Rejections', 'Failures', 'Redrives', 'Validations', 'TrainingSets', 'Models', 'Lineage', 'Duplicates']
var blobFunctionName = 'ingest_staged_blob'
// Tables operators write (`corpus model register`; see corpus/cli/access.py).
var operatorTableNames = ['Models', 'Lineage']

// Queues operators may send to. The others (copy-requests, transform-jobs, every -poison queue)
// are internal: only the function app's identity can write them.
var requestQueueNames = [transformQueueName, trainsetQueueName, exportQueueName]
// Poison queues exist before they are needed: the host moves a message to <queue>-poison after
// maxDequeueCount attempts, and the Event Grid blob trigger uses webjobs-blobtrigger-poison.
// (Spelled out, not map(): checkov's Bicep parser does not know lambdas.)
var corpusQueueNames = [
  copyQueueName
  transformQueueName
  transformJobsQueueName
  trainsetQueueName
  exportQueueName
  '${copyQueueName}-poison'
  '${transformQueueName}-poison'
  '${transformJobsQueueName}-poison'
  '${trainsetQueueName}-poison'
  '${exportQueueName}-poison'
  // Each poison queue has a recorder function (function_app.py, *_poisoned) that turns its
  // messages into Failures rows; what a recorder cannot record, it moves here. Nothing
  // reads these: the end of the line, shown by `corpus status`.
  '${copyQueueName}-poison-poison'
  '${transformQueueName}-poison-poison'
  '${transformJobsQueueName}-poison-poison'
  '${trainsetQueueName}-poison-poison'
  '${exportQueueName}-poison-poison'
  blobPoisonQueueName
]
var corpusContainerNames = [stagingContainerName, rejectedContainerName, trainsetsContainerName, exportsContainerName, deadLetterContainerName, catalogContainerName]

// -- resource names: variables, so they are deploy-time constants -------------------------------
var functionAppName = 'func-corpus-${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 12)}'
var hostAccountName = 'sthost${take(resourceToken, 18)}'
var corpusAccountName = 'stcorpus${take(resourceToken, 16)}'
var systemTopicName = 'evgt-corpus-${resourceToken}'

// Built-in role definition ids.
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// People, groups and upload tools: the deployer (azd sets principalId and, with
// AZURE_PRINCIPAL_TYPE, its type) and an optional operator principal, typically a group.
var deployerOperator = empty(principalId) ? [] : [{ id: principalId, type: principalType }]
var extraOperator = empty(operatorPrincipalId) || operatorPrincipalId == principalId ? [] : [{ id: operatorPrincipalId, type: operatorPrincipalType }]
var operators = concat(deployerOperator, extraOperator)
// Admins run `corpus reindex` and `corpus reconcile`, which write the catalog and re-drive copies
// (corpus/cli/access.py): the deployer only, who owns the resource group anyway.
var admins = deployerOperator

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
    name: hostAccountName
    location: location
    tags: tags
    skuName: storageSku
    containers: [deploymentContainerName]
  }
}

module corpusStorage 'modules/storage-account.bicep' = {
  name: 'corpus-storage'
  params: {
    name: corpusAccountName
    location: location
    tags: tags
    skuName: storageSku
    containers: corpusContainerNames
    queues: corpusQueueNames
    tables: tableNames
  }
}

// -- least-privilege data roles --------------------------------------------------------------------
// Host storage: the Functions host keeps leases, keys and the deployment package in blobs, uses
// queues internally (the blob trigger's retries go through a host-account queue), and writes its
// diagnostic events to tables (Storage Blob Data Owner + Storage Queue Data Contributor + Storage
// Table Data Contributor, per "Connecting to host storage with an identity" in the Functions docs).
// Corpus storage: the blob trigger needs Blob Data Owner (its documented requirement) and the
// queue role (poison queue); the code creates a container per domain, copies/deletes blobs, uses
// the queues and writes the tables. The app's identity is the only writer of the internal queues.
var hostRoles = [roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor]
var corpusRoles = [roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor]

module hostRbac 'modules/app-roles.bicep' = {
  name: 'host-storage-rbac'
  params: {
    accountName: hostAccountName
    principalId: identity.properties.principalId
    roleIds: hostRoles
  }
  dependsOn: [hostStorage]
}

module corpusRbac 'modules/storage-rbac.bicep' = {
  name: 'corpus-storage-rbac'
  params: {
    accountName: corpusAccountName
    appPrincipalId: identity.properties.principalId
    appRoleIds: corpusRoles
    operators: operators
    admins: admins
    stagingContainerName: stagingContainerName
    rejectedContainerName: rejectedContainerName
    catalogContainerName: catalogContainerName
    requestQueueNames: requestQueueNames
    adminQueueNames: [copyQueueName]
    operatorTableNames: operatorTableNames
    deadLetterWriterPrincipalId: systemTopic.identity.principalId
    deadLetterContainerName: deadLetterContainerName
  }
  dependsOn: [corpusStorage]
}

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
    // checkov:skip=CKV_AZURE_221: public network access is needed for the Event Grid webhook without a VNet.
    // checkov:skip=CKV_AZURE_222: same as CKV_AZURE_221: Event Grid delivers BlobCreated to the app's public webhook.
    // checkov:skip=CKV_AZURE_17: Event Grid webhooks present no client certificate; the webhook is authorised by the blobs_extension key.
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; failed work is retried from the queues, so always-ready instances would only add cost.
    // checkov:skip=CKV_AZURE_78: Flex Consumption has no FTP endpoint and rejects siteConfig.ftpsState (error 51021 "... for Flex Consumption sites is invalid", Azure/azure-cli#31414); deployment is by package to blob storage with the managed identity.
    // checkov:skip=CKV_AZURE_213: Flex Consumption has no health-check probing (it replaces unhealthy instances itself); the HTTP routes are read-only pages, and queue and Event Grid retries cover the rest.
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      // No ftpsState: Flex Consumption rejects it (error 51021, Azure/azure-cli#31414); Flex has no FTP.
      minTlsVersion: '1.2'
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
        // direct: the blob trigger copies what it validated (host.json extensions.blobs bounds it);
        // queued: through copy-requests, throttled by the queue settings (docs/deploy.md).
        { name: 'CORPUS_INGEST', value: 'direct' }
        { name: 'CORPUS_TRANSFORM_QUEUE', value: transformQueueName }
        { name: 'CORPUS_TRANSFORM_JOBS_QUEUE', value: transformJobsQueueName }
        { name: 'CORPUS_TRAINSET_QUEUE', value: trainsetQueueName }
        { name: 'CORPUS_TRAINSETS_CONTAINER', value: trainsetsContainerName }
        { name: 'CORPUS_EXPORT_QUEUE', value: exportQueueName }
        { name: 'CORPUS_EXPORTS_CONTAINER', value: exportsContainerName }
        { name: 'CORPUS_DEADLETTER_CONTAINER', value: deadLetterContainerName }
        // The Python worker runs synchronous functions on a thread pool of this size. Unset, Python
        // 3.9+ workers pass max_workers=None, i.e. min(32, cores + 4): about 5 on a 1-core instance,
        // while host.json dispatches 24 per queue function (azure-functions-python-worker,
        // azure_functions_worker/dispatcher.py, _get_sync_tp_max_workers). See main.bicep.
        { name: 'PYTHON_THREADPOOL_THREAD_COUNT', value: string(pythonThreadCount) }
        // glibc keeps one malloc arena per thread that ever allocated: with 24 threads decoding
        // images that is most of the peak memory (docs/benchmarks.md, "decode budget"); two arenas
        // halve the peak and are faster.
        { name: 'MALLOC_ARENA_MAX', value: '2' }
        // Reconciliation (corpus/app/reconcile.py): the timer's NCRONTAB schedule; the grace period and batch use the code's defaults.
        { name: 'CORPUS_RECONCILE_SCHEDULE', value: '0 */5 * * * *' }
        // The catalog (corpus/catalog, docs/query.md): Parquet snapshot container and the sync timer's schedule.
        { name: 'CORPUS_CATALOG_CONTAINER', value: catalogContainerName }
        { name: 'CORPUS_CATALOG_SCHEDULE', value: '0 */15 * * * *' }
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
  dependsOn: [hostRbac, corpusRbac]
}

// -- App Service Authentication (Easy Auth): the API and gallery for signed-in users of the tenant -
// Every request is authenticated by the platform before it reaches the app; the HTTP functions are
// therefore AuthLevel.ANONYMOUS (function keys would be shared secrets in URLs and bookmarks, with
// no user identity and no revocation per person). The issuer is this tenant's v2.0 endpoint, so only
// its accounts sign in (a single-tenant app registration). The login uses the ID token (implicit)
// flow: no client secret exists to leak or rotate. The one path left out is the Event Grid webhook
// of the blob trigger, which Event Grid calls with the blobs_extension system key.
// Without galleryAuthClientId no provider is configured and every other request gets 401.
resource functionAppAuth 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    // checkov:skip=CKV_AZURE_13: the check reads authsettings V1's properties.enabled; this is authsettingsV2, enabled by platform.enabled with requireAuthentication (tests/test_infra.py checks it).
    // checkov:skip=CKV_AZURE_63: a site 'web' config check (httpLoggingEnabled); this config resource is authsettingsV2, not the site's web config.
    // checkov:skip=CKV_AZURE_65: a site 'web' config check (detailedErrorLoggingEnabled); not applicable to authsettingsV2.
    // checkov:skip=CKV_AZURE_66: a site 'web' config check (requestTracingEnabled); not applicable to authsettingsV2.
    // checkov:skip=CKV_AZURE_80: a site 'web' config check (netFrameworkVersion); not applicable to authsettingsV2 (and the app is Python).
    // checkov:skip=CKV_AZURE_88: a site 'web' config check (azureStorageAccounts); not applicable to authsettingsV2.
    // checkov:skip=CKV_AZURE_222: a site check (publicNetworkAccess), skipped on the site itself for the Event Grid webhook; not applicable to authsettingsV2.
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: empty(galleryAuthClientId) ? 'Return401' : 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/runtime/webhooks/blobs'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: !empty(galleryAuthClientId)
        registration: {
          clientId: galleryAuthClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: empty(galleryAuthClientId) ? [] : [
            galleryAuthClientId
            'api://${galleryAuthClientId}'
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

// -- Event Grid: BlobCreated in staging feeds the blob trigger ------------------------------------
// The system topic is created here. Its subscription is created by infra/hooks/postdeploy.sh,
// after the code is deployed, because its webhook URL needs the host's `blobs_extension` system
// key, which exists only once the host has started with a blob trigger. The hook configures
// dead-lettering into `eventgrid-deadletter` with this topic's system-assigned identity
// (deadLetterWithResourceIdentity), which holds Storage Blob Data Contributor on that container
// only (corpusRbac above): the corpus account allows no shared-key access.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: resourceId('Microsoft.Storage/storageAccounts', corpusAccountName)
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
  dependsOn: [corpusStorage]
}

output functionAppName string = functionApp.name
output functionAppHostName string = functionApp.properties.defaultHostName
output corpusStorageAccountName string = corpusAccountName
output corpusStorageAccountId string = resourceId('Microsoft.Storage/storageAccounts', corpusAccountName)
output systemTopicName string = systemTopic.name
output stagingContainerName string = stagingContainerName
output deadLetterContainerName string = deadLetterContainerName
output blobFunctionName string = blobFunctionName

/**
 * How each resource of the public API shows in a table or a `field: value` block: the columns people look for
 * first (id, name, state), states in words (RUNNING), times as ISO 8601, sizes and LSNs as people read them.
 */
import {
  apiKeyScopeToJSON,
  endpointStateToJSON,
  poolerModeToJSON,
  type ApiKey,
  type Branch,
  type Endpoint,
  type EndpointSettings,
  type Project,
  type Role,
  type Tenant,
} from '../../gen/spg99/controlplane/v1/controlplane.js';
import { bytes, duration, enumWord, lsn, NONE, profile, time, type Column } from './output.js';

/** RUNNING, STOPPED, ... */
export function endpointStateWord(endpoint: Endpoint): string {
  return enumWord(endpointStateToJSON(endpoint.state), 'ENDPOINT_STATE_');
}

/** ADMIN or READ. */
export function scopeWord(key: ApiKey): string {
  return enumWord(apiKeyScopeToJSON(key.scope), 'API_KEY_SCOPE_');
}

/** Tenants: id, name, creation time. */
export const TENANT_COLUMNS: Column<Tenant>[] = [
  { heading: 'ID', value: (tenant) => tenant.tenantId },
  { heading: 'NAME', value: (tenant) => tenant.name },
  { heading: 'CREATED', value: (tenant) => time(tenant.createdAt) },
];

/** API keys: never the secret, only its first characters. */
export const API_KEY_COLUMNS: Column<ApiKey>[] = [
  { heading: 'ID', value: (key) => key.keyId },
  { heading: 'NAME', value: (key) => key.name },
  { heading: 'SCOPE', value: scopeWord },
  { heading: 'PREFIX', value: (key) => (key.secretPrefix ? `${key.secretPrefix}…` : NONE) },
  { heading: 'CREATED', value: (key) => time(key.createdAt) },
  { heading: 'LAST USED', value: (key) => time(key.lastUsedAt) },
  { heading: 'REVOKED', value: (key) => time(key.revokedAt) },
];

/** Projects. */
export const PROJECT_COLUMNS: Column<Project>[] = [
  { heading: 'ID', value: (project) => project.projectId },
  { heading: 'NAME', value: (project) => project.name },
  { heading: 'REGION', value: (project) => project.region },
  { heading: 'PG', value: (project) => (project.pgMajorVersion ? String(project.pgMajorVersion) : NONE) },
  { heading: 'DEFAULT BRANCH', value: (project) => project.defaultBranchId },
  { heading: 'CREATED', value: (project) => time(project.createdAt) },
];

/** Branches: the parent and branch point, the logical size. */
export const BRANCH_COLUMNS: Column<Branch>[] = [
  { heading: 'ID', value: (branch) => branch.branchId },
  { heading: 'NAME', value: (branch) => branch.name },
  { heading: 'PARENT', value: (branch) => branch.parentBranchId },
  { heading: 'PARENT LSN', value: (branch) => lsn(branch.parentLsn) },
  { heading: 'DEFAULT', value: (branch) => (branch.isDefault ? 'yes' : 'no') },
  { heading: 'SIZE', value: (branch) => bytes(branch.logicalSizeBytes) },
  { heading: 'CREATED', value: (branch) => time(branch.createdAt) },
];

/** Endpoints: the state, since when and why, and the compute profile in use. */
export const ENDPOINT_COLUMNS: Column<Endpoint>[] = [
  { heading: 'ID', value: (endpoint) => endpoint.endpointId },
  { heading: 'BRANCH', value: (endpoint) => endpoint.branchId },
  { heading: 'STATE', value: endpointStateWord },
  { heading: 'COMPUTE', value: (endpoint) => profile(endpoint.currentProfile ?? endpoint.settings?.profile) },
  { heading: 'HOST', value: (endpoint) => endpoint.host },
  { heading: 'SINCE', value: (endpoint) => time(endpoint.stateChangedAt) },
  { heading: 'REASON', value: (endpoint) => endpoint.stateReason },
];

/** Roles. */
export const ROLE_COLUMNS: Column<Role>[] = [
  { heading: 'ID', value: (role) => role.roleId },
  { heading: 'NAME', value: (role) => role.name },
  { heading: 'BRANCH', value: (role) => role.branchId },
  { heading: 'CREATED', value: (role) => time(role.createdAt) },
];

/** Endpoint settings as `field: value` lines. */
export function settingsFields(settings: EndpointSettings | undefined): Array<[string, string]> {
  const autoscale = settings?.autoscale;
  return [
    ['Compute', profile(settings?.profile)],
    ['Autoscale', autoscale ? `${profile(autoscale.minProfile)} to ${profile(autoscale.maxProfile)}` : 'off'],
    ['Suspend after', duration(settings?.suspendTimeout)],
    ['Pooler', settings ? enumWord(poolerModeToJSON(settings.poolerMode), 'POOLER_MODE_') : NONE],
  ];
}

/** A project as `field: value` lines. */
export function projectFields(project: Project): Array<[string, string]> {
  return [
    ['Project', project.projectId],
    ['Name', project.name],
    ['Region', project.region],
    ['PostgreSQL', project.pgMajorVersion ? String(project.pgMajorVersion) : NONE],
    ['Default branch', project.defaultBranchId],
    ...settingsFields(project.defaultEndpointSettings),
    ['Created', time(project.createdAt)],
  ];
}

/** An endpoint as `field: value` lines. */
export function endpointFields(endpoint: Endpoint): Array<[string, string]> {
  return [
    ['Endpoint', endpoint.endpointId],
    ['Project', endpoint.projectId],
    ['Branch', endpoint.branchId],
    ['Host', endpoint.host],
    ['State', endpointStateWord(endpoint)],
    ['Reason', endpoint.stateReason || NONE],
    ['Since', time(endpoint.stateChangedAt)],
    ['Current compute', endpoint.currentComputeId || NONE],
    ['Current profile', profile(endpoint.currentProfile)],
    ['Writer term', endpoint.writerTerm === 0n ? NONE : String(endpoint.writerTerm)],
    ...settingsFields(endpoint.settings),
    ['Created', time(endpoint.createdAt)],
  ];
}

/**
 * The public API, ControlPlaneService: tenants, API keys and projects. Requests are validated by model.ts, callers
 * authenticated by auth.ts (its middleware runs before every handler here), and state kept by the catalog only, so
 * any call may land on a freshly restarted control plane.
 */
import type { ControlPlaneServiceImplementation } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { alreadyExists, failedPrecondition, hasStatus, invalidArgument, notFound, ServerError, Status, unavailable } from '../lib/grpc/errors.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { createVerifier } from '../lib/scram.js';
import { tenantCaller, type AuthContextExtension } from './auth.js';
import type { Catalog } from './catalog.js';
import { API_KEY_SHOWN_PREFIX_CHARS, newApiKeySecret, newId, newRolePassword, newTimelineId } from './ids.js';
import {
  apiKeyMessage,
  branchMessage,
  branchName,
  DEFAULT_BRANCH_NAME,
  DEFAULT_DATABASE_NAME,
  DEFAULT_ROLE_NAME,
  displayName,
  endpointMessage,
  endpointSettingsArgument,
  idArgument,
  PLATFORM_ENDPOINT_DEFAULTS,
  projectMessage,
  roleMessage,
  roleName,
  scopeArgument,
  tenantMessage,
  type ApiKeyRecord,
  type BranchRecord,
  type EndpointRecord,
  type ProjectRecord,
  type RoleRecord,
  type Scope,
} from './model.js';
import { secretHash } from './secrets.js';
import { type EndpointLifecycle, requireLifecycle } from './lifecycle.js';

/** The PostgreSQL major versions projects may be created with, newest last. */
export const SUPPORTED_PG_MAJOR_VERSIONS = [18];

/** How long a timeline create or delete on the pageserver may take (initdb and the first upload). */
const PAGESERVER_CALL_TIMEOUT_MS = 120_000;

export interface ControlPlaneServiceOptions {
  catalog: Catalog;
  /** The pageserver timelines are created on; null: projects are recorded without a timeline (until it is set). */
  pageserver: SpgClient<typeof TimelineServiceDefinition> | null;
  /** Regions projects may be created in; the first is the default. */
  regions: string[];
  /** The DNS domain endpoints are reached under: `ep-<id>.<domain>`. */
  domain: string;
  /** Starts and stops endpoints; null: this control plane runs without --provisioner and cannot. */
  lifecycle?: EndpointLifecycle | null;
  /** Tells the time (tests may pin it). */
  now?: () => number;
}

type Context = ServerContextExtension & AuthContextExtension;

/** An API key record and its secret, which only the create response carries. */
function newApiKey(tenantId: string, name: string, scope: Scope, createdAt: number): { record: ApiKeyRecord; secret: string } {
  const secret = newApiKeySecret();
  return {
    secret,
    record: {
      keyId: newId('apiKey'),
      tenantId,
      name,
      scope,
      secretPrefix: secret.slice(0, API_KEY_SHOWN_PREFIX_CHARS),
      secretHash: secretHash(secret),
      createdAt,
      lastUsedAt: 0,
      revokedAt: 0,
    },
  };
}

function unimplemented(method: string, slice: string): () => Promise<never> {
  return async () => {
    throw new ServerError(Status.UNIMPLEMENTED, `${method} is not implemented yet: ${slice} come in a later version of the control plane`);
  };
}

/** The same answer for a project that does not exist and for another tenant's, so that ids do not leak. */
function projectNotFound(projectId: string): ServerError {
  return notFound(`project ${projectId} does not exist: check the id (ListProjects shows your projects)`);
}

export function controlPlaneService(options: ControlPlaneServiceOptions): ControlPlaneServiceImplementation<Context> {
  const { catalog, pageserver, domain } = options;
  const now = options.now ?? Date.now;
  if (options.regions.length === 0) throw new Error('controlPlaneService: at least one region is needed');

  /** The tenant's live project (not being deleted), or NOT_FOUND. */
  async function liveProject(tenantId: string, projectId: string): Promise<ProjectRecord> {
    const project = await catalog.getProject(tenantId, projectId);
    if (!project || project.deleting) throw projectNotFound(projectId);
    return project;
  }

  /** The tenant's endpoint (of a live project), or NOT_FOUND (also for another tenant's). */
  async function tenantEndpoint(tenantId: string, endpointId: string): Promise<EndpointRecord> {
    const endpoint = await catalog.getEndpoint(endpointId);
    const project = endpoint && (await catalog.getProject(tenantId, endpoint.projectId));
    if (!endpoint || !project || project.deleting) {
      throw notFound(`endpoint ${endpointId} does not exist: check the id (ListEndpoints shows a project's endpoints)`);
    }
    return endpoint;
  }

  const lifecycleOrUnavailable = (method: string): EndpointLifecycle => requireLifecycle(options.lifecycle, method);

  /** A pageserver call's failure as the answer to our caller: retryable ones stay retryable. */
  function pageserverError(error: unknown, what: string): unknown {
    if (hasStatus(error, Status.UNAVAILABLE) || hasStatus(error, Status.DEADLINE_EXCEEDED)) {
      return unavailable(`the pageserver did not answer while ${what}: ${(error as Error).message}; retry`);
    }
    return error;
  }

  return {
    async createTenant(request, context) {
      const name = displayName(request.name, 'name');
      const createdAt = now();
      const tenant = { tenantId: newId('tenant'), name, createdAt };
      const key = newApiKey(tenant.tenantId, 'admin (created with the tenant)', 'admin', createdAt);
      const outcome = await catalog.createTenant(tenant, key.record);
      if (!outcome.created) throw alreadyExists(`a tenant named ${JSON.stringify(name)} exists already (${outcome.existingId}): choose another name`);
      context.log.info({ tenantId: tenant.tenantId, keyId: key.record.keyId }, 'tenant created');
      return { tenant: tenantMessage(tenant), apiKey: apiKeyMessage(key.record), apiKeySecret: key.secret };
    },

    async getTenant(_request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const tenant = await catalog.getTenant(tenantId);
      // A key outlives nothing: tenants are never deleted, so this is a catalog edited by hand.
      if (!tenant) throw notFound(`tenant ${tenantId} of this API key does not exist`);
      return { tenant: tenantMessage(tenant) };
    },

    async createApiKey(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const name = displayName(request.name, 'name');
      const scope = scopeArgument(request.scope, 'scope');
      const key = newApiKey(tenantId, name, scope, now());
      if (!(await catalog.createApiKey(key.record))) throw notFound(`tenant ${tenantId} of this API key does not exist`);
      context.log.info({ newKeyId: key.record.keyId, scope }, 'API key created');
      return { apiKey: apiKeyMessage(key.record), secret: key.secret };
    },

    async listApiKeys(_request, context) {
      const { tenantId } = tenantCaller(context.caller);
      return { apiKeys: (await catalog.listApiKeys(tenantId)).map(apiKeyMessage) };
    },

    async revokeApiKey(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const keyId = idArgument('apiKey', request.keyId, 'key_id');
      const key = await catalog.revokeApiKey(tenantId, keyId, now());
      if (!key) throw notFound(`API key ${keyId} does not exist: check the id (ListApiKeys shows your keys)`);
      context.log.info({ revokedKeyId: keyId }, 'API key revoked');
      return { apiKey: apiKeyMessage(key) };
    },

    async createProject(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const name = displayName(request.name, 'name');
      const region = request.region || options.regions[0];
      if (!options.regions.includes(region)) {
        throw invalidArgument(`region ${JSON.stringify(region)} is unknown: use one of ${options.regions.join(', ')} (or leave it empty for ${options.regions[0]})`);
      }
      const pgMajorVersion = request.pgMajorVersion || SUPPORTED_PG_MAJOR_VERSIONS[SUPPORTED_PG_MAJOR_VERSIONS.length - 1];
      if (!SUPPORTED_PG_MAJOR_VERSIONS.includes(pgMajorVersion)) {
        throw invalidArgument(`pg_major_version ${pgMajorVersion} is not supported: use one of ${SUPPORTED_PG_MAJOR_VERSIONS.join(', ')} (or 0 for the newest)`);
      }
      const settings = endpointSettingsArgument(request.defaultEndpointSettings, PLATFORM_ENDPOINT_DEFAULTS, 'default_endpoint_settings');
      const defaultBranchName = request.defaultBranchName ? branchName(request.defaultBranchName, 'default_branch_name') : DEFAULT_BRANCH_NAME;
      const defaultRoleName = request.defaultRoleName ? roleName(request.defaultRoleName, 'default_role_name') : DEFAULT_ROLE_NAME;
      // A cheap early answer for a retried create; the catalog's script is what keeps names unique.
      const existing = await catalog.projectIdByName(tenantId, name);
      if (existing) throw alreadyExists(`a project named ${JSON.stringify(name)} exists already (${existing}): choose another name`);

      const createdAt = now();
      const projectId = newId('project');
      const branchId = newTimelineId();
      const project: ProjectRecord = {
        projectId,
        tenantId,
        name,
        region,
        pgMajorVersion,
        defaultEndpointSettings: settings,
        defaultBranchId: branchId,
        createdAt,
        deleting: false,
      };
      const branch: BranchRecord = { branchId, projectId, name: defaultBranchName, parentBranchId: '', parentLsn: 0n, isDefault: true, createdAt };
      const endpoint: EndpointRecord = {
        endpointId: newId('endpoint'),
        projectId,
        branchId,
        settings,
        state: 'stopped',
        stateReason: 'created; the first connection starts it',
        stateChangedAt: createdAt,
        currentComputeId: '',
        writerTerm: 0n,
        createdAt,
      };
      const password = newRolePassword();
      const role: RoleRecord = { roleId: newId('role'), branchId, name: defaultRoleName, scramVerifier: createVerifier(password), createdAt };

      // The timeline first, then the catalog in one step: a crash in between leaves an unreferenced timeline on the
      // pageserver (storage only, never a project without its data).
      if (pageserver) {
        try {
          await pageserver.createTimeline(
            { timelineId: branchId, tenantId, pgMajorVersion },
            { deadline: new Date(Date.now() + PAGESERVER_CALL_TIMEOUT_MS), signal: context.signal },
          );
        } catch (error) {
          throw pageserverError(error, `creating the timeline ${branchId}`);
        }
      }
      const outcome = await catalog.createProject(project, branch, endpoint, role);
      if (!outcome.created) {
        if (pageserver) {
          await pageserver.deleteTimeline({ timelineId: branchId }).catch((error: unknown) => {
            context.log.warn({ err: error, timelineId: branchId }, 'could not delete the timeline of a project that was not created; it is left unreferenced');
          });
        }
        if (!outcome.existingId) throw notFound(`tenant ${tenantId} of this API key does not exist`);
        throw alreadyExists(`a project named ${JSON.stringify(name)} exists already (${outcome.existingId}): choose another name`);
      }
      context.log.info({ projectId, branchId, endpointId: endpoint.endpointId, withTimeline: pageserver !== null }, 'project created');
      const host = `${endpoint.endpointId}.${domain}`;
      return {
        project: projectMessage(project),
        defaultBranch: branchMessage(branch),
        defaultEndpoint: endpointMessage(endpoint, domain),
        defaultRole: roleMessage(role),
        defaultRolePassword: password,
        connectionUri: `postgresql://${encodeURIComponent(role.name)}:${encodeURIComponent(password)}@${host}/${DEFAULT_DATABASE_NAME}?sslmode=require`,
      };
    },

    async getProject(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      return { project: projectMessage(await liveProject(tenantId, projectId)) };
    },

    async listProjects(_request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projects = await catalog.listProjects(tenantId);
      return { projects: projects.filter((project) => !project.deleting).map(projectMessage) };
    },

    async deleteProject(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      // Marked first, so a crash part-way leaves a project that is gone for the API and finished by a retry.
      const begun = await catalog.beginDeleteProject(tenantId, projectId);
      if (!begun) throw projectNotFound(projectId);
      if (!begun.ok) {
        throw failedPrecondition(`endpoint ${begun.endpointId} of project ${projectId} is ${begun.state}: stop it (StopEndpoint) and delete the project again`);
      }
      if (pageserver) {
        // Newest first: a branch goes before the parent it was branched from.
        for (const branch of (await catalog.listBranches(projectId)).reverse()) {
          try {
            await pageserver.deleteTimeline({ timelineId: branch.branchId }, { deadline: new Date(Date.now() + PAGESERVER_CALL_TIMEOUT_MS), signal: context.signal });
          } catch (error) {
            // Gone already: deleted by an earlier attempt that crashed before the catalog caught up.
            if (!hasStatus(error, Status.NOT_FOUND)) throw pageserverError(error, `deleting the timeline ${branch.branchId}`);
          }
        }
      }
      await catalog.finishDeleteProject(tenantId, projectId);
      context.log.info({ projectId }, 'project deleted');
      return {};
    },

    createBranch: unimplemented('CreateBranch', 'branches'),
    listBranches: unimplemented('ListBranches', 'branches'),
    getBranch: unimplemented('GetBranch', 'branches'),
    deleteBranch: unimplemented('DeleteBranch', 'branches'),
    createEndpoint: unimplemented('CreateEndpoint', 'endpoints'),
    async getEndpoint(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      return { endpoint: endpointMessage(await tenantEndpoint(tenantId, endpointId), domain) };
    },

    async listEndpoints(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      await liveProject(tenantId, projectId);
      const endpoints = await catalog.listEndpoints(projectId);
      return {
        endpoints: endpoints.filter((endpoint) => !request.branchId || endpoint.branchId === request.branchId).map((endpoint) => endpointMessage(endpoint, domain)),
      };
    },
    updateEndpoint: unimplemented('UpdateEndpoint', 'endpoints'),
    async startEndpoint(request, context) {
      const { tenantId, keyId } = tenantCaller(context.caller);
      const lifecycle = lifecycleOrUnavailable('StartEndpoint');
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      const endpoint = await tenantEndpoint(tenantId, endpointId);
      return { endpoint: endpointMessage(await lifecycle.start(endpoint, `StartEndpoint by key ${keyId}`), domain) };
    },

    async stopEndpoint(request, context) {
      const { tenantId, keyId } = tenantCaller(context.caller);
      const lifecycle = lifecycleOrUnavailable('StopEndpoint');
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      const endpoint = await tenantEndpoint(tenantId, endpointId);
      return { endpoint: endpointMessage(await lifecycle.stop(endpoint, `StopEndpoint by key ${keyId}`), domain) };
    },
    deleteEndpoint: unimplemented('DeleteEndpoint', 'endpoints'),
    createRole: unimplemented('CreateRole', 'roles'),
    listRoles: unimplemented('ListRoles', 'roles'),
    resetRolePassword: unimplemented('ResetRolePassword', 'roles'),
    deleteRole: unimplemented('DeleteRole', 'roles'),
    getConnectionString: unimplemented('GetConnectionString', 'connection strings'),
  };
}

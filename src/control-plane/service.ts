/**
 * The public API, ControlPlaneService: tenants, API keys and projects. Requests are validated by model.ts, callers
 * authenticated by auth.ts (its middleware runs before every handler here), and state kept by the catalog only, so
 * any call may land on a freshly restarted control plane.
 */
import type { ControlPlaneServiceImplementation } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { alreadyExists, ClientError, failedPrecondition, hasStatus, invalidArgument, notFound, ServerError, Status, unavailable } from '../lib/grpc/errors.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { createVerifier } from '../lib/scram.js';
import { formatLsn, maxLsn } from '../lib/lsn.js';
import { tenantCaller, type AuthContextExtension } from './auth.js';
import type { Catalog } from './catalog.js';
import { page } from './paging.js';
import { API_KEY_SHOWN_PREFIX_CHARS, newApiKeySecret, newId, newRolePassword, newTimelineId } from './ids.js';
import {
  apiKeyMessage,
  branchMessage,
  branchIdArgument,
  branchName,
  databaseName,
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
  type EndpointSettingsRecord,
  type ProjectRecord,
  type RoleRecord,
  type Scope,
} from './model.js';
import { secretHash } from './secrets.js';
import { connectionUri, sharedHostFor, type PublicAccess } from './connection-strings.js';
import { type EndpointLifecycle, requireLifecycle, type RoleVerifierSpec } from './lifecycle.js';

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
  /** The port users connect to (the gateway's); left out of connection strings when it is 5432. */
  publicPort?: number;
  /**
   * One host users reach every endpoint at, naming the endpoint in `options` (e.g. 127.0.0.1 for a platform on this
   * machine); empty: `ep-<id>.<domain>`, which DNS resolves (connection-strings.ts).
   */
  publicHost?: string;
  /** The `sslrootcert` of connection strings: the CA file clients verify the gateway with, or `system` (default). */
  publicRootCert?: string;
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

/** Pageserver answers handed to the caller as they are: they say what was wrong with the request. */
const PASSED_THROUGH: ReadonlySet<Status> = new Set([Status.FAILED_PRECONDITION, Status.INVALID_ARGUMENT, Status.OUT_OF_RANGE]);

/** The paths UpdateEndpoint's update_mask may name. */
const ENDPOINT_SETTING_PATHS = ['profile', 'suspend_timeout', 'autoscale', 'pooler_mode'] as const;

function branchNotFound(branchId: string): ServerError {
  return notFound(`branch ${branchId} does not exist: check the id (ListBranches shows a project's branches)`);
}

function roleNotFound(roleId: string): ServerError {
  return notFound(`role ${roleId} does not exist: check the id (ListRoles shows a branch's roles)`);
}

/** A new endpoint: STOPPED, no compute yet, no term; the first connection (or StartEndpoint) starts it. */
function newEndpoint(projectId: string, branchId: string, settings: EndpointSettingsRecord, createdAt: number, stateReason: string): EndpointRecord {
  return { endpointId: newId('endpoint'), projectId, branchId, settings, state: 'stopped', stateReason, stateChangedAt: createdAt, currentComputeId: '', writerTerm: 0n, createdAt };
}

/** The same answer for a project that does not exist and for another tenant's, so that ids do not leak. */
function projectNotFound(projectId: string): ServerError {
  return notFound(`project ${projectId} does not exist: check the id (ListProjects shows your projects)`);
}

export function controlPlaneService(options: ControlPlaneServiceOptions): ControlPlaneServiceImplementation<Context> {
  const { catalog, pageserver, domain } = options;
  const now = options.now ?? Date.now;
  const access: PublicAccess = {
    domain,
    port: options.publicPort ?? 5432,
    sharedHost: sharedHostFor(domain, options.publicHost ?? ''),
    rootCert: options.publicRootCert || 'system',
  };
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

  /** The tenant's live branch (of a live project), or NOT_FOUND (also for another tenant's). */
  async function tenantBranch(tenantId: string, branchId: string): Promise<BranchRecord> {
    const branch = await catalog.getBranch(branchId);
    const project = branch && (await catalog.getProject(tenantId, branch.projectId));
    if (!branch || branch.deleting || !project || project.deleting) throw branchNotFound(branchId);
    return branch;
  }

  /** The tenant's role (of a live branch), or NOT_FOUND. */
  async function tenantRole(tenantId: string, roleId: string): Promise<RoleRecord> {
    const role = await catalog.getRole(roleId);
    if (!role) throw roleNotFound(roleId);
    try {
      await tenantBranch(tenantId, role.branchId);
    } catch {
      throw roleNotFound(roleId);
    }
    return role;
  }

  /** Applies a role change to the branch's running endpoint, if it has one (see EndpointLifecycle.applyRoles). */
  async function applyToRunning(branch: BranchRecord, change: { upsert: RoleVerifierSpec[]; drop: string[] }): Promise<void> {
    if (!options.lifecycle) return;
    const endpoints = (await catalog.listEndpoints(branch.projectId)).filter((endpoint) => endpoint.branchId === branch.branchId);
    await options.lifecycle.applyRoles(endpoints, change);
  }

  /** The end of a branch's history: its committed WAL on the safekeepers, or what the pageserver has ingested. */
  async function historyEnd(branchId: string): Promise<bigint> {
    const committed = options.lifecycle ? await options.lifecycle.committedLsn(branchId) : 0n;
    try {
      const { timeline } = await pageserver!.describeTimeline({ timelineId: branchId }, { deadline: new Date(Date.now() + 10_000) });
      const ingested = timeline?.lastRecordLsn ?? 0n;
      return maxLsn(committed, ingested);
    } catch (error) {
      throw pageserverError(error, `reading branch ${branchId}'s history`);
    }
  }

  /** The branch's logical size from the pageserver, 0 when it cannot say (sizes are informative, never a failure). */
  async function logicalSize(branchId: string): Promise<bigint> {
    if (!pageserver) return 0n;
    try {
      const { timeline } = await pageserver.describeTimeline({ timelineId: branchId }, { deadline: new Date(Date.now() + 5_000) });
      return timeline?.logicalSizeBytes ?? 0n;
    } catch {
      return 0n;
    }
  }

  const lifecycleOrUnavailable = (method: string): EndpointLifecycle => requireLifecycle(options.lifecycle, method);

  /** A pageserver call's failure as the answer to our caller: retryable ones stay retryable. */
  function pageserverError(error: unknown, what: string): unknown {
    if (hasStatus(error, Status.UNAVAILABLE) || hasStatus(error, Status.DEADLINE_EXCEEDED)) {
      return unavailable(`the pageserver did not answer while ${what}: ${(error as Error).message}; retry`);
    }
    // What the pageserver refuses (a branch point it cannot serve) is the caller's to fix: its words, its status.
    if (error instanceof ClientError && PASSED_THROUGH.has(error.code)) return new ServerError(error.code, error.details);
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

    async listApiKeys(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const { items, nextPageToken } = page(await catalog.listApiKeys(tenantId), (key) => key.keyId, request);
      return { apiKeys: items.map(apiKeyMessage), nextPageToken };
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
      const endpoint = newEndpoint(projectId, branchId, settings, createdAt, 'created; the first connection starts it');
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
      return {
        project: projectMessage(project),
        defaultBranch: branchMessage(branch),
        defaultEndpoint: endpointMessage(endpoint, domain),
        defaultRole: roleMessage(role),
        defaultRolePassword: password,
        connectionUri: connectionUri(access, { endpointId: endpoint.endpointId, pooled: false, role: role.name, database: DEFAULT_DATABASE_NAME, password }),
      };
    },

    async getProject(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      return { project: projectMessage(await liveProject(tenantId, projectId)) };
    },

    async listProjects(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projects = (await catalog.listProjects(tenantId)).filter((project) => !project.deleting);
      const { items, nextPageToken } = page(projects, (project) => project.projectId, request);
      return { projects: items.map(projectMessage), nextPageToken };
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
          await options.lifecycle?.deleteSafekeeperTimeline(branch.branchId);
        }
      }
      await catalog.finishDeleteProject(tenantId, projectId);
      context.log.info({ projectId }, 'project deleted');
      return {};
    },

    async createBranch(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      const project = await liveProject(tenantId, projectId);
      const parentBranchId = request.parentBranchId ? branchIdArgument(request.parentBranchId, 'parent_branch_id') : project.defaultBranchId;
      const branchId = newTimelineId();
      const name = request.name ? branchName(request.name, 'name') : `branch-${branchId.slice(3, 11)}`;
      const settings = request.createEndpoint
        ? endpointSettingsArgument(request.endpointSettings, project.defaultEndpointSettings, 'endpoint_settings')
        : null;
      const parent = await catalog.getBranch(parentBranchId);
      if (!parent || parent.projectId !== projectId || parent.deleting) {
        throw notFound(`parent branch ${parentBranchId} does not exist in project ${projectId}: check the id (ListBranches shows the project's branches)`);
      }
      if (!pageserver) throw failedPrecondition('branches need a pageserver: this control plane runs without --pageserver');
      if ((await catalog.listBranches(projectId)).some((branch) => branch.name === name && !branch.deleting)) {
        throw alreadyExists(`project ${projectId} has a branch named ${JSON.stringify(name)} already: choose another name`);
      }
      let ancestorLsn: bigint | undefined;
      let ancestorTime: Date | undefined;
      if (request.parentLsn !== undefined) {
        if (request.parentLsn === 0n) throw invalidArgument('parent_lsn 0 is not a WAL position: give the LSN to branch at, a parent_time, or neither for now');
        // The pageserver would wait for WAL that may never come: a point past the end is the caller's mistake.
        const end = await historyEnd(parentBranchId);
        if (request.parentLsn > end) {
          throw failedPrecondition(`parent_lsn ${formatLsn(request.parentLsn)} is beyond the end of branch ${parentBranchId}'s history (${formatLsn(end)}): branch at or before it`);
        }
        ancestorLsn = request.parentLsn;
      } else if (request.parentTime !== undefined) {
        if (request.parentTime.getTime() > now()) throw invalidArgument(`parent_time ${request.parentTime.toISOString()} is in the future: branch at a past time, or leave it unset for now`);
        ancestorTime = request.parentTime;
      }
      if (ancestorLsn === undefined && options.lifecycle) {
        // "Now" is the end of the committed WAL, which the pageserver may not have ingested yet; and a past time may
        // be that of a commit the pageserver has not ingested yet either (a branch at the time just after a commit
        // must have it): either way, the pageserver first reaches what the safekeepers have committed.
        const committed = await options.lifecycle.committedLsn(parentBranchId);
        if (committed > 0n) {
          try {
            await pageserver.waitForLsn({ timelineId: parentBranchId, lsn: committed }, { deadline: new Date(Date.now() + 30_000), signal: context.signal });
            if (ancestorTime === undefined) ancestorLsn = committed;
          } catch (error) {
            throw pageserverError(error, `waiting for the parent branch's committed WAL (${committed})`);
          }
        }
      }
      let parentLsn: bigint;
      try {
        const { timeline } = await pageserver.branchTimeline(
          { timelineId: branchId, ancestorTimelineId: parentBranchId, ancestorLsn, ancestorTime },
          { deadline: new Date(Date.now() + PAGESERVER_CALL_TIMEOUT_MS), signal: context.signal },
        );
        parentLsn = timeline?.ancestorLsn ?? 0n;
      } catch (error) {
        throw pageserverError(error, `creating the branch's timeline ${branchId}`);
      }
      const createdAt = now();
      const branch: BranchRecord = { branchId, projectId, name, parentBranchId, parentLsn, isDefault: false, createdAt };
      // The branch's Postgres catalog is the parent's at the branch point: the same roles, with the same passwords.
      const roles: RoleRecord[] = (await catalog.listRoles(parentBranchId)).map((role) => ({ ...role, roleId: newId('role'), branchId, createdAt }));
      const endpoint = settings ? newEndpoint(projectId, branchId, settings, createdAt, 'created with the branch; the first connection starts it') : null;
      const outcome = await catalog.createBranch(tenantId, branch, roles, endpoint);
      if (outcome.outcome !== 'created') {
        await pageserver.deleteTimeline({ timelineId: branchId }).catch((error: unknown) => {
          context.log.warn({ err: error, timelineId: branchId }, 'could not delete the timeline of a branch that was not created; it is left unreferenced');
        });
        if (outcome.outcome === 'exists') throw alreadyExists(`project ${projectId} has a branch named ${JSON.stringify(name)} already (${outcome.existingId}): choose another name`);
        if (outcome.outcome === 'no-parent') throw notFound(`parent branch ${parentBranchId} was deleted meanwhile`);
        throw projectNotFound(projectId);
      }
      context.log.info({ projectId, branchId, parentBranchId, parentLsn: String(parentLsn), endpointId: endpoint?.endpointId }, 'branch created');
      return { branch: branchMessage(branch), endpoint: endpoint ? endpointMessage(endpoint, domain) : undefined };
    },

    async listBranches(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      await liveProject(tenantId, projectId);
      const { items: branches, nextPageToken } = page(
        (await catalog.listBranches(projectId)).filter((branch) => !branch.deleting),
        (branch) => branch.branchId,
        request,
      );
      const sizes = await Promise.all(branches.map((branch) => logicalSize(branch.branchId)));
      return { branches: branches.map((branch, index) => branchMessage(branch, sizes[index])), nextPageToken };
    },

    async getBranch(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const branch = await tenantBranch(tenantId, branchIdArgument(request.branchId, 'branch_id'));
      return { branch: branchMessage(branch, await logicalSize(branch.branchId)) };
    },

    async deleteBranch(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const branch = await tenantBranch(tenantId, branchIdArgument(request.branchId, 'branch_id'));
      const begun = await catalog.beginDeleteBranch(tenantId, branch);
      switch (begun.outcome) {
        case 'missing':
          throw branchNotFound(branch.branchId);
        case 'default':
          throw failedPrecondition(`branch ${branch.branchId} is the project's default branch: delete the project instead (DeleteProject)`);
        case 'children':
          throw failedPrecondition(`branch ${branch.branchId} is the parent of branch ${begun.childId}: delete that branch first`);
        case 'busy':
          throw failedPrecondition(`endpoint ${begun.endpointId} of branch ${branch.branchId} is ${begun.state}: stop it (StopEndpoint) and delete the branch again`);
        case 'ok':
          break;
      }
      if (pageserver) {
        try {
          await pageserver.deleteTimeline({ timelineId: branch.branchId }, { deadline: new Date(Date.now() + PAGESERVER_CALL_TIMEOUT_MS), signal: context.signal });
        } catch (error) {
          // Gone already: deleted by an earlier attempt that crashed before the catalog caught up.
          if (!hasStatus(error, Status.NOT_FOUND)) throw pageserverError(error, `deleting the timeline ${branch.branchId}`);
        }
      }
      await options.lifecycle?.deleteSafekeeperTimeline(branch.branchId);
      await catalog.finishDeleteBranch(branch);
      context.log.info({ branchId: branch.branchId }, 'branch deleted');
      return {};
    },

    async createEndpoint(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const branch = await tenantBranch(tenantId, branchIdArgument(request.branchId, 'branch_id'));
      const project = await liveProject(tenantId, branch.projectId);
      const settings = endpointSettingsArgument(request.settings, project.defaultEndpointSettings, 'settings');
      const createdAt = now();
      const endpoint = newEndpoint(project.projectId, branch.branchId, settings, createdAt, 'created; the first connection starts it');
      const outcome = await catalog.createEndpoint(tenantId, endpoint);
      if (outcome.outcome === 'exists') {
        throw failedPrecondition(`branch ${branch.branchId} already has endpoint ${outcome.existingId}: a branch has one writer endpoint; use that one or branch again`);
      }
      if (outcome.outcome === 'no-branch') throw branchNotFound(branch.branchId);
      if (outcome.outcome === 'no-project') throw projectNotFound(project.projectId);
      context.log.info({ endpointId: endpoint.endpointId, branchId: branch.branchId }, 'endpoint created');
      return { endpoint: endpointMessage(endpoint, domain) };
    },
    async getEndpoint(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      return { endpoint: endpointMessage(await tenantEndpoint(tenantId, endpointId), domain) };
    },

    async listEndpoints(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const projectId = idArgument('project', request.projectId, 'project_id');
      await liveProject(tenantId, projectId);
      const endpoints = (await catalog.listEndpoints(projectId)).filter((endpoint) => !request.branchId || endpoint.branchId === request.branchId);
      const { items, nextPageToken } = page(endpoints, (endpoint) => endpoint.endpointId, request);
      return { endpoints: items.map((endpoint) => endpointMessage(endpoint, domain)), nextPageToken };
    },
    async updateEndpoint(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      const endpoint = await tenantEndpoint(tenantId, endpointId);
      const paths: string[] = request.updateMask?.length ? request.updateMask : [...ENDPOINT_SETTING_PATHS];
      for (const path of paths) {
        if (!(ENDPOINT_SETTING_PATHS as readonly string[]).includes(path)) {
          throw invalidArgument(`update_mask path ${JSON.stringify(path)} is unknown: use ${ENDPOINT_SETTING_PATHS.join(', ')}`);
        }
      }
      const requested = endpointSettingsArgument(request.settings, endpoint.settings, 'settings');
      const settings = { ...endpoint.settings };
      if (paths.includes('profile')) settings.profile = requested.profile;
      if (paths.includes('suspend_timeout')) settings.suspendTimeoutMs = request.settings?.suspendTimeout ? requested.suspendTimeoutMs : 0;
      if (paths.includes('autoscale')) settings.autoscale = request.settings?.autoscale ? requested.autoscale : null;
      if (paths.includes('pooler_mode')) settings.poolerMode = requested.poolerMode;
      // The combination must hold too (a profile within autoscale's bounds).
      endpointSettingsArgument(undefined, settings, 'settings');
      const updated = await catalog.setEndpointSettings(endpointId, settings);
      if (!updated) throw notFound(`endpoint ${endpointId} does not exist`);
      // A new profile reaches a running compute at its next start: live handoffs come with the autoscaler.
      context.log.info({ endpointId, paths }, 'endpoint settings updated');
      return { endpoint: endpointMessage(updated, domain) };
    },

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
    async deleteEndpoint(request, context) {
      const { tenantId, keyId } = tenantCaller(context.caller);
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      let endpoint = await tenantEndpoint(tenantId, endpointId);
      if (endpoint.state === 'running' || endpoint.state === 'suspending') {
        const lifecycle = lifecycleOrUnavailable('DeleteEndpoint of a running endpoint');
        if (endpoint.state === 'running') await lifecycle.stop(endpoint, `DeleteEndpoint by key ${keyId}`);
        endpoint = await lifecycle.waitWhile(endpointId, ['suspending'], 120_000, context.signal);
      }
      const outcome = await catalog.deleteEndpoint(endpoint);
      if (outcome.outcome === 'busy') throw failedPrecondition(`endpoint ${endpointId} is ${outcome.state}: delete it once it is RUNNING or STOPPED`);
      context.log.info({ endpointId }, 'endpoint deleted');
      return {};
    },

    async createRole(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const branch = await tenantBranch(tenantId, branchIdArgument(request.branchId, 'branch_id'));
      const name = roleName(request.name, 'name');
      const password = newRolePassword();
      const role: RoleRecord = { roleId: newId('role'), branchId: branch.branchId, name, scramVerifier: createVerifier(password), createdAt: now() };
      const outcome = await catalog.createRole(role);
      if (outcome.outcome === 'exists') throw alreadyExists(`branch ${branch.branchId} has a role named ${JSON.stringify(name)} already (${outcome.existingId}): choose another name, or reset its password (ResetRolePassword)`);
      if (outcome.outcome === 'no-branch') throw branchNotFound(branch.branchId);
      try {
        await applyToRunning(branch, { upsert: [{ roleName: name, scramVerifier: role.scramVerifier }], drop: [] });
      } catch (error) {
        await catalog.deleteRole(role);
        throw error;
      }
      context.log.info({ roleId: role.roleId, branchId: branch.branchId }, 'role created');
      return { role: roleMessage(role), password };
    },

    async listRoles(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const branch = await tenantBranch(tenantId, branchIdArgument(request.branchId, 'branch_id'));
      const roles = (await catalog.listRoles(branch.branchId)).sort((a, b) => a.createdAt - b.createdAt || a.name.localeCompare(b.name));
      const { items, nextPageToken } = page(roles, (role) => role.roleId, request);
      return { roles: items.map(roleMessage), nextPageToken };
    },

    async resetRolePassword(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const role = await tenantRole(tenantId, idArgument('role', request.roleId, 'role_id'));
      const branch = await tenantBranch(tenantId, role.branchId);
      const password = newRolePassword();
      const scramVerifier = createVerifier(password);
      // The running compute first: a password the database does not know yet must not be handed out.
      await applyToRunning(branch, { upsert: [{ roleName: role.name, scramVerifier }], drop: [] });
      if (!(await catalog.setRoleVerifier(role.roleId, scramVerifier))) throw roleNotFound(role.roleId);
      context.log.info({ roleId: role.roleId }, 'role password reset');
      return { role: roleMessage(role), password };
    },

    async deleteRole(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const role = await tenantRole(tenantId, idArgument('role', request.roleId, 'role_id'));
      const branch = await tenantBranch(tenantId, role.branchId);
      // Dropped in the running database first (refused while it owns objects); a stopped one's next compute is
      // simply not given the role, and the agent disables the login of roles it was not given.
      await applyToRunning(branch, { upsert: [], drop: [role.name] });
      await catalog.deleteRole(role);
      context.log.info({ roleId: role.roleId }, 'role deleted');
      return {};
    },

    async getConnectionString(request, context) {
      const { tenantId } = tenantCaller(context.caller);
      const endpointId = idArgument('endpoint', request.endpointId, 'endpoint_id');
      const endpoint = await tenantEndpoint(tenantId, endpointId);
      const role = roleName(request.roleName || DEFAULT_ROLE_NAME, 'role_name');
      const database = request.databaseName ? databaseName(request.databaseName, 'database_name') : DEFAULT_DATABASE_NAME;
      if (!(await catalog.roleByName(endpoint.branchId, role))) {
        throw notFound(`branch ${endpoint.branchId} of endpoint ${endpointId} has no role ${JSON.stringify(role)}: create it (CreateRole) or name another (ListRoles)`);
      }
      return { uri: connectionUri(access, { endpointId, pooled: request.pooled, role, database }) };
    },
  };
}

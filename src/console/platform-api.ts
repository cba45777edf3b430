/**
 * Every call the console makes to the control plane goes through this module: the public ControlPlaneService with
 * the signed-in user's API key as `authorization: Bearer <secret>`, nothing else (the console holds no catalog and no
 * privileged credential). The transport is the `@spg99/sdk` client (TLS verified against the platform's CA,
 * deadlines, retries of idempotent calls, typed errors): one client for the process, each user's key per call.
 */
import { ApiError, createClient, Metadata, Status, type Spg99, type TlsOptions } from '../lib/sdk.js';
import type {
  ApiKey,
  ApiKeyScope,
  Branch,
  ControlPlaneApi,
  Endpoint,
  EndpointSettings,
  Project,
  Role,
  Tenant,
} from '../lib/sdk.js';

export type { ApiKey, Branch, Endpoint, EndpointSettings, Project, Role, Tenant };

/** A failed call, as the API worded it; `code` is the gRPC status name (NOT_FOUND, PERMISSION_DENIED, ...). */
export class PlatformApiError extends Error {
  constructor(
    readonly code: keyof typeof Status,
    message: string,
  ) {
    super(message);
    this.name = 'PlatformApiError';
  }
}

/** Where the branch starts on its parent. */
export type BranchPoint = { kind: 'now' } | { kind: 'lsn'; lsn: bigint } | { kind: 'time'; time: Date };

/** The calls the console makes, each with one user's key. */
export interface PlatformSession {
  getTenant(): Promise<Tenant>;
  listApiKeys(): Promise<ApiKey[]>;
  createApiKey(name: string, scope: ApiKeyScope): Promise<{ apiKey: ApiKey; secret: string }>;
  revokeApiKey(keyId: string): Promise<ApiKey>;
  listProjects(): Promise<Project[]>;
  getProject(projectId: string): Promise<Project>;
  createProject(name: string): Promise<{ project: Project; roleName: string; password: string; connectionUri: string }>;
  deleteProject(projectId: string): Promise<void>;
  listBranches(projectId: string): Promise<Branch[]>;
  getBranch(branchId: string): Promise<Branch>;
  createBranch(projectId: string, name: string, parentBranchId: string, point: BranchPoint, createEndpoint: boolean): Promise<{ branch: Branch; endpoint?: Endpoint }>;
  deleteBranch(branchId: string): Promise<void>;
  listEndpoints(projectId: string, branchId?: string): Promise<Endpoint[]>;
  getEndpoint(endpointId: string): Promise<Endpoint>;
  createEndpoint(branchId: string): Promise<Endpoint>;
  startEndpoint(endpointId: string): Promise<Endpoint>;
  stopEndpoint(endpointId: string): Promise<Endpoint>;
  updateEndpoint(endpointId: string, settings: EndpointSettings, paths: string[]): Promise<Endpoint>;
  listRoles(branchId: string): Promise<Role[]>;
  createRole(branchId: string, name: string): Promise<{ role: Role; password: string }>;
  resetRolePassword(roleId: string): Promise<{ role: Role; password: string }>;
  deleteRole(roleId: string): Promise<void>;
  getConnectionString(endpointId: string, roleName: string, pooled: boolean, databaseName?: string): Promise<string>;
}

/** The control plane's public API at `address`, one SDK client (one channel) shared by every user's calls. */
export class PlatformApi {
  private readonly client: Spg99;

  /** `tls`: the platform's CA (what `make up` keeps in .spg99/tls/ca.crt), or false for a plaintext API. */
  constructor(
    readonly address: string,
    tls: TlsOptions | false,
    private readonly timeoutMs = 30_000,
  ) {
    this.client = createClient({ address, tls });
  }

  /** The calls made with `apiKey`. */
  as(apiKey: string, traceId?: string): PlatformSession {
    const metadata = Metadata({ authorization: `Bearer ${apiKey}`, ...(traceId ? { 'x-trace-id': traceId } : {}) });
    return sessionOf(this.client.api, metadata, this.timeoutMs);
  }

  close(): void {
    this.client.close();
  }
}


/** Turns a gRPC failure into a {@link PlatformApiError} carrying the API's own words. */
async function call<T>(invoke: () => Promise<T>): Promise<T> {
  try {
    return await invoke();
  } catch (error) {
    if (error instanceof ApiError) {
      const code = (Status[error.code] ?? 'UNKNOWN') as keyof typeof Status;
      const message =
        error.code === Status.UNAVAILABLE && /No connection established|ECONNREFUSED|connect/i.test(error.details)
          ? `the control plane does not answer (${error.details}); is it running? (make status)`
          : error.details;
      throw new PlatformApiError(code, message);
    }
    throw error;
  }
}

function present<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new PlatformApiError('INTERNAL', `the control plane answered without ${what}`);
  return value;
}

function sessionOf(client: ControlPlaneApi, metadata: Metadata, timeoutMs: number): PlatformSession {
  // The user's key travels as this call's own `authorization` metadata (the client has none of its own).
  const options = () => ({ deadline: timeoutMs, metadata });
  return {
    getTenant: () => call(async () => present((await client.getTenant({}, options())).tenant, 'the tenant')),
    listApiKeys: () => call(async () => (await client.listApiKeys({}, options())).apiKeys),
    createApiKey: (name, scope) =>
      call(async () => {
        const answer = await client.createApiKey({ name, scope }, options());
        return { apiKey: present(answer.apiKey, 'the key'), secret: answer.secret };
      }),
    revokeApiKey: (keyId) => call(async () => present((await client.revokeApiKey({ keyId }, options())).apiKey, 'the key')),
    listProjects: () => call(async () => (await client.listProjects({}, options())).projects),
    getProject: (projectId) => call(async () => present((await client.getProject({ projectId }, options())).project, 'the project')),
    createProject: (name) =>
      call(async () => {
        // Creating a project runs initdb on the pageserver: allow it more than an ordinary call.
        const answer = await client.createProject(
          { name, region: '', pgMajorVersion: 0, defaultBranchName: '', defaultRoleName: '' },
          { ...options(), deadline: Math.max(timeoutMs, 180_000) },
        );
        return {
          project: present(answer.project, 'the project'),
          roleName: answer.defaultRole?.name ?? '',
          password: answer.defaultRolePassword,
          connectionUri: answer.connectionUri,
        };
      }),
    deleteProject: (projectId) => call(async () => void (await client.deleteProject({ projectId }, { ...options(), deadline: Math.max(timeoutMs, 120_000) }))),
    listBranches: (projectId) => call(async () => (await client.listBranches({ projectId }, options())).branches),
    getBranch: (branchId) => call(async () => present((await client.getBranch({ branchId }, options())).branch, 'the branch')),
    createBranch: (projectId, name, parentBranchId, point, createEndpoint) =>
      call(async () => {
        const answer = await client.createBranch(
          {
            projectId,
            name,
            parentBranchId,
            parentLsn: point.kind === 'lsn' ? point.lsn : undefined,
            parentTime: point.kind === 'time' ? point.time : undefined,
            createEndpoint,
          },
          { ...options(), deadline: Math.max(timeoutMs, 120_000) },
        );
        return { branch: present(answer.branch, 'the branch'), endpoint: answer.endpoint };
      }),
    deleteBranch: (branchId) => call(async () => void (await client.deleteBranch({ branchId }, { ...options(), deadline: Math.max(timeoutMs, 120_000) }))),
    listEndpoints: (projectId, branchId = '') => call(async () => (await client.listEndpoints({ projectId, branchId }, options())).endpoints),
    getEndpoint: (endpointId) => call(async () => present((await client.getEndpoint({ endpointId }, options())).endpoint, 'the endpoint')),
    createEndpoint: (branchId) => call(async () => present((await client.createEndpoint({ branchId }, options())).endpoint, 'the endpoint')),
    startEndpoint: (endpointId) => call(async () => present((await client.startEndpoint({ endpointId }, options())).endpoint, 'the endpoint')),
    stopEndpoint: (endpointId) => call(async () => present((await client.stopEndpoint({ endpointId }, options())).endpoint, 'the endpoint')),
    updateEndpoint: (endpointId, settings, paths) =>
      call(async () => present((await client.updateEndpoint({ endpointId, settings, updateMask: paths }, options())).endpoint, 'the endpoint')),
    listRoles: (branchId) => call(async () => (await client.listRoles({ branchId }, options())).roles),
    createRole: (branchId, name) =>
      call(async () => {
        const answer = await client.createRole({ branchId, name }, options());
        return { role: present(answer.role, 'the role'), password: answer.password };
      }),
    resetRolePassword: (roleId) =>
      call(async () => {
        const answer = await client.resetRolePassword({ roleId }, options());
        return { role: present(answer.role, 'the role'), password: answer.password };
      }),
    deleteRole: (roleId) => call(async () => void (await client.deleteRole({ roleId }, options()))),
    getConnectionString: (endpointId, roleName, pooled, databaseName = '') =>
      call(async () => (await client.getConnectionString({ endpointId, roleName, pooled, databaseName }, options())).uri),
  };
}

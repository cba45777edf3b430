/**
 * `@spg99/sdk`: the SPG99 control plane's public API for Node services (and the `spg99` CLI and the console).
 *
 * ```ts
 * const spg = createClient({ address: '127.0.0.1:7700', apiKey: process.env.SPG99_API_KEY, tls: { caFile: 'ca.crt' } });
 * for await (const project of spg.listProjects()) console.log(project.name);
 * spg.close();
 * ```
 * docs/sdk.md in the SPG99 repository describes every helper, the errors and the retries.
 */
import type { ApiKey, Branch, Endpoint, Project, Role } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { createBranchWithEndpoint, type BranchOptions, type BranchWithEndpoint } from './branches.js';
import { createApiClient, type ClientOptions, type ControlPlaneApi } from './client.js';
import { waitForEndpointState, wakeEndpoint, type WaitOptions, type WantedState } from './endpoints.js';
import { DEFAULT_PAGE_SIZE, paginate } from './pages.js';

export { IDEMPOTENT_METHODS, type ClientOptions, type ControlPlaneApi, type RetrySettings, type Spg99CallOptions, type TlsOptions } from './client.js';
export * from './errors.js';
/** Metadata of a call (e.g. a per-user `authorization` in a web server). */
export { Metadata } from 'nice-grpc-common';
export { withPassword } from './connection-uri.js';
export { endpointState, stateWord, type WaitOptions, type WantedState } from './endpoints.js';
export { paginate, DEFAULT_PAGE_SIZE, type Page } from './pages.js';
export type { BranchOptions, BranchWithEndpoint } from './branches.js';
export {
  ControlPlaneServiceDefinition,
  ApiKeyScope,
  EndpointState,
  PoolerMode,
  type ApiKey,
  type AutoscaleSettings,
  type Branch,
  type ComputeProfile,
  type Endpoint,
  type EndpointSettings,
  type Project,
  type Role,
  type Tenant,
  CreateTenantRequest,
  CreateTenantResponse,
  GetTenantRequest,
  GetTenantResponse,
  CreateApiKeyRequest,
  CreateApiKeyResponse,
  ListApiKeysRequest,
  ListApiKeysResponse,
  RevokeApiKeyRequest,
  RevokeApiKeyResponse,
  CreateProjectRequest,
  CreateProjectResponse,
  GetProjectRequest,
  GetProjectResponse,
  ListProjectsRequest,
  ListProjectsResponse,
  DeleteProjectRequest,
  DeleteProjectResponse,
  CreateBranchRequest,
  CreateBranchResponse,
  ListBranchesRequest,
  ListBranchesResponse,
  GetBranchRequest,
  GetBranchResponse,
  DeleteBranchRequest,
  DeleteBranchResponse,
  CreateEndpointRequest,
  CreateEndpointResponse,
  GetEndpointRequest,
  GetEndpointResponse,
  ListEndpointsRequest,
  ListEndpointsResponse,
  UpdateEndpointRequest,
  UpdateEndpointResponse,
  StartEndpointRequest,
  StartEndpointResponse,
  StopEndpointRequest,
  StopEndpointResponse,
  DeleteEndpointRequest,
  DeleteEndpointResponse,
  CreateRoleRequest,
  CreateRoleResponse,
  ListRolesRequest,
  ListRolesResponse,
  ResetRolePasswordRequest,
  ResetRolePasswordResponse,
  DeleteRoleRequest,
  DeleteRoleResponse,
  GetConnectionStringRequest,
  GetConnectionStringResponse,
} from '../../gen/spg99/controlplane/v1/controlplane.js';

/** Paging of the list helpers. */
export interface ListOptions {
  /** Items per call. Default {@link DEFAULT_PAGE_SIZE}. */
  pageSize?: number;
}

/** A client of the public API: the generated calls in {@link api}, and the helpers. One per process is enough. */
export class Spg99 {
  /** Every RPC of ControlPlaneService, e.g. `await spg.api.createProject({ name: 'shop' })`. */
  readonly api: ControlPlaneApi;
  /** host:port it calls. */
  readonly address: string;
  private readonly closeChannel: () => void;

  constructor(options: ClientOptions) {
    const client = createApiClient(options);
    this.api = client.api;
    this.address = client.address;
    this.closeChannel = client.close;
  }

  /** Every project of the key's tenant, page by page. */
  listProjects(options: ListOptions = {}): AsyncGenerator<Project, void, undefined> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    return paginate(async (pageToken) => {
      const page = await this.api.listProjects({ pageSize, pageToken });
      return { items: page.projects, nextPageToken: page.nextPageToken };
    });
  }

  /** Every branch of a project. */
  listBranches(request: { projectId: string }, options: ListOptions = {}): AsyncGenerator<Branch, void, undefined> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    return paginate(async (pageToken) => {
      const page = await this.api.listBranches({ projectId: request.projectId, pageSize, pageToken });
      return { items: page.branches, nextPageToken: page.nextPageToken };
    });
  }

  /** Every endpoint of a project, or of one of its branches. */
  listEndpoints(request: { projectId: string; branchId?: string }, options: ListOptions = {}): AsyncGenerator<Endpoint, void, undefined> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    return paginate(async (pageToken) => {
      const page = await this.api.listEndpoints({ projectId: request.projectId, branchId: request.branchId ?? '', pageSize, pageToken });
      return { items: page.endpoints, nextPageToken: page.nextPageToken };
    });
  }

  /** Every role of a branch. */
  listRoles(request: { branchId: string }, options: ListOptions = {}): AsyncGenerator<Role, void, undefined> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    return paginate(async (pageToken) => {
      const page = await this.api.listRoles({ branchId: request.branchId, pageSize, pageToken });
      return { items: page.roles, nextPageToken: page.nextPageToken };
    });
  }

  /** Every API key of the tenant, revoked ones included (never their secrets). */
  listApiKeys(options: ListOptions = {}): AsyncGenerator<ApiKey, void, undefined> {
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    return paginate(async (pageToken) => {
      const page = await this.api.listApiKeys({ pageSize, pageToken });
      return { items: page.apiKeys, nextPageToken: page.nextPageToken };
    });
  }

  /** Waits until the endpoint is `running` or `stopped` (or any EndpointState); see {@link waitForEndpointState}. */
  waitForEndpointState(endpointId: string, state: WantedState, options?: WaitOptions): Promise<Endpoint> {
    return waitForEndpointState(this.api, endpointId, state, options);
  }

  /** Starts the endpoint when needed and answers when it is RUNNING (accepting connections). */
  wakeEndpoint(endpointId: string, options?: WaitOptions): Promise<Endpoint> {
    return wakeEndpoint(this.api, endpointId, options);
  }

  /** Creates a branch (at a time, an LSN, or now) with an endpoint and answers its connection string. */
  createBranch(options: BranchOptions): Promise<BranchWithEndpoint> {
    return createBranchWithEndpoint(this.api, options);
  }

  /** Closes the connection; the process can then exit. */
  close(): void {
    this.closeChannel();
  }
}

/** Connects to the control plane's public API (the first call opens the connection). */
export function createClient(options: ClientOptions): Spg99 {
  return new Spg99(options);
}

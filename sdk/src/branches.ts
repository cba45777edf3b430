/** Branches: create one at a point of its parent's history, with an endpoint, and hand back how to connect. */
import type { Branch, Endpoint, EndpointSettings } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { ControlPlaneApi } from './client.js';
import { withPassword } from './connection-uri.js';
import { Spg99Error } from './errors.js';

/** What {@link createBranchWithEndpoint} takes. */
export interface BranchOptions {
  projectId: string;
  /** The branch's name (unique in the project). */
  name: string;
  /** The parent branch (`tl-…`); default: the project's default branch. */
  parentBranchId?: string;
  /** Branch at the parent's last commit at or before this time. */
  at?: Date;
  /** Or at this WAL position of the parent. Neither: at the end of its history now. */
  lsn?: bigint;
  /** The role the connection string names. Default `owner` (the project's default role, copied to the branch). */
  role?: string;
  /** The database. Default `postgres`. */
  database?: string;
  /** Through the endpoint's pooler. */
  pooled?: boolean;
  /** The role's password, put into the connection string (a branch's roles keep the parent's passwords). */
  password?: string;
  /** The new endpoint's settings; missing parts take the project's defaults. */
  endpointSettings?: EndpointSettings;
}

/** A new branch, its endpoint (STOPPED: the first connection or a wake starts it) and how to connect to it. */
export interface BranchWithEndpoint {
  branch: Branch;
  endpoint: Endpoint;
  /** A libpq URI (verify-full TLS to the gateway); with the password when one was given. */
  connectionString: string;
}

/**
 * Creates a branch with an endpoint, at `at`, at `lsn` or now, and answers its connection string. CreateBranch is not
 * retried (a repeated create would make a second branch or fail with ALREADY_EXISTS); the connection string is.
 */
export async function createBranchWithEndpoint(api: ControlPlaneApi, options: BranchOptions): Promise<BranchWithEndpoint> {
  if (options.at !== undefined && options.lsn !== undefined) throw new TypeError('give at or lsn, not both: a branch has one branch point');
  const created = await api.createBranch({
    projectId: options.projectId,
    name: options.name,
    parentBranchId: options.parentBranchId ?? '',
    parentTime: options.at,
    parentLsn: options.lsn,
    createEndpoint: true,
    endpointSettings: options.endpointSettings,
  });
  if (!created.branch || !created.endpoint) throw new Spg99Error(`CreateBranch answered no ${created.branch ? 'endpoint' : 'branch'}: the control plane is older than this SDK`);
  const { uri } = await api.getConnectionString({
    endpointId: created.endpoint.endpointId,
    roleName: options.role ?? 'owner',
    databaseName: options.database ?? '',
    pooled: options.pooled ?? false,
  });
  return { branch: created.branch, endpoint: created.endpoint, connectionString: options.password === undefined ? uri : withPassword(uri, options.password) };
}

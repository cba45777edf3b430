/**
 * The edge between the public API's protobuf messages and the catalog's domain types: requests are validated here
 * (INVALID_ARGUMENT naming the field and what is expected), and catalog records are turned back into messages, so
 * the catalog never sees `undefined` fields or enum values it does not know.
 */
import type { Duration } from '../../gen/google/protobuf/duration.js';
import {
  ApiKeyScope,
  EndpointState,
  PoolerMode,
  type ApiKey,
  type Branch,
  type ComputeProfile,
  type Endpoint,
  type EndpointSettings,
  type Project,
  type Role,
  type Tenant,
} from '../../gen/spg99/controlplane/v1/controlplane.js';
import { invalidArgument } from '../lib/grpc/errors.js';
import { DECEPTIVE_CHARACTERS, echo, TIMELINE_ID_PATTERN } from '../lib/ids.js';
import { ID_PREFIXES, isId, type IdKind } from './ids.js';

/** The scope of a key in the catalog. */
export type Scope = 'admin' | 'read';

/** Longest name of a tenant, key, project or branch. */
export const MAX_NAME_LENGTH = 64;
/** Postgres' NAMEDATALEN - 1. */
export const MAX_ROLE_NAME_LENGTH = 63;

/** The platform's defaults for what a request leaves out. */
export const DEFAULT_BRANCH_NAME = 'main';
export const DEFAULT_ROLE_NAME = 'owner';
export const DEFAULT_DATABASE_NAME = 'postgres';

/** Compute profile bounds: a quarter core to 64 cores, 256 MiB to 256 GiB. */
const CPU_MILLIS = { min: 250, max: 64_000 };
const MEMORY_MIB = { min: 256, max: 256 * 1024 };
/** The longest suspend timeout: a week (zero means never suspend). */
const MAX_SUSPEND_TIMEOUT_MS = 7 * 24 * 3600 * 1000;

/** An endpoint's settings as the catalog keeps them (JSON in the endpoint's and the project's hash). */
export interface EndpointSettingsRecord {
  profile: { cpuMillis: number; memoryMib: number };
  /** 0: never suspend. */
  suspendTimeoutMs: number;
  autoscale: { min: { cpuMillis: number; memoryMib: number }; max: { cpuMillis: number; memoryMib: number } } | null;
  poolerMode: 'session' | 'transaction';
}

/** The settings of an endpoint created with none of its own and no project defaults. */
export const PLATFORM_ENDPOINT_DEFAULTS: EndpointSettingsRecord = {
  profile: { cpuMillis: 1000, memoryMib: 1024 },
  suspendTimeoutMs: 300_000,
  autoscale: null,
  poolerMode: 'session',
};

// ---- Validation of request fields ----

/** A display name: 1 to 64 characters, no control, bidirectional-control or zero-width characters, no surrounding spaces. */
export function displayName(value: string, field: string): string {
  if (value === '') throw invalidArgument(`${field} is required: 1 to ${MAX_NAME_LENGTH} characters`);
  const length = [...value].length;
  if (length > MAX_NAME_LENGTH) throw invalidArgument(`${field} is ${length} characters long: at most ${MAX_NAME_LENGTH} are allowed`);
  if (/[\u0000-\u001f\u007f-\u009f]/.test(value)) throw invalidArgument(`${field} must not contain control characters (newlines, tabs)`);
  if (DECEPTIVE_CHARACTERS.test(value)) {
    throw invalidArgument(
      `${field} must not contain bidirectional-text controls (U+202A-U+202E, U+2066-U+2069) or zero-width characters (U+200B-U+200F, U+FEFF): they make a name read as another`,
    );
  }
  if (value.trim() !== value) throw invalidArgument(`${field} ${echo(value)} must not start or end with spaces`);
  return value;
}

/** A branch name: letters, digits and `-_./`, starting with a letter or digit, at most 64 characters. */
export function branchName(value: string, field: string): string {
  if (value.length > MAX_NAME_LENGTH) throw invalidArgument(`${field} is ${value.length} characters long: at most ${MAX_NAME_LENGTH} are allowed`);
  if (!/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(value)) {
    throw invalidArgument(`${field} ${echo(value)} is not a branch name: letters, digits, '-', '_', '.' and '/', starting with a letter or digit`);
  }
  return value;
}

/** Names Postgres or the platform own: the bootstrap superuser and role keywords. */
const RESERVED_ROLE_NAMES: ReadonlySet<string> = new Set(['postgres', 'public', 'none', 'session_user', 'user', 'all']);

/** A Postgres role name the platform lets users create (the contract: lowercase letters, digits, `_`). */
export function roleName(value: string, field: string): string {
  if (value.length > MAX_ROLE_NAME_LENGTH) throw invalidArgument(`${field} is ${value.length} characters long: at most ${MAX_ROLE_NAME_LENGTH} are allowed`);
  if (!/^[a-z_][a-z0-9_]*$/.test(value)) {
    throw invalidArgument(`${field} ${echo(value)} is not a role name: lowercase letters, digits and '_', not starting with a digit`);
  }
  if (value.startsWith('pg_') || value.startsWith('spg99_') || value.startsWith('current_') || RESERVED_ROLE_NAMES.has(value)) {
    throw invalidArgument(
      `${field} ${echo(value)} is reserved: role names must not start with pg_, spg99_ or current_, nor be ${[...RESERVED_ROLE_NAMES].join(', ')}`,
    );
  }
  return value;
}

/** An id the control plane assigned: required and well-formed. */
export function idArgument(kind: IdKind, value: string, field: string): string {
  const shape = kind === 'endpoint' || kind === 'compute' ? '32 lowercase hex digits' : '16 lowercase letters and digits';
  if (value === '') throw invalidArgument(`${field} is required: ${ID_PREFIXES[kind]} followed by ${shape}`);
  if (!isId(kind, value)) {
    throw invalidArgument(`${field} ${echo(value)} is malformed: expected ${ID_PREFIXES[kind]} followed by ${shape}`);
  }
  return value;
}

/** A branch id: a timeline id, `tl-` and 32 lowercase hex digits. */
export function branchIdArgument(value: string, field: string): string {
  if (value === '') throw invalidArgument(`${field} is required: tl- followed by 32 lowercase hex digits (ListBranches shows a project's branches)`);
  if (!TIMELINE_ID_PATTERN.test(value)) {
    throw invalidArgument(`${field} ${echo(value)} is malformed: expected tl- followed by 32 lowercase hex digits`);
  }
  return value;
}

/** A database name for a connection string: 1 to 63 characters, no control characters, no `/?#@`. */
export function databaseName(value: string, field: string): string {
  if (value.length > MAX_ROLE_NAME_LENGTH) throw invalidArgument(`${field} is ${value.length} characters long: at most ${MAX_ROLE_NAME_LENGTH} are allowed`);
  if (/[\u0000-\u001f\u007f-\u009f/?#@]/.test(value) || DECEPTIVE_CHARACTERS.test(value)) {
    throw invalidArgument(`${field} ${echo(value)} is not a database name: no control, bidirectional-control or zero-width characters, no '/', '?', '#', '@'`);
  }
  return value;
}

/** A scope a key is created with. */
export function scopeArgument(value: ApiKeyScope, field: string): Scope {
  switch (value) {
    case ApiKeyScope.API_KEY_SCOPE_ADMIN:
      return 'admin';
    case ApiKeyScope.API_KEY_SCOPE_READ:
      return 'read';
    case ApiKeyScope.API_KEY_SCOPE_UNSPECIFIED:
      throw invalidArgument(`${field} is required: API_KEY_SCOPE_ADMIN or API_KEY_SCOPE_READ`);
    default:
      throw invalidArgument(`${field} ${value} is unknown: use API_KEY_SCOPE_ADMIN or API_KEY_SCOPE_READ`);
  }
}

function profileArgument(
  profile: ComputeProfile | undefined,
  fallback: { cpuMillis: number; memoryMib: number },
  field: string,
): { cpuMillis: number; memoryMib: number } {
  const cpuMillis = profile?.cpuMillis || fallback.cpuMillis;
  const memoryMib = profile?.memoryMib || fallback.memoryMib;
  if (cpuMillis < CPU_MILLIS.min || cpuMillis > CPU_MILLIS.max) {
    throw invalidArgument(`${field}.cpu_millis ${cpuMillis} is out of range: ${CPU_MILLIS.min} to ${CPU_MILLIS.max} (thousandths of a core)`);
  }
  if (memoryMib < MEMORY_MIB.min || memoryMib > MEMORY_MIB.max) {
    throw invalidArgument(`${field}.memory_mib ${memoryMib} is out of range: ${MEMORY_MIB.min} to ${MEMORY_MIB.max} MiB`);
  }
  return { cpuMillis, memoryMib };
}

function durationMs(duration: Duration, field: string): number {
  const ms = Number(duration.seconds) * 1000 + Math.trunc(duration.nanos / 1e6);
  if (!Number.isFinite(ms) || ms < 0) throw invalidArgument(`${field} must not be negative`);
  return ms;
}

/**
 * Endpoint settings from a request, the parts it leaves out taken from `fallback` (the project's defaults, or the
 * platform's). `field` names the message in errors (e.g. `default_endpoint_settings`).
 */
export function endpointSettingsArgument(
  settings: EndpointSettings | undefined,
  fallback: EndpointSettingsRecord,
  field: string,
): EndpointSettingsRecord {
  const profile = profileArgument(settings?.profile, fallback.profile, `${field}.profile`);
  let suspendTimeoutMs = fallback.suspendTimeoutMs;
  if (settings?.suspendTimeout) {
    suspendTimeoutMs = durationMs(settings.suspendTimeout, `${field}.suspend_timeout`);
    if (suspendTimeoutMs > MAX_SUSPEND_TIMEOUT_MS) {
      throw invalidArgument(`${field}.suspend_timeout ${suspendTimeoutMs / 1000}s is too long: at most ${MAX_SUSPEND_TIMEOUT_MS / 1000}s (zero: never suspend)`);
    }
  }
  let autoscale = fallback.autoscale;
  if (settings?.autoscale) {
    if (!settings.autoscale.minProfile || !settings.autoscale.maxProfile) {
      throw invalidArgument(`${field}.autoscale needs both min_profile and max_profile (leave autoscale unset for a fixed profile)`);
    }
    const min = profileArgument(settings.autoscale.minProfile, profile, `${field}.autoscale.min_profile`);
    const max = profileArgument(settings.autoscale.maxProfile, profile, `${field}.autoscale.max_profile`);
    if (min.cpuMillis > max.cpuMillis || min.memoryMib > max.memoryMib) {
      throw invalidArgument(`${field}.autoscale.min_profile must not exceed max_profile in cpu_millis or memory_mib`);
    }
    autoscale = { min, max };
  }
  if (autoscale) {
    const { min, max } = autoscale;
    if (profile.cpuMillis < min.cpuMillis || profile.cpuMillis > max.cpuMillis || profile.memoryMib < min.memoryMib || profile.memoryMib > max.memoryMib) {
      throw invalidArgument(`${field}.profile must lie within autoscale's min_profile and max_profile`);
    }
  }
  let poolerMode = fallback.poolerMode;
  switch (settings?.poolerMode ?? PoolerMode.POOLER_MODE_UNSPECIFIED) {
    case PoolerMode.POOLER_MODE_UNSPECIFIED:
      break;
    case PoolerMode.POOLER_MODE_SESSION:
      poolerMode = 'session';
      break;
    case PoolerMode.POOLER_MODE_TRANSACTION:
      poolerMode = 'transaction';
      break;
    default:
      throw invalidArgument(`${field}.pooler_mode ${settings?.poolerMode} is unknown: use POOLER_MODE_SESSION or POOLER_MODE_TRANSACTION`);
  }
  return { profile, suspendTimeoutMs, autoscale, poolerMode };
}

// ---- Catalog records (as stored in Redis hashes: every field a string) ----

export interface TenantRecord {
  tenantId: string;
  name: string;
  createdAt: number;
}

export interface ApiKeyRecord {
  keyId: string;
  tenantId: string;
  name: string;
  scope: Scope;
  secretPrefix: string;
  /** SHA-256 of the secret, hex. */
  secretHash: string;
  createdAt: number;
  /** 0: never used. */
  lastUsedAt: number;
  /** 0: valid. */
  revokedAt: number;
}

export interface ProjectRecord {
  projectId: string;
  tenantId: string;
  name: string;
  region: string;
  pgMajorVersion: number;
  defaultEndpointSettings: EndpointSettingsRecord;
  defaultBranchId: string;
  createdAt: number;
  /** Set once DeleteProject began: the project is gone for the API, its parts are being removed. */
  deleting: boolean;
}

export interface BranchRecord {
  branchId: string;
  projectId: string;
  name: string;
  parentBranchId: string;
  parentLsn: bigint;
  isDefault: boolean;
  createdAt: number;
  /** Set once DeleteBranch began: the branch is gone for the API. */
  deleting?: boolean;
}

export type EndpointStateName = 'stopped' | 'starting' | 'running' | 'suspending' | 'handoff' | 'failed';

export interface EndpointRecord {
  endpointId: string;
  projectId: string;
  branchId: string;
  settings: EndpointSettingsRecord;
  state: EndpointStateName;
  stateReason: string;
  stateChangedAt: number;
  currentComputeId: string;
  writerTerm: bigint;
  /** host:port of the writer's Postgres while RUNNING; empty (or absent in older records) otherwise. */
  postgresAddress?: string;
  createdAt: number;
  /**
   * From the current compute's activity reports (ms since the epoch; 0 before the first): when a client was last
   * connected, and when that was reported. Scale to zero reads them.
   */
  lastActivityAt?: number;
  activityReportedAt?: number;
  /** Client connections in that report. */
  activeConnections?: number;
}

export interface RoleRecord {
  roleId: string;
  branchId: string;
  name: string;
  /** SCRAM-SHA-256 verifier in Postgres' format; the password itself is never kept. */
  scramVerifier: string;
  createdAt: number;
}

// ---- Records to messages ----

const SCOPES: Record<Scope, ApiKeyScope> = { admin: ApiKeyScope.API_KEY_SCOPE_ADMIN, read: ApiKeyScope.API_KEY_SCOPE_READ };
const STATES: Record<EndpointStateName, EndpointState> = {
  stopped: EndpointState.ENDPOINT_STATE_STOPPED,
  starting: EndpointState.ENDPOINT_STATE_STARTING,
  running: EndpointState.ENDPOINT_STATE_RUNNING,
  suspending: EndpointState.ENDPOINT_STATE_SUSPENDING,
  handoff: EndpointState.ENDPOINT_STATE_HANDOFF,
  failed: EndpointState.ENDPOINT_STATE_FAILED,
};

export function endpointStateMessage(state: EndpointStateName): EndpointState {
  return STATES[state];
}

export function tenantMessage(record: TenantRecord): Tenant {
  return { tenantId: record.tenantId, name: record.name, createdAt: new Date(record.createdAt) };
}

/** An API key as the API shows it: never its secret or hash. */
export function apiKeyMessage(record: ApiKeyRecord): ApiKey {
  return {
    keyId: record.keyId,
    tenantId: record.tenantId,
    name: record.name,
    scope: SCOPES[record.scope],
    secretPrefix: record.secretPrefix,
    createdAt: new Date(record.createdAt),
    lastUsedAt: record.lastUsedAt ? new Date(record.lastUsedAt) : undefined,
    revokedAt: record.revokedAt ? new Date(record.revokedAt) : undefined,
  };
}

function durationMessage(ms: number): Duration {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

export function endpointSettingsMessage(settings: EndpointSettingsRecord): EndpointSettings {
  return {
    profile: { ...settings.profile },
    suspendTimeout: durationMessage(settings.suspendTimeoutMs),
    autoscale: settings.autoscale ? { minProfile: { ...settings.autoscale.min }, maxProfile: { ...settings.autoscale.max } } : undefined,
    poolerMode: settings.poolerMode === 'transaction' ? PoolerMode.POOLER_MODE_TRANSACTION : PoolerMode.POOLER_MODE_SESSION,
  };
}

export function projectMessage(record: ProjectRecord): Project {
  return {
    projectId: record.projectId,
    tenantId: record.tenantId,
    name: record.name,
    region: record.region,
    pgMajorVersion: record.pgMajorVersion,
    defaultEndpointSettings: endpointSettingsMessage(record.defaultEndpointSettings),
    defaultBranchId: record.defaultBranchId,
    createdAt: new Date(record.createdAt),
  };
}

/** A branch as the API shows it; `logicalSizeBytes` from the pageserver when it answered (else 0). */
export function branchMessage(record: BranchRecord, logicalSizeBytes = 0n): Branch {
  return {
    branchId: record.branchId,
    projectId: record.projectId,
    name: record.name,
    parentBranchId: record.parentBranchId,
    parentLsn: record.parentLsn,
    isDefault: record.isDefault,
    logicalSizeBytes,
    createdAt: new Date(record.createdAt),
  };
}

export function endpointMessage(record: EndpointRecord, domain: string): Endpoint {
  return {
    endpointId: record.endpointId,
    projectId: record.projectId,
    branchId: record.branchId,
    settings: endpointSettingsMessage(record.settings),
    host: `${record.endpointId}.${domain}`,
    state: STATES[record.state],
    stateReason: record.stateReason,
    stateChangedAt: new Date(record.stateChangedAt),
    currentComputeId: record.currentComputeId,
    writerTerm: record.writerTerm,
    currentProfile: record.currentComputeId ? { ...record.settings.profile } : undefined,
    createdAt: new Date(record.createdAt),
  };
}

export function roleMessage(record: RoleRecord): Role {
  return { roleId: record.roleId, branchId: record.branchId, name: record.name, createdAt: new Date(record.createdAt) };
}

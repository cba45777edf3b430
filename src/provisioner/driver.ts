/**
 * The driver interface: how the provisioner makes a compute run (local processes, Kubernetes pods) behind the
 * Provisioner API. A driver owns its computes' lifecycle; the API layer only validates and translates.
 */
import { ComputeState } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { counter, gauge } from '../lib/metrics.js';

export { ComputeState };

/** The resources of one compute. */
export interface ComputeProfile {
  cpuMillis: number;
  memoryMib: number;
}

/** A role the agent is to create, with its SCRAM verifier. */
export interface RoleVerifier {
  roleName: string;
  scramVerifier: string;
}

/** A validated compute spec (see `ComputeSpec` in provisioner.proto). */
export interface ComputeSpec {
  endpointId: string;
  timelineId: string;
  term: bigint;
  profile: ComputeProfile;
  safekeeperAddresses: string[];
  pageserverAddress: string;
  /** Empty when not given. */
  controlPlaneAddress: string;
  pgSettings: Record<string, string>;
  roles: RoleVerifier[];
}

/** A compute as a driver sees it now. */
export interface ComputeView {
  computeId: string;
  spec: ComputeSpec;
  state: ComputeState;
  reason: string;
  /** host:port, empty until known. */
  postgresAddress: string;
  /** host:port, empty until known. */
  agentAddress: string;
  driver: string;
  startedAt?: Date;
  stateChangedAt: Date;
  restartCount: number;
}

/** How to stop a compute. */
export interface StopOptions {
  /** Kill at once instead of a clean stop. */
  kill: boolean;
  /** A clean stop that takes longer than this is turned into a kill. */
  graceMs: number;
}

/** The outcome of a stop. */
export interface StopOutcome {
  compute: ComputeView;
  /** The writer's last LSN on a majority of safekeepers, after a clean stop; 0n when killed or unknown. */
  finalLsn: bigint;
}

/** Runs computes. Errors are ServerErrors with the status the API answers (NOT_FOUND, FAILED_PRECONDITION, ...). */
export interface ComputeDriver {
  /** `process` or `kubernetes`. */
  readonly name: string;
  /**
   * Makes sure the compute runs with `spec`, or is on its way, and answers its view. Idempotent for the same spec;
   * FAILED_PRECONDITION for another spec under the same id; a STOPPED or FAILED compute is not restarted.
   */
  ensure(computeId: string, spec: ComputeSpec): Promise<ComputeView>;
  /** Stops the compute and answers once it is STOPPED (or FAILED); NOT_FOUND for an unknown id. */
  stop(computeId: string, options: StopOptions): Promise<StopOutcome>;
  /** The compute now; NOT_FOUND for an unknown (or forgotten) id. */
  describe(computeId: string): ComputeView;
  /** Every compute this driver knows, optionally of one endpoint. */
  list(endpointId?: string): ComputeView[];
  /** Stops every compute cleanly (the provisioner is stopping). */
  close(): Promise<void>;
}

/** Whether two specs are the same (an EnsureCompute retry) or not (a different compute under a reused id). */
export function sameSpec(a: ComputeSpec, b: ComputeSpec): boolean {
  const settings = (spec: ComputeSpec) => JSON.stringify(Object.entries(spec.pgSettings).sort(([x], [y]) => x.localeCompare(y)));
  return (
    a.endpointId === b.endpointId &&
    a.timelineId === b.timelineId &&
    a.term === b.term &&
    a.profile.cpuMillis === b.profile.cpuMillis &&
    a.profile.memoryMib === b.profile.memoryMib &&
    a.safekeeperAddresses.join(',') === b.safekeeperAddresses.join(',') &&
    a.pageserverAddress === b.pageserverAddress &&
    a.controlPlaneAddress === b.controlPlaneAddress &&
    settings(a) === settings(b) &&
    JSON.stringify(a.roles) === JSON.stringify(b.roles)
  );
}

/** The fields where `b` differs from `a`, for a FAILED_PRECONDITION message. */
export function specDifferences(a: ComputeSpec, b: ComputeSpec): string[] {
  const differences: string[] = [];
  if (a.endpointId !== b.endpointId) differences.push('endpoint_id');
  if (a.timelineId !== b.timelineId) differences.push('timeline_id');
  if (a.term !== b.term) differences.push(`term (${a.term} → ${b.term})`);
  if (a.profile.cpuMillis !== b.profile.cpuMillis || a.profile.memoryMib !== b.profile.memoryMib) differences.push('profile');
  if (a.safekeeperAddresses.join(',') !== b.safekeeperAddresses.join(',')) differences.push('safekeeper_addresses');
  if (a.pageserverAddress !== b.pageserverAddress) differences.push('pageserver_address');
  if (a.controlPlaneAddress !== b.controlPlaneAddress) differences.push('control_plane_address');
  if (differences.length === 0) differences.push('pg_settings or roles');
  return differences;
}

/** Agents restarted by a driver after they exited unexpectedly. */
export const restartsTotal = counter('spg99_provisioner_compute_restarts_total', 'Agents restarted after they exited unexpectedly');
/** Computes a driver knows, by state. */
export const computesGauge = gauge('spg99_provisioner_computes', 'Computes known to the provisioner, by state', ['state']);

/** Where a compute's agent finds its things: the same flags whichever driver runs it. */
export interface AgentPlacement {
  /** dist/cmd/agent.js where the agent runs. */
  agentScript: string;
  pgDataDir: string;
  pgPort: number;
  /** host:port of the agent's gRPC and metrics endpoints. */
  listen: string;
  metricsListen: string;
  rolesFile: string;
  /** The trust file the agent verifies its callers with, and the file of the token it calls with. */
  trustFile?: string;
  credentialFile?: string;
}

/** How a driver hands computes their identity (docs/security.md). */
export interface ComputeCredentials {
  /** The trust document (public keys), as the agent's --auth-trust-file takes it. */
  trustDocument: string;
  /** A fresh token for a compute: scoped to its timeline, endpoint and compute id, signed by the provisioner. */
  issue(scope: { timelineId: string; endpointId: string; computeId: string }): string;
}

/** The agent's command line (after `node`) for a compute: its spec as flags. */
export function agentArgs(computeId: string, spec: ComputeSpec, placement: AgentPlacement): string[] {
  return [
    '--enable-source-maps',
    placement.agentScript,
    '--compute-id', computeId,
    '--timeline-id', spec.timelineId,
    '--term', String(spec.term),
    '--safekeepers', spec.safekeeperAddresses.join(','),
    '--pageserver', spec.pageserverAddress,
    '--pg-data-dir', placement.pgDataDir,
    '--pg-port', String(placement.pgPort),
    '--listen', placement.listen,
    '--metrics-listen', placement.metricsListen,
    '--endpoint-id', spec.endpointId,
    ...(spec.controlPlaneAddress ? ['--control-plane', spec.controlPlaneAddress] : []),
    '--roles-file', placement.rolesFile,
    ...(placement.trustFile ? ['--auth-trust-file', placement.trustFile] : []),
    ...(placement.credentialFile ? ['--credential-file', placement.credentialFile] : []),
  ];
}

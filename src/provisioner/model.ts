/**
 * The edge between the Provisioner API's protobuf messages and the provisioner's domain: requests are validated
 * here (INVALID_ARGUMENT naming the field), so drivers only see complete, well-formed specs.
 */
import type { Compute as ComputeMessage, ComputeSpec as ComputeSpecMessage, StopComputeRequest } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { StopMode } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { invalidArgument } from '../lib/grpc/errors.js';
import { echo, TIMELINE_ID_PATTERN } from '../lib/ids.js';
import type { ComputeView, ComputeSpec, StopOptions } from './driver.js';

/** Compute ids: `cp-` and 32 lowercase hex digits. */
export const COMPUTE_ID_PATTERN = /^cp-[0-9a-f]{32}$/;
/** Endpoint ids: `ep-` and 32 lowercase hex digits. */
export const ENDPOINT_ID_PATTERN = /^ep-[0-9a-f]{32}$/;
const HOST_PORT_PATTERN = /^[^\s:]+:[0-9]{1,5}$/;
const SETTING_NAME_PATTERN = /^[a-z_][a-z0-9_.]*$/;

/**
 * postgresql.conf settings the agent owns (ports, sockets, the walproposer's WAL settings): the proto makes them
 * non-overridable.
 */
export const AGENT_OWNED_SETTINGS: ReadonlySet<string> = new Set([
  'port',
  'listen_addresses',
  'unix_socket_directories',
  'synchronous_standby_names',
  'synchronous_commit',
  'wal_level',
  'max_wal_senders',
  'max_replication_slots',
  'wal_sender_timeout',
  'hot_standby',
  'archive_mode',
  'archive_command',
  'restore_command',
  'primary_conninfo',
  'data_directory',
  'hba_file',
  'ident_file',
  'config_file',
]);

/** Throws INVALID_ARGUMENT unless `computeId` is a well-formed compute id. */
export function parseComputeId(computeId: string, field = 'compute_id'): string {
  if (!computeId) throw invalidArgument(`${field} is required: cp- followed by 32 lowercase hex digits`);
  if (!COMPUTE_ID_PATTERN.test(computeId)) {
    throw invalidArgument(`${field} must be cp- followed by 32 lowercase hex digits, got ${echo(computeId)}`);
  }
  return computeId;
}

function parseHostPortField(value: string, field: string): string {
  const port = Number(value.slice(value.lastIndexOf(':') + 1));
  if (!HOST_PORT_PATTERN.test(value) || port < 1 || port > 65535) {
    throw invalidArgument(`${field} must be host:port with a port from 1 to 65535 (e.g. 127.0.0.1:7600), got ${echo(value)}`);
  }
  return value;
}

/** Validates a spec into its domain form; every problem names the field. */
export function parseComputeSpec(spec: ComputeSpecMessage | undefined): ComputeSpec {
  if (!spec) throw invalidArgument('spec is required: the endpoint, timeline, term, profile, safekeepers and pageserver of the compute');
  if (!ENDPOINT_ID_PATTERN.test(spec.endpointId)) {
    throw invalidArgument(`spec.endpoint_id must be ep- followed by 32 lowercase hex digits, got ${echo(spec.endpointId)}`);
  }
  if (!TIMELINE_ID_PATTERN.test(spec.timelineId)) {
    throw invalidArgument(`spec.timeline_id must be tl- followed by 32 lowercase hex digits, got ${echo(spec.timelineId)}`);
  }
  if (spec.term < 1n) throw invalidArgument('spec.term must be at least 1: the writer term granted with the compute\'s lease');
  const profile = spec.profile;
  if (!profile) throw invalidArgument('spec.profile is required (cpu_millis and memory_mib)');
  if (profile.cpuMillis < 1) throw invalidArgument(`spec.profile.cpu_millis must be at least 1 (thousandths of a core), got ${profile.cpuMillis}`);
  if (profile.memoryMib < 1) throw invalidArgument(`spec.profile.memory_mib must be at least 1 (MiB), got ${profile.memoryMib}`);
  if (spec.safekeeperAddresses.length === 0) {
    throw invalidArgument('spec.safekeeper_addresses is empty: give every safekeeper of the timeline as host:port');
  }
  spec.safekeeperAddresses.forEach((address, index) => parseHostPortField(address, `spec.safekeeper_addresses[${index}]`));
  if (new Set(spec.safekeeperAddresses).size !== spec.safekeeperAddresses.length) {
    throw invalidArgument(`spec.safekeeper_addresses lists an address twice: ${spec.safekeeperAddresses.join(',')}`);
  }
  if (!spec.pageserverAddress) throw invalidArgument('spec.pageserver_address is required: computes start from the pageserver\'s basebackup');
  parseHostPortField(spec.pageserverAddress, 'spec.pageserver_address');
  if (spec.controlPlaneAddress) parseHostPortField(spec.controlPlaneAddress, 'spec.control_plane_address');
  for (const name of Object.keys(spec.pgSettings)) {
    if (!SETTING_NAME_PATTERN.test(name)) throw invalidArgument(`spec.pg_settings has an invalid setting name ${echo(name)}: lowercase letters, digits, '_' and '.'`);
    if (AGENT_OWNED_SETTINGS.has(name)) {
      throw invalidArgument(`spec.pg_settings.${name} is set by the agent and cannot be overridden: remove it`);
    }
  }
  spec.roles.forEach((role, index) => {
    if (!role.roleName) throw invalidArgument(`spec.roles[${index}].role_name is required`);
    if (!/^SCRAM-SHA-256\$[0-9]+:[^$]+\$[^:]+:.+$/.test(role.scramVerifier)) {
      throw invalidArgument(`spec.roles[${index}].scram_verifier (role ${echo(role.roleName)}) must be SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`);
    }
  });
  return {
    endpointId: spec.endpointId,
    timelineId: spec.timelineId,
    term: spec.term,
    profile: { cpuMillis: profile.cpuMillis, memoryMib: profile.memoryMib },
    safekeeperAddresses: [...spec.safekeeperAddresses],
    pageserverAddress: spec.pageserverAddress,
    controlPlaneAddress: spec.controlPlaneAddress,
    pgSettings: { ...spec.pgSettings },
    roles: spec.roles.map((role) => ({ roleName: role.roleName, scramVerifier: role.scramVerifier })),
  };
}

/** The stop options of a request; `defaultGraceMs` when it sets no grace period. */
export function parseStopOptions(request: StopComputeRequest, defaultGraceMs: number): StopOptions {
  if (request.mode !== StopMode.STOP_MODE_UNSPECIFIED && request.mode !== StopMode.STOP_MODE_GRACEFUL && request.mode !== StopMode.STOP_MODE_KILL) {
    throw invalidArgument(`mode must be STOP_MODE_GRACEFUL or STOP_MODE_KILL, got ${request.mode}`);
  }
  let graceMs = defaultGraceMs;
  if (request.gracePeriod) {
    const ms = Number(request.gracePeriod.seconds) * 1000 + Math.floor(request.gracePeriod.nanos / 1e6);
    if (!Number.isFinite(ms) || ms < 0) throw invalidArgument('grace_period must not be negative');
    graceMs = ms;
  }
  return { kill: request.mode === StopMode.STOP_MODE_KILL, graceMs };
}

/** A compute as the API shows it. */
export function toComputeMessage(view: ComputeView): ComputeMessage {
  return {
    computeId: view.computeId,
    spec: { ...view.spec, profile: { ...view.spec.profile }, roles: view.spec.roles.map((role) => ({ ...role })) },
    state: view.state,
    reason: view.reason,
    postgresAddress: view.postgresAddress,
    agentAddress: view.agentAddress,
    driver: view.driver,
    startedAt: view.startedAt,
    stateChangedAt: view.stateChangedAt,
    restartCount: view.restartCount,
  };
}

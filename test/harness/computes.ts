/**
 * Computes under test: the agent (walproposer + Postgres) started through the harness, on free ports, in the
 * harness' temporary directories. A compute whose agent was killed leaves its Postgres running: the harness stops
 * that one too.
 */
import { computeIdentityArgs } from './credentials.js';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { createSpgClient, openChannel, type SpgClient } from '../../src/lib/grpc/client.js';
import { freePort } from '../../src/lib/net.js';
import type { ComponentProcess, Harness, LogLine } from './process.js';
import type { SafekeeperNode } from './safekeepers.js';

/** Options of a compute start. */
export interface ComputeOptions {
  timelineId: string;
  term: number;
  safekeepers: readonly SafekeeperNode[];
  computeId?: string;
  /** Reuse a data directory (a restart, or a new writer on an old one); a new one otherwise. */
  pgDataDir?: string;
  /** host:port of the pageserver to start from (with an empty data directory). */
  pageserver?: string;
  /** The data directory is a cache of a clean stop at this LSN (--cached-data-lsn). */
  cachedDataLsn?: bigint;
  /** Wait for "agent ready" (default true). */
  waitReady?: boolean;
  /** Create the timeline on safekeepers that lack it (--create-timeline). */
  createTimeline?: boolean;
  /** The endpoint it serves (--endpoint-id). */
  endpointId?: string;
  /** host:port of the control plane's internal service (--control-plane): lease renewal and reports. */
  controlPlane?: string;
  /** --lease-ttl-s and --report-interval-s. */
  leaseTtlS?: number;
  reportIntervalS?: number;
  /** Roles the agent creates before it is ready, written to a 0600 file for --roles-file. */
  roles?: Array<{ roleName: string; scramVerifier: string }>;
  env?: NodeJS.ProcessEnv;
}

let computes = 0;

/** A compute (agent + Postgres) under test. */
export class ComputeNode {
  readonly client: SpgClient<typeof ComputeServiceDefinition>;

  private constructor(
    readonly computeId: string,
    readonly process: ComponentProcess,
    readonly pgDataDir: string,
    readonly pgPort: number,
    readonly grpcPort: number,
    harness: Harness,
  ) {
    const channel = openChannel(`127.0.0.1:${grpcPort}`);
    this.client = createSpgClient(ComputeServiceDefinition, channel);
    harness.defer(() => channel.close());
  }

  /** Starts the agent; waits for "agent ready" unless told not to. */
  static async start(harness: Harness, options: ComputeOptions): Promise<ComputeNode> {
    computes += 1;
    const computeId = options.computeId ?? `compute-${computes}`;
    const directory = harness.tempDir(computeId).path;
    const pgDataDir = options.pgDataDir ?? path.join(directory, 'pgdata');
    const [pgPort, grpcPort] = [await freePort(), await freePort()];
    let rolesFile: string | undefined;
    if (options.roles) {
      rolesFile = path.join(directory, 'roles.json');
      fs.writeFileSync(rolesFile, JSON.stringify(options.roles), { mode: 0o600 });
    }
    const args = [
      '--compute-id', computeId,
      '--timeline-id', options.timelineId,
      '--term', String(options.term),
      '--safekeepers', options.safekeepers.map((node) => node.address).join(','),
      ...(options.cachedDataLsn !== undefined ? ['--cached-data-lsn', options.cachedDataLsn.toString()] : []),
      '--pg-data-dir', pgDataDir,
      '--pg-port', String(pgPort),
      '--listen', `127.0.0.1:${grpcPort}`,
      '--metrics-listen', '127.0.0.1:0',
      ...(options.pageserver ? ['--pageserver', options.pageserver] : []),
      ...(options.createTimeline ? ['--create-timeline'] : []),
      ...(options.endpointId ? ['--endpoint-id', options.endpointId] : []),
      ...(options.controlPlane ? ['--control-plane', options.controlPlane] : []),
      ...(options.leaseTtlS !== undefined ? ['--lease-ttl-s', String(options.leaseTtlS)] : []),
      ...(options.reportIntervalS !== undefined ? ['--report-interval-s', String(options.reportIntervalS)] : []),
      ...(rolesFile ? ['--roles-file', rolesFile] : []),
      // Its own token, as the provisioner issues one: scoped to its timeline (and endpoint).
      ...computeIdentityArgs(directory, { timelineId: options.timelineId, computeId, ...(options.endpointId ? { endpointId: options.endpointId } : {}) }),
    ];
    const child = harness.spawn('agent', args, { label: computeId, env: options.env, stopFirst: true });
    const node = new ComputeNode(computeId, child, pgDataDir, pgPort, grpcPort, harness);
    // Cleanups run before processes stop: only an orphaned Postgres (its agent killed) is killed here, never one
    // a later compute started in the same data directory.
    harness.defer(() => {
      const pid = node.postmasterPid();
      if (!pid || !child.exited) return;
      const parent = parentPid(pid);
      if (!harness.started.some((other) => !other.exited && other.pid === parent)) process.kill(pid, 'SIGKILL');
    });
    await child.waitForLine((line) => line.msg === 'agent serving; starting the compute', { what: '"agent serving"' });
    if (options.waitReady ?? true) await node.waitReady();
    return node;
  }

  /**
   * A node-postgres client of its Postgres, connected (end it; errors of connections cut on purpose are ignored): as
   * a role with its password over TCP, or by default as the superuser `postgres` over the compute's private Unix
   * socket (peer authentication as the agent's OS user, which tests share; TCP never trusts the superuser).
   */
  async connect(login?: { user: string; password: string }): Promise<pg.Client> {
    return login ? connectPostgres(`127.0.0.1:${this.pgPort}`, login) : connectSuperuser(this.pgPort);
  }

  /** The postmaster's pid from its data directory, or null once it is gone. */
  postmasterPid(): number | null {
    try {
      const pid = Number(fs.readFileSync(path.join(this.pgDataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 0);
      return pid;
    } catch {
      return null;
    }
  }

  /** Waits for the agent's "agent ready" line. */
  waitReady(timeoutMs = 90_000): Promise<LogLine> {
    return this.process.waitForLine((line) => line.msg === 'agent ready', { what: '"agent ready"', timeoutMs });
  }
}

/** A client of the Postgres at `address` (host:port) as a role with its password, over TCP, connected. */
export async function connectPostgres(address: string, login: { user: string; password: string }): Promise<pg.Client> {
  const [host, port] = address.split(':');
  const client = new pg.Client({ host, port: Number(port), ...login, database: 'postgres', connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/**
 * The directory of the Unix socket of the Postgres listening on TCP `port` on this machine (from /proc/net/unix: a
 * compute's socket directory is a private temporary one), or null when none is bound.
 */
export function postgresSocketDir(port: number): string | null {
  const suffix = `/.s.PGSQL.${port}`;
  for (const line of fs.readFileSync('/proc/net/unix', 'utf8').split('\n')) {
    const socketPath = line.trim().split(/\s+/)[7];
    if (socketPath?.endsWith(suffix)) return socketPath.slice(0, -suffix.length);
  }
  return null;
}

/** A client of the compute Postgres on TCP `port` as the superuser `postgres`, over its Unix socket, connected. */
export async function connectSuperuser(port: number): Promise<pg.Client> {
  const socketDir = postgresSocketDir(port);
  if (!socketDir) throw new Error(`no Postgres Unix socket for port ${port} on this machine`);
  const client = new pg.Client({ host: socketDir, port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** The parent of process `pid` (from /proc), or null when it is gone. */
function parentPid(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

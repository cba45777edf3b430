/**
 * A test environment of real components: safekeepers and computes (agent + Postgres) on free ports in temporary
 * directories. `teardown()` stops everything (also Postgres left behind by a killed agent), removes the
 * directories, and fails when a component logged an ERROR the test did not expect.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { ComponentProcess, makeTempDir, type LogLine } from './component.js';
import { createSpgClient, openChannel, type SpgClient } from '../../src/lib/grpc/client.js';
import { SafekeeperServiceDefinition } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { freePort } from '../../src/lib/net.js';

/** A new random timeline id. */
export function newTimelineId(): string {
  return `tl-${randomBytes(16).toString('hex')}`;
}

/** A safekeeper under test. */
export class SafekeeperNode {
  process: ComponentProcess;
  /** Processes of this safekeeper before restarts (their logs are checked at teardown too). */
  readonly earlier: ComponentProcess[] = [];
  readonly client: SpgClient<typeof SafekeeperServiceDefinition>;

  constructor(
    readonly id: string,
    readonly dataDir: string,
    readonly port: number,
    process: ComponentProcess,
  ) {
    this.process = process;
    this.client = createSpgClient(SafekeeperServiceDefinition, openChannel(this.address));
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  static async start(id: string, dataDir: string, port: number): Promise<SafekeeperNode> {
    const child = new ComponentProcess(id, 'safekeeper', ['--id', id, '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--metrics-listen', '127.0.0.1:0']);
    await child.waitForLine((line) => line.msg === 'safekeeper ready', 'safekeeper ready');
    return new SafekeeperNode(id, dataDir, port, child);
  }

  /** Starts it again from its data directory, on the same port. */
  async restart(): Promise<void> {
    if (!this.process.exited) await this.process.stop();
    const previous = this.process;
    const child = new ComponentProcess(this.id, 'safekeeper', previous.args);
    child.expectedErrors.push(...previous.expectedErrors);
    this.earlier.push(previous);
    this.process = child;
    await child.waitForLine((line) => line.msg === 'safekeeper ready', 'safekeeper ready');
  }

  kill9(): Promise<void> {
    return this.process.kill9();
  }

  stop(): Promise<unknown> {
    return this.process.stop();
  }
}

/** A compute (agent + Postgres) under test. */
export class ComputeNode {
  readonly client: SpgClient<typeof ComputeServiceDefinition>;

  constructor(
    readonly computeId: string,
    readonly process: ComponentProcess,
    readonly pgDataDir: string,
    readonly pgPort: number,
    readonly grpcPort: number,
  ) {
    this.client = createSpgClient(ComputeServiceDefinition, openChannel(`127.0.0.1:${grpcPort}`));
  }

  /** A node-postgres client of its Postgres (connected; end it). */
  async connect(): Promise<pg.Client> {
    const client = new pg.Client({ host: '127.0.0.1', port: this.pgPort, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 10_000 });
    await client.connect();
    return client;
  }

  /** The postmaster's pid, from its data directory (null once it is gone). */
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
  async waitReady(timeoutMs = 90_000): Promise<LogLine> {
    return this.process.waitForLine((line) => line.msg === 'agent ready', 'agent ready', timeoutMs);
  }
}

/** Options of a compute start. */
export interface ComputeStartOptions {
  timelineId: string;
  term: number;
  safekeepers: SafekeeperNode[] | string[];
  computeId?: string;
  /** Reuse a data directory (a restart); a new one otherwise. */
  pgDataDir?: string;
  /** Wait for "agent ready" (default true). */
  waitReady?: boolean;
  createTimeline?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Everything one test started. */
export class TestEnv {
  readonly root = makeTempDir('env');
  readonly safekeepers: SafekeeperNode[] = [];
  readonly computes: ComputeNode[] = [];
  private counter = 0;

  /** Starts `count` safekeepers. */
  async startSafekeepers(count: number): Promise<SafekeeperNode[]> {
    const started = await Promise.all(
      Array.from({ length: count }, async () => {
        this.counter += 1;
        const id = `sk-${this.counter}`;
        const node = await SafekeeperNode.start(id, path.join(this.root, id), await freePort());
        this.safekeepers.push(node);
        return node;
      }),
    );
    return started;
  }

  /** Creates `timelineId` on the given safekeepers. */
  async createTimeline(timelineId: string, safekeepers: SafekeeperNode[] = this.safekeepers): Promise<void> {
    await Promise.all(safekeepers.map((node) => node.client.createTimeline({ timelineId })));
  }

  /** Starts a compute; waits until it is ready unless told not to. */
  async startCompute(options: ComputeStartOptions): Promise<ComputeNode> {
    this.counter += 1;
    const computeId = options.computeId ?? `compute-${this.counter}`;
    const pgDataDir = options.pgDataDir ?? path.join(this.root, computeId, 'pgdata');
    const pgPort = await freePort();
    const grpcPort = await freePort();
    const addresses = options.safekeepers.map((node) => (typeof node === 'string' ? node : node.address));
    const args = [
      '--compute-id', computeId,
      '--timeline-id', options.timelineId,
      '--term', String(options.term),
      '--safekeepers', addresses.join(','),
      '--pg-data-dir', pgDataDir,
      '--pg-port', String(pgPort),
      '--listen', `127.0.0.1:${grpcPort}`,
    ];
    if (options.createTimeline) args.push('--create-timeline');
    const child = new ComponentProcess(computeId, 'agent', args, options.env);
    const node = new ComputeNode(computeId, child, pgDataDir, pgPort, grpcPort);
    this.computes.push(node);
    await child.waitForLine((line) => line.msg === 'agent serving; starting the compute', 'agent serving');
    if (options.waitReady ?? true) await node.waitReady();
    return node;
  }

  /** Stops everything, removes the directories, and throws if a component logged an unexpected error. */
  async teardown(): Promise<void> {
    await Promise.allSettled(this.computes.map((node) => node.process.stop()));
    for (const node of this.computes) {
      // A killed agent leaves its Postgres running: stop it too.
      const pid = node.postmasterPid();
      if (pid) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    }
    await Promise.allSettled(this.safekeepers.map((node) => node.process.stop()));
    const problems: string[] = [];
    const processes = [
      ...this.computes.map((node) => node.process),
      ...this.safekeepers.flatMap((node) => [...node.earlier, node.process]),
    ];
    for (const child of processes) {
      for (const line of child.unexpectedErrors()) problems.push(`${child.name}: ${JSON.stringify(line)}`);
    }
    fs.rmSync(this.root, { recursive: true, force: true });
    if (problems.length > 0) throw new Error(`components logged unexpected errors:\n${problems.join('\n')}`);
  }
}

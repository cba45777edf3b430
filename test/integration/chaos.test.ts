/**
 * Durability under faults, end to end: two clients write through the gateway (one in session mode, one through the
 * transaction pooler) while the test kills with SIGKILL, one at a time and at a random moment, a safekeeper, the
 * pageserver, the compute (its agent and Postgres), the gateway and the control plane, and restarts each. Every
 * transaction inserts three rows of one id; a client records it acknowledged only when COMMIT answered. At the end
 * every acknowledged id has exactly its three rows, no id has a part of them, nothing appears that was never sent,
 * the database takes writes, and a branch at the end (a compute started from the pageserver's history alone) holds
 * the same rows.
 *
 * A sixth kill wipes a safekeeper's disk: it comes back empty and must catch up from its peers (the control plane
 * counts three safekeepers in sync again) before the test goes on. A second test keeps one safekeeper dead for the
 * whole run while the endpoint is stopped and woken by the clients, and its compute killed: every step needs only
 * a majority.
 *
 * Every component's ERROR lines are checked: only those a kill explains are allowed (EXPLAINED_ERRORS). The order
 * of the kills and their moments come from a seed, printed with the counts. A fixed set of seeds runs by default
 * (CHAOS_SEEDS, one per test to keep `make test` short); SPG99_CHAOS_SEED replays one, SPG99_CHAOS_ROUNDS sets how
 * many times the kills run (2 by default).
 */
import fs from 'node:fs';
import { expect } from 'chai';
import pg from 'pg';
import { EndpointState, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { useHarness, waitFor } from '../harness/process.js';
import { controlPlaneMetric, startGatewayPlatform, type Platform } from '../harness/platform.js';
import type { GatewayNode } from '../harness/gateway.js';
import type { ControlPlaneClient } from '../harness/control-plane.js';
import { postmasterPid } from '../../src/provisioner/process-driver.js';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';

/** A small seeded generator (mulberry32): the same seed gives the same kills at the same moments. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The seeds each test runs with unless SPG99_CHAOS_SEED names one. */
const CHAOS_SEEDS = { kills: 20261202, deadSafekeeper: 1313 };

function seedFor(test: keyof typeof CHAOS_SEEDS): number {
  return Number(process.env.SPG99_CHAOS_SEED ?? CHAOS_SEEDS[test]);
}

/**
 * The ERROR lines a kill explains, by target; any other ERROR a component logs fails the test. A killed compute's
 * agent and Postgres are gone mid-stream; the others only warn while a peer is down.
 */
const EXPLAINED_ERRORS: Record<string, RegExp[]> = {
  compute: [/Postgres exited unexpectedly/, /the replication stream from Postgres failed/, /the compute did not start/],
  safekeeper: [],
  'safekeeper wiped': [],
  pageserver: [],
  gateway: [],
  'control plane': [],
};

/** What one writer saw: the ids whose COMMIT answered, and those whose outcome it cannot know. */
interface Ledger {
  acknowledged: Set<number>;
  unknown: Set<number>;
  errors: Map<string, number>;
}

/**
 * A client that inserts one id's three rows per transaction, over and over, reconnecting whenever its connection
 * fails, until stopped. Ids come from `nextId` (shared by the writers, so every id is sent once).
 */
class Writer {
  readonly ledger: Ledger = { acknowledged: new Set(), unknown: new Set(), errors: new Map() };
  private stopped = false;
  private client: pg.Client | null = null;
  private readonly done: Promise<void>;

  constructor(
    readonly name: string,
    private readonly config: pg.ClientConfig,
    private readonly nextId: () => number,
  ) {
    this.done = this.run();
  }

  private async run(): Promise<void> {
    let backoffMs = 50;
    while (!this.stopped) {
      if (!this.client) {
        const client = new pg.Client({ ...this.config, connectionTimeoutMillis: 30_000, query_timeout: 60_000 });
        client.on('error', () => undefined);
        try {
          await client.connect();
          this.client = client;
          backoffMs = 50;
        } catch (error) {
          this.note(error);
          await client.end().catch(() => undefined);
          await delay(backoffMs);
          backoffMs = Math.min(backoffMs * 2, 1000);
          continue;
        }
      }
      const id = this.nextId();
      try {
        // One simple-protocol message: three rows in two statements, one transaction.
        await this.client.query(`BEGIN; INSERT INTO chaos VALUES (${id}, 1), (${id}, 2); INSERT INTO chaos VALUES (${id}, 3); COMMIT`);
        this.ledger.acknowledged.add(id);
      } catch (error) {
        this.ledger.unknown.add(id);
        this.note(error);
        const failed = this.client;
        this.client = null;
        await failed.end().catch(() => undefined);
      }
    }
    await this.client?.end().catch(() => undefined);
  }

  private note(error: unknown): void {
    const message = error instanceof Error ? error.message.replace(/[0-9]+/g, 'N').slice(0, 100) : String(error);
    this.ledger.errors.set(message, (this.ledger.errors.get(message) ?? 0) + 1);
  }

  /** Resolves once `count` more transactions were acknowledged (the database takes writes again). */
  async progress(count: number, what: string): Promise<void> {
    const target = this.ledger.acknowledged.size + count;
    await waitFor(() => this.ledger.acknowledged.size >= target, { what: `${count} more commits by the ${this.name} writer ${what}`, timeoutMs: 180_000, intervalMs: 50 });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

/**
 * Creates the chaos table and two writers through the gateway (session mode and the transaction pooler) sharing one
 * id sequence; `progress` resolves once each has made 20 more commits.
 */
async function startWriters(gateway: GatewayNode, endpointId: string, owner: Parameters<GatewayNode['clientConfig']>[1]) {
  const setup = await gateway.connect(endpointId, owner);
  await setup.query('CREATE TABLE chaos (id int NOT NULL, part int NOT NULL)');
  await setup.end();
  let sent = 0;
  const nextId = () => ++sent;
  const writers = [
    new Writer('session', gateway.clientConfig(endpointId, owner), nextId),
    new Writer('pooled', gateway.clientConfig(endpointId, { ...owner, pooled: true }), nextId),
  ];
  const progress = (what: string) => Promise.all(writers.map((writer) => writer.progress(20, what)));
  return { writers, progress };
}

/** A component the test kills and brings back. */
interface Target {
  name: string;
  kill(): Promise<void>;
  restart(): Promise<void>;
}

/** Resolves once the control plane counts `count` safekeepers in sync on the timeline. */
async function safekeepersInSync(platform: Platform, timelineId: string, count: number): Promise<void> {
  await waitFor(async () => (await controlPlaneMetric(platform, 'spg99_control_plane_timeline_safekeepers_in_sync', `timeline_id="${timelineId}"`)) === count, {
    what: `${count} safekeepers in sync on ${timelineId}`,
    timeoutMs: 240_000,
    intervalMs: 500,
  });
}

function targets(platform: Platform, gateway: GatewayNode, api: ControlPlaneClient, endpointId: string, timelineId: string, pick: () => number): Target[] {
  let safekeeper = 0;
  let wiped = 0;
  return [
    {
      name: 'safekeeper',
      async kill() {
        safekeeper = Math.floor(pick() * platform.safekeepers.length);
        await platform.safekeepers[safekeeper].kill9();
      },
      restart: () => platform.safekeepers[safekeeper].restart(),
    },
    {
      // A lost disk: the safekeeper returns empty, and the control plane has it pull the timeline from its peers.
      name: 'safekeeper wiped',
      async kill() {
        wiped = Math.floor(pick() * platform.safekeepers.length);
        const node = platform.safekeepers[wiped];
        await node.kill9();
        fs.rmSync(node.dataDir, { recursive: true, force: true });
        fs.mkdirSync(node.dataDir, { recursive: true });
      },
      async restart() {
        await platform.safekeepers[wiped].restart();
        // Redundancy is back before anything else is killed: one more loss must not be a second copy gone.
        await safekeepersInSync(platform, timelineId, 3);
      },
    },
    {
      name: 'pageserver',
      kill: async () => void (await platform.pageserver.process.kill9()),
      restart: () => platform.pageserver.restart(),
    },
    {
      name: 'compute',
      async kill() {
        const { endpoint } = await api.getEndpoint({ endpointId });
        const computeId = endpoint!.currentComputeId;
        expect(computeId, 'a running compute to kill').to.match(/^cp-/);
        const postmaster = postmasterPid(platform.provisioner.pgDataDir(computeId));
        const agents = platform.provisioner.agentPids();
        expect(agents, 'its agent').to.have.length(1);
        for (const pid of [...agents, ...(postmaster === null ? [] : [postmaster])]) process.kill(pid, 'SIGKILL');
      },
      // The provisioner and the control plane bring it back: a new compute under a higher term.
      restart: async () => undefined,
    },
    {
      name: 'gateway',
      kill: async () => void (await gateway.process.kill9()),
      restart: () => gateway.restart(),
    },
    {
      name: 'control plane',
      kill: async () => void (await platform.controlPlane.process.kill9()),
      restart: () => platform.controlPlane.restart(),
    },
  ];
}

describe('durability under faults (SIGKILL of each component under a write load; real processes)', function () {
  this.timeout(900_000);
  const harness = useHarness();



  it('keeps every acknowledged transaction, exactly once and whole, through a kill of each component', async () => {
    const h = harness();
    const seed = seedFor('kills');
    const rounds = Number(process.env.SPG99_CHAOS_ROUNDS ?? 2);
    const pick = random(seed);
    const { platform, gateway, api, project, endpointId, owner } = await startGatewayPlatform(h, {
      poolerMode: PoolerMode.POOLER_MODE_TRANSACTION,
      controlPlaneArgs: ['--writer-lease-ttl-s', '5'],
    });
    const timelineId = project.defaultEndpoint!.branchId;

    const { writers, progress } = await startWriters(gateway, endpointId, owner);
    const survived: string[] = [];
    try {
      await progress('before the first kill');
      for (let round = 0; round < rounds; round++) {
        const order = targets(platform, gateway, api, endpointId, timelineId, pick)
          .map((target) => ({ target, key: pick() }))
          .sort((a, b) => a.key - b.key)
          .map(({ target }) => target);
        for (const target of order) {
          // A random moment under load, and a random time down.
          await delay(200 + pick() * 2000);
          // Set before the kill: the harness' guard allows what this kill explains from now on.
          h.expectedErrors.push(...(EXPLAINED_ERRORS[target.name] ?? []));
          await target.kill();
          const killedAt = Date.now();
          await delay(pick() * 2000);
          await target.restart();
          await progress(`after the ${target.name} was killed`);
          survived.push(`${target.name} ${((Date.now() - killedAt) / 1000).toFixed(1)}s`);
        }
      }
    } finally {
      await Promise.all(writers.map((writer) => writer.stop()));
    }

    const acknowledged = new Set(writers.flatMap((writer) => [...writer.ledger.acknowledged]));
    const unknown = new Set(writers.flatMap((writer) => [...writer.ledger.unknown]));
    const errors = writers.flatMap((writer) => [...writer.ledger.errors].map(([message, count]) => `${writer.name}: ${count}× ${message}`));

    /** id → the parts present, from a connection through the gateway to `endpoint`. */
    async function present(endpoint: string): Promise<Map<number, number[]>> {
      const client = await gateway.connect(endpoint, owner);
      try {
        const { rows } = await client.query<{ id: number; parts: number[] }>('SELECT id, array_agg(part ORDER BY part) AS parts FROM chaos GROUP BY id');
        await client.query(`INSERT INTO chaos VALUES (0, 0)`);
        return new Map(rows.map((row) => [row.id, row.parts]));
      } finally {
        await client.end();
      }
    }

    const rows = await present(endpointId);
    const missing = [...acknowledged].filter((id) => JSON.stringify(rows.get(id)) !== '[1,2,3]');
    const torn = [...rows].filter(([, parts]) => JSON.stringify(parts) !== '[1,2,3]');
    const invented = [...rows.keys()].filter((id) => !acknowledged.has(id) && !unknown.has(id));
    const committedUnacknowledged = [...rows.keys()].filter((id) => unknown.has(id)).length;

    // The pageserver's history alone: a branch at the end of the WAL, started from a basebackup.
    const branched = await api.createBranch({ projectId: project.project!.projectId, name: 'after-chaos', parentBranchId: '', createEndpoint: true });
    const branchRows = await present(branched.endpoint!.endpointId);
    const branchMissing = [...acknowledged].filter((id) => JSON.stringify(branchRows.get(id)) !== '[1,2,3]');

    process.stdout.write(
      `      chaos seed=${seed} acknowledged=${acknowledged.size} present=${rows.size} ` +
        `unknown_outcome=${unknown.size} (committed ${committedUnacknowledged}) kills_survived=${survived.length} ` +
        `(each with the time from the kill to 20 more commits by each client: ${survived.join(', ')})\n      client errors: ${errors.join(' | ') || 'none'}\n`,
    );
    expect(missing, `acknowledged ids without their three rows (seed ${seed})`).to.deep.equal([]);
    expect(torn, `ids with a part of their rows or a row twice (seed ${seed})`).to.deep.equal([]);
    expect(invented, 'ids no client sent').to.deep.equal([]);
    expect(branchMissing, `acknowledged ids missing on a branch at the end (seed ${seed})`).to.deep.equal([]);
    expect(survived).to.have.length(6 * rounds);
    // A client connecting while its compute is replaced waits for the new one instead of being refused.
    expect(errors.filter((error) => error.includes("cannot connect to the endpoint's database"))).to.deep.equal([]);
    expect(acknowledged.size).to.be.greaterThan(40 * (6 * rounds + 1));

    // No component died on its own: each one the test killed was replaced, the rest still run.
    const alive = [gateway, platform.controlPlane, platform.pageserver, platform.provisioner, ...platform.safekeepers].map((node) => node.process);
    for (const child of alive) expect(child.exited, `${child.label} exited: ${child.tail(20)}`).to.equal(false);
    expect((await api.getEndpoint({ endpointId })).endpoint?.state).to.equal(EndpointState.ENDPOINT_STATE_RUNNING);
  });

  it('keeps every acknowledged transaction with one safekeeper dead for the whole run, while the endpoint stops, wakes and loses its compute', async () => {
    const h = harness();
    const seed = seedFor('deadSafekeeper');
    const rounds = Number(process.env.SPG99_CHAOS_ROUNDS ?? 2);
    const pick = random(seed);
    let dead = 0;
    const { platform, gateway, api, endpointId, owner } = await startGatewayPlatform(h, {
      poolerMode: PoolerMode.POOLER_MODE_TRANSACTION,
      controlPlaneArgs: ['--writer-lease-ttl-s', '5'],
      // A loaded machine starts a compute from a basebackup slower than the default minute.
      gatewayArgs: ['--wake-timeout-s', '180'],
      // Dead before the project exists: its timeline is never on that safekeeper.
      beforeProject: async (started) => {
        dead = Math.floor(pick() * started.safekeepers.length);
        await started.safekeepers[dead].kill9();
      },
    });
    h.expectedErrors.push(...EXPLAINED_ERRORS.compute!);

    const { writers, progress } = await startWriters(gateway, endpointId, owner);
    const computes = new Set<string>();
    const events: string[] = [];
    try {
      await progress('before the first stop');
      for (let round = 0; round < rounds; round++) {
        // A stop under load: the clients' next connections wake the endpoint again, on a new compute.
        await delay(200 + pick() * 2000);
        const before = (await api.getEndpoint({ endpointId })).endpoint!.currentComputeId;
        computes.add(before);
        await waitFor(
          async () => {
            try {
              await api.stopEndpoint({ endpointId });
              return true;
            } catch (error) {
              // Still starting (woken by a client): stopped once it runs.
              if (error instanceof ClientError && error.code === Status.FAILED_PRECONDITION) return false;
              throw error;
            }
          },
          { what: 'StopEndpoint accepted', timeoutMs: 180_000, intervalMs: 200 },
        );
        const stoppedAt = Date.now();
        await progress(`after stop ${round + 1}`);
        events.push(`stop+wake ${((Date.now() - stoppedAt) / 1000).toFixed(1)}s`);

        // The compute killed: replaced under a higher term, elected by the two safekeepers left.
        await delay(200 + pick() * 2000);
        const { endpoint } = await api.getEndpoint({ endpointId });
        computes.add(endpoint!.currentComputeId);
        const postmaster = postmasterPid(platform.provisioner.pgDataDir(endpoint!.currentComputeId));
        for (const pid of [...platform.provisioner.agentPids(), ...(postmaster === null ? [] : [postmaster])]) process.kill(pid, 'SIGKILL');
        const killedAt = Date.now();
        await progress(`after compute kill ${round + 1}`);
        events.push(`compute kill ${((Date.now() - killedAt) / 1000).toFixed(1)}s`);
      }
    } finally {
      await Promise.all(writers.map((writer) => writer.stop()));
    }
    computes.add((await api.getEndpoint({ endpointId })).endpoint!.currentComputeId);

    const acknowledged = new Set(writers.flatMap((writer) => [...writer.ledger.acknowledged]));
    const unknown = new Set(writers.flatMap((writer) => [...writer.ledger.unknown]));
    const client = await gateway.connect(endpointId, owner);
    const { rows } = await client.query<{ id: number; parts: number[] }>('SELECT id, array_agg(part ORDER BY part) AS parts FROM chaos GROUP BY id');
    await client.end();
    const present = new Map(rows.map((row) => [row.id, row.parts]));
    const missing = [...acknowledged].filter((id) => JSON.stringify(present.get(id)) !== '[1,2,3]');
    const torn = [...present].filter(([, parts]) => JSON.stringify(parts) !== '[1,2,3]');
    const invented = [...present.keys()].filter((id) => !acknowledged.has(id) && !unknown.has(id));
    process.stdout.write(
      `      chaos (safekeeper ${dead + 1} dead) seed=${seed} acknowledged=${acknowledged.size} present=${present.size} unknown_outcome=${unknown.size} ` +
        `computes=${computes.size} (${events.join(', ')})\n`,
    );
    expect(missing, `acknowledged ids without their three rows (seed ${seed})`).to.deep.equal([]);
    expect(torn, `ids with a part of their rows or a row twice (seed ${seed})`).to.deep.equal([]);
    expect(invented, 'ids no client sent').to.deep.equal([]);
    // Each stop and each kill gave the endpoint a new compute.
    expect(computes.size).to.be.at.least(2 * rounds + 1);
    expect(platform.safekeepers[dead].process.exited).to.equal(true);
  });
});

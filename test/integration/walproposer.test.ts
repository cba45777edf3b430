/**
 * The walproposer with real Postgres, real safekeepers and the real agent: commits wait for a majority, survive
 * the loss of a minority, and a superseded writer is fenced and stopped.
 */
import { expect } from 'chai';
import type pg from 'pg';
import { useHarness, waitFor, grpcHealthStatus, HealthCheckResponse_ServingStatus } from '../harness/process.js';
import { createTimeline, newTimelineId, readWal, startSafekeepers, type SafekeeperNode } from '../harness/safekeepers.js';
import { ComputeNode } from '../harness/computes.js';
import { reflectedServices } from '../harness/reflection.js';
import { openChannel } from '../../src/lib/grpc/client.js';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { ComputeState } from '../../gen/spg99/compute/v1/compute.js';
import type { TimelineStatus } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { formatLsn, parseLsn, type Lsn } from '../../src/lib/lsn.js';

async function sessionLsn(client: pg.Client): Promise<Lsn> {
  const result = await client.query<{ lsn: string }>('SELECT pg_current_wal_flush_lsn()::text AS lsn');
  return parseLsn(result.rows[0].lsn);
}

/** True once some backend waits for the synchronous standby (the walproposer) to confirm its commit. */
async function commitWaitsForQuorum(observer: pg.Client): Promise<boolean> {
  const result = await observer.query(`SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'`);
  return (result.rowCount ?? 0) > 0;
}

/** Every safekeeper holds the same term history; returns their statuses. */
async function expectTermHistoriesAgree(nodes: readonly SafekeeperNode[], timelineId: string): Promise<TimelineStatus[]> {
  const statuses = await Promise.all(nodes.map((node) => node.status(timelineId)));
  for (const status of statuses) expect(status.termHistory).to.deep.equal(statuses[0].termHistory);
  return statuses;
}

async function healthOf(address: string): Promise<HealthCheckResponse_ServingStatus> {
  const channel = openChannel(address);
  try {
    return await grpcHealthStatus(channel);
  } finally {
    channel.close();
  }
}

describe('walproposer (agent + Postgres + three safekeepers)', function () {
  this.timeout(180_000);
  const harness = useHarness();
  let timelineId: string;
  let safekeepers: SafekeeperNode[];
  const clients: pg.Client[] = [];

  async function connect(compute: ComputeNode): Promise<pg.Client> {
    const client = await compute.connect();
    clients.push(client);
    return client;
  }

  function startCompute(options: { term: number; pgDataDir?: string; waitReady?: boolean }): Promise<ComputeNode> {
    return ComputeNode.start(harness(), { timelineId, safekeepers, ...options });
  }

  beforeEach(async () => {
    timelineId = newTimelineId();
    safekeepers = await startSafekeepers(harness(), 3);
    await createTimeline(safekeepers, timelineId);
  });

  afterEach(async () => {
    await Promise.allSettled(clients.splice(0).map((client) => client.end()));
  });

  it('answers health and lists its services through reflection (agent and safekeepers)', async () => {
    const compute = await startCompute({ term: 1 });
    const agentAddress = `127.0.0.1:${compute.grpcPort}`;
    expect(await healthOf(agentAddress)).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    expect(await reflectedServices(agentAddress)).to.include.members(['spg99.compute.v1.ComputeService', 'grpc.health.v1.Health']);
    for (const node of safekeepers) {
      expect(await healthOf(node.address)).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      expect(await reflectedServices(node.address)).to.include.members(['spg99.safekeeper.v1.SafekeeperService', 'grpc.health.v1.Health']);
    }
    const status = await compute.client.getStatus({});
    expect(status.state).to.equal(ComputeState.COMPUTE_STATE_RUNNING);
    expect(status.term).to.equal(1n);
    expect(Object.keys(status.startPhaseSeconds)).to.include.members(['election', 'postgres_start', 'sync_safekeepers']);
  });

  it('reports activity, and a Stop puts the final checkpoint on a majority and returns its LSN', async () => {
    const compute = await startCompute({ term: 1 });
    const client = await connect(compute);
    await client.query('CREATE TABLE t (x int)');
    await client.query('INSERT INTO t VALUES (1)');
    const metrics = await compute.client.getMetrics({});
    expect(metrics.activeConnections).to.be.at.least(1);
    expect(metrics.transactions > 0n, 'transactions counted').to.equal(true);
    expect(metrics.walBytes > 0n, 'WAL bytes counted').to.equal(true);
    const beforeStop = await sessionLsn(client);

    const { finalLsn } = await compute.client.stop({ checkpoint: true });
    expect(finalLsn > beforeStop, 'the shutdown checkpoint follows the last commit').to.equal(true);
    expect(compute.postmasterPid()).to.equal(null);
    const flushes = await Promise.all(safekeepers.map(async (node) => (await node.status(timelineId)).flushLsn));
    expect(flushes.filter((flush) => flush >= finalLsn).length, 'safekeepers holding the final LSN').to.be.at.least(2);
    const status = await compute.client.getStatus({});
    expect(status.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    const refused = await compute.client.getMetrics({}).catch((error: unknown) => error);
    expect((refused as ClientError).code).to.equal(Status.FAILED_PRECONDITION);
  });

  it('a commit does not return while 2 of 3 safekeepers are down, and returns once one comes back', async () => {
    const compute = await startCompute({ term: 1 });
    const writer = await connect(compute);
    const observer = await connect(compute);
    await writer.query('CREATE TABLE accounts (id int PRIMARY KEY, balance int)');

    await safekeepers[1].stop();
    await safekeepers[2].stop();
    let committed = false;
    const insert = writer.query('INSERT INTO accounts VALUES (1, 100)').then(() => {
      committed = true;
    });
    // Postgres has written the commit and now waits for the walproposer, which cannot reach a majority.
    await waitFor(() => commitWaitsForQuorum(observer), { what: 'the INSERT to wait for the quorum (wait_event SyncRep)' });
    const status = await compute.client.getStatus({});
    expect(status.commitLsn < status.receivedLsn, 'the commit LSN must not pass WAL only one safekeeper has').to.equal(true);
    expect(committed).to.equal(false);

    await safekeepers[1].restart();
    await insert;
    expect(committed).to.equal(true);
    const rows = await observer.query('SELECT balance FROM accounts WHERE id = 1');
    expect(rows.rows).to.deep.equal([{ balance: 100 }]);
  });

  it('kill -9 of one safekeeper under load: no client error, every acknowledged commit is on a majority', async () => {
    const compute = await startCompute({ term: 1 });
    const setup = await connect(compute);
    await setup.query('CREATE TABLE markers (id text PRIMARY KEY)');
    const writers = await Promise.all([1, 2, 3, 4].map(() => connect(compute)));
    const acknowledged: string[] = [];
    let stop = false;
    const load = writers.map(async (client, index) => {
      for (let n = 0; !stop; n += 1) {
        const marker = `marker-${index}-${n}-${'x'.repeat(8)}`;
        await client.query('INSERT INTO markers VALUES ($1)', [marker]);
        acknowledged.push(marker);
      }
    });
    const failures: unknown[] = [];
    const loadDone = Promise.all(load).catch((error: unknown) => failures.push(error));

    await waitFor(() => acknowledged.length >= 200, { what: '200 commits before the kill' });
    await safekeepers[0].kill9();
    const atKill = acknowledged.length;
    await waitFor(() => acknowledged.length >= atKill + 200 || failures.length > 0, { what: '200 more commits after the kill' });
    stop = true;
    await loadDone;
    expect(failures, 'clients saw errors').to.deep.equal([]);

    // The killed safekeeper comes back from its disk; each acknowledged marker must be in the WAL of two of three.
    await safekeepers[0].restart();
    const wals = await Promise.all(
      safekeepers.map(async (node) => {
        const status = await node.status(timelineId);
        return readWal(node.client, { timelineId, startLsn: status.oldestLsn, endLsn: status.flushLsn, includeUncommitted: true });
      }),
    );
    const missing = acknowledged.filter((marker) => wals.filter((wal) => wal.data.includes(marker)).length < 2);
    expect(missing.length, `acknowledged markers on fewer than 2 safekeepers: ${missing.slice(0, 5).join(', ')}`).to.equal(0);
    expect(acknowledged.length).to.be.at.least(400);
  });

  it('a higher term fences the running writer: its next commit fails and its Postgres stops within a second', async () => {
    const compute = await startCompute({ term: 1 });
    compute.process.expectedErrors.push(/replication/);
    const client = await connect(compute);
    await client.query('CREATE TABLE t (x int)');
    await client.query('INSERT INTO t VALUES (1)');
    const postmaster = compute.postmasterPid();
    expect(postmaster).to.be.a('number');

    // A second proposer wins term 2 on a majority.
    for (const node of safekeepers.slice(0, 2)) {
      await node.client.vote({ timelineId, term: 2n, proposerId: 'compute-newer' });
    }
    const fenced = await compute.process.waitForLine((line) => String(line.msg).startsWith('fenced'), { what: 'the fenced log line', timeoutMs: 10_000 });
    const stopped = await compute.process.waitForLine((line) => line.msg === 'Postgres stopped', { what: 'Postgres stopped', timeoutMs: 10_000 });
    const fencedToStopped = Date.parse(stopped.time as string) - Date.parse(fenced.time as string);
    expect(fencedToStopped, 'ms from fencing to Postgres stopped').to.be.below(1000);
    expect(compute.postmasterPid()).to.equal(null);

    let failure: unknown = null;
    await client.query('INSERT INTO t VALUES (2)').catch((error: unknown) => {
      failure = error;
    });
    expect(failure, 'a commit after fencing must fail').to.not.equal(null);
    const status = await compute.client.getStatus({});
    expect(status.state).to.equal(ComputeState.COMPUTE_STATE_FENCED);
    expect(status.reason).to.match(/superseded by term 2/);

    // The old term is refused everywhere from now on.
    const refused = await safekeepers[0].client.vote({ timelineId, term: 1n, proposerId: 'compute-older' }).catch((error: unknown) => error);
    expect(refused).to.be.instanceOf(ClientError);
    expect((refused as ClientError).code).to.equal(Status.ABORTED);
    expect((refused as ClientError).details).to.match(/term 1 is not above term 2/);
  });

  it('a compute with a lower term is refused at election and never starts Postgres', async () => {
    // A newer writer holds term 5 on a majority: term 3 can win no election.
    for (const node of safekeepers.slice(0, 2)) await node.client.vote({ timelineId, term: 5n, proposerId: 'compute-newer' });
    const compute = await startCompute({ term: 3, waitReady: false });
    await compute.process.waitForLine((line) => String(line.msg).startsWith('fenced'), { what: 'fencing at election', timeoutMs: 30_000 });
    const status = await waitFor(
      async () => {
        const answer = await compute.client.getStatus({});
        return answer.state === ComputeState.COMPUTE_STATE_FENCED ? answer : undefined;
      },
      { what: 'state FENCED' },
    );
    expect(status.reason).to.match(/term 3 is not above term 5/);
    expect(compute.postmasterPid()).to.equal(null);
  });

  it('the next writer brings a safekeeper that missed the end of the old term up to date from the donor', async () => {
    const first = await startCompute({ term: 1 });
    const client = await connect(first);
    await client.query('CREATE TABLE t (x int)');
    // The third safekeeper misses the end of term 1: several MiB of WAL, more than one Append message.
    await safekeepers[2].stop();
    await client.query("INSERT INTO t SELECT generate_series(1, 100000)");
    await client.end();
    await first.process.stop();
    const termOneEnd = (await safekeepers[0].status(timelineId)).flushLsn;
    await safekeepers[2].restart();
    const lagging = (await safekeepers[2].status(timelineId)).flushLsn;
    expect(termOneEnd - lagging > 1_000_000n, 'the third safekeeper lags by more than a MiB').to.equal(true);

    // Term 2 starts at the donor's end; the lagging safekeeper gets what it missed from the donor, not Postgres.
    const second = await startCompute({ term: 2, pgDataDir: first.pgDataDir });
    const writer = await connect(second);
    await writer.query('INSERT INTO t VALUES (-1)');
    const target = await sessionLsn(writer);
    await waitFor(async () => (await safekeepers[2].status(timelineId)).flushLsn >= target, {
      what: `the lagging safekeeper to reach ${formatLsn(target)}`,
    });
    const range = { timelineId, startLsn: lagging, endLsn: target, includeUncommitted: true };
    const [reference, caughtUp] = await Promise.all([readWal(safekeepers[0].client, range), readWal(safekeepers[2].client, range)]);
    expect(caughtUp.data.length).to.equal(Number(target - lagging));
    expect(caughtUp.data.equals(reference.data), 'the WAL it was given is the donor\'s').to.equal(true);
    await expectTermHistoriesAgree(safekeepers, timelineId);
  });

  it('keeps committing through the loss of a minority; a restarted safekeeper catches up from its disk', async () => {
    const compute = await startCompute({ term: 1 });
    const client = await connect(compute);
    await client.query('CREATE TABLE t (x int)');
    await safekeepers[2].stop();
    expect(safekeepers[2].process.exited, 'the third safekeeper is down').to.equal(true);
    for (let index = 0; index < 50; index += 1) await client.query('INSERT INTO t VALUES ($1)', [index]);
    const target = await sessionLsn(client);
    await safekeepers[2].restart();
    const caughtUp = await waitFor(
      async () => {
        const status = await safekeepers[2].status(timelineId);
        return status.flushLsn >= target ? status : undefined;
      },
      { what: `the restarted safekeeper to reach ${formatLsn(target)}` },
    );
    expect(caughtUp.promisedTerm).to.equal(1n);
    await expectTermHistoriesAgree(safekeepers, timelineId);
  });

  it('the next writer truncates a divergent tail of the old term; term histories agree afterwards', async () => {
    const first = await startCompute({ term: 1 });
    const client = await connect(first);
    await client.query('CREATE TABLE t (x int)');
    // Two safekeepers stop: WAL still reaches the first, which gets a tail no majority holds.
    await safekeepers[1].stop();
    await safekeepers[2].stop();
    const heldByAll = (await safekeepers[0].status(timelineId)).flushLsn;
    void client.query('INSERT INTO t SELECT generate_series(1, 1000)').catch(() => undefined);
    await waitFor(
      async () => ((await safekeepers[0].status(timelineId)).flushLsn > heldByAll ? true : undefined),
      { what: 'a tail on the first safekeeper only' },
    );
    const tailEnd = (await safekeepers[0].status(timelineId)).flushLsn;
    // The old writer crashes (agent and its Postgres).
    const postmaster = first.postmasterPid();
    await first.process.kill9();
    if (postmaster) process.kill(postmaster, 'SIGKILL');
    await waitFor(() => first.postmasterPid() === null, { what: 'the old Postgres to be gone' });

    // The next writer is elected by the two safekeepers without the tail, then the first one comes back.
    await safekeepers[0].stop();
    await safekeepers[1].restart();
    await safekeepers[2].restart();
    const second = await startCompute({ term: 2, pgDataDir: first.pgDataDir });
    second.process.expectedErrors.push(/replication/);
    await safekeepers[0].restart();
    const joined = await second.process.waitForLine(
      (line) => line.safekeeper === safekeepers[0].address && typeof line.msg === 'string' && line.msg.startsWith('safekeeper joined'),
      { what: 'the first safekeeper to rejoin' },
    );
    expect(joined.msg).to.equal('safekeeper joined; its divergent tail was truncated');
    expect(parseLsn(joined.startAt as string) < tailEnd, 'truncated below the old tail').to.equal(true);

    const writer = await connect(second);
    await writer.query('INSERT INTO t VALUES (-1)');
    const target = await sessionLsn(writer);
    const statuses = await waitFor(
      async () => {
        const all = await Promise.all(safekeepers.map((node) => node.status(timelineId)));
        return all.every((status) => status.flushLsn >= target) ? all : undefined;
      },
      { what: 'all safekeepers to hold the new writer\'s WAL' },
    );
    for (const status of statuses) {
      expect(status.termHistory.map((entry) => entry.term)).to.deep.equal([1n, 2n]);
      expect(status.termHistory).to.deep.equal(statuses[0].termHistory);
    }
  });
});

/**
 * The agent's side of the control plane, with real processes: Redis, the control plane, three safekeepers (and a
 * pageserver for the takeover) and agents started with --control-plane. A running writer keeps its lease; a writer
 * stopped past its lease is replaced, and once it resumes it never commits again and its Postgres stops; roles come
 * as SCRAM verifiers (from --roles-file and ApplyRoles) and logins need the password. A recording control plane in
 * this process checks what the agent reports (the real one does not implement the reports yet) and that ABORTED
 * from it fences the compute.
 */
import crypto from 'node:crypto';
import { expect } from 'chai';
import pg from 'pg';
import { createServer, ServerError, Status, type Server } from 'nice-grpc';
import { ClientError } from '../../src/lib/grpc/errors.js';
import { createVerifier } from '../../src/lib/scram.js';
import { WriterLeases } from '../../src/control-plane/leases.js';
import { ComputeState } from '../../gen/spg99/compute/v1/compute.js';
import {
  ComputeStateChange,
  ControlPlaneInternalServiceDefinition,
  type ControlPlaneInternalServiceImplementation,
  type ReleaseWriterLeaseRequest,
  type RenewWriterLeaseRequest,
  type ReportComputeActivityRequest,
  type ReportComputeStateRequest,
} from '../../gen/spg99/controlplane/v1/controlplane.js';
import { useHarness, waitFor, type Harness } from '../harness/process.js';
import { RedisNode } from '../harness/redis.js';
import { ControlPlaneNode, failure } from '../harness/control-plane.js';
import { PageserverNode } from '../harness/pageserver.js';
import { createTimeline, newTimelineId, startSafekeepers, type SafekeeperNode } from '../harness/safekeepers.js';
import { ComputeNode, type ComputeOptions } from '../harness/computes.js';

/** The error a SQL call failed with (the test fails when it succeeds). */
async function sqlFailure(call: Promise<unknown>): Promise<Error & { code?: string }> {
  const outcome = await call.then(
    () => null,
    (error: unknown) => error,
  );
  if (!(outcome instanceof Error)) throw new Error('expected the SQL call to fail, but it succeeded');
  return outcome as Error & { code?: string };
}

/** Logs in over TCP as `user` and answers current_user; rejects when the login is refused. */
async function loginAs(compute: ComputeNode, user: string, password: string): Promise<string> {
  const client = await compute.connect({ user, password });
  try {
    return (await client.query<{ user: string }>('SELECT current_user AS user')).rows[0].user;
  } finally {
    await client.end();
  }
}

async function expectStatus(call: Promise<unknown>, code: Status, ...phrases: string[]): Promise<ClientError> {
  const error = await failure(call);
  expect(Status[error.code], error.details).to.equal(Status[code]);
  for (const phrase of phrases) expect(error.details).to.contain(phrase);
  return error;
}

/** The value of a Prometheus sample in an agent's /metrics, or undefined. */
async function metricValue(compute: ComputeNode, name: string): Promise<number | undefined> {
  const serving = compute.process.findLine((line) => line.msg === 'agent serving; starting the compute');
  const response = await fetch(`http://127.0.0.1:${String(serving?.metricsPort)}/metrics`);
  const match = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(await response.text());
  return match ? Number(match[1]) : undefined;
}

/**
 * A ControlPlaneInternalService in this process that records what agents send: leases are renewed (until told
 * otherwise), reports answered with whatever `answers` says (OK by default).
 */
class RecordingControlPlane {
  readonly renewals: RenewWriterLeaseRequest[] = [];
  readonly releases: ReleaseWriterLeaseRequest[] = [];
  readonly states: ReportComputeStateRequest[] = [];
  readonly activity: ReportComputeActivityRequest[] = [];
  /** The status each RPC answers (OK when absent). */
  readonly answers: Partial<Record<'renew' | 'state' | 'activity', Status>> = {};
  /** Leases granted for this long whatever the agent asks (as a control plane that cuts ttls does); unset: as asked. */
  grantTtlMs: number | undefined;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(harness: Harness): Promise<RecordingControlPlane> {
    const server = createServer();
    const recorder: { current?: RecordingControlPlane } = {};
    const unimplemented = async (): Promise<never> => {
      throw new ServerError(Status.UNIMPLEMENTED, 'not part of the recording control plane');
    };
    const answer = (rpc: 'renew' | 'state' | 'activity') => {
      const code = recorder.current?.answers[rpc];
      if (code !== undefined && code !== Status.OK) throw new ServerError(code, `the recording control plane answers ${Status[code]} to ${rpc}`);
    };
    const implementation: ControlPlaneInternalServiceImplementation = {
      acquireWriterLease: unimplemented,
      async renewWriterLease(request) {
        recorder.current?.renewals.push(request);
        answer('renew');
        const ttlMs = recorder.current?.grantTtlMs ?? Number(request.ttl?.seconds ?? 0n) * 1000;
        return {
          lease: { endpointId: request.endpointId, timelineId: '', computeId: request.computeId, term: request.term, expiresAt: new Date(Date.now() + ttlMs) },
        };
      },
      async releaseWriterLease(request) {
        recorder.current?.releases.push(request);
        return {};
      },
      resolveEndpoint: unimplemented,
      wakeEndpoint: unimplemented,
      getRoleVerifier: unimplemented,
      beginScram: unimplemented,
      finishScram: unimplemented,
      async reportComputeActivity(request) {
        recorder.current?.activity.push(request);
        answer('activity');
        return {};
      },
      async reportComputeState(request) {
        recorder.current?.states.push(request);
        answer('state');
        return {};
      },
      requestHandoff: unimplemented,
      getHandoff: unimplemented,
    };
    server.add(ControlPlaneInternalServiceDefinition, implementation);
    const port = await server.listen('127.0.0.1:0');
    const node = new RecordingControlPlane(server, port);
    recorder.current = node;
    harness.defer(() => node.server.forceShutdown());
    return node;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }
}

describe('agent ⇄ control plane (leases, reports, roles; real processes)', function () {
  this.timeout(300_000);
  const harness = useHarness();
  const clients: pg.Client[] = [];

  afterEach(async () => {
    await Promise.allSettled(clients.splice(0).map((client) => client.end()));
  });

  async function connect(compute: ComputeNode): Promise<pg.Client> {
    const client = await compute.connect();
    clients.push(client);
    return client;
  }

  describe('with the real control plane', () => {
    let redis: RedisNode;
    let controlPlane: ControlPlaneNode;
    let safekeepers: SafekeeperNode[];
    let endpointId: string;
    let timelineId: string;
    let tenantId: string;

    beforeEach(async () => {
      [redis, safekeepers] = await Promise.all([RedisNode.start(harness()), startSafekeepers(harness(), 3)]);
      controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url });
      // Cleanups run newest first and before processes stop: this stops the control plane while its Redis still runs.
      const node = controlPlane;
      harness().defer(() => node.process.stop());
      const tenant = await controlPlane.operator().createTenant({ name: 'acme' });
      tenantId = tenant.tenant!.tenantId;
      const project = await controlPlane.client(tenant.apiKeySecret).createProject({ name: 'shop' });
      endpointId = project.defaultEndpoint!.endpointId;
      timelineId = project.defaultBranch!.branchId;
      expect(project.defaultEndpoint!.branchId).to.equal(timelineId);
    });

    /** The lease (a term) for `computeId`, as the control plane grants it before a start. */
    async function acquire(computeId: string, ttlSeconds: number): Promise<number> {
      const { lease } = await controlPlane.internal().acquireWriterLease({ endpointId, computeId, ttl: { seconds: BigInt(ttlSeconds), nanos: 0 } });
      return Number(lease!.term);
    }

    /**
     * Acquires a lease for `computeId` and starts its agent with --control-plane and a 3 s lease. No activity reports:
     * the control plane answers them ABORTED for a compute its endpoint lifecycle did not start (as these are), which
     * would fence it; the recording control plane below checks the reports.
     */
    async function startWriter(computeId: string, options: Partial<ComputeOptions> = {}): Promise<ComputeNode> {
      const term = await acquire(computeId, 3);
      return ComputeNode.start(harness(), {
        computeId,
        timelineId,
        term,
        safekeepers,
        createTimeline: true,
        endpointId,
        controlPlane: controlPlane.internalAddress,
        leaseTtlS: 3,
        reportIntervalS: 3600,
        ...options,
      });
    }

    it('renews its lease while it runs: after more than two ttls a second compute is still refused, naming it', async () => {
      const writer = await startWriter('compute-a');
      const leases = new WriterLeases(await redis.client());
      const granted = (await leases.get(timelineId)).lease!;
      expect(granted).to.include({ computeId: 'compute-a' });
      // Redis' clock, which the leases use: 2.5 ttls after the grant, a lease nobody renewed would have expired.
      const later = await waitFor(
        async () => {
          const state = await leases.get(timelineId);
          return state.serverTime.getTime() - granted.grantedAt.getTime() > 7_500 && state;
        },
        { what: '2.5 lease ttls to pass on Redis\' clock', timeoutMs: 20_000, intervalMs: 250 },
      );
      expect(later.holder, 'the lease is held').to.not.equal(null);
      expect(later.holder!.computeId).to.equal('compute-a');
      expect(later.holder!.expiresAt.getTime()).to.be.above(granted.expiresAt.getTime());
      await expectStatus(
        controlPlane.internal().acquireWriterLease({ endpointId, computeId: 'compute-b', ttl: { seconds: 3n, nanos: 0 } }),
        Status.FAILED_PRECONDITION,
        'compute compute-a holds the lease',
      );
      expect((await writer.client.getStatus({})).state).to.equal(ComputeState.COMPUTE_STATE_RUNNING);
      const lastRenewal = await metricValue(writer, 'spg99_agent_lease_last_renewal_seconds');
      expect(lastRenewal, 'last renewal (unix seconds) in /metrics').to.be.within(Date.now() / 1000 - 3, Date.now() / 1000 + 1);

      // A clean stop releases the lease with the final LSN: the next compute gets a higher term at once.
      const { finalLsn } = await writer.client.stop({ checkpoint: true });
      const released = await waitFor(async () => {
        const state = await leases.get(timelineId);
        return state.lease?.releasedAt !== null && state;
      }, { what: 'the lease to be released' });
      expect(released.lease!.finalLsn).to.equal(finalLsn);
      expect(await acquire('compute-b', 3)).to.be.above(Number(granted.term));
    });

    it('a writer resumed after a takeover never commits again and its Postgres stops; the new writer has the data', async () => {
      const pageserver = await PageserverNode.start(harness());
      await pageserver.timelines.createTimeline({ timelineId, tenantId, pgMajorVersion: 18 });
      await createTimeline(safekeepers, timelineId);
      await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers.map((node) => node.address) });

      const first = await startWriter('compute-a', { pageserver: pageserver.address });
      first.process.expectedErrors.push(/replication/);
      const client = await connect(first);
      await client.query('CREATE TABLE kept (id int PRIMARY KEY, note text)');
      await client.query(`INSERT INTO kept SELECT g, 'from a' FROM generate_series(1, 100) g`);
      const firstTerm = (await first.client.getStatus({})).term;

      // The agent stops (its Postgres runs on): no renewals, no WAL to the safekeepers.
      const agentPid = first.process.pid!;
      process.kill(agentPid, 'SIGSTOP');
      harness().defer(() => {
        if (!first.process.exited) process.kill(agentPid, 'SIGCONT');
      });
      // A commit started now waits for the walproposer; it must never succeed.
      const stale = client.query(`INSERT INTO kept VALUES (1000, 'stale')`).then(
        () => 'committed',
        (error: Error) => error.message,
      );
      const leases = new WriterLeases(await redis.client());
      await waitFor(async () => (await leases.get(timelineId)).holder === null, {
        what: 'the stopped writer\'s lease to expire',
        timeoutMs: 20_000,
        intervalMs: 100,
      });
      const second = await startWriter('compute-b', { pageserver: pageserver.address });
      const secondTerm = (await second.client.getStatus({})).term;
      expect(secondTerm > firstTerm, `term ${secondTerm} > ${firstTerm}`).to.equal(true);

      process.kill(agentPid, 'SIGCONT');
      const outcome = await stale;
      expect(outcome, 'the stale writer\'s commit').to.not.equal('committed');
      await waitFor(() => first.postmasterPid() === null, { what: 'the stale writer\'s Postgres to stop', timeoutMs: 10_000 });
      const fenced = await first.client.getStatus({});
      expect(fenced.state).to.equal(ComputeState.COMPUTE_STATE_FENCED);
      expect(fenced.reason).to.match(/term|ABORTED/);
      expect(await sqlFailure(client.query('SELECT 1'))).to.be.instanceOf(Error);

      const writer = await connect(second);
      const { rows } = await writer.query<{ n: number; stale: number }>(
        `SELECT count(*)::int AS n, count(*) FILTER (WHERE note = 'stale')::int AS stale FROM kept`,
      );
      expect(rows[0]).to.deep.equal({ n: 100, stale: 0 });
      await writer.query(`INSERT INTO kept VALUES (101, 'from b')`);
      expect((await writer.query('SELECT note FROM kept WHERE id = 101')).rows).to.deep.equal([{ note: 'from b' }]);
    });

    it('creates the roles of --roles-file with their verifiers; over TCP they log in with the password only', async () => {
      const verifier = createVerifier('app password');
      const compute = await startWriter('compute-a', { roles: [{ roleName: 'app', scramVerifier: verifier }] });
      const admin = await connect(compute);
      const stored = await admin.query<{ rolpassword: string; rolcanlogin: boolean; rolcreatedb: boolean; rolcreaterole: boolean; rolsuper: boolean }>(
        `SELECT rolpassword, rolcanlogin, rolcreatedb, rolcreaterole, rolsuper FROM pg_authid WHERE rolname = 'app'`,
      );
      expect(stored.rows).to.deep.equal([{ rolpassword: verifier, rolcanlogin: true, rolcreatedb: true, rolcreaterole: true, rolsuper: false }]);
      expect((await admin.query('SHOW password_encryption')).rows[0].password_encryption).to.equal('scram-sha-256');
      // The safekeepers make commits durable; the compute's own fsync would only add its latency (see compute.ts).
      expect((await admin.query('SHOW fsync')).rows[0].fsync).to.equal('off');
      expect(await loginAs(compute, 'app', 'app password')).to.equal('app');
      expect((await sqlFailure(loginAs(compute, 'app', 'not the password'))).code).to.equal('28P01');
      expect((await sqlFailure(loginAs(compute, 'app', ''))).message).to.match(/password/);
      expect(Object.keys((await compute.client.getStatus({})).startPhaseSeconds)).to.include('configure');

      // A restart on the same data directory finds the role and gives it the verifier of the new file.
      await admin.end();
      clients.splice(clients.indexOf(admin), 1);
      await compute.process.stop();
      const newVerifier = createVerifier('new app password');
      const restarted = await startWriter('compute-b', { pgDataDir: compute.pgDataDir, roles: [{ roleName: 'app', scramVerifier: newVerifier }] });
      expect(restarted.process.findLine((line) => line.msg === 'roles applied')).to.deep.include({ created: [], updated: ['app'] });
      expect(await loginAs(restarted, 'app', 'new app password')).to.equal('app');
      expect((await sqlFailure(loginAs(restarted, 'app', 'app password'))).code).to.equal('28P01');
    });

    it('ApplyRoles adds, changes and drops roles on the running Postgres; refuses to drop an owner, and bad input', async () => {
      const compute = await startWriter('compute-a', { roles: [{ roleName: 'app', scramVerifier: createVerifier('one') }] });
      const postmaster = compute.postmasterPid();

      const added = await compute.client.applyRoles({ upsert: [{ roleName: 'reporting', scramVerifier: createVerifier('report') }], dropRoleNames: [] });
      expect(added).to.deep.equal({ createdRoleNames: ['reporting'], updatedRoleNames: [], droppedRoleNames: [] });
      expect(await loginAs(compute, 'reporting', 'report')).to.equal('reporting');

      const changed = await compute.client.applyRoles({ upsert: [{ roleName: 'app', scramVerifier: createVerifier('two') }], dropRoleNames: [] });
      expect(changed.updatedRoleNames).to.deep.equal(['app']);
      expect((await sqlFailure(loginAs(compute, 'app', 'one'))).code).to.equal('28P01');
      expect(await loginAs(compute, 'app', 'two')).to.equal('app');

      const dropped = await compute.client.applyRoles({ upsert: [], dropRoleNames: ['reporting', 'never_existed'] });
      expect(dropped).to.deep.equal({ createdRoleNames: [], updatedRoleNames: [], droppedRoleNames: ['reporting'] });
      expect((await sqlFailure(loginAs(compute, 'reporting', 'report'))).message).to.match(/reporting/);

      // The role creates a table in the database postgres; a role that owns one is not dropped, and nothing else of
      // the same request happens either.
      const asApp = await compute.connect({ user: 'app', password: 'two' });
      clients.push(asApp);
      await asApp.query('CREATE TABLE owned (x int)');
      await asApp.query('INSERT INTO owned VALUES (1)');
      const admin = await connect(compute);
      await expectStatus(
        compute.client.applyRoles({ upsert: [{ roleName: 'newcomer', scramVerifier: createVerifier('x') }], dropRoleNames: ['app'] }),
        Status.FAILED_PRECONDITION,
        'role app cannot be dropped',
        'owner of table owned',
        'REASSIGN OWNED BY app',
      );
      expect((await admin.query(`SELECT rolname FROM pg_roles WHERE rolname IN ('app', 'newcomer')`)).rows).to.deep.equal([{ rolname: 'app' }]);

      await expectStatus(compute.client.applyRoles({ upsert: [{ roleName: 'Bad Name', scramVerifier: createVerifier('x') }], dropRoleNames: [] }), Status.INVALID_ARGUMENT, 'upsert[0].role_name');
      await expectStatus(compute.client.applyRoles({ upsert: [{ roleName: 'plain', scramVerifier: 'a password' }], dropRoleNames: [] }), Status.INVALID_ARGUMENT, 'upsert[0].scram_verifier');
      await expectStatus(compute.client.applyRoles({ upsert: [], dropRoleNames: ['postgres'] }), Status.INVALID_ARGUMENT, 'drop_role_names[0]', 'reserved');
      await expectStatus(
        compute.client.applyRoles({ upsert: [{ roleName: 'app', scramVerifier: createVerifier('x') }], dropRoleNames: ['app'] }),
        Status.INVALID_ARGUMENT,
        'drop_role_names[0]',
        'again',
      );
      expect(compute.postmasterPid(), 'the same Postgres, never restarted').to.equal(postmaster);
    });
  });

  describe('with a recording control plane', () => {
    let safekeepers: SafekeeperNode[];
    let recorder: RecordingControlPlane;
    let timelineId: string;
    const endpointId = `ep-${crypto.randomBytes(16).toString('hex')}`;

    beforeEach(async () => {
      [safekeepers, recorder] = await Promise.all([startSafekeepers(harness(), 3), RecordingControlPlane.start(harness())]);
      timelineId = newTimelineId();
    });

    function startCompute(options: Partial<ComputeOptions> = {}): Promise<ComputeNode> {
      return ComputeNode.start(harness(), {
        computeId: 'compute-a',
        timelineId,
        term: 1,
        safekeepers,
        createTimeline: true,
        endpointId,
        controlPlane: recorder.address,
        leaseTtlS: 3,
        reportIntervalS: 1,
        ...options,
      });
    }

    it('reports STARTED, activity without its own sessions, STOPPED, and releases the lease with the final LSN', async () => {
      const compute = await startCompute();
      const started = await waitFor(() => recorder.states.find((report) => report.change === ComputeStateChange.COMPUTE_STATE_CHANGE_STARTED), {
        what: 'a STARTED report',
      });
      expect(started).to.deep.include({ computeId: 'compute-a', endpointId, term: 1n, postgresAddress: `127.0.0.1:${compute.pgPort}` });
      expect(Object.keys(started.startPhaseSeconds)).to.include.members(['election', 'postgres_start', 'sync_safekeepers']);
      await waitFor(() => recorder.renewals.length >= 2, { what: 'two lease renewals' });
      expect(recorder.renewals[0]).to.deep.include({ endpointId, computeId: 'compute-a', term: 1n, ttl: { seconds: 3n, nanos: 0 } });

      // Nobody connected yet: idle since Postgres started; the agent's own sessions do not count.
      const idle = await waitFor(() => recorder.activity.find((report) => report.idleSeconds >= 1), { what: 'an activity report idle for a second' });
      expect(idle).to.deep.include({ computeId: 'compute-a', endpointId, activeConnections: 0 });
      expect(idle.observedAt).to.be.instanceOf(Date);

      const client = await connect(compute);
      await client.query('CREATE TABLE t (x int)');
      await client.query('INSERT INTO t SELECT generate_series(1, 1000)');
      const seen = recorder.activity.length;
      const busy = await waitFor(() => recorder.activity.slice(seen).find((report) => report.activeConnections === 1), { what: 'a report with the client' });
      expect(busy.idleSeconds).to.equal(0);
      expect(busy.walBytes > 0n, 'WAL bytes').to.equal(true);
      expect(busy.transactions >= 2n, `transactions ${busy.transactions}`).to.equal(true);
      expect(busy.cpuSeconds).to.be.above(0);
      expect(busy.memoryBytes > 1_000_000n, `memory ${busy.memoryBytes}`).to.equal(true);
      expect(busy.cacheHitRatio).to.be.within(0, 1);

      await client.end();
      const left = recorder.activity.length;
      const after = await waitFor(() => recorder.activity.slice(left).find((report) => report.activeConnections === 0 && report.idleSeconds > 0), {
        what: 'a report after the client left',
      });
      const idleSinceStart = idle.idleSeconds + (after.observedAt!.getTime() - idle.observedAt!.getTime()) / 1000;
      expect(after.idleSeconds, 'idle counted from when the client left').to.be.below(idleSinceStart - 0.5);

      const { finalLsn } = await compute.client.stop({ checkpoint: true });
      const stopped = await waitFor(() => recorder.states.find((report) => report.change === ComputeStateChange.COMPUTE_STATE_CHANGE_STOPPED), {
        what: 'a STOPPED report',
      });
      expect(stopped.reason).to.contain('stop requested');
      const release = await waitFor(() => recorder.releases[0], { what: 'the lease release' });
      expect(release).to.deep.include({ endpointId, computeId: 'compute-a', term: 1n, finalLsn });
      const renewals = recorder.renewals.length;
      await compute.process.stop();
      expect(recorder.renewals.length, 'no renewal after the stop').to.equal(renewals);
    });

    it('runs on when the reports are UNIMPLEMENTED (one warning each), and ABORTED from an activity report fences it', async () => {
      recorder.answers.state = Status.UNIMPLEMENTED;
      recorder.answers.activity = Status.UNIMPLEMENTED;
      const compute = await startCompute();
      const client = await connect(compute);
      await client.query('CREATE TABLE t (x int)');
      await waitFor(() => recorder.activity.length >= 3, { what: 'three activity reports' });
      const warnings = compute.process.lines.filter((line) => line.level === 'warn' && /does not implement/.test(line.msg));
      expect(warnings.map((line) => line.rpc)).to.have.members(['ReportComputeState', 'ReportComputeActivity']);
      expect((await compute.client.getStatus({})).state).to.equal(ComputeState.COMPUTE_STATE_RUNNING);
      await client.query('INSERT INTO t VALUES (1)');

      recorder.answers.activity = Status.ABORTED;
      const fenced = await compute.process.waitForLine((line) => String(line.msg).startsWith('fenced'), { what: 'the fenced line', timeoutMs: 10_000 });
      const stopped = await compute.process.waitForLine((line) => line.msg === 'Postgres stopped', { what: 'Postgres stopped', timeoutMs: 10_000 });
      expect(Date.parse(stopped.time as string) - Date.parse(fenced.time as string), 'ms from fencing to Postgres stopped').to.be.below(1000);
      expect(compute.postmasterPid()).to.equal(null);
      expect(await sqlFailure(client.query('INSERT INTO t VALUES (2)'))).to.be.instanceOf(Error);
      const status = await compute.client.getStatus({});
      expect(status.state).to.equal(ComputeState.COMPUTE_STATE_FENCED);
      expect(status.reason).to.contain('ReportComputeActivity with ABORTED');
    });

    it('renews every third of what the control plane grants when it cuts the ttl asked for', async () => {
      recorder.grantTtlMs = 1_500;
      await startCompute({ leaseTtlS: 30 });
      const start = recorder.renewals.length;
      const times: number[] = [];
      await waitFor(
        () => {
          times.push(...recorder.renewals.slice(start + times.length).map(() => Date.now()));
          return times.length >= 4;
        },
        { what: 'four renewals (every 10 s as asked, every 0.5 s as granted)', timeoutMs: 8_000 },
      );
      expect(recorder.renewals.every((renewal) => renewal.ttl?.seconds === 30n), 'still asks for its ttl').to.equal(true);
    });

    it('stops Postgres within a second when a lease renewal is ABORTED (another compute got a term)', async () => {
      const compute = await startCompute();
      const client = await connect(compute);
      await client.query('CREATE TABLE t (x int)');
      recorder.answers.renew = Status.ABORTED;
      const fenced = await compute.process.waitForLine((line) => String(line.msg).startsWith('fenced'), { what: 'the fenced line', timeoutMs: 10_000 });
      const stopped = await compute.process.waitForLine((line) => line.msg === 'Postgres stopped', { what: 'Postgres stopped', timeoutMs: 10_000 });
      expect(Date.parse(stopped.time as string) - Date.parse(fenced.time as string), 'ms from fencing to Postgres stopped').to.be.below(1000);
      expect(await sqlFailure(client.query('INSERT INTO t VALUES (1)'))).to.be.instanceOf(Error);
      const status = await compute.client.getStatus({});
      expect(status.state).to.equal(ComputeState.COMPUTE_STATE_FENCED);
      expect(status.reason).to.contain('refused to renew the writer lease of term 1');
      const report = await waitFor(() => recorder.states.find((state) => state.change === ComputeStateChange.COMPUTE_STATE_CHANGE_STOPPED), {
        what: 'a STOPPED report',
      });
      expect(report.reason).to.match(/^fenced: /);
      expect(recorder.releases, 'a fenced writer does not release a lease it lost').to.deep.equal([]);
    });
  });

  it('refuses a malformed roles file at start, naming the entry', async () => {
    const safekeepers = await startSafekeepers(harness(), 1);
    const start = ComputeNode.start(harness(), {
      timelineId: newTimelineId(),
      term: 1,
      safekeepers,
      roles: [{ roleName: 'app', scramVerifier: 'plaintext password' }],
    });
    const error = await start.then(
      () => null,
      (reason: Error) => reason,
    );
    expect(error?.message).to.match(/--roles-file: .*entry 0: scramVerifier is not a SCRAM-SHA-256 verifier/);
  });
});

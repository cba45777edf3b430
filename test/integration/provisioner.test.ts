/**
 * The provisioner with its process driver, with real processes: safekeepers, a pageserver, the provisioner, and the
 * agents (and Postgres) it starts.
 */
import fs from 'node:fs';
import { expect } from 'chai';
import pg from 'pg';
import { useHarness, waitFor, grpcHealthStatus, HealthCheckResponse_ServingStatus } from '../harness/process.js';
import { reflectedServices } from '../harness/reflection.js';
import { openChannel } from '../../src/lib/grpc/client.js';
import { createTimeline, newTimelineId, startSafekeepers, type SafekeeperNode } from '../harness/safekeepers.js';
import { PageserverNode } from '../harness/pageserver.js';
import { newComputeId, newEndpointId, ProvisionerNode } from '../harness/provisioner.js';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { ComputeState, StopMode, type Compute, type ComputeSpec } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { isAlive } from '../../src/lib/process.js';
import { connectSuperuser } from '../harness/computes.js';


function postmasterPid(pgDataDir: string): number | null {
  try {
    const pid = Number(fs.readFileSync(`${pgDataDir}/postmaster.pid`, 'utf8').split('\n')[0]);
    return isAlive(pid) ? pid : null;
  } catch {
    return null;
  }
}

function connect(compute: Compute): Promise<pg.Client> {
  return connectSuperuser(Number(compute.postgresAddress.split(':')[1]));
}

async function expectStatus(promise: Promise<unknown>, code: Status, pattern: RegExp): Promise<void> {
  try {
    await promise;
  } catch (error) {
    expect(error).to.be.instanceOf(ClientError);
    expect(Status[(error as ClientError).code]).to.equal(Status[code]);
    expect((error as ClientError).details).to.match(pattern);
    return;
  }
  expect.fail(`expected ${Status[code]}`);
}

describe('provisioner (process driver)', function () {
  this.timeout(300_000);
  const harness = useHarness();
  const clients: pg.Client[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.end().catch(() => undefined);
  });

  async function cluster(): Promise<{ safekeepers: SafekeeperNode[]; pageserver: PageserverNode; provisioner: ProvisionerNode; spec: ComputeSpec }> {
    const [safekeepers, pageserver, provisioner] = await Promise.all([
      startSafekeepers(harness(), 3),
      PageserverNode.start(harness()),
      ProvisionerNode.start(harness(), { args: ['--restart-backoff-ms', '200', '--max-restarts', '2'] }),
    ]);
    const timelineId = newTimelineId();
    await pageserver.timelines.createTimeline({ timelineId, tenantId: 'tn-test', pgMajorVersion: 18 });
    await createTimeline(safekeepers, timelineId);
    await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers.map((node) => node.address) });
    const spec: ComputeSpec = {
      endpointId: newEndpointId(),
      timelineId,
      term: 1n,
      profile: { cpuMillis: 1000, memoryMib: 512 },
      safekeeperAddresses: safekeepers.map((node) => node.address),
      pageserverAddress: pageserver.address,
      controlPlaneAddress: '',
      pgSettings: {},
      roles: [],
    };
    return { safekeepers, pageserver, provisioner, spec };
  }

  async function waitState(provisioner: ProvisionerNode, computeId: string, state: ComputeState, timeoutMs = 120_000): Promise<Compute> {
    return waitFor(async () => {
      const { compute } = await provisioner.client.describeCompute({ computeId });
      if (compute?.state === ComputeState.COMPUTE_STATE_FAILED && state !== ComputeState.COMPUTE_STATE_FAILED) {
        throw new Error(`compute FAILED: ${compute.reason}\n${provisioner.agentLog(computeId).split('\n').slice(-15).join('\n')}`);
      }
      return compute?.state === state ? compute : undefined;
    }, { what: `compute ${computeId} ${ComputeState[state]}`, timeoutMs, intervalMs: 100 });
  }

  it('ensures a compute idempotently, restarts a crashed agent (up to FAILED), and stops computes cleanly or by kill', async () => {
    const { provisioner, spec } = await cluster();
    const computeId = newComputeId();
    const first = await provisioner.client.ensureCompute({ computeId, spec });
    expect(first.compute?.computeId).to.equal(computeId);
    expect(first.compute?.driver).to.equal('process');
    expect([ComputeState.COMPUTE_STATE_PENDING, ComputeState.COMPUTE_STATE_STARTING]).to.include(first.compute?.state);

    const running = await waitState(provisioner, computeId, ComputeState.COMPUTE_STATE_RUNNING);
    expect(running.postgresAddress).to.match(/^127\.0\.0\.1:[0-9]+$/);
    expect(running.agentAddress).to.match(/^127\.0\.0\.1:[0-9]+$/);
    expect(running.startedAt).to.be.instanceOf(Date);
    expect(running.restartCount).to.equal(0);
    let client = await connect(running);
    clients.push(client);
    await client.query('CREATE TABLE kept (id int PRIMARY KEY, note text)');
    await client.query(`INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 100) g`);

    // Describe and list see it; a retried ensure changes nothing.
    const { computes } = await provisioner.client.listComputes({ endpointId: spec.endpointId });
    expect(computes.map((compute) => compute.computeId)).to.deep.equal([computeId]);
    expect((await provisioner.client.listComputes({ endpointId: newEndpointId() })).computes).to.deep.equal([]);
    const [agentPid] = provisioner.agentPids();
    expect(agentPid).to.be.a('number');
    const again = await provisioner.client.ensureCompute({ computeId, spec });
    expect(again.compute?.state).to.equal(ComputeState.COMPUTE_STATE_RUNNING);
    expect(again.compute?.postgresAddress).to.equal(running.postgresAddress);
    expect(again.compute?.startedAt?.getTime()).to.equal(running.startedAt?.getTime());
    expect(provisioner.agentPids()).to.deep.equal([agentPid]);
    await expectStatus(provisioner.client.ensureCompute({ computeId, spec: { ...spec, term: 2n } }), Status.FAILED_PRECONDITION, /term \(1 → 2\).*new compute id/);

    // kill -9 of the agent: the provisioner kills the Postgres it left behind and restarts the agent with the same
    // spec. The restarted agent is a new proposer process, and the safekeepers never promise a term to two of them
    // ("term 1 already promised to proposer <compute>/<nonce>"): it is fenced at its election, so the compute ends
    // FAILED after one restart; the control plane then starts a new compute with a new term (below), which sees every
    // committed row.
    const pgDataDir = provisioner.pgDataDir(computeId);
    const oldPostmaster = postmasterPid(pgDataDir);
    expect(oldPostmaster).to.be.a('number');
    process.kill(agentPid, 'SIGKILL');
    await client.end().catch(() => undefined);
    const restarted = await waitFor(async () => {
      const { compute } = await provisioner.client.describeCompute({ computeId });
      return compute && compute.restartCount >= 1 ? compute : undefined;
    }, { what: 'the crash noticed', intervalMs: 20 });
    expect(restarted.reason).to.match(/signal SIGKILL|restart 1/);
    expect(isAlive(oldPostmaster as number)).to.equal(false);
    const failed = await waitState(provisioner, computeId, ComputeState.COMPUTE_STATE_FAILED);
    expect(failed.restartCount).to.equal(1);
    expect(failed.reason).to.match(new RegExp(`refused term 1: term 1 already promised to proposer ${computeId}/[0-9a-f]{12}`));
    expect(failed.postgresAddress).to.equal('');
    expect(provisioner.agentPids()).to.deep.equal([]);
    expect(fs.existsSync(pgDataDir)).to.equal(false);
    const stopFailed = await provisioner.client.stopCompute({ computeId, mode: StopMode.STOP_MODE_GRACEFUL });
    expect(stopFailed.compute?.state).to.equal(ComputeState.COMPUTE_STATE_FAILED);

    // A new writer (new id, next term) starts from the pageserver with everything committed; a graceful stop
    // leaves no process and no data directory.
    const writerId = newComputeId();
    await provisioner.client.ensureCompute({ computeId: writerId, spec: { ...spec, term: 2n } });
    const back = await waitState(provisioner, writerId, ComputeState.COMPUTE_STATE_RUNNING);
    client = await connect(back);
    clients.push(client);
    const count = await client.query<{ count: string }>('SELECT count(*) FROM kept');
    expect(Number(count.rows[0].count)).to.equal(100);
    await client.query(`INSERT INTO kept VALUES (101, 'second writer')`);
    await client.end();

    // Stop: the processes are gone, the data directory too, and describe says STOPPED.
    const writerDataDir = provisioner.pgDataDir(writerId);
    const postmaster = postmasterPid(writerDataDir);
    expect(postmaster).to.be.a('number');
    const [newAgentPid] = provisioner.agentPids();
    const stopped = await provisioner.client.stopCompute({ computeId: writerId, mode: StopMode.STOP_MODE_GRACEFUL });
    expect(stopped.compute?.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    expect(stopped.compute?.reason).to.equal('stopped by request');
    expect(stopped.finalLsn > 0n).to.equal(true);
    expect(isAlive(newAgentPid)).to.equal(false);
    expect(isAlive(postmaster as number)).to.equal(false);
    expect(fs.existsSync(writerDataDir)).to.equal(false);
    const described = await provisioner.client.describeCompute({ computeId: writerId });
    expect(described.compute?.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    expect(described.compute?.postgresAddress).to.equal('');
    // Stopping again answers it unchanged; ensuring a stopped compute does not restart it.
    const twice = await provisioner.client.stopCompute({ computeId: writerId, mode: StopMode.STOP_MODE_KILL });
    expect(twice.compute?.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    const ensured = await provisioner.client.ensureCompute({ computeId: writerId, spec: { ...spec, term: 2n } });
    expect(ensured.compute?.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    expect(provisioner.agentPids()).to.deep.equal([]);

    // A new writer (new id, next term) starts from the pageserver with everything committed.
    const nextId = newComputeId();
    await provisioner.client.ensureCompute({ computeId: nextId, spec: { ...spec, term: 3n } });
    const next = await waitState(provisioner, nextId, ComputeState.COMPUTE_STATE_RUNNING);
    client = await connect(next);
    clients.push(client);
    const rows = await client.query<{ count: string }>('SELECT count(*) FROM kept');
    expect(Number(rows.rows[0].count)).to.equal(101);
    const killed = await provisioner.client.stopCompute({ computeId: nextId, mode: StopMode.STOP_MODE_KILL });
    expect(killed.compute?.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    expect(killed.compute?.reason).to.equal('killed by request');
    expect(killed.finalLsn).to.equal(0n);
    expect(fs.existsSync(provisioner.pgDataDir(nextId))).to.equal(false);
  });

  it('stops its computes cleanly on SIGTERM', async () => {
    const { provisioner, spec } = await cluster();
    const computeId = newComputeId();
    await provisioner.client.ensureCompute({ computeId, spec });
    await waitState(provisioner, computeId, ComputeState.COMPUTE_STATE_RUNNING);
    const [agentPid] = provisioner.agentPids();
    const postmaster = postmasterPid(provisioner.pgDataDir(computeId));
    const exit = await provisioner.process.stop(60_000);
    expect(exit.code).to.equal(0);
    expect(isAlive(agentPid)).to.equal(false);
    expect(postmaster !== null && isAlive(postmaster)).to.equal(false);
    expect(fs.existsSync(provisioner.pgDataDir(computeId))).to.equal(false);
  });

  it('refuses bad input with INVALID_ARGUMENT and unknown ids with NOT_FOUND; serves health and reflection', async () => {
    const provisioner = await ProvisionerNode.start(harness());
    const spec: ComputeSpec = {
      endpointId: newEndpointId(),
      timelineId: newTimelineId(),
      term: 1n,
      profile: { cpuMillis: 250, memoryMib: 256 },
      safekeeperAddresses: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
      pageserverAddress: '127.0.0.1:4',
      controlPlaneAddress: '',
      pgSettings: {},
      roles: [],
    };
    const computeId = newComputeId();
    const ensure = (overrides: Partial<ComputeSpec>, id = computeId) => provisioner.client.ensureCompute({ computeId: id, spec: { ...spec, ...overrides } });
    await expectStatus(ensure({}, 'compute-1'), Status.INVALID_ARGUMENT, /compute_id must be cp-/);
    await expectStatus(ensure({}, ''), Status.INVALID_ARGUMENT, /compute_id is required/);
    await expectStatus(provisioner.client.ensureCompute({ computeId }), Status.INVALID_ARGUMENT, /spec is required/);
    await expectStatus(ensure({ timelineId: 'tl-nope' }), Status.INVALID_ARGUMENT, /spec\.timeline_id/);
    await expectStatus(ensure({ endpointId: '' }), Status.INVALID_ARGUMENT, /spec\.endpoint_id/);
    await expectStatus(ensure({ term: 0n }), Status.INVALID_ARGUMENT, /spec\.term/);
    await expectStatus(ensure({ profile: undefined }), Status.INVALID_ARGUMENT, /spec\.profile is required/);
    await expectStatus(ensure({ profile: { cpuMillis: 0, memoryMib: 1 } }), Status.INVALID_ARGUMENT, /spec\.profile\.cpu_millis/);
    await expectStatus(ensure({ safekeeperAddresses: [] }), Status.INVALID_ARGUMENT, /spec\.safekeeper_addresses is empty/);
    await expectStatus(ensure({ safekeeperAddresses: ['127.0.0.1:1', 'nohost'] }), Status.INVALID_ARGUMENT, /spec\.safekeeper_addresses\[1\]/);
    await expectStatus(ensure({ pageserverAddress: '' }), Status.INVALID_ARGUMENT, /spec\.pageserver_address is required/);
    await expectStatus(ensure({ pgSettings: { synchronous_standby_names: '' } }), Status.INVALID_ARGUMENT, /spec\.pg_settings\.synchronous_standby_names/);
    await expectStatus(ensure({ roles: [{ roleName: 'app', scramVerifier: 'md5abc' }] }), Status.INVALID_ARGUMENT, /spec\.roles\[0\]\.scram_verifier/);
    await expectStatus(provisioner.client.describeCompute({ computeId }), Status.NOT_FOUND, /not known/);
    await expectStatus(provisioner.client.stopCompute({ computeId, mode: StopMode.STOP_MODE_GRACEFUL }), Status.NOT_FOUND, /not known/);
    await expectStatus(provisioner.client.listComputes({ endpointId: 'ep-x' }), Status.INVALID_ARGUMENT, /endpoint_id/);
    expect((await provisioner.client.listComputes({ endpointId: '' })).computes).to.deep.equal([]);

    const channel = openChannel(provisioner.address);
    harness().defer(() => channel.close());
    expect(await grpcHealthStatus(channel)).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    expect(await reflectedServices(provisioner.address)).to.include.members(['spg99.provisioner.v1.ProvisionerService', 'grpc.health.v1.Health']);
  });

  it('refuses the kubernetes driver without an image, with a clear configuration error', async () => {
    const child = harness().spawn('provisioner', ['--data-dir', harness().tempDir('provisioner').path, '--listen', '127.0.0.1:0', '--driver', 'kubernetes']);
    const exit = await child.waitExit();
    expect(exit.code).to.equal(2);
    expect(child.rawOutput.join('\n')).to.match(/--kube-image \(or SPG99_KUBE_IMAGE\) is required with --driver kubernetes/);
  });
});

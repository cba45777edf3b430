/**
 * Availability with a minority of safekeepers down, with real processes: with one of three safekeepers stopped a
 * project is created, its endpoint stops, a connection through the gateway wakes it and reads every row, and a killed
 * compute is replaced; the safekeeper then comes back with an empty disk and catches up from its peers (the control
 * plane's count of safekeepers in sync returns to 3). A start that fails while a majority is down says why (the
 * safekeepers, not Redis), with a retryable status, and is retried by the reconciler until it runs.
 */
import fs from 'node:fs';
import { expect } from 'chai';
import { EndpointState } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { Status } from '../../src/lib/grpc/errors.js';
import { postmasterPid } from '../../src/provisioner/process-driver.js';
import { WAL_SEGMENT_SIZE, segmentNumber, segmentStart } from '../../src/lib/lsn.js';
import { useHarness, waitFor } from '../harness/process.js';
import { failure } from '../harness/control-plane.js';
import { controlPlaneMetric, startGatewayPlatform } from '../harness/platform.js';

describe('a platform with a safekeeper down (real processes)', function () {
  this.timeout(400_000);
  const harness = useHarness();

  it('creates, stops, wakes and replaces with one safekeeper down, and the safekeeper catches up after returning empty', async () => {
    const h = harness();
    const { platform, gateway, api, project, endpointId, owner } = await startGatewayPlatform(h, {
      gatewayArgs: ['--wake-timeout-s', '180'],
      // Stopped before anything of the project exists: its timeline is created on two safekeepers only.
      beforeProject: async (started) => void (await started.safekeepers[2].stop()),
    });
    const [, , down] = platform.safekeepers;
    const timelineId = project.defaultEndpoint!.branchId;
    const endpointState = async () => (await api.getEndpoint({ endpointId })).endpoint!;

    let client = await gateway.connect(endpointId, owner);
    await client.query('CREATE TABLE items (id int PRIMARY KEY, payload text NOT NULL)');
    await client.query("INSERT INTO items SELECT n, repeat('x', 100) FROM generate_series(1, 5000) AS n");
    await client.end();

    // Stopped, then woken by a connection: the start needs only the two safekeepers that run.
    await api.stopEndpoint({ endpointId });
    await waitFor(async () => (await endpointState()).state === EndpointState.ENDPOINT_STATE_STOPPED, { what: 'the endpoint STOPPED', timeoutMs: 120_000 });
    client = await gateway.connect(endpointId, owner);
    expect((await client.query('SELECT count(*)::int AS n FROM items')).rows[0].n).to.equal(5000);
    await client.query("INSERT INTO items SELECT n, 'after the wake' FROM generate_series(5001, 6000) AS n");
    await client.end();

    // The compute's Postgres and agent killed: a new compute under a higher term serves, with one safekeeper down.
    const before = await endpointState();
    const postmaster = postmasterPid(platform.provisioner.pgDataDir(before.currentComputeId));
    for (const pid of [...platform.provisioner.agentPids(), ...(postmaster === null ? [] : [postmaster])]) process.kill(pid, 'SIGKILL');
    const replacedAt = Date.now();
    await waitFor(
      async () => {
        const now = await endpointState();
        return now.state === EndpointState.ENDPOINT_STATE_RUNNING && now.currentComputeId !== before.currentComputeId;
      },
      { what: 'a new compute RUNNING', timeoutMs: 180_000 },
    );
    client = await gateway.connect(endpointId, owner);
    expect((await client.query('SELECT count(*)::int AS n FROM items')).rows[0].n).to.equal(6000);
    process.stdout.write(`      a new compute served ${((Date.now() - replacedAt) / 1000).toFixed(1)} s after the kill\n`);

    // Some segments of WAL, made durable in object storage by the pageserver: a returning safekeeper needs only
    // what follows (from the segment of the pageserver's durable LSN), not the timeline's start.
    await client.query("INSERT INTO items SELECT n, repeat('y', 200) FROM generate_series(100001, 250000) AS n");
    const written = (await platform.safekeepers[0].status(timelineId)).commitLsn;
    expect(written - (await platform.safekeepers[0].status(timelineId)).timelineStartLsn > 2n * WAL_SEGMENT_SIZE, 'over two segments of WAL').to.equal(true);
    let durable = 0n;
    await waitFor(
      async () => {
        durable = (await platform.pageserver.timelines.describeTimeline({ timelineId })).timeline?.remoteConsistentLsn ?? 0n;
        return durable >= written;
      },
      { what: 'the WAL durable in object storage', timeoutMs: 120_000 },
    );

    // Two of three hold the timeline; the third comes back with an empty disk and is repaired by the control plane.
    expect(await controlPlaneMetric(platform, 'spg99_control_plane_timeline_safekeepers_in_sync', `timeline_id="${timelineId}"`)).to.equal(2);
    fs.rmSync(down.dataDir, { recursive: true, force: true });
    fs.mkdirSync(down.dataDir, { recursive: true });
    await down.restart();
    await waitFor(async () => (await controlPlaneMetric(platform, 'spg99_control_plane_timeline_safekeepers_in_sync', `timeline_id="${timelineId}"`)) === 3, {
      what: 'three safekeepers in sync',
      timeoutMs: 120_000,
    });
    // It takes the writer's new WAL too, and holds what the others hold.
    await client.query("INSERT INTO items SELECT n, 'after the return' FROM generate_series(6001, 7000) AS n");
    const others = await Promise.all(platform.safekeepers.slice(0, 2).map((node) => node.status(timelineId)));
    const commitLsn = others.reduce((highest, status) => (status.commitLsn > highest ? status.commitLsn : highest), 0n);
    await waitFor(async () => (await down.status(timelineId)).flushLsn >= commitLsn, { what: 'the returned safekeeper following the writer', timeoutMs: 60_000 });
    const returned = await down.status(timelineId);
    expect(returned.promisedTerm, 'the returned safekeeper knows the current term').to.equal(others[0].promisedTerm);
    expect(returned.oldestLsn, 'its WAL begins at the segment of the durable LSN').to.equal(segmentStart(segmentNumber(durable)));
    expect(returned.oldestLsn > returned.timelineStartLsn + WAL_SEGMENT_SIZE, 'not at the timeline\'s start').to.equal(true);
    expect(await controlPlaneMetric(platform, 'spg99_control_plane_timeline_repairs_total', 'action="pull",outcome="done"')).to.be.at.least(1);
    await client.end();
  });

  it('retries a start that failed while a majority of safekeepers was down, and says why without blaming Redis', async () => {
    const h = harness();
    const { platform, api, endpointId, gateway, owner } = await startGatewayPlatform(h, { gatewayArgs: ['--wake-timeout-s', '180'] });
    await Promise.all([platform.safekeepers[1].stop(), platform.safekeepers[2].stop()]);

    await api.startEndpoint({ endpointId });
    await waitFor(async () => (await api.getEndpoint({ endpointId })).endpoint!.state === EndpointState.ENDPOINT_STATE_FAILED, {
      what: 'the start FAILED',
      timeoutMs: 60_000,
    });
    const failed = (await api.getEndpoint({ endpointId })).endpoint!;
    expect(failed.stateReason).to.match(/safekeeper/);
    expect(failed.stateReason).to.not.match(/Redis/);

    // A connection tries it again; it fails the same way, with a status that tells the caller to retry.
    const woken = await failure(platform.controlPlane.internal().wakeEndpoint({ endpointId }));
    expect(woken.code, woken.details).to.equal(Status.UNAVAILABLE);
    expect(woken.details).to.match(/safekeeper/);
    expect(woken.details).to.not.match(/Redis/);

    // One safekeeper back makes a majority: the reconciler's retry starts it, with no client asking.
    await platform.safekeepers[1].restart();
    await waitFor(async () => (await api.getEndpoint({ endpointId })).endpoint!.state === EndpointState.ENDPOINT_STATE_RUNNING, {
      what: 'the endpoint RUNNING after a retry',
      timeoutMs: 120_000,
    });
    const client = await gateway.connect(endpointId, owner);
    expect((await client.query('SELECT 1 AS one')).rows[0].one).to.equal(1);
    await client.end();
  });
});

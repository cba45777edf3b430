/**
 * The endpoint lifecycle through the control plane, with real processes: Redis, three safekeepers, a pageserver, the
 * provisioner (and the agents and Postgres it starts) and the control plane with --pageserver, --safekeepers and
 * --provisioner. Start → RUNNING → SQL → stop (processes gone) → wake with the data intact and a higher term; two
 * concurrent starts give one compute; a read key cannot start.
 */
import { expect } from 'chai';
import net from 'node:net';
import pg from 'pg';
import { Status } from '../../src/lib/grpc/errors.js';
import { ApiKeyScope, EndpointState, type Endpoint } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { ComputeState } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { useHarness, waitFor } from '../harness/process.js';
import { failure, type ControlPlaneClient } from '../harness/control-plane.js';
import type { ProvisionerNode } from '../harness/provisioner.js';
import { startPlatform } from '../harness/platform.js';
import { connectPostgres, connectSuperuser } from '../harness/computes.js';


/** As a role with its password over TCP, or (by default) as the superuser over the compute's Unix socket. */
function connect(address: string, credentials?: { user: string; password: string }): Promise<pg.Client> {
  return credentials ? connectPostgres(address, credentials) : connectSuperuser(Number(address.split(':')[1]));
}

/** Checks an invariant every half second for `ms`: what must not happen would show within that time. */
async function staysFor(ms: number, check: () => Promise<void>): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    await check();
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** Whether something accepts TCP connections at host:port. */
async function listening(address: string): Promise<boolean> {
  const [host, port] = address.split(':');
  return new Promise((resolve) => {
    const socket = net.connect({ host, port: Number(port) });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

describe('endpoint lifecycle (control plane, provisioner, safekeepers, pageserver, real processes)', function () {
  this.timeout(300_000);
  const harness = useHarness();
  const clients: pg.Client[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.end().catch(() => undefined);
  });

  async function cluster(options: { controlPlaneArgs?: string[]; suspendTimeoutS?: number } = {}) {
    const { controlPlane, provisioner, pageserver } = await startPlatform(harness(), { controlPlaneArgs: options.controlPlaneArgs });
    const created = await controlPlane.operator().createTenant({ name: 'acme' });
    const api = controlPlane.client(created.apiKeySecret);
    const project = await api.createProject({
      name: 'shop',
      defaultEndpointSettings: options.suspendTimeoutS === undefined ? undefined : { suspendTimeout: { seconds: BigInt(options.suspendTimeoutS), nanos: 0 } },
    });
    return { controlPlane, provisioner, pageserver, api, project, endpointId: project.defaultEndpoint!.endpointId };
  }

  async function waitEndpoint(api: ControlPlaneClient, endpointId: string, state: EndpointState, provisioner: ProvisionerNode): Promise<Endpoint> {
    return waitFor(
      async () => {
        const { endpoint } = await api.getEndpoint({ endpointId });
        if (endpoint?.state === EndpointState.ENDPOINT_STATE_FAILED && state !== EndpointState.ENDPOINT_STATE_FAILED) {
          const log = endpoint.currentComputeId ? provisioner.agentLog(endpoint.currentComputeId).split('\n').slice(-15).join('\n') : '';
          throw new Error(`endpoint FAILED: ${endpoint.stateReason}\n${log}`);
        }
        return endpoint?.state === state ? endpoint : undefined;
      },
      { what: `endpoint ${endpointId} ${EndpointState[state]}`, timeoutMs: 200_000, intervalMs: 200 },
    );
  }

  it('starts, serves SQL, stops (processes gone), wakes with a higher term and the data intact', async () => {
    const { controlPlane, provisioner, api, project, endpointId } = await cluster();
    expect(project.defaultEndpoint?.state).to.equal(EndpointState.ENDPOINT_STATE_STOPPED);
    const internal = controlPlane.internal();
    const stoppedRoute = (await internal.resolveEndpoint({ endpointId })).route;
    expect(stoppedRoute).to.deep.include({ endpointId, state: EndpointState.ENDPOINT_STATE_STOPPED, postgresAddress: '' });

    const started = (await api.startEndpoint({ endpointId })).endpoint!;
    expect(started.state).to.equal(EndpointState.ENDPOINT_STATE_STARTING);
    expect(started.currentComputeId).to.match(/^cp-[0-9a-f]{32}$/);
    const running = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_RUNNING, provisioner);
    expect(running.currentComputeId).to.equal(started.currentComputeId);
    expect(running.writerTerm > 0n).to.equal(true);
    expect(running.stateReason).to.contain('running');
    expect(running.stateChangedAt).to.be.instanceOf(Date);
    const route = (await internal.resolveEndpoint({ endpointId })).route!;
    expect(route.state).to.equal(EndpointState.ENDPOINT_STATE_RUNNING);
    expect(route.postgresAddress).to.match(/^127\.0\.0\.1:[0-9]+$/);
    expect(route.computeId).to.equal(running.currentComputeId);
    const listed = (await api.listEndpoints({ projectId: project.project!.projectId, branchId: '' })).endpoints;
    expect(listed.map((endpoint) => [endpoint.endpointId, endpoint.state])).to.deep.equal([[endpointId, EndpointState.ENDPOINT_STATE_RUNNING]]);

    const client = await connect(route.postgresAddress);
    clients.push(client);
    await client.query('CREATE TABLE kept (id int PRIMARY KEY, note text)');
    await client.query(`INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 50) g`);
    await client.end();

    const stopping = (await api.stopEndpoint({ endpointId })).endpoint!;
    expect([EndpointState.ENDPOINT_STATE_SUSPENDING, EndpointState.ENDPOINT_STATE_STOPPED]).to.include(stopping.state);
    const stopped = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
    expect(stopped.currentComputeId).to.equal('');
    expect(stopped.stateReason).to.contain('stopped');
    const { compute } = await provisioner.client.describeCompute({ computeId: running.currentComputeId });
    expect(compute?.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    expect(provisioner.agentPids()).to.deep.equal([]);
    expect((await internal.resolveEndpoint({ endpointId })).route).to.deep.include({ state: EndpointState.ENDPOINT_STATE_STOPPED, postgresAddress: '' });
    // A stopped endpoint is answered unchanged.
    expect((await api.stopEndpoint({ endpointId })).endpoint?.state).to.equal(EndpointState.ENDPOINT_STATE_STOPPED);

    const woken = (await internal.wakeEndpoint({ endpointId })).route!;
    expect(woken.state).to.equal(EndpointState.ENDPOINT_STATE_RUNNING);
    expect(woken.postgresAddress).to.match(/^127\.0\.0\.1:[0-9]+$/);
    expect(woken.computeId).to.not.equal(running.currentComputeId);
    // On the same machine, the stopped compute's data directory served the new one (no basebackup).
    expect(provisioner.agentLog(woken.computeId)).to.contain('starting from the cached data directory');
    const rewoken = (await api.getEndpoint({ endpointId })).endpoint!;
    expect(rewoken.writerTerm > running.writerTerm, `term ${rewoken.writerTerm} > ${running.writerTerm}`).to.equal(true);
    const again = await connect(woken.postgresAddress);
    clients.push(again);
    const { rows } = await again.query('SELECT count(*)::int AS n, max(note) AS last FROM kept');
    expect(rows[0]).to.deep.equal({ n: 50, last: 'row 9' });
    await again.end();
    // A running endpoint is answered unchanged by a start.
    expect((await api.startEndpoint({ endpointId })).endpoint?.currentComputeId).to.equal(woken.computeId);

    await api.stopEndpoint({ endpointId });
    await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
    expect(provisioner.agentPids()).to.deep.equal([]);
  });

  it('gives two concurrent starts one compute, and refuses a read key', async () => {
    const { controlPlane, api, provisioner, endpointId } = await cluster();
    const read = await api.createApiKey({ name: 'reader', scope: ApiKeyScope.API_KEY_SCOPE_READ });
    const refused = await failure(controlPlane.client(read.secret).startEndpoint({ endpointId }));
    expect(Status[refused.code]).to.equal(Status[Status.PERMISSION_DENIED]);
    expect(refused.details).to.contain('admin key');
    expect((await controlPlane.client(read.secret).getEndpoint({ endpointId })).endpoint?.state).to.equal(EndpointState.ENDPOINT_STATE_STOPPED);

    const [first, second] = await Promise.all([api.startEndpoint({ endpointId }), api.startEndpoint({ endpointId })]);
    expect(first.endpoint?.state).to.equal(EndpointState.ENDPOINT_STATE_STARTING);
    expect(second.endpoint?.state).to.equal(EndpointState.ENDPOINT_STATE_STARTING);
    expect(first.endpoint?.currentComputeId).to.equal(second.endpoint?.currentComputeId);
    const running = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_RUNNING, provisioner);
    const { computes } = await provisioner.client.listComputes({ endpointId });
    expect(computes.map((compute) => compute.computeId)).to.deep.equal([running.currentComputeId]);
    expect(provisioner.agentPids()).to.have.length(1);

    await api.stopEndpoint({ endpointId });
    await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
  });
  it('scales to zero after the suspend timeout without clients (processes gone), wakes with the data, and branches at a past time', async () => {
    const { controlPlane, provisioner, api, project, endpointId } = await cluster({ suspendTimeoutS: 3 });
    const internal = controlPlane.internal();
    const owner = { user: project.defaultRole!.name, password: project.defaultRolePassword };
    const route = (await internal.wakeEndpoint({ endpointId })).route!;
    expect(route.state).to.equal(EndpointState.ENDPOINT_STATE_RUNNING);
    const first = (await api.getEndpoint({ endpointId })).endpoint!;

    // The project's role logs in with its password (SCRAM against the verifier the compute was given).
    const client = await connect(route.postgresAddress, owner);
    clients.push(client);
    await client.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
    await client.query(`INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 20) g`);
    const wrong = await connect(route.postgresAddress, { user: owner.user, password: 'not-the-password' }).then(
      () => 'connected',
      (error: Error) => error.message,
    );
    expect(wrong).to.contain('password authentication failed');

    // Roles change on the running compute without a restart.
    const { role: reader, password: readerPassword } = await api.createRole({ branchId: first.branchId, name: 'reader' });
    const asReader = await connect(route.postgresAddress, { user: 'reader', password: readerPassword });
    expect((await asReader.query('SELECT current_user AS me')).rows[0].me).to.equal('reader');
    await asReader.end();
    const reset = await api.resetRolePassword({ roleId: reader!.roleId });
    await connect(route.postgresAddress, { user: 'reader', password: readerPassword }).then(
      () => expect.fail('the old password still works after a reset'),
      (error: Error) => expect(error.message).to.contain('password authentication failed'),
    );
    await (await connect(route.postgresAddress, { user: 'reader', password: reset.password })).end();
    await api.deleteRole({ roleId: reader!.roleId });
    await connect(route.postgresAddress, { user: 'reader', password: reset.password }).then(
      () => expect.fail('a deleted role still logs in'),
      (error: Error) => expect(error.message).to.match(/does not exist|authentication failed/),
    );

    // A connected client keeps the endpoint up past its timeout (the agent reports it): an invariant watched for
    // three timeouts, as a suspension would show within one.
    await staysFor(9_000, async () => {
      expect((await api.getEndpoint({ endpointId })).endpoint?.state, 'suspended while a client was connected').to.equal(EndpointState.ENDPOINT_STATE_RUNNING);
    });

    const { role: gone, password: gonePassword } = await api.createRole({ branchId: first.branchId, name: 'gone' });
    const branchPoint = new Date();
    await new Promise((resolve) => setTimeout(resolve, 50));
    await client.query(`INSERT INTO orders SELECT g, 'after' FROM generate_series(21, 30) g`);
    await client.end();

    // Without clients it is suspended after the timeout: its processes are gone.
    const stopped = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
    expect(stopped.stateReason).to.contain('suspended: no client connection');
    expect(provisioner.agentPids()).to.deep.equal([]);
    expect(await listening(route.postgresAddress), 'Postgres of the suspended compute still listens').to.equal(false);

    // Roles changed while no compute runs reach the next one: a new role logs in, a deleted one no longer does.
    await api.deleteRole({ roleId: gone!.roleId });
    const late = await api.createRole({ branchId: first.branchId, name: 'late' });

    // A wake brings the data back under a higher term.
    const woken = (await internal.wakeEndpoint({ endpointId })).route!;
    await (await connect(woken.postgresAddress, { user: 'late', password: late.password })).end();
    await connect(woken.postgresAddress, { user: 'gone', password: gonePassword }).then(
      () => expect.fail('a role deleted while the endpoint was stopped still logs in'),
      (error: Error) => expect(error.message).to.match(/not permitted to log in|authentication failed/),
    );
    expect((await api.getEndpoint({ endpointId })).endpoint!.writerTerm > first.writerTerm).to.equal(true);
    const again = await connect(woken.postgresAddress, owner);
    clients.push(again);
    expect((await again.query('SELECT count(*)::int AS n FROM orders')).rows[0].n).to.equal(30);
    // `again` stays connected while the branch is made and used: with a 3 s suspend timeout the main endpoint would
    // otherwise suspend meanwhile (as it should), and the check below would find it stopped.

    // A branch at the time between the two inserts sees only the first.
    const branched = await api.createBranch({ projectId: project.project!.projectId, name: 'before-after', parentBranchId: '', parentTime: branchPoint, createEndpoint: true });
    expect(branched.branch!.parentLsn > 0n).to.equal(true);
    const branchRoute = (await internal.wakeEndpoint({ endpointId: branched.endpoint!.endpointId })).route!;
    const onBranch = await connect(branchRoute.postgresAddress, owner);
    clients.push(onBranch);
    expect((await onBranch.query(`SELECT count(*)::int AS n, count(*) FILTER (WHERE note = 'after')::int AS later FROM orders`)).rows[0]).to.deep.equal({ n: 20, later: 0 });
    await onBranch.query(`INSERT INTO orders VALUES (1000, 'branch only')`);
    await onBranch.end();
    expect((await again.query('SELECT count(*)::int AS n FROM orders WHERE id = 1000')).rows[0].n, 'a branch write reached its parent').to.equal(0);
    await again.end();
    for (const id of [endpointId, branched.endpoint!.endpointId]) await api.stopEndpoint({ endpointId: id });
    await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
    await waitEndpoint(api, branched.endpoint!.endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
  });

  it('converges on one writer when the control plane is killed in the middle of a start', async () => {
    const { controlPlane, provisioner, api, endpointId } = await cluster();
    const starting = (await api.startEndpoint({ endpointId })).endpoint!;
    await controlPlane.restart({ crash: true });
    const running = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_RUNNING, provisioner);
    expect(running.currentComputeId, 'the start resumed with the compute it recorded').to.equal(starting.currentComputeId);
    const live = (await provisioner.client.listComputes({ endpointId })).computes.filter(
      (compute) => compute.state !== ComputeState.COMPUTE_STATE_STOPPED && compute.state !== ComputeState.COMPUTE_STATE_FAILED,
    );
    expect(live.map((compute) => compute.computeId)).to.deep.equal([running.currentComputeId]);
    expect(provisioner.agentPids()).to.have.length(1);
    const client = await connect((await controlPlane.internal().resolveEndpoint({ endpointId })).route!.postgresAddress);
    clients.push(client);
    await client.query('CREATE TABLE t (id int)');
    await client.query('INSERT INTO t VALUES (1)');
    await client.end();
    await api.stopEndpoint({ endpointId });
    await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
  });

  it('replaces a writer whose lease expired: the old one is fenced (its commit fails), the new one has a higher term', async () => {
    const { controlPlane, provisioner, api, endpointId } = await cluster({ controlPlaneArgs: ['--writer-lease-ttl-s', '3'] });
    await api.startEndpoint({ endpointId });
    const first = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_RUNNING, provisioner);
    const firstRoute = (await controlPlane.internal().resolveEndpoint({ endpointId })).route!;
    const old = await connect(firstRoute.postgresAddress);
    clients.push(old);
    await old.query('CREATE TABLE ledger (id int PRIMARY KEY)');
    await old.query('INSERT INTO ledger VALUES (1)');
    // Over two lease ttls the agent's renewals keep its lease: the writer is never replaced.
    await staysFor(7_000, async () => {
      expect((await api.getEndpoint({ endpointId })).endpoint?.currentComputeId, 'a renewing writer was replaced').to.equal(first.currentComputeId);
    });

    // The agent hangs: no renewals, no WAL streaming. Its Postgres still takes the commit, which waits for the quorum.
    const [agentPid] = provisioner.agentPids();
    process.kill(agentPid, 'SIGSTOP');
    let settled = 'pending';
    const hanging = old.query('INSERT INTO ledger VALUES (2)').then(
      () => (settled = 'committed'),
      (error: Error) => (settled = `failed: ${error.message}`),
    );
    try {
      const second = await waitFor(
        async () => {
          const { endpoint } = await api.getEndpoint({ endpointId });
          return endpoint?.state === EndpointState.ENDPOINT_STATE_RUNNING && endpoint.currentComputeId !== first.currentComputeId ? endpoint : undefined;
        },
        { what: 'a new writer after the lease expired', timeoutMs: 200_000, intervalMs: 200 },
      );
      expect(second.writerTerm > first.writerTerm, `term ${second.writerTerm} > ${first.writerTerm}`).to.equal(true);
      expect(second.stateReason).to.contain('running');
      await hanging;
      expect(settled).to.match(/^failed: /);
      const secondRoute = (await controlPlane.internal().resolveEndpoint({ endpointId })).route!;
      const fresh = await connect(secondRoute.postgresAddress);
      clients.push(fresh);
      expect((await fresh.query('SELECT array_agg(id ORDER BY id) AS ids FROM ledger')).rows[0].ids).to.deep.equal([1]);
      await fresh.query('INSERT INTO ledger VALUES (3)');
      await fresh.end();
    } finally {
      try {
        process.kill(agentPid, 'SIGCONT');
      } catch {
        // Killed already by the takeover.
      }
    }
    await api.stopEndpoint({ endpointId });
    await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
  });

  it('replaces a compute whose Postgres dies for good, under a higher term, with the data intact', async () => {
    const { controlPlane, provisioner, api, endpointId } = await cluster({ controlPlaneArgs: ['--writer-lease-ttl-s', '5'] });
    await api.startEndpoint({ endpointId });
    const first = await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_RUNNING, provisioner);
    const route = (await controlPlane.internal().resolveEndpoint({ endpointId })).route!;
    const client = await connect(route.postgresAddress);
    await client.query('CREATE TABLE kept (id int)');
    await client.query('INSERT INTO kept SELECT generate_series(1, 10)');
    await client.end();
    // kill -9 of the agent: the provisioner restarts it under the same term, which the safekeepers refuse to a new
    // process, so the compute ends FAILED and the control plane starts a new one with a higher term.
    for (const pid of provisioner.agentPids()) process.kill(pid, 'SIGKILL');
    const second = await waitFor(
      async () => {
        const { endpoint } = await api.getEndpoint({ endpointId });
        return endpoint?.state === EndpointState.ENDPOINT_STATE_RUNNING && endpoint.currentComputeId !== first.currentComputeId ? endpoint : undefined;
      },
      { what: 'a replacement compute', timeoutMs: 200_000, intervalMs: 200 },
    );
    expect(second.writerTerm > first.writerTerm).to.equal(true);
    const again = await connect((await controlPlane.internal().resolveEndpoint({ endpointId })).route!.postgresAddress);
    clients.push(again);
    expect((await again.query('SELECT count(*)::int AS n FROM kept')).rows[0].n).to.equal(10);
    await again.end();
    await api.stopEndpoint({ endpointId });
    await waitEndpoint(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED, provisioner);
  });
});

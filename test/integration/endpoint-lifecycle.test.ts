/**
 * The endpoint lifecycle through the control plane, with real processes: Redis, three safekeepers, a pageserver, the
 * provisioner (and the agents and Postgres it starts) and the control plane with --pageserver, --safekeepers and
 * --provisioner. Start → RUNNING → SQL → stop (processes gone) → wake with the data intact and a higher term; two
 * concurrent starts give one compute; a read key cannot start.
 */
import { expect } from 'chai';
import pg from 'pg';
import { Status } from '../../src/lib/grpc/errors.js';
import { ApiKeyScope, EndpointState, type Endpoint } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { ComputeState } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { useHarness, waitFor } from '../harness/process.js';
import { RedisNode } from '../harness/redis.js';
import { ControlPlaneNode, failure, type ControlPlaneClient } from '../harness/control-plane.js';
import { PageserverNode } from '../harness/pageserver.js';
import { startSafekeepers } from '../harness/safekeepers.js';
import { ProvisionerNode } from '../harness/provisioner.js';


async function connect(address: string): Promise<pg.Client> {
  const [host, port] = address.split(':');
  const client = new pg.Client({ host, port: Number(port), user: 'postgres', database: 'postgres', connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

describe('endpoint lifecycle (control plane, provisioner, safekeepers, pageserver, real processes)', function () {
  this.timeout(300_000);
  const harness = useHarness();
  const clients: pg.Client[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.end().catch(() => undefined);
  });

  async function cluster() {
    const [redis, safekeepers, pageserver, provisioner] = await Promise.all([
      RedisNode.start(harness()),
      startSafekeepers(harness(), 3),
      PageserverNode.start(harness()),
      ProvisionerNode.start(harness()),
    ]);
    const controlPlane = await ControlPlaneNode.start(harness(), {
      redisUrl: redis.url,
      pageserver: pageserver.address,
      safekeepers: safekeepers.map((node) => node.address),
      provisioner: provisioner.address,
    });
    const created = await controlPlane.operator().createTenant({ name: 'acme' });
    const api = controlPlane.client(created.apiKeySecret);
    const project = await api.createProject({ name: 'shop' });
    return { controlPlane, provisioner, api, project, endpointId: project.defaultEndpoint!.endpointId };
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
});

/**
 * The gateway with the whole platform as real processes (Redis, safekeepers, pageserver, provisioner, control
 * plane, computes): clients are `pg` connections through TLS with SNI or plaintext with options=endpoint=…;
 * SCRAM against the role's verifier (a wrong password wakes nothing), wake-on-connect, both pooler modes,
 * prepared statements across pooled server connections, session isolation, cancel, and the admin API.
 */
import net from 'node:net';
import { expect } from 'chai';
import pg from 'pg';
import { EndpointState, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { ClientState, PoolMode } from '../../gen/spg99/gateway/v1/gateway.js';
import { useHarness, waitFor } from '../harness/process.js';
import type { ControlPlaneClient } from '../harness/control-plane.js';
import { startGatewayPlatform, type GatewayPlatformOptions } from '../harness/platform.js';
import { GatewayNode } from '../harness/gateway.js';
import { checkLocalServerIdentity } from '../../src/lib/tls-certs.js';

/** The error a connection attempt fails with (the test fails when it connects). */
async function connectFailure(config: pg.ClientConfig): Promise<Error & { code?: string }> {
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (error) {
    return error as Error & { code?: string };
  }
  await client.end();
  throw new Error('expected the connection to be refused');
}

describe('gateway (TLS, routing, SCRAM, wake-on-connect, pooler; real processes)', function () {
  this.timeout(300_000);
  const harness = useHarness();
  const clients: pg.Client[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.end().catch(() => undefined);
  });

  const platform = (options: GatewayPlatformOptions = {}) => startGatewayPlatform(harness(), options);


  async function endpointState(api: ControlPlaneClient, endpointId: string): Promise<EndpointState> {
    return (await api.getEndpoint({ endpointId })).endpoint!.state;
  }

  it('wakes a stopped endpoint on connect through TLS with SNI; a wrong password or an unknown role wakes nothing', async () => {
    const { gateway, api, endpointId, owner } = await platform();
    // Refused logins first: the endpoint must stay stopped.
    const wrong = await connectFailure(gateway.clientConfig(endpointId, { ...owner, password: 'not-the-password' }));
    expect(wrong.message).to.contain(`password authentication failed for user "${owner.user}"`);
    expect(wrong.code).to.equal('28P01');
    const unknownRole = await connectFailure(gateway.clientConfig(endpointId, { user: 'nobody', password: 'x' }));
    expect(unknownRole.message, 'an unknown role looks like a wrong password').to.contain('password authentication failed for user "nobody"');
    expect(await endpointState(api, endpointId)).to.equal(EndpointState.ENDPOINT_STATE_STOPPED);

    const started = Date.now();
    const client = await gateway.connect(endpointId, owner);
    clients.push(client);
    const coldStartMs = Date.now() - started;
    const { rows } = await client.query('SELECT current_user AS me, 40 + 2 AS answer');
    expect(rows[0]).to.deep.equal({ me: owner.user, answer: 42 });
    expect(await endpointState(api, endpointId)).to.equal(EndpointState.ENDPOINT_STATE_RUNNING);
    expect(coldStartMs).to.be.greaterThan(0);
    await client.query('CREATE TABLE items (id int PRIMARY KEY, name text)');
    await client.query(`INSERT INTO items VALUES (1, 'one'), (2, 'two')`);

    // The admin API sees the client: TLS, session mode, its role.
    const listed = (await gateway.admin.listClients({ endpointId })).clients;
    expect(listed).to.have.length(1);
    expect(listed[0]).to.deep.include({ endpointId, role: owner.user, database: 'postgres', tls: true, mode: PoolMode.POOL_MODE_SESSION, state: ClientState.CLIENT_STATE_IDLE });

    // Plaintext naming the endpoint in options reaches the same database.
    const plain = await gateway.connect(endpointId, { ...owner, tls: false });
    clients.push(plain);
    expect((await plain.query('SELECT count(*)::int AS n FROM items')).rows[0].n).to.equal(2);
  });

  it('answers clients that name no endpoint, an unknown one, or come without TLS when it is required, saying what to do', async () => {
    const { controlPlane, gateway, endpointId, owner } = await platform();
    const none = await connectFailure({ host: '127.0.0.1', port: gateway.port, user: owner.user, password: owner.password, ssl: { ca: gateway.caCert, servername: 'localhost', checkServerIdentity: checkLocalServerIdentity } });
    expect(none.message).to.contain('which endpoint?');
    expect(none.message).to.not.contain('undefined');
    const unknown = `ep-${'0'.repeat(32)}`;
    const missing = await connectFailure(gateway.clientConfig(unknown, owner));
    expect(missing.message).to.contain(`endpoint ${unknown} does not exist`);
    const malformed = await connectFailure({ ...gateway.clientConfig(endpointId, { ...owner, tls: false }), options: 'endpoint=ep-nope' });
    expect(malformed.message).to.contain('"ep-nope" in options is not an endpoint id');

    const strict = await GatewayNode.start(harness(), { controlPlane: controlPlane.internalAddress, allowPlaintext: false });
    const plaintext = await connectFailure(strict.clientConfig(endpointId, { ...owner, tls: false }));
    expect(plaintext.message).to.contain('SSL is required');
  });

  it('pools in transaction mode: prepared statements work across server connections, SET never leaks, cancel reaches the query', async () => {
    const { gateway, endpointId, owner } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION, gatewayArgs: ['--pool-size', '2'] });
    const setup = await gateway.connect(endpointId, { ...owner, pooled: true });
    clients.push(setup);
    await setup.query('CREATE TABLE counters (id int PRIMARY KEY, n int)');
    await setup.query('INSERT INTO counters SELECT g, 0 FROM generate_series(1, 8) g');

    // Six clients on a pool of two: every transaction takes whichever server connection is free.
    const many = await Promise.all(Array.from({ length: 6 }, () => gateway.connect(endpointId, { ...owner, pooled: true })));
    clients.push(...many);
    await Promise.all(
      many.map(async (client, index) => {
        for (let round = 0; round < 15; round++) {
          // A named statement: prepared once per client, executed on any server connection.
          const { rows } = await client.query({ name: 'bump', text: 'UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING n', values: [1 + (index % 8)] });
          expect(rows).to.have.length(1);
          const read = await client.query({ name: 'read', text: 'SELECT n FROM counters WHERE id = $1', values: [1 + (index % 8)] });
          expect(read.rows[0].n).to.be.at.least(1);
        }
      }),
    );
    expect((await setup.query('SELECT sum(n)::int AS total FROM counters')).rows[0].total).to.equal(6 * 15);
    const pools = (await gateway.admin.listPools({ endpointId })).pools.filter((pool) => pool.mode === PoolMode.POOL_MODE_TRANSACTION);
    expect(pools).to.have.length(1);
    expect(pools[0].serverConnections).to.be.at.most(2);

    // A session setting of one client is never seen by another on the same server connections.
    const [first, second] = many;
    await first.query(`SET application_name = 'leaky'`);
    await first.query(`SET search_path = 'nowhere'`);
    for (let attempt = 0; attempt < 10; attempt++) {
      const { rows } = await second.query('SELECT current_setting($1) AS name, current_setting($2) AS path', ['application_name', 'search_path']);
      expect(rows[0].name).to.not.equal('leaky');
      expect(rows[0].path).to.not.equal('nowhere');
    }
    // A transaction keeps its server connection from BEGIN to COMMIT.
    await second.query('BEGIN');
    const backend = (await second.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
    await Promise.all(many.slice(2).map((client) => client.query('SELECT pg_sleep(0.05)')));
    expect((await second.query('SELECT pg_backend_pid() AS pid')).rows[0].pid).to.equal(backend);
    await second.query('COMMIT');

    // Cancel: the gateway forwards the client's CancelRequest to the server connection running its query.
    const sleeper = await gateway.connect(endpointId, { ...owner, pooled: true });
    clients.push(sleeper);
    const running = sleeper.query('SELECT pg_sleep(60)').then(
      () => 'finished',
      (error: Error) => error.message,
    );
    await waitFor(async () => ((await setup.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'`)).rows[0].n === 1 ? true : undefined), {
      what: 'the sleep running',
      timeoutMs: 20_000,
    });
    const keys = sleeper as unknown as { processID: number; secretKey: number };
    await sendCancel(gateway.port, keys.processID, keys.secretKey);
    expect(await running).to.contain('canceling statement due to user request');
    expect((await sleeper.query('SELECT 1 AS ok')).rows[0].ok).to.equal(1);
  });

  it('pauses an endpoint (new transactions wait, the running one finishes) and resumes it', async () => {
    const { gateway, endpointId, owner } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION });
    const [busy, waiting] = await Promise.all([gateway.connect(endpointId, { ...owner, pooled: true }), gateway.connect(endpointId, { ...owner, pooled: true })]);
    clients.push(busy, waiting);
    await busy.query('BEGIN');
    await busy.query('SELECT 1');
    const pausing = gateway.admin.pauseEndpoint({ endpointId, reason: 'test' });
    await waitFor(async () => ((await gateway.admin.listPools({ endpointId })).pools.some((pool) => pool.paused) ? true : undefined), { what: 'the pause to take hold' });
    let answered = false;
    const held = waiting.query('SELECT 7 AS seven').then((result) => {
      answered = true;
      return result.rows[0].seven as number;
    });
    await busy.query('COMMIT');
    await pausing;
    const pools = (await gateway.admin.listPools({ endpointId })).pools;
    expect(pools.every((pool) => pool.paused)).to.equal(true);
    expect(answered, 'a transaction ran while the endpoint was paused').to.equal(false);
    await gateway.admin.resumeEndpoint({ endpointId });
    expect(await held).to.equal(7);
  });
});

/** Sends a CancelRequest (plaintext) for the client with this key. */
function sendCancel(port: number, processId: number, secretKey: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const packet = Buffer.alloc(16);
    packet.writeInt32BE(16, 0);
    packet.writeInt32BE(80877102, 4);
    packet.writeInt32BE(processId, 8);
    packet.writeInt32BE(secretKey, 12);
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.end(packet));
    socket.on('close', () => resolve());
    socket.on('error', reject);
  });
}


/**
 * The gateway is invisible to clients (issue 17): what a driver sees through it in session mode and in the
 * transaction pooler is what it sees connected to the compute's Postgres directly, with the same role. Each case
 * runs against all three; the pooler's session-state contract (docs/pooler.md) is tested line by line.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { expect } from 'chai';
import pg from 'pg';
import postgres from 'postgres';
import { PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { Harness } from '../harness/process.js';
import { startGatewayPlatform } from '../harness/platform.js';
import { parseErrorFields } from '../../src/gateway/protocol.js';

type Target = 'direct' | 'session' | 'pooler';

/**
 * COPY FROM STDIN through the extended protocol as libpq-style clients send it: Parse, Bind, Execute and a Sync at
 * once, then the data, CopyDone and another Sync. Postgres ignores the first Sync (it arrives in copy-in mode), so one
 * ReadyForQuery answers both.
 */
class ExtendedCopyIn extends EventEmitter implements pg.Submittable {
  constructor(
    private readonly sql: string,
    private readonly data: string,
  ) {
    super();
  }
  submit(connection: pg.Connection): void {
    const raw = connection as unknown as { parse(query: { text: string }): void; bind(config: object): void; execute(config: object): void; sync(): void };
    raw.parse({ text: this.sql });
    raw.bind({});
    raw.execute({});
    raw.sync();
  }
  handleCopyInResponse(connection: pg.Connection): void {
    const raw = connection as unknown as { sendCopyFromChunk(chunk: Buffer): void; endCopyFrom(): void; sync(): void };
    raw.sendCopyFromChunk(Buffer.from(this.data));
    raw.endCopyFrom();
    raw.sync();
  }
  handleCommandComplete(): void {}
  handleError(error: Error): void {
    this.emit('error', error);
  }
  handleReadyForQuery(): void {
    this.emit('end');
  }
  /** Runs it on `client`; rejects with Postgres' error. */
  static async run(client: pg.Client, sql: string, data: string): Promise<void> {
    const copy = new ExtendedCopyIn(sql, data);
    const done = new Promise<void>((resolve, reject) => {
      let failure: Error | null = null;
      copy.on('error', (error: Error) => (failure = error));
      copy.on('end', () => (failure ? reject(failure) : resolve()));
    });
    void client.query(copy);
    await done;
  }
}
const TARGETS: Target[] = ['direct', 'session', 'pooler'];

describe('the gateway is invisible to clients: direct, session mode and the pooler side by side (real processes)', function () {
  this.timeout(600_000);
  // One platform for the whole suite (the cases are independent of each other: their own tables, their own clients).
  let harness: Harness;
  let failed = false;
  let setup: Awaited<ReturnType<typeof startGatewayPlatform>>;
  let directAddress: { host: string; port: number };
  const opened: Array<{ end(): Promise<unknown> }> = [];

  /** `pg` settings for `target`, with `extra` settings. */
  const config = (target: Target, extra: pg.ClientConfig = {}): pg.ClientConfig => {
    const base = target === 'direct'
      ? { host: directAddress.host, port: directAddress.port, user: setup.owner.user, password: setup.owner.password, database: 'postgres', ssl: false }
      : setup.gateway.clientConfig(setup.endpointId, { ...setup.owner, pooled: target === 'pooler' });
    return { ...base, ...extra };
  };
  const connect = async (target: Target, extra: pg.ClientConfig = {}): Promise<pg.Client> => {
    const client = new pg.Client(config(target, extra));
    client.on('error', () => undefined);
    await client.connect();
    opened.push(client);
    return client;
  };
  /** postgres.js for `target`, with startup parameters `connection` (plaintext, the endpoint named in options). */
  const postgresJs = (target: Target, connection: Record<string, string> = {}, options: postgres.Options<Record<string, never>> = {}) => {
    const host = target === 'direct' ? directAddress.host : '127.0.0.1';
    const port = target === 'direct' ? directAddress.port : setup.gateway.port;
    const endpoint = target === 'direct' ? {} : { options: `endpoint=${setup.endpointId}${target === 'pooler' ? '-pooler' : ''}` };
    const sql = postgres({ host, port, user: setup.owner.user, password: setup.owner.password, database: 'postgres', ssl: false, max: 1, onnotice: () => undefined, connection: { ...endpoint, ...connection }, ...options });
    opened.push({ end: () => sql.end({ timeout: 5 }) });
    return sql;
  };

  before(async () => {
    harness = new Harness();
    setup = await startGatewayPlatform(harness, { poolerMode: PoolerMode.POOLER_MODE_TRANSACTION, gatewayArgs: ['--wake-timeout-s', '240'] });
    // Waking the endpoint through the gateway gives the compute's address for the direct connections.
    const first = await setup.gateway.connect(setup.endpointId, setup.owner);
    await first.end();
    const route = (await setup.controlPlane.internal().resolveEndpoint({ endpointId: setup.endpointId })).route!;
    const [host, port] = route.postgresAddress.split(':');
    directAddress = { host: host!, port: Number(port) };
  });
  afterEach(async function () {
    if (this.currentTest?.state === 'failed') failed = true;
    for (const client of opened.splice(0)) await client.end().catch(() => undefined);
  });
  after(async () => {
    await harness?.teardown({ dumpLogs: failed });
  });

  it('forwards every startup parameter, per server connection in the pooler, and refuses what Postgres refuses with its own error', async () => {
    for (const target of TARGETS) {
      const client = await connect(target, { statement_timeout: 1234, lock_timeout: 2345, idle_in_transaction_session_timeout: 3456 });
      // In the pooler every statement is a transaction of its own, on whichever server connection is free.
      for (let round = 0; round < 3; round++) {
        const { rows } = await client.query(
          "SELECT current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt, current_setting('idle_in_transaction_session_timeout') AS it",
        );
        expect(rows[0], target).to.deep.equal({ st: '1234ms', lt: '2345ms', it: '3456ms' });
      }
      const custom = postgresJs(target, { 'spg99test.setting': 'forty-two', DateStyle: 'SQL, DMY' });
      const [row] = await custom`SELECT current_setting('spg99test.setting') AS custom, current_setting('DateStyle') AS style`;
      expect(row, target).to.deep.equal({ custom: 'forty-two', style: 'SQL, DMY' });
    }
    const refusals: Record<string, unknown> = {};
    for (const target of TARGETS) {
      const bad = postgresJs(target, { no_such_parameter: 'x' });
      const error = await bad`SELECT 1`.then(() => null, (caught: Error & { code?: string }) => caught);
      expect(error, target).to.not.equal(null);
      refusals[target] = { code: error!.code, message: error!.message };
    }
    expect(refusals.direct).to.deep.equal({ code: '42704', message: 'unrecognized configuration parameter "no_such_parameter"' });
    expect(refusals.session).to.deep.equal(refusals.direct);
    expect(refusals.pooler).to.deep.equal(refusals.direct);
  });

  it('shows the client\'s own application_name, and none when it sent none', async () => {
    for (const target of TARGETS) {
      const named = await connect(target, { application_name: 'billing-worker' });
      const unnamed = await connect(target);
      for (let round = 0; round < 2; round++) {
        expect((await named.query('SHOW application_name')).rows[0].application_name, target).to.equal('billing-worker');
        expect((await unnamed.query('SHOW application_name')).rows[0].application_name, target).to.equal('');
      }
      // What other sessions see (pg_stat_activity) is the client's name too, never the gateway's.
      const seen = await named.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'spg99-gateway'");
      expect(seen.rows[0].n, target).to.equal(0);
    }
  });

  it('passes on the single FATAL of a session the server ends (57P01), adding none of its own', async () => {
    const admin = await connect('direct');
    const seen: Record<string, string[]> = {};
    for (const target of TARGETS) {
      const client = new pg.Client(config(target));
      const errors: string[] = [];
      client.on('error', (error: Error & { code?: string }) => errors.push(error.code ?? error.message));
      await client.connect();
      const ended = new Promise((resolve) => client.once('end', resolve));
      // Inside a transaction, so that the pooler's client holds the server connection that is terminated.
      await client.query('BEGIN');
      const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
      await ended;
      seen[target] = errors;
    }
    // pg reports Postgres' FATAL and then the closed connection; any FATAL of the gateway's own would come between.
    expect(seen.direct![0]).to.equal('57P01');
    expect(seen.session, 'session').to.deep.equal(seen.direct);
    expect(seen.pooler, 'pooler').to.deep.equal(seen.direct);
  });

  it('re-plans a named statement prepared again after ALTER TABLE, for a brand-new client and the next ones', async () => {
    for (const target of TARGETS) {
      const table = `stale_${target}`;
      const owner = await connect(target);
      await owner.query(`CREATE TABLE ${table} (a int)`);
      await owner.query(`INSERT INTO ${table} VALUES (1)`);
      const statement = { name: 'read_all', text: `SELECT * FROM ${table}` };
      // Prepared and used on several server connections before the change.
      const before = await Promise.all([connect(target), connect(target), connect(target)]);
      for (const client of before) expect((await client.query(statement)).rows, target).to.deep.equal([{ a: 1 }]);
      await owner.query(`ALTER TABLE ${table} ADD COLUMN b int DEFAULT 2`);
      for (let round = 0; round < 4; round++) {
        const fresh = await connect(target);
        expect((await fresh.query(statement)).rows, `${target}, new client ${round}`).to.deep.equal([{ a: 1, b: 2 }]);
        expect((await fresh.query(statement)).rows, `${target}, new client ${round} again`).to.deep.equal([{ a: 1, b: 2 }]);
      }
    }
  });

  it('keeps its record of prepared statements right through COPY in a transaction and COPY TO (no "already exists")', async () => {
    for (const target of TARGETS) {
      const table = `copy_${target}`;
      const sql = postgresJs(target);
      await sql.unsafe(`CREATE TABLE ${table} (id int, name text)`);
      for (let round = 0; round < 3; round++) {
        // As postgres.js's own "Copy from works in transaction" (the COPY through the extended protocol).
        const ids = await sql.begin(async (transaction) => {
          await transaction`SELECT count(*) FROM ${transaction(table)}`;
          const writable = await transaction`COPY ${transaction(table)} FROM STDIN`.writable();
          await new Promise<void>((resolve, reject) => {
            writable.on('error', reject);
            writable.end(`${round}\tone\n${round}\ttwo\n`, () => resolve());
          });
          await transaction`INSERT INTO ${transaction(table)} VALUES (${round}, 'three')`;
          return (await transaction`SELECT id FROM ${transaction(table)} WHERE id = ${round}`).length;
        });
        expect(ids, target).to.equal(3);
        const readable = await sql`COPY ${sql(table)} TO STDOUT`.readable();
        let copied = '';
        for await (const chunk of readable) copied += String(chunk);
        expect(copied.split('\n').filter(Boolean), target).to.have.length(3 * (round + 1));
        const [{ count }] = await sql`SELECT count(*)::int AS count FROM ${sql(table)} WHERE id <= ${round}`;
        expect(count, target).to.equal(3 * (round + 1));
      }
      // The extended-protocol COPY with its ignored Sync, in a transaction and out of one; then named statements, one
      // failing, must each be answered for what they are (a failing one again, not "already exists").
      const client = await connect(target);
      await client.query('BEGIN');
      await ExtendedCopyIn.run(client, `COPY ${table} FROM STDIN`, '100\tfour\n');
      await client.query('COMMIT');
      await ExtendedCopyIn.run(client, `COPY ${table} FROM STDIN`, '101\tfive\n');
      for (let round = 0; round < 3; round++) {
        const error = await client.query({ name: `fails_${round}`, text: 'SELECT 1 / (count(*) - count(*))::int FROM pg_class' }).then(() => null, (caught: Error & { code?: string }) => caught);
        expect(error?.code, `${target}: ${error?.message}`).to.equal('22012');
        expect((await client.query({ name: `works_${round}`, text: `SELECT count(*)::int AS n FROM ${table} WHERE id >= 100` })).rows[0].n, target).to.equal(2);
      }
    }
  });

  it('answers an SSLRequest with bytes behind it as PostgreSQL 18 does: the answer first, then the refusal', async () => {
    const answer = async (port: number) => {
      const socket = net.connect(port, port === setup.gateway.port ? '127.0.0.1' : directAddress.host);
      const chunks: Buffer[] = [];
      socket.on('data', (chunk) => chunks.push(chunk));
      await new Promise((resolve) => socket.once('connect', resolve));
      const sslRequest = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
      socket.write(Buffer.concat([sslRequest, Buffer.from([0, 0, 0, 8, 0, 3, 0, 0])]));
      await new Promise((resolve) => socket.once('close', resolve));
      const bytes = Buffer.concat(chunks);
      return { first: String.fromCharCode(bytes[0]!), error: Object.fromEntries(parseErrorFields(bytes.subarray(1))) };
    };
    const direct = await answer(directAddress.port);
    const gateway = await answer(setup.gateway.port);
    // The compute's Postgres has no TLS ('N'); the gateway has ('S'): the letter differs, the order and the error do not.
    expect(direct.first).to.equal('N');
    expect(gateway.first).to.equal('S');
    expect({ C: gateway.error.C, M: gateway.error.M, D: gateway.error.D }).to.deep.equal({ C: direct.error.C, M: direct.error.M, D: direct.error.D });
  });

  it('keeps the pooler\'s session-state contract (docs/pooler.md), line by line', async () => {
    const refusalOf = async (client: pg.Client, sql: string, values?: unknown[]) =>
      client.query(sql, values).then(() => null, (error: Error & { code?: string; hint?: string }) => ({ code: error.code, message: error.message, hint: error.hint }));
    const pooled = await connect('pooler', { statement_timeout: 4321 });
    const session = await connect('session');
    // Refused with a clear error (0A000, feature_not_supported) in the pooler; all work in session mode.
    const refused: Array<[string, unknown[] | undefined, RegExp]> = [
      ['LISTEN spg99_channel', undefined, /^LISTEN is not supported in transaction pooling mode/],
      ['BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 1; COMMIT', undefined, /^cursors WITH HOLD are not supported/],
      ['SELECT pg_advisory_lock(42)', undefined, /^session-level advisory locks are not supported/],
      ['SELECT pg_try_advisory_lock($1)', [42], /^session-level advisory locks are not supported/],
      ['CREATE TEMP TABLE scratch (id int)', undefined, /^temporary tables that outlive their transaction are not supported/],
    ];
    for (const [sql, values, message] of refused) {
      const error = await refusalOf(pooled, sql, values);
      expect(error?.code, sql).to.equal('0A000');
      expect(error?.message, sql).to.match(message);
      expect(error?.hint, sql).to.contain('without -pooler');
      expect(await refusalOf(session, sql, values), `session mode: ${sql}`).to.equal(null);
    }
    // The client goes on normally after a refusal, inside a transaction block too (which the refusal aborts).
    await pooled.query('BEGIN');
    expect((await refusalOf(pooled, 'LISTEN spg99_channel'))?.code).to.equal('0A000');
    expect((await refusalOf(pooled, 'SELECT 1'))?.code, 'the block is aborted, as after any error').to.equal('25P02');
    await pooled.query('ROLLBACK');
    // What works in the pooler instead: transaction-scoped locks, cursors and temporary tables.
    await pooled.query('BEGIN');
    // Another key than the session-mode client's, which still holds its session lock on 42.
    await pooled.query('SELECT pg_advisory_xact_lock(43)');
    await pooled.query('DECLARE plain CURSOR FOR SELECT generate_series(1, 3) AS n');
    expect((await pooled.query('FETCH ALL FROM plain')).rows).to.have.length(3);
    await pooled.query('CREATE TEMP TABLE scratch (id int) ON COMMIT DROP');
    await pooled.query('INSERT INTO scratch VALUES (1)');
    await pooled.query('COMMIT');
    // Startup parameters follow the client onto every server connection; SET outside a transaction block does not.
    await pooled.query("SET statement_timeout = '9s'");
    for (let round = 0; round < 3; round++) expect((await pooled.query('SHOW statement_timeout')).rows[0].statement_timeout).to.equal('4321ms');
    // SET LOCAL inside a block holds for the block.
    await pooled.query('BEGIN');
    await pooled.query("SET LOCAL statement_timeout = '9s'");
    expect((await pooled.query('SHOW statement_timeout')).rows[0].statement_timeout).to.equal('9s');
    await pooled.query('COMMIT');
    // Named prepared statements follow the client: prepared once, executed on whichever server connection is free.
    const others = await Promise.all([connect('pooler'), connect('pooler')]);
    await Promise.all(others.map((client) => client.query('BEGIN')));
    for (let round = 0; round < 3; round++) expect((await pooled.query({ name: 'contract_answer', text: 'SELECT $1::int + 1 AS n', values: [round] })).rows[0].n).to.equal(round + 1);
    await Promise.all(others.map((client) => client.query('COMMIT')));
    for (let round = 0; round < 3; round++) expect((await pooled.query({ name: 'contract_answer', text: 'SELECT $1::int + 1 AS n', values: [round] })).rows[0].n).to.equal(round + 1);
  });
});

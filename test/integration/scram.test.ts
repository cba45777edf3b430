/**
 * SCRAM-SHA-256 against a real PostgreSQL 18 with `scram-sha-256` in pg_hba.conf: Postgres accepts a verifier made
 * by `createVerifier` as a role's password, computes the same verifiers from the same passwords (SASLprep
 * included), and lets the gateway's path through: a ClientKey recovered by `ScramServerSession` from a client that
 * knows the password logs in to Postgres with `ScramClientSession` in its key form, no password involved.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { expect } from 'chai';
import pg from 'pg';
import { parse, serialize } from 'pg-protocol';
import type { BackendMessage } from 'pg-protocol/dist/messages.js';
import { pino } from 'pino';
import { freePort } from '../../src/lib/net.js';
import { initdb, PostgresServer } from '../../src/lib/pg/postgres.js';
import {
  SCRAM_SHA_256,
  ScramAuthError,
  ScramClientSession,
  ScramServerSession,
  createVerifier,
  parseVerifier,
  type ScramClientCredentials,
} from '../../src/lib/scram.js';
import { TempDir } from '../harness/process.js';

const APP_PASSWORD = 'app-secret-\u00e4';

/** The fields of the backend messages this test reads (pg-protocol's parser sets them; its types do not say). */
interface Message extends BackendMessage {
  mechanisms?: string[];
  data?: string;
  fields?: Array<string | null>;
  code?: string;
  message?: string;
}

/** A bare protocol connection: what the gateway does towards a compute, reduced to the startup and one query. */
class WireConnection {
  private readonly queue: Message[] = [];
  private wake: (() => void) | null = null;
  private closed: Error | null = null;

  private constructor(private readonly socket: net.Socket) {
    void parse(socket, (message) => {
      this.queue.push(message as Message);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = new Error('the server closed the connection');
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  static async connect(port: number): Promise<WireConnection> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new WireConnection(socket);
  }

  send(buffer: Buffer): void {
    this.socket.write(buffer);
  }

  /** The next backend message; a server error becomes a thrown Error carrying its SQLSTATE. */
  async next(): Promise<Message> {
    for (;;) {
      const message = this.queue.shift();
      if (message) {
        if (message.name === 'error') throw Object.assign(new Error(`server error ${message.code}: ${message.message}`), { code: message.code });
        return message;
      }
      if (this.closed) throw this.closed;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }

  /** Skips parameter statuses and the like until a message named `name`. */
  async expect(name: Message['name']): Promise<Message> {
    for (;;) {
      const message = await this.next();
      if (message.name === name) return message;
      if (!['parameterStatus', 'backendKeyData', 'notice'].includes(message.name)) throw new Error(`expected ${name}, got ${message.name}`);
    }
  }

  close(): void {
    this.socket.end(serialize.end());
    this.socket.destroy();
  }
}

/** Logs in as `user` with SCRAM (the messages of a libpq login) and returns the connection, ready for a query. */
async function scramLogin(port: number, user: string, credentials: ScramClientCredentials): Promise<WireConnection> {
  const connection = await WireConnection.connect(port);
  try {
    connection.send(serialize.startup({ user, database: 'postgres' }));
    const sasl = await connection.expect('authenticationSASL'); // AuthenticationSASL (10)
    expect(sasl.mechanisms).to.include(SCRAM_SHA_256);
    const session = new ScramClientSession(credentials);
    connection.send(serialize.sendSASLInitialResponseMessage(SCRAM_SHA_256, session.clientFirst())); // SASLInitialResponse
    const serverFirst = await connection.expect('authenticationSASLContinue'); // AuthenticationSASLContinue (11)
    connection.send(serialize.sendSCRAMClientFinalMessage(session.handleServerFirst(serverFirst.data!))); // SASLResponse
    const serverFinal = await connection.expect('authenticationSASLFinal'); // AuthenticationSASLFinal (12)
    session.handleServerFinal(serverFinal.data!);
    await connection.expect('authenticationOk'); // AuthenticationOk (0)
    await connection.expect('readyForQuery');
    return connection;
  } catch (error) {
    connection.close();
    throw error;
  }
}

/** Runs a one-row, one-column simple query. */
async function queryValue(connection: WireConnection, sql: string): Promise<string | null> {
  connection.send(serialize.query(sql));
  await connection.expect('rowDescription');
  const row = await connection.expect('dataRow');
  await connection.expect('commandComplete');
  await connection.expect('readyForQuery');
  return row.fields![0];
}

/** What a client that knows the password gives the gateway: the ClientKey its proof reveals. */
function recoverClientKey(verifier: string, password: string): Buffer {
  const client = new ScramClientSession({ password });
  const server = new ScramServerSession(verifier);
  const serverFirst = server.handleClientFirst(client.clientFirst());
  const { serverFinal, clientKey } = server.handleClientFinal(client.handleServerFirst(serverFirst));
  client.handleServerFinal(serverFinal);
  return clientKey;
}

/** The error `promise` rejects with; fails the test when it resolves. */
async function failureOf(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (error) {
    return error as Error & { code?: string };
  }
  throw new Error('expected a failure, but it succeeded');
}

describe('SCRAM-SHA-256 with PostgreSQL 18', function () {
  this.timeout(120_000);
  const log = pino({ level: 'warn' });
  let directory: TempDir;
  let server: PostgresServer | null = null;
  let admin: pg.Client | null = null;
  let port: number;
  const verifier = createVerifier(APP_PASSWORD);

  before(async () => {
    directory = TempDir.create('scram');
    const dataDir = directory.join('data');
    await initdb(dataDir, log);
    // initdb trusts everyone; the superuser stays trusted (it sets up the roles), every other role needs SCRAM.
    fs.writeFileSync(
      path.join(dataDir, 'pg_hba.conf'),
      ['local all postgres trust', 'host all postgres 127.0.0.1/32 trust', 'host all all 127.0.0.1/32 scram-sha-256', ''].join('\n'),
    );
    port = await freePort();
    server = await PostgresServer.start({ dataDir, port, settings: { password_encryption: 'scram-sha-256', fsync: 'off' }, log });
    admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    await admin.connect();
    await admin.query(`CREATE ROLE app LOGIN PASSWORD ${admin.escapeLiteral(verifier)}`);
  });

  after(async () => {
    await admin?.end().catch(() => undefined);
    await server?.stop('fast');
    directory?.remove();
  });

  async function storedSecret(role: string): Promise<string> {
    const result = await admin!.query<{ rolpassword: string }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role]);
    return result.rows[0].rolpassword;
  }

  it('stores the verifier given to CREATE ROLE as is', async () => {
    expect(await storedSecret('app')).to.equal(verifier);
  });

  it('lets the pg client in with the right password and refuses a wrong one (28P01)', async () => {
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'postgres', password: APP_PASSWORD });
    await client.connect();
    try {
      expect((await client.query<{ user: string }>('SELECT current_user AS user')).rows[0].user).to.equal('app');
    } finally {
      await client.end();
    }
    const wrong = new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'postgres', password: 'not-the-password' });
    expect((await failureOf(wrong.connect())).code).to.equal('28P01');
    await wrong.end().catch(() => undefined);
  });

  it('logs in with the password over the bare protocol (ScramClientSession with a password)', async () => {
    const connection = await scramLogin(port, 'app', { password: APP_PASSWORD });
    try {
      expect(await queryValue(connection, 'SELECT current_user')).to.equal('app');
    } finally {
      connection.close();
    }
  });

  it('logs in with the ClientKey recovered from a client proof, without the password (the gateway path)', async () => {
    const clientKey = recoverClientKey(verifier, APP_PASSWORD);
    const { storedKey, serverKey } = parseVerifier(await storedSecret('app'));
    const connection = await scramLogin(port, 'app', { clientKey, storedKey, serverKey });
    try {
      expect(await queryValue(connection, 'SELECT current_user')).to.equal('app');
    } finally {
      connection.close();
    }
  });

  it('is refused with a wrong ClientKey (28P01), and refuses a server whose signature does not match', async () => {
    expect((await failureOf(scramLogin(port, 'app', { clientKey: Buffer.alloc(32, 1) }))).code).to.equal('28P01');

    // The right ClientKey with another role's ServerKey: Postgres accepts, the client does not trust its signature.
    const clientKey = recoverClientKey(verifier, APP_PASSWORD);
    const otherServerKey = parseVerifier(createVerifier(APP_PASSWORD)).serverKey;
    expect(await failureOf(scramLogin(port, 'app', { clientKey, serverKey: otherServerKey }))).to.be.instanceOf(ScramAuthError);
  });

  describe('computes the verifiers Postgres computes from the same password (SASLprep)', () => {
    const passwords: Array<[string, string]> = [
      ['ASCII', 'pencil'],
      ['ASCII with a control character (kept as is)', 'tab\there'],
      ['a precomposed accent', 'p\u00e4ss'],
      ['a decomposed accent (NFKC composes it)', 'pa\u0308ss'],
      ['compatibility characters (NFKC folds them)', '\ufb01ve\u2168\uff21'],
      ['non-ASCII spaces (mapped to U+0020)', 'a\u00a0b\u2003c\u3000d'],
      ['"mapped to nothing" characters (removed)', 'x\u00ady\u200dz\ufe0f\u00e9'],
      ['a non-ASCII control character (prohibited: the raw password)', '\ufb01\u0085'],
      ['private use (prohibited: the raw password)', '\ufb01\ue000'],
      ['an emoji (unassigned in Unicode 3.2: the raw password)', '\ufb01\u{1f600}'],
      ['only a soft hyphen (empty once mapped: the raw password)', '\u00ad'],
      ['Hebrew only (normalized)', '\u05d0\ufb21'],
      ['Hebrew mixed with Latin (bidi rule: the raw password)', '\u05d0a\ufb21'],
      ['Hebrew not at both ends (bidi rule: the raw password)', '\u05d01\ufb211'],
      ['Cyrillic and CJK', '\u043f\u0430\u0440\u043e\u043b\u044c\u5bc6\u7801'],
    ];
    for (const [title, password] of passwords) {
      it(title, async () => {
        await admin!.query('DROP ROLE IF EXISTS saslprep');
        await admin!.query(`CREATE ROLE saslprep LOGIN PASSWORD ${admin!.escapeLiteral(password)}`);
        const stored = await storedSecret('saslprep');
        const { salt, iterations } = parseVerifier(stored);
        expect(createVerifier(password, { salt, iterations })).to.equal(stored);
        // And Postgres takes the password from this module's client.
        (await scramLogin(port, 'saslprep', { password })).close();
      });
    }
  });
});

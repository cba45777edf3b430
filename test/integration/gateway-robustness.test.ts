/**
 * The gateway against bad and unusual clients, with the whole platform as real processes: malformed startup packets,
 * encryption requests with data behind them, oversized and short messages and random bytes after a real SCRAM login
 * (raw sockets), a fast-check fuzz run of random and mutated first packets, the failed-password limit, the client
 * limit per endpoint, session-mode resets, the extended protocol's error paths and COPY in transaction mode, and the
 * metrics. Each bad client is answered with an error or a closed connection, never a hang or a crash, while a
 * healthy `pg` client keeps getting right answers.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { expect } from 'chai';
import fc from 'fast-check';
import pg from 'pg';
import { EndpointState, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { ClientState, PoolMode } from '../../gen/spg99/gateway/v1/gateway.js';
import {
  bindMessage,
  CANCEL_REQUEST_CODE,
  GSSENC_REQUEST_CODE,
  message,
  MessageType,
  parseErrorFields,
  parseMessage,
  PROTOCOL_3_0,
  saslInitialResponse,
  saslResponse,
  simpleQuery,
  SSL_REQUEST_CODE,
  startupMessage,
  TERMINATE,
} from '../../src/gateway/protocol.js';
import { ScramClientSession } from '../../src/lib/scram.js';
import { checkLocalServerIdentity } from '../../src/lib/tls-certs.js';
import { useHarness, waitFor } from '../harness/process.js';
import { freePort } from '../../src/lib/net.js';
import type { ControlPlaneClient } from '../harness/control-plane.js';
import { GatewayNode } from '../harness/gateway.js';
import { startGatewayPlatform, type GatewayPlatformOptions } from '../harness/platform.js';

// ---- Bytes ----

function int32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeInt32BE(value, 0);
  return out;
}

function int16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeInt16BE(value, 0);
  return out;
}

/** A first packet: its length (which includes itself), then `parts`. */
function firstPacket(...parts: Array<number | string | Buffer>): Buffer {
  const body = Buffer.concat(parts.map((part) => (typeof part === 'number' ? int32(part) : typeof part === 'string' ? Buffer.from(part, 'utf8') : part)));
  return Buffer.concat([int32(4 + body.length), body]);
}

/** A message header (type and length) without its body: what a client that lies about the length sends. */
function header(type: number, length: number): Buffer {
  return Buffer.concat([Buffer.from([type]), int32(length)]);
}

/** Parse of `sql` with no declared parameter types. */
function parse(name: string, sql: string): Buffer {
  return parseMessage(name, sql, int16(0));
}

/** Bind of the unnamed portal to `statement` with text parameters. */
function bind(statement: string, values: string[] = []): Buffer {
  const parameters = values.map((value) => Buffer.concat([int32(Buffer.byteLength(value)), Buffer.from(value)]));
  return bindMessage('', statement, Buffer.concat([int16(0), int16(values.length), ...parameters, int16(0)]));
}

const EXECUTE = message(MessageType.execute, Buffer.concat([Buffer.from('\0'), int32(0)]));
const SYNC = message(MessageType.sync);

/** Splits backend bytes into whole messages; what remains is an incomplete tail. */
function backendMessages(bytes: Buffer): { messages: Buffer[]; rest: Buffer } {
  const messages: Buffer[] = [];
  let offset = 0;
  while (bytes.length - offset >= 5) {
    const length = bytes.readInt32BE(offset + 1);
    if (length < 4 || bytes.length - offset < 1 + length) break;
    messages.push(bytes.subarray(offset, offset + 1 + length));
    offset += 1 + length;
  }
  return { messages, rest: bytes.subarray(offset) };
}

/** The fields of a DataRow, as text (null for SQL NULL). */
function dataRow(msg: Buffer): Array<string | null> {
  const values: Array<string | null> = [];
  let offset = 7;
  for (let column = 0; column < msg.readInt16BE(5); column++) {
    const length = msg.readInt32BE(offset);
    offset += 4;
    values.push(length < 0 ? null : msg.toString('utf8', offset, offset + length));
    offset += Math.max(length, 0);
  }
  return values;
}

// ---- A raw client ----

/** A PostgreSQL connection as bytes: what the gateway answers, message by message, and whether it closed. */
class WireClient {
  private buffer: Buffer = Buffer.alloc(0);
  closed = false;
  /** When the connection closed (ms since the epoch). */
  closedAt = 0;
  private wake: (() => void) | null = null;
  private readonly onData = (chunk: Buffer) => {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    this.notify();
  };
  private readonly onClose = () => {
    this.closed = true;
    this.closedAt = Date.now();
    this.notify();
  };

  private constructor(readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.once('close', this.onClose);
    socket.on('error', () => undefined);
  }

  static async connect(port: number): Promise<WireClient> {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
    await once(socket, 'connect');
    return new WireClient(socket);
  }

  /** SSLRequest, 'S', and TLS with `servername` as SNI. */
  static async connectTls(port: number, servername: string, ca: string): Promise<WireClient> {
    const plain = await WireClient.connect(port);
    plain.write(firstPacket(SSL_REQUEST_CODE));
    expect((await plain.bytes(1)).toString('latin1'), 'the answer to an SSLRequest').to.equal('S');
    plain.socket.off('data', plain.onData);
    plain.socket.off('close', plain.onClose);
    const secured = tls.connect({ socket: plain.socket, servername, ca, checkServerIdentity: checkLocalServerIdentity });
    await once(secured, 'secureConnect');
    return new WireClient(secured);
  }

  write(bytes: Buffer | string): void {
    this.socket.write(bytes);
  }

  /** Says "nothing more" (half-close): the gateway sees the end of the stream. */
  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Bytes received and not yet taken. */
  get pending(): Buffer {
    return this.buffer;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Waits until `take` answers something, the connection closes (then `take` is asked once more), or the time is up. */
  private async until<T>(take: () => T | undefined, timeoutMs: number, what: string): Promise<T | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = take();
      if (value !== undefined || this.closed) return value;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the gateway sent no ${what} within ${timeoutMs} ms (and kept the connection open)`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** The next `count` raw bytes (a single-byte answer to an encryption request). */
  async bytes(count: number, timeoutMs = 10_000): Promise<Buffer> {
    const taken = await this.until(() => (this.buffer.length >= count ? this.take(count) : undefined), timeoutMs, `${count} bytes`);
    if (!taken) throw new Error(`the gateway closed the connection before sending ${count} bytes`);
    return taken;
  }

  private take(count: number): Buffer {
    const out = this.buffer.subarray(0, count);
    this.buffer = this.buffer.subarray(count);
    return out;
  }

  /** The next whole backend message, or null once the connection closed without one. */
  async message(timeoutMs = 10_000): Promise<Buffer | null> {
    const found = await this.until(
      () => {
        const { messages } = backendMessages(this.buffer);
        return messages.length > 0 ? this.take(messages[0].length) : undefined;
      },
      timeoutMs,
      'message',
    );
    return found ?? null;
  }

  /** The next message, which must be of `type` (an ErrorResponse instead fails, quoting it). */
  async expectMessage(type: string, timeoutMs = 60_000): Promise<Buffer> {
    const msg = await this.message(timeoutMs);
    if (!msg) throw new Error(`the gateway closed the connection instead of sending "${type}"`);
    if (msg[0] !== type.charCodeAt(0)) {
      const said = msg[0] === MessageType.errorResponse ? `: ${JSON.stringify(Object.fromEntries(parseErrorFields(msg)))}` : '';
      throw new Error(`expected "${type}", got "${String.fromCharCode(msg[0])}"${said}`);
    }
    return msg;
  }

  /** Messages up to and including the next ReadyForQuery. */
  async untilReady(timeoutMs = 30_000): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (;;) {
      const msg = await this.message(timeoutMs);
      if (!msg) throw new Error(`the gateway closed the connection before ReadyForQuery; got ${out.map((m) => String.fromCharCode(m[0])).join('')}`);
      out.push(msg);
      if (msg[0] === MessageType.readyForQuery) return out;
    }
  }

  /** Waits for the connection to close; answers what came before it (failing when it stays open). */
  async closing(timeoutMs: number): Promise<Buffer> {
    await this.until(() => undefined, timeoutMs, 'close');
    return this.take(this.buffer.length);
  }

  /**
   * What a refused client sees: an ErrorResponse (severity FATAL, a SQLSTATE, a message) and then the end of the
   * connection. Answers its fields.
   */
  async fatal(timeoutMs = 10_000): Promise<Record<string, string>> {
    const msg = await this.message(timeoutMs);
    if (!msg) throw new Error('the gateway closed the connection without an ErrorResponse');
    expect(String.fromCharCode(msg[0]), 'the answer is an ErrorResponse').to.equal('E');
    const fields = Object.fromEntries(parseErrorFields(msg));
    expect(fields.S, JSON.stringify(fields)).to.equal('FATAL');
    expect(fields.C, JSON.stringify(fields)).to.match(/^[0-9A-Z]{5}$/);
    expect(fields.M, JSON.stringify(fields)).to.be.a('string').and.not.equal('');
    const after = await this.closing(timeoutMs);
    expect(after.length, 'nothing follows the error').to.equal(0);
    return fields;
  }
}

/** The startup parameters `pg` sends (it adds client_encoding): raw clients share the pools of `pg` clients. */
function startupParameters(user: string, endpointLabel: string): Record<string, string> {
  return { user, database: 'postgres', options: `endpoint=${endpointLabel}`, client_encoding: 'UTF8' };
}

/** Startup and SCRAM-SHA-256 with the password, up to the first ReadyForQuery. Answers the ParameterStatus values. */
async function login(wire: WireClient, parameters: Record<string, string>, password: string): Promise<Map<string, string>> {
  wire.write(startupMessage(parameters));
  const sasl = await wire.expectMessage('R');
  expect(sasl.readInt32BE(5), 'AuthenticationSASL').to.equal(10);
  expect(sasl.toString('utf8', 9)).to.contain('SCRAM-SHA-256');
  const scram = new ScramClientSession({ password });
  wire.write(saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
  const serverFirst = await wire.expectMessage('R');
  expect(serverFirst.readInt32BE(5), 'AuthenticationSASLContinue').to.equal(11);
  wire.write(saslResponse(scram.handleServerFirst(serverFirst.toString('utf8', 9))));
  const serverFinal = await wire.expectMessage('R');
  expect(serverFinal.readInt32BE(5), 'AuthenticationSASLFinal').to.equal(12);
  scram.handleServerFinal(serverFinal.toString('utf8', 9));
  const settings = new Map<string, string>();
  for (const msg of await wire.untilReady(120_000)) {
    if (msg[0] === MessageType.errorResponse) throw new Error(`login failed: ${JSON.stringify(Object.fromEntries(parseErrorFields(msg)))}`);
    if (msg[0] === MessageType.parameterStatus) {
      const [name, value] = msg.toString('utf8', 5, msg.length - 1).split('\0');
      settings.set(name, value);
    }
  }
  return settings;
}

/** What a simple query or a pipeline answered, up to ReadyForQuery. */
interface Answer {
  /** The message types in order, e.g. "12DCZ". */
  types: string;
  rows: Array<Array<string | null>>;
  errors: Array<Record<string, string>>;
  /** The transaction status of the ReadyForQuery. */
  status: string;
}

async function exchange(wire: WireClient, ...messages: Buffer[]): Promise<Answer> {
  wire.write(Buffer.concat(messages));
  const answer: Answer = { types: '', rows: [], errors: [], status: '' };
  for (const msg of await wire.untilReady()) {
    answer.types += String.fromCharCode(msg[0]);
    if (msg[0] === MessageType.dataRow) answer.rows.push(dataRow(msg));
    if (msg[0] === MessageType.errorResponse) answer.errors.push(Object.fromEntries(parseErrorFields(msg)));
    if (msg[0] === MessageType.readyForQuery) answer.status = String.fromCharCode(msg[5]);
  }
  return answer;
}

/** The error a `pg` connection attempt fails with (the test fails when it connects). */
async function connectFailure(config: pg.ClientConfig): Promise<Error & { code?: string; hint?: string }> {
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (error) {
    return error as Error & { code?: string; hint?: string };
  }
  await client.end();
  throw new Error('expected the connection to be refused');
}

/** The value of one sample of a metric in Prometheus text (undefined when absent). */
function sample(metrics: string, name: string, labels = ''): number | undefined {
  const line = metrics.split('\n').find((text) => text.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

/** `promise`, or an error naming `what` when it takes longer than `timeoutMs`. */
async function withDeadline<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs psql with `args` against `connection` (a libpq connection string), `input` on its standard input. */
function psql(connection: string, password: string, args: string[], input = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile('psql', [connection, '-X', '-q', '-v', 'ON_ERROR_STOP=1', ...args], { env: { ...process.env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '30' }, timeout: 30_000 }, (error, stdout, stderr) => {
      if (error?.killed) reject(new Error(`psql ${args.join(' ')} did not finish within 30 s; it printed: ${stderr}`));
      else if (error && typeof error.code !== 'number') reject(error);
      else resolve({ code: error ? Number(error.code) : 0, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

async function endpointState(api: ControlPlaneClient, endpointId: string): Promise<EndpointState> {
  return (await api.getEndpoint({ endpointId })).endpoint!.state;
}

/**
 * A harness per test, and the clients it opened closed before the harness stops the processes. Each check group is a
 * `describe` of its own: a teardown that finds an unexpected ERROR fails its hook, and mocha then skips the rest of
 * that describe only.
 */
function useFixtures() {
  const clients: pg.Client[] = [];
  const wires: WireClient[] = [];
  afterEach(async () => {
    for (const client of wires.splice(0)) client.destroy();
    for (const client of clients.splice(0)) await client.end().catch(() => undefined);
  });
  const harness = useHarness();
  return {
    harness,
    clients,
    wires,
    platform: (options: GatewayPlatformOptions = {}) => startGatewayPlatform(harness(), options),
    /** A raw connection, destroyed after the test. */
    wire: async (port: number): Promise<WireClient> => {
      const client = await WireClient.connect(port);
      wires.push(client);
      return client;
    },
  };
}

describe('gateway robustness (bad input, fuzz, limits, pooling corner cases; real processes)', function () {
  this.timeout(300_000);

  describe('bad input', () => {
    const { clients, wires, platform, wire } = useFixtures();

    it('answers malformed startup packets, bad messages after login and random bytes with an error or a close, while a healthy client goes on', async () => {
      const { gateway, endpointId, owner } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION, gatewayArgs: ['--max-message-mb', '1'] });
      const session = startupParameters(owner.user, endpointId);
      const pooled = startupParameters(owner.user, `${endpointId}-pooler`);

      // Two silent clients from the start: one sends nothing, one half a startup packet; both must be let go.
      const silentSince = Date.now();
      const silent = await wire(gateway.port);
      const halfSilent = await wire(gateway.port);
      halfSilent.write(Buffer.concat([int32(64), int32(PROTOCOL_3_0), Buffer.from('user\0')]));

      const healthy = await gateway.connect(endpointId, { ...owner, application_name: 'healthy' });
      clients.push(healthy);
      await healthy.query('CREATE TABLE items (id int PRIMARY KEY, name text)');
      await healthy.query(`INSERT INTO items VALUES (1, 'one'), (2, 'two')`);
      let checks = 0;
      const stillHealthy = async () => {
        checks += 1;
        const { rows } = await healthy.query('SELECT count(*)::int AS n, string_agg(name, \',\' ORDER BY id) AS names, $1::int AS check FROM items', [checks]);
        expect(rows[0]).to.deep.equal({ n: 2, names: 'one,two', check: checks });
        expect(gateway.process.exited, 'the gateway exited').to.equal(false);
      };
      await stillHealthy();
      // Keeps querying while the bad traffic runs.
      let traffic = true;
      const during = (async () => {
        while (traffic) await stillHealthy();
      })();
      during.catch(() => undefined);

      // ---- Malformed first packets over plaintext: FATAL, a SQLSTATE and a message, then the end. ----
      const malformed: Array<{ what: string; bytes: Buffer; code: string; says: string }> = [
        { what: 'length 0', bytes: int32(0), code: '08P01', says: 'invalid startup packet length 0' },
        { what: 'length 3', bytes: Buffer.concat([int32(3), Buffer.from('abc')]), code: '08P01', says: 'invalid startup packet length 3' },
        { what: 'length 7', bytes: Buffer.concat([int32(7), Buffer.from('abc')]), code: '08P01', says: 'invalid startup packet length 7' },
        { what: 'length 10001', bytes: Buffer.concat([int32(10_001), int32(PROTOCOL_3_0)]), code: '08P01', says: 'invalid startup packet length 10001' },
        { what: 'length 2^31-1', bytes: int32(2 ** 31 - 1), code: '08P01', says: `invalid startup packet length ${2 ** 31 - 1}` },
        { what: 'protocol 2.0', bytes: firstPacket(2 << 16, `user\0${owner.user}\0\0`), code: '0A000', says: 'unsupported frontend protocol 2.0' },
        { what: 'protocol 4.0', bytes: firstPacket(4 << 16, `user\0${owner.user}\0\0`), code: '0A000', says: 'unsupported frontend protocol 4.0' },
        { what: 'no terminator', bytes: firstPacket(PROTOCOL_3_0, `user\0${owner.user}\0database\0postgres\0`), code: '08P01', says: 'does not end with an empty name' },
        { what: 'a parameter without a value', bytes: firstPacket(PROTOCOL_3_0, 'user\0'), code: '08P01', says: 'parameter "user" has no value' },
        { what: 'an HTTP request', bytes: Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'), code: '08P01', says: 'invalid startup packet length' },
        { what: 'no user', bytes: firstPacket(PROTOCOL_3_0, `options\0endpoint=${endpointId}\0\0`), code: '28000', says: 'no user name' },
        { what: 'a replication connection', bytes: startupMessage({ ...session, replication: 'true' }), code: '08004', says: 'replication connections are not served' },
        { what: 'a CancelRequest too short for a key', bytes: firstPacket(CANCEL_REQUEST_CODE, 1234), code: '08P01', says: 'invalid cancel request' },
      ];
      await Promise.all(
        malformed.map(async ({ what, bytes, code, says }) => {
          const client = await wire(gateway.port);
          client.write(bytes);
          const fields = await client.fatal().catch((error: Error) => {
            throw new Error(`${what}: ${error.message}`);
          });
          expect(fields.C, `${what}: ${fields.M}`).to.equal(code);
          expect(fields.M, what).to.contain(says);
        }),
      );

      // Half a packet and then the end of the stream: closed, nothing else.
      const half = await wire(gateway.port);
      half.write(Buffer.concat([int32(100), int32(PROTOCOL_3_0), Buffer.from('user\0own')]));
      half.end();
      expect((await half.closing(5_000)).length).to.equal(0);

      // A CancelRequest for no client: the connection is closed, and nothing is said (a key is never confirmed).
      const cancel = await wire(gateway.port);
      cancel.write(firstPacket(CANCEL_REQUEST_CODE, 1234, 5678));
      expect((await cancel.closing(5_000)).length).to.equal(0);

      // GSSENCRequest: 'N', and the client goes on in plaintext in the same connection.
      const gss = await wire(gateway.port);
      gss.write(firstPacket(GSSENC_REQUEST_CODE));
      expect((await gss.bytes(1)).toString('latin1')).to.equal('N');
      await login(gss, session, owner.password);
      expect((await exchange(gss, simpleQuery('SELECT count(*) FROM items'))).rows).to.deep.equal([['2']]);
      gss.write(TERMINATE);
      await gss.closing(5_000);

      // ---- After a real login: oversized and short messages, in both modes. ----
      for (const parameters of [session, pooled]) {
        const oversized = await wire(gateway.port);
        await login(oversized, parameters, owner.password);
        oversized.write(Buffer.concat([header(MessageType.query, 2 * 1024 * 1024), Buffer.from('SELECT ')]));
        const tooBig = await oversized.fatal();
        expect(tooBig.C, tooBig.M).to.equal('54000');
        expect(tooBig.M).to.contain('exceeds the limit of 1048576 bytes');

        const short = await wire(gateway.port);
        await login(short, parameters, owner.password);
        short.write(header(MessageType.query, 2));
        const tooShort = await short.fatal();
        expect(tooShort.C, tooShort.M).to.equal('08P01');
        expect(tooShort.M).to.contain('invalid message length 2');
      }

      // Random bytes after a login: an error or a close within seconds (from the gateway or from Postgres behind it).
      const afterLogin = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 48 }), { numRuns: 6, seed: 42 });
      for (const [index, bytes] of afterLogin.entries()) {
        const client = await wire(gateway.port);
        await login(client, index % 2 === 0 ? session : pooled, owner.password);
        client.write(Buffer.from(bytes));
        client.end();
        const answered = backendMessages(await client.closing(15_000));
        for (const msg of answered.messages.filter((m) => m[0] === MessageType.errorResponse)) {
          expect(parseErrorFields(msg).get('C'), 'an internal error').to.not.equal('XX000');
        }
      }

      // ---- Fuzz: random first packets and mutations of a valid startup, each on a fresh connection. ----
      const valid = startupMessage(session);
      const withSasl = (body: Uint8Array) => Buffer.concat([valid, message(MessageType.password, Buffer.from(body))]);
      const inputs = fc.oneof(
        fc.uint8Array({ minLength: 1, maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
        fc
          .array(fc.tuple(fc.nat({ max: valid.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 })
          .map((changes) => {
            const mutated = Buffer.from(valid);
            for (const [offset, value] of changes) mutated[offset] = value;
            return mutated;
          }),
        fc.tuple(fc.nat({ max: valid.length }), fc.uint8Array({ maxLength: 40 })).map(([cut, tail]) => Buffer.concat([valid.subarray(0, cut), Buffer.from(tail)])),
        fc.uint8Array({ maxLength: 60 }).map(withSasl),
        fc.uint8Array({ maxLength: 8 }).map((tail) => withSasl(Buffer.concat([Buffer.from('SCRAM-SHA-256\0'), tail]))),
      );
      const fuzzCodes = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(inputs, async (bytes) => {
          const client = await WireClient.connect(gateway.port);
          try {
            client.write(bytes);
            const declared = bytes.length >= 4 ? bytes.readInt32BE(0) : 0;
            // A packet announced longer than what was sent, or a TLS record, legitimately waits for more: say it is all.
            const waitsForMore = bytes.length < 4 || bytes[0] === 0x16 || (declared >= 8 && declared <= 10_000 && declared > bytes.length);
            if (waitsForMore) client.end();
            else {
              // The gateway answers by itself (an error, an encryption answer, or an authentication request).
              await waitFor(() => client.pending.length > 0 || client.closed, { what: 'an answer or a close', timeoutMs: 5_000, intervalMs: 5 });
              client.end();
            }
            const answer = await client.closing(5_000);
            let rest = answer;
            while (rest.length > 0 && (rest[0] === 0x4e || rest[0] === 0x53) && backendMessages(rest).messages.length === 0) rest = rest.subarray(1);
            const { messages } = backendMessages(rest);
            for (const msg of messages) {
              if (msg[0] !== MessageType.errorResponse) continue;
              const fields = parseErrorFields(msg);
              expect(fields.get('S')).to.equal('FATAL');
              expect(fields.get('C')).to.match(/^[0-9A-Z]{5}$/);
              fuzzCodes.set(fields.get('C')!, (fuzzCodes.get(fields.get('C')!) ?? 0) + 1);
            }
            if (!waitsForMore && (declared < 8 || declared > 10_000)) {
              expect(messages.map((msg) => String.fromCharCode(msg[0])), 'an invalid length is answered with an error').to.deep.equal(['E']);
            }
          } finally {
            client.destroy();
          }
        }),
        { numRuns: 100 },
      );
      traffic = false;
      await during;
      await stillHealthy();
      expect(checks, 'the healthy client kept querying during the bad traffic').to.be.greaterThan(3);

      // The silent clients are let go at the startup timeout (10 s by default, no flag sets it), with an error.
      const silentError = await silent.fatal(20_000);
      expect(silentError.C).to.equal('08P01');
      expect(silentError.M).to.contain('no startup packet within the time allowed');
      expect((await halfSilent.fatal(20_000)).M).to.contain('no startup packet within the time allowed');
      for (const client of [silent, halfSilent]) expect(client.closedAt - silentSince).to.be.within(9_000, 15_000);

      // Nothing is left of the bad clients: the admin API lists the healthy client only.
      for (const client of wires.splice(0)) client.destroy();
      const listed = await waitFor(
        async () => {
          const all = (await gateway.admin.listClients({ endpointId: '' })).clients;
          return all.length === 1 ? all : undefined;
        },
        { what: 'the bad clients to be gone from ListClients', timeoutMs: 10_000 },
      ).catch(async (error: Error) => {
        throw new Error(`${error.message}: ${JSON.stringify((await gateway.admin.listClients({ endpointId: '' })).clients.map((client) => [client.applicationName, client.remoteAddress, client.state]))}`);
      });
      expect(listed[0]).to.deep.include({ endpointId, applicationName: 'healthy', mode: PoolMode.POOL_MODE_SESSION });

      // Metrics after the traffic: connections by kind, clients by mode, wake and pool wait times.
      const metrics = await waitFor(
        async () => {
          const text = await gateway.metrics();
          return sample(text, 'spg99_gateway_clients', 'mode="session"') === 1 && sample(text, 'spg99_gateway_clients', 'mode="transaction"') === 0 ? text : undefined;
        },
        { what: 'the clients gauge to count the healthy client only', timeoutMs: 15_000 },
      );
      expect(sample(metrics, 'spg99_gateway_connections_total', 'kind="refused"')).to.be.at.least(malformed.length);
      expect(sample(metrics, 'spg99_gateway_connections_total', 'kind="tls"')).to.be.at.least(1);
      expect(sample(metrics, 'spg99_gateway_connections_total', 'kind="plaintext"')).to.be.at.least(6);
      expect(sample(metrics, 'spg99_gateway_wake_seconds_count')).to.be.at.least(10);

      // The same refusals inside TLS: the client reads the error through the encrypted connection.
      for (const { bytes, code, says } of [
        { bytes: firstPacket(4 << 16, `user\0${owner.user}\0\0`), code: '0A000', says: 'unsupported frontend protocol 4.0' },
        { bytes: Buffer.concat([int32(7), Buffer.from('abc')]), code: '08P01', says: 'invalid startup packet length 7' },
      ]) {
        const secured = await WireClient.connectTls(gateway.port, `${endpointId}.localhost`, gateway.caCert);
        wires.push(secured);
        secured.write(bytes);
        const fields = await secured.fatal();
        expect(fields.C, fields.M).to.equal(code);
        expect(fields.M).to.contain(says);
      }

      // A SASLInitialResponse without the length of its data: a protocol violation, not an internal error.
      const sasl = await wire(gateway.port);
      sasl.write(startupMessage(session));
      await sasl.expectMessage('R');
      sasl.write(message(MessageType.password, Buffer.from('SCRAM-SHA-256\0')));
      const saslError = await sasl.fatal();
      expect(saslError.C, saslError.M).to.equal('08P01');
      expect(fuzzCodes.get('XX000'), `internal errors among the fuzz answers (${JSON.stringify([...fuzzCodes])})`).to.equal(undefined);

      // Every transaction in transaction mode took a server connection: counted, the waits among them measured.
      expect(sample(metrics, 'spg99_gateway_pool_acquisitions_total', 'mode="transaction",waited="no"'), 'transactions that found an idle connection').to.be.at.least(1);
      expect(sample(metrics, 'spg99_gateway_pool_wait_seconds_count', 'mode="transaction"'), 'pool waits of transaction mode are measured').to.be.at.least(1);
      await stillHealthy();
    });
  });

  describe('errors from inside the platform', () => {
    const { harness } = useFixtures();

    it('tells a client a generic reason and a trace id, never an internal address or method, and logs the details under that id', async () => {
      // A control plane that is not there: the gateway cannot look up the role.
      const gone = await freePort();
      const gateway = await GatewayNode.start(harness(), { controlPlane: `127.0.0.1:${gone}` });
      const endpointId = `ep-${'a'.repeat(32)}`;
      const refused = await connectFailure(gateway.clientConfig(endpointId, { user: 'owner', password: 'secret' }));
      expect(refused.code, refused.message).to.equal('08001');
      expect(refused.message).to.match(/trace id [0-9a-f]{32}/);
      expect(refused.message, 'no internal address').to.not.contain(String(gone));
      expect(refused.message, 'no method path').to.not.match(/spg99\.|ControlPlane|BeginScram|UNAVAILABLE/);
      expect(refused.hint).to.equal('Try again in a moment.');
      const traceId = /trace id ([0-9a-f]{32})/.exec(refused.message)![1];
      const logged = await gateway.process.waitForLine((line) => line.traceId === traceId, { what: `a log line with trace id ${traceId}` });
      expect(String(logged.reason)).to.contain('BeginScram');
    });
  });

  describe('failed passwords', () => {
    const { clients, platform, wire } = useFixtures();

    it('slows an address after wrong passwords but still lets the right one in, and wakes nothing for the wrong ones', async () => {
      const { gateway, api, endpointId, owner } = await platform();
      for (let attempt = 1; attempt <= 10; attempt++) {
        const wrong = await connectFailure(gateway.clientConfig(endpointId, { ...owner, password: `wrong-${attempt}` }));
        expect(wrong.code, wrong.message).to.equal('28P01');
      }
      expect(await endpointState(api, endpointId)).to.equal(EndpointState.ENDPOINT_STATE_STOPPED);
      // The same address, the right password: slower, but in (before, the address was locked out for 60 s).
      const started = Date.now();
      const client = await gateway.connect(endpointId, owner);
      clients.push(client);
      expect((await client.query('SELECT 1 AS one')).rows).to.deep.equal([{ one: 1 }]);
      expect(Date.now() - started, 'the answer to the right proof was held back too').to.be.greaterThan(1000);
      const metrics = await gateway.metrics();
      expect(sample(metrics, 'spg99_gateway_auth_failures_total', 'reason="password"')).to.equal(10);
      expect(sample(metrics, 'spg99_gateway_auth_delays_total'), 'answers held back').to.be.greaterThanOrEqual(5);
      expect(sample(metrics, 'spg99_gateway_wake_seconds_count'), 'logins that reached a compute').to.equal(1);
    });

    it('challenges a role that does not exist with the same salt every time, shaped like a real one, and counts a client that leaves after the challenge', async () => {
      const { gateway, endpointId, owner } = await platform();
      /** The server-first-message's salt and iteration count for `user`, after which the client leaves. */
      const challenge = async (user: string): Promise<{ salt: string; iterations: string }> => {
        const client = await wire(gateway.port);
        client.write(startupMessage(startupParameters(user, endpointId)));
        await client.expectMessage('R');
        const scram = new ScramClientSession({ password: 'whatever' });
        client.write(saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
        const serverFirst = (await client.expectMessage('R')).toString('utf8', 9);
        client.destroy();
        const fields = Object.fromEntries(serverFirst.split(',').map((part) => [part[0], part.slice(2)]));
        return { salt: fields.s as string, iterations: fields.i as string };
      };
      const missing = await challenge('no_such_role');
      expect(await challenge('no_such_role'), 'a second challenge of the missing role').to.deep.equal(missing);
      expect((await challenge('another_missing_role')).salt).to.not.equal(missing.salt);
      const real = await challenge(owner.user);
      expect(missing.iterations).to.equal(real.iterations);
      expect(Buffer.from(missing.salt, 'base64').length).to.equal(Buffer.from(real.salt, 'base64').length);
      await waitFor(async () => sample(await gateway.metrics(), 'spg99_gateway_auth_failures_total', 'reason="abandoned"') === 4, {
        what: 'four abandoned logins counted as failures',
      });
    });
  });

  describe('silent connections', () => {
    const { clients, platform } = useFixtures();

    it('closes up to 10,000 silent connections from one address without losing a descriptor, while another client logs in', async () => {
      const { gateway, endpointId, owner } = await platform({ gatewayArgs: ['--startup-timeout-s', '1'] });
      const warm = await gateway.connect(endpointId, owner);
      await warm.query('SELECT 1');
      await warm.end();
      const pid = gateway.process.pid as number;
      const descriptors = () => fs.readdirSync(`/proc/${pid}/fd`).length;
      const before = descriptors();
      // Silent clients that never close their side (allowHalfOpen), from 127.0.0.2, as fast as they connect.
      const silent: net.Socket[] = [];
      // Up to 10,000, within 30 s: on this shared 2-core machine a connect costs 2-4 ms, gateway or not.
      const deadline = Date.now() + 30_000;
      let opened = 0;
      let login: Promise<number> | null = null;
      try {
        while (opened < 10_000 && Date.now() < deadline) {
          const batch = Array.from({ length: 250 }, () => {
            const socket = net.connect({ host: '127.0.0.1', port: gateway.port, localAddress: '127.0.0.2', allowHalfOpen: true });
            socket.on('error', () => undefined);
            // A connection refused over the address cap is let go by this side too (it costs the test a port); every
            // other one stays open on this side whatever the gateway sends.
            socket.on('data', (data: Buffer) => {
              if (data.includes('53300')) socket.destroy();
            });
            silent.push(socket);
            return new Promise<void>((resolve) => {
              socket.once('connect', () => resolve());
              socket.once('close', () => resolve());
            });
          });
          await Promise.all(batch);
          opened += batch.length;
          // Halfway, a real client from 127.0.0.1 logs in and queries.
          login ??= opened >= 1_000
            ? (async () => {
                const started = Date.now();
                const client = await gateway.connect(endpointId, owner);
                clients.push(client);
                expect((await client.query('SELECT 2 AS two')).rows).to.deep.equal([{ two: 2 }]);
                return Date.now() - started;
              })()
            : null;
        }
        expect(opened, 'silent connections opened within the time').to.be.greaterThanOrEqual(2_000);
        process.stdout.write(`      (${opened} silent connections in ${Math.round((Date.now() - deadline + 30_000) / 1000)} s)\n`);
        const loginMs = await withDeadline(login ?? Promise.reject(new Error('no login started')), 30_000, 'login during the flood');
        expect(loginMs).to.be.lessThan(30_000);
        // Every silent connection is let go (the first ones at the startup timeout, the rest at once).
        await waitFor(() => descriptors() <= before + 3, { what: `the gateway's descriptors back to ${before} (now ${descriptors()})`, timeoutMs: 20_000 });
      } finally {
        for (const socket of silent) socket.destroy();
      }
      const after = gateway.process.lines;
      expect(after.some((line) => line.msg === 'closed a connection that sent no startup packet within the startup timeout'), 'a startup-timeout log line').to.equal(true);
      expect(after.some((line) => String(line.msg).startsWith('refused a connection: its address has as many unfinished logins')), 'an address-cap log line').to.equal(true);
      const metrics = await gateway.metrics();
      expect(sample(metrics, 'spg99_gateway_connections_total', 'kind="over-address-cap"')).to.be.greaterThan(9000);
    });
  });

  describe('commits a majority of safekeepers did not acknowledge', () => {
    const { clients, platform } = useFixtures();

    /** Sends the CancelRequest of a `pg` client to the gateway. */
    async function cancel(port: number, client: pg.Client): Promise<void> {
      const keys = client as unknown as { processID: number; secretKey: number };
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      socket.end(firstPacket(CANCEL_REQUEST_CODE, keys.processID, keys.secretKey));
      await once(socket, 'close');
    }

    /** What a query ended with: its rows, or the error's SQLSTATE, message and hint. */
    async function outcome(query: Promise<pg.QueryResult>): Promise<{ ok: boolean; code?: string; message?: string; hint?: string }> {
      try {
        await query;
        return { ok: true };
      } catch (error) {
        const failed = error as Error & { code?: string; hint?: string };
        return { ok: false, code: failed.code, message: failed.message, hint: failed.hint };
      }
    }

    it('never reports COMMIT for a commit whose quorum wait was cut short, in session and transaction mode: the client is told its outcome is unknown', async () => {
      // Transaction pooling for ep-…-pooler; a dedicated session without -pooler.
      const { gateway, endpointId, owner, safekeepers } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION });
      const setup = await gateway.connect(endpointId, owner);
      clients.push(setup);
      await setup.query('CREATE TABLE acked (id int PRIMARY KEY)');
      await setup.end();
      // Two of three safekeepers gone: no commit can reach a majority.
      await Promise.all([safekeepers[1]!.stop(), safekeepers[2]!.stop()]);
      try {
        // Session mode. statement_timeout does not end the wait (Postgres disables it before the commit), so the
        // client is still waiting, not told COMMIT; a cancel then ends the wait, and the client learns the outcome is
        // unknown.
        const timed = await gateway.connect(endpointId, owner);
        clients.push(timed);
        await timed.query(`SET statement_timeout = '1s'`);
        const timedOut = outcome(timed.query('INSERT INTO acked VALUES (1)'));
        const early = await Promise.race([timedOut, new Promise<null>((resolve) => setTimeout(() => resolve(null), 3_000))]);
        expect(early, 'an answer to a commit no majority acknowledged, 3 s after statement_timeout').to.equal(null);
        await cancel(gateway.port, timed);
        const afterTimeout = await withDeadline(timedOut, 20_000, 'an answer after the cancel');
        expect(afterTimeout.ok, 'the commit was reported as done').to.equal(false);
        expect(afterTimeout.code, afterTimeout.message).to.equal('08007');
        expect(afterTimeout.message).to.contain('outcome of the transaction\'s commit is unknown');
        expect(afterTimeout.hint).to.contain('Reconnect and check');
        expect((await outcome(timed.query('SELECT 1'))).ok, 'the session-mode client\'s connection is closed').to.equal(false);

        // Transaction mode: an explicit COMMIT, canceled.
        const pooled = await gateway.connect(endpointId, { ...owner, pooled: true });
        clients.push(pooled);
        const pid = Number((await pooled.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
        await pooled.query('BEGIN');
        await pooled.query('INSERT INTO acked VALUES (2)');
        const committing = outcome(pooled.query('COMMIT'));
        await new Promise((resolve) => setTimeout(resolve, 500));
        await cancel(gateway.port, pooled);
        const canceled = await withDeadline(committing, 20_000, 'an answer after the cancel');
        expect(canceled.ok, 'the commit was reported as done').to.equal(false);
        expect(canceled.code, canceled.message).to.equal('08007');
        expect((await outcome(pooled.query('SELECT 1'))).ok, 'the pooled client\'s connection is closed').to.equal(false);

        await Promise.all([safekeepers[1]!.restart(), safekeepers[2]!.restart()]);
        // Its server connection was not handed on: the next pooled client gets another backend.
        const next = await gateway.connect(endpointId, { ...owner, pooled: true });
        clients.push(next);
        expect(Number((await next.query('SELECT pg_backend_pid() AS pid')).rows[0].pid)).to.not.equal(pid);
        // Unknown is not lost: both commits were made locally and reach the safekeepers once a majority is back.
        expect((await next.query('SELECT count(*)::int AS n FROM acked')).rows[0].n).to.equal(2);
      } finally {
        for (const node of safekeepers) if (node.process.exited) await node.restart();
      }
    });
  });

  describe('stalled and repeating clients', () => {
    const { clients, platform, wire } = useFixtures();

    it('lets go of a client that stalls in its login, freeing its place, and refuses a second encryption request', async () => {
      const { gateway, api, endpointId, owner } = await platform({
        gatewayArgs: ['--startup-timeout-s', '2', '--login-timeout-s', '2', '--max-clients-per-endpoint', '1'],
      });
      const session = startupParameters(owner.user, endpointId);

      // It sends the startup packet and then stops answering the password exchange: while it stalls it holds the
      // endpoint's one client place; after the login timeout it is told why and let go, and the place is free.
      const stalled = await wire(gateway.port);
      stalled.write(startupMessage(session));
      const sasl = await stalled.expectMessage('R');
      expect(sasl.readInt32BE(5), 'AuthenticationSASL').to.equal(10);
      const refused = await connectFailure(gateway.clientConfig(endpointId, owner));
      expect(refused.code, refused.message).to.equal('53300');
      const timedOut = await stalled.fatal(30_000);
      expect(timedOut.C, timedOut.M).to.equal('57014');
      expect(timedOut.M).to.contain('canceling authentication due to timeout: the login did not finish within 2 s');
      const client = await gateway.connect(endpointId, owner);
      clients.push(client);
      expect((await client.query('SELECT 1 AS one')).rows).to.deep.equal([{ one: 1 }]);
      await client.end();
      expect(await endpointState(api, endpointId)).to.equal(EndpointState.ENDPOINT_STATE_RUNNING);

      // Encryption requests do not prolong the time to the startup packet, and a second one of a kind is refused.
      const twiceGss = await wire(gateway.port);
      twiceGss.write(firstPacket(GSSENC_REQUEST_CODE));
      expect((await twiceGss.bytes(1)).toString('latin1')).to.equal('N');
      twiceGss.write(firstPacket(GSSENC_REQUEST_CODE));
      const secondGss = await twiceGss.fatal();
      expect(secondGss.C, secondGss.M).to.equal('08P01');
      expect(secondGss.M).to.contain('a second GSSENCRequest on one connection');
      const twiceSsl = await WireClient.connectTls(gateway.port, `${endpointId}.localhost`, gateway.caCert);
      twiceSsl.write(firstPacket(SSL_REQUEST_CODE));
      const secondSsl = await twiceSsl.fatal();
      expect(secondSsl.M).to.contain('a second SSLRequest on one connection');
      twiceSsl.destroy();
      // A GSSENCRequest and then silence: let go at the deadline counted from the connect.
      const slow = await wire(gateway.port);
      slow.write(firstPacket(GSSENC_REQUEST_CODE));
      expect((await slow.bytes(1)).toString('latin1')).to.equal('N');
      const silent = await slow.fatal(30_000);
      expect(silent.M).to.contain('no startup packet within the time allowed');
    });
  });

  describe('transaction mode: the extended protocol', () => {
    const { clients, platform, wire } = useFixtures();

    it('reports errors of named statements and pipelines once, and lets a statement follow its client across server connections', async () => {
      const { gateway, endpointId, owner } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION });
      const setup = await gateway.connect(endpointId, { ...owner, pooled: true });
      clients.push(setup);

      // Unnamed statements with parameters, from several clients at once.
      const many = await Promise.all(Array.from({ length: 4 }, () => gateway.connect(endpointId, { ...owner, pooled: true })));
      clients.push(...many);
      await Promise.all(
        many.map(async (client, index) => {
          for (let round = 0; round < 10; round++) {
            const { rows } = await client.query('SELECT $1::int * 2 AS doubled, $2::text AS who', [round, `client ${index}`]);
            expect(rows).to.deep.equal([{ doubled: round * 2, who: `client ${index}` }]);
          }
        }),
      );

      // A named statement with a syntax error is reported; the fixed one under the same name then works.
      const typo = await setup.query({ name: 'fixme', text: 'SELEC 1' }).then(
        () => null,
        (error: Error & { code?: string }) => error,
      );
      expect(typo?.code, typo?.message).to.equal('42601');
      expect((await setup.query({ name: 'fixme', text: 'SELECT 1 AS one' })).rows).to.deep.equal([{ one: 1 }]);
      expect((await setup.query({ name: 'fixme', text: 'SELECT 1 AS one' })).rows).to.deep.equal([{ one: 1 }]);

      // The same, and pipelines, message by message (a raw client; its application name tells it apart in ListClients).
      const pooled = { ...startupParameters(owner.user, `${endpointId}-pooler`), application_name: 'raw' };
      const raw = await wire(gateway.port);
      await login(raw, pooled, owner.password);
      const broken = await exchange(raw, parse('s1', 'SELEC 1'), bind('s1'), EXECUTE, SYNC);
      expect(broken).to.deep.include({ types: 'EZ', status: 'I' });
      expect(broken.errors[0].C).to.equal('42601');
      expect(await exchange(raw, parse('s1', 'SELECT 1'), bind('s1'), EXECUTE, SYNC)).to.deep.include({ types: '12DCZ', rows: [['1']], status: 'I' });
      // An error at Bind (10 / 0 is folded when the plan is made): one error, the statement stays.
      const atBind = await exchange(raw, parse('fold', 'SELECT 10 / $1::int'), bind('fold', ['0']), EXECUTE, bind('fold', ['5']), EXECUTE, SYNC);
      expect(atBind).to.deep.include({ types: '1EZ', status: 'I' });
      expect(atBind.errors[0].C).to.equal('22012');
      expect(await exchange(raw, bind('fold', ['5']), EXECUTE, SYNC)).to.deep.include({ types: '2DCZ', rows: [['2']] });
      // The first Execute fails after a row: one error, the rest up to Sync skipped, and the statement stays usable.
      const divide = 'SELECT 10 / (x - $1::int) AS q FROM generate_series(1, 3) x';
      const failing = await exchange(raw, parse('div', divide), bind('div', ['2']), EXECUTE, bind('div', ['0']), EXECUTE, SYNC);
      expect(failing).to.deep.include({ types: '12DEZ', rows: [['-10']], status: 'I' });
      expect(failing.errors[0].C).to.equal('22012');
      // The statement follows the client to a server connection that lacks it (the one that has it is busy): the gateway
      // prepares it there without the client seeing it, and gives the connection back after the Sync as usual.
      const [[holderPid]] = (await exchange(raw, simpleQuery('BEGIN; SELECT pg_backend_pid()'))).rows;
      expect(await exchange(raw, parse('moving', 'SELECT 6 * $1::int'), bind('moving', ['7']), EXECUTE, SYNC)).to.deep.include({ types: '12DCZ', rows: [['42']], status: 'T' });
      expect((await exchange(raw, simpleQuery('COMMIT'))).status).to.equal('I');
      // The connection just given back is the first taken again (last in, first out) by the next client of the same
      // pool (a pool is keyed by the startup parameters, application_name included: another raw client with them).
      const second = await wire(gateway.port);
      await login(second, pooled, owner.password);
      const [[secondPid]] = (await exchange(second, simpleQuery('BEGIN; SELECT pg_backend_pid()'))).rows;
      expect(secondPid).to.equal(holderPid);
      expect(await exchange(raw, bind('moving', ['8']), EXECUTE, SYNC)).to.deep.include({ types: '2DCZ', rows: [['48']], status: 'I' });
      const rawClient = await waitFor(
        async () => (await gateway.admin.listClients({ endpointId })).clients.find((client) => client.applicationName === 'raw' && client.state === ClientState.CLIENT_STATE_IDLE),
        { what: 'the raw client to hold no server connection after its Sync', timeoutMs: 5_000 },
      ).catch(async (error: Error) => {
        const raws = (await gateway.admin.listClients({ endpointId })).clients.filter((client) => client.applicationName === 'raw');
        throw new Error(`${error.message}: ${JSON.stringify(raws.map((client) => ({ state: ClientState[client.state], transactions: String(client.transactions) })))}`);
      });
      expect(rawClient.mode).to.equal(PoolMode.POOL_MODE_TRANSACTION);
      expect((await exchange(second, simpleQuery('COMMIT'))).status).to.equal('I');
      for (let round = 0; round < 5; round++) {
        expect(await exchange(raw, bind('div', ['0']), EXECUTE, SYNC)).to.deep.include({ types: '2DDDCZ', rows: [['10'], ['5'], ['3']] });
        // Other clients take server connections in between: the statement follows the client.
        await Promise.all(many.map((client) => client.query('SELECT pg_sleep(0.01)')));
      }
      // Inside a transaction: the failed pipeline aborts it until ROLLBACK, on the same server connection.
      expect((await exchange(raw, simpleQuery('BEGIN'))).status).to.equal('T');
      expect(await exchange(raw, bind('div', ['2']), EXECUTE, SYNC)).to.deep.include({ types: '2DEZ', status: 'E' });
      const aborted = await exchange(raw, simpleQuery('SELECT 1'));
      expect(aborted.status).to.equal('E');
      expect(aborted.errors[0].C).to.equal('25P02');
      expect((await exchange(raw, simpleQuery('ROLLBACK'))).status).to.equal('I');
      // Describe and Close of a named statement; a Bind after the Close is refused as Postgres would.
      const described = await exchange(raw, parse('d1', 'SELECT $1::int AS x'), message(MessageType.describe, Buffer.from('Sd1\0')), SYNC);
      expect(described.types).to.equal('1tTZ');
      expect((await exchange(raw, message(MessageType.close, Buffer.from('Sd1\0')), SYNC)).types).to.equal('3Z');
      const closed = await exchange(raw, bind('d1', ['1']), EXECUTE, SYNC);
      expect(closed.types).to.equal('EZ');
      expect(closed.errors[0].C).to.equal('26000');
    });
  });

  describe('transaction mode: COPY, large results, the client limit', () => {
    const { harness, clients, platform, wire } = useFixtures();

    it('limits the clients of an endpoint, saying so, and passes COPY and large results through the pooler without holding up the next client', async () => {
      const { controlPlane, gateway, endpointId, owner } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION });
      const setup = await gateway.connect(endpointId, { ...owner, pooled: true });
      clients.push(setup);
      await setup.query('CREATE TABLE items (id int PRIMARY KEY, name text)');

      // The client limit of an endpoint (a gateway whose limit is 2): the third client is told the limit.
      const limited = await GatewayNode.start(harness(), { controlPlane: controlPlane.internalAddress, args: ['--max-clients-per-endpoint', '2'] });
      const first = await limited.connect(endpointId, { ...owner, pooled: true });
      const second = await limited.connect(endpointId, owner);
      clients.push(first, second);
      const over = await connectFailure(limited.clientConfig(endpointId, { ...owner, pooled: true }));
      expect(over.code, over.message).to.equal('53300');
      expect(over.message).to.contain('2 client connections').and.to.contain('limit');
      expect((await first.query('SELECT 1 AS one')).rows).to.deep.equal([{ one: 1 }]);
      await second.end();
      await waitFor(async () => (await limited.admin.listClients({ endpointId })).clients.length === 1, { what: 'the second client to be gone' });
      const third = await limited.connect(endpointId, owner);
      clients.push(third);
      expect((await third.query('SELECT 3 AS three')).rows).to.deep.equal([{ three: 3 }]);

      // COPY in and out through the pooler (psql, TLS with SNI).
      const connection = `host=${endpointId}-pooler.localhost hostaddr=127.0.0.1 port=${gateway.port} user=${owner.user} dbname=postgres sslmode=require`;
      const rows = Array.from({ length: 5000 }, (_, index) => `${index + 100}\tname ${index}\n`).join('');
      const copyIn = await psql(connection, owner.password, ['-c', 'COPY items FROM STDIN'], rows);
      expect(copyIn.code, copyIn.stderr).to.equal(0);
      const copyOut = await psql(connection, owner.password, ['-c', 'COPY (SELECT id, name FROM items WHERE id >= 100 ORDER BY id) TO STDOUT']);
      expect(copyOut.code, copyOut.stderr).to.equal(0);
      expect(copyOut.stdout).to.equal(rows);
      // A COPY that fails halfway: the error, nothing of it kept, and the next transactions work.
      const badRows = `${Array.from({ length: 3000 }, (_, index) => `${index + 10_000}\tok\n`).join('')}not-a-number\tbad\n${Array.from({ length: 100 }, (_, index) => `${index + 20_000}\tok\n`).join('')}`;
      const badCopy = await psql(connection, owner.password, ['-c', 'COPY items FROM STDIN'], badRows);
      expect(badCopy.code).to.not.equal(0);
      expect(badCopy.stderr).to.contain('invalid input syntax for type integer');
      expect((await setup.query('SELECT count(*)::int AS n FROM items')).rows[0].n).to.equal(5000);

      // Clients that read a large result and leave at once: the server connection each leaves serves the next
      // transaction (the last connection given back is the first taken) without delay.
      for (let round = 0; round < 25; round++) {
        const copyAgain = await psql(connection, owner.password, ['-c', 'COPY (SELECT id, name FROM items WHERE id >= 100 ORDER BY id) TO STDOUT']);
        expect(copyAgain.stdout).to.equal(rows);
        const next = await withDeadline(setup.query('SELECT $1::int AS round', [round]), 10_000, `round ${round}: the next transaction's answer`);
        expect(next.rows).to.deep.equal([{ round }]);
      }

      // A client that stays after its COPY failed (the rest of its data and CopyDone arrive after the error): its
      // next transactions work, and between them it holds no server connection.
      const copier = await wire(gateway.port);
      await login(copier, { ...startupParameters(owner.user, `${endpointId}-pooler`), application_name: 'copier' }, owner.password);
      copier.write(simpleQuery('COPY items FROM STDIN'));
      await copier.expectMessage('G');
      copier.write(message(MessageType.copyData, Buffer.from('not-a-number\tbad\n')));
      const copyError = await copier.expectMessage('E');
      expect(parseErrorFields(copyError).get('C')).to.equal('22P02');
      await copier.expectMessage('Z');
      copier.write(Buffer.concat([message(MessageType.copyData, Buffer.from('30000\tlate\n')), message(MessageType.copyDone)]));
      expect((await exchange(copier, simpleQuery('SELECT count(*) FROM items'))).rows).to.deep.equal([['5000']]);
      await waitFor(async () => (await gateway.admin.listClients({ endpointId })).clients.find((client) => client.applicationName === 'copier' && client.state === ClientState.CLIENT_STATE_IDLE), {
        what: 'the client of the failed COPY to hold no server connection between transactions',
        timeoutMs: 5_000,
      });
    });
  });

  describe('a slow reader', () => {
    const { clients, wires, platform, wire } = useFixtures();

    it('gets a large result intact while it reads slowly, in both modes and over TLS, and other clients go on meanwhile', async () => {
      const { gateway, endpointId, owner } = await platform({ poolerMode: PoolerMode.POOLER_MODE_TRANSACTION });
      const other = await gateway.connect(endpointId, { ...owner, pooled: true });
      clients.push(other);
      const md5 = (text: string) => createHash('md5').update(text).digest('hex');
      const rowCount = 8000;
      // About 16 MB: far more than the sockets hold, so the gateway must wait for the reader, chunk after chunk.
      const sql = `SELECT g, md5(g::text) || repeat(chr(65 + g % 26), 2000) AS v FROM generate_series(1, ${rowCount}) g`;
      const cases = [
        { label: `${endpointId}-pooler`, tls: false },
        { label: endpointId, tls: false },
        { label: `${endpointId}-pooler`, tls: true },
      ];
      for (const { label, tls: secure } of cases) {
        const slow = secure ? await WireClient.connectTls(gateway.port, `${label}.localhost`, gateway.caCert) : await wire(gateway.port);
        if (secure) wires.push(slow);
        await login(slow, secure ? { user: owner.user, database: 'postgres', client_encoding: 'UTF8' } : startupParameters(owner.user, label), owner.password);
        slow.socket.pause();
        slow.write(simpleQuery(sql));
        for (let index = 0; index < 20; index++) {
          const { rows } = await other.query('SELECT $1::int AS i, md5($1::text) AS h', [index]);
          expect(rows, `${label}: another client's transaction while the reader waits`).to.deep.equal([{ i: index, h: md5(String(index)) }]);
        }
        // Then it reads, a little at a time.
        let pausing: NodeJS.Timeout | undefined;
        const reading = setInterval(() => {
          slow.socket.resume();
          pausing = setTimeout(() => slow.socket.pause(), 1);
        }, 3);
        let answer: Buffer[];
        try {
          answer = await slow.untilReady(120_000);
        } finally {
          clearInterval(reading);
          clearTimeout(pausing);
          slow.socket.resume();
        }
        const rows = answer.filter((msg) => msg[0] === MessageType.dataRow).map(dataRow);
        expect(rows, label).to.have.length(rowCount);
        const wrong = rows.findIndex(([g, v], index) => g !== String(index + 1) || v !== md5(String(index + 1)) + String.fromCharCode(65 + ((index + 1) % 26)).repeat(2000));
        expect(wrong, `${label}: the first row that differs from what Postgres sent`).to.equal(-1);
        expect((await exchange(slow, simpleQuery('SELECT 42'))).rows).to.deep.equal([['42']]);
      }
    });
  });

  describe('session mode resets', () => {
    const { clients, platform, wire } = useFixtures();

    it('resets a session-mode server connection for the next client, also when its client left mid-query, mid-message or right after a query', async () => {
      // One server connection per pool: the next client gets exactly what the last one left.
      const { gateway, endpointId, owner } = await platform({ gatewayArgs: ['--pool-size', '1'] });
      // Its own pool (session mode keys pools by application name): watches pg_stat_activity and the table.
      const observer = await gateway.connect(endpointId, { ...owner, application_name: 'observer' });
      clients.push(observer);
      await observer.query('CREATE TABLE notes (id int PRIMARY KEY, body text)');
      const session = startupParameters(owner.user, endpointId);

      // The next client gets the server connection back reset.
      const before = await gateway.connect(endpointId, owner);
      const backend = (await before.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      await before.query('SET search_path = nowhere');
      await before.query('PREPARE p AS SELECT 1');
      await before.query('CREATE TEMP TABLE scratch (x int)');
      await before.end();
      const after = await gateway.connect(endpointId, owner);
      clients.push(after);
      const reset = await after.query(`SELECT pg_backend_pid() AS pid, current_setting('search_path') AS path, (SELECT count(*)::int FROM pg_prepared_statements) AS prepared, to_regclass('pg_temp.scratch')::text AS scratch`);
      expect(reset.rows).to.deep.equal([{ pid: backend, path: '"$user", public', prepared: 0, scratch: null }]);
      await after.end();

      // A query and Terminate in one packet: Postgres runs the query before it sees the Terminate.
      const hasty = await wire(gateway.port);
      await login(hasty, session, owner.password);
      hasty.write(Buffer.concat([simpleQuery(`INSERT INTO notes VALUES (1, 'sent with Terminate')`), TERMINATE]));
      await hasty.closing(5_000);
      await waitFor(async () => ((await observer.query('SELECT count(*)::int AS n FROM notes WHERE id = 1')).rows[0].n === 1 ? true : undefined), {
        what: 'the row inserted just before Terminate',
        timeoutMs: 5_000,
      });

      // A client that leaves while its query runs inside a transaction: the next client gets neither the transaction nor its answers.
      const leaving = `BEGIN; CREATE TEMP TABLE leaked (x int); SELECT pg_sleep(1.5)`;
      const leaver = await wire(gateway.port);
      await login(leaver, session, owner.password);
      leaver.write(simpleQuery(leaving));
      await waitFor(async () => ((await observer.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = $1 AND state = 'active'`, [leaving])).rows[0].n === 1 ? true : undefined), {
        what: 'the leaving client\'s query to run',
      });
      leaver.write(TERMINATE);
      await leaver.closing(5_000);
      const successor = await gateway.connect(endpointId, owner);
      clients.push(successor);
      const state = await successor.query(`SELECT to_regclass('pg_temp.leaked')::text AS leaked, now() = statement_timestamp() AS own_transaction, 7 AS seven`);
      expect(state.rows).to.deep.equal([{ leaked: null, own_transaction: true, seven: 7 }]);
      await successor.end();

      // A client that leaves in the middle of a message: the next client is not held up by what it left behind.
      const halfway = await wire(gateway.port);
      await login(halfway, session, owner.password);
      halfway.write(Buffer.concat([header(MessageType.query, 1000), Buffer.from('SELECT 1')]));
      halfway.end();
      await halfway.closing(5_000);
      const started = Date.now();
      const later = await gateway.connect(endpointId, owner);
      clients.push(later);
      expect((await later.query('SELECT 8 AS eight')).rows).to.deep.equal([{ eight: 8 }]);
      expect(Date.now() - started, 'the next client waited for the server connection left mid-message').to.be.below(5_000);
    });
  });
});

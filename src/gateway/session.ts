/**
 * One client connection after its startup packet: authentication (SCRAM-SHA-256, relayed to the control plane that
 * holds the verifiers, before anything wakes), wake-on-connect, the login answer, and then the proxying itself in one of two modes:
 *
 * - **session**: the client owns one server connection until it leaves; bytes pass through untouched.
 * - **transaction**: a server connection is taken at the first message of a transaction and given back at the
 *   ReadyForQuery that ends it ('I' with nothing outstanding). Named prepared statements are made to work across
 *   server connections: the client's names are mapped to pooler-wide names derived from the query text, a server
 *   connection that lacks one is sent its Parse first (and the ParseComplete it answers is swallowed), and a Parse
 *   or Close the server does not need is answered by the gateway. A FIFO of what each forwarded message will be
 *   answered with keeps those answers in the client's order, also when an error makes Postgres skip to the Sync.
 *   Statements that change the session (SET, PREPARE, LISTEN, temporary tables, advisory locks...) mark the server
 *   connection dirty, and it is reset (DISCARD ALL) before another client gets it.
 */
import { createHash, randomInt } from 'node:crypto';
import type { Socket } from 'node:net';
import { newTraceId, type Logger } from '../lib/log.js';
import { counter, histogram } from '../lib/metrics.js';
import { ScramProtocolError } from '../lib/scram.js';
import type { EndpointRoute } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { PoolTimeoutError, type Pool } from './pool.js';
import {
  authenticationOk,
  authenticationSasl,
  authenticationSaslContinue,
  authenticationSaslFinal,
  backendKeyData,
  bindMessage,
  CLOSE_COMPLETE,
  errorResponse,
  FrameScanner,
  MessageType,
  PARSE_COMPLETE,
  parameterStatus,
  parseErrorFields,
  parseMessage,
  ProtocolError,
  readBind,
  readCString,
  readParse,
  readQuery,
  readTarget,
  readyForQuery,
  simpleQuery,
  targetMessage,
} from './protocol.js';
import { poolerRefusal, refusalStatement, type PoolerRefusal } from './pooler-contract.js';
import { endpointOf, RoutingError, type EndpointName, type Routing } from './routing.js';
import { ServerConnectError, type ServerConnection } from './server-connection.js';

const authFailures = counter('spg99_gateway_auth_failures_total', 'Failed client logins', ['reason']);
const authDelays = counter('spg99_gateway_auth_delays_total', 'Answers to password proofs held back because their credential failed often lately');
const wakeSeconds = histogram('spg99_gateway_wake_seconds', 'Time from a client\'s login to a server connection for it (includes cold starts)', [], [0.01, 0.05, 0.2, 0.5, 1, 2, 5, 10, 30, 60]);
const transactionsTotal = counter('spg99_gateway_transactions_total', 'Transactions pooled in transaction mode');

/** Statements after which a server connection's session is no longer what a fresh one has. */
const SESSION_CHANGING_STATEMENT = /(^|;)\s*(set|reset|prepare|deallocate|listen|unlisten|declare|discard|load|create\s+(global\s+|local\s+)?temp(orary)?)\b/i;
const SESSION_CHANGING_CALL = /\b(set_config|pg_advisory_lock|pg_advisory_lock_shared|pg_try_advisory_lock|pg_try_advisory_lock_shared)\s*\(/i;

/** Statements that may change a table's shape, after which shared prepared statements are parsed afresh. */
const SCHEMA_CHANGING_STATEMENT = /(^|;)\s*(alter|create|drop)\b/i;

function changesSession(sql: string): boolean {
  return SESSION_CHANGING_STATEMENT.test(sql) || SESSION_CHANGING_CALL.test(sql);
}

/** What a forwarded message will be answered with, in order. */
interface Expected {
  /** `copyEnd`: no answer; marks where the client ended a COPY FROM STDIN (its CopyDone or CopyFail). */
  readonly kind: 'parse' | 'bind' | 'close' | 'describe' | 'execute' | 'sync' | 'query' | 'copyEnd';
  /** An answer the gateway gives itself when everything before it is answered. */
  readonly synthetic: Buffer | null;
  /** The answer belongs to a message the gateway injected: the client never sees it. */
  readonly swallow: boolean;
  /** The pooler-wide statement a Parse creates (forgotten on the server connection if the Parse fails). */
  readonly statement: string | null;
  /** The pooler-wide statement a Bind or Describe uses (found stale when it fails), with its base name. */
  readonly uses: { name: string; base: string } | null;
  /** A Parse the pooler refuses (sent as one that fails, so Postgres skips to the Sync): its error is replaced. */
  readonly refusal: PoolerRefusal | null;
}

/** An expected answer; entries are never changed, so the plain ones are shared (one shape for all: fast lookups). */
function expected(
  kind: Expected['kind'],
  extra: { synthetic?: Buffer; swallow?: boolean; statement?: string; uses?: { name: string; base: string }; refusal?: PoolerRefusal | null } = {},
): Expected {
  return { kind, synthetic: extra.synthetic ?? null, swallow: extra.swallow ?? false, statement: extra.statement ?? null, uses: extra.uses ?? null, refusal: extra.refusal ?? null };
}

/** What a refused Parse is sent as: a syntax error, so that Postgres fails it and skips to the Sync as for any error. */
const REFUSED_PARSE = 'SPG99 POOLER REFUSAL';

const EXPECT_COPY_END = expected('copyEnd', { swallow: true });

const EXPECT = {
  query: expected('query'),
  parse: expected('parse'),
  bind: expected('bind'),
  describe: expected('describe'),
  close: expected('close'),
  execute: expected('execute'),
  sync: expected('sync'),
} as const;

/** A client's prepared statement in transaction mode. */
interface ClientStatement {
  /** The pooler-wide name of this text and these parameter types; {@link globalName} is its version. */
  base: string;
  globalName: string;
  query: string;
  parameterTypes: Buffer;
  refusal: PoolerRefusal | null;
}

/** What a session needs from the gateway around it. */
export interface SessionContext {
  routing: Routing;
  log: Logger;
  /** The pool for these connection settings (created on first use); `credentials` are the client's keys. */
  pool(key: PoolKey, route: EndpointRoute, credentials: { clientKey: Buffer; serverKey: Buffer }): Pool;
  /** The longest a message from a client may be. */
  maxMessageBytes: number;
  /** The password exchange must be over within this time of the startup packet (the wake has its own deadline). */
  loginTimeoutMs: number;
  /** Registers the session under its cancel key; answers the key. */
  register(session: ClientSession): { processId: number; secretKey: number };
  unregister(session: ClientSession): void;
  /** Throws a RoutingError when the endpoint has as many clients as it may. */
  admit(session: ClientSession, route: EndpointRoute | null): void;
}

/** What distinguishes one pool from another. */
export interface PoolKey {
  endpointId: string;
  database: string;
  role: string;
  mode: 'session' | 'transaction';
  /** Startup parameters the server connections are opened with. */
  parameters: Record<string, string>;
}

/**
 * Startup parameters the gateway answers itself: every other one goes on to Postgres as the client sent it, so that
 * Postgres accepts or refuses it with its own error (`options` goes on without the gateway's `endpoint=`).
 */
const GATEWAY_PARAMETERS = new Set(['user', 'database', 'options', 'replication']);

let nextClientId = 1n;

export type ClientSessionState = 'connecting' | 'idle' | 'active' | 'waiting';

export class ClientSession {
  readonly clientId = nextClientId++;
  readonly connectedAt = new Date();
  endpoint: EndpointName | null = null;
  database = '';
  role = '';
  applicationName = '';
  mode: 'session' | 'transaction' = 'session';
  state: ClientSessionState = 'connecting';
  transactions = 0n;
  cancelKey = { processId: 0, secretKey: 0 };
  /** Called once the client proved its password (the gateway stops counting it as an unfinished login). */
  onAuthenticated: (() => void) | null = null;
  /** Names this client's failures in the gateway's log and in what the client is told. */
  readonly traceId = newTraceId();

  private server: ServerConnection | null = null;
  private pool: Pool | null = null;
  private readonly expected: Expected[] = [];
  private readonly statements = new Map<string, ClientStatement>();
  /** Client messages that arrived while no server connection was attached (transaction mode). */
  private pending: Buffer[] = [];
  private acquiring = false;
  /** Session mode: Query/Sync/FunctionCall messages sent that Postgres has not answered with ReadyForQuery yet. */
  private awaitingReady = 0;
  private closed = false;
  private loginTimer: NodeJS.Timeout | undefined;
  private clientScanner: FrameScanner | null = null;
  private serverScanner: FrameScanner | null = null;
  private toServer: Buffer[] = [];
  private toClient: Buffer[] = [];
  private readonly onServerData = (chunk: Buffer) => this.serverData(chunk);
  /** Postgres' notice that a commit's synchronous-replication wait was cut short, once seen: the session ends. */
  private commitUnacknowledged: string | null = null;
  /** Transaction mode: Postgres is in copy-in mode and the client has not ended the copy yet. */
  private copyIn = false;
  /** The server connection sent a FATAL: it ends the session, and the client has Postgres' own reason. */
  private serverEndedSession = false;

  constructor(
    private readonly socket: Socket,
    readonly remoteAddress: string,
    readonly tls: boolean,
    private readonly serverName: string | undefined,
    private readonly context: SessionContext,
    private readonly domain: string,
  ) {}

  /** Runs the login and then proxies until either side leaves. */
  async run(parameters: Map<string, string>, leftover: Buffer): Promise<void> {
    const { log } = this.context;
    const reader = new MessageQueue(this.socket, this.context.maxMessageBytes);
    if (leftover.length > 0) reader.feed(leftover);
    // A client that stops answering mid-login must not hold its place (an endpoint's client slot) for long.
    const seconds = Math.round(this.context.loginTimeoutMs / 1000);
    this.loginTimer = setTimeout(() => {
      reader.abort(new RoutingError(`canceling authentication due to timeout: the login did not finish within ${seconds} s`, '57014', 'The client stopped answering during the password exchange; connect again.'));
    }, this.context.loginTimeoutMs);
    try {
      await this.login(parameters, reader);
    } catch (error) {
      reader.stop();
      this.failLogin(error);
      return;
    } finally {
      clearTimeout(this.loginTimer);
    }
    const rest = reader.stop();
    this.state = 'idle';
    this.startProxy(rest);
    log.debug({ clientId: String(this.clientId), endpointId: this.endpoint?.endpointId, mode: this.mode }, 'client logged in');
  }

  /** Where a CancelRequest for this client goes now: its server connection, if it has one. */
  cancelTarget(): { address: string; processId: number; secretKey: Buffer } | null {
    const server = this.server;
    return server ? { address: server.address, processId: server.processId, secretKey: server.secretKey } : null;
  }

  /** Ends the session (gateway shutdown, endpoint deleted). */
  terminate(message: string, code = '57P01'): void {
    if (this.closed) return;
    this.socket.write(errorResponse({ code, message }));
    this.close();
  }

  // ---- Login ----

  private async login(parameters: Map<string, string>, reader: MessageQueue): Promise<void> {
    const { routing } = this.context;
    const user = parameters.get('user');
    if (!user) throw new RoutingError('no user name in the startup packet', '28000', 'Connect with a user name (the role, e.g. owner).');
    if (parameters.has('replication')) throw new RoutingError('replication connections are not served by the gateway', '08004');
    const { name, options } = endpointOf(this.serverName, this.domain, parameters.get('options'));
    this.endpoint = name;
    this.role = user;
    this.database = parameters.get('database') || user;
    this.applicationName = parameters.get('application_name') ?? '';
    this.context.admit(this, null);
    const address = this.remoteAddress.replace(/:\d+$/, '');

    // Authentication before anything wakes: a wrong password costs the platform nothing. The control plane holds the
    // verifiers and checks the proof; the gateway relays the messages and gets the keys only for a right proof.
    this.socket.write(authenticationSasl());
    const initial = await reader.next();
    if (initial[0] !== MessageType.password) throw new ProtocolError('expected a SASLInitialResponse');
    const mechanism = readCString(initial, 5);
    if (mechanism.value !== 'SCRAM-SHA-256') {
      throw new RoutingError(`SASL mechanism "${mechanism.value.slice(0, 40)}" is not supported`, '28000', 'Use SCRAM-SHA-256 without channel binding (channel_binding=disable or prefer).');
    }
    if (initial.length < mechanism.next + 4) throw new ProtocolError('invalid SASLInitialResponse: no length of the initial response');
    const length = initial.readInt32BE(mechanism.next);
    if (length < 0 || mechanism.next + 4 + length !== initial.length) {
      throw new ProtocolError(`invalid SASLInitialResponse: its response length ${length} does not match the message`);
    }
    const clientFirst = initial.toString('utf8', mechanism.next + 4, mechanism.next + 4 + length);
    const exchange = await routing.beginScram(name.endpointId, user, clientFirst);
    this.socket.write(authenticationSaslContinue(exchange.serverFirst));
    let final: Buffer;
    try {
      final = await reader.next();
    } catch (error) {
      // Leaving after the challenge is a guess too: a client could otherwise time proofs without ever being counted.
      routing.recordAuthFailure(address, name.endpointId, user);
      authFailures.inc({ reason: 'abandoned' });
      throw error;
    }
    if (final[0] !== MessageType.password) throw new ProtocolError('expected a SASLResponse');
    // The delay is decided before this attempt counts, and holds a right proof as long as a wrong one.
    const delayMs = routing.authDelayMs(address, name.endpointId, user);
    const outcome = await routing.finishScram(exchange.sessionId, final.toString('utf8', 5));
    if (!outcome) {
      routing.recordAuthFailure(address, name.endpointId, user);
      authFailures.inc({ reason: 'password' });
    }
    if (delayMs > 0) {
      authDelays.inc();
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
    if (!outcome) throw new RoutingError(`password authentication failed for user "${user}"`, '28P01');
    this.socket.write(authenticationSaslFinal(outcome.serverFinal));
    clearTimeout(this.loginTimer);
    this.onAuthenticated?.();
    const credentials = { clientKey: outcome.clientKey, serverKey: outcome.serverKey };

    // Wake (when stopped) and take a server connection: its ParameterStatus is what the client is told.
    const started = Date.now();
    const server = await this.firstServer(name, options, parameters, credentials);
    wakeSeconds.observe((Date.now() - started) / 1000);
    this.cancelKey = this.context.register(this);
    const hello: Buffer[] = [authenticationOk()];
    for (const [parameter, value] of server.parameters) hello.push(parameterStatus(parameter, value));
    hello.push(backendKeyData(this.cancelKey.processId, this.cancelKey.secretKey), readyForQuery('I'));
    this.socket.write(Buffer.concat(hello));
    if (this.mode === 'session') this.attach(server);
    else this.pool!.release(server, true);
  }

  private async firstServer(
    name: EndpointName,
    options: string,
    parameters: Map<string, string>,
    credentials: { clientKey: Buffer; serverKey: Buffer },
  ): Promise<ServerConnection> {
    const { routing } = this.context;
    const giveUpAt = Date.now() + routing.wakeTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      const route = await routing.runningRoute(name.endpointId);
      this.context.admit(this, route);
      this.mode = name.pooled ? routing.poolerMode(route) : 'session';
      // Every server connection of a pool is opened with the same startup parameters (they are the pool's key): in
      // transaction mode each transaction of the client finds them applied, application_name included (none when the
      // client sent none, as with Postgres).
      const forwarded: Record<string, string> = {};
      for (const [parameter, value] of parameters) if (!GATEWAY_PARAMETERS.has(parameter)) forwarded[parameter] = value;
      if (options) forwarded.options = options;
      this.pool = this.context.pool({ endpointId: name.endpointId, database: this.database, role: this.role, mode: this.mode, parameters: forwarded }, route, credentials);
      this.state = 'waiting';
      try {
        return await this.pool.acquire();
      } catch (error) {
        // The address may belong to a compute that is gone (stopped, or crashed and not yet replaced): ask again,
        // waking it, until the wake deadline. The control plane notices a dead compute within seconds.
        if (error instanceof ServerConnectError && error.unreachable && Date.now() < giveUpAt && !this.closed) {
          routing.invalidate(name.endpointId);
          if (attempt > 1) await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** (attempt - 2), 1000)));
          if (this.closed) throw new ClientGone('the client closed the connection during the login');
          continue;
        }
        throw error;
      }
    }
  }

  private failLogin(error: unknown): void {
    const { log } = this.context;
    let response: Buffer;
    if (error instanceof RoutingError && error.internal) {
      log.warn({ traceId: this.traceId, clientId: String(this.clientId), endpointId: this.endpoint?.endpointId, reason: error.internal }, 'a client login failed inside the platform');
      response = errorResponse({ code: error.code, message: `${error.message} (trace id ${this.traceId})`, hint: error.hint });
    } else if (error instanceof RoutingError) {
      response = errorResponse({ code: error.code, message: error.message, hint: error.hint });
    } else if (error instanceof ProtocolError) {
      response = errorResponse({ code: error.code, message: error.message });
    } else if (error instanceof ScramProtocolError) {
      authFailures.inc({ reason: 'protocol' });
      response = errorResponse({ code: '08P01', message: error.message });
    } else if (error instanceof ServerConnectError) {
      response = this.serverConnectFailure(error);
    } else if (error instanceof PoolTimeoutError) {
      response = errorResponse({ code: '53300', message: error.message, hint: 'The endpoint is busy: retry, or use fewer connections at once.' });
    } else if (error instanceof ClientGone) {
      this.close();
      return;
    } else {
      log.error({ err: error, clientId: String(this.clientId) }, 'unexpected error during a client login');
      response = errorResponse({ code: 'XX000', message: 'internal error in the gateway; try again' });
    }
    if (!this.closed && !this.socket.destroyed) this.socket.end(response);
    this.close();
  }

  /**
   * What a client is told when no server connection could be opened. Postgres' own refusals (too many clients, the
   * database is starting) pass on; anything about the platform's insides (addresses, compute ids) is logged with the
   * trace id and the client gets a generic message with it.
   */
  private serverConnectFailure(error: ServerConnectError, hint = 'Try again in a moment; if it keeps failing, report the trace id.'): Buffer {
    if (error.sqlState && !error.unreachable) {
      const fields = error.fields;
      // Postgres' own refusal of what the client asked for (a startup parameter, a database): its own words, as a
      // direct connection would get them. An authentication failure here is the gateway's, not the client's.
      if (fields && !error.sqlState.startsWith('28')) {
        return errorResponse({ code: error.sqlState, message: error.message, detail: fields.get('D'), hint: fields.get('H') });
      }
      return errorResponse({ code: error.sqlState, message: `the endpoint's database refused the connection: ${error.message}`, hint });
    }
    this.context.log.warn({ traceId: this.traceId, clientId: String(this.clientId), endpointId: this.endpoint?.endpointId, reason: error.message }, 'cannot open a server connection for a client');
    return errorResponse({ code: '08001', message: `cannot connect to the endpoint's database right now (trace id ${this.traceId})`, hint });
  }

  // ---- Proxying ----

  private startProxy(rest: Buffer): void {
    const transaction = this.mode === 'transaction';
    this.clientScanner = new FrameScanner(
      transaction ? (type) => type !== MessageType.copyData : (type) => type === MessageType.terminate || type === MessageType.query || type === MessageType.sync || type === MessageType.functionCall,
      this.context.maxMessageBytes,
      'client',
    );
    this.serverScanner = new FrameScanner(
      // Notices are looked at in both modes: one may say that a commit was not acknowledged by a quorum.
      transaction
        ? (type) => type !== MessageType.dataRow && type !== MessageType.copyData
        : (type) => type === MessageType.readyForQuery || type === MessageType.noticeResponse || type === MessageType.errorResponse,
      1 << 30,
      'server',
    );
    this.socket.on('data', (chunk: Buffer) => this.clientData(chunk));
    this.socket.on('close', () => this.close());
    this.socket.on('error', () => this.close());
    this.socket.resume();
    if (rest.length > 0) this.clientData(rest);
  }

  private clientData(chunk: Buffer): void {
    if (this.closed) return;
    try {
      this.clientScanner!.push(chunk, this.clientSink);
    } catch (error) {
      if (error instanceof ProtocolError) {
        this.context.log.info({ clientId: String(this.clientId), err: error.message }, 'protocol violation by a client');
        this.socket.end(errorResponse({ code: error.code, message: error.message }));
      } else {
        this.context.log.error({ err: error, clientId: String(this.clientId) }, 'unexpected error proxying a client');
        this.socket.end(errorResponse({ code: 'XX000', message: 'internal error in the gateway' }));
      }
      this.close();
      return;
    }
    this.flushToServer(chunk);
  }

  private readonly clientSink = {
    pass: (bytes: Buffer) => {
      if (this.server) this.toServer.push(bytes);
      // CopyData between transactions (the rest of a COPY that failed) is ignored by Postgres: so it is here.
      else if (this.acquiring || this.pending.length > 0) this.pending.push(Buffer.from(bytes));
    },
    message: (type: number, msg: Buffer) => {
      if (type === MessageType.terminate) {
        // What came before the Terminate still reaches Postgres.
        this.flushToServer();
        this.close();
        return;
      }
      if (this.mode === 'session') {
        // A Query, Sync or FunctionCall is answered by a ReadyForQuery: until then the server connection is busy.
        this.awaitingReady += 1;
        if (type === MessageType.query) this.noteSchemaChange(readQuery(msg));
        this.toServer.push(msg);
        return;
      }
      if (!this.server) {
        // A message that must not start a transaction's server use on its own.
        if (type === MessageType.flush && this.expected.length === 0) return;
        // The end of a COPY that failed, after its ReadyForQuery: Postgres ignores it; no server connection for it.
        if ((type === MessageType.copyDone || type === MessageType.copyFail) && !this.acquiring && this.pending.length === 0) return;
        // The common case: a free connection, taken at once; the message goes straight on.
        const idle = this.acquiring ? null : this.pool!.tryAcquire();
        if (idle) {
          this.startTransaction(idle);
        } else {
          this.pending.push(Buffer.from(msg));
          this.acquireForTransaction();
          return;
        }
      }
      this.forward(type, msg);
    },
  };

  private acquireForTransaction(): void {
    if (this.acquiring || this.closed) return;
    this.acquiring = true;
    this.state = 'waiting';
    this.pool!.acquire().then(
      (server) => {
        this.acquiring = false;
        if (this.closed) {
          this.pool!.release(server, true);
          return;
        }
        this.startTransaction(server);
        const pending = this.pending;
        this.pending = [];
        // Replayed through the scanner: the queued bytes are whole messages in order.
        const replay = new FrameScanner((type) => type !== MessageType.copyData, this.context.maxMessageBytes, 'client');
        try {
          for (const bytes of pending) {
            replay.push(bytes, {
              pass: (raw) => this.toServer.push(raw),
              message: (type, msg) => {
                if (type === MessageType.terminate) this.close();
                else this.forward(type, msg);
              },
            });
          }
        } catch (error) {
          this.socket.end(errorResponse({ code: '08P01', message: (error as Error).message }));
          this.close();
          return;
        }
        this.flushToServer();
      },
      (error: unknown) => {
        this.acquiring = false;
        if (error instanceof ServerConnectError && error.unreachable && this.endpoint) this.context.routing.invalidate(this.endpoint.endpointId);
        let response: Buffer;
        if (error instanceof PoolTimeoutError) {
          response = errorResponse({ code: '53300', message: error.message, hint: 'Reconnect and retry the transaction.' });
        } else if (error instanceof ServerConnectError) {
          response = this.serverConnectFailure(error, 'Reconnect and retry the transaction.');
        } else {
          this.context.log.warn({ traceId: this.traceId, clientId: String(this.clientId), err: error }, 'no server connection for a pooled transaction');
          response = errorResponse({ code: '08006', message: `cannot reach the endpoint's database (trace id ${this.traceId})`, hint: 'Reconnect and retry the transaction.' });
        }
        this.socket.end(response);
        this.close();
      },
    );
  }

  /** Transaction mode: a server connection for the transaction that begins. */
  private startTransaction(server: ServerConnection): void {
    this.transactions += 1n;
    transactionsTotal.inc();
    this.attach(server);
  }

  private attach(server: ServerConnection): void {
    this.server = server;
    this.state = 'active';
    server.owner = this;
    server.receiveWith(this.onServerData);
    if (server.broken) this.serverLost();
  }

  private detach(): ServerConnection | null {
    const server = this.server;
    if (!server) return null;
    server.receiveWith(null);
    // Paused for this client's slow socket: the next user of the connection must not find it paused.
    server.socket.resume();
    server.owner = null;
    this.server = null;
    this.state = 'idle';
    return server;
  }

  /** A client message in transaction mode, with a server connection attached. */
  private forward(type: number, msg: Buffer): void {
    const server = this.server!;
    switch (type) {
      case MessageType.query: {
        const sql = readQuery(msg);
        this.noteSchemaChange(sql);
        const refusal = poolerRefusal(sql);
        if (changesSession(sql)) server.dirty = true;
        this.expect(EXPECT.query);
        this.toServer.push(refusal ? simpleQuery(refusalStatement(refusal)) : msg);
        return;
      }
      case MessageType.functionCall:
        this.expect(EXPECT.query);
        this.toServer.push(msg);
        return;
      case MessageType.parse: {
        const parsed = readParse(msg);
        const { name, parameterTypes } = parsed;
        const refusal = poolerRefusal(parsed.query);
        const query = refusal ? REFUSED_PARSE : parsed.query;
        this.noteSchemaChange(query);
        if (changesSession(query)) server.dirty = true;
        if (name === '') {
          this.expect(refusal ? expected('parse', { refusal }) : EXPECT.parse);
          this.toServer.push(refusal ? parseMessage('', query, parameterTypes) : msg);
          return;
        }
        const base = statementName(query, parameterTypes);
        const globalName = this.pool!.statementVersion(base);
        const statement = { base, globalName, query, parameterTypes: Buffer.from(parameterTypes), refusal };
        this.statements.set(name, statement);
        if (server.prepared.has(globalName)) {
          this.expect(expected('parse', { synthetic: PARSE_COMPLETE }));
        } else {
          this.closeOtherVersion(server, statement);
          server.prepared.add(globalName);
          this.expect(expected('parse', { statement: globalName, refusal }));
          this.toServer.push(parseMessage(globalName, query, parameterTypes));
        }
        return;
      }
      case MessageType.bind: {
        const { portal, statement, rest } = readBind(msg);
        const known = statement === '' ? undefined : this.statements.get(statement);
        // The injected Parse is answered first: its expectation goes first.
        if (known) this.ensurePrepared(server, known);
        this.expect(known ? expected('bind', { uses: { name: known.globalName, base: known.base } }) : EXPECT.bind);
        if (!known) {
          this.toServer.push(msg);
          return;
        }
        this.toServer.push(bindMessage(portal, known.globalName, rest));
        return;
      }
      case MessageType.describe: {
        const { target, name } = readTarget(msg);
        const known = target === 'S' && name !== '' ? this.statements.get(name) : undefined;
        if (known) this.ensurePrepared(server, known);
        this.expect(known ? expected('describe', { uses: { name: known.globalName, base: known.base } }) : EXPECT.describe);
        if (!known) {
          this.toServer.push(msg);
          return;
        }
        this.toServer.push(targetMessage(MessageType.describe, 'S', known.globalName));
        return;
      }
      case MessageType.close: {
        const { target, name } = readTarget(msg);
        if (target === 'S' && name !== '' && this.statements.has(name)) {
          // The server keeps the pooler-wide statement for other clients; the client's name is gone.
          this.statements.delete(name);
          this.expect(expected('close', { synthetic: CLOSE_COMPLETE }));
          return;
        }
        this.expect(EXPECT.close);
        this.toServer.push(msg);
        return;
      }
      case MessageType.execute:
        this.expect(EXPECT.execute);
        this.toServer.push(msg);
        return;
      case MessageType.sync:
        // Postgres ignores a Sync in copy-in mode: no ReadyForQuery will answer it.
        if (!this.copyIn) this.expect(EXPECT.sync);
        this.toServer.push(msg);
        return;
      case MessageType.copyDone:
      case MessageType.copyFail:
        // Before the server's CopyInResponse arrived, the gateway cannot tell which Syncs Postgres will ignore: it
        // marks where the copy ended (see the CopyInResponse in answer()).
        if (this.copyIn) this.copyIn = false;
        else this.expected.push(EXPECT_COPY_END);
        this.toServer.push(msg);
        return;
      default:
        // Flush, CopyDone, CopyFail and anything else: no answer of its own.
        this.toServer.push(msg);
    }
  }

  /** Sends the statement's Parse to a server connection that lacks it; its ParseComplete is swallowed. */
  private ensurePrepared(server: ServerConnection, statement: ClientStatement): void {
    if (server.prepared.has(statement.globalName)) return;
    this.closeOtherVersion(server, statement);
    server.prepared.add(statement.globalName);
    this.expect(expected('parse', { swallow: true, statement: statement.globalName, refusal: statement.refusal }));
    this.toServer.push(parseMessage(statement.globalName, statement.query, statement.parameterTypes));
  }

  /** Counts a statement that may change a table's shape (for every pool of the endpoint). */
  private noteSchemaChange(sql: string): void {
    if (this.pool && SCHEMA_CHANGING_STATEMENT.test(sql)) this.pool.noteSchemaChange();
  }

  /**
   * Closes the version of the statement's text the server connection holds when it is not the one about to be parsed
   * (a stale one, or another client's older one): each connection keeps one version per text, so versions never pile up.
   */
  private closeOtherVersion(server: ServerConnection, statement: ClientStatement): void {
    const held = server.preparedVersions.get(statement.base);
    server.preparedVersions.set(statement.base, statement.globalName);
    if (held === undefined || held === statement.globalName || !server.prepared.has(held)) return;
    server.prepared.delete(held);
    this.expect(expected('close', { swallow: true, statement: held }));
    this.toServer.push(targetMessage(MessageType.close, 'S', held));
  }

  private expect(entry: Expected): void {
    this.expected.push(entry);
    this.answerSynthetic();
  }

  /** Gives the client the gateway's own answers that are now due (everything before them was answered). */
  private answerSynthetic(): void {
    while (this.expected.length > 0 && this.expected[0].synthetic) this.toClient.push(this.expected.shift()!.synthetic!);
  }

  private serverData(chunk: Buffer): void {
    if (this.closed) return;
    try {
      this.serverScanner!.push(chunk, this.serverSink);
    } catch (error) {
      this.context.log.warn({ err: error, clientId: String(this.clientId) }, 'bad data from a server connection');
      this.server?.destroy();
      this.socket.end(errorResponse({ code: '08006', message: 'the connection to the database broke; reconnect' }));
      this.close();
      return;
    }
    if (this.commitUnacknowledged) {
      this.endWithUnknownOutcome();
      return;
    }
    this.flushToClient(chunk);
    if (this.mode === 'transaction') this.maybeRelease();
  }

  private readonly serverSink = {
    pass: (bytes: Buffer) => {
      // Nothing after the notice that a commit was not acknowledged reaches the client (its COMMIT above all).
      if (!this.commitUnacknowledged) this.toClient.push(bytes);
    },
    message: (type: number, msg: Buffer) => {
      if (this.commitUnacknowledged) return;
      if (type === MessageType.noticeResponse && isSyncRepCancelNotice(msg)) {
        this.commitUnacknowledged = parseErrorFields(msg).get('M') ?? 'canceling wait for synchronous replication';
        return;
      }
      if (type === MessageType.errorResponse && isFatal(msg)) this.serverEndedSession = true;
      if (this.mode === 'session') {
        if (type === MessageType.readyForQuery && this.server) {
          this.server.transactionStatus = String.fromCharCode(msg[5]) as 'I' | 'T' | 'E';
          this.awaitingReady = Math.max(0, this.awaitingReady - 1);
        }
        this.toClient.push(msg);
        return;
      }
      this.answer(type, msg);
    },
  };

  /** A server message in transaction mode: matched against what was expected. */
  private answer(type: number, msg: Buffer): void {
    const head = this.expected[0];
    switch (type) {
      case MessageType.readyForQuery:
        if (this.server) this.server.transactionStatus = String.fromCharCode(msg[5]) as 'I' | 'T' | 'E';
        if (head && (head.kind === 'sync' || head.kind === 'query')) this.expected.shift();
        // A CopyDone or CopyFail sent after a COPY had already failed marks nothing.
        while (this.expected[0]?.kind === 'copyEnd') this.expected.shift();
        this.copyIn = false;
        this.toClient.push(msg);
        break;
      case MessageType.copyInResponse: {
        // Postgres is in copy-in mode until the client's CopyDone or CopyFail, and ignores Syncs until then: those
        // the client already sent (pipelined after its Execute) get no ReadyForQuery, so they are not expected.
        let ended = false;
        for (let index = 1; index < this.expected.length; index++) {
          const kind = this.expected[index]!.kind;
          if (kind === 'copyEnd') {
            this.expected.splice(index, 1);
            ended = true;
            break;
          }
          if (kind === 'sync') this.expected.splice(index--, 1);
        }
        this.copyIn = !ended;
        this.toClient.push(msg);
        break;
      }
      case MessageType.errorResponse:
        if (head?.refusal) msg = errorResponse({ severity: 'ERROR', code: '0A000', message: head.refusal.message, hint: head.refusal.hint });
        if (head && head.kind !== 'query') {
          this.expected.shift();
          if (head.statement && head.kind !== 'close') this.server?.prepared.delete(head.statement);
          // A shared statement failing at Bind or Describe may be stale (its plan's result or parameter types changed
          // with the table): the client's next Parse of it gets a fresh version, as a re-prepare does in Postgres.
          if (head.uses) this.pool?.markStale(head.uses.base, head.uses.name);
          // Postgres skips everything up to the Sync: so are their answers (the gateway's own included).
          while (this.expected.length > 0 && this.expected[0].kind !== 'sync') {
            const skipped = this.expected.shift()!;
            // A skipped Parse created nothing; a skipped Close of an old version closed nothing.
            if (skipped.statement && !skipped.synthetic) {
              if (skipped.kind === 'close') this.server?.prepared.add(skipped.statement);
              else this.server?.prepared.delete(skipped.statement);
            }
          }
        }
        this.toClient.push(msg);
        return;
      case MessageType.parseComplete:
        if (head?.kind === 'parse') this.expected.shift();
        if (!head?.swallow) this.toClient.push(msg);
        break;
      case MessageType.bindComplete:
      case MessageType.closeComplete:
        if (head && (head.kind === 'bind' || head.kind === 'close')) this.expected.shift();
        if (!head?.swallow) this.toClient.push(msg);
        break;
      case MessageType.noData:
      case MessageType.rowDescription:
        if (head?.kind === 'describe') this.expected.shift();
        this.toClient.push(msg);
        break;
      case MessageType.commandComplete:
      case MessageType.emptyQueryResponse:
      case MessageType.portalSuspended:
        if (head?.kind === 'execute') this.expected.shift();
        this.toClient.push(msg);
        break;
      case MessageType.parameterStatus: {
        const name = readCString(msg, 5);
        this.server?.parameters.set(name.value, readCString(msg, name.next).value);
        this.toClient.push(msg);
        break;
      }
      default:
        this.toClient.push(msg);
        return;
    }
    this.answerSynthetic();
  }

  /** Transaction mode: gives the server connection back once the transaction ended and nothing is outstanding. */
  private maybeRelease(): void {
    const server = this.server;
    if (!server || server.transactionStatus !== 'I' || this.expected.length > 0 || this.pending.length > 0 || !this.serverScanner!.atBoundary || !this.clientScanner!.atBoundary) return;
    this.detach();
    this.pool!.release(server, true);
  }

  /** Writes what is queued for the server; `source` is the chunk it came from, written as is when unchanged. */
  private flushToServer(source?: Buffer): void {
    const server = this.server;
    if (!server || this.toServer.length === 0) return;
    const out = this.toServer;
    this.toServer = [];
    const ok = server.socket.write(joined(out, source));
    if (!ok) {
      this.socket.pause();
      server.socket.once('drain', () => this.socket.resume());
    }
  }

  /** Writes what is queued for the client; `source` is the chunk it came from, written as is when unchanged. */
  private flushToClient(source?: Buffer): void {
    if (this.toClient.length === 0) return;
    const out = this.toClient;
    this.toClient = [];
    let bytes = joined(out, source);
    if (this.tls) {
      // A TLS socket may hold what it is given until its previous write is done: it gets a copy of a view of the
      // server's read buffer (small answers come from Node's buffer pool: a copy costs less than a new read buffer).
      if (source && bytes.buffer === source.buffer) bytes = Buffer.from(bytes);
    }
    const ok = this.socket.write(bytes);
    // Bytes the kernel did not take at once may still point into the server connection's read buffer.
    if (!this.tls && this.socket.writableLength > 0) this.server?.readBufferTaken();
    if (!ok && this.server) {
      const server = this.server;
      server.socket.pause();
      this.socket.once('drain', () => server.socket.resume());
    }
  }

  /**
   * Postgres ended a commit's wait for the safekeepers' quorum early (a cancel, or the backend being terminated) and
   * committed locally only: it would now report COMMIT, but the commit is durable only if a majority of safekeepers
   * has its WAL, which nobody knows. The client is told exactly that, as after a network loss, and the server
   * connection is not reused (it is destroyed, not returned to the pool).
   */
  private endWithUnknownOutcome(): void {
    const reason = this.commitUnacknowledged ?? '';
    // What came before the notice (earlier results of a pipeline) is the client's.
    this.flushToClient();
    this.context.log.warn(
      { traceId: this.traceId, clientId: String(this.clientId), endpointId: this.endpoint?.endpointId, postgres: reason },
      'a commit was not acknowledged by a majority of safekeepers: closing the client with its outcome unknown',
    );
    const server = this.detach();
    if (server) this.pool?.release(server, false);
    this.socket.end(
      errorResponse({
        code: '08007',
        message: `the outcome of the transaction's commit is unknown: its wait for the commit to reach a majority of safekeepers was interrupted (${reason}), so it may or may not be durable (trace id ${this.traceId})`,
        hint: 'Reconnect and check whether the transaction\'s changes are there before retrying it, as after a lost connection.',
      }),
    );
    this.close();
  }

  /** The server connection closed under the client. */
  serverLost(): void {
    if (this.closed || !this.server) return;
    this.detach();
    // Postgres said why itself (a FATAL such as 57P01, terminating connection due to administrator command): that one
    // error is the client's, as on a direct connection.
    if (this.serverEndedSession) {
      this.socket.end();
      this.close();
      return;
    }
    this.socket.end(errorResponse({ code: '08006', message: 'the connection to the database was lost (the compute stopped or restarted); reconnect' }));
    this.close();
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    const server = this.detach();
    if (server && this.pool) {
      // Reusable only between transactions and with nothing outstanding.
      const clean =
        this.commitUnacknowledged === null &&
        server.transactionStatus === 'I' &&
        this.expected.length === 0 &&
        this.awaitingReady === 0 &&
        (this.serverScanner?.atBoundary ?? true) &&
        (this.clientScanner?.atBoundary ?? true);
      this.pool.release(server, clean);
    }
    this.context.unregister(this);
    if (!this.socket.destroyed) this.socket.end();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }
}

/**
 * Whether a NoticeResponse is Postgres' warning that it stopped waiting for the synchronous standby (the agent's
 * walproposer: a majority of safekeepers) and committed locally only. syncrep.c (PG18) sends, at severity WARNING:
 * "canceling wait for synchronous replication due to user request" (SQLSTATE 01000, on a cancel request), or
 * "canceling the wait for synchronous replication and terminating connection due to administrator command" (57P01,
 * pg_terminate_backend or a shutdown), both with the detail "The transaction has already committed locally, but might
 * not have been replicated to the standby." The non-localized severity (V) is used; messages stay in English (lc_messages
 * is for superusers only). A user can RAISE the same warning in their own session: that only closes their own connection.
 */
export function isSyncRepCancelNotice(msg: Buffer): boolean {
  const fields = parseErrorFields(msg);
  if ((fields.get('V') ?? fields.get('S')) !== 'WARNING') return false;
  const code = fields.get('C');
  const text = fields.get('M') ?? '';
  if (code === '01000' && text.startsWith('canceling wait for synchronous replication')) return true;
  if (code === '57P01' && text.startsWith('canceling the wait for synchronous replication')) return true;
  return (code === '01000' || code === '57P01') && (fields.get('D') ?? '').startsWith('The transaction has already committed locally');
}

/** Whether an ErrorResponse is FATAL or PANIC (Postgres closes the connection after it). */
function isFatal(msg: Buffer): boolean {
  const severity = parseErrorFields(msg).get('V');
  return severity === 'FATAL' || severity === 'PANIC';
}

/**
 * The pieces as one buffer: `source` itself when they are its bytes in order, end to end (nothing was rewritten,
 * injected or held back: the common case, a whole answer in one chunk), else a copy.
 */
function joined(pieces: Buffer[], source: Buffer | undefined): Buffer {
  if (pieces.length === 1) return pieces[0];
  if (source) {
    let offset = source.byteOffset;
    for (const piece of pieces) {
      if (piece.buffer !== source.buffer || piece.byteOffset !== offset) return Buffer.concat(pieces);
      offset += piece.length;
    }
    if (offset === source.byteOffset + source.length) return source;
  }
  return Buffer.concat(pieces);
}

/** The client left before the login finished. */
class ClientGone extends Error {
  override name = 'ClientGone';
}

/** Reads whole messages from a client during the login (no pipelining is possible before AuthenticationOk). */
class MessageQueue {
  private readonly messages: Buffer[] = [];
  private readonly scanner: FrameScanner;
  private waiter: { resolve: (msg: Buffer) => void; reject: (error: Error) => void } | null = null;
  private failure: Error | null = null;
  private rest: Buffer[] = [];
  private stopped = false;
  private readonly onData = (chunk: Buffer) => this.feed(chunk);
  private readonly onEnd = () => this.fail(new ClientGone('the client closed the connection during the login'));

  constructor(
    private readonly socket: Socket,
    maxMessageBytes: number,
  ) {
    this.scanner = new FrameScanner(() => true, Math.min(maxMessageBytes, 64 * 1024), 'client');
    socket.on('data', this.onData);
    socket.once('close', this.onEnd);
    socket.resume();
  }

  feed(chunk: Buffer): void {
    if (this.stopped) {
      this.rest.push(chunk);
      return;
    }
    try {
      this.scanner.push(chunk, {
        pass: () => undefined,
        message: (_type, msg) => {
          const copy = Buffer.from(msg);
          if (this.waiter) {
            const waiter = this.waiter;
            this.waiter = null;
            waiter.resolve(copy);
          } else this.messages.push(copy);
        },
      });
    } catch (error) {
      this.fail(error as Error);
    }
  }

  private fail(error: Error): void {
    this.failure ??= error;
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = null;
      waiter.reject(error);
    }
  }

  /** Fails the login: the pending and every later next() reject with `error`. */
  abort(error: Error): void {
    this.fail(error);
  }

  next(): Promise<Buffer> {
    const ready = this.messages.shift();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Stops listening; answers what arrived after the last message taken (the first messages of the session). */
  stop(): Buffer {
    this.stopped = true;
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('close', this.onEnd);
    return Buffer.concat([...this.messages, ...this.rest]);
  }
}

/** The pooler-wide name of a prepared statement: the same query and parameter types share one. */
function statementName(query: string, parameterTypes: Buffer): string {
  return `spg99_${createHash('sha256').update(query).update(parameterTypes).digest('hex').slice(0, 24)}`;
}

/** A random cancel key part (Postgres uses a 32-bit process id and secret). */
export function randomKeyPart(): number {
  return randomInt(1, 0x7fffffff);
}

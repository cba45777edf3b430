/**
 * The gateway's TCP server: the first packet of each connection (SSLRequest → TLS, GSSENCRequest → refused,
 * CancelRequest → forwarded to the right server connection, StartupMessage → a {@link ClientSession}), TLS with the
 * client's server name (SNI) for routing, plaintext only when allowed, limits on clients, the pools of server
 * connections, and the operations of the admin API (pause, resume, switch backend, list).
 */
import net from 'node:net';
import tls from 'node:tls';
import { Duplex } from 'node:stream';
import type { ControlPlaneInternalServiceDefinition, EndpointRoute } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { SpgClient } from '../lib/grpc/client.js';
import type { Logger } from '../lib/log.js';
import { counter, gauge } from '../lib/metrics.js';
import { EndpointGate, Pool, recordPoolGauges, type PoolOptions } from './pool.js';
import {
  cancelRequest,
  errorResponse,
  firstPacketLength,
  negotiateProtocolVersion,
  parseFirstPacket,
  ProtocolError,
  TLS_HANDSHAKE_BYTE,
  type FirstPacket,
} from './protocol.js';
import { Routing, RoutingError } from './routing.js';
import { splitAddress } from './server-connection.js';
import { ClientSession, randomKeyPart, type PoolKey, type SessionContext } from './session.js';
import { ThrottledLog } from './throttled-log.js';

const connectionsTotal = counter('spg99_gateway_connections_total', 'Client connections accepted, by how they ended their first packet', ['kind']);
const clientsGauge = gauge('spg99_gateway_clients', 'Client connections now, by mode', ['mode']);
const cancelsTotal = counter('spg99_gateway_cancel_requests_total', 'Cancel requests, by outcome', ['outcome']);
const unfinishedGauge = gauge('spg99_gateway_unfinished_connections', 'Connections that have not proved a password yet');

/** A client sent nothing usable within the startup timeout. */
class StartupTimeoutError extends ProtocolError {
  override name = 'StartupTimeoutError';
}

export interface GatewayOptions {
  host: string;
  port: number;
  /** Endpoints are `ep-<id>.<domain>`. */
  domain: string;
  /** The server certificate and key; null: no TLS (then plaintext must be allowed). */
  tls: { cert: Buffer; key: Buffer } | null;
  /** Accept clients that do not ask for TLS. */
  allowPlaintext: boolean;
  controlPlane: SpgClient<typeof ControlPlaneInternalServiceDefinition>;
  log: Logger;
  /** How long a client waits for a stopped endpoint to start (default 60 s). */
  wakeTimeoutMs?: number;
  /** Client connections of the whole gateway (default 10 000). */
  maxClients?: number;
  /** Client connections of one endpoint when its route says none (default 1000). */
  maxClientsPerEndpoint?: number;
  /** Server connections of a pool when the route says none (default 20). */
  poolSize?: number;
  /** How long a client waits for a pooled server connection (default 120 s). */
  poolWaitTimeoutMs?: number;
  /** Idle server connections are closed after this long (default 30 s: a compute without clients must see none). */
  serverIdleTimeoutMs?: number;
  /** Opening a server connection (connect and login) may take this long (default 15 s). */
  serverConnectTimeoutMs?: number;
  /** The longest message a client may send (default 64 MiB). */
  maxMessageBytes?: number;
  /**
   * A client must have sent its startup packet within this time of connecting, encryption requests and the TLS
   * handshake included (default 10 s).
   */
  startupTimeoutMs?: number;
  /** A client must have finished its password exchange within this time of its startup packet (default 60 s). */
  loginTimeoutMs?: number;
  /**
   * Connections from one client address that have not proved a password yet (from the connect to the end of the SCRAM
   * exchange); one more is closed at once (default 64). Silent or stalling connections then cost a bounded number of
   * descriptors per address, and a flood from one address cannot starve the others.
   */
  maxUnfinishedPerAddress?: number;
  /** Failed logins of one credential (and address) before its answers are delayed, and the longest delay. */
  authFailuresBeforeDelay?: number;
  maxAuthDelayMs?: number;
}

/** Per endpoint: the pause gate, its clients and its pools. */
interface EndpointEntry {
  gate: EndpointGate;
  sessions: Set<ClientSession>;
  pools: Map<string, Pool>;
}

export class Gateway {
  private server: net.Server | null = null;
  private readonly secureContext: tls.SecureContext | null;
  readonly routing: Routing;
  private readonly endpoints = new Map<string, EndpointEntry>();
  private readonly sessions = new Set<ClientSession>();
  private readonly byCancelKey = new Map<string, ClientSession>();
  private readonly sockets = new Set<net.Socket>();
  /** Per client address: its connections that have not proved a password yet. */
  private readonly unfinished = new Map<string, number>();
  private unfinishedTotal = 0;
  private readonly startupTimeoutLog: ThrottledLog;
  private readonly addressCapLog: ThrottledLog;
  private housekeeping: NodeJS.Timeout | null = null;
  private readonly sessionContext: SessionContext;
  private stopping = false;

  constructor(private readonly options: GatewayOptions) {
    if (!options.tls && !options.allowPlaintext) throw new Error('the gateway needs a TLS certificate, or plaintext allowed');
    this.secureContext = options.tls ? tls.createSecureContext({ cert: options.tls.cert, key: options.tls.key }) : null;
    this.routing = new Routing({
      controlPlane: options.controlPlane,
      wakeTimeoutMs: options.wakeTimeoutMs ?? 60_000,
      authFailuresBeforeDelay: options.authFailuresBeforeDelay,
      maxAuthDelayMs: options.maxAuthDelayMs,
    });
    this.startupTimeoutLog = new ThrottledLog(options.log, 'closed a connection that sent no startup packet within the startup timeout');
    this.addressCapLog = new ThrottledLog(options.log, 'refused a connection: its address has as many unfinished logins as allowed (--max-unfinished-per-address)');
    this.sessionContext = {
      routing: this.routing,
      log: this.options.log,
      maxMessageBytes: this.options.maxMessageBytes ?? 64 * 1024 * 1024,
      loginTimeoutMs: this.options.loginTimeoutMs ?? 60_000,
      pool: (key, route, credentials) => this.poolFor(key, route, credentials),
      register: (session) => {
        for (;;) {
          const key = { processId: randomKeyPart(), secretKey: randomKeyPart() };
          const name = `${key.processId}:${key.secretKey}`;
          if (this.byCancelKey.has(name)) continue;
          this.byCancelKey.set(name, session);
          return key;
        }
      },
      unregister: (session) => {
        this.byCancelKey.delete(`${session.cancelKey.processId}:${session.cancelKey.secretKey}`);
        this.sessions.delete(session);
        if (session.endpoint) this.endpoints.get(session.endpoint.endpointId)?.sessions.delete(session);
      },
      admit: (session, route) => {
        const entry = this.endpoint(session.endpoint!.endpointId);
        if (entry.sessions.has(session)) return;
        const limit = route?.maxClientConnections || this.options.maxClientsPerEndpoint || 1000;
        if (entry.sessions.size >= limit) {
          throw new RoutingError(`endpoint ${session.endpoint!.endpointId} has ${entry.sessions.size} client connections, its limit`, '53300', 'Close idle connections, or use the pooler (ep-<id>-pooler).');
        }
        entry.sessions.add(session);
      },
    };
  }

  /** Listens; answers the port. */
  async start(): Promise<number> {
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, this.options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.housekeeping = setInterval(() => this.tidy(), 5_000);
    this.housekeeping.unref();
    return (server.address() as net.AddressInfo).port;
  }

  /** Stops accepting, ends every client with an error that says why, and closes the pools. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.housekeeping) clearInterval(this.housekeeping);
    const closed = new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    for (const session of [...this.sessions]) session.terminate('the gateway is shutting down; reconnect');
    for (const entry of this.endpoints.values()) for (const pool of entry.pools.values()) pool.close();
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  // ---- Connections ----

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    socket.on('error', () => undefined);
    const address = socket.remoteAddress ?? '?';
    const remote = `${address}:${socket.remotePort ?? 0}`;
    const cap = this.options.maxUnfinishedPerAddress ?? 64;
    const unfinished = this.unfinished.get(address) ?? 0;
    if (unfinished >= cap) {
      connectionsTotal.inc({ kind: 'over-address-cap' });
      this.addressCapLog.event({ remote, unfinished, cap });
      // Closed at once: a flood from one address must not cost a descriptor for longer than this.
      socket.end(errorResponse({ code: '53300', message: `too many connections from ${address} that have not logged in yet`, hint: 'Finish or close the pending logins, then connect again.' }));
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    this.unfinished.set(address, unfinished + 1);
    this.unfinishedTotal += 1;
    unfinishedGauge.set(this.unfinishedTotal);
    let counted = true;
    // Once the client proved its password, or left, it no longer counts against its address.
    const finished = () => {
      if (!counted) return;
      counted = false;
      this.unfinishedTotal -= 1;
      unfinishedGauge.set(this.unfinishedTotal);
      const left = (this.unfinished.get(address) ?? 1) - 1;
      if (left <= 0) this.unfinished.delete(address);
      else this.unfinished.set(address, left);
    };
    socket.once('close', () => {
      this.sockets.delete(socket);
      finished();
    });
    const raw = socket;
    const current = { socket: socket as net.Socket };
    this.handshake(socket, remote, current, finished).catch((error: unknown) => {
      const socket = current.socket;
      if (error instanceof StartupTimeoutError) {
        connectionsTotal.inc({ kind: 'startup-timeout' });
        this.startupTimeoutLog.event({ remote, startupTimeoutMs: this.options.startupTimeoutMs ?? 10_000 });
        closeWith(socket, errorResponse({ code: error.code, message: error.message }));
      } else if (error instanceof ProtocolError || error instanceof RoutingError) {
        connectionsTotal.inc({ kind: 'refused' });
        closeWith(socket, errorResponse({ code: error.code, message: error.message, detail: error instanceof ProtocolError ? error.detail : undefined, hint: error instanceof RoutingError ? error.hint : undefined }));
      } else {
        this.options.log.debug({ err: error, remote }, 'a connection ended before its startup');
        socket.destroy();
      }
      // The raw socket under a TLS one goes too, whatever the TLS layer does with it.
      if (socket !== raw) setTimeout(() => raw.destroy(), 1_000).unref();
    });
  }

  private async handshake(raw: net.Socket, remote: string, current: { socket: net.Socket }, authenticated: () => void): Promise<void> {
    let socket: net.Socket = raw;
    let secure = false;
    let serverName: string | undefined;
    // One deadline for everything before the startup packet: encryption requests cannot prolong it.
    const deadline = Date.now() + (this.options.startupTimeoutMs ?? 10_000);
    const left = () => Math.max(1, deadline - Date.now());
    let first = await readFirstPacket(socket, left());
    if (first.direct) {
      // Direct TLS (sslnegotiation=direct): the handshake began without an SSLRequest.
      if (!this.secureContext) throw new ProtocolError('this gateway has no TLS certificate: connect without sslnegotiation=direct', '08P01');
      ({ socket, serverName } = await this.upgrade(replaying(raw, first.leftover), left()));
      current.socket = socket;
      secure = true;
      first = await readFirstPacket(socket, left());
    }
    // As in Postgres: at most one SSLRequest (none after direct TLS) and one GSSENCRequest per connection.
    const asked = new Set<string>(secure ? ['ssl'] : []);
    for (;;) {
      const packet = first.packet;
      if (packet.kind === 'ssl' || packet.kind === 'gssenc') {
        const name = packet.kind === 'ssl' ? 'SSLRequest' : 'GSSENCRequest';
        if (asked.has(packet.kind)) throw new ProtocolError(`a second ${name} on one connection: refused (send the startup packet after the answer)`);
        asked.add(packet.kind);
        // As PostgreSQL 18 (the fix of CVE-2021-23214): the answer first, then bytes that came with the request are
        // refused, unencrypted, since a man in the middle may have put them there.
        const early = first.leftover.length > 0;
        const answer = packet.kind === 'ssl' && this.secureContext ? 'S' : 'N';
        socket.write(answer);
        if (early) {
          throw new ProtocolError(
            `received unencrypted data after ${packet.kind === 'ssl' ? 'SSL' : 'GSSAPI encryption'} request`,
            '08P01',
            'This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.',
          );
        }
        if (answer === 'S') {
          ({ socket, serverName } = await this.upgrade(socket, left()));
          current.socket = socket;
          secure = true;
        }
        first = await readFirstPacket(socket, left());
        continue;
      }
      if (packet.kind === 'cancel') {
        connectionsTotal.inc({ kind: 'cancel' });
        this.cancel(packet.processId, packet.secretKey);
        socket.end();
        // A client that never closes its side must not keep the descriptor.
        setTimeout(() => socket.destroy(), 1_000).unref();
        return;
      }
      break;
    }
    const startup = first.packet as Extract<FirstPacket, { kind: 'startup' }>;
    if (!secure && !this.options.allowPlaintext) {
      throw new RoutingError('SSL is required: this gateway refuses unencrypted connections', '28000', 'Connect with sslmode=require (or verify-full with the platform\'s CA).');
    }
    if ((startup.protocol & 0xffff) > 0 || [...startup.parameters.keys()].some((name) => name.startsWith('_pq_.'))) {
      // A newer minor version or protocol options: answer what is served (3.0, no options), as Postgres does.
      const unsupported = [...startup.parameters.keys()].filter((name) => name.startsWith('_pq_.'));
      for (const name of unsupported) startup.parameters.delete(name);
      socket.write(negotiateProtocolVersion(0, unsupported));
    }
    if (this.sessions.size >= (this.options.maxClients ?? 10_000)) {
      throw new RoutingError(`the gateway has ${this.sessions.size} clients, its limit`, '53300', 'Try again later.');
    }
    connectionsTotal.inc({ kind: secure ? 'tls' : 'plaintext' });
    const session = new ClientSession(socket, remote, secure, serverName, this.sessionContext, this.options.domain);
    session.onAuthenticated = authenticated;
    this.sessions.add(session);
    socket.once('close', () => this.sessions.delete(session));
    await session.run(startup.parameters, first.leftover);
  }

  /** TLS over `socket` with the gateway's certificate; answers the TLS socket and the client's server name. */
  private upgrade(socket: net.Socket | Duplex, timeoutMs: number): Promise<{ socket: tls.TLSSocket; serverName: string | undefined }> {
    const secured = new tls.TLSSocket(socket as net.Socket, { isServer: true, secureContext: this.secureContext!, ALPNProtocols: ['postgresql'] });
    secured.on('error', () => undefined);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        secured.destroy();
        reject(new Error('TLS handshake timed out'));
      }, timeoutMs);
      secured.once('secure', () => {
        clearTimeout(timer);
        const name = (secured as tls.TLSSocket & { servername?: string | false }).servername;
        resolve({ socket: secured, serverName: typeof name === 'string' && name ? name.toLowerCase() : undefined });
      });
      secured.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      secured.once('close', () => {
        clearTimeout(timer);
        reject(new Error('the client closed the connection during the TLS handshake'));
      });
    });
  }

  /** Forwards a CancelRequest to the server connection of the client it names (if any; never says). */
  private cancel(processId: number, secretKey: Buffer): void {
    const session = secretKey.length === 4 ? this.byCancelKey.get(`${processId}:${secretKey.readInt32BE(0)}`) : undefined;
    const target = session?.cancelTarget();
    if (!target) {
      cancelsTotal.inc({ outcome: 'no-target' });
      return;
    }
    cancelsTotal.inc({ outcome: 'forwarded' });
    const [host, port] = splitAddress(target.address);
    const connection = net.connect({ host, port: Number(port) }, () => connection.end(cancelRequest(target.processId, target.secretKey)));
    connection.on('error', () => undefined);
    connection.setTimeout(5_000, () => connection.destroy());
  }

  // ---- What sessions use ----

  private endpoint(endpointId: string): EndpointEntry {
    let entry = this.endpoints.get(endpointId);
    if (!entry) {
      entry = { gate: new EndpointGate(), sessions: new Set(), pools: new Map() };
      this.endpoints.set(endpointId, entry);
    }
    return entry;
  }

  private poolFor(key: PoolKey, route: EndpointRoute, credentials: { clientKey: Buffer; serverKey: Buffer }): Pool {
    const entry = this.endpoint(key.endpointId);
    const name = JSON.stringify([key.database, key.role, key.mode, key.parameters]);
    let pool = entry.pools.get(name);
    const holder = { credentials };
    if (!pool) {
      const options: PoolOptions = {
        endpointId: key.endpointId,
        database: key.database,
        role: key.role,
        mode: key.mode,
        maxSize: route.maxServerConnections || this.options.poolSize || 20,
        waitTimeoutMs: this.options.poolWaitTimeoutMs ?? 120_000,
        idleTimeoutMs: this.options.serverIdleTimeoutMs ?? 30_000,
        gate: entry.gate,
        log: this.options.log,
      };
      const created: Pool = new Pool(options, async () => {
        const current = await this.routing.runningRoute(key.endpointId);
        return {
          address: current.postgresAddress,
          computeId: current.computeId,
          user: key.role,
          database: key.database,
          parameters: key.parameters,
          credentials: credentialsOf.get(created)!,
          timeoutMs: this.options.serverConnectTimeoutMs ?? 15_000,
        };
      });
      pool = created;
      entry.pools.set(name, pool);
    }
    // The newest login's keys: after a password reset, new server connections use the new password's keys.
    credentialsOf.set(pool, holder.credentials);
    return pool;
  }

  /** Closes idle server connections past their timeout, drops empty pools, updates gauges. */
  private tidy(): void {
    const modes = { session: 0, transaction: 0 };
    for (const session of this.sessions) modes[session.mode] += 1;
    clientsGauge.set({ mode: 'session' }, modes.session);
    clientsGauge.set({ mode: 'transaction' }, modes.transaction);
    const all: Pool[] = [];
    for (const [endpointId, entry] of this.endpoints) {
      for (const [name, pool] of entry.pools) {
        pool.closeIdle();
        if (pool.empty && entry.sessions.size === 0) entry.pools.delete(name);
        else all.push(pool);
      }
      if (entry.pools.size === 0 && entry.sessions.size === 0 && !entry.gate.paused) this.endpoints.delete(endpointId);
    }
    recordPoolGauges(all);
  }

  // ---- Admin ----

  /** Holds the endpoint's new transactions; resolves once none runs (or the deadline passes: false). */
  async pause(endpointId: string, reason: string, until: number): Promise<{ drained: boolean; waiting: number }> {
    const entry = this.endpoint(endpointId);
    entry.gate.pause(reason);
    this.options.log.info({ endpointId, reason }, 'endpoint paused');
    for (;;) {
      const active = [...entry.pools.values()].reduce((sum, pool) => sum + pool.stats().active, 0);
      if (active === 0) return { drained: true, waiting: entry.gate.waitingCount };
      if (Date.now() >= until) return { drained: false, waiting: entry.gate.waitingCount };
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  resume(endpointId: string): number {
    const entry = this.endpoints.get(endpointId);
    const pausedFor = entry ? entry.gate.resume() : 0;
    this.options.log.info({ endpointId, pausedForMs: pausedFor }, 'endpoint resumed');
    return pausedFor;
  }

  setBackend(endpointId: string, postgresAddress: string, computeId: string): void {
    this.routing.override(endpointId, postgresAddress, computeId);
    for (const pool of this.endpoint(endpointId).pools.values()) pool.setBackend(postgresAddress);
    this.options.log.info({ endpointId, postgresAddress, computeId }, 'endpoint backend set');
  }

  listPools(endpointId: string): Array<{ pool: Pool; paused: boolean }> {
    const out: Array<{ pool: Pool; paused: boolean }> = [];
    for (const [id, entry] of this.endpoints) {
      if (endpointId && id !== endpointId) continue;
      for (const pool of entry.pools.values()) out.push({ pool, paused: entry.gate.paused });
    }
    return out;
  }

  listClients(endpointId: string): ClientSession[] {
    return [...this.sessions].filter((session) => !endpointId || session.endpoint?.endpointId === endpointId);
  }
}

/**
 * Ends `socket` with `response` and destroys it: `end()` alone leaves the descriptor open for as long as a client
 * that never closes its side wants (24,000 silent connections once exhausted the gateway's descriptors). The short
 * grace lets the error reach the client first.
 */
function closeWith(socket: net.Socket, response: Buffer): void {
  if (socket.destroyed) return;
  socket.end(response);
  setTimeout(() => socket.destroy(), 1_000).unref();
}

/** The client keys each pool opens its connections with (kept apart from the pool: they are secrets). */
const credentialsOf = new WeakMap<Pool, { clientKey: Buffer; serverKey: Buffer }>();

/** Reads a first packet (or sees a TLS handshake): the packet, and the bytes that came after it. */
function readFirstPacket(socket: net.Socket | tls.TLSSocket, timeoutMs: number): Promise<{ packet: FirstPacket; leftover: Buffer; direct?: false } | { direct: true; leftover: Buffer; packet: never }> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new StartupTimeoutError('no startup packet within the time allowed', '08P01')), timeoutMs);
    const finish = (error: Error | null, value?: Parameters<typeof resolve>[0]) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.pause();
      if (error) reject(error);
      else resolve(value!);
    };
    const onClose = () => finish(new Error('the client closed the connection before its startup packet'));
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      if (buffered[0] === TLS_HANDSHAKE_BYTE) {
        finish(null, { direct: true, leftover: buffered } as never);
        return;
      }
      if (buffered.length < 4) return;
      let length: number;
      try {
        length = firstPacketLength(buffered);
      } catch (error) {
        finish(error as Error);
        return;
      }
      if (buffered.length < length) return;
      try {
        finish(null, { packet: parseFirstPacket(buffered.subarray(0, length)), leftover: buffered.subarray(length) });
      } catch (error) {
        finish(error as Error);
      }
    };
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.resume();
  });
}

/** A stream that first yields `head` and then what `socket` receives (TLS over bytes already read). */
function replaying(socket: net.Socket, head: Buffer): Duplex {
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end();
      callback();
    },
    destroy(error, callback) {
      socket.destroy();
      callback(error);
    },
  });
  duplex.push(head);
  socket.on('data', (chunk: Buffer) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.once('end', () => duplex.push(null));
  socket.once('close', () => duplex.destroy());
  socket.resume();
  return duplex;
}

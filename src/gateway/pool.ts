/**
 * Server connection pools. A pool serves one (endpoint, database, role, startup settings, mode): idle connections
 * are handed out last-in first-out (warm caches), new ones are opened up to the pool's size, and beyond it clients
 * wait in line. A connection comes back clean: one a client may have changed the session of (SET, PREPARE,
 * LISTEN...; session mode always) is reset with DISCARD ALL first, and one that broke or belongs to a compute the
 * endpoint no longer runs is closed. Idle connections are closed after a while, so that a compute without clients
 * sees none from the gateway either and can be suspended.
 */
import type { Logger } from '../lib/log.js';
import { counter, gauge, histogram } from '../lib/metrics.js';
import { ServerConnection, type ServerConnectOptions } from './server-connection.js';

const waitSeconds = histogram('spg99_gateway_pool_wait_seconds', 'Time clients waited for a server connection (those that found none idle)', ['mode'], [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60]);
/**
 * Acquisitions by mode and whether the client waited: plain integers on the hot path (one per transaction in
 * transaction mode, where a histogram observation would cost more than the rest of the bookkeeping), read when the
 * metrics are scraped.
 */
const acquisitions = { session: { idle: 0, waited: 0 }, transaction: { idle: 0, waited: 0 } };
counter('spg99_gateway_pool_acquisitions_total', 'Server connections handed to clients, by mode and whether the client waited for one', ['mode', 'waited'], function collect() {
  this.reset();
  for (const mode of ['session', 'transaction'] as const) {
    this.inc({ mode, waited: 'no' }, acquisitions[mode].idle);
    this.inc({ mode, waited: 'yes' }, acquisitions[mode].waited);
  }
});
const serverConnectionsOpened = counter('spg99_gateway_server_connections_opened_total', 'Server connections opened to computes');
const serverConnectionsGauge = gauge('spg99_gateway_server_connections', 'Server connections by state', ['state']);

/** Thrown to a waiting client when no connection came within the wait limit. */
export class PoolTimeoutError extends Error {
  override name = 'PoolTimeoutError';
}

/** Where and how to open a connection of a pool: resolved at each open (the endpoint may have moved). */
export type ConnectionOpener = () => Promise<ServerConnectOptions>;

interface Waiter {
  resolve: (connection: ServerConnection) => void;
  reject: (error: Error) => void;
  since: number;
  timer: NodeJS.Timeout;
}

/** The pause of an endpoint: new work waits until it is resumed. */
export class EndpointGate {
  /**
   * Statements seen through any pool of the endpoint that may change a table's shape (ALTER, CREATE, DROP): a prepared
   * statement parsed after one gets a new pooler-wide version, so it is planned afresh as in Postgres.
   */
  schemaChanges = 0;

  paused = false;
  reason = '';
  pausedAt = 0;
  private waiting: Array<() => void> = [];

  /** Resolves at once unless paused, else when resumed. */
  async pass(): Promise<void> {
    if (!this.paused) return;
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  pause(reason: string): void {
    if (!this.paused) this.pausedAt = Date.now();
    this.paused = true;
    this.reason = reason;
  }

  resume(): number {
    const pausedFor = this.paused ? Date.now() - this.pausedAt : 0;
    this.paused = false;
    for (const resolve of this.waiting.splice(0)) resolve();
    return pausedFor;
  }
}

export interface PoolOptions {
  endpointId: string;
  database: string;
  role: string;
  mode: 'session' | 'transaction';
  maxSize: number;
  /** Longest a client waits for a connection. */
  waitTimeoutMs: number;
  /** Idle connections older than this are closed. */
  idleTimeoutMs: number;
  gate: EndpointGate;
  log: Logger;
}

export class Pool {
  /**
   * Per pooler-wide statement (its base name), how many times it was found stale (an error at Bind or Describe, e.g.
   * "cached plan must not change result type" after ALTER TABLE): a client that prepares it again gets a new version,
   * parsed afresh on each server connection, as a re-prepare does in Postgres.
   */
  private readonly statementVersions = new Map<string, number>();

  /** The current name of the statement whose base name is `base`. */
  statementVersion(base: string): string {
    const stale = this.statementVersions.get(base) ?? 0;
    const epoch = this.options.gate.schemaChanges;
    return stale === 0 && epoch === 0 ? base : `${base}_${epoch}_${stale}`;
  }

  /** A statement that may change a table's shape ran through this pool. */
  noteSchemaChange(): void {
    this.options.gate.schemaChanges += 1;
  }

  /** The statement `name` (some version of `base`) failed at Bind or Describe: the next Parse gets a new version. */
  markStale(base: string, name: string): void {
    if (this.statementVersion(base) !== name) return;
    if (this.statementVersions.size > 10_000) this.statementVersions.clear();
    this.statementVersions.set(base, (this.statementVersions.get(base) ?? 0) + 1);
  }

  private readonly idle: ServerConnection[] = [];
  private readonly busy = new Set<ServerConnection>();
  private opening = 0;
  private readonly waiters: Waiter[] = [];
  /** The compute the pool's connections should be to; others are closed as they come back. */
  backendAddress = '';
  private closed = false;

  constructor(
    readonly options: PoolOptions,
    private readonly opener: ConnectionOpener,
  ) {}

  get size(): number {
    return this.idle.length + this.busy.size + this.opening;
  }

  stats(): { total: number; active: number; idle: number; waiting: number } {
    return { total: this.idle.length + this.busy.size, active: this.busy.size, idle: this.idle.length, waiting: this.waiters.length };
  }

  /** An idle connection at once, without waiting, when there is one and the endpoint is not paused; else null. */
  tryAcquire(): ServerConnection | null {
    if (this.closed || this.options.gate.paused) return null;
    for (;;) {
      const connection = this.idle.pop();
      if (!connection) return null;
      if (connection.broken || (this.backendAddress && connection.address !== this.backendAddress)) {
        connection.close();
        continue;
      }
      this.busy.add(connection);
      acquisitions[this.options.mode].idle += 1;
      return connection;
    }
  }

  /** A connection for a client: idle, new, or after waiting in line. */
  async acquire(): Promise<ServerConnection> {
    await this.options.gate.pass();
    if (this.closed) throw new Error('the pool was closed');
    const idle = this.tryAcquire();
    if (idle) return idle;
    const since = Date.now();
    if (this.size < this.options.maxSize) {
      const opened = await this.openForClient();
      acquisitions[this.options.mode].waited += 1;
      waitSeconds.observe({ mode: this.options.mode }, (Date.now() - since) / 1000);
      return opened;
    }
    return new Promise<ServerConnection>((resolve, reject) => {
      const waiter: Waiter = {
        since,
        resolve: (connection) => {
          clearTimeout(waiter.timer);
          acquisitions[this.options.mode].waited += 1;
          waitSeconds.observe({ mode: this.options.mode }, (Date.now() - since) / 1000);
          resolve(connection);
        },
        reject: (error) => {
          clearTimeout(waiter.timer);
          reject(error);
        },
        timer: setTimeout(() => {
          const index = this.waiters.indexOf(waiter);
          if (index >= 0) this.waiters.splice(index, 1);
          reject(new PoolTimeoutError(`no server connection became free within ${Math.round(this.options.waitTimeoutMs / 1000)} s (pool of ${this.options.maxSize})`));
        }, this.options.waitTimeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  private async openForClient(): Promise<ServerConnection> {
    this.opening += 1;
    try {
      const connectOptions = await this.opener();
      const connection = await ServerConnection.open(connectOptions);
      serverConnectionsOpened.inc();
      this.backendAddress = connectOptions.address;
      connection.onClose(() => this.forget(connection));
      this.busy.add(connection);
      return connection;
    } finally {
      this.opening -= 1;
    }
  }

  /**
   * Takes a connection back. `reusable` false (a client left in the middle of something) closes it; a dirty one (or
   * any in session mode) is reset first.
   */
  release(connection: ServerConnection, reusable: boolean): void {
    connection.lastUsedAt = Date.now();
    const stale = this.closed || connection.broken || (this.backendAddress !== '' && connection.address !== this.backendAddress);
    if (!reusable || stale || connection.transactionStatus !== 'I') {
      this.busy.delete(connection);
      connection.destroy();
      this.openForWaiter();
      return;
    }
    if (connection.dirty || this.options.mode === 'session') {
      connection
        .runInternal('DISCARD ALL')
        .then(() => {
          connection.dirty = false;
          connection.prepared.clear();
          connection.preparedVersions.clear();
          this.handOn(connection);
        })
        .catch((error: unknown) => {
          this.options.log.warn({ err: error, serverId: connection.id }, 'could not reset a server connection; closing it');
          this.busy.delete(connection);
          connection.destroy();
          this.openForWaiter();
        });
      return;
    }
    this.handOn(connection);
  }

  /** Gives a clean connection to the next waiter, or makes it idle. */
  private handOn(connection: ServerConnection): void {
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve(connection);
      return;
    }
    this.busy.delete(connection);
    this.idle.push(connection);
  }

  /** A connection was lost: a waiter may now open one. */
  private forget(connection: ServerConnection): void {
    const index = this.idle.indexOf(connection);
    if (index >= 0) this.idle.splice(index, 1);
    if (this.busy.delete(connection)) this.openForWaiter();
  }

  private openForWaiter(): void {
    if (this.waiters.length === 0 || this.size >= this.options.maxSize) return;
    const waiter = this.waiters.shift()!;
    this.openForClient().then(waiter.resolve, waiter.reject);
  }

  /** The compute moved: idle connections to another address are closed now, busy ones when they come back. */
  setBackend(address: string): void {
    this.backendAddress = address;
    for (const connection of this.idle.splice(0)) {
      if (connection.address === address) this.idle.push(connection);
      else connection.close();
    }
  }

  /** Closes idle connections unused for the idle timeout. */
  closeIdle(now = Date.now()): void {
    for (let index = this.idle.length - 1; index >= 0; index--) {
      const connection = this.idle[index];
      if (connection.broken || now - connection.lastUsedAt >= this.options.idleTimeoutMs) {
        this.idle.splice(index, 1);
        connection.close();
      }
    }
  }

  /** Whether the pool holds nothing and nobody waits (it may be dropped). */
  get empty(): boolean {
    return this.size === 0 && this.waiters.length === 0;
  }

  close(): void {
    this.closed = true;
    for (const connection of this.idle.splice(0)) connection.close();
    for (const waiter of this.waiters.splice(0)) waiter.reject(new Error('the gateway is shutting down'));
  }
}

/** Updates the server connection gauges from all pools. */
export function recordPoolGauges(pools: Iterable<Pool>): void {
  let active = 0;
  let idle = 0;
  for (const pool of pools) {
    const stats = pool.stats();
    active += stats.active;
    idle += stats.idle;
  }
  serverConnectionsGauge.set({ state: 'active' }, active);
  serverConnectionsGauge.set({ state: 'idle' }, idle);
}

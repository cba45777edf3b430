/**
 * A physical replication client of Postgres' streaming replication protocol (the messages of `pg-protocol`,
 * the CopyBoth sub-protocol framed here): IDENTIFY_SYSTEM, a physical slot, START_REPLICATION, WAL data ('w'),
 * keepalives ('k') and standby status updates ('r'). As a synchronous standby its reported flush position is
 * what Postgres waits for before a commit returns.
 */
import net from 'node:net';
import { serialize } from 'pg-protocol';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { BackendMessage, DataRowMessage, DatabaseError } from 'pg-protocol/dist/messages.js';
import { type Lsn, formatLsn, parseLsn } from '../lsn.js';

/** Microseconds between the Unix epoch and Postgres' epoch (2000-01-01). */
const POSTGRES_EPOCH_OFFSET_US = 946_684_800_000_000n;

/** The answer of IDENTIFY_SYSTEM. */
export interface SystemIdentity {
  systemId: bigint;
  timeline: number;
  xlogPos: Lsn;
}

/** WAL received from Postgres. */
export interface WalMessage {
  beginLsn: Lsn;
  /** Postgres' end of WAL when it sent the message. */
  serverWalEnd: Lsn;
  data: Buffer;
}

/** What the stream reports: WAL, or a keepalive asking (or not) for an immediate status update. */
export type ReplicationEvent = { kind: 'wal'; message: WalMessage } | { kind: 'keepalive'; serverWalEnd: Lsn; replyRequested: boolean };

/** Connection parameters. */
export interface ReplicationConnectOptions {
  host: string;
  port: number;
  /** Connect through Postgres' Unix socket in this directory instead of TCP. */
  socketDir?: string;
  user: string;
  applicationName: string;
  connectTimeoutMs?: number;
}

/** A Postgres error, with its SQLSTATE. */
export class PostgresProtocolError extends Error {
  override name = 'PostgresProtocolError';
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

/** One replication connection. */
export class ReplicationConnection {
  private readonly parser = new Parser();
  private readonly pending: BackendMessage[] = [];
  private waiter: (() => void) | null = null;
  private closedError: Error | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (buffer: Buffer) => {
      this.parser.parse(buffer, (message) => {
        this.pending.push(message);
      });
      this.wake();
    });
    socket.on('error', (error) => this.close(error));
    socket.on('close', () => this.close(new Error('the replication connection was closed by Postgres')));
  }

  /** Connects and logs in, with no password (peer authentication over the Unix socket), as a physical replication client. */
  static async connect(options: ReplicationConnectOptions): Promise<ReplicationConnection> {
    const socket = options.socketDir
      ? net.connect({ path: `${options.socketDir}/.s.PGSQL.${options.port}` })
      : net.connect({ host: options.host, port: options.port }).setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connecting to Postgres at ${options.host}:${options.port} timed out`));
      }, options.connectTimeoutMs ?? 10_000);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    const connection = new ReplicationConnection(socket);
    socket.write(serialize.startup({ user: options.user, replication: 'true', application_name: options.applicationName }));
    for (;;) {
      const message = await connection.next();
      if (message.name === 'readyForQuery') return connection;
      if (message.name === 'error') throw toError(message);
      if (message.name !== 'authenticationOk' && message.name !== 'parameterStatus' && message.name !== 'backendKeyData' && message.name !== 'notice') {
        connection.close();
        throw new Error(`unexpected ${message.name} during replication login: only a login without a password (peer over the Unix socket) is supported on the compute`);
      }
    }
  }

  /** IDENTIFY_SYSTEM: the system id, timeline and current WAL flush position. */
  async identifySystem(): Promise<SystemIdentity> {
    const rows = await this.simpleQuery('IDENTIFY_SYSTEM');
    const row = rows[0];
    if (!row) throw new Error('IDENTIFY_SYSTEM returned no row');
    return { systemId: BigInt(row[0] as string), timeline: Number(row[1]), xlogPos: parseLsn(row[2] as string) };
  }

  /** Creates a physical slot holding WAL from now on; an existing slot of that name is kept. */
  async ensurePhysicalSlot(name: string): Promise<void> {
    try {
      await this.simpleQuery(`CREATE_REPLICATION_SLOT ${name} PHYSICAL RESERVE_WAL`);
    } catch (error) {
      if (error instanceof PostgresProtocolError && error.code === '42710') return; // duplicate_object
      throw error;
    }
  }

  /**
   * Starts streaming WAL from `startLsn` through `slot`; resolves once Postgres has accepted (CopyBoth), with the
   * events that follow. They end (throw) when Postgres closes the stream; `signal` ends it from this side.
   */
  async startReplication(slot: string, startLsn: Lsn, timeline: number, signal: AbortSignal): Promise<AsyncGenerator<ReplicationEvent>> {
    this.socket.write(serialize.query(`START_REPLICATION SLOT ${slot} PHYSICAL ${formatLsn(startLsn)} TIMELINE ${timeline}`));
    for (;;) {
      const message = await this.next();
      if (message.name === 'replicationStart') break;
      if (message.name === 'error') throw toError(message);
    }
    return this.events(signal);
  }

  private async *events(signal: AbortSignal): AsyncGenerator<ReplicationEvent> {
    const onAbort = () => this.close(new Error('replication stopped'));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        const message = await this.next();
        if (message.name === 'copyData') {
          const chunk = (message as unknown as { chunk: Buffer }).chunk;
          const event = parseCopyData(chunk);
          if (event) yield event;
        } else if (message.name === 'error') {
          throw toError(message);
        } else if (message.name === 'copyDone') {
          throw new Error('Postgres ended the replication stream (it is shutting down or switched timeline)');
        }
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Sends a standby status update: WAL received up to `writeLsn`, durable (on a majority) up to `flushLsn`.
   * Postgres releases commits waiting for a synchronous standby up to `flushLsn`.
   */
  sendStatus(writeLsn: Lsn, flushLsn: Lsn, applyLsn: Lsn, replyRequested = false): void {
    if (this.closedError) return;
    const body = Buffer.alloc(34);
    body.write('r', 0, 'latin1');
    body.writeBigUInt64BE(writeLsn, 1);
    body.writeBigUInt64BE(flushLsn, 9);
    body.writeBigUInt64BE(applyLsn, 17);
    body.writeBigInt64BE(BigInt(Date.now()) * 1000n - POSTGRES_EPOCH_OFFSET_US, 25);
    body.writeUInt8(replyRequested ? 1 : 0, 33);
    this.socket.write(serialize.copyData(body));
  }

  /** Closes the connection. */
  close(error: Error = new Error('replication connection closed')): void {
    if (this.closedError) return;
    this.closedError = error;
    this.socket.destroy();
    this.wake();
  }

  private async simpleQuery(text: string): Promise<(string | null)[][]> {
    this.socket.write(serialize.query(text));
    const rows: (string | null)[][] = [];
    let failure: Error | null = null;
    for (;;) {
      const message = await this.next();
      if (message.name === 'dataRow') rows.push((message as DataRowMessage).fields as (string | null)[]);
      else if (message.name === 'error') failure = toError(message);
      else if (message.name === 'readyForQuery') break;
    }
    if (failure) throw failure;
    return rows;
  }

  private async next(): Promise<BackendMessage> {
    for (;;) {
      const message = this.pending.shift();
      if (message) return message;
      if (this.closedError) throw this.closedError;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }
}

function parseCopyData(chunk: Buffer): ReplicationEvent | null {
  const kind = String.fromCharCode(chunk[0]);
  if (kind === 'w') {
    // XLogData: 'w', dataStart (8), walEnd (8), sendTime (8), then the WAL bytes. Copied: the parser reuses buffers.
    return {
      kind: 'wal',
      message: { beginLsn: chunk.readBigUInt64BE(1), serverWalEnd: chunk.readBigUInt64BE(9), data: Buffer.from(chunk.subarray(25)) },
    };
  }
  if (kind === 'k') {
    // Primary keepalive: 'k', walEnd (8), sendTime (8), replyRequested (1).
    return { kind: 'keepalive', serverWalEnd: chunk.readBigUInt64BE(1), replyRequested: chunk[17] === 1 };
  }
  return null;
}

function toError(message: BackendMessage): PostgresProtocolError {
  const error = message as unknown as DatabaseError;
  return new PostgresProtocolError(`Postgres: ${error.message}${error.detail ? ` (${error.detail})` : ''}`, error.code);
}

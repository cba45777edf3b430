/**
 * One connection from the gateway to a compute's Postgres, authenticated as a user's role with SCRAM-SHA-256 from
 * the ClientKey the gateway recovered during that user's own exchange (the gateway never knows the password). It
 * remembers what Postgres reported (ParameterStatus, BackendKeyData, the transaction status) and which of the
 * pooler's prepared statements it holds.
 */
import net from 'node:net';
import { ScramClientSession } from '../lib/scram.js';
import {
  AuthCode,
  FrameScanner,
  MessageType,
  parseErrorFields,
  readCString,
  saslInitialResponse,
  saslResponse,
  simpleQuery,
  startupMessage,
  TERMINATE,
} from './protocol.js';

/** Why a server connection could not be opened, with what Postgres or the network said. */
export class ServerConnectError extends Error {
  override name = 'ServerConnectError';
  constructor(
    message: string,
    /** The SQLSTATE Postgres answered, when it answered one (e.g. 28P01, 3D000, 53300). */
    readonly sqlState?: string,
    /** True when nothing listened or the connection broke: the address may be stale. */
    readonly unreachable = false,
    /** Postgres' own ErrorResponse fields (by their one-letter codes), when it answered one. */
    readonly fields?: ReadonlyMap<string, string>,
  ) {
    super(message);
  }
}

export interface ServerConnectOptions {
  /** host:port of Postgres. */
  address: string;
  /** The compute there (for logs and staleness checks). */
  computeId: string;
  user: string;
  database: string;
  /** Other startup parameters (application_name, client_encoding, options...). */
  parameters: Record<string, string>;
  credentials: { clientKey: Buffer; serverKey: Buffer };
  timeoutMs: number;
}

let nextServerId = 1;

/**
 * The read buffer of a server connection. Postgres sends in 8 KiB pieces; a result larger than this arrives in more
 * reads. One buffer per connection, reused for every read (no allocation per read, the largest CPU cost of a read
 * in Node after the system call).
 */
const READ_BUFFER_BYTES = 16 * 1024;

/** A live, authenticated server connection. */
export class ServerConnection {
  readonly id = nextServerId++;
  /** ParameterStatus values Postgres reported, in order. */
  readonly parameters = new Map<string, string>();
  /** BackendKeyData: where a CancelRequest for this connection goes. */
  processId = 0;
  secretKey = Buffer.alloc(0);
  /** The status of the last ReadyForQuery: idle, in a transaction, or in a failed one. */
  transactionStatus: 'I' | 'T' | 'E' = 'I';
  /** Names of the pooler's prepared statements this connection holds. */
  readonly prepared = new Set<string>();
  /** Per statement text (its base name), the version this connection holds (older ones are closed when replaced). */
  readonly preparedVersions = new Map<string, string>();
  /** Session state may have been changed (SET, PREPARE, LISTEN...): reset before another client gets it. */
  dirty = false;
  /** Set once the socket failed or closed: never reused. */
  broken = false;
  lastUsedAt = Date.now();
  /** The client session using this connection now: told when it breaks. */
  owner: { serverLost(): void } | null = null;
  readonly socket: net.Socket;
  private closeListeners: Array<() => void> = [];
  /** Where what the server sends goes now; null: nobody listens, and it is dropped. */
  private receiver: ((chunk: Buffer) => void) | null = null;
  private readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);

  private constructor(
    host: string,
    port: number,
    readonly address: string,
    readonly computeId: string,
  ) {
    // The chunk a receiver gets is a view of the read buffer, valid until it returns: what it keeps longer it copies,
    // and a write of it that the kernel did not take at once calls readBufferTaken() (the next reads go elsewhere).
    const socket = net.connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: () => this.readBuffer,
        callback: (bytes: number, buffer: Uint8Array) => {
          this.receiver?.(Buffer.from(buffer.buffer, buffer.byteOffset, bytes));
          return true;
        },
      },
    });
    this.socket = socket;
    socket.on('close', () => {
      this.broken = true;
      for (const listener of this.closeListeners.splice(0)) listener();
      this.owner?.serverLost();
    });
    socket.on('error', () => {
      this.broken = true;
    });
  }

  /** Sends what the server sends to `receiver` from now on (null: drop it). One receiver at a time. */
  receiveWith(receiver: ((chunk: Buffer) => void) | null): void {
    this.receiver = receiver;
  }

  /**
   * The last chunk (or a part of it) is still referenced by a pending write: the next reads go to a new buffer, and
   * the old one stays with that write until it is done.
   */
  readBufferTaken(): void {
    this.readBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
  }

  /** Calls `listener` once when the socket closes (immediately when it has). */
  onClose(listener: () => void): void {
    if (this.socket.destroyed) listener();
    else this.closeListeners.push(listener);
  }

  /** Connects, authenticates and waits for the first ReadyForQuery. */
  static async open(options: ServerConnectOptions): Promise<ServerConnection> {
    const [host, portText] = splitAddress(options.address);
    const connection = new ServerConnection(host, Number(portText), options.address, options.computeId);
    const { socket } = connection;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new ServerConnectError(`no answer from ${options.address} within ${options.timeoutMs} ms`, undefined, true)), options.timeoutMs);
        socket.once('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        socket.once('error', (error) => {
          clearTimeout(timer);
          reject(new ServerConnectError(`cannot connect to ${options.address}: ${error.message}`, undefined, true));
        });
      });
      await connection.handshake(options);
      return connection;
    } catch (error) {
      socket.destroy();
      throw error;
    }
  }

  private handshake(options: ServerConnectOptions): Promise<void> {
    const { socket } = this;
    return new Promise<void>((resolve, reject) => {
      const scram = new ScramClientSession(options.credentials);
      const scanner = new FrameScanner(() => true, 1 << 20, 'server');
      const timer = setTimeout(() => fail(new ServerConnectError(`${options.address} did not finish the login within ${options.timeoutMs} ms`, undefined, true)), options.timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.receiveWith(null);
        socket.off('close', onClose);
      };
      const fail = (error: Error) => {
        cleanup();
        reject(error);
      };
      const onClose = () => fail(new ServerConnectError(`${options.address} closed the connection during the login`, undefined, true));
      const onMessage = (type: number, msg: Buffer) => {
        switch (type) {
          case MessageType.authentication: {
            const code = msg.readInt32BE(5);
            if (code === AuthCode.ok) return;
            if (code === AuthCode.sasl) {
              socket.write(saslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
              return;
            }
            if (code === AuthCode.saslContinue) {
              socket.write(saslResponse(scram.handleServerFirst(msg.toString('utf8', 9))));
              return;
            }
            if (code === AuthCode.saslFinal) {
              scram.handleServerFinal(msg.toString('utf8', 9));
              return;
            }
            throw new ServerConnectError(`the database asked for authentication method ${code}; the gateway speaks SCRAM-SHA-256 only`, '28000');
          }
          case MessageType.parameterStatus: {
            const name = readCString(msg, 5);
            this.parameters.set(name.value, readCString(msg, name.next).value);
            return;
          }
          case MessageType.backendKeyData:
            this.processId = msg.readInt32BE(5);
            this.secretKey = Buffer.from(msg.subarray(9));
            return;
          case MessageType.errorResponse: {
            const fields = parseErrorFields(msg);
            throw new ServerConnectError(fields.get('M') ?? 'the server refused the login', fields.get('C'), false, fields);
          }
          case MessageType.readyForQuery:
            cleanup();
            resolve();
            return;
          default:
            // NoticeResponse, NegotiateProtocolVersion: nothing to do.
            return;
        }
      };
      const onData = (chunk: Buffer) => {
        try {
          scanner.push(chunk, { pass: () => undefined, message: onMessage });
        } catch (error) {
          fail(error as Error);
        }
      };
      this.receiveWith(onData);
      socket.once('close', onClose);
      socket.write(startupMessage({ user: options.user, database: options.database, ...options.parameters }));
    });
  }

  /**
   * Runs `sql` (simple protocol) while no client is attached, discarding its answers; fails on an ErrorResponse.
   * Used for the reset between clients (DISCARD ALL) and for aligning settings.
   */
  runInternal(sql: string, timeoutMs = 10_000): Promise<void> {
    const { socket } = this;
    return new Promise<void>((resolve, reject) => {
      let failure: Error | null = null;
      const scanner = new FrameScanner((type) => type === MessageType.readyForQuery || type === MessageType.errorResponse || type === MessageType.parameterStatus, 1 << 30, 'server');
      const timer = setTimeout(() => finish(new Error(`"${sql}" did not finish within ${timeoutMs} ms`)), timeoutMs);
      const finish = (error: Error | null) => {
        clearTimeout(timer);
        this.receiveWith(null);
        socket.off('close', onClose);
        if (error) {
          this.broken = true;
          reject(error);
        } else resolve();
      };
      const onClose = () => finish(new Error(`the server closed the connection during "${sql}"`));
      const onData = (chunk: Buffer) => {
        try {
          scanner.push(chunk, {
            pass: () => undefined,
            message: (type, msg) => {
              if (type === MessageType.errorResponse) failure = new Error(parseErrorFields(msg).get('M') ?? `"${sql}" failed`);
              else if (type === MessageType.parameterStatus) {
                const name = readCString(msg, 5);
                this.parameters.set(name.value, readCString(msg, name.next).value);
              } else if (type === MessageType.readyForQuery) {
                this.transactionStatus = String.fromCharCode(msg[5]) as 'I' | 'T' | 'E';
                finish(failure);
              }
            },
          });
        } catch (error) {
          finish(error as Error);
        }
      };
      this.receiveWith(onData);
      socket.once('close', onClose);
      socket.write(simpleQuery(sql));
    });
  }

  /** Says goodbye (Terminate) and closes. */
  close(): void {
    this.broken = true;
    if (!this.socket.destroyed) this.socket.end(TERMINATE);
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }

  /** Closes at once (state unknown: a client left mid-transaction). */
  destroy(): void {
    this.broken = true;
    this.socket.destroy();
  }
}

/** host and port of `host:port` (IPv6 in brackets). */
export function splitAddress(address: string): [string, string] {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (!match) throw new ServerConnectError(`invalid backend address "${address}": host:port expected`);
  return [match[1], match[2]];
}

/**
 * The framed Append transport between the walproposer and a safekeeper: the Append stream's own protobuf messages
 * (AppendRequest one way, AppendResponse the other), each prefixed by its length, over a plain TCP connection.
 * It carries exactly what the gRPC Append stream carries, at a fraction of the CPU per message (no HTTP/2 framing,
 * no per-call machinery), which is what quorum commits pay for. The first frame is `start`, as on gRPC.
 *
 * Frames: client → server `[u32 length][AppendRequest]`; server → client `[u32 length][u8 kind][body]` with kind 0
 * an AppendResponse and kind 1 an error `[u32 gRPC status code][UTF-8 details]`, after which the server closes.
 * The client's very first frame is its credential (the token it sends as gRPC metadata, UTF-8, at most 2 KiB): the
 * server verifies it, and checks the role Append needs, before it decodes any request (docs/security.md).
 */
import net from 'node:net';
import { AppendRequest, AppendResponse } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { AsyncQueue } from './async.js';
import { ClientError, ServerError, Status } from './grpc/errors.js';
import type { Logger } from './log.js';
import { checkRole, checkScope } from './grpc/auth-policy.js';
import { CredentialError, MAX_TOKEN_BYTES, type Claims, type TokenVerifier } from './grpc/credentials.js';

/** The largest frame accepted (a 128 KiB WAL message plus headers, with room to spare). */
export const MAX_FRAME_BYTES = 1024 * 1024;
const APPEND_PATH = '/spg99.safekeeper.v1.SafekeeperService/Append';

/** Splits a byte stream into length-prefixed frames. */
class FrameReader {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;

  constructor(
    private readonly onFrame: (frame: Buffer) => void,
    /** The largest frame accepted now (the server lowers it until the caller is authenticated). */
    public limit = MAX_FRAME_BYTES,
  ) {}

  push(chunk: Buffer): void {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.length;
    for (;;) {
      if (this.bufferedBytes < 4) return;
      let head = this.buffered[0] as Buffer;
      if (head.length < 4) {
        head = Buffer.concat(this.buffered);
        this.buffered = [head];
      }
      const length = head.readUInt32BE(0);
      if (length > this.limit) throw new Error(`a frame of ${length} bytes is over the limit of ${this.limit}`);
      if (this.bufferedBytes < 4 + length) return;
      const all = this.buffered.length === 1 ? head : Buffer.concat(this.buffered);
      const frame = all.subarray(4, 4 + length);
      const rest = all.subarray(4 + length);
      this.buffered = rest.length > 0 ? [rest] : [];
      this.bufferedBytes = rest.length;
      this.onFrame(frame);
    }
  }
}

function frame(body: Uint8Array, kind?: number): Buffer {
  const header = Buffer.alloc(kind === undefined ? 4 : 5);
  header.writeUInt32BE(body.length + (kind === undefined ? 0 : 1), 0);
  if (kind !== undefined) header[4] = kind;
  return Buffer.concat([header, body]);
}

/** What the server runs for each connection: the Append handler, fed from frames. */
export type AppendHandler = (
  requests: AsyncIterable<AppendRequest>,
  signal: AbortSignal,
) => AsyncIterable<Parameters<typeof AppendResponse.fromPartial>[0]>;

/** A listening framed-Append server. */
export interface AppendSocketServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Listens on host:port (0: a free port) and serves each connection with `handler`, once its first frame proved a
 * caller `verifier` accepts for Append; a compute may append to its own timeline only.
 */
export async function serveAppendSocket(host: string, port: number, handler: AppendHandler, log: Logger, verifier: TokenVerifier): Promise<AppendSocketServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    const controller = new AbortController();
    const requests = new AsyncQueue<AppendRequest>();
    let caller: Claims | null = null;
    let first = true;
    const reader = new FrameReader((body) => {
      if (caller === null) {
        // The credential frame: nothing else is decoded before it is verified.
        let claims: Claims;
        try {
          claims = verifier.verify(body.toString('utf8'));
        } catch (error) {
          if (!(error instanceof CredentialError)) throw error;
          throw new ServerError(Status.UNAUTHENTICATED, `${APPEND_PATH} (framed): ${error.message}; the first frame must be the caller's token`);
        }
        const denied = checkRole(claims, APPEND_PATH);
        if (denied) throw denied;
        caller = claims;
        reader.limit = MAX_FRAME_BYTES;
        return;
      }
      const request = AppendRequest.decode(body);
      const denied = checkScope(caller, request, APPEND_PATH, first);
      if (denied) throw denied;
      first = false;
      requests.push(request);
    }, MAX_TOKEN_BYTES);
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (error) {
        if (error instanceof ServerError) {
          if (error.code === Status.UNAUTHENTICATED || error.code === Status.PERMISSION_DENIED) {
            log.warn({ peer: socket.remoteAddress, code: Status[error.code], details: error.details }, 'framed Append refused');
          }
          requests.fail(error);
        } else {
          requests.fail(new ServerError(Status.INVALID_ARGUMENT, `malformed Append frame: ${(error as Error).message}`));
        }
        socket.pause();
      }
    });
    socket.on('end', () => requests.end());
    socket.on('close', () => {
      sockets.delete(socket);
      controller.abort();
      requests.end();
    });
    socket.on('error', () => controller.abort());
    void (async () => {
      try {
        for await (const response of handler(requests, controller.signal)) {
          if (!socket.writable) break;
          socket.write(frame(AppendResponse.encode(AppendResponse.fromPartial(response)).finish(), 0));
        }
        socket.end();
      } catch (error) {
        const code = error instanceof ServerError ? error.code : Status.UNAVAILABLE;
        const details = error instanceof ServerError ? error.details : `the safekeeper failed: ${(error as Error)?.message ?? error}`;
        if (!(error instanceof ServerError)) log.warn({ err: error }, 'framed Append stream failed');
        const body = Buffer.alloc(4 + Buffer.byteLength(details));
        body.writeUInt32BE(code, 0);
        body.write(details, 4);
        if (socket.writable) socket.end(frame(body, 1));
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

/**
 * Opens a framed Append stream to `address`, authenticated by `token` (its first frame): sends what `requests`
 * yields, answers the responses; a server error is thrown as the ClientError the gRPC stream would throw (ABORTED
 * for a superseded term, UNAUTHENTICATED for a refused token, ...).
 */
export function appendOverSocket(address: string, requests: AsyncIterable<AppendRequest>, signal: AbortSignal, token: string): AsyncIterable<AppendResponse> {
  const responses = new AsyncQueue<AppendResponse>();
  const separator = address.lastIndexOf(':');
  const socket = net.connect({ host: address.slice(0, separator), port: Number(address.slice(separator + 1)), noDelay: true });
  const fail = (error: unknown) => {
    responses.fail(error);
    socket.destroy();
  };
  const onAbort = () => fail(signal.reason ?? new Error('aborted'));
  if (signal.aborted) onAbort();
  signal.addEventListener('abort', onAbort, { once: true });
  const reader = new FrameReader((body) => {
    if (body[0] === 0) {
      responses.push(AppendResponse.decode(body.subarray(1)));
    } else {
      const code = body.readUInt32BE(1) as Status;
      fail(new ClientError(APPEND_PATH, code, body.subarray(5).toString('utf8')));
    }
  });
  socket.on('data', (chunk: Buffer) => {
    try {
      reader.push(chunk);
    } catch (error) {
      fail(error);
    }
  });
  socket.on('error', (error) => fail(new ClientError(APPEND_PATH, Status.UNAVAILABLE, `${address}: ${error.message}`)));
  socket.on('close', () => {
    signal.removeEventListener('abort', onAbort);
    responses.fail(new ClientError(APPEND_PATH, Status.UNAVAILABLE, `${address} closed the Append connection`));
  });
  socket.write(frame(Buffer.from(token, 'utf8')));
  void (async () => {
    for await (const request of requests) {
      if (socket.destroyed) break;
      socket.write(frame(AppendRequest.encode(request).finish()));
    }
    socket.end();
  })().catch(fail);
  return responses;
}

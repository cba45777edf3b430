/**
 * gRPC clients: one channel per address, deadlines, and the caller's trace id passed on as `x-trace-id`.
 */
import {
  createChannel,
  createClientFactory,
  type CallOptions,
  type Channel,
  type ClientMiddleware,
  type ClientMiddlewareCall,
  type CompatServiceDefinition,
  type Client,
  Metadata,
} from 'nice-grpc';
import { deadlineMiddleware, type DeadlineOptions } from 'nice-grpc-client-middleware-deadline';
import { CREDENTIAL_METADATA, type CredentialSource } from './credentials.js';

/**
 * This process's identity, sent with every call of its clients (a process is one component: one identity). Set once
 * at start by each `cmd/` entry point (and by the test harness for a test process, as the operator).
 */
let processCredential: CredentialSource | null = null;

/** Sets the credential every client of this process sends (null: none). */
export function setProcessCredential(source: CredentialSource | null): void {
  processCredential = source;
}

/** The token this process sends now, or undefined when it has no identity. */
export function currentProcessToken(): string | undefined {
  return processCredential?.token();
}

/** Adds the process's token to a call that carries none of its own (a client made with an explicit credential keeps it). */
const credentialMiddleware: ClientMiddleware = async function* <Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
  const token = processCredential?.token();
  if (token === undefined || Metadata(options.metadata).has(CREDENTIAL_METADATA)) return yield* call.next(call.request, options);
  return yield* call.next(call.request, { ...options, metadata: Metadata(options.metadata).set(CREDENTIAL_METADATA, token) });
};

/** A client with deadline support. */
export type SpgClient<Definition extends CompatServiceDefinition> = Client<Definition, DeadlineOptions>;

/** Metadata carrying the caller's deadline (ms since epoch) to SPG99 servers. */
export const DEADLINE_METADATA = 'x-spg99-deadline-ms';

/**
 * The deadline middleware enforces deadlines on the client only; this one also tells the server, so that a server
 * that waits can answer what it was waiting for just before the deadline instead of a bare DEADLINE_EXCEEDED.
 */
const deadlineMetadataMiddleware: ClientMiddleware<DeadlineOptions> = async function* <Request, Response>(
  call: ClientMiddlewareCall<Request, Response>,
  options: CallOptions & Partial<DeadlineOptions>,
) {
  const { deadline } = options;
  if (deadline === undefined) return yield* call.next(call.request, options);
  const ms = deadline instanceof Date ? deadline.getTime() : Date.now() + deadline;
  const metadata = Metadata(options.metadata).set(DEADLINE_METADATA, String(ms));
  return yield* call.next(call.request, { ...options, metadata });
};

/** Opens a channel to `address` (host:port, plaintext on the internal network). */
export function openChannel(address: string): Channel {
  return createChannel(address, undefined, {
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
    // A restarted peer is found again within a second, not after grpc-js' default backoff of up to two minutes.
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
  });
}

/** Creates a client of `definition` on `channel`; calls carry `traceId` when one is given. */
export function createSpgClient<Definition extends CompatServiceDefinition>(
  definition: Definition,
  channel: Channel,
  traceId?: string,
  /** Metadata sent with every call (e.g. `authorization: Bearer <key>` for the control plane's public API). */
  extraMetadata: Record<string, string> = {},
): SpgClient<Definition> {
  const metadata = { ...extraMetadata, ...(traceId ? { 'x-trace-id': traceId } : {}) };
  return createClientFactory()
    // The middleware used last runs first: it must see `deadline` before the deadline middleware consumes it.
    .use(deadlineMiddleware)
    .use(deadlineMetadataMiddleware)
    .use(credentialMiddleware)
    .create(definition, channel, Object.keys(metadata).length > 0 ? { '*': { metadata: Metadata(metadata) } } : {});
}

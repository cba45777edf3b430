/**
 * The client of the control plane's public API (ControlPlaneService). One channel, verified TLS by default, the API
 * key on every call, a deadline on every call, retries with exponential backoff and jitter of the calls that are safe
 * to repeat when the answer is UNAVAILABLE (nice-grpc-client-middleware-retry), and typed errors
 * ({@link ApiError} subclasses). {@link Spg99Client.api} is the generated client with all of that; the helpers
 * (paged lists, waits, branches) are built on it.
 */
import fs from 'node:fs';
import { ChannelCredentials } from '@grpc/grpc-js';
import { createChannel, createClientFactory, Metadata, type CallOptions, type Channel, type Client, type ClientMiddleware, type ClientMiddlewareCall } from 'nice-grpc';
import { deadlineMiddleware, type DeadlineOptions } from 'nice-grpc-client-middleware-deadline';
import { retryMiddleware, type RetryOptions } from 'nice-grpc-client-middleware-retry';
import { Status } from 'nice-grpc-common';
import { ControlPlaneServiceDefinition } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { toApiError } from './errors.js';

/** Options every call of {@link Spg99Client.api} takes besides the request: nice-grpc's, a deadline, retry settings. */
export type Spg99CallOptions = CallOptions & DeadlineOptions & RetryOptions;

/** The generated ControlPlaneService client: one async method per RPC, e.g. `api.getEndpoint({ endpointId })`. */
export type ControlPlaneApi = Client<typeof ControlPlaneServiceDefinition, DeadlineOptions & RetryOptions>;

/** How to trust the control plane's certificate. */
export interface TlsOptions {
  /** The CA certificate(s) to trust, PEM (the platform's CA: `make up` keeps it in `.spg99/tls/ca.crt`). */
  ca?: string | Buffer;
  /** A file holding them; read once by {@link createClient}. Neither `ca` nor `caFile`: the system's public CAs. */
  caFile?: string;
}

/** Retries of the calls that are safe to repeat ({@link IDEMPOTENT_METHODS}), on UNAVAILABLE only. */
export interface RetrySettings {
  /** Retries after the first attempt; 0 turns retries off. Default 10. */
  maxRetries?: number;
  /** Delay before the first retry in ms, doubled each time, with jitter. Default 100. */
  baseDelayMs?: number;
  /** Longest delay between two attempts in ms. Default 2000. */
  maxDelayMs?: number;
  /** Called before each retry (for logs and metrics). */
  onRetry?(error: { code: Status; details: string; method: string }, attempt: number, delayMs: number): void;
}

/** What {@link createClient} takes. */
export interface ClientOptions {
  /** host:port of the control plane's public API, e.g. `127.0.0.1:7700`. */
  address: string;
  /** The API key's secret (`spg99_…`), sent as `authorization: Bearer <secret>`; the operator token for CreateTenant. */
  apiKey?: string;
  /**
   * TLS: omitted or `true` verifies the server against the system's CAs; `{ ca }` or `{ caFile }` against the given
   * CA; `false` sends everything, the API key included, in plaintext (only for a control plane started without
   * --tls-cert, on a trusted network).
   */
  tls?: boolean | TlsOptions;
  /** Deadline of each call in ms, retries included (a call's own `deadline` option overrides it). Default 60000. */
  timeoutMs?: number;
  retry?: RetrySettings;
  /** Sent as `x-trace-id` with every call, so the control plane's logs of your calls carry it. */
  traceId?: string;
}

/**
 * The RPCs that are safe to repeat: reads, and changes whose repetition answers the same (StartEndpoint and
 * StopEndpoint answer an endpoint already in motion unchanged; revoking a revoked key answers it). Creates are never
 * retried: a create that failed with UNAVAILABLE may have happened.
 */
export const IDEMPOTENT_METHODS = [
  'getTenant',
  'listApiKeys',
  'revokeApiKey',
  'getProject',
  'listProjects',
  'listBranches',
  'getBranch',
  'getEndpoint',
  'listEndpoints',
  'startEndpoint',
  'stopEndpoint',
  'listRoles',
  'getConnectionString',
] as const satisfies ReadonlyArray<keyof ControlPlaneApi>;

const DEFAULT_TIMEOUT_MS = 60_000;

/** Turns every failure into its typed error (outermost: the retries and the deadline have had their say). */
const typedErrorMiddleware: ClientMiddleware = async function* <Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
  try {
    return yield* call.next(call.request, options);
  } catch (error) {
    throw toApiError(error);
  }
};

/** Adds the API key to calls that carry no `authorization` of their own. */
function authorizationMiddleware(apiKey: string | undefined, traceId: string | undefined): ClientMiddleware {
  return async function* <Request, Response>(call: ClientMiddlewareCall<Request, Response>, options: CallOptions) {
    if (apiKey === undefined && traceId === undefined) return yield* call.next(call.request, options);
    const metadata = Metadata(options.metadata);
    if (apiKey !== undefined && !metadata.has('authorization')) metadata.set('authorization', `Bearer ${apiKey}`);
    if (traceId !== undefined && !metadata.has('x-trace-id')) metadata.set('x-trace-id', traceId);
    return yield* call.next(call.request, { ...options, metadata });
  };
}

function channelCredentials(tls: ClientOptions['tls']): ChannelCredentials {
  if (tls === false) return ChannelCredentials.createInsecure();
  if (tls === undefined || tls === true) return ChannelCredentials.createSsl();
  let ca = tls.ca;
  if (ca === undefined && tls.caFile !== undefined) {
    try {
      ca = fs.readFileSync(tls.caFile);
    } catch (error) {
      throw new TypeError(`tls.caFile ${tls.caFile} cannot be read (${(error as NodeJS.ErrnoException).code ?? error}): give the platform's CA certificate file`);
    }
  }
  return ChannelCredentials.createSsl(ca === undefined ? null : Buffer.from(ca));
}

/** Opens the channel (connections are made lazily, on the first call). */
function openChannel(options: ClientOptions): Channel {
  if (!/^[^\s/]+:\d+$/.test(options.address)) {
    throw new TypeError(`address ${JSON.stringify(options.address)} is not host:port: give the control plane's public API, e.g. 127.0.0.1:7700`);
  }
  return createChannel(options.address, channelCredentials(options.tls), {
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    // A restarted control plane is found again within a second, not after grpc-js' default backoff of minutes.
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
  });
}

/** A connection to the public API; {@link Spg99Client.close} it when done. */
export interface Spg99Client {
  /** The generated client with TLS, the key, deadlines, retries and typed errors. */
  readonly api: ControlPlaneApi;
  /** The address it calls. */
  readonly address: string;
  /** Closes the channel; calls after this fail. */
  close(): void;
}

/**
 * Connects to the control plane's public API (lazily: the first call connects). Throws TypeError for an address that
 * is not host:port or an unreadable `tls.caFile`.
 */
export function createApiClient(options: ClientOptions): Spg99Client {
  const channel = openChannel(options);
  const retry = options.retry ?? {};
  const maxRetries = retry.maxRetries ?? 10;
  const retryOptions: RetryOptions = {
    retry: maxRetries > 0,
    retryMaxAttempts: maxRetries,
    retryBaseDelayMs: retry.baseDelayMs ?? 100,
    retryMaxDelayMs: retry.maxDelayMs ?? 2000,
    // Only UNAVAILABLE: anything else is an answer that a repetition would give again.
    retryableStatuses: [Status.UNAVAILABLE],
    onRetryableError: retry.onRetry ? (error, attempt, delayMs) => retry.onRetry!({ code: error.code, details: error.details, method: error.path }, attempt, delayMs) : undefined,
  };
  const defaults: Record<string, Spg99CallOptions> = { '*': { deadline: options.timeoutMs ?? DEFAULT_TIMEOUT_MS, retry: false } };
  for (const method of IDEMPOTENT_METHODS) defaults[method] = retryOptions;
  const api = createClientFactory()
    // The middleware used last runs first: typed errors wrap everything, the deadline spans every retry.
    .use(authorizationMiddleware(options.apiKey, options.traceId))
    .use(retryMiddleware)
    .use(deadlineMiddleware)
    .use(typedErrorMiddleware)
    .create(ControlPlaneServiceDefinition, channel, defaults) as ControlPlaneApi;
  return { api, address: options.address, close: () => channel.close() };
}

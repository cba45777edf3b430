/**
 * The gRPC server every component runs: its services, `grpc.health.v1`, server reflection (so `grpcurl list`
 * works), a trace id and a logger on every call, error mapping, and a stop that ends open streams first.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer, type Server, type CallContext, type ServerMiddlewareCall, ServerError, Status } from 'nice-grpc';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { ServerReflection, ServerReflectionService } from 'nice-grpc-server-reflection';
import { isAbortError } from 'abort-controller-x';
import { ServerCredentials, ServerInterceptingCall, status as grpcStatus, type ServerInterceptor } from '@grpc/grpc-js';
import { ConfigError } from '../config.js';
import { DEADLINE_METADATA } from './client.js';
import { CREDENTIAL_METADATA, CredentialError, type Claims, type TokenVerifier } from './credentials.js';
import { checkRole, checkScope, isOpenMethod } from './auth-policy.js';
import type { Logger } from '../log.js';
import { newTraceId } from '../log.js';
import { counter, histogram } from '../metrics.js';
import { RefusalLog } from './refusal-log.js';

/** What every handler gets in its call context besides nice-grpc's own. */
export interface ServerContextExtension {
  /** The trace id of the call (from the caller's `x-trace-id` metadata, or new). */
  traceId: string;
  /** A logger bound to the call's method and trace id. */
  log: Logger;
  /** When the caller's deadline passes (ms since epoch), if it set one. */
  deadlineMs?: number;
  /** The authenticated internal caller (undefined on a public server, or for health checks). */
  internalCaller?: Claims;
}

/** Metadata the interceptor hands the verified caller to the middleware in; a caller's own value is dropped first. */
const CALLER_METADATA = 'x-spg99-caller';


/**
 * The first thing every call meets. It hands the call's deadline on as metadata (grpc-js knows it from
 * `grpc-timeout` but takes that header away before handlers run; SPG99's own clients send the metadata), so a handler
 * that waits can answer a clear error just before it. With a verifier it also authenticates the caller and checks its
 * role for the method, before the request is read: a refused call ends here with UNAUTHENTICATED or
 * PERMISSION_DENIED, its bytes never parsed (grpc-js reads messages only after the metadata step).
 */
function firstInterceptor(verifier: TokenVerifier | null, log: Logger): ServerInterceptor {
  const refusals = new RefusalLog(log);
  return (method, call) =>
    new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => {
            const deadline = call.getDeadline();
            const ms = deadline instanceof Date ? deadline.getTime() : deadline;
            if (Number.isFinite(ms) && metadata.get(DEADLINE_METADATA).length === 0) metadata.set(DEADLINE_METADATA, String(ms));
            metadata.remove(CALLER_METADATA);
            if (verifier && !isOpenMethod(method.path)) {
              const token = metadata.get(CREDENTIAL_METADATA)[0];
              let refusal: { code: grpcStatus; details: string } | null = null;
              let caller: string | undefined;
              try {
                const claims = verifier.verify(typeof token === 'string' ? token : undefined);
                caller = `${claims.role}:${claims.sub}`;
                const denied = checkRole(claims, method.path);
                if (denied) refusal = { code: grpcStatus.PERMISSION_DENIED, details: denied.details };
                else metadata.set(CALLER_METADATA, JSON.stringify(claims));
              } catch (error) {
                if (!(error instanceof CredentialError)) throw error;
                refusal = { code: grpcStatus.UNAUTHENTICATED, details: `${method.path}: ${error.message}` };
              }
              if (refusal) {
                refused.inc({ method: method.path, code: grpcStatus[refusal.code] });
                refusals.refused({ method: method.path, peer: call.getPeer(), code: grpcStatus[refusal.code], details: refusal.details, caller });
                call.sendStatus(refusal);
                return;
              }
            }
            forward(metadata);
          },
        }),
    });
}

/**
 * An error to answer a little before the caller's deadline with (so that it arrives), or null when the call has no
 * deadline. `describe` says what was being waited for.
 */
export function beforeDeadline(context: ServerContextExtension, marginMs = 500): { atMs: number } | null {
  return context.deadlineMs === undefined ? null : { atMs: context.deadlineMs - marginMs };
}

/** The call context of SPG99's handlers. */
export type ServerContext = CallContext & ServerContextExtension;

const requests = counter('spg99_grpc_requests_total', 'gRPC calls handled, by method and status code', ['method', 'code']);
const refused = counter('spg99_grpc_refused_total', 'gRPC calls refused for a missing, invalid or insufficient credential', ['method', 'code']);
const durations = histogram('spg99_grpc_request_duration_seconds', 'gRPC call duration (unary and stream)', ['method']);

/** Reads the descriptor set `make build` writes into dist/ (`buf build`), for reflection. */
function loadDescriptorSet(): Uint8Array {
  // This file runs as dist/src/lib/grpc/server.js.
  const file = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../descriptor.binpb');
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: run \`make build\``);
  return fs.readFileSync(file);
}

/** A running server. */
export interface RunningServer {
  /** The port it listens on. */
  port: number;
  /** Health state: flip to NOT_SERVING while draining. */
  health: HealthState;
  /** Ends open streams, waits for calls to finish (at most `graceMs`), then closes. */
  stop(graceMs?: number): Promise<void>;
}

/** Whom a server authenticates: `verifier` checks internal callers' tokens; `public` (API keys, checked by the service) none. */
export type ServerAuthentication = { verifier: TokenVerifier } | 'public';

/** Checks, for a compute, that each message of a client stream names only its own ids (the first must name one). */
async function* scopedStream<T>(requests: AsyncIterable<T>, caller: Claims, path: string): AsyncIterable<T> {
  let first = true;
  for await (const request of requests) {
    const denied = checkScope(caller, request, path, first);
    if (denied) throw denied;
    first = false;
    yield request;
  }
}

/** Builds the server: add services to the returned object, then `listen`. */
export function buildServer(log: Logger, authentication: ServerAuthentication) {
  const openCalls = new Set<AbortController>();
  const verifier = authentication === 'public' ? null : authentication.verifier;
  const server: Server<ServerContextExtension> = createServer({ interceptors: [firstInterceptor(verifier, log)] }).use(async function* spg99Middleware<Request, Response>(
    call: ServerMiddlewareCall<Request, Response, ServerContextExtension>,
    context: CallContext,
  ) {
    const method = call.method.path;
    const traceId = context.metadata.get('x-trace-id') ?? newTraceId();
    const callLog = log.child({ traceId, method });
    // The terminator: stop() aborts every open call, so endless streams never hold a shutdown up.
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    context.signal.addEventListener('abort', onAbort);
    openCalls.add(controller);
    const stopTimer = durations.startTimer({ method });
    let code = Status.OK;
    try {
      const deadline = Number(context.metadata.get(DEADLINE_METADATA));
      const deadlineMs = Number.isFinite(deadline) && deadline > 0 ? deadline : undefined;
      const callerText = context.metadata.get(CALLER_METADATA);
      const caller = callerText ? (JSON.parse(callerText) as Claims) : undefined;
      let request = call.request;
      if (caller?.role === 'compute') {
        if (call.method.requestStream) {
          request = scopedStream(call.request as AsyncIterable<unknown>, caller, method) as Request;
        } else {
          const denied = checkScope(caller, call.request, method, true);
          if (denied) throw denied;
        }
      }
      return yield* call.next(request, { ...context, signal: controller.signal, traceId, log: callLog, deadlineMs, internalCaller: caller });
    } catch (error) {
      if (error instanceof ServerError) {
        code = error.code;
        throw error;
      }
      if (isAbortError(error)) {
        code = Status.CANCELLED;
        throw new ServerError(Status.UNAVAILABLE, 'the server is shutting down or the call was cancelled; retry');
      }
      code = Status.INTERNAL;
      callLog.error({ err: error }, 'unexpected error in handler');
      throw new ServerError(Status.INTERNAL, `internal error (trace id ${traceId}): ${(error as Error)?.message ?? error}`);
    } finally {
      stopTimer();
      requests.inc({ method, code: Status[code] });
      openCalls.delete(controller);
      context.signal.removeEventListener('abort', onAbort);
    }
  });
  const health = HealthState();
  return {
    server,
    /** Adds health and reflection for `serviceNames`, listens (with TLS when `credentials` say), and returns the running server. */
    async listen(address: string, serviceNames: string[], credentials?: ServerCredentials): Promise<RunningServer> {
      server.add(HealthDefinition, HealthServiceImpl(health));
      server.add(ServerReflectionService, ServerReflection(loadDescriptorSet(), [...serviceNames, 'grpc.health.v1.Health']));
      const port = await server.listen(address, credentials);
      return {
        port,
        health,
        async stop(graceMs = 3000) {
          health.setStatus('unhealthy');
          for (const controller of openCalls) controller.abort();
          let timer: NodeJS.Timeout | undefined;
          const graceful = server.shutdown();
          const timedOut = new Promise<'timeout'>((resolve) => {
            timer = setTimeout(() => resolve('timeout'), graceMs);
          });
          if ((await Promise.race([graceful, timedOut])) === 'timeout') {
            log.warn({ graceMs }, 'calls still open after the grace period; closing them');
            server.forceShutdown();
          }
          clearTimeout(timer);
        },
      };
    },
  };
}

/**
 * TLS for a listener from a PEM certificate (chain) and its key, e.g. the control plane's public API with a
 * certificate of the platform's CA. ConfigError, naming the flag, when a file cannot be read.
 */
export function serverTlsCredentials(certFile: string, keyFile: string, flags: { cert: string; key: string }): ServerCredentials {
  const read = (file: string, flag: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      throw new ConfigError(`${flag} ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}): give the PEM file`);
    }
  };
  // No client certificates: the public API's callers prove who they are with API keys.
  return ServerCredentials.createSsl(null, [{ cert_chain: read(certFile, flags.cert), private_key: read(keyFile, flags.key) }], false);
}

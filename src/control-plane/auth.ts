/**
 * Authentication and authorization of the public API, as a middleware of ControlPlaneService: every call carries
 * `authorization: Bearer <secret>`; the key behind the secret decides the tenant the call sees and whether it may
 * change anything. CreateTenant takes the operator's token instead. Handlers get the result as `context.caller`.
 */
import type { ServerMiddleware } from 'nice-grpc';
import { ClientError, ServerError, Status } from '../lib/grpc/errors.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { LAST_USED_RESOLUTION_MS, type Catalog } from './catalog.js';
import { API_KEY_SECRET_PATTERN, API_KEY_SECRET_PREFIX } from './ids.js';
import type { Scope } from './model.js';
import { sameSecret, secretHash } from './secrets.js';

/** Who is calling: the operator (CreateTenant only) or a tenant's API key. */
export type Caller = { kind: 'operator' } | { kind: 'key'; tenantId: string; keyId: string; scope: Scope };

/** What the middleware adds to a handler's context. */
export interface AuthContextExtension {
  caller: Caller;
}

/** The RPC only the operator may call, with its token. */
const OPERATOR_METHOD = 'CreateTenant';
/** What READ keys may call (the contract: Get*, List* and GetConnectionString). */
const READ_ONLY_METHOD = /^(Get|List)/;

const HOW_TO_AUTHENTICATE =
  'send the metadata `authorization: Bearer <secret>` with an API key secret (from CreateTenant or CreateApiKey)';

export interface AuthOptions {
  catalog: Catalog;
  /** The operator's bootstrap token; null: CreateTenant is disabled. */
  operatorToken: string | null;
  /** Tells the time (tests may pin it). */
  now?: () => number;
}

function unauthenticated(message: string): ServerError {
  return new ServerError(Status.UNAUTHENTICATED, message);
}

/** The secret of an `authorization` metadata value, or an UNAUTHENTICATED error saying what is wrong with it. */
function bearerSecret(header: string | undefined): string {
  if (header === undefined || header.trim() === '') throw unauthenticated(`missing API key: ${HOW_TO_AUTHENTICATE}`);
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header.trim());
  if (!match) throw unauthenticated(`malformed authorization metadata: expected \`Bearer <secret>\`; ${HOW_TO_AUTHENTICATE}`);
  return match[1];
}

/** The middleware that authenticates every call of ControlPlaneService. */
export function authMiddleware(options: AuthOptions): ServerMiddleware<AuthContextExtension, ServerContextExtension> {
  const now = options.now ?? Date.now;
  return async function* authenticate(call, context) {
    const path = call.method.path;
    const method = path.slice(path.lastIndexOf('/') + 1);
    const secret = bearerSecret(context.metadata.get('authorization'));

    if (method === OPERATOR_METHOD) {
      if (options.operatorToken === null) {
        throw new ServerError(
          Status.FAILED_PRECONDITION,
          'CreateTenant is disabled: this control plane was started without an operator token (--operator-token-file)',
        );
      }
      if (!sameSecret(secret, options.operatorToken)) {
        throw unauthenticated('CreateTenant takes the operator token (the control plane\'s --operator-token-file), not an API key: the token sent is not it');
      }
      return yield* call.next(call.request, { ...context, caller: { kind: 'operator' } });
    }

    if (!API_KEY_SECRET_PATTERN.test(secret)) {
      throw unauthenticated(`malformed API key: a secret is ${API_KEY_SECRET_PREFIX} followed by 52 lowercase letters and digits; ${HOW_TO_AUTHENTICATE}`);
    }
    const key = await options.catalog.apiKeyBySecretHash(secretHash(secret));
    if (!key) throw unauthenticated(`unknown API key ${secret.slice(0, 12)}…: ${HOW_TO_AUTHENTICATE}`);
    if (key.revokedAt) {
      throw unauthenticated(`API key ${key.keyId} was revoked at ${new Date(key.revokedAt).toISOString()}: use another key (an admin key can create one)`);
    }
    if (key.scope !== 'admin' && !READ_ONLY_METHOD.test(method)) {
      throw new ServerError(Status.PERMISSION_DENIED, `API key ${key.keyId} has scope read, which may only call Get* and List*; ${method} needs an admin key`);
    }
    const time = now();
    if (time - key.lastUsedAt >= LAST_USED_RESOLUTION_MS) {
      // Not awaited: when it was last used is informative, and must not slow down or fail the call.
      options.catalog.touchApiKey(key.keyId, time).catch((error: unknown) => {
        context.log.warn({ err: error, keyId: key.keyId }, 'could not record when the API key was last used');
      });
    }
    return yield* call.next(call.request, {
      ...context,
      log: context.log.child({ tenantId: key.tenantId, keyId: key.keyId }),
      caller: { kind: 'key', tenantId: key.tenantId, keyId: key.keyId, scope: key.scope },
    });
  };
}

/** The tenant and key of a call authenticated by API key (every method but CreateTenant). */
export function tenantCaller(caller: Caller): { tenantId: string; keyId: string; scope: Scope } {
  if (caller.kind !== 'key') throw new Error('this method is authenticated by API key, not the operator token');
  return caller;
}

/** Whether an error is Redis being unreachable (the client's reconnect gave up on this command). */
function isRedisUnavailable(error: unknown): boolean {
  // An error that already carries a status (a safekeeper or compute refusing, words and all) is not Redis'.
  if (!(error instanceof Error) || error instanceof ServerError || error instanceof ClientError) return false;
  return (
    error.name === 'MaxRetriesPerRequestError' ||
    /Connection is closed|ECONNREFUSED|ECONNRESET|Stream isn't writeable|LOADING/.test(error.message)
  );
}

/**
 * Answers UNAVAILABLE (retryable) instead of INTERNAL while Redis is unreachable, so callers retry with backoff and
 * the outage is logged once by the Redis client rather than as an error per call.
 */
export const catalogAvailabilityMiddleware: ServerMiddleware<{}, ServerContextExtension> = async function* catalogAvailability(call, context) {
  try {
    return yield* call.next(call.request, context);
  } catch (error) {
    if (isRedisUnavailable(error)) {
      throw new ServerError(Status.UNAVAILABLE, `the catalog (Redis) is unreachable: ${(error as Error).message}; retry with backoff`);
    }
    throw error;
  }
};

/**
 * How the gateway finds an endpoint and logs its users in: the endpoint named by the client (SNI
 * `ep-<id>[-pooler].<domain>` or `options=endpoint=ep-<id>[-pooler]`), its route from the control plane (cached for
 * the time the control plane allows), wake-on-connect, the client's SCRAM messages relayed to the control plane
 * (which holds the verifiers and checks the proof: the gateway never sees a verifier, and nothing about a role is
 * cached, so a reset password counts at once), and the delays that slow password guessing.
 */
import { ControlPlaneInternalServiceDefinition, EndpointState, PoolerMode, type EndpointRoute } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { ClientError, Status } from '../lib/grpc/errors.js';
import { ScramProtocolError } from '../lib/scram.js';

/** An endpoint id as clients write it: `ep-` and 32 lowercase hex digits. */
const ENDPOINT_ID = /^ep-[0-9a-f]{32}$/;

/** What a client asked to reach. */
export interface EndpointName {
  endpointId: string;
  /** The `-pooler` form: the endpoint's pooler mode; without it a dedicated session. */
  pooled: boolean;
}

/** Why the gateway cannot serve a client, as the PostgreSQL error it answers with. */
export class RoutingError extends Error {
  override name = 'RoutingError';
  constructor(
    message: string,
    /** SQLSTATE: 08001 (cannot connect), 28000/28P01 (auth), 3D000... */
    readonly code: string,
    readonly hint?: string,
    /**
     * What went wrong inside the platform (method paths, addresses, compute ids): logged with the client's trace id,
     * never sent to the client.
     */
    readonly internal?: string,
  ) {
    super(message);
  }
}

const NAMING_HINT =
  'Name the endpoint by connecting to ep-<id>.<domain> with TLS (SNI), e.g. psql "host=ep-<id>.<domain> sslmode=require", ' +
  'or, for clients that send no SNI, with options=endpoint=ep-<id> (in a URI: ?options=endpoint%3Dep-<id>).';

/** The endpoint named by `label` (`ep-<id>` or `ep-<id>-pooler`), or null. */
function endpointFromLabel(label: string): EndpointName | null {
  const pooled = label.endsWith('-pooler');
  const endpointId = pooled ? label.slice(0, -'-pooler'.length) : label;
  return ENDPOINT_ID.test(endpointId) ? { endpointId, pooled } : null;
}

/**
 * The endpoint a client names, from the TLS server name and the startup `options`; the `endpoint=` token is removed
 * from the options (the rest goes on to Postgres). Throws a RoutingError that says how to name one.
 */
export function endpointOf(serverName: string | undefined, domain: string, options: string | undefined): { name: EndpointName; options: string } {
  let fromOptions: EndpointName | null = null;
  const rest: string[] = [];
  for (const token of (options ?? '').split(/\s+/).filter(Boolean)) {
    const match = /^(?:--)?endpoint=(.*)$/.exec(token);
    if (!match) {
      rest.push(token);
      continue;
    }
    fromOptions = endpointFromLabel(match[1]);
    if (!fromOptions) throw new RoutingError(`"${match[1].slice(0, 80)}" in options is not an endpoint id`, '08001', NAMING_HINT);
  }
  let fromSni: EndpointName | null = null;
  if (serverName) {
    const suffix = `.${domain}`;
    if (serverName.endsWith(suffix)) fromSni = endpointFromLabel(serverName.slice(0, -suffix.length));
  }
  if (fromSni && fromOptions && fromSni.endpointId !== fromOptions.endpointId) {
    throw new RoutingError(`the server name names endpoint ${fromSni.endpointId} but options name ${fromOptions.endpointId}`, '08001', 'Name one endpoint.');
  }
  const name = fromSni ?? fromOptions;
  if (!name) {
    const what = serverName ? `the server name "${serverName.slice(0, 100)}" is not ep-<id>.${domain}` : 'the client sent no server name (SNI)';
    throw new RoutingError(`which endpoint? ${what} and options name none`, '08001', NAMING_HINT.replaceAll('<domain>', domain));
  }
  return { name, options: rest.join(' ') };
}

/** A route and when it stops being trusted. */
interface CachedRoute {
  route: EndpointRoute;
  until: number;
}

export interface RoutingOptions {
  controlPlane: SpgClient<typeof ControlPlaneInternalServiceDefinition>;
  /** How long a client waits for a stopped endpoint to start. */
  wakeTimeoutMs: number;
  /**
   * Failed logins of one credential (endpoint and role) from one address within {@link failureWindowMs} before the
   * answers to its proofs are delayed (default 5; from all addresses together, four times as many).
   */
  authFailuresBeforeDelay?: number;
  /** The longest delay of an answer to a proof (default 5 s). */
  maxAuthDelayMs?: number;
  failureWindowMs?: number;
  now?: () => number;
}

/** The control plane's answers, cached. */
export class Routing {
  private readonly routes = new Map<string, CachedRoute>();
  private readonly wakes = new Map<string, Promise<EndpointRoute>>();
  private readonly failures = new Map<string, number[]>();
  private readonly now: () => number;

  constructor(private readonly options: RoutingOptions) {
    this.now = options.now ?? Date.now;
  }

  /**
   * Relays a client's client-first-message to the control plane; answers the server-first-message for the client and
   * the exchange's id. A role that does not exist gets an answer like any other (a stable mock salt). RoutingError for
   * an unknown endpoint or an unreachable control plane; ScramProtocolError for a malformed message.
   */
  async beginScram(endpointId: string, roleName: string, clientFirst: string): Promise<{ sessionId: string; serverFirst: string }> {
    try {
      const answer = await this.options.controlPlane.beginScram({ endpointId, roleName, clientFirstMessage: clientFirst }, { deadline: new Date(Date.now() + 10_000) });
      return { sessionId: answer.sessionId, serverFirst: answer.serverFirstMessage };
    } catch (error) {
      if (error instanceof ClientError && error.code === Status.NOT_FOUND) {
        throw new RoutingError(`endpoint ${endpointId} does not exist`, '08001', 'Check the endpoint id (spg99 endpoints list --project pj-…).');
      }
      if (error instanceof ClientError && error.code === Status.INVALID_ARGUMENT) throw new ScramProtocolError(scramDetail(error.details));
      throw unavailable(error);
    }
  }

  /**
   * Relays the client-final-message; the control plane checks the proof. Null when it does not verify (wrong password
   * or no such role: the same answer); else the server-final-message and the keys to log in to the compute with.
   */
  async finishScram(sessionId: string, clientFinal: string): Promise<{ serverFinal: string; clientKey: Buffer; serverKey: Buffer } | null> {
    try {
      const answer = await this.options.controlPlane.finishScram({ sessionId, clientFinalMessage: clientFinal }, { deadline: new Date(Date.now() + 10_000) });
      if (!answer.verified) return null;
      return { serverFinal: answer.serverFinalMessage, clientKey: Buffer.from(answer.clientKey), serverKey: Buffer.from(answer.serverKey) };
    } catch (error) {
      if (error instanceof ClientError && error.code === Status.INVALID_ARGUMENT) throw new ScramProtocolError(scramDetail(error.details));
      throw unavailable(error);
    }
  }

  /** The endpoint's route when RUNNING, waking it when it is not (within the wake timeout). */
  async runningRoute(endpointId: string): Promise<EndpointRoute> {
    const cached = this.routes.get(endpointId);
    if (cached && cached.until > this.now() && cached.route.state === EndpointState.ENDPOINT_STATE_RUNNING) return cached.route;
    // One wake per endpoint at a time: a burst of clients waits for the same start.
    let wake = this.wakes.get(endpointId);
    if (!wake) {
      wake = this.wake(endpointId).finally(() => this.wakes.delete(endpointId));
      this.wakes.set(endpointId, wake);
    }
    return wake;
  }

  /** The pooler mode of the endpoint (from the last route seen), for `-pooler` clients. */
  poolerMode(route: EndpointRoute): 'session' | 'transaction' {
    return route.poolerMode === PoolerMode.POOLER_MODE_TRANSACTION ? 'transaction' : 'session';
  }

  /** How long a client waits for its endpoint to start (and for a crashed compute to be replaced). */
  get wakeTimeoutMs(): number {
    return this.options.wakeTimeoutMs;
  }

  /** Forgets the endpoint's route (its address refused a connection: the compute moved or stopped). */
  invalidate(endpointId: string): void {
    this.routes.delete(endpointId);
  }

  /** Sets the endpoint's route from outside (the admin API's SetEndpointBackend). */
  override(endpointId: string, postgresAddress: string, computeId: string): void {
    const previous = this.routes.get(endpointId)?.route;
    this.routes.set(endpointId, {
      route: {
        endpointId,
        state: EndpointState.ENDPOINT_STATE_RUNNING,
        postgresAddress,
        computeId,
        poolerMode: previous?.poolerMode ?? PoolerMode.POOLER_MODE_SESSION,
        maxClientConnections: previous?.maxClientConnections ?? 0,
        maxServerConnections: previous?.maxServerConnections ?? 0,
        cacheTtl: undefined,
      },
      until: this.now() + 3_600_000,
    });
  }

  private async wake(endpointId: string): Promise<EndpointRoute> {
    let route: EndpointRoute | undefined;
    try {
      route = (await this.options.controlPlane.wakeEndpoint({ endpointId }, { deadline: new Date(Date.now() + this.options.wakeTimeoutMs) })).route;
    } catch (error) {
      if (error instanceof ClientError) {
        if (error.code === Status.NOT_FOUND) throw new RoutingError(`endpoint ${endpointId} does not exist`, '08001', 'Check the endpoint id (spg99 endpoints list --project pj-…).');
        if (error.code === Status.DEADLINE_EXCEEDED) {
          throw new RoutingError(`endpoint ${endpointId} did not start within ${Math.round(this.options.wakeTimeoutMs / 1000)} s`, '08001', 'Try again; if it keeps failing, look at the endpoint\'s state (spg99 endpoints get).');
        }
        if (error.code === Status.FAILED_PRECONDITION) {
          throw new RoutingError(
            `endpoint ${endpointId} cannot start`,
            '08001',
            'Look at its state and reason (spg99 endpoints get), start it again with spg99 endpoints start, then reconnect.',
            `the control plane refused the wake: ${error.details}`,
          );
        }
      }
      throw unavailable(error);
    }
    if (!route || route.state !== EndpointState.ENDPOINT_STATE_RUNNING || !route.postgresAddress) {
      throw new RoutingError(`endpoint ${endpointId} is not running yet`, '08001', 'Try again in a moment.');
    }
    const ttlMs = route.cacheTtl ? Number(route.cacheTtl.seconds) * 1000 + Math.floor(route.cacheTtl.nanos / 1e6) : 5_000;
    this.routes.set(endpointId, { route, until: this.now() + Math.max(ttlMs, 1_000) });
    return route;
  }

  /**
   * How long to hold the answer to a password proof for `roleName` at `endpointId` from `client`: nothing for the
   * first few failures, then doubling up to {@link RoutingOptions.maxAuthDelayMs}. The same for a right and a wrong
   * proof (an attacker who gave up waiting would otherwise learn the answer from a fast success), and never a
   * refusal: a user behind the same address as an attacker still logs in, only slower.
   */
  authDelayMs(client: string, endpointId: string, roleName: string): number {
    const free = this.options.authFailuresBeforeDelay ?? 5;
    const fromAddress = this.recentFailures(addressKey(client, endpointId, roleName)).length - free;
    const fromAll = this.recentFailures(credentialKey(endpointId, roleName)).length - 4 * free;
    const excess = Math.max(fromAddress, fromAll);
    if (excess < 0) return 0;
    return Math.min(this.options.maxAuthDelayMs ?? 5_000, 100 * 2 ** Math.min(excess, 20));
  }

  /** Counts a failed login (a wrong proof, or a client that left after the server's challenge). */
  recordAuthFailure(client: string, endpointId: string, roleName: string): void {
    if (this.failures.size > 100_000) this.pruneFailures();
    for (const key of [addressKey(client, endpointId, roleName), credentialKey(endpointId, roleName)]) {
      const recent = this.recentFailures(key);
      recent.push(this.now());
      this.failures.set(key, recent);
    }
  }

  private recentFailures(key: string): number[] {
    const since = this.now() - (this.options.failureWindowMs ?? 60_000);
    const recent = (this.failures.get(key) ?? []).filter((at) => at > since);
    if (recent.length === 0) this.failures.delete(key);
    return recent;
  }

  /** Bounds the memory an attacker with many role names can take: expired entries go, then the oldest. */
  private pruneFailures(): void {
    for (const key of [...this.failures.keys()]) this.recentFailures(key);
    for (const key of this.failures.keys()) {
      if (this.failures.size <= 50_000) break;
      this.failures.delete(key);
    }
  }
}

function addressKey(client: string, endpointId: string, roleName: string): string {
  return `a\0${client}\0${endpointId}\0${roleName}`;
}

function credentialKey(endpointId: string, roleName: string): string {
  return `c\0${endpointId}\0${roleName}`;
}

/** The control plane's words about a malformed SCRAM message, without its method path. */
function scramDetail(details: string): string {
  const text = details.replace(/^\/?[\w.]+\/\w+:\s*/, '');
  return text.startsWith('SCRAM') ? text.slice(0, 300) : `SCRAM: ${text.slice(0, 300)}`;
}

function unavailable(error: unknown): RoutingError {
  const detail = error instanceof Error ? error.message : String(error);
  return new RoutingError('the platform cannot route the connection right now', '08001', 'Try again in a moment.', `the control plane is not reachable: ${detail.slice(0, 500)}`);
}

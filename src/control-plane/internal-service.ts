/**
 * ControlPlaneInternalService, for the platform's own components (agent, gateway, provisioner): writer leases
 * (src/control-plane/leases.ts keeps them in Redis, keyed by the endpoint's timeline), endpoint routing and wake-up,
 * the gateway's relayed SCRAM logins (src/control-plane/scram-logins.ts; verifiers never leave), and the computes' activity and state reports that drive the lifecycle. Handoffs
 * come with the autoscaler and answer UNIMPLEMENTED until then.
 */
import { randomBytes } from 'node:crypto';
import type { ControlPlaneInternalServiceImplementation } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { aborted, invalidArgument, notFound, ServerError, Status } from '../lib/grpc/errors.js';
import type { WriterLease as WriterLeaseMessage } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { Duration } from '../../gen/google/protobuf/duration.js';
import type { Catalog } from './catalog.js';
import type { WriterLease, WriterLeases } from './leases.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { ComputeStateChange, PoolerMode, type EndpointRoute } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { type EndpointLifecycle, requireLifecycle } from './lifecycle.js';
import { endpointStateMessage, idArgument, type EndpointRecord } from './model.js';
import { ScramLogins, ScramMessageError, ScramSessionUnknownError } from './scram-logins.js';

function later(method: string, slice: string): () => Promise<never> {
  return async () => {
    throw new ServerError(Status.UNIMPLEMENTED, `${method} is not implemented yet: ${slice} come in a later version of the control plane`);
  };
}

/** What the internal service needs. */
export interface InternalServiceOptions {
  catalog: Catalog;
  leases: WriterLeases;
  /** host:port of the safekeepers new timelines use, and of the pageserver (handed to writers with their lease). */
  safekeepers: string[];
  pageserver: string;
  /** Starts endpoints on wake; null: this control plane runs without --provisioner. */
  lifecycle?: EndpointLifecycle | null;
  /** Issues a compute's credential, renewed with each lease renewal; absent: none is handed out. */
  issueComputeCredential?: (scope: { timelineId: string; endpointId: string; computeId: string }) => string;
  /** The secret mock SCRAM salts of missing roles derive from (default: random per process). */
  scramMockSaltSecret?: Buffer;
}

/** The longest SCRAM message relayed (a client-final-message is about 100 bytes; Postgres' own limit is far lower). */
const MAX_SCRAM_MESSAGE = 1024;

/** How long a WakeEndpoint waits for RUNNING when its caller set no deadline. */
const WAKE_TIMEOUT_MS = 200_000;

function routeMessage(endpoint: EndpointRecord): EndpointRoute {
  const running = endpoint.state === 'running';
  return {
    endpointId: endpoint.endpointId,
    state: endpointStateMessage(endpoint.state),
    postgresAddress: running ? endpoint.postgresAddress ?? '' : '',
    computeId: running ? endpoint.currentComputeId : '',
    poolerMode: endpoint.settings.poolerMode === 'transaction' ? PoolerMode.POOLER_MODE_TRANSACTION : PoolerMode.POOLER_MODE_SESSION,
    maxClientConnections: 0,
    maxServerConnections: 0,
    cacheTtl: { seconds: running ? 5n : 0n, nanos: 0 },
  };
}

function ttlMs(ttl: Duration | undefined): number | undefined {
  return ttl ? Number(ttl.seconds) * 1000 + Math.floor(ttl.nanos / 1e6) : undefined;
}

function leaseMessage(endpointId: string, lease: WriterLease): WriterLeaseMessage {
  return { endpointId, timelineId: lease.timelineId, computeId: lease.computeId, term: lease.term, expiresAt: lease.expiresAt };
}

export function controlPlaneInternalService(options: InternalServiceOptions): ControlPlaneInternalServiceImplementation<ServerContextExtension> {
  const { catalog, leases } = options;
  /** The timeline an endpoint writes, or NOT_FOUND. */
  const timelineOf = async (endpointId: string): Promise<string> => {
    if (!endpointId) throw invalidArgument('endpoint_id is required: the endpoint whose writer lease is meant (ep-…)');
    const endpoint = await catalog.getEndpoint(endpointId);
    if (!endpoint) throw notFound(`endpoint ${endpointId} does not exist`);
    return endpoint.branchId;
  };
  const scramLogins = new ScramLogins({ mockSaltSecret: options.scramMockSaltSecret ?? randomBytes(32) });
  const scramMessage = (value: string, field: string): string => {
    if (!value) throw invalidArgument(`${field} is required: the client's SCRAM message`);
    if (value.length > MAX_SCRAM_MESSAGE) throw invalidArgument(`${field} is ${value.length} characters long: a SCRAM message has at most ${MAX_SCRAM_MESSAGE}`);
    return value;
  };
  const lifecycleOrUnavailable = (method: string): EndpointLifecycle => requireLifecycle(options.lifecycle, method);
  const endpointOf = async (endpointId: string): Promise<EndpointRecord> => {
    idArgument('endpoint', endpointId, 'endpoint_id');
    const endpoint = await catalog.getEndpoint(endpointId);
    if (!endpoint) throw notFound(`endpoint ${endpointId} does not exist`);
    return endpoint;
  };
  return {
    async acquireWriterLease(request) {
      const timelineId = await timelineOf(request.endpointId);
      const { lease } = await leases.acquire({ timelineId, computeId: request.computeId, ttlMs: ttlMs(request.ttl) });
      return { lease: leaseMessage(request.endpointId, lease), safekeeperAddresses: options.safekeepers, pageserverAddress: options.pageserver };
    },
    async renewWriterLease(request) {
      const timelineId = await timelineOf(request.endpointId);
      const { lease } = await leases.renew({ timelineId, computeId: request.computeId, term: request.term, ttlMs: ttlMs(request.ttl) });
      // Only a renewed lease renews the credential: a fenced compute's ends with the token it holds.
      const credential = options.issueComputeCredential?.({ timelineId, endpointId: request.endpointId, computeId: request.computeId }) ?? '';
      return { lease: leaseMessage(request.endpointId, lease), credential };
    },
    async releaseWriterLease(request) {
      const timelineId = await timelineOf(request.endpointId);
      await leases.release({ timelineId, computeId: request.computeId, term: request.term, finalLsn: request.finalLsn });
      return {};
    },
    async resolveEndpoint(request) {
      lifecycleOrUnavailable('ResolveEndpoint');
      return { route: routeMessage(await endpointOf(request.endpointId)) };
    },
    async wakeEndpoint(request, context) {
      const lifecycle = lifecycleOrUnavailable('WakeEndpoint');
      const endpointId = (await endpointOf(request.endpointId)).endpointId;
      const until = Date.now() + WAKE_TIMEOUT_MS;
      // A FAILED endpoint is started again once per wake (a connection is a request to run it); if that start
      // fails too, the caller hears why, with the failure's status.
      let failedRestarted = false;
      for (;;) {
        // A suspend in progress ends first; a start in progress is waited for.
        let endpoint = await lifecycle.waitWhile(endpointId, ['suspending', 'starting', 'handoff'], until - Date.now(), context.signal);
        if (endpoint.state === 'stopped' || (endpoint.state === 'failed' && !failedRestarted)) {
          if (endpoint.state === 'failed') failedRestarted = true;
          await lifecycle.start(endpoint, 'WakeEndpoint');
          endpoint = await lifecycle.waitWhile(endpointId, ['starting'], until - Date.now(), context.signal);
        }
        if (endpoint.state === 'running') return { route: routeMessage(endpoint) };
        if (endpoint.state !== 'stopped' || Date.now() >= until || context.signal.aborted) throw lifecycle.wakeFailure(endpoint);
      }
    },
    async getRoleVerifier(request) {
      const endpoint = await endpointOf(request.endpointId);
      if (!request.roleName) throw invalidArgument('role_name is required: the Postgres role the client connects as');
      const role = await catalog.roleByName(endpoint.branchId, request.roleName);
      if (!role) throw notFound(`endpoint ${endpoint.endpointId} has no role ${JSON.stringify(request.roleName.slice(0, 80))}`);
      return { scramVerifier: role.scramVerifier };
    },
    async beginScram(request) {
      const endpoint = await endpointOf(request.endpointId);
      if (!request.roleName) throw invalidArgument('role_name is required: the Postgres role the client connects as');
      const clientFirst = scramMessage(request.clientFirstMessage, 'client_first_message');
      // Role names longer than Postgres' are never roles: answered with a mock like any other missing role.
      const role = request.roleName.length > 63 ? null : await catalog.roleByName(endpoint.branchId, request.roleName);
      try {
        const { sessionId, serverFirst } = scramLogins.begin(endpoint.endpointId, request.roleName, role?.scramVerifier ?? null, clientFirst);
        return { sessionId, serverFirstMessage: serverFirst };
      } catch (error) {
        if (error instanceof ScramMessageError) throw invalidArgument(error.message);
        throw error;
      }
    },
    async finishScram(request) {
      if (!request.sessionId) throw invalidArgument('session_id is required: the one BeginScram answered');
      const clientFinal = scramMessage(request.clientFinalMessage, 'client_final_message');
      try {
        const outcome = scramLogins.finish(request.sessionId, clientFinal);
        if (!outcome.verified) return { verified: false, serverFinalMessage: '', clientKey: Buffer.alloc(0), serverKey: Buffer.alloc(0) };
        return { verified: true, serverFinalMessage: outcome.serverFinal, clientKey: outcome.clientKey, serverKey: outcome.serverKey };
      } catch (error) {
        if (error instanceof ScramMessageError) throw invalidArgument(error.message);
        if (error instanceof ScramSessionUnknownError) throw notFound(error.message);
        throw error;
      }
    },
    async reportComputeActivity(request) {
      const endpoint = await endpointOf(request.endpointId);
      if (!request.computeId) throw invalidArgument('compute_id is required: the reporting compute (cp-…)');
      if (!Number.isFinite(request.idleSeconds) || request.idleSeconds < 0) {
        throw invalidArgument(`idle_seconds ${request.idleSeconds} is not a duration: seconds since the last client activity, 0 or more`);
      }
      // Measured here, not with the agent's clock: the report says how long ago the last client left.
      const reportedAt = Date.now();
      const lastActivityAt = request.activeConnections > 0 ? reportedAt : reportedAt - Math.round(request.idleSeconds * 1000);
      const outcome = await catalog.recordActivity(endpoint.endpointId, request.computeId, { lastActivityAt, reportedAt, activeConnections: request.activeConnections });
      if (outcome === 'missing') throw notFound(`endpoint ${endpoint.endpointId} does not exist`);
      if (outcome === 'not-current') {
        throw aborted(`compute ${request.computeId} is not the writer of endpoint ${endpoint.endpointId} (its compute is ${endpoint.currentComputeId || 'none'}): stop its Postgres`);
      }
      return {};
    },
    async reportComputeState(request, context) {
      const endpoint = await endpointOf(request.endpointId);
      if (!request.computeId) throw invalidArgument('compute_id is required: the reporting compute (cp-…)');
      const lifecycle = options.lifecycle;
      // Reports about a compute the endpoint no longer runs change nothing.
      if (!lifecycle || endpoint.currentComputeId !== request.computeId) return {};
      switch (request.change) {
        case ComputeStateChange.COMPUTE_STATE_CHANGE_STARTED:
          if (!request.postgresAddress) throw invalidArgument('postgres_address is required with STARTED: host:port where Postgres accepts connections');
          context.log.info({ computeId: request.computeId, phases: request.startPhaseSeconds }, 'compute reports started');
          await lifecycle.computeStarted(endpoint.endpointId, request.computeId, request.postgresAddress);
          return {};
        case ComputeStateChange.COMPUTE_STATE_CHANGE_STOPPED:
        case ComputeStateChange.COMPUTE_STATE_CHANGE_FAILED:
          await lifecycle.computeGone(endpoint.endpointId, request.computeId, request.reason || ComputeStateChange[request.change]);
          return {};
        default:
          throw invalidArgument(`change ${request.change} is unknown: use STARTED, STOPPED or FAILED`);
      }
    },
    requestHandoff: later('RequestHandoff', 'handoffs'),
    getHandoff: later('GetHandoff', 'handoffs'),
  };
}

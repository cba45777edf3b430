/**
 * GatewayAdminService: the gateway's pools and clients, and the pause / switch backend / resume of an endpoint that
 * a handoff drives. The handlers only validate and translate; the gateway does the work.
 */
import {
  ClientState,
  PoolMode,
  type GatewayAdminServiceImplementation,
} from '../../gen/spg99/gateway/v1/gateway.js';
import { invalidArgument, ServerError, Status } from '../lib/grpc/errors.js';
import { beforeDeadline, type ServerContextExtension } from '../lib/grpc/server.js';
import type { Gateway } from './gateway.js';
import { splitAddress } from './server-connection.js';

const ENDPOINT_ID = /^ep-[0-9a-f]{32}$/;

function endpointArgument(value: string, field: string, optional = false): string {
  if (value === '' && optional) return '';
  if (!ENDPOINT_ID.test(value)) throw invalidArgument(`${field} ${JSON.stringify(value.slice(0, 80))} is not an endpoint id: ep- followed by 32 lowercase hex digits`);
  return value;
}

const MODES = { session: PoolMode.POOL_MODE_SESSION, transaction: PoolMode.POOL_MODE_TRANSACTION } as const;
const STATES = {
  connecting: ClientState.CLIENT_STATE_CONNECTING,
  idle: ClientState.CLIENT_STATE_IDLE,
  active: ClientState.CLIENT_STATE_ACTIVE,
  waiting: ClientState.CLIENT_STATE_WAITING,
} as const;

/** How long a pause may wait for running transactions when the caller set no deadline. */
const DEFAULT_PAUSE_WAIT_MS = 30_000;

export function gatewayAdminService(gateway: Gateway): GatewayAdminServiceImplementation<ServerContextExtension> {
  return {
    async pauseEndpoint(request, context) {
      const endpointId = endpointArgument(request.endpointId, 'endpoint_id');
      // Answer a little before the caller gives up, so that it hears why.
      const until = beforeDeadline(context)?.atMs ?? Date.now() + DEFAULT_PAUSE_WAIT_MS;
      const outcome = await gateway.pause(endpointId, request.reason || 'paused through the admin API', until);
      if (!outcome.drained) {
        throw new ServerError(Status.DEADLINE_EXCEEDED, `endpoint ${endpointId} is paused but transactions still run on it: resume it, or pause again to keep waiting`);
      }
      return { waitingClients: outcome.waiting };
    },
    async resumeEndpoint(request) {
      const endpointId = endpointArgument(request.endpointId, 'endpoint_id');
      const pausedFor = gateway.resume(endpointId);
      return { pausedFor: { seconds: BigInt(Math.floor(pausedFor / 1000)), nanos: (pausedFor % 1000) * 1e6 } };
    },
    async setEndpointBackend(request) {
      const endpointId = endpointArgument(request.endpointId, 'endpoint_id');
      try {
        splitAddress(request.postgresAddress);
      } catch {
        throw invalidArgument(`postgres_address ${JSON.stringify(request.postgresAddress.slice(0, 80))} is not host:port`);
      }
      gateway.setBackend(endpointId, request.postgresAddress, request.computeId);
      return {};
    },
    async listPools(request) {
      const endpointId = endpointArgument(request.endpointId, 'endpoint_id', true);
      return {
        pools: gateway.listPools(endpointId).map(({ pool, paused }) => {
          const stats = pool.stats();
          return {
            endpointId: pool.options.endpointId,
            database: pool.options.database,
            role: pool.options.role,
            mode: MODES[pool.options.mode],
            backendAddress: pool.backendAddress,
            serverConnections: stats.total,
            activeServerConnections: stats.active,
            idleServerConnections: stats.idle,
            waitingClients: stats.waiting,
            maxServerConnections: pool.options.maxSize,
            paused,
          };
        }),
      };
    },
    async listClients(request) {
      const endpointId = endpointArgument(request.endpointId, 'endpoint_id', true);
      return {
        clients: gateway.listClients(endpointId).map((session) => ({
          clientId: session.clientId,
          endpointId: session.endpoint?.endpointId ?? '',
          database: session.database,
          role: session.role,
          applicationName: session.applicationName,
          remoteAddress: session.remoteAddress,
          tls: session.tls,
          mode: MODES[session.mode],
          state: STATES[session.state],
          connectedAt: session.connectedAt,
          transactions: session.transactions,
        })),
      };
    },
  };
}

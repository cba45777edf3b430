/**
 * ControlPlaneInternalService, for the platform's own components (agent, gateway, provisioner). Writer leases are
 * served (src/control-plane/leases.ts keeps them in Redis, keyed by the endpoint's timeline); endpoint routing and
 * wake-up, activity reports and handoffs come with the endpoint lifecycle and answer UNIMPLEMENTED until then.
 */
import type { ControlPlaneInternalServiceImplementation } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { invalidArgument, notFound, ServerError, Status } from '../lib/grpc/errors.js';
import type { WriterLease as WriterLeaseMessage } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { Duration } from '../../gen/google/protobuf/duration.js';
import type { Catalog } from './catalog.js';
import type { WriterLease, WriterLeases } from './leases.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';

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
  return {
    async acquireWriterLease(request) {
      const timelineId = await timelineOf(request.endpointId);
      const { lease } = await leases.acquire({ timelineId, computeId: request.computeId, ttlMs: ttlMs(request.ttl) });
      return { lease: leaseMessage(request.endpointId, lease), safekeeperAddresses: options.safekeepers, pageserverAddress: options.pageserver };
    },
    async renewWriterLease(request) {
      const timelineId = await timelineOf(request.endpointId);
      const { lease } = await leases.renew({ timelineId, computeId: request.computeId, term: request.term, ttlMs: ttlMs(request.ttl) });
      return { lease: leaseMessage(request.endpointId, lease) };
    },
    async releaseWriterLease(request) {
      const timelineId = await timelineOf(request.endpointId);
      await leases.release({ timelineId, computeId: request.computeId, term: request.term, finalLsn: request.finalLsn });
      return {};
    },
    resolveEndpoint: later('ResolveEndpoint', 'endpoint routing'),
    wakeEndpoint: later('WakeEndpoint', 'endpoint starts'),
    getRoleVerifier: later('GetRoleVerifier', 'roles'),
    reportComputeActivity: later('ReportComputeActivity', 'activity reports and scale to zero'),
    reportComputeState: later('ReportComputeState', 'compute lifecycle reports'),
    requestHandoff: later('RequestHandoff', 'handoffs'),
    getHandoff: later('GetHandoff', 'handoffs'),
  };
}

/**
 * The ComputeService gRPC implementation: the agent's status, a clean stop, the activity figures the control plane
 * scales and suspends by, and the users' roles.
 */
import type { ComputeServiceImplementation } from '../../gen/spg99/compute/v1/compute.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { failedPrecondition } from '../lib/grpc/errors.js';
import { PostgresNotRunningError, type Compute } from './compute.js';
import { roleChangesFromRequest } from './model.js';
import { RoleInUseError } from './roles.js';

/** Identity of the compute, as reported. */
export interface ComputeIdentity {
  computeId: string;
  timelineId: string;
  postgresAddress: string;
}

/** Expected refusals as the statuses they answer; anything else goes to the error middleware (INTERNAL). */
function refusal(error: unknown): unknown {
  if (error instanceof PostgresNotRunningError || error instanceof RoleInUseError) return failedPrecondition(error.message);
  return error;
}

/** Builds the service over a compute. */
export function computeService(compute: Compute, identity: ComputeIdentity): ComputeServiceImplementation<ServerContextExtension> {
  return {
    async getStatus() {
      const status = compute.status();
      return {
        computeId: identity.computeId,
        timelineId: identity.timelineId,
        state: status.state,
        term: status.term,
        postgresAddress: identity.postgresAddress,
        commitLsn: status.commitLsn,
        receivedLsn: status.receivedLsn,
        safekeepers: compute.proposer.peerStatuses(),
        reason: status.reason,
        startPhaseSeconds: status.startPhaseSeconds,
      };
    },

    async stop(request, context) {
      context.log.info({ checkpoint: request.checkpoint }, 'stop requested');
      const finalLsn = await compute.stop(request.checkpoint, 'stop requested through ComputeService.Stop');
      return { finalLsn };
    },

    async getMetrics() {
      try {
        const figures = await compute.activity();
        return {
          activeConnections: figures.activeConnections,
          idleSeconds: figures.idleSeconds,
          cpuSeconds: figures.cpuSeconds,
          memoryBytes: figures.memoryBytes,
          walBytes: figures.walBytes,
          transactions: figures.transactions,
        };
      } catch (error) {
        throw refusal(error);
      }
    },

    async applyRoles(request, context) {
      const changes = roleChangesFromRequest(request);
      context.log.info({ upsert: changes.upsert.map((role) => role.roleName), drop: changes.drop }, 'ApplyRoles');
      try {
        const applied = await compute.applyRoles(changes);
        return { createdRoleNames: applied.created, updatedRoleNames: applied.updated, droppedRoleNames: applied.dropped };
      } catch (error) {
        throw refusal(error);
      }
    },
  };
}

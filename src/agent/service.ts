/**
 * The ComputeService gRPC implementation: the agent's status, a clean stop, and the activity figures the control
 * plane scales and suspends by.
 */
import pg from 'pg';
import type { ComputeServiceImplementation } from '../../gen/spg99/compute/v1/compute.js';
import { ComputeState } from '../../gen/spg99/compute/v1/compute.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { failedPrecondition } from '../lib/grpc/errors.js';
import type { Compute } from './compute.js';

/** Identity of the compute, as reported. */
export interface ComputeIdentity {
  computeId: string;
  timelineId: string;
  postgresAddress: string;
}

/** Builds the service over a compute. */
export function computeService(compute: Compute, identity: ComputeIdentity): ComputeServiceImplementation<ServerContextExtension> {
  let lastActive = Date.now();
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
      const finalLsn = await compute.stop(request.checkpoint);
      return { finalLsn };
    },

    async getMetrics() {
      const postgres = compute.postgresServer;
      if (compute.status().state !== ComputeState.COMPUTE_STATE_RUNNING || !postgres?.running) {
        throw failedPrecondition('Postgres is not running on this compute: metrics are available only while it runs');
      }
      const client = new pg.Client({ host: '127.0.0.1', port: postgres.port, user: 'postgres', database: 'postgres' });
      await client.connect();
      try {
        const activity = await client.query<{ active: string; commits: string }>(
          `SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) AS active,
                  (SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database) AS commits`,
        );
        const active = Number(activity.rows[0].active);
        if (active > 0) lastActive = Date.now();
        const status = compute.status();
        return {
          activeConnections: active,
          idleSeconds: (Date.now() - lastActive) / 1000,
          cpuSeconds: process.cpuUsage().user / 1e6,
          memoryBytes: BigInt(process.memoryUsage().rss),
          walBytes: status.receivedLsn - compute.proposer.termStartLsn,
          transactions: BigInt(activity.rows[0].commits),
        };
      } finally {
        await client.end();
      }
    },
  };
}

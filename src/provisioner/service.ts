/**
 * The ProvisionerService gRPC implementation: validates requests (model.ts) and hands them to the driver.
 */
import type { ProvisionerServiceImplementation } from '../../gen/spg99/provisioner/v1/provisioner.js';
import type { ServerContextExtension } from '../lib/grpc/server.js';
import { invalidArgument } from '../lib/grpc/errors.js';
import { echo } from '../lib/ids.js';
import type { ComputeDriver } from './driver.js';
import { ENDPOINT_ID_PATTERN, parseComputeId, parseComputeSpec, parseStopOptions, toComputeMessage } from './model.js';

/** Options of the service. */
export interface ProvisionerServiceOptions {
  /** The grace period of a GRACEFUL stop that sets none. */
  defaultStopGraceMs: number;
}

/** Builds the service over a driver. */
export function provisionerService(driver: ComputeDriver, options: ProvisionerServiceOptions): ProvisionerServiceImplementation<ServerContextExtension> {
  return {
    async ensureCompute(request, context) {
      const computeId = parseComputeId(request.computeId);
      const spec = parseComputeSpec(request.spec);
      const compute = await driver.ensure(computeId, spec);
      context.log.info({ computeId, state: compute.state }, 'compute ensured');
      return { compute: toComputeMessage(compute) };
    },

    async stopCompute(request, context) {
      const computeId = parseComputeId(request.computeId);
      const stopOptions = parseStopOptions(request, options.defaultStopGraceMs);
      context.log.info({ computeId, kill: stopOptions.kill, graceMs: stopOptions.graceMs }, 'stop requested');
      const { compute, finalLsn } = await driver.stop(computeId, stopOptions);
      return { compute: toComputeMessage(compute), finalLsn };
    },

    async describeCompute(request) {
      return { compute: toComputeMessage(driver.describe(parseComputeId(request.computeId))) };
    },

    async listComputes(request) {
      if (request.endpointId && !ENDPOINT_ID_PATTERN.test(request.endpointId)) {
        throw invalidArgument(`endpoint_id must be empty (all computes) or ep- followed by 32 lowercase hex digits, got ${echo(request.endpointId)}`);
      }
      return { computes: driver.list(request.endpointId || undefined).map(toComputeMessage) };
    },
  };
}

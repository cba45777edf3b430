/**
 * Role changes on a running compute, through its agent's ComputeService.ApplyRoles: one short-lived channel per
 * change (role changes are rare; keeping a channel per compute would leak them as computes come and go).
 */
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { createSpgClient, openChannel } from '../lib/grpc/client.js';
import type { RoleApplier } from './lifecycle.js';

/** A {@link RoleApplier} that calls the agent at the address the provisioner reports. */
export function computeRoleApplier(): RoleApplier {
  return async (agentAddress, change, deadline) => {
    const channel = openChannel(agentAddress);
    try {
      const client = createSpgClient(ComputeServiceDefinition, channel);
      await client.applyRoles({ upsert: change.upsert, dropRoleNames: change.drop }, { deadline });
    } finally {
      channel.close();
    }
  };
}

/**
 * The platform behind the control plane, for tests that start endpoints: Redis, three safekeepers, a pageserver, a
 * provisioner, and a control plane wired to all of them, each started through the harness.
 */
import type { SafekeeperNode } from './safekeepers.js';
import { startSafekeepers } from './safekeepers.js';
import { ControlPlaneNode } from './control-plane.js';
import { PageserverNode } from './pageserver.js';
import { ProvisionerNode } from './provisioner.js';
import { RedisNode } from './redis.js';
import type { Harness } from './process.js';

export interface Platform {
  redis: RedisNode;
  safekeepers: SafekeeperNode[];
  pageserver: PageserverNode;
  provisioner: ProvisionerNode;
  controlPlane: ControlPlaneNode;
}

/** Starts the platform; `controlPlaneArgs` are extra control-plane flags (e.g. a short writer lease). */
export async function startPlatform(harness: Harness, options: { controlPlaneArgs?: string[] } = {}): Promise<Platform> {
  const [redis, safekeepers, pageserver, provisioner] = await Promise.all([
    RedisNode.start(harness),
    startSafekeepers(harness, 3),
    PageserverNode.start(harness),
    ProvisionerNode.start(harness),
  ]);
  const controlPlane = await ControlPlaneNode.start(harness, {
    redisUrl: redis.url,
    pageserver: pageserver.address,
    safekeepers: safekeepers.map((node) => node.address),
    provisioner: provisioner.address,
    args: options.controlPlaneArgs,
  });
  return { redis, safekeepers, pageserver, provisioner, controlPlane };
}

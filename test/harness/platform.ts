/**
 * The platform behind the control plane, for tests that start endpoints: Redis, three safekeepers, a pageserver, a
 * provisioner, and a control plane wired to all of them, each started through the harness; with
 * {@link startGatewayPlatform}, also a gateway in front of it and a project to connect to.
 */
import type { SafekeeperNode } from './safekeepers.js';
import { startSafekeepers } from './safekeepers.js';
import { ControlPlaneNode } from './control-plane.js';
import { PageserverNode } from './pageserver.js';
import { ProvisionerNode } from './provisioner.js';
import { RedisNode } from './redis.js';
import { GatewayNode } from './gateway.js';
import type { Harness } from './process.js';
import { PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';

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

export interface GatewayPlatformOptions {
  /** The project's endpoints' pooler mode (default session). */
  poolerMode?: PoolerMode;
  gatewayArgs?: string[];
  /** Accept clients without TLS (default true). */
  allowPlaintext?: boolean;
  controlPlaneArgs?: string[];
  /** Runs on the platform before the project is created (e.g. to stop a safekeeper first). */
  beforeProject?: (platform: Platform) => Promise<void>;
}

/**
 * The platform, a gateway in front of it, and a tenant's project whose endpoint never suspends and is stopped until
 * a client wakes it; answers them with the owner role's credentials.
 */
export async function startGatewayPlatform(harness: Harness, options: GatewayPlatformOptions = {}) {
  const platform = await startPlatform(harness, { controlPlaneArgs: options.controlPlaneArgs });
  const { controlPlane } = platform;
  await options.beforeProject?.(platform);
  const gateway = await GatewayNode.start(harness, { controlPlane: controlPlane.internalAddress, allowPlaintext: options.allowPlaintext, args: options.gatewayArgs });
  const created = await controlPlane.operator().createTenant({ name: 'acme' });
  const api = controlPlane.client(created.apiKeySecret);
  const project = await api.createProject({
    name: 'shop',
    defaultEndpointSettings: { poolerMode: options.poolerMode ?? PoolerMode.POOLER_MODE_SESSION, suspendTimeout: { seconds: 0n, nanos: 0 } },
  });
  const endpointId = project.defaultEndpoint!.endpointId;
  const owner = { user: project.defaultRole!.name, password: project.defaultRolePassword };
  return { ...platform, platform, gateway, api, project, endpointId, owner };
}

/**
 * The value of a sample in the control plane's /metrics (`name{labels}` with the labels as Prometheus prints them,
 * e.g. `timeline_id="tl-…"`), or undefined when it has none.
 */
export async function controlPlaneMetric(platform: Platform, name: string, labels = ''): Promise<number | undefined> {
  const port = Number(platform.controlPlane.readyLine.metricsPort);
  const response = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (!response.ok) throw new Error(`the control plane's /metrics answered HTTP ${response.status}`);
  const prefix = labels ? `${name}{${labels}} ` : `${name} `;
  const line = (await response.text()).split('\n').find((candidate) => candidate.startsWith(prefix));
  return line === undefined ? undefined : Number(line.slice(prefix.length));
}

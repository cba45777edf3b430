/**
 * The control plane: the catalog (tenants, API keys, projects) in Redis and the public API over it. It keeps no
 * state of its own, so it can be restarted at any time.
 */
import { buildServer } from '../src/lib/grpc/server.js';
import { parseHostPort } from '../src/lib/config.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { connectRedis } from '../src/lib/redis.js';
import { createSpgClient, openChannel } from '../src/lib/grpc/client.js';
import { Catalog } from '../src/control-plane/catalog.js';
import { authMiddleware, catalogAvailabilityMiddleware } from '../src/control-plane/auth.js';
import { readOperatorToken } from '../src/control-plane/secrets.js';
import { controlPlaneService } from '../src/control-plane/service.js';
import { controlPlaneInternalService } from '../src/control-plane/internal-service.js';
import { WriterLeases } from '../src/control-plane/leases.js';
import { ControlPlaneInternalServiceDefinition, ControlPlaneServiceDefinition } from '../gen/spg99/controlplane/v1/controlplane.js';
import { TimelineServiceDefinition } from '../gen/spg99/pageserver/v1/pageserver.js';

const spec = {
  listen: { kind: 'string', description: 'gRPC address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:7700' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
  redisUrl: { kind: 'string', description: 'the catalog\'s Redis: redis://host:port[/db], with the append-only file on', default: 'redis://127.0.0.1:6379' },
  pageserver: { kind: 'string', description: 'host:port of the pageserver that holds new timelines; empty: projects are recorded without one', default: '' },
  operatorTokenFile: {
    kind: 'string',
    description: 'file holding the operator token CreateTenant takes (at least 32 characters); empty: CreateTenant is disabled',
    default: '',
  },
  safekeepers: { kind: 'list', description: 'host:port of the safekeepers timelines use (handed to writers with their lease)', default: [] as string[] },
  regions: { kind: 'list', description: 'regions projects may be created in, the default first', default: ['local'] as string[] },
  domain: { kind: 'string', description: 'DNS domain endpoints are reached under (ep-<id>.<domain>)', default: 'localhost' },
} as const;

await runComponent('control-plane', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  if (config.pageserver) parseHostPort(config.pageserver, '--pageserver');
  for (const address of config.safekeepers) parseHostPort(address, '--safekeepers');
  const operatorToken = config.operatorTokenFile ? readOperatorToken(config.operatorTokenFile) : null;
  const log = createLogger('control-plane');
  const redis = await connectRedis(config.redisUrl, log);
  const catalog = await Catalog.open(redis);
  const pageserverChannel = config.pageserver ? openChannel(config.pageserver) : null;
  const pageserver = pageserverChannel ? createSpgClient(TimelineServiceDefinition, pageserverChannel) : null;

  const { server, listen } = buildServer(log);
  server
    .with(catalogAvailabilityMiddleware)
    .with(authMiddleware({ catalog, operatorToken }))
    .add(ControlPlaneServiceDefinition, controlPlaneService({ catalog, pageserver, regions: config.regions, domain: config.domain }));
  const leases = new WriterLeases(redis);
  server
    .with(catalogAvailabilityMiddleware)
    .add(ControlPlaneInternalServiceDefinition, controlPlaneInternalService({ catalog, leases, safekeepers: config.safekeepers, pageserver: config.pageserver }));
  const running = await listen(config.listen, ['spg99.controlplane.v1.ControlPlaneService', 'spg99.controlplane.v1.ControlPlaneInternalService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  if (!operatorToken) log.warn('no --operator-token-file: CreateTenant is disabled');
  if (!pageserver) log.warn('no --pageserver: projects are recorded without a timeline');
  // Tests and `make up` read this line to learn the ports.
  log.info({ grpcPort: running.port, metricsPort: metrics.port, pageserver: config.pageserver || null }, 'control plane ready');
  return {
    log,
    stop: async () => {
      await running.stop();
      pageserverChannel?.close();
      await metrics.close();
      await redis.quit();
    },
  };
});

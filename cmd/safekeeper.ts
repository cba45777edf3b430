/**
 * The safekeeper: keeps each timeline's WAL durable on local disk and takes part in the writer election.
 */
import { buildServer } from '../src/lib/grpc/server.js';
import { parseHostPort } from '../src/lib/config.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { Safekeeper } from '../src/safekeeper/safekeeper.js';
import { safekeeperService } from '../src/safekeeper/service.js';
import { SafekeeperServiceDefinition } from '../gen/spg99/safekeeper/v1/safekeeper.js';

const spec = {
  id: { kind: 'string', description: 'this safekeeper\'s name in logs and metrics', default: 'sk-1' },
  dataDir: { kind: 'string', description: 'directory holding the timelines\' WAL and control files' },
  listen: { kind: 'string', description: 'gRPC address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:7501' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
} as const;

await runComponent('safekeeper', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const log = createLogger('safekeeper', { safekeeperId: config.id });
  const safekeeper = await Safekeeper.open(config.dataDir, log);
  const { server, listen } = buildServer(log);
  server.add(SafekeeperServiceDefinition, safekeeperService(safekeeper));
  const running = await listen(config.listen, ['spg99.safekeeper.v1.SafekeeperService']);
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests and `make up` read this line to learn the ports.
  log.info({ grpcPort: running.port, metricsPort: metrics.port, dataDir: config.dataDir }, 'safekeeper ready');
  return {
    log,
    stop: async () => {
      await running.stop();
      safekeeper.close();
      await metrics.close();
    },
  };
});


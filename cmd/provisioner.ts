/**
 * The provisioner: turns "a compute must run with spec S" into a running compute agent, through a driver
 * (`process`: local agent processes).
 */
import path from 'node:path';
import { buildServer } from '../src/lib/grpc/server.js';
import { ConfigError, parseHostPort } from '../src/lib/config.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { ProcessDriver } from '../src/provisioner/process-driver.js';
import { provisionerService } from '../src/provisioner/service.js';
import { ProvisionerServiceDefinition } from '../gen/spg99/provisioner/v1/provisioner.js';

const spec = {
  listen: { kind: 'string', description: 'gRPC address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:7800' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
  dataDir: { kind: 'string', description: 'local directory for the computes\' data directories (a cache, deleted on stop) and agent logs' },
  driver: { kind: 'string', description: 'how computes run: process (local agent processes)', default: 'process' },
  maxRestarts: { kind: 'integer', description: 'restarts of a crashed agent before its compute is FAILED', default: 3, min: 0 },
  restartBackoffMs: { kind: 'integer', description: 'delay of the first restart of a crashed agent, doubled for each further one', default: 500, min: 0 },
  startTimeoutS: { kind: 'integer', description: 'a compute not running after this many seconds counts as a failed start', default: 180, min: 1 },
  stopGraceS: { kind: 'integer', description: 'default grace period of a graceful stop, in seconds, before the agent is killed', default: 30, min: 0 },
  retainStoppedS: { kind: 'integer', description: 'stopped and failed computes stay describable this long, in seconds', default: 3600, min: 0 },
  maxComputes: { kind: 'integer', description: 'computes run at once at most (more answer RESOURCE_EXHAUSTED)', default: 64, min: 1 },
} as const;

await runComponent('provisioner', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  if (config.driver === 'kubernetes') {
    throw new ConfigError('--driver kubernetes is not available yet (it comes with a later change); use --driver process');
  }
  if (config.driver !== 'process') throw new ConfigError(`--driver must be process (or, later, kubernetes), got "${config.driver}"`);
  const log = createLogger('provisioner', { driver: config.driver });
  const driver = new ProcessDriver({
    dataDir: path.resolve(config.dataDir),
    log,
    maxRestarts: config.maxRestarts,
    restartBackoffMs: config.restartBackoffMs,
    startTimeoutMs: config.startTimeoutS * 1000,
    retainStoppedMs: config.retainStoppedS * 1000,
    maxComputes: config.maxComputes,
    closeGraceMs: config.stopGraceS * 1000,
  });
  const { server, listen } = buildServer(log);
  server.add(ProvisionerServiceDefinition, provisionerService(driver, { defaultStopGraceMs: config.stopGraceS * 1000 }));
  const running = await listen(config.listen, ['spg99.provisioner.v1.ProvisionerService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests and `make up` read this line to learn the ports.
  log.info({ grpcPort: running.port, metricsPort: metrics.port, dataDir: path.resolve(config.dataDir) }, 'provisioner ready');
  return {
    log,
    stop: async () => {
      // Computes first: a graceful stop of each still needs nothing from this server, but callers see UNAVAILABLE.
      await driver.close();
      await running.stop();
      await metrics.close();
    },
  };
});

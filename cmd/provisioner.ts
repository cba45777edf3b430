/**
 * The provisioner: turns "a compute must run with spec S" into a running compute agent, through a driver
 * (`process`: local agent processes; `kubernetes`: a pod per compute, docs/kubernetes.md).
 */
import path from 'node:path';
import { buildServer } from '../src/lib/grpc/server.js';
import { ConfigError, parseHostPort } from '../src/lib/config.js';
import { identitySpec, setupIdentity } from '../src/lib/grpc/identity.js';
import fs from 'node:fs';
import { issueComputeToken } from '../src/lib/grpc/credentials.js';
import type { ComputeCredentials } from '../src/provisioner/driver.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import type { ComputeDriver } from '../src/provisioner/driver.js';
import { KubernetesDriver, loadKubeConfig } from '../src/provisioner/kubernetes-driver.js';
import { ProcessDriver } from '../src/provisioner/process-driver.js';
import { provisionerService } from '../src/provisioner/service.js';
import { ProvisionerServiceDefinition } from '../gen/spg99/provisioner/v1/provisioner.js';

const spec = {
  listen: { kind: 'string', description: 'gRPC address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:7800' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
  dataDir: { kind: 'string', description: 'process driver: local directory for the computes\' data directories (a cache, deleted on stop) and agent logs', default: '' },
  driver: { kind: 'string', description: 'how computes run: process (local agent processes) or kubernetes (a pod per compute)', default: 'process' },
  kubeNamespace: { kind: 'string', description: 'kubernetes driver: the namespace of compute pods and their Secrets', default: 'spg99' },
  kubeImage: { kind: 'string', description: 'kubernetes driver: the compute image (deploy/compute.Dockerfile); required with --driver kubernetes', default: '' },
  kubeconfig: { kind: 'string', description: 'kubernetes driver: a kubeconfig file (default: the pod\'s service account in a cluster, else KUBECONFIG or ~/.kube/config)', default: '' },
  kubeImagePullSecret: { kind: 'string', description: 'kubernetes driver: an image pull secret for the compute image, when its registry needs one', default: '' },
  maxRestarts: { kind: 'integer', description: 'restarts of a crashed agent before its compute is FAILED', default: 3, min: 0 },
  restartBackoffMs: { kind: 'integer', description: 'delay of the first restart of a crashed agent, doubled for each further one', default: 500, min: 0 },
  startTimeoutS: { kind: 'integer', description: 'a compute not running after this many seconds counts as a failed start', default: 180, min: 1 },
  stopGraceS: { kind: 'integer', description: 'default grace period of a graceful stop, in seconds, before the agent is killed', default: 30, min: 0 },
  retainStoppedS: { kind: 'integer', description: 'stopped and failed computes stay describable this long, in seconds', default: 3600, min: 0 },
  maxComputes: { kind: 'integer', description: 'computes run at once at most (more answer RESOURCE_EXHAUSTED)', default: 64, min: 1 },
  ...identitySpec,
} as const;

await runComponent('provisioner', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  if (config.driver !== 'process' && config.driver !== 'kubernetes') {
    throw new ConfigError(`--driver must be process or kubernetes, got "${config.driver}"`);
  }
  if (config.driver === 'process' && !config.dataDir) throw new ConfigError('--data-dir (or SPG99_DATA_DIR) is required with --driver process');
  if (config.driver === 'kubernetes' && !config.kubeImage) {
    throw new ConfigError('--kube-image (or SPG99_KUBE_IMAGE) is required with --driver kubernetes: the compute image, built from deploy/compute.Dockerfile');
  }
  const identity = setupIdentity('provisioner', config);
  const log = createLogger('provisioner', { driver: config.driver });
  const signingKey = identity.key!;
  // The provisioner issues each compute's first token (its lease renewals bring the next ones).
  const credentials: ComputeCredentials = {
    trustDocument: fs.readFileSync(config.authTrustFile, 'utf8'),
    issue: (scope) => issueComputeToken({ role: 'provisioner', key: signingKey }, scope),
  };
  const common = {
    credentials,
    log,
    maxRestarts: config.maxRestarts,
    restartBackoffMs: config.restartBackoffMs,
    startTimeoutMs: config.startTimeoutS * 1000,
    retainStoppedMs: config.retainStoppedS * 1000,
    maxComputes: config.maxComputes,
  };
  const driver: ComputeDriver =
    config.driver === 'kubernetes'
      ? await KubernetesDriver.open({
          ...common,
          kubeConfig: loadKubeConfig(config.kubeconfig || undefined),
          namespace: config.kubeNamespace,
          image: config.kubeImage,
          imagePullSecret: config.kubeImagePullSecret || undefined,
          defaultGraceMs: config.stopGraceS * 1000,
        })
      : new ProcessDriver({ ...common, dataDir: path.resolve(config.dataDir), closeGraceMs: config.stopGraceS * 1000 });
  const { server, listen } = buildServer(log, { verifier: identity.verifier });
  server.add(ProvisionerServiceDefinition, provisionerService(driver, { defaultStopGraceMs: config.stopGraceS * 1000 }));
  const running = await listen(config.listen, ['spg99.provisioner.v1.ProvisionerService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests and `make up` read this line to learn the ports.
  log.info(
    { grpcPort: running.port, metricsPort: metrics.port, ...(config.driver === 'process' ? { dataDir: path.resolve(config.dataDir) } : { namespace: config.kubeNamespace }) },
    'provisioner ready',
  );
  return {
    log,
    stop: async () => {
      // Computes first: a graceful stop of each still needs nothing from this server, but callers see UNAVAILABLE.
      // (The kubernetes driver leaves its pods running: the next provisioner takes them over.)
      await driver.close();
      await running.stop();
      await metrics.close();
    },
  };
});

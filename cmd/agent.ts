/**
 * The compute agent: elects itself on the safekeepers, runs Postgres, and streams its WAL to them
 * (the walproposer), answering ComputeService calls.
 */
import { buildServer } from '../src/lib/grpc/server.js';
import { ConfigError, parseHostPort } from '../src/lib/config.js';
import { identitySpec, setupIdentity } from '../src/lib/grpc/identity.js';
import { HeldToken } from '../src/lib/grpc/credentials.js';
import { TIMELINE_ID_PATTERN } from '../src/lib/ids.js';
import { createLogger, newTraceId } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { freePort } from '../src/lib/net.js';
import { Compute } from '../src/agent/compute.js';
import { ControlPlaneLink } from '../src/agent/control-plane-link.js';
import { ENDPOINT_ID_PATTERN, type RoleVerifier } from '../src/agent/model.js';
import { readRolesFile } from '../src/agent/roles.js';
import { computeService } from '../src/agent/service.js';
import { awaitStandbyFlags } from '../src/lib/standby.js';
import { ComputeServiceDefinition, ComputeState } from '../gen/spg99/compute/v1/compute.js';

const spec = {
  computeId: { kind: 'string', description: 'this compute\'s id (also its proposer id)', default: 'compute-1' },
  timelineId: { kind: 'string', description: 'the timeline written (tl- and 32 hex digits)' },
  term: { kind: 'integer', description: 'the writer term (from the control plane\'s lease)', min: 1 },
  safekeepers: { kind: 'list', description: 'comma-separated safekeeper addresses (host:port)' },
  pgDataDir: { kind: 'string', description: 'the Postgres data directory (initdb runs when it is empty)' },
  pgPort: { kind: 'integer', description: 'the port Postgres listens on, on 127.0.0.1 (0 picks a free one)', default: 0, min: 0, max: 65535 },
  createTimeline: { kind: 'boolean', description: 'create the timeline on safekeepers that lack it', default: false },
  appendSocket: { kind: 'boolean', description: 'stream WAL over the safekeepers\' framed Append transport when they offer it (else gRPC)', default: true },
  walBufferMb: { kind: 'integer', description: 'WAL kept in memory for lagging safekeepers, in MiB (older WAL comes from their peers)', default: 64, min: 1 },
  pageserver: { kind: 'string', description: 'host:port of the pageserver: with an empty data directory, start from its basebackup', default: '' },
  cachedDataLsn: {
    kind: 'string',
    description: 'the data directory was cached at this LSN (decimal) by a clean stop: used when the timeline still ends there, else replaced by a basebackup',
    default: '',
  },
  endpointId: { kind: 'string', description: 'the endpoint this compute serves (ep-…); required with --control-plane', default: '' },
  controlPlane: { kind: 'string', description: 'host:port of the control plane\'s internal service (lease renewal, reports); empty: standalone', default: '' },
  leaseTtlS: { kind: 'integer', description: 'the writer lease duration asked for at each renewal (renewed every third of it), in seconds', default: 30, min: 1, max: 3600 },
  reportIntervalS: { kind: 'integer', description: 'seconds between two activity reports to the control plane', default: 5, min: 1, max: 3600 },
  rolesFile: { kind: 'string', description: 'JSON file of the roles to create before the compute runs: [{"roleName", "scramVerifier"}]', default: '' },
  listen: { kind: 'string', description: 'gRPC address of the ComputeService (host:port; port 0 picks one)', default: '127.0.0.1:0' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint', default: '127.0.0.1:0' },
  authTrustFile: identitySpec.authTrustFile,
  credentialFile: { kind: 'string', description: 'file holding this compute\'s token (issued by the provisioner, scoped to its timeline; renewed with its lease)', default: '' },
} as const;

const COMPUTE_SERVICE = 'spg99.compute.v1.ComputeService';

function cachedDataLsn(text: string): bigint | undefined {
  if (text === '') return undefined;
  if (!/^[0-9]{1,20}$/.test(text)) throw new ConfigError(`--cached-data-lsn must be a decimal LSN, got "${text.slice(0, 40)}"`);
  return BigInt(text);
}

// A standby (started by the provisioner ahead of need) learns its flags here, with its modules already loaded.
await awaitStandbyFlags('spg99-agent', '--compute-id');

await runComponent('agent', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  for (const address of config.safekeepers) parseHostPort(address, '--safekeepers');
  if (config.pageserver) parseHostPort(config.pageserver, '--pageserver');
  if (!TIMELINE_ID_PATTERN.test(config.timelineId)) {
    throw new ConfigError(`--timeline-id must be tl- followed by 32 lowercase hex digits, got "${config.timelineId}"`);
  }
  if (config.controlPlane) parseHostPort(config.controlPlane, '--control-plane');
  if (config.controlPlane && !config.endpointId) throw new ConfigError('--endpoint-id is required with --control-plane: the endpoint whose writer lease this compute holds');
  if (config.endpointId && !ENDPOINT_ID_PATTERN.test(config.endpointId)) {
    throw new ConfigError(`--endpoint-id must be ep- followed by lowercase letters and digits, got "${config.endpointId}"`);
  }
  let roles: RoleVerifier[] = [];
  try {
    if (config.rolesFile) roles = readRolesFile(config.rolesFile);
  } catch (error) {
    throw new ConfigError(`--roles-file: ${(error as Error).message}`);
  }
  const identity = setupIdentity('compute', config);
  const traceId = newTraceId();
  const log = createLogger('agent', { computeId: config.computeId, timelineId: config.timelineId, ...(config.endpointId ? { endpointId: config.endpointId } : {}), traceId });
  const pgPort = config.pgPort === 0 ? await freePort() : config.pgPort;
  const compute = new Compute({
    computeId: config.computeId,
    timelineId: config.timelineId,
    term: BigInt(config.term),
    safekeepers: config.safekeepers,
    pgDataDir: config.pgDataDir,
    pgPort,
    createTimeline: config.createTimeline,
    pageserver: config.pageserver || undefined,
    cachedDataLsn: cachedDataLsn(config.cachedDataLsn),
    walBufferBytes: config.walBufferMb * 1024 * 1024,
    useAppendSocket: config.appendSocket,
    roles,
    log,
    traceId,
  });
  const link = config.controlPlane
    ? new ControlPlaneLink(compute, {
        address: config.controlPlane,
        endpointId: config.endpointId,
        computeId: config.computeId,
        term: BigInt(config.term),
        leaseTtlMs: config.leaseTtlS * 1000,
        reportIntervalMs: config.reportIntervalS * 1000,
        postgresAddress: `127.0.0.1:${pgPort}`,
        log,
        traceId,
        onCredential: (credential) => (identity.credential as HeldToken).replace(credential),
      })
    : null;
  const { server, listen } = buildServer(log, { verifier: identity.verifier });
  server.add(ComputeServiceDefinition, computeService(compute, {
    computeId: config.computeId,
    timelineId: config.timelineId,
    postgresAddress: `127.0.0.1:${pgPort}`,
  }));
  const running = await listen(config.listen, ['spg99.compute.v1.ComputeService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  log.info({ grpcPort: running.port, metricsPort: metrics.port, controlPlane: config.controlPlane || null }, 'agent serving; starting the compute');
  link?.start();
  // Health of the ComputeService says whether Postgres serves (a Kubernetes readiness probe asks it by name).
  running.health.setStatus('unhealthy', COMPUTE_SERVICE);
  // Tests and `make up` read the "agent ready" line; a failed start leaves the status (FAILED, FENCED) readable.
  compute
    .start()
    .then(() => {
      running.health.setStatus('healthy', COMPUTE_SERVICE);
      log.info({ grpcPort: running.port, metricsPort: metrics.port, pgPort }, 'agent ready');
    })
    .catch((error: unknown) => {
      const { state, reason } = compute.status();
      // Losing the election to a newer term is an expected outcome, not a failure of this process.
      if (state === ComputeState.COMPUTE_STATE_FENCED) log.warn({ state, reason }, 'the compute did not start: fenced');
      else log.error({ err: error, state }, 'the compute did not start');
    });
  return {
    log,
    stop: async () => {
      await compute.stop(true);
      await link?.close();
      await running.stop();
      await metrics.close();
    },
  };
});

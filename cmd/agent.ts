/**
 * The compute agent: elects itself on the safekeepers, runs Postgres, and streams its WAL to them
 * (the walproposer), answering ComputeService calls.
 */
import { buildServer } from '../src/lib/grpc/server.js';
import { ConfigError, parseHostPort } from '../src/lib/config.js';
import { TIMELINE_ID_PATTERN } from '../src/lib/ids.js';
import { createLogger, newTraceId } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { freePort } from '../src/lib/net.js';
import { Compute } from '../src/agent/compute.js';
import { computeService } from '../src/agent/service.js';
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
  listen: { kind: 'string', description: 'gRPC address of the ComputeService (host:port; port 0 picks one)', default: '127.0.0.1:0' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint', default: '127.0.0.1:0' },
} as const;

await runComponent('agent', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  for (const address of config.safekeepers) parseHostPort(address, '--safekeepers');
  if (config.pageserver) parseHostPort(config.pageserver, '--pageserver');
  if (!TIMELINE_ID_PATTERN.test(config.timelineId)) {
    throw new ConfigError(`--timeline-id must be tl- followed by 32 lowercase hex digits, got "${config.timelineId}"`);
  }
  const traceId = newTraceId();
  const log = createLogger('agent', { computeId: config.computeId, timelineId: config.timelineId, traceId });
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
    walBufferBytes: config.walBufferMb * 1024 * 1024,
    useAppendSocket: config.appendSocket,
    log,
    traceId,
  });
  const { server, listen } = buildServer(log);
  server.add(ComputeServiceDefinition, computeService(compute, {
    computeId: config.computeId,
    timelineId: config.timelineId,
    postgresAddress: `127.0.0.1:${pgPort}`,
  }));
  const running = await listen(config.listen, ['spg99.compute.v1.ComputeService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  log.info({ grpcPort: running.port, metricsPort: metrics.port }, 'agent serving; starting the compute');
  // Tests and `make up` read the "agent ready" line; a failed start leaves the status (FAILED, FENCED) readable.
  compute
    .start()
    .then(() => log.info({ grpcPort: running.port, metricsPort: metrics.port, pgPort }, 'agent ready'))
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
      await running.stop();
      await metrics.close();
    },
  };
});

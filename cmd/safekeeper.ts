/**
 * The safekeeper: keeps each timeline's WAL durable on local disk and takes part in the writer election.
 */
import { buildServer, type ServerContext } from '../src/lib/grpc/server.js';
import { serveAppendSocket, type AppendSocketServer } from '../src/lib/append-socket.js';
import { parseHostPort } from '../src/lib/config.js';
import { identitySpec, setupIdentity } from '../src/lib/grpc/identity.js';
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
  appendListen: {
    kind: 'string',
    description: 'host:port of the framed Append transport the walproposer prefers to gRPC (port 0 picks a free one; empty: none)',
    default: '127.0.0.1:0',
  },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
  ...identitySpec,
} as const;

await runComponent('safekeeper', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const identity = setupIdentity('safekeeper', config);
  const log = createLogger('safekeeper', { safekeeperId: config.id });
  const safekeeper = await Safekeeper.open(config.dataDir, log);
  const { server, listen } = buildServer(log, { verifier: identity.verifier });
  const appendSocket = { address: '' };
  const service = safekeeperService(safekeeper, appendSocket);
  server.add(SafekeeperServiceDefinition, service);
  const running = await listen(config.listen, ['spg99.safekeeper.v1.SafekeeperService']);
  let framed: AppendSocketServer | null = null;
  if (config.appendListen) {
    const address = parseHostPort(config.appendListen, '--append-listen');
    const appendLog = log.child({ method: 'append-socket' });
    framed = await serveAppendSocket(
      address.host,
      address.port,
      // The same handler as the gRPC Append stream, with the context it uses.
      (requests, signal) => service.append(requests, { signal, log: appendLog, traceId: '' } as unknown as ServerContext),
      appendLog,
      identity.verifier,
    );
    appendSocket.address = `${address.host}:${framed.port}`;
  }
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests and `make up` read this line to learn the ports.
  log.info({ grpcPort: running.port, metricsPort: metrics.port, appendSocket: appendSocket.address, dataDir: config.dataDir }, 'safekeeper ready');
  return {
    log,
    stop: async () => {
      await framed?.close();
      await running.stop();
      safekeeper.close();
      await metrics.close();
    },
  };
});


/**
 * The gateway: the platform's one PostgreSQL entry point (TLS, endpoint routing, SCRAM, wake-on-connect, pooling)
 * and its admin gRPC API.
 */
import fs from 'node:fs';
import { buildServer } from '../src/lib/grpc/server.js';
import { ConfigError, parseHostPort } from '../src/lib/config.js';
import { identitySpec, setupIdentity } from '../src/lib/grpc/identity.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { createSpgClient, openChannel } from '../src/lib/grpc/client.js';
import { Gateway } from '../src/gateway/gateway.js';
import { gatewayAdminService } from '../src/gateway/admin-service.js';
import { ControlPlaneInternalServiceDefinition } from '../gen/spg99/controlplane/v1/controlplane.js';
import { GatewayAdminServiceDefinition } from '../gen/spg99/gateway/v1/gateway.js';

const spec = {
  listen: { kind: 'string', description: 'PostgreSQL address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:5432' },
  adminListen: { kind: 'string', description: 'gRPC address of the admin API (host:port)', default: '127.0.0.1:7900' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint', default: '127.0.0.1:0' },
  controlPlane: { kind: 'string', description: 'host:port of the control plane\'s internal API (routes, wake-up, relayed SCRAM logins)', default: '127.0.0.1:7700' },
  domain: { kind: 'string', description: 'DNS domain of the endpoints: clients connect to ep-<id>.<domain>', default: 'localhost' },
  tlsCert: { kind: 'string', description: 'PEM file of the server certificate (for *.<domain>); empty: no TLS', default: '' },
  tlsKey: { kind: 'string', description: 'PEM file of its private key', default: '' },
  allowPlaintext: { kind: 'boolean', description: 'also accept clients that do not ask for TLS', default: false },
  wakeTimeoutS: { kind: 'integer', description: 'how long a client waits for a stopped endpoint to start, in seconds', default: 60, min: 1 },
  poolSize: { kind: 'integer', description: 'server connections per pool when the endpoint\'s route sets none', default: 20, min: 1 },
  maxClients: { kind: 'integer', description: 'client connections of the whole gateway', default: 10_000, min: 1 },
  maxClientsPerEndpoint: { kind: 'integer', description: 'client connections per endpoint when its route sets none', default: 1000, min: 1 },
  serverIdleTimeoutS: { kind: 'integer', description: 'idle server connections are closed after this many seconds', default: 30, min: 1 },
  startupTimeoutS: { kind: 'integer', description: 'a client must send its startup packet (TLS included) within this many seconds of connecting', default: 10, min: 1 },
  loginTimeoutS: { kind: 'integer', description: 'a client must finish its password exchange within this many seconds of its startup packet', default: 60, min: 1 },
  maxMessageMb: { kind: 'integer', description: 'the longest message a client may send, in MiB', default: 64, min: 1, max: 1024 },
  ...identitySpec,
  maxUnfinishedPerAddress: {
    kind: 'integer',
    description: 'connections from one client address that have not proved a password yet; more are closed at once',
    default: 64,
    min: 1,
  },
} as const;

await runComponent('gateway', spec, async (config) => {
  const address = parseHostPort(config.listen, '--listen');
  parseHostPort(config.adminListen, '--admin-listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  parseHostPort(config.controlPlane, '--control-plane');
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey)) throw new ConfigError('--tls-cert and --tls-key go together: give both, or neither (and --allow-plaintext)');
  if (!config.tlsCert && !config.allowPlaintext) throw new ConfigError('give --tls-cert and --tls-key (make up generates them), or --allow-plaintext for unencrypted clients only');
  const readPem = (file: string, flag: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      throw new ConfigError(`${flag} ${file} cannot be read: ${(error as Error).message}`);
    }
  };
  const tls = config.tlsCert ? { cert: readPem(config.tlsCert, '--tls-cert'), key: readPem(config.tlsKey, '--tls-key') } : null;
  const identity = setupIdentity('gateway', config);
  const log = createLogger('gateway');
  const channel = openChannel(config.controlPlane);
  const gateway = new Gateway({
    host: address.host,
    port: address.port,
    domain: config.domain.toLowerCase(),
    tls,
    allowPlaintext: config.allowPlaintext,
    controlPlane: createSpgClient(ControlPlaneInternalServiceDefinition, channel),
    log,
    wakeTimeoutMs: config.wakeTimeoutS * 1000,
    poolSize: config.poolSize,
    maxClients: config.maxClients,
    maxClientsPerEndpoint: config.maxClientsPerEndpoint,
    serverIdleTimeoutMs: config.serverIdleTimeoutS * 1000,
    maxMessageBytes: config.maxMessageMb * 1024 * 1024,
    startupTimeoutMs: config.startupTimeoutS * 1000,
    loginTimeoutMs: config.loginTimeoutS * 1000,
    maxUnfinishedPerAddress: config.maxUnfinishedPerAddress,
  });
  const port = await gateway.start();
  const { server, listen } = buildServer(log, { verifier: identity.verifier });
  server.add(GatewayAdminServiceDefinition, gatewayAdminService(gateway));
  const admin = await listen(config.adminListen, ['spg99.gateway.v1.GatewayAdminService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests, benchmarks and `make up` read this line to learn the ports.
  log.info({ port, adminPort: admin.port, metricsPort: metrics.port, tls: tls !== null, allowPlaintext: config.allowPlaintext }, 'gateway ready');
  return {
    log,
    stop: async () => {
      await gateway.stop();
      await admin.stop();
      await metrics.close();
      channel.close();
    },
  };
});

/**
 * The control plane: the catalog (tenants, API keys, projects, branches, endpoints, roles) in Redis, the public API
 * over it, the internal API for agents and the gateway, and the endpoint lifecycle (with its reconciler). It keeps no
 * state of its own, so it can be restarted at any time.
 */
import { buildServer, serverTlsCredentials } from '../src/lib/grpc/server.js';
import { ConfigError, parseHostPort } from '../src/lib/config.js';
import { identitySpec, setupIdentity } from '../src/lib/grpc/identity.js';
import { issueComputeToken } from '../src/lib/grpc/credentials.js';
import { readRedisPassword } from '../src/lib/redis.js';
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
import { mockSaltSecretOf } from '../src/control-plane/scram-logins.js';
import { WriterLeases } from '../src/control-plane/leases.js';
import { ControlPlaneInternalServiceDefinition, ControlPlaneServiceDefinition } from '../gen/spg99/controlplane/v1/controlplane.js';
import { TimelineServiceDefinition } from '../gen/spg99/pageserver/v1/pageserver.js';
import { ProvisionerServiceDefinition } from '../gen/spg99/provisioner/v1/provisioner.js';
import { SafekeeperServiceDefinition } from '../gen/spg99/safekeeper/v1/safekeeper.js';
import { EndpointLifecycle } from '../src/control-plane/lifecycle.js';
import { computeRoleApplier } from '../src/control-plane/compute-roles.js';

const spec = {
  listen: { kind: 'string', description: 'gRPC address of the public API (API keys; host:port; port 0 picks a free one)', default: '127.0.0.1:7700' },
  tlsCert: { kind: 'string', description: 'PEM file of the public API\'s TLS certificate (make up\'s is signed by the platform\'s CA); empty: --allow-plaintext', default: '' },
  tlsKey: { kind: 'string', description: 'PEM file of its private key', default: '' },
  allowPlaintext: { kind: 'boolean', description: 'serve the public API without TLS (API keys then cross the network readable): a trusted network only', default: false },
  internalListen: {
    kind: 'string',
    description: 'gRPC address of the internal service for agents, the gateway and the provisioner (service credentials; port 0 picks a free one)',
    default: '127.0.0.1:7701',
  },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
  redisUrl: { kind: 'string', description: 'the catalog\'s Redis: redis://host:port[/db], with the append-only file on', default: 'redis://127.0.0.1:6379' },
  redisPasswordFile: { kind: 'string', description: 'file holding the Redis password (never on the command line); empty: Redis without a password', default: '' },
  pageserver: { kind: 'string', description: 'host:port of the pageserver that holds new timelines; empty: projects are recorded without one', default: '' },
  operatorTokenFile: {
    kind: 'string',
    description: 'file holding the operator token CreateTenant takes (at least 32 characters); empty: CreateTenant is disabled',
    default: '',
  },
  safekeepers: { kind: 'list', description: 'host:port of the safekeepers timelines use (handed to writers with their lease)', default: [] as string[] },
  provisioner: {
    kind: 'string',
    description: 'host:port of the provisioner that runs computes; empty: endpoints cannot be started (needs --pageserver and --safekeepers too)',
    default: '',
  },
  writerLeaseTtlS: {
    kind: 'integer',
    description: 'ttl of writer leases in seconds: agents renew them; a writer that does not is replaced after this long',
    default: 30,
    min: 2,
    max: 600,
  },
  reconcileIntervalMs: { kind: 'integer', description: 'how often the reconciler walks the endpoints (ms)', default: 1000, min: 50 },
  advertise: { kind: 'string', description: 'host:port computes reach this control plane\'s internal service at; empty: the --internal-listen address', default: '' },
  publicPort: { kind: 'integer', description: 'the port users connect to (the gateway\'s), for connection strings', default: 5432, min: 1, max: 65535 },
  regions: { kind: 'list', description: 'regions projects may be created in, the default first', default: ['local'] as string[] },
  domain: { kind: 'string', description: 'DNS domain endpoints are reached under (ep-<id>.<domain>)', default: 'localhost' },
  ...identitySpec,
  publicHost: {
    kind: 'string',
    description: 'one host users reach every endpoint at, the endpoint named in options=endpoint=… (e.g. 127.0.0.1); empty: ep-<id>.<domain>, or 127.0.0.1 under a one-label domain',
    default: '',
  },
  publicRootCert: {
    kind: 'string',
    description: 'sslrootcert of the connection strings handed out: the path of the CA file clients verify the gateway with, or system (a public CA)',
    default: 'system',
  },
} as const;

await runComponent('control-plane', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey)) throw new ConfigError('--tls-cert and --tls-key go together: give both, or neither (and --allow-plaintext)');
  if (!config.tlsCert && !config.allowPlaintext) {
    throw new ConfigError('give --tls-cert and --tls-key for the public API (make up makes them with the platform\'s CA), or --allow-plaintext on a trusted network');
  }
  const publicTls = config.tlsCert ? serverTlsCredentials(config.tlsCert, config.tlsKey, { cert: '--tls-cert', key: '--tls-key' }) : undefined;
  const internalAddress = parseHostPort(config.internalListen, '--internal-listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  if (config.pageserver) parseHostPort(config.pageserver, '--pageserver');
  if (config.advertise) parseHostPort(config.advertise, '--advertise');
  for (const address of config.safekeepers) parseHostPort(address, '--safekeepers');
  if (config.provisioner) {
    parseHostPort(config.provisioner, '--provisioner');
    if (!config.pageserver || config.safekeepers.length === 0) {
      throw new ConfigError('--provisioner needs --pageserver and --safekeepers: a started endpoint\'s compute uses them');
    }
  }
  const operatorToken = config.operatorTokenFile ? readOperatorToken(config.operatorTokenFile) : null;
  const identity = setupIdentity('control-plane', config);
  const signingKey = identity.key!;
  const log = createLogger('control-plane');
  const redis = await connectRedis(config.redisUrl, log, config.redisPasswordFile ? { password: readRedisPassword(config.redisPasswordFile) } : {});
  const catalog = await Catalog.open(redis);
  const pageserverChannel = config.pageserver ? openChannel(config.pageserver) : null;
  const pageserver = pageserverChannel ? createSpgClient(TimelineServiceDefinition, pageserverChannel) : null;

  const leaseTtlMs = config.writerLeaseTtlS * 1000;
  // Requests for longer leases are cut to the configured ttl: a writer that stops renewing is replaced after it.
  const leases = new WriterLeases(redis, { defaultTtlMs: leaseTtlMs, maxTtlMs: leaseTtlMs });
  const otherChannels: Array<{ close(): void }> = [];
  let lifecycle: EndpointLifecycle | null = null;
  if (config.provisioner && pageserver) {
    const provisionerChannel = openChannel(config.provisioner);
    otherChannels.push(provisionerChannel);
    const safekeepers = config.safekeepers.map((address) => {
      const channel = openChannel(address);
      otherChannels.push(channel);
      return { address, client: createSpgClient(SafekeeperServiceDefinition, channel) };
    });
    lifecycle = new EndpointLifecycle({
      catalog,
      leases,
      provisioner: createSpgClient(ProvisionerServiceDefinition, provisionerChannel),
      pageserver,
      pageserverAddress: config.pageserver,
      safekeepers,
      controlPlaneAddress: config.advertise,
      roleApplier: computeRoleApplier(),
      log,
      leaseTtlMs,
      reconcileIntervalMs: config.reconcileIntervalMs,
    });
  }
  // The public API (API keys, every tenant can reach it) and the internal service (service credentials) listen apart.
  const publicServer = buildServer(log, 'public');
  publicServer.server
    .with(catalogAvailabilityMiddleware)
    .with(authMiddleware({ catalog, operatorToken }))
    .add(ControlPlaneServiceDefinition, controlPlaneService({ catalog, pageserver, regions: config.regions, domain: config.domain, publicPort: config.publicPort, publicHost: config.publicHost, publicRootCert: config.publicRootCert, lifecycle }));
  const internalServer = buildServer(log, { verifier: identity.verifier });
  internalServer.server.with(catalogAvailabilityMiddleware).add(
    ControlPlaneInternalServiceDefinition,
    controlPlaneInternalService({
      catalog,
      leases,
      safekeepers: config.safekeepers,
      pageserver: config.pageserver,
      lifecycle,
      // A compute's lease renewal also renews its credential (scoped to its timeline, endpoint and compute).
      issueComputeCredential: (scope) => issueComputeToken({ role: 'control-plane', key: signingKey }, scope),
      scramMockSaltSecret: mockSaltSecretOf(signingKey),
    }),
  );
  const running = await publicServer.listen(config.listen, ['spg99.controlplane.v1.ControlPlaneService'], publicTls);
  const internal = await internalServer.listen(config.internalListen, ['spg99.controlplane.v1.ControlPlaneInternalService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  if (lifecycle) {
    if (!config.advertise) lifecycle.setControlPlaneAddress(`${internalAddress.host}:${internal.port}`);
    lifecycle.startReconciler();
  }
  if (!operatorToken) log.warn('no --operator-token-file: CreateTenant is disabled');
  if (!publicTls) log.warn('--allow-plaintext: the public API is served without TLS, API keys cross the network readable');
  if (!pageserver) log.warn('no --pageserver: projects are recorded without a timeline');
  if (!lifecycle) log.warn('no --provisioner: endpoints cannot be started');
  // Tests and `make up` read this line to learn the ports.
  log.info({ grpcPort: running.port, tls: publicTls !== undefined, internalPort: internal.port, metricsPort: metrics.port, pageserver: config.pageserver || null, provisioner: config.provisioner || null }, 'control plane ready');
  return {
    log,
    stop: async () => {
      await lifecycle?.stopReconciler();
      await running.stop();
      await internal.stop();
      // Starts and stops in progress are abandoned: the next control plane's reconciler resumes them.
      for (const channel of otherChannels) channel.close();
      pageserverChannel?.close();
      await metrics.close();
      await redis.quit();
    },
  };
});

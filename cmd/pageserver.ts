/**
 * The pageserver: keeps every timeline's history in object storage, runs a replayer per active timeline, and
 * serves basebackups and pages.
 */
import path from 'node:path';
import { buildServer } from '../src/lib/grpc/server.js';
import { parseHostPort } from '../src/lib/config.js';
import { identitySpec, setupIdentity } from '../src/lib/grpc/identity.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { openObjectStore } from '../src/pageserver/storage/object-store.js';
import { Pageserver } from '../src/pageserver/pageserver.js';
import { pageService, timelineService } from '../src/pageserver/service.js';
import { PageServiceDefinition, TimelineServiceDefinition } from '../gen/spg99/pageserver/v1/pageserver.js';

const spec = {
  id: { kind: 'string', description: 'this pageserver\'s name (reported to safekeepers as the consumer)', default: 'pageserver-1' },
  dataDir: { kind: 'string', description: 'local directory for caches, WAL segments and replayers (a cache: object storage is the truth)' },
  objectStore: {
    kind: 'string',
    description: 'object storage: file:///abs/dir, or s3://bucket/prefix?endpoint=http://host:port (keys in SPG99_S3_ACCESS_KEY/SPG99_S3_SECRET_KEY); default <data-dir>/objects',
    default: '',
  },
  listen: { kind: 'string', description: 'gRPC address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:7600' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint (port 0 picks a free one)', default: '127.0.0.1:0' },
  snapshotWalMb: { kind: 'integer', description: 'snapshot a timeline once this many MiB of WAL arrived since its last snapshot', default: 64, min: 1 },
  snapshotIntervalS: { kind: 'integer', description: 'a timeline with new WAL is snapshotted at least this often, in seconds', default: 300, min: 1 },
  idleMs: { kind: 'integer', description: 'a timeline without new WAL for this long is snapshotted and its replayer stopped', default: 10_000, min: 100 },
  uploadIntervalMs: { kind: 'integer', description: 'how often ingested WAL is uploaded and progress reported to safekeepers', default: 1000, min: 10 },
  maxLeaseS: { kind: 'integer', description: 'the longest an LSN lease is held, in seconds', default: 3600, min: 1 },
  gcRetentionS: { kind: 'integer', description: 'history GC keeps (point-in-time branches and restores reach back this far), in seconds', default: 7 * 24 * 3600, min: 0 },
  gcIntervalS: { kind: 'integer', description: 'how often GC runs, in seconds (0: only when asked through RunGc)', default: 3600, min: 0 },
  ...identitySpec,
} as const;

await runComponent('pageserver', spec, async (config) => {
  parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  const identity = setupIdentity('pageserver', config);
  const log = createLogger('pageserver', { pageserverId: config.id });
  const store = await openObjectStore(config.objectStore || `file://${path.resolve(config.dataDir, 'objects')}`);
  const pageserver = await Pageserver.open({
    id: config.id,
    dataDir: path.resolve(config.dataDir),
    store,
    snapshotWalBytes: config.snapshotWalMb * 1024 * 1024,
    idleMs: config.idleMs,
    snapshotIntervalMs: config.snapshotIntervalS * 1000,
    uploadIntervalMs: config.uploadIntervalMs,
    maxLeaseMs: config.maxLeaseS * 1000,
    gcRetentionMs: config.gcRetentionS * 1000,
    gcIntervalMs: config.gcIntervalS * 1000,
    log,
  });
  const { server, listen } = buildServer(log, { verifier: identity.verifier });
  server.add(TimelineServiceDefinition, timelineService(pageserver));
  server.add(PageServiceDefinition, pageService(pageserver));
  const running = await listen(config.listen, ['spg99.pageserver.v1.TimelineService', 'spg99.pageserver.v1.PageService']);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests and `make up` read this line to learn the ports.
  log.info({ grpcPort: running.port, metricsPort: metrics.port, store: store.description }, 'pageserver ready');
  return {
    log,
    stop: async () => {
      await running.stop();
      await pageserver.close();
      await store.close();
      await metrics.close();
    },
  };
});

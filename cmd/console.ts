/**
 * The console: the web interface for people, on top of the control plane's public API only (docs/console.md).
 */
import fs from 'node:fs';
import { parseHostPort, ConfigError } from '../src/lib/config.js';
import { createLogger } from '../src/lib/log.js';
import { serveMetrics } from '../src/lib/metrics.js';
import { runComponent } from '../src/lib/lifecycle.js';
import { PlatformApi } from '../src/console/platform-api.js';
import { loadSessionKey, SessionSealer } from '../src/console/session.js';
import { ConsoleServer } from '../src/console/server.js';
import { MonitoringSource } from '../src/console/monitoring.js';

const spec = {
  listen: { kind: 'string', description: 'HTTP address to listen on (host:port; port 0 picks a free one)', default: '127.0.0.1:8080' },
  metricsListen: { kind: 'string', description: 'host:port of the Prometheus endpoint', default: '127.0.0.1:0' },
  controlPlane: { kind: 'string', description: 'host:port of the control plane\'s public API (the users\' API keys are its only credential)', default: '127.0.0.1:7700' },
  controlPlaneCa: { kind: 'string', description: 'the CA certificate (PEM file) the public API\'s TLS certificate is verified against (make up: .spg99/tls/ca.crt); empty: the system\'s CAs', default: '' },
  controlPlanePlaintext: { kind: 'boolean', description: 'call the public API without TLS (only for a control plane started with --allow-plaintext)', default: false },
  sessionKeyFile: { kind: 'string', description: 'file holding the key that seals session cookies (made, 0600, when missing); keep it to keep sessions across restarts', default: '.spg99/console-session.key' },
  sessionHours: { kind: 'integer', description: 'how long a sign-in lasts, in hours', default: 12, min: 1 },
  secureCookies: { kind: 'boolean', description: 'mark the session cookie Secure (when the console is served over HTTPS)', default: false },
  prometheusUrl: { kind: 'string', description: 'the platform\'s Prometheus (http://host:port) for the monitoring pages; empty: monitoring off', default: '' },
} as const;

await runComponent('console', spec, async (config) => {
  const address = parseHostPort(config.listen, '--listen');
  const metricsAddress = parseHostPort(config.metricsListen, '--metrics-listen');
  parseHostPort(config.controlPlane, '--control-plane');
  if (config.prometheusUrl && !/^https?:\/\//.test(config.prometheusUrl)) throw new ConfigError(`--prometheus-url must be an http(s) URL, not "${config.prometheusUrl}"`);
  const log = createLogger('console');
  if (config.controlPlaneCa && !fs.existsSync(config.controlPlaneCa)) {
    throw new ConfigError(`--control-plane-ca ${config.controlPlaneCa} does not exist: give the platform's CA certificate (make up keeps it in .spg99/tls/ca.crt)`);
  }
  const api = new PlatformApi(config.controlPlane, config.controlPlanePlaintext ? false : config.controlPlaneCa ? { caFile: config.controlPlaneCa } : {});
  const sealer = new SessionSealer(loadSessionKey(config.sessionKeyFile), config.sessionHours * 3600_000);
  const server = new ConsoleServer({
    api,
    sealer,
    log,
    secureCookies: config.secureCookies,
    monitoring: config.prometheusUrl ? new MonitoringSource(config.prometheusUrl) : null,
  });
  const port = await server.listen(address.host, address.port);
  const metrics = await serveMetrics(metricsAddress.host, metricsAddress.port);
  // Tests and `make up` read this line to learn the ports.
  log.info({ port, metricsPort: metrics.port, url: `http://${address.host}:${port}/`, monitoring: config.prometheusUrl !== '' }, 'console ready');
  return {
    log,
    stop: async () => {
      await server.close();
      await metrics.close();
      api.close();
    },
  };
});

/**
 * Prometheus metrics: one registry per process, served over HTTP at `/metrics` (and `/healthz`).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry, collectDefaultMetrics, Counter, Gauge, Histogram } from 'prom-client';

/** The process-wide registry every component registers its metrics in. */
export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: 'spg99_process_' });

/**
 * A counter in the process registry. `collect` runs at each scrape (this: the counter), for values kept elsewhere:
 * plain integers on a hot path cost less than an inc() with labels.
 */
export function counter(name: string, help: string, labelNames: string[] = [], collect?: (this: Counter<string>) => void): Counter<string> {
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as Counter<string>;
  return new Counter({ name, help, labelNames, registers: [registry], ...(collect ? { collect } : {}) });
}

/** A gauge in the process registry. */
export function gauge(name: string, help: string, labelNames: string[] = []): Gauge<string> {
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as Gauge<string>;
  return new Gauge({ name, help, labelNames, registers: [registry] });
}

/** A histogram in the process registry (seconds unless the name says otherwise). */
export function histogram(name: string, help: string, labelNames: string[] = [], buckets?: number[]): Histogram<string> {
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as Histogram<string>;
  return new Histogram({
    name,
    help,
    labelNames,
    registers: [registry],
    buckets: buckets ?? [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** The port it listens on. */
  port: number;
  close(): Promise<void>;
}

/** Serves the registry on `host:port` (port 0: any free port). */
export async function serveMetrics(host: string, port: number): Promise<MetricsServer> {
  const server = http.createServer((request, response) => {
    if (request.url === '/metrics') {
      registry
        .metrics()
        .then((body) => {
          response.writeHead(200, { 'content-type': registry.contentType });
          response.end(body);
        })
        .catch((error: Error) => {
          response.writeHead(500);
          response.end(String(error));
        });
    } else if (request.url === '/healthz') {
      response.writeHead(200, { 'content-type': 'text/plain' });
      response.end('ok\n');
    } else {
      response.writeHead(404, { 'content-type': 'text/plain' });
      response.end('not found: try /metrics or /healthz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * The gateway under test: started through the harness on free ports against a control plane of the test, with a
 * local CA and server certificate generated into a harness directory (src/lib/tls-certs.ts). Clients connect with
 * `pg` through TLS and SNI (`ep-<id>.localhost`, or `ep-<id>-pooler.localhost` for the endpoint's pooler mode),
 * or without TLS naming the endpoint in `options` when the gateway allows plaintext.
 */
import fs from 'node:fs';
import pg from 'pg';
import type { Client } from 'nice-grpc';
import { GatewayAdminServiceDefinition } from '../../gen/spg99/gateway/v1/gateway.js';
import { createSpgClient, openChannel } from '../../src/lib/grpc/client.js';
import { checkLocalServerIdentity, ensureLocalCertificates } from '../../src/lib/tls-certs.js';
import type { ComponentProcess, Harness, LogLine } from './process.js';

export interface GatewayNodeOptions {
  /** host:port of the control plane's internal API. */
  controlPlane: string;
  /** Accept clients without TLS (default true: tests say when they want it refused). */
  allowPlaintext?: boolean;
  args?: string[];
}

const READY_MESSAGE = 'gateway ready';

/** How a test client reaches an endpoint through the gateway. */
export interface ConnectOptions {
  user: string;
  password: string;
  database?: string;
  /** Through the endpoint's pooler mode (`-pooler`), not a dedicated session. */
  pooled?: boolean;
  /** TLS with SNI (default), or plaintext with options=endpoint=…. */
  tls?: boolean;
  application_name?: string;
}

export class GatewayNode {
  private starts = 1;

  private constructor(
    private readonly harness: Harness,
    private readonly args: string[],
    readonly port: number,
    readonly adminPort: number,
    readonly caCert: string,
    public process: ComponentProcess,
    public readyLine: LogLine,
    readonly admin: Client<typeof GatewayAdminServiceDefinition>,
  ) {}

  static async start(harness: Harness, options: GatewayNodeOptions): Promise<GatewayNode> {
    const certificates = await ensureLocalCertificates(harness.tempDir('gateway-tls').path, { domain: 'localhost' });
    const args = [
      '--listen', '127.0.0.1:0',
      '--admin-listen', '127.0.0.1:0',
      '--metrics-listen', '127.0.0.1:0',
      '--control-plane', options.controlPlane,
      '--domain', 'localhost',
      '--tls-cert', certificates.certFile,
      '--tls-key', certificates.keyFile,
      ...(options.allowPlaintext === false ? [] : ['--allow-plaintext']),
      ...(options.args ?? []),
    ];
    const child = harness.spawn('gateway', args, { label: 'gateway', stopFirst: true });
    const ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"` });
    const port = Number(ready.port);
    const adminPort = Number(ready.adminPort);
    const channel = openChannel(`127.0.0.1:${adminPort}`);
    harness.defer(() => channel.close());
    // A restart listens where this one does, so clients and the admin channel find it again.
    const restartArgs = [...args];
    restartArgs[restartArgs.indexOf('--listen') + 1] = `127.0.0.1:${port}`;
    restartArgs[restartArgs.indexOf('--admin-listen') + 1] = `127.0.0.1:${adminPort}`;
    const caCert = fs.readFileSync(certificates.caCertFile, 'utf8');
    return new GatewayNode(harness, restartArgs, port, adminPort, caCert, child, ready, createSpgClient(GatewayAdminServiceDefinition, channel));
  }

  /** Stops it (SIGTERM, or SIGKILL with `crash`) unless it exited already, and starts it again on the same ports. */
  async restart(options: { crash?: boolean } = {}): Promise<void> {
    if (!this.process.exited) {
      if (options.crash) await this.process.kill9();
      else await this.process.stop();
    }
    this.starts += 1;
    this.process = this.harness.spawn('gateway', this.args, { label: `gateway#${this.starts}`, stopFirst: true });
    this.readyLine = await this.process.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"` });
  }

  /** `pg` client settings for an endpoint through this gateway. */
  clientConfig(endpointId: string, options: ConnectOptions): pg.ClientConfig {
    const label = `${endpointId}${options.pooled ? '-pooler' : ''}`;
    const base: pg.ClientConfig = {
      host: '127.0.0.1',
      port: this.port,
      user: options.user,
      password: options.password,
      database: options.database ?? 'postgres',
      connectionTimeoutMillis: 120_000,
      application_name: options.application_name,
    };
    if (options.tls === false) return { ...base, ssl: false, options: `endpoint=${label}` };
    return { ...base, ssl: { ca: this.caCert, servername: `${label}.localhost`, checkServerIdentity: checkLocalServerIdentity } };
  }

  /** The port of the gateway's Prometheus endpoint (from its "gateway ready" line). */
  get metricsPort(): number {
    return Number(this.readyLine.metricsPort);
  }

  /** The gateway's metrics in the Prometheus text format. */
  async metrics(): Promise<string> {
    const response = await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`, { signal: AbortSignal.timeout(10_000) });
    if (!response.ok) throw new Error(`the gateway's /metrics answered HTTP ${response.status}`);
    return response.text();
  }

  /** A connected `pg` client (errors after connect are swallowed: tests look at query results). */
  async connect(endpointId: string, options: ConnectOptions): Promise<pg.Client> {
    const client = new pg.Client(this.clientConfig(endpointId, options));
    client.on('error', () => undefined);
    await client.connect();
    return client;
  }
}

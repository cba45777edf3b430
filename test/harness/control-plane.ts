/**
 * The control plane under test: started through the harness on a free port against a Redis of the test, with an
 * operator token in a harness directory; restartable on the same port. Clients carry an API key (or the operator
 * token) as `authorization: Bearer <secret>`. The internal service listens apart ({@link ControlPlaneNode.internalAddress}),
 * for service credentials: the test process calls it as the operator. The public API is served with TLS, its
 * certificate signed by a CA made once per test process ({@link ControlPlaneNode.caFile}).
 */
import { ClientError } from '../../src/lib/grpc/errors.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ChannelCredentials } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { createChannel, createClient, Metadata, type Channel, type Client } from 'nice-grpc';
import { ControlPlaneInternalServiceDefinition, ControlPlaneServiceDefinition } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { createSpgClient, openChannel, type SpgClient } from '../../src/lib/grpc/client.js';
import { freePort } from '../../src/lib/net.js';
import { ensureLocalCertificates, LOCAL_DOMAIN, type LocalCertificates } from '../../src/lib/tls-certs.js';
import type { ComponentProcess, Harness, LogLine } from './process.js';
import { redisPasswordFileFor } from './redis.js';

export interface ControlPlaneOptions {
  redisUrl: string;
  /** The file of Redis' password (RedisNode.passwordFile). */
  redisPasswordFile?: string;
  /** host:port of a pageserver; none by default. */
  pageserver?: string;
  /** host:port of the safekeepers and of a provisioner: with them (and a pageserver) endpoints can start. */
  safekeepers?: string[];
  provisioner?: string;
  /** Extra flags. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

const READY_MESSAGE = 'control plane ready';

/**
 * The public API's certificate (and its CA), made once per test process: openssl takes most of a second, and every
 * control plane of the run may share one, as `make up`'s share the platform's.
 */
let certificates: Promise<LocalCertificates> | null = null;
export function publicApiCertificates(): Promise<LocalCertificates> {
  if (!certificates) {
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-api-tls-'));
    process.once('exit', () => fs.rmSync(directory, { recursive: true, force: true }));
    certificates = ensureLocalCertificates(directory, { domain: LOCAL_DOMAIN });
  }
  return certificates;
}

export type ControlPlaneClient = Client<typeof ControlPlaneServiceDefinition>;

/** A control-plane process under test. */
export class ControlPlaneNode {
  /** The token CreateTenant takes. */
  readonly operatorToken: string;
  private readonly channel: Channel;
  private readonly internalChannel: Channel;
  private starts = 1;

  private constructor(
    private readonly harness: Harness,
    /** The CA the public API's certificate is signed by (what the CLI's SPG99_API_CA and the SDK's tls.caFile name). */
    readonly caFile: string,
    private readonly args: string[],
    readonly port: number,
    /** The internal service's port. */
    readonly internalPort: number,
    operatorToken: string,
    private readonly options: ControlPlaneOptions,
    public process: ComponentProcess,
    public readyLine: LogLine,
  ) {
    this.operatorToken = operatorToken;
    this.channel = createChannel(this.address, ChannelCredentials.createSsl(fs.readFileSync(caFile)));
    this.internalChannel = openChannel(this.internalAddress);
    harness.defer(() => {
      this.channel.close();
      this.internalChannel.close();
    });
  }

  static async start(harness: Harness, options: ControlPlaneOptions): Promise<ControlPlaneNode> {
    const directory = harness.tempDir('control-plane').path;
    const operatorToken = randomBytes(32).toString('hex');
    const tokenFile = path.join(directory, 'operator-token');
    fs.writeFileSync(tokenFile, `${operatorToken}\n`, { mode: 0o600 });
    const [port, internalPort] = [await freePort(), await freePort()];
    const tls = await publicApiCertificates();
    const redisPasswordFile = options.redisPasswordFile ?? redisPasswordFileFor(options.redisUrl);
    const args = [
      '--listen', `127.0.0.1:${port}`,
      '--internal-listen', `127.0.0.1:${internalPort}`,
      '--tls-cert', tls.certFile,
      '--tls-key', tls.keyFile,
      ...(redisPasswordFile ? ['--redis-password-file', redisPasswordFile] : []),
      '--metrics-listen', '127.0.0.1:0',
      '--redis-url', options.redisUrl,
      '--operator-token-file', tokenFile,
      ...(options.pageserver ? ['--pageserver', options.pageserver] : []),
      ...(options.safekeepers?.length ? ['--safekeepers', options.safekeepers.join(',')] : []),
      ...(options.provisioner ? ['--provisioner', options.provisioner] : []),
      ...(options.args ?? []),
    ];
    const child = harness.spawn('control-plane', args, { label: 'control-plane', env: options.env, stopFirst: true });
    const ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: 30_000 });
    return new ControlPlaneNode(harness, tls.caCertFile, args, port, internalPort, operatorToken, options, child, ready);
  }

  /** The public API's address (API keys). */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** The internal service's address (service credentials): what agents and the gateway are given. */
  get internalAddress(): string {
    return `127.0.0.1:${this.internalPort}`;
  }

  /** A ControlPlaneService client whose calls carry `secret` (none: no authorization metadata). */
  client(secret?: string): ControlPlaneClient {
    const defaults = secret === undefined ? {} : { '*': { metadata: Metadata({ authorization: `Bearer ${secret}` }) } };
    return createClient(ControlPlaneServiceDefinition, this.channel, defaults);
  }

  /** A ControlPlaneService client that sends `header` as its authorization metadata verbatim. */
  clientWithHeader(header: string): ControlPlaneClient {
    return createClient(ControlPlaneServiceDefinition, this.channel, { '*': { metadata: Metadata({ authorization: header }) } });
  }

  /** A client of the internal service, calling as the operator (the test process's identity). */
  internal(): SpgClient<typeof ControlPlaneInternalServiceDefinition> {
    return createSpgClient(ControlPlaneInternalServiceDefinition, this.internalChannel);
  }

  /** An operator's client: CreateTenant. */
  operator(): ControlPlaneClient {
    return this.client(this.operatorToken);
  }

  /** Stops it (SIGTERM, or SIGKILL with `crash`) and starts it again with the same flags. */
  async restart(options: { crash?: boolean } = {}): Promise<void> {
    if (!this.process.exited) {
      if (options.crash) await this.process.kill9();
      else await this.process.stop();
    }
    this.starts += 1;
    this.process = this.harness.spawn('control-plane', this.args, { label: `control-plane#${this.starts}`, env: this.options.env, stopFirst: true });
    this.readyLine = await this.process.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: 30_000 });
  }
}

/** The error a call failed with (the test fails when it succeeds). */
export async function failure(call: Promise<unknown>): Promise<ClientError> {
  const outcome = await call.then(
    () => null,
    (error: unknown) => error,
  );
  if (!(outcome instanceof ClientError)) throw new Error(`expected a gRPC error, got ${outcome === null ? 'success' : String(outcome)}`);
  return outcome;
}

/**
 * The pageserver under test: started through the harness on a free port, with its local data directory and its
 * object storage in the harness' temporary directories (or an S3 URL given by the test).
 */
import fs from 'node:fs';
import path from 'node:path';
import { PageServiceDefinition, TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import { createSpgClient, openChannel, type SpgClient } from '../../src/lib/grpc/client.js';
import { freePort } from '../../src/lib/net.js';
import type { ComponentProcess, Harness, LogLine } from './process.js';

export interface PageserverOptions {
  /** Object storage URL (default: a directory of the harness). */
  objectStore?: string;
  /** Extra flags, e.g. `--idle-ms 1000`. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

const READY_MESSAGE = 'pageserver ready';

/** A pageserver process under test, restartable on the same port and object storage. */
export class PageserverNode {
  readonly timelines: SpgClient<typeof TimelineServiceDefinition>;
  readonly pages: SpgClient<typeof PageServiceDefinition>;
  private starts = 1;

  private constructor(
    private readonly harness: Harness,
    readonly dataDir: string,
    readonly objectStore: string,
    readonly port: number,
    private readonly options: PageserverOptions,
    public process: ComponentProcess,
    public readyLine: LogLine,
  ) {
    const channel = openChannel(this.address);
    harness.defer(() => channel.close());
    this.timelines = createSpgClient(TimelineServiceDefinition, channel);
    this.pages = createSpgClient(PageServiceDefinition, channel);
  }

  static async start(harness: Harness, options: PageserverOptions = {}): Promise<PageserverNode> {
    const root = harness.tempDir('pageserver').path;
    const dataDir = path.join(root, 'local');
    const objectStore = options.objectStore ?? `file://${path.join(root, 'objects')}`;
    const port = await freePort();
    const child = spawnPageserver(harness, dataDir, objectStore, port, 'pageserver', options);
    const ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: 30_000 });
    return new PageserverNode(harness, dataDir, objectStore, port, options, child, ready);
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Stops it (SIGTERM, or SIGKILL with `crash`), optionally deletes its local disk, and starts it again. */
  async restart(options: { crash?: boolean; wipeLocal?: boolean } = {}): Promise<void> {
    if (!this.process.exited) {
      if (options.crash) await this.process.kill9();
      else await this.process.stop();
    }
    if (options.wipeLocal) fs.rmSync(this.dataDir, { recursive: true, force: true });
    this.starts += 1;
    this.process = spawnPageserver(this.harness, this.dataDir, this.objectStore, this.port, `pageserver#${this.starts}`, this.options);
    this.readyLine = await this.process.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: 60_000 });
  }
}

function spawnPageserver(harness: Harness, dataDir: string, objectStore: string, port: number, label: string, options: PageserverOptions): ComponentProcess {
  const args = [
    '--data-dir', dataDir,
    '--object-store', objectStore,
    '--listen', `127.0.0.1:${port}`,
    '--metrics-listen', '127.0.0.1:0',
    '--upload-interval-ms', '200',
    ...(options.args ?? []),
  ];
  return harness.spawn('pageserver', args, { label, env: options.env });
}

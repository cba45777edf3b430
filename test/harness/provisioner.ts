/**
 * The provisioner under test: started through the harness on a free port with its data directory in the harness'
 * temporary directories, and a client of its ProvisionerService.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ProvisionerServiceDefinition } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { createSpgClient, openChannel, type SpgClient } from '../../src/lib/grpc/client.js';
import type { ComponentProcess, Harness, LogLine } from './process.js';

/** Options of a provisioner start. */
export interface ProvisionerOptions {
  /** Extra flags, e.g. `--max-restarts 1`. */
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

const READY_MESSAGE = 'provisioner ready';

/** A new well-formed compute id. */
export function newComputeId(): string {
  return `cp-${randomBytes(16).toString('hex')}`;
}

/** A new well-formed endpoint id. */
export function newEndpointId(): string {
  return `ep-${randomBytes(16).toString('hex')}`;
}

/** A provisioner process under test. */
export class ProvisionerNode {
  readonly client: SpgClient<typeof ProvisionerServiceDefinition>;

  private constructor(
    harness: Harness,
    readonly dataDir: string,
    readonly port: number,
    readonly process: ComponentProcess,
    readonly readyLine: LogLine,
  ) {
    const channel = openChannel(this.address);
    harness.defer(() => channel.close());
    this.client = createSpgClient(ProvisionerServiceDefinition, channel);
  }

  /** Starts a provisioner and waits for "provisioner ready". */
  static async start(harness: Harness, options: ProvisionerOptions = {}): Promise<ProvisionerNode> {
    const dataDir = harness.tempDir('provisioner').path;
    const args = ['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', ...(options.args ?? [])];
    // Stopped before the safekeepers and the pageserver: its computes stop cleanly only while those run.
    const child = harness.spawn('provisioner', args, { label: 'provisioner', env: options.env, stopFirst: true });
    const ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"` });
    return new ProvisionerNode(harness, dataDir, Number(ready.grpcPort), child, ready);
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** The Postgres data directory of a compute of this provisioner. */
  pgDataDir(computeId: string): string {
    return path.join(this.dataDir, 'computes', computeId, 'pgdata');
  }

  /** The agent's log of a compute (its JSON lines). */
  agentLog(computeId: string): string {
    const file = path.join(this.dataDir, 'logs', `${computeId}.log`);
    return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  }

  /**
   * The pids of the agent processes of computes this provisioner runs (its children running dist/cmd/agent.js with
   * a compute's flags, or standbys that became one: titled `spg99-agent cp-…`); an idle standby is not one.
   */
  agentPids(): number[] {
    const pids: number[] = [];
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^[0-9]+$/.test(entry)) continue;
      try {
        const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
        const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (parent !== this.process.pid) continue;
        const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
        if (cmdline.startsWith('spg99-agent cp-') || (cmdline.includes('cmd/agent.js') && !cmdline.includes('--standby'))) pids.push(Number(entry));
      } catch {
        // Gone meanwhile.
      }
    }
    return pids;
  }
}

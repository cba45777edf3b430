/**
 * The `process` driver: each compute is a local agent process (`node dist/cmd/agent.js`), a child of the
 * provisioner, which runs Postgres as the unprivileged user the agent picks. Its Postgres data directory lives
 * under the provisioner's data directory and is only a cache: every start (and restart) begins from the
 * pageserver's basebackup, and the directory is deleted when the compute stops.
 *
 * Readiness comes from the agent's own log lines ("agent ready", "the compute did not start"), which it writes to
 * stdout as JSON: they arrive the moment the state changes and carry the reason of a failure, where polling
 * ComputeService.GetStatus would add load and latency and still need the log for the cause. Every line is also kept
 * in `<data-dir>/logs/<compute id>.log`.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Channel } from 'nice-grpc';
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { createSpgClient, openChannel } from '../lib/grpc/client.js';
import { failedPrecondition, notFound, ServerError, Status } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import { formatLsn } from '../lib/lsn.js';
import { freePort } from '../lib/net.js';
import { fsyncPath, fsyncTree } from '../lib/fsync-tree.js';
import { isAlive } from '../lib/process.js';
import { STANDBY_FLAG } from '../lib/standby.js';
import { writeTokenFile } from '../lib/grpc/credentials.js';
import {
  agentArgs,
  ComputeState,
  computesGauge,
  restartsTotal,
  sameSpec,
  specDifferences,
  type ComputeCredentials,
  type ComputeDriver,
  type ComputeSpec,
  type ComputeView,
  type RoleVerifier,
  type StopOptions,
  type StopOutcome,
} from './driver.js';


/** Options of the process driver. */
export interface ProcessDriverOptions {
  /** Where computes keep their (cache) data directories and agent logs. */
  dataDir: string;
  log: Logger;
  /** The agent's entry point (default: dist/cmd/agent.js next to this build). */
  agentScript?: string;
  /** Restarts of a crashed agent before the compute is FAILED (default 3). */
  maxRestarts?: number;
  /** The first restart's delay; doubled for each further one (default 500 ms). */
  restartBackoffMs?: number;
  /** A start that is not ready after this long counts as failed (default 180 s). */
  startTimeoutMs?: number;
  /** Stopped and failed computes stay describable this long (default 1 h). */
  retainStoppedMs?: number;
  /** At most this many computes run at once; more answer RESOURCE_EXHAUSTED (default 64). */
  maxComputes?: number;
  /** Grace period of the stops of `close()` (default 30 s). */
  closeGraceMs?: number;
  /** Keep a standby agent process started ahead of need, so that a start skips Node's boot (default true). */
  standby?: boolean;
  /** Keep the data directory of a cleanly stopped compute for the next compute of its timeline (default true). */
  cacheDataDirectories?: boolean;
  /** The computes' identity: each (re)start gets a fresh token in a 0600 file beside its roles file. */
  credentials: ComputeCredentials;
}

/** One compute and its agent process. */
interface ManagedCompute {
  computeId: string;
  spec: ComputeSpec;
  state: ComputeState;
  reason: string;
  pgPort: number;
  grpcPort: number;
  directory: string;
  pgDataDir: string;
  logFile: string;
  startedAt?: Date;
  stateChangedAt: Date;
  restartCount: number;
  child: ChildProcess | null;
  childExited: Promise<void> | null;
  channel: Channel | null;
  /** Set once a stop was asked for: an exit is then expected and not restarted. */
  stopRequested: boolean;
  stopping: Promise<StopOutcome> | null;
  /** Why the current start failed, when the agent said so before exiting. */
  startFailure: string | null;
  /** The agent lost its election: restarting with the same term cannot help. */
  fenced: boolean;
  restartTimer: NodeJS.Timeout | null;
  startTimer: NodeJS.Timeout | null;
}

/** How long after a start the next standby agent is started. */
const STANDBY_DELAY_MS = 500;

const FINAL_STATES: ReadonlySet<ComputeState> = new Set([ComputeState.COMPUTE_STATE_STOPPED, ComputeState.COMPUTE_STATE_FAILED]);

/** Runs computes as local agent processes. */
export class ProcessDriver implements ComputeDriver {
  readonly name = 'process';
  private readonly computes = new Map<string, ManagedCompute>();
  private readonly agentScript: string;
  private readonly maxRestarts: number;
  private readonly restartBackoffMs: number;
  private readonly startTimeoutMs: number;
  private readonly retainStoppedMs: number;
  private readonly maxComputes: number;
  private readonly closeGraceMs: number;
  private closed = false;
  /** An agent process waiting for its command line (see src/agent/standby.ts), or null. */
  private standby: ChildProcess | null = null;
  private standbyTimer: NodeJS.Timeout | null = null;

  constructor(private readonly options: ProcessDriverOptions) {
    // This file runs as dist/src/provisioner/process-driver.js.
    this.agentScript = options.agentScript ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../cmd/agent.js');
    this.maxRestarts = options.maxRestarts ?? 3;
    this.restartBackoffMs = options.restartBackoffMs ?? 500;
    this.startTimeoutMs = options.startTimeoutMs ?? 180_000;
    this.retainStoppedMs = options.retainStoppedMs ?? 3_600_000;
    this.maxComputes = options.maxComputes ?? 64;
    this.closeGraceMs = options.closeGraceMs ?? 30_000;
    if (!fs.existsSync(this.agentScript)) throw new Error(`the agent ${this.agentScript} is missing: build first (npx tsc -p .)`);
    fs.mkdirSync(path.join(options.dataDir, 'computes'), { recursive: true });
    fs.mkdirSync(path.join(options.dataDir, 'logs'), { recursive: true });
    fs.mkdirSync(path.join(options.dataDir, 'cache'), { recursive: true });
    if (options.standby ?? true) this.prepareStandby(0);
  }

  /** The environment of agents: SPG99_* variables are agent flags too, so only those that are not the provisioner's. */
  private agentEnv(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {};
    for (const [name, value] of Object.entries(process.env)) {
      if (!name.startsWith('SPG99_') || name === 'SPG99_LOG_LEVEL' || name === 'SPG99_POSTGRES_OS_USER') env[name] = value;
    }
    return env;
  }

  /** Starts a standby agent after `delayMs` (later than a start in progress, so as not to compete with it for CPU). */
  private prepareStandby(delayMs: number): void {
    if (this.closed || this.standby || this.standbyTimer) return;
    this.standbyTimer = setTimeout(() => {
      this.standbyTimer = null;
      if (this.closed || this.standby) return;
      const child = spawn(process.execPath, ['--enable-source-maps', this.agentScript, STANDBY_FLAG], { stdio: ['pipe', 'pipe', 'pipe'], env: this.agentEnv() });
      child.on('error', () => undefined);
      child.stdin?.on('error', () => undefined);
      child.once('exit', () => {
        if (this.standby === child) this.standby = null;
      });
      this.standby = child;
    }, delayMs);
    this.standbyTimer.unref();
  }

  /** An agent process running `args` (flags after the script): the standby when there is one, else a new one. */
  private launchAgent(args: string[]): ChildProcess {
    const standby = this.standby;
    this.standby = null;
    if (standby && standby.exitCode === null && standby.signalCode === null && standby.stdin?.writable) {
      standby.stdin.write(`${JSON.stringify(args)}\n`);
      // Soon, but after the adopted agent's busiest moment: the next cold start finds it booted.
      this.prepareStandby(STANDBY_DELAY_MS);
      return standby;
    }
    standby?.kill('SIGKILL');
    // Also started through stdin: its stdin stays open for its life, so it stops when this provisioner is gone.
    const child = spawn(process.execPath, ['--enable-source-maps', this.agentScript, STANDBY_FLAG], { stdio: ['pipe', 'pipe', 'pipe'], env: this.agentEnv() });
    child.stdin?.on('error', () => undefined);
    child.stdin!.write(`${JSON.stringify(args)}\n`);
    if (this.options.standby ?? true) this.prepareStandby(STANDBY_DELAY_MS);
    return child;
  }

  /** Where the data directory of a timeline's last clean stop is kept. */
  private cacheDir(timelineId: string): string {
    return path.join(this.options.dataDir, 'cache', timelineId);
  }

  /** Moves the timeline's cached data directory to `pgDataDir` (taking it: one compute only); answers its LSN. */
  private takeCachedData(timelineId: string, pgDataDir: string): bigint | null {
    if (!(this.options.cacheDataDirectories ?? true)) return null;
    const directory = this.cacheDir(timelineId);
    try {
      const { lsn } = JSON.parse(fs.readFileSync(path.join(directory, 'cached.json'), 'utf8')) as { lsn: string };
      fs.renameSync(path.join(directory, 'pgdata'), pgDataDir);
      return BigInt(lsn);
    } catch {
      return null;
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  }

  /** Keeps a cleanly stopped compute's data directory (it ends at `finalLsn`) for the next compute of its timeline. */
  private async storeCachedData(compute: ManagedCompute, finalLsn: bigint): Promise<void> {
    if (!(this.options.cacheDataDirectories ?? true) || finalLsn === 0n || !fs.existsSync(compute.pgDataDir)) return;
    const directory = this.cacheDir(compute.spec.timelineId);
    try {
      fs.rmSync(directory, { recursive: true, force: true });
      fs.mkdirSync(directory, { recursive: true });
      fs.renameSync(compute.pgDataDir, path.join(directory, 'pgdata'));
      // Computes run Postgres with fsync=off (the safekeepers hold what is committed): the directory reaches the
      // disk here, before it is called a cache, so that a machine crash later cannot leave a torn one behind.
      await fsyncTree(path.join(directory, 'pgdata'));
      // Written last (and made durable): a directory without it is not a cache, whatever else it holds.
      const marker = path.join(directory, 'cached.json');
      fs.writeFileSync(marker, `${JSON.stringify({ lsn: finalLsn.toString(), computeId: compute.computeId, cachedAt: new Date().toISOString() })}\n`);
      await fsyncPath(marker);
      await fsyncPath(directory);
    } catch (error) {
      this.options.log.warn({ err: error, computeId: compute.computeId }, 'could not keep the data directory of a stopped compute; the next start uses a basebackup');
      fs.rmSync(directory, { recursive: true, force: true });
    }
  }

  async ensure(computeId: string, spec: ComputeSpec): Promise<ComputeView> {
    if (this.closed) throw new ServerError(Status.UNAVAILABLE, 'the provisioner is shutting down; retry on another one');
    this.forgetOld();
    const existing = this.computes.get(computeId);
    if (existing) {
      if (!sameSpec(existing.spec, spec)) {
        throw failedPrecondition(
          `compute ${computeId} exists with another spec (differs in ${specDifferences(existing.spec, spec).join(', ')}): ` +
            'a compute is immutable; choose a new compute id for a new spec',
        );
      }
      return this.view(existing);
    }
    const active = [...this.computes.values()].filter((compute) => !FINAL_STATES.has(compute.state)).length;
    if (active >= this.maxComputes) {
      throw new ServerError(Status.RESOURCE_EXHAUSTED, `this provisioner already runs ${active} computes (its limit, --max-computes); stop one or use another provisioner`);
    }
    const directory = path.join(this.options.dataDir, 'computes', computeId);
    const compute: ManagedCompute = {
      computeId,
      spec,
      state: ComputeState.COMPUTE_STATE_PENDING,
      reason: 'allocating ports',
      pgPort: 0,
      grpcPort: 0,
      directory,
      pgDataDir: path.join(directory, 'pgdata'),
      logFile: path.join(this.options.dataDir, 'logs', `${computeId}.log`),
      stateChangedAt: new Date(),
      restartCount: 0,
      child: null,
      childExited: null,
      channel: null,
      stopRequested: false,
      stopping: null,
      startFailure: null,
      fenced: false,
      restartTimer: null,
      startTimer: null,
    };
    // Registered before the first await, so a concurrent retry of the same ensure finds it.
    this.computes.set(computeId, compute);
    this.updateGauge();
    try {
      compute.pgPort = await freePort();
      compute.grpcPort = await freePort();
      while (compute.grpcPort === compute.pgPort) compute.grpcPort = await freePort();
      if (compute.stopRequested) return this.view(compute);
      this.spawnAgent(compute);
    } catch (error) {
      this.setState(compute, ComputeState.COMPUTE_STATE_FAILED, `could not start the agent: ${(error as Error).message}`);
      throw error;
    }
    return this.view(compute);
  }

  async stop(computeId: string, options: StopOptions): Promise<StopOutcome> {
    this.forgetOld();
    const compute = this.get(computeId);
    if (compute.stopping) return compute.stopping;
    if (FINAL_STATES.has(compute.state)) return { compute: this.view(compute), finalLsn: 0n };
    compute.stopping = this.stopCompute(compute, options);
    return compute.stopping;
  }

  describe(computeId: string): ComputeView {
    this.forgetOld();
    return this.view(this.get(computeId));
  }

  list(endpointId?: string): ComputeView[] {
    this.forgetOld();
    return [...this.computes.values()]
      .filter((compute) => !endpointId || compute.spec.endpointId === endpointId)
      .map((compute) => this.view(compute));
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.standbyTimer) clearTimeout(this.standbyTimer);
    this.standby?.kill('SIGTERM');
    this.standby = null;
    await Promise.all(
      [...this.computes.values()]
        .filter((compute) => !FINAL_STATES.has(compute.state))
        .map((compute) => this.stop(compute.computeId, { kill: false, graceMs: this.closeGraceMs }).catch((error: unknown) => {
          this.options.log.error({ err: error, computeId: compute.computeId }, 'could not stop a compute at shutdown');
        })),
    );
  }

  private get(computeId: string): ManagedCompute {
    const compute = this.computes.get(computeId);
    if (!compute) {
      throw notFound(`compute ${computeId} is not known to this provisioner (never ensured here, or stopped long enough ago to be forgotten)`);
    }
    return compute;
  }

  private view(compute: ManagedCompute): ComputeView {
    const running = compute.state === ComputeState.COMPUTE_STATE_RUNNING;
    return {
      computeId: compute.computeId,
      spec: compute.spec,
      state: compute.state,
      reason: compute.reason,
      postgresAddress: running ? `127.0.0.1:${compute.pgPort}` : '',
      agentAddress: compute.child && compute.grpcPort ? `127.0.0.1:${compute.grpcPort}` : '',
      driver: this.name,
      startedAt: compute.startedAt,
      stateChangedAt: compute.stateChangedAt,
      restartCount: compute.restartCount,
    };
  }

  private setState(compute: ManagedCompute, state: ComputeState, reason: string): void {
    if (compute.state !== state || compute.reason !== reason) {
      this.options.log.info({ computeId: compute.computeId, state: ComputeState[state], reason }, 'compute state');
    }
    if (compute.state !== state) compute.stateChangedAt = new Date();
    compute.state = state;
    compute.reason = reason;
    this.updateGauge();
  }

  private updateGauge(): void {
    const counts = new Map<string, number>();
    for (const compute of this.computes.values()) counts.set(ComputeState[compute.state], (counts.get(ComputeState[compute.state]) ?? 0) + 1);
    for (const state of Object.values(ComputeState)) {
      if (typeof state === 'string' && state !== 'UNRECOGNIZED') computesGauge.set({ state }, counts.get(state) ?? 0);
    }
  }

  /** Forgets stopped and failed computes older than the retention. */
  private forgetOld(): void {
    const horizon = Date.now() - this.retainStoppedMs;
    for (const [computeId, compute] of this.computes) {
      if (FINAL_STATES.has(compute.state) && compute.stateChangedAt.getTime() < horizon) this.computes.delete(computeId);
    }
  }

  /** Starts the agent from an empty data directory (the pageserver's basebackup). */
  private spawnAgent(compute: ManagedCompute): void {
    const { spec, computeId } = compute;
    fs.rmSync(compute.pgDataDir, { recursive: true, force: true });
    fs.mkdirSync(compute.directory, { recursive: true });
    const cachedLsn = compute.restartCount === 0 ? this.takeCachedData(spec.timelineId, compute.pgDataDir) : null;
    const rolesFile = writeRolesFile(compute.directory, spec.roles);
    const trustFile = path.join(compute.directory, 'trust.json');
    fs.writeFileSync(trustFile, this.options.credentials.trustDocument, { mode: 0o600 });
    const credentialFile = path.join(compute.directory, 'credential.token');
    writeTokenFile(credentialFile, this.options.credentials.issue({ timelineId: spec.timelineId, endpointId: spec.endpointId, computeId }));
    const args = agentArgs(computeId, spec, {
      trustFile,
      credentialFile,
      agentScript: this.agentScript,
      pgDataDir: compute.pgDataDir,
      pgPort: compute.pgPort,
      listen: `127.0.0.1:${compute.grpcPort}`,
      metricsListen: '127.0.0.1:0',
      rolesFile,
    }).slice(2);
    if (cachedLsn !== null) args.push('--cached-data-lsn', cachedLsn.toString());
    const child = this.launchAgent(args);
    compute.child = child;
    compute.startFailure = null;
    compute.startedAt = new Date();
    compute.channel ??= openChannel(`127.0.0.1:${compute.grpcPort}`);
    this.setState(compute, ComputeState.COMPUTE_STATE_STARTING, compute.restartCount === 0 ? 'the agent is starting' : `restart ${compute.restartCount}: the agent is starting`);
    const logStream = fs.createWriteStream(compute.logFile, { flags: 'a' });
    const stdout = readline.createInterface({ input: child.stdout! });
    const stderr = readline.createInterface({ input: child.stderr! });
    stdout.on('line', (line) => {
      logStream.write(`${line}\n`);
      this.onAgentLine(compute, child, line);
    });
    stderr.on('line', (line) => logStream.write(`[stderr] ${line}\n`));
    compute.childExited = new Promise((resolve) => {
      child.once('close', (code, signal) => {
        logStream.end();
        void this.onAgentExit(compute, child, code, signal).finally(resolve);
      });
      child.once('error', (error) => {
        compute.startFailure = `could not run the agent: ${error.message}`;
      });
    });
    if (compute.startTimer) clearTimeout(compute.startTimer);
    compute.startTimer = setTimeout(() => {
      if (compute.child !== child || compute.state !== ComputeState.COMPUTE_STATE_STARTING) return;
      compute.startFailure = `not ready within ${this.startTimeoutMs} ms`;
      child.kill('SIGKILL');
    }, this.startTimeoutMs);
    compute.startTimer.unref();
    this.options.log.info({ computeId, pid: child.pid, pgPort: compute.pgPort, grpcPort: compute.grpcPort, term: String(spec.term) }, 'agent started');
  }

  private onAgentLine(compute: ManagedCompute, child: ChildProcess, text: string): void {
    if (compute.child !== child || compute.stopRequested) return;
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return;
    }
    if (line.msg === 'agent ready') {
      if (compute.startTimer) clearTimeout(compute.startTimer);
      this.setState(compute, ComputeState.COMPUTE_STATE_RUNNING, compute.restartCount === 0 ? 'Postgres accepts connections' : `Postgres accepts connections (after restart ${compute.restartCount})`);
    } else if (line.msg === 'the compute did not start: fenced' || line.msg === 'the compute did not start') {
      const error = line.err as { message?: string } | undefined;
      compute.startFailure = `the agent could not start the compute: ${String(line.reason ?? error?.message ?? line.state ?? 'no reason given')}`;
      compute.fenced = line.msg.endsWith('fenced');
      // The agent stays up after a failed start (its status stays readable); it is of no use to us.
      child.kill('SIGTERM');
    }
  }

  private async onAgentExit(compute: ManagedCompute, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (compute.child !== child) return;
    compute.child = null;
    if (compute.startTimer) clearTimeout(compute.startTimer);
    // Killed with SIGKILL, the agent leaves its Postgres running: that one must go before anything restarts.
    await this.stopOrphanPostgres(compute);
    if (compute.stopRequested) return;
    const exit = signal ? `signal ${signal}` : `code ${code}`;
    const cause = compute.startFailure ?? `the agent exited unexpectedly with ${exit}`;
    this.options.log.warn({ computeId: compute.computeId, exit, cause, restartCount: compute.restartCount }, 'agent exited');
    if (compute.fenced || compute.restartCount >= this.maxRestarts || this.closed) {
      const why = compute.fenced ? cause : `${cause}; gave up after ${compute.restartCount} restarts`;
      fs.rmSync(compute.directory, { recursive: true, force: true });
      compute.channel?.close();
      compute.channel = null;
      this.setState(compute, ComputeState.COMPUTE_STATE_FAILED, why);
      return;
    }
    const delayMs = this.restartBackoffMs * 2 ** compute.restartCount;
    compute.restartCount += 1;
    restartsTotal.inc();
    this.setState(compute, ComputeState.COMPUTE_STATE_STARTING, `restart ${compute.restartCount} of ${this.maxRestarts} in ${delayMs} ms: ${cause}`);
    compute.restartTimer = setTimeout(() => {
      compute.restartTimer = null;
      if (compute.stopRequested) return;
      try {
        this.spawnAgent(compute);
      } catch (error) {
        this.setState(compute, ComputeState.COMPUTE_STATE_FAILED, `could not restart the agent: ${(error as Error).message}`);
      }
    }, delayMs);
  }

  private async stopCompute(compute: ManagedCompute, options: StopOptions): Promise<StopOutcome> {
    const { log } = this.options;
    const wasRunning = compute.state === ComputeState.COMPUTE_STATE_RUNNING;
    compute.stopRequested = true;
    if (compute.restartTimer) clearTimeout(compute.restartTimer);
    compute.restartTimer = null;
    this.setState(compute, ComputeState.COMPUTE_STATE_STOPPING, options.kill ? 'kill requested' : 'stop requested');
    const deadline = Date.now() + options.graceMs;
    let finalLsn = 0n;
    const child = compute.child;
    if (child && compute.childExited) {
      if (!options.kill && wasRunning && compute.channel) {
        try {
          const client = createSpgClient(ComputeServiceDefinition, compute.channel);
          ({ finalLsn } = await client.stop({ checkpoint: true }, { deadline: new Date(deadline) }));
          log.info({ computeId: compute.computeId, finalLsn: formatLsn(finalLsn) }, 'Postgres stopped cleanly');
        } catch (error) {
          log.warn({ computeId: compute.computeId, error: (error as Error).message }, 'the agent did not stop cleanly in time; stopping its process');
        }
      }
      child.kill(options.kill ? 'SIGKILL' : 'SIGTERM');
      const killTimer = setTimeout(() => {
        log.warn({ computeId: compute.computeId, graceMs: options.graceMs }, 'the agent is still running after the grace period: SIGKILL');
        child.kill('SIGKILL');
      }, Math.max(0, deadline - Date.now()));
      await compute.childExited;
      clearTimeout(killTimer);
    }
    await this.stopOrphanPostgres(compute);
    // A clean stop leaves a data directory that ends at the final LSN: the next start of the timeline may use it.
    if (finalLsn > 0n) await this.storeCachedData(compute, finalLsn);
    fs.rmSync(compute.directory, { recursive: true, force: true });
    compute.channel?.close();
    compute.channel = null;
    this.setState(compute, ComputeState.COMPUTE_STATE_STOPPED, options.kill ? 'killed by request' : 'stopped by request');
    return { compute: this.view(compute), finalLsn };
  }

  /** Stops a Postgres left running by a dead agent (immediate shutdown, then SIGKILL), and waits until it is gone. */
  private async stopOrphanPostgres(compute: ManagedCompute): Promise<void> {
    const pid = postmasterPid(compute.pgDataDir);
    if (pid === null) return;
    this.options.log.warn({ computeId: compute.computeId, pid }, 'stopping a Postgres its agent left behind');
    signalProcess(pid, 'SIGQUIT');
    const deadline = Date.now() + 5000;
    while (isAlive(pid)) {
      if (Date.now() > deadline) {
        signalProcess(pid, 'SIGKILL');
        if (Date.now() > deadline + 5000) throw new Error(`Postgres (pid ${pid}) of compute ${compute.computeId} does not exit`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/**
 * Writes the spec's roles to `<directory>/roles.json` for the agent's --roles-file, readable by the provisioner's user
 * only (0600, also when the file existed: verifiers allow offline guessing of passwords); returns its path.
 */
export function writeRolesFile(directory: string, roles: readonly RoleVerifier[]): string {
  const file = path.join(directory, 'roles.json');
  const temporary = `${file}.tmp`;
  fs.rmSync(temporary, { force: true });
  fs.writeFileSync(temporary, `${JSON.stringify(roles.map(({ roleName, scramVerifier }) => ({ roleName, scramVerifier })), null, 2)}\n`, {
    mode: 0o600,
    flag: 'wx',
  });
  fs.renameSync(temporary, file);
  return file;
}

/** The postmaster's pid from `pgDataDir`, when it still runs. */
export function postmasterPid(pgDataDir: string): number | null {
  try {
    const pid = Number(fs.readFileSync(path.join(pgDataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 && isAlive(pid) ? pid : null;
  } catch {
    return null;
  }
}

function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/**
 * Runs an unmodified Postgres: initdb, start with given settings, wait until it accepts connections, stop.
 * Postgres runs as an unprivileged OS user when this process is root (see os-user.ts). Its log goes to a file
 * beside the data directory; the last lines are kept to explain a failed start.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { abortable, delay } from 'abort-controller-x';
import type { Logger } from '../log.js';
import { locatePostgres } from './binaries.js';
import { postgresOsUser, prepareDirectoryFor } from './os-user.js';

/** How to stop: `smart` waits for clients, `fast` disconnects them and checkpoints, `immediate` does neither. */
export type StopMode = 'smart' | 'fast' | 'immediate';

const STOP_SIGNALS: Record<StopMode, NodeJS.Signals> = { smart: 'SIGTERM', fast: 'SIGINT', immediate: 'SIGQUIT' };

/** True when `dataDir` holds an initialized cluster. */
export function isInitialized(dataDir: string): boolean {
  return fs.existsSync(path.join(dataDir, 'PG_VERSION'));
}

/** How initdb makes a cluster. */
export interface InitdbOptions {
  /** The bootstrap superuser (default `postgres`). */
  superuser?: string;
  /** Page checksums (PG18's default is on; SPG99's timelines default to off, see docs/rfcs). */
  dataChecksums?: boolean;
  /** initdb's --locale (default C). */
  locale?: string;
  /** Another installation's bin directory (default: the npm package's PostgreSQL 18), see {@link binariesIn}. */
  binDir?: string;
}

/**
 * The binaries to run and their environment: the npm package's (with its own libraries), or those of another
 * installation in `binDir`, e.g. Debian's `/usr/lib/postgresql/15/bin` for a benchmark's reference, which use the
 * system's libraries.
 */
function binariesIn(binDir: string | undefined): { postgres: string; initdb: string; env: NodeJS.ProcessEnv } {
  if (binDir === undefined) {
    const binaries = locatePostgres();
    return { postgres: binaries.postgres, initdb: binaries.initdb, env: postgresEnv() };
  }
  return {
    postgres: path.join(binDir, 'postgres'),
    initdb: path.join(binDir, 'initdb'),
    env: { PATH: process.env.PATH, LANG: 'C', LC_ALL: 'C', TZ: 'UTC' },
  };
}

/** Creates a cluster in `dataDir` with trust authentication on localhost. */
export async function initdb(dataDir: string, log: Logger, options: InitdbOptions = {}): Promise<void> {
  const binaries = binariesIn(options.binDir);
  const user = postgresOsUser();
  prepareDirectoryFor(user, dataDir);
  const output: string[] = [];
  const child = spawn(
    binaries.initdb,
    [
      '-D', dataDir, '-U', options.superuser ?? 'postgres', '--auth=trust', '--encoding=UTF8', `--locale=${options.locale ?? 'C'}`,
      '--no-instructions', ...(options.dataChecksums === false ? ['--no-data-checksums'] : []),
    ],
    { uid: user.uid, gid: user.gid, stdio: ['ignore', 'pipe', 'pipe'], env: binaries.env },
  );
  child.stdout?.on('data', (chunk: Buffer) => output.push(chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => output.push(chunk.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (exitCode) => resolve(exitCode));
  });
  if (code !== 0) throw new Error(`initdb of ${dataDir} failed (exit ${code}): ${output.join('').trim().slice(-2000)}`);
  log.info({ dataDir, osUser: user.name }, 'initdb done');
}

/** Options of a Postgres start. */
export interface PostgresStartOptions {
  dataDir: string;
  port: number;
  /** Extra `-c name=value` settings. */
  settings?: Record<string, string | number>;
  /** Where Postgres writes its log (default: `<dataDir>.log`). */
  logFile?: string;
  /** How long to wait for it to accept connections. */
  startTimeoutMs?: number;
  /** Also listen on a Unix socket in this directory (for the agent's own connections: cheaper than TCP). */
  socketDir?: string;
  /** Another installation's bin directory (default: the npm package's PostgreSQL 18). */
  binDir?: string;
  log: Logger;
}

/** A running postmaster. */
export class PostgresServer {
  /** Resolves with the exit code (or signal name) when the postmaster exits. */
  readonly exited: Promise<number | string>;
  private exitedValue: number | string | null = null;

  private constructor(
    private readonly child: ChildProcess,
    readonly dataDir: string,
    readonly port: number,
    readonly logFile: string,
    private readonly log: Logger,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitedValue = code ?? signal ?? 'unknown';
        resolve(this.exitedValue);
      });
    });
  }

  /** Starts Postgres on 127.0.0.1:`port` and resolves once it accepts connections. */
  static async start(options: PostgresStartOptions): Promise<PostgresServer> {
    const binaries = binariesIn(options.binDir);
    const user = postgresOsUser();
    prepareDirectoryFor(user, options.dataDir);
    if (options.socketDir) prepareDirectoryFor(user, options.socketDir);
    const logFile = options.logFile ?? `${options.dataDir}.log`;
    const logFd = fs.openSync(logFile, 'a');
    const settings: Record<string, string | number> = {
      listen_addresses: '127.0.0.1',
      port: options.port,
      unix_socket_directories: options.socketDir ?? '',
      ...options.settings,
    };
    const args = ['-D', options.dataDir];
    for (const [name, value] of Object.entries(settings)) args.push('-c', `${name}=${value}`);
    const child = spawn(binaries.postgres, args, {
      uid: user.uid,
      gid: user.gid,
      stdio: ['ignore', logFd, logFd],
      env: binaries.env,
    });
    fs.closeSync(logFd);
    const server = new PostgresServer(child, options.dataDir, options.port, logFile, options.log);
    const controller = new AbortController();
    const timeoutMs = options.startTimeoutMs ?? 60_000;
    try {
      await abortable(controller.signal, server.waitReady(controller.signal, timeoutMs));
    } catch (error) {
      controller.abort();
      if (server.exitedValue === null) child.kill('SIGKILL');
      throw new Error(`Postgres in ${options.dataDir} did not start: ${(error as Error).message}; log tail:\n${tailOf(logFile)}`);
    }
    options.log.info({ dataDir: options.dataDir, port: options.port, pid: child.pid, osUser: user.name }, 'Postgres is accepting connections');
    return server;
  }

  /** The postmaster's pid. */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** True while the postmaster runs. */
  get running(): boolean {
    return this.exitedValue === null;
  }

  /**
   * Stops Postgres. `immediate` is used for fencing: no checkpoint, clients cut at once; the postmaster is killed
   * outright if it has not exited after `killAfterMs`.
   */
  async stop(mode: StopMode, killAfterMs = mode === 'immediate' ? 500 : 60_000): Promise<void> {
    if (this.exitedValue !== null) return;
    this.child.kill(STOP_SIGNALS[mode]);
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), killAfterMs);
    });
    if ((await Promise.race([this.exited, killed])) === 'timeout') {
      this.log.warn({ mode, killAfterMs }, 'Postgres did not stop in time; killing it');
      this.child.kill('SIGKILL');
      await this.exited;
    }
    clearTimeout(timer);
    this.log.info({ mode, exit: this.exitedValue }, 'Postgres stopped');
  }

  /** Waits until postmaster.pid says "ready" (the postmaster's own readiness report). */
  private async waitReady(signal: AbortSignal, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const pidFile = path.join(this.dataDir, 'postmaster.pid');
    for (;;) {
      if (this.exitedValue !== null) throw new Error(`the postmaster exited (${this.exitedValue})`);
      try {
        const lines = fs.readFileSync(pidFile, 'utf8').split('\n');
        // Line 1 is the pid, line 8 the status: "ready" for a primary, "standby" for a hot standby that accepts
        // read-only connections.
        const status = lines[7]?.trim();
        if (Number(lines[0]) === this.child.pid && (status === 'ready' || status === 'standby')) return;
      } catch {
        // Not written yet.
      }
      if (Date.now() > deadline) throw new Error(`not ready after ${timeoutMs} ms`);
      await delay(signal, 10);
    }
  }
}

function postgresEnv(): NodeJS.ProcessEnv {
  const binaries = locatePostgres();
  return { PATH: process.env.PATH, LANG: 'C', LC_ALL: 'C', LD_LIBRARY_PATH: binaries.libDir, TZ: 'UTC' };
}

function tailOf(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-30).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Test fixtures for real SPG99 processes (Neon's `test_runner/fixtures` is the model): a component started as
 * `node dist/cmd/<name>.js` with its JSON log lines parsed and kept, readiness awaited on a log line, ERROR and FATAL
 * lines recorded so a test fails when one was not expected, temporary directories, gRPC health readiness, and a
 * `Harness` that tears down everything a test started. Nothing here sleeps for a fixed time: it waits for an event,
 * or polls with a deadline.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createClient, type Channel } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';
import { identityEnv } from './credentials.js';

/** The components that hold a key of their own: the harness hands each its role's key and the trust file. */
const KEY_COMPONENTS = new Set(['safekeeper', 'pageserver', 'provisioner', 'gateway', 'control-plane'] as const);

export { HealthCheckResponse_ServingStatus };

/** The repository root (this file runs as dist/test/harness/process.js). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** One JSON log line of a component (pino, with the level as a label). */
export interface LogLine {
  level: string;
  msg: string;
  [field: string]: unknown;
}

/** How a process ended. */
export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Options of {@link waitFor}. */
export interface WaitOptions {
  /** What is awaited, for the timeout message ("flush LSN 0/1000040 on sk-1"). */
  what: string;
  /** Give up after this long (default 30 s). */
  timeoutMs?: number;
  /** Time between two checks (default 20 ms). */
  intervalMs?: number;
}

/**
 * Polls `check` until it returns something other than `undefined` or `false`, and returns that. A check that
 * throws counts as "not yet"; its last error is quoted when the deadline passes.
 */
export async function waitFor<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  { what, timeoutMs = 30_000, intervalMs = 20 }: WaitOptions,
): Promise<Exclude<T, undefined | false>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as Exclude<T, undefined | false>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const cause = lastError === undefined ? '' : `; last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** A temporary directory under the OS temp dir, removed by `remove()`. */
export class TempDir {
  private constructor(readonly path: string) {}

  /** Creates `<tmp>/spg99-<prefix>-XXXXXX`. */
  static create(prefix: string): TempDir {
    return new TempDir(fs.mkdtempSync(path.join(os.tmpdir(), `spg99-${prefix}-`)));
  }

  /** A path inside the directory. */
  join(...parts: string[]): string {
    return path.join(this.path, ...parts);
  }

  /** Removes the directory and everything in it. */
  remove(): void {
    fs.rmSync(this.path, { recursive: true, force: true });
  }
}

/** Options of a component start. */
export interface SpawnOptions {
  /** The name used in messages and failure reports (default: the command). */
  label?: string;
  /** Environment variables added to the test runner's. */
  env?: NodeJS.ProcessEnv;
  /** Runs this script instead of `dist/cmd/<command>.js` (the harness' own tests use it). */
  script?: string;
  /** Stop it at teardown before the others (a compute, whose clean stop needs its safekeepers). */
  stopFirst?: boolean;
}

/** Options of {@link ComponentProcess.waitForLine}. */
export interface WaitForLineOptions {
  /** What is awaited, for messages (default "a matching log line"). */
  what?: string;
  /** Give up after this long (default 30 s). */
  timeoutMs?: number;
  /** Only lines from this index of `lines` on count (e.g. `process.lines.length` before an action). */
  fromIndex?: number;
}

/**
 * A running component: `node dist/cmd/<command>.js ...args`. Every stdout line that is JSON is kept in `lines`;
 * anything else (stderr, stray text) in `rawOutput`.
 */
export class ComponentProcess {
  /** Parsed JSON log lines, in order. */
  readonly lines: LogLine[] = [];
  /** Output that is not a JSON log line: stderr, and non-JSON stdout. */
  readonly rawOutput: string[] = [];
  /** Patterns of ERROR/FATAL lines this test expects (matched against the whole JSON line). */
  readonly expectedErrors: RegExp[] = [];
  readonly label: string;
  /** Stopped before the others at teardown. */
  readonly stopFirst: boolean;
  /** Everything it printed, in order, raw lines marked with their source. */
  private readonly transcript: string[] = [];
  private readonly child: ChildProcess;
  private exitValue: ProcessExit | null = null;
  private readonly exitPromise: Promise<ProcessExit>;
  private readonly listeners = new Set<() => void>();

  /** Starts the component. Prefer {@link Harness.spawn}, which also tears it down. */
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    options: SpawnOptions = {},
  ) {
    this.label = options.label ?? command;
    this.stopFirst = options.stopFirst ?? false;
    const script = options.script ?? path.join(REPO_ROOT, 'dist', 'cmd', `${command}.js`);
    if (!fs.existsSync(script)) throw new Error(`${script} does not exist: build first with \`npx tsc -p .\``);
    // SPG99_CPU_PROF_DIR: every component writes a V8 CPU profile there when it exits (for benchmarks).
    const profile = process.env.SPG99_CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.SPG99_CPU_PROF_DIR}`] : [];
    this.child = spawn(process.execPath, ['--enable-source-maps', ...profile, script, ...args], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        ...(KEY_COMPONENTS.has(command as never) ? identityEnv(command as 'safekeeper') : {}),
        ...options.env,
      },
    });
    let stdoutRest = '';
    let stderrRest = '';
    this.child.stdout?.setEncoding('utf8');
    this.child.stderr?.setEncoding('utf8');
    this.child.stdout?.on('data', (chunk: string) => {
      const parts = (stdoutRest + chunk).split('\n');
      stdoutRest = parts.pop() ?? '';
      for (const part of parts) this.takeStdout(part);
    });
    this.child.stderr?.on('data', (chunk: string) => {
      const parts = (stderrRest + chunk).split('\n');
      stderrRest = parts.pop() ?? '';
      for (const part of parts) this.takeRaw(part, 'stderr');
    });
    this.exitPromise = new Promise((resolve) => {
      // 'close' (not 'exit') comes after the pipes are drained, so no last line is lost.
      this.child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
        if (stdoutRest) this.takeStdout(stdoutRest);
        if (stderrRest) this.takeRaw(stderrRest, 'stderr');
        this.exitValue = { code, signal };
        this.notify();
        resolve(this.exitValue);
      });
      this.child.once('error', (error) => {
        this.takeRaw(`could not start: ${error.message}`, 'harness');
        this.exitValue = { code: null, signal: null };
        this.notify();
        resolve(this.exitValue);
      });
    });
  }

  /** The operating system's process id. */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** How it ended, or null while it runs. */
  get exit(): ProcessExit | null {
    return this.exitValue;
  }

  /** Whether it has ended. */
  get exited(): boolean {
    return this.exitValue !== null;
  }

  /** Resolves when the process has ended. */
  waitExit(): Promise<ProcessExit> {
    return this.exitPromise;
  }

  /** The first line matching `predicate` (from `fromIndex`), or undefined. */
  findLine(predicate: (line: LogLine) => boolean, fromIndex = 0): LogLine | undefined {
    for (let index = fromIndex; index < this.lines.length; index += 1) {
      if (predicate(this.lines[index])) return this.lines[index];
    }
    return undefined;
  }

  /**
   * Waits for a log line matching `predicate`. Rejects, quoting the tail of the output, when the process exits
   * first or when `timeoutMs` passes.
   */
  waitForLine(predicate: (line: LogLine) => boolean, options: WaitForLineOptions = {}): Promise<LogLine> {
    const { what = 'a matching log line', timeoutMs = 30_000, fromIndex = 0 } = options;
    return new Promise((resolve, reject) => {
      let scanned = fromIndex;
      const finish = (outcome: () => void) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        outcome();
      };
      const check = () => {
        for (; scanned < this.lines.length; scanned += 1) {
          const line = this.lines[scanned];
          if (predicate(line)) return finish(() => resolve(line));
        }
        if (this.exitValue) {
          const exit = JSON.stringify(this.exitValue);
          finish(() => reject(new Error(`${this.label} exited ${exit} before ${what}; its last output:\n${this.tail()}`)));
        }
      };
      const timer = setTimeout(
        () => finish(() => reject(new Error(`${this.label}: no ${what} within ${timeoutMs} ms; its last output:\n${this.tail()}`))),
        timeoutMs,
      );
      this.listeners.add(check);
      check();
    });
  }

  /** Every ERROR or FATAL line. */
  errorLines(): LogLine[] {
    return this.lines.filter((line) => line.level === 'error' || line.level === 'fatal');
  }

  /** ERROR or FATAL lines that match none of `expectedErrors` (nor `alsoExpected`). */
  unexpectedErrors(alsoExpected: readonly RegExp[] = []): LogLine[] {
    const patterns = [...this.expectedErrors, ...alsoExpected];
    return this.errorLines().filter((line) => {
      const text = JSON.stringify(line);
      return !patterns.some((pattern) => pattern.test(text));
    });
  }

  /** The last `count` lines of output (JSON lines and raw output, in arrival order), for failure messages. */
  tail(count = 30): string {
    return this.transcript.slice(-count).join('\n');
  }

  /** SIGTERM, then SIGKILL if it is still running after `graceMs`; resolves with the exit. */
  async stop(graceMs = 10_000): Promise<ProcessExit> {
    if (this.exitValue) return this.exitValue;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      this.takeRaw(`still running ${graceMs} ms after SIGTERM: sending SIGKILL`, 'harness');
      this.child.kill('SIGKILL');
    }, graceMs);
    try {
      return await this.exitPromise;
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL (a crash); resolves once it is gone. */
  async kill9(): Promise<ProcessExit> {
    if (this.exitValue) return this.exitValue;
    this.child.kill('SIGKILL');
    return this.exitPromise;
  }

  private takeStdout(text: string): void {
    if (!text.trim()) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
      const line = parsed as Record<string, unknown>;
      const normalized: LogLine = { ...line, level: String(line.level ?? ''), msg: String(line.msg ?? '') };
      this.lines.push(normalized);
      this.transcript.push(text);
      this.notify();
    } else {
      this.takeRaw(text, 'stdout');
    }
  }

  private takeRaw(text: string, source: 'stdout' | 'stderr' | 'harness'): void {
    if (!text.trim()) return;
    this.rawOutput.push(text);
    this.transcript.push(`[${source}] ${text}`);
    this.notify();
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }
}

/** Options of {@link Harness.teardown}. */
export interface TeardownOptions {
  /** Print every process' output tail to stderr (e.g. because the test failed). */
  dumpLogs?: boolean;
}

/**
 * Everything one test started: processes, temporary directories, and other cleanups (gRPC channels, streams).
 * `teardown()` undoes all of it, even after a failure, and then throws when a process logged an ERROR no pattern in
 * `expectedErrors` (its own or the harness') matches. Set `SPG99_KEEP_TEST_DIRS=1` to keep the directories.
 */
export class Harness {
  /** Patterns of ERROR/FATAL lines expected from any process of this harness. */
  readonly expectedErrors: RegExp[] = [];
  private readonly processes: ComponentProcess[] = [];
  private readonly directories: TempDir[] = [];
  private readonly cleanups: Array<() => unknown> = [];
  private tornDown = false;

  /** Starts `node dist/cmd/<command>.js ...args`; it is stopped at teardown. */
  spawn(command: string, args: readonly string[], options: SpawnOptions = {}): ComponentProcess {
    this.checkOpen();
    const child = new ComponentProcess(command, args, options);
    this.processes.push(child);
    return child;
  }

  /** Creates a temporary directory; it is removed at teardown. */
  tempDir(prefix: string): TempDir {
    this.checkOpen();
    const directory = TempDir.create(prefix);
    this.directories.push(directory);
    return directory;
  }

  /** Runs `cleanup` at teardown, before processes stop (cleanups run newest first). */
  defer(cleanup: () => unknown): void {
    this.checkOpen();
    this.cleanups.push(cleanup);
  }

  /** Every process started, in order (restarted components appear once per start). */
  get started(): readonly ComponentProcess[] {
    return this.processes;
  }

  /**
   * Runs the cleanups, stops every process (SIGTERM, SIGKILL after 10 s), removes the directories, and throws
   * if some process logged an unexpected ERROR/FATAL line.
   */
  async teardown(options: TeardownOptions = {}): Promise<void> {
    if (this.tornDown) return;
    this.tornDown = true;
    const problems: string[] = [];
    // Clients of the others first (agents, the provisioner, the control plane): they must not see Redis or a
    // safekeeper vanish under them and log errors while they stop.
    await Promise.all(this.processes.filter((child) => child.stopFirst).map((child) => child.stop()));
    for (const cleanup of this.cleanups.splice(0).reverse()) {
      try {
        await cleanup();
      } catch (error) {
        problems.push(`a cleanup failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    await Promise.all(this.processes.map((child) => child.stop()));
    if (options.dumpLogs) {
      for (const child of this.processes) {
        process.stderr.write(`\n----- ${child.label} (pid ${child.pid}, exit ${JSON.stringify(child.exit)}) -----\n${child.tail(200)}\n`);
      }
    }
    if (process.env.SPG99_KEEP_TEST_DIRS) {
      for (const directory of this.directories) process.stderr.write(`kept ${directory.path}\n`);
    } else {
      for (const directory of this.directories) directory.remove();
    }
    for (const child of this.processes) {
      for (const line of child.unexpectedErrors(this.expectedErrors)) {
        problems.push(`${child.label} logged an unexpected ${line.level}: ${JSON.stringify(line)}`);
      }
    }
    if (problems.length > 0) throw new Error(`teardown found problems:\n${problems.join('\n')}`);
  }

  private checkOpen(): void {
    if (this.tornDown) throw new Error('this harness was torn down; create a new one');
  }
}

/**
 * Registers mocha hooks that give every test of the current `describe` a fresh {@link Harness} and tear it down
 * after the test (printing the processes' output when the test failed). Returns a getter of the current harness.
 */
export function useHarness(): () => Harness {
  let current: Harness | null = null;
  beforeEach(() => {
    current = new Harness();
  });
  afterEach(async function () {
    const harness = current;
    current = null;
    await harness?.teardown({ dumpLogs: this.currentTest?.state === 'failed' });
  });
  return () => {
    if (!current) throw new Error('no harness: call the getter inside a test (useHarness registers beforeEach/afterEach)');
    return current;
  };
}

/** The overall `grpc.health.v1.Health/Check` status a server answers on `channel` (fails fast, within `timeoutMs`). */
export async function grpcHealthStatus(channel: Channel, timeoutMs = 2000): Promise<HealthCheckResponse_ServingStatus> {
  const health = createClient(HealthDefinition, channel);
  const answer = await health.check({ service: '' }, { signal: AbortSignal.timeout(timeoutMs) });
  return answer.status;
}

/** Waits until the server on `channel` answers health SERVING (`what` names it in the timeout message). */
export async function waitForGrpcHealth(channel: Channel, what: string, timeoutMs = 15_000): Promise<void> {
  await waitFor(async () => (await grpcHealthStatus(channel)) === HealthCheckResponse_ServingStatus.SERVING, {
    what: `${what} to answer gRPC health SERVING`,
    timeoutMs,
  });
}

/**
 * Starting real SPG99 components for tests and benchmarks: `node dist/cmd/<name>.js` with its JSON log lines
 * parsed, readiness awaited on a log line (never a sleep), unexpected ERROR lines recorded, and a teardown that
 * always runs. Neon's test_runner fixtures are the model.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The repository root (dist/test/harness → ../../..). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** One JSON log line of a component. */
export interface LogLine {
  level: string;
  msg: string;
  [field: string]: unknown;
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs` naming `what`. */
export async function waitFor<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  { timeoutMs = 30_000, intervalMs = 20, what }: { timeoutMs?: number; intervalMs?: number; what: string },
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value as T;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `; last error: ${(lastError as Error).message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** A temporary directory, removed by `remove()`. */
export function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `spg99-${prefix}-`));
}

/** A running component process. */
export class ComponentProcess {
  readonly lines: LogLine[] = [];
  readonly rawOutput: string[] = [];
  /** Regexes of ERROR messages a test expects; others fail the test at teardown. */
  readonly expectedErrors: RegExp[] = [];
  private readonly child: ChildProcess;
  private exitValue: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly exitPromise: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly listeners = new Set<() => void>();

  constructor(
    readonly name: string,
    command: string,
    readonly args: string[],
    env: NodeJS.ProcessEnv = {},
  ) {
    this.child = spawn(process.execPath, ['--enable-source-maps', path.join(REPO_ROOT, 'dist', 'cmd', `${command}.js`), ...args], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let pending = '';
    this.child.stdout?.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const parts = pending.split('\n');
      pending = parts.pop() ?? '';
      for (const part of parts) this.take(part);
    });
    this.child.stderr?.on('data', (chunk: Buffer) => {
      this.rawOutput.push(chunk.toString());
      this.notify();
    });
    this.exitPromise = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        if (pending) this.take(pending);
        this.exitValue = { code, signal };
        this.notify();
        resolve(this.exitValue);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get exited(): boolean {
    return this.exitValue !== null;
  }

  /** Resolves when the process exits. */
  waitExit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exitPromise;
  }

  /** Waits for a log line matching `predicate`; fails if the process exits first or after `timeoutMs`. */
  async waitForLine(predicate: (line: LogLine) => boolean, what: string, timeoutMs = 60_000, from = 0): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.lines.slice(from).find(predicate);
        if (found) return finish(() => resolve(found));
        if (this.exitValue) {
          return finish(() => reject(new Error(`${this.name} exited (${JSON.stringify(this.exitValue)}) before ${what}:\n${this.tail()}`)));
        }
      };
      const timer = setTimeout(() => finish(() => reject(new Error(`${this.name}: no ${what} after ${timeoutMs} ms:\n${this.tail()}`))), timeoutMs);
      const finish = (outcome: () => void) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        outcome();
      };
      this.listeners.add(check);
      check();
    });
  }

  /** ERROR/FATAL lines no test declared as expected. */
  unexpectedErrors(): LogLine[] {
    return this.lines.filter(
      (line) => (line.level === 'error' || line.level === 'fatal') && !this.expectedErrors.some((pattern) => pattern.test(JSON.stringify(line))),
    );
  }

  /** The last lines of output, for failure messages. */
  tail(count = 25): string {
    const text = this.lines.map((line) => JSON.stringify(line)).concat(this.rawOutput);
    return text.slice(-count).join('\n');
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit. */
  async stop(graceMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.exitValue) return this.exitValue;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const result = await this.exitPromise;
    clearTimeout(timer);
    return result;
  }

  /** SIGKILL: a crash. */
  async kill9(): Promise<void> {
    if (this.exitValue) return;
    this.child.kill('SIGKILL');
    await this.exitPromise;
  }

  private take(text: string): void {
    if (!text.trim()) return;
    try {
      this.lines.push(JSON.parse(text) as LogLine);
    } catch {
      this.rawOutput.push(text);
    }
    this.notify();
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }
}

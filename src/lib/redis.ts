/**
 * Redis, where the control plane keeps its catalog and writer leases: a client that connects with a deadline,
 * fails commands fast while Redis is down and reconnects by itself ({@link connectRedis}), and Debian's
 * `redis-server` run as a child process with the append-only file on ({@link startRedisServer}), for `make up`
 * and the tests. Redis asks for a password (`requirepass`, kept in a 0600 file and in the 0600 generated config,
 * never on a command line), and its files are private to the platform's OS user (docs/security.md).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import type { Logger } from './log.js';

export type { Redis };

/** Where a Redis URL points. */
export interface RedisAddress {
  host: string;
  port: number;
  db: number;
}

/** The port of `redis://host` when the URL names none. */
const DEFAULT_REDIS_PORT = 6379;

/** Parses `redis://host:port[/db]` (port 6379 and db 0 when absent); throws naming what is wrong. */
export function parseRedisUrl(url: string): RedisAddress {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`invalid Redis URL ${JSON.stringify(url)}: expected redis://host:port[/db]`);
  }
  if (parsed.protocol !== 'redis:') {
    throw new Error(`invalid Redis URL ${JSON.stringify(url)}: the scheme must be redis:// (expected redis://host:port[/db])`);
  }
  if (!parsed.hostname) throw new Error(`invalid Redis URL ${JSON.stringify(url)}: no host (expected redis://host:port[/db])`);
  if (parsed.username || parsed.password || parsed.search || parsed.hash) {
    throw new Error(`invalid Redis URL ${JSON.stringify(url)}: only redis://host:port[/db] is supported (no credentials, query or fragment)`);
  }
  const dbText = parsed.pathname.replace(/^\//, '');
  if (dbText !== '' && !/^\d+$/.test(dbText)) {
    throw new Error(`invalid Redis URL ${JSON.stringify(url)}: the database after the slash must be a number, not ${JSON.stringify(dbText)}`);
  }
  // IPv6 hosts come back bracketed ("[::1]"); sockets want them bare.
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1');
  return { host, port: parsed.port ? Number(parsed.port) : DEFAULT_REDIS_PORT, db: dbText === '' ? 0 : Number(dbText) };
}

/** Options of {@link connectRedis}. */
export interface ConnectRedisOptions {
  /** How long to wait for the first connection before giving up (default 5 s). */
  readyTimeoutMs?: number;
  /** The password Redis asks for (`requirepass`); undefined: none. */
  password?: string;
}

/** Reads a Redis password file (one line; `make up` and the harness write one with {@link writeRedisPassword}). */
export function readRedisPassword(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (error) {
    throw new Error(`the Redis password file ${file} cannot be read: ${(error as Error).message}`);
  }
  if (text.length < 16) throw new Error(`the Redis password in ${file} is shorter than 16 characters: write a long random one`);
  return text;
}

/** Makes `file` (0600) hold a new random password unless it holds one already; answers the password. */
export function writeRedisPassword(file: string): string {
  if (fs.existsSync(file)) return readRedisPassword(file);
  const password = randomBytes(24).toString('base64url');
  fs.writeFileSync(file, `${password}\n`, { mode: 0o600 });
  return password;
}

const DEFAULT_READY_TIMEOUT_MS = 5_000;
/** A TCP connect that takes longer than this counts as a failed attempt (a black-holed host must not hang us). */
const CONNECT_TIMEOUT_MS = 2_000;
/** Reconnect backoff: from 50 ms, doubling, never more than 1 s apart. */
const RECONNECT_INITIAL_MS = 50;
const RECONNECT_MAX_MS = 1_000;
/**
 * While Redis is down, ioredis rejects the queued commands (MaxRetriesPerRequestError) at every
 * `MAX_RETRIES_PER_REQUEST + 1`th failed reconnect attempt: with the backoff above a command fails within about
 * three seconds instead of waiting for Redis forever.
 */
const MAX_RETRIES_PER_REQUEST = 2;

/**
 * Connects to `url` (`redis://host:port[/db]`) and resolves once Redis is ready (its dataset loaded).
 *
 * The client never gives up reconnecting (a control plane outlives Redis restarts), but with a bounded delay
 * between attempts; commands issued meanwhile wait in the offline queue and are rejected after a few failed attempts
 * ({@link MAX_RETRIES_PER_REQUEST}), so callers see an error within seconds rather than hang.
 * A command whose reply was lost with the connection is sent again after the reconnect (ioredis'
 * `autoResendUnfulfilledCommands`): it may run twice, so writes must be idempotent or guarded (a lease compares its
 * token). Connection loss and recovery are logged once per transition, not per attempt.
 *
 * Throws, naming the URL and what to do, when Redis is not ready within `readyTimeoutMs`.
 */
export async function connectRedis(url: string, log: Logger, options: ConnectRedisOptions = {}): Promise<Redis> {
  const address = parseRedisUrl(url);
  const readyTimeoutMs = options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const redis = new Redis({
    host: address.host,
    port: address.port,
    db: address.db,
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRetriesPerRequest: MAX_RETRIES_PER_REQUEST,
    connectTimeout: CONNECT_TIMEOUT_MS,
    retryStrategy: reconnectDelay,
    ...(options.password ? { password: options.password } : {}),
  });

  let lastError: Error | undefined;
  let state: 'connecting' | 'up' | 'down' = 'connecting';
  let downSince = 0;
  // Without an 'error' listener ioredis prints every failed attempt to the console.
  redis.on('error', (error: Error) => {
    lastError = error;
  });
  redis.on('close', () => {
    // 'reconnecting' is set before 'close' is emitted; a quit() or disconnect() leaves 'end' instead.
    if (state === 'up' && redis.status === 'reconnecting') {
      state = 'down';
      downSince = Date.now();
      log.warn({ url, err: lastError?.message }, 'lost the connection to Redis: reconnecting; commands fail until it is back');
    }
  });
  redis.on('ready', () => {
    if (state === 'down') log.info({ url, downMs: Date.now() - downSince }, 'reconnected to Redis');
    state = 'up';
    lastError = undefined;
  });

  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => {
        const cause = lastError ? ` (last error: ${lastError.message})` : '';
        reject(
          new Error(
            `Redis at ${url} is not reachable: not ready within ${readyTimeoutMs} ms${cause}. ` +
              'Start it (`make up` runs one; or apt-get install redis-server and run redis-server) or fix the URL.',
          ),
        );
      }, readyTimeoutMs);
      redis.once('ready', () => resolve());
      // connect() rejects when the first attempt fails, while the retry strategy keeps trying: wait for 'ready'.
      redis.connect().catch((error: Error) => {
        lastError ??= error;
      });
    });
  } catch (error) {
    redis.disconnect();
    throw error;
  } finally {
    clearTimeout(timer);
  }
  log.info({ url }, 'connected to Redis');
  return redis;
}

/** ioredis' retryStrategy: exponential backoff with jitter, capped at {@link RECONNECT_MAX_MS}; never gives up. */
function reconnectDelay(attempt: number): number {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_INITIAL_MS * 2 ** Math.min(attempt - 1, 16));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * When the append-only file is fsynced.
 * - `everysec` (the default): a background fsync once a second. Every acknowledged write has reached the kernel
 *   (Redis writes the AOF before it replies), so a crash of redis-server alone loses nothing; a crash of the machine
 *   or a power loss loses about the last second of acknowledged writes (up to two when the disk is slow).
 * - `always`: fsync before replying; nothing acknowledged is lost even then, at the cost of one fsync per write
 *   batch (latency of the disk, lower throughput).
 */
export type AppendFsync = 'everysec' | 'always';

/** Options of {@link startRedisServer}. */
export interface RedisServerOptions {
  /** Where the append-only file, the generated config and the log live (created when missing). */
  dataDir: string;
  port: number;
  /** The address to listen on (default 127.0.0.1). */
  bind?: string;
  /** The AOF fsync policy (default `everysec`; see {@link AppendFsync}). */
  appendfsync?: AppendFsync;
  /** How long to wait for the first PONG, the dataset loaded (default 30 s). */
  readyTimeoutMs?: number;
  /** The password clients must give (`requirepass`, written only into the 0600 config); undefined: none. */
  password?: string;
}

/** How a process ended. */
export interface RedisServerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const DEFAULT_SERVER_READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 10_000;
const INSTALL_HINT = "install Debian's redis-server: apt-get install redis-server";

/** A `redis-server` child process. */
export class RedisServerProcess {
  private exitValue: RedisServerExit | null = null;
  private readonly exitPromise: Promise<RedisServerExit>;
  /** Its stdout and stderr (it logs to `logFile`; only early failures, like a bad config, land here). */
  private output = '';

  /** @internal Use {@link startRedisServer}. */
  constructor(
    private readonly child: ChildProcess,
    readonly host: string,
    readonly port: number,
    readonly dataDir: string,
    /** Its log file (`redis.log` in the data directory). */
    readonly logFile: string,
    /** The password it asks for, if any. */
    readonly password?: string,
  ) {
    const keep = (chunk: Buffer) => {
      this.output = (this.output + chunk.toString('utf8')).slice(-8_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exitPromise = new Promise((resolve) => {
      child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
        this.exitValue = { code, signal };
        resolve(this.exitValue);
      });
      child.once('error', (error) => {
        this.output += `\ncould not start: ${error.message}`;
        this.exitValue = { code: null, signal: null };
        resolve(this.exitValue);
      });
    });
  }

  /** `redis://<host>:<port>`. */
  get url(): string {
    return `redis://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** How it ended, or null while it runs. */
  get exit(): RedisServerExit | null {
    return this.exitValue;
  }

  /** Resolves when the process has ended. */
  waitExit(): Promise<RedisServerExit> {
    return this.exitPromise;
  }

  /**
   * SIGTERM, and the exit awaited: redis-server fsyncs the AOF and exits (SIGKILL if it still runs after `graceMs`).
   */
  async stop(graceMs = STOP_GRACE_MS): Promise<RedisServerExit> {
    if (this.exitValue) return this.exitValue;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exitPromise;
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL (a crash); resolves once it is gone. */
  async kill(): Promise<RedisServerExit> {
    if (this.exitValue) return this.exitValue;
    this.child.kill('SIGKILL');
    return this.exitPromise;
  }

  /** The last lines of its log file and output, for failure messages. */
  tail(lines = 20): string {
    let log = '';
    try {
      log = fs.readFileSync(this.logFile, 'utf8');
    } catch {
      // No log file yet: it failed before opening it, and said why on stderr.
    }
    return `${log}\n${this.output}`.split('\n').filter((line) => line.trim()).slice(-lines).join('\n');
  }
}

/** The redis-server binary on PATH, or an error that says how to install it. */
export function redisServerBinary(): string {
  const binary = findOnPath('redis-server');
  if (!binary) throw new Error(`redis-server is not on PATH (${process.env.PATH ?? ''}): ${INSTALL_HINT}`);
  return binary;
}

/**
 * Writes the config SPG99 runs redis-server with into `options.dataDir` (rewritten at every start): append-only
 * file on, no RDB snapshots, loopback only, in the foreground, logging to `redis.log` there.
 */
export function writeRedisConfig(options: RedisServerOptions): { configFile: string; logFile: string; dataDir: string; bind: string } {
  const bind = options.bind ?? '127.0.0.1';
  const dataDir = path.resolve(options.dataDir);
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dataDir, 0o700);
  const logFile = path.join(dataDir, 'redis.log');
  const configFile = path.join(dataDir, 'redis.conf');
  const config = [
    '# Generated by SPG99 (src/lib/redis.ts); rewritten at every start.',
    `port ${options.port}`,
    `bind ${bind}`,
    'protected-mode yes',
    'daemonize no',
    'supervised no',
    `dir ${quoteConfig(dataDir)}`,
    `logfile ${quoteConfig(logFile)}`,
    'loglevel notice',
    'always-show-logo no',
    // The AOF is the only persistence: every write is logged, and replayed at start.
    'appendonly yes',
    `appendfsync ${options.appendfsync ?? 'everysec'}`,
    'save ""',
  ];
  if (options.password !== undefined) {
    if (!/^[A-Za-z0-9_-]{16,}$/.test(options.password)) throw new Error('the Redis password must be 16 or more letters, digits, _ or -');
    config.push(`requirepass ${options.password}`);
  }
  // 0600: it may hold the password.
  fs.writeFileSync(configFile, `${config.join('\n')}\n`, { mode: 0o600 });
  fs.chmodSync(configFile, 0o600);
  return { configFile, logFile, dataDir, bind };
}

/**
 * Starts Debian's `redis-server` (found on PATH) with a config generated into `dataDir`: append-only file on,
 * no RDB snapshots, loopback only, in the foreground. Resolves once it answers PING (its dataset loaded).
 */
export async function startRedisServer(options: RedisServerOptions): Promise<RedisServerProcess> {
  const binary = redisServerBinary();
  const { configFile, logFile, dataDir, bind } = writeRedisConfig(options);

  // Its append-only file and log are private: redis-server creates them with the umask it inherits.
  const umask = process.umask(0o077);
  let child: ChildProcess;
  try {
    child = spawn(binary, [configFile], { cwd: dataDir, stdio: ['ignore', 'pipe', 'pipe'] });
  } finally {
    process.umask(umask);
  }
  // A wildcard bind is reached through loopback; of a list of addresses, the first.
  const firstBind = bind.split(/\s+/)[0].replace(/^-/, '');
  const host = firstBind === '0.0.0.0' || firstBind === '*' ? '127.0.0.1' : firstBind === '::' || firstBind === '::*' ? '::1' : firstBind;
  const server = new RedisServerProcess(child, host, options.port, dataDir, logFile, options.password);

  const readyTimeoutMs = options.readyTimeoutMs ?? DEFAULT_SERVER_READY_TIMEOUT_MS;
  const deadline = Date.now() + readyTimeoutMs;
  let lastAnswer = 'no answer yet';
  for (;;) {
    if (server.exit) {
      throw new Error(`redis-server (port ${options.port}, ${dataDir}) exited ${JSON.stringify(server.exit)} before answering PING:\n${server.tail()}`);
    }
    try {
      const answer = await pingRedis(host, options.port, 1_000, options.password);
      if (answer === '+PONG') return server;
      lastAnswer = answer; // "-LOADING ..." while it replays the AOF
    } catch (error) {
      lastAnswer = error instanceof Error ? error.message : String(error);
    }
    if (Date.now() >= deadline) {
      await server.stop();
      throw new Error(`redis-server (port ${options.port}, ${dataDir}) did not answer PING within ${readyTimeoutMs} ms (last: ${lastAnswer}):\n${server.tail()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The absolute path of an executable named `name` in a PATH directory, or undefined. */
function findOnPath(name: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!directory) continue;
    const candidate = path.join(directory, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A redis.conf argument in double quotes (it splits on spaces and understands backslash escapes). */
function quoteConfig(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** Sends an inline PING and resolves with the first line of the answer ("+PONG", or e.g. "-LOADING ..."). */
/** One PING over a fresh connection: `+PONG` when Redis is ready, `-LOADING …` while it replays its AOF. */
export function pingRedis(host: string, port: number, timeoutMs: number, password?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let received = '';
    const finish = (outcome: () => void) => {
      socket.destroy();
      outcome();
    };
    socket.setTimeout(timeoutMs, () => finish(() => reject(new Error(`no answer to PING within ${timeoutMs} ms`))));
    socket.once('error', (error) => finish(() => reject(error)));
    // With a password, AUTH first: the PING's answer (the second line) then says whether the dataset is loaded.
    socket.once('connect', () => socket.write(password === undefined ? 'PING\r\n' : `AUTH ${password}\r\nPING\r\n`));
    const skip = password === undefined ? 0 : 1;
    socket.on('data', (chunk) => {
      received += chunk.toString('utf8');
      const lines = received.split('\r\n');
      if (lines.length > skip + 1) {
        const auth = lines[0] ?? '';
        finish(() => resolve(skip === 1 && auth !== '+OK' ? auth : (lines[skip] ?? '')));
      }
    });
    socket.once('end', () => finish(() => reject(new Error(`connection closed after ${JSON.stringify(received)}`))));
  });
}

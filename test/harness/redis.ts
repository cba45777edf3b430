/**
 * Redis fixture: a real `redis-server` (Debian's) with its append-only file in a harness temporary directory, on
 * a free port, that can be stopped or crashed and restarted on the same port and data directory; and clients made
 * with the control plane's own `connectRedis`, whose log lines are kept so tests can assert them.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { freePort } from '../../src/lib/net.js';
import path from 'node:path';
import { connectRedis, startRedisServer, writeRedisPassword, type AppendFsync, type Redis, type RedisServerProcess } from '../../src/lib/redis.js';
import type { Logger } from '../../src/lib/log.js';
import type { Harness, LogLine } from './process.js';

/** Options of {@link RedisNode.start}. */
export interface RedisNodeOptions {
  /** The AOF fsync policy (default `everysec`). */
  appendfsync?: AppendFsync;
}

/** A logger whose JSON lines are kept in `lines` instead of printed. */
export function memoryLogger(component: string): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const text of chunk.toString('utf8').split('\n')) {
        if (text.trim()) lines.push(JSON.parse(text) as LogLine);
      }
      done();
    },
  });
  const log = pino({ level: 'debug', base: { component }, formatters: { level: (label) => ({ level: label }) } }, sink);
  return { log, lines };
}

/** The password file of each Redis the harness started, by URL: the control plane fixture finds it there. */
const passwordFiles = new Map<string, string>();

/** The password file of the harness' Redis at `url`, if it started one there. */
export function redisPasswordFileFor(url: string): string | undefined {
  return passwordFiles.get(url);
}

/** A redis-server under test. Its URL stays the same across restarts. */
export class RedisNode {
  /** Log lines of the clients made by {@link client}. */
  readonly clientLogLines: LogLine[];
  private readonly clientLog: Logger;
  private readonly clients: Redis[] = [];

  private constructor(
    harness: Harness,
    private server: RedisServerProcess,
    /** Its data directory (kept across restarts, removed at teardown). */
    readonly dataDir: string,
    readonly port: number,
    private readonly appendfsync: AppendFsync | undefined,
    /** The password it asks for, and the 0600 file holding it (what the control plane's --redis-password-file takes). */
    readonly password: string,
    readonly passwordFile: string,
  ) {
    const { log, lines } = memoryLogger('redis-client');
    this.clientLog = log;
    this.clientLogLines = lines;
    // Cleanups run newest first: clients made later close before this stops the server.
    harness.defer(async () => {
      for (const client of this.clients.splice(0)) client.disconnect();
      const wasRunning = this.server.exit === null;
      const exit = await this.server.stop();
      if (wasRunning && exit.code !== 0) {
        throw new Error(`redis-server on port ${this.port} exited ${JSON.stringify(exit)} at teardown:\n${this.server.tail()}`);
      }
    });
  }

  /** Starts redis-server on a free port with a new data directory and waits until it answers PING. */
  static async start(harness: Harness, options: RedisNodeOptions = {}): Promise<RedisNode> {
    const dataDir = harness.tempDir('redis').path;
    const passwordFile = path.join(harness.tempDir('redis-secret').path, 'redis.password');
    const password = writeRedisPassword(passwordFile);
    const port = await freePort();
    const server = await startRedisServer({ dataDir, port, appendfsync: options.appendfsync, password });
    passwordFiles.set(server.url, passwordFile);
    return new RedisNode(harness, server, dataDir, port, options.appendfsync, password, passwordFile);
  }

  /** `redis://127.0.0.1:<port>`. */
  get url(): string {
    return this.server.url;
  }

  /** The current redis-server process. */
  get process(): RedisServerProcess {
    return this.server;
  }

  /** A new client through `connectRedis` (closed at teardown); its log lines go to {@link clientLogLines}. */
  async client(): Promise<Redis> {
    const client = await connectRedis(this.url, this.clientLog, { password: this.password });
    this.clients.push(client);
    return client;
  }

  /** Stops it (SIGTERM, or SIGKILL with `crash`) and starts it again on the same port and data directory. */
  async restart(options: { crash?: boolean } = {}): Promise<void> {
    const exit = options.crash ? await this.server.kill() : await this.server.stop();
    if (!options.crash && exit.code !== 0) {
      throw new Error(`redis-server on port ${this.port} exited ${JSON.stringify(exit)} on SIGTERM:\n${this.server.tail()}`);
    }
    this.server = await startRedisServer({ dataDir: this.dataDir, port: this.port, appendfsync: this.appendfsync, password: this.password });
  }
}

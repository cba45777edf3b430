/**
 * Safekeeper fixtures: real `safekeeper` processes, each with its own temporary data directory and a gRPC client,
 * that can be stopped, crashed and restarted from their disk on the same address; and a programmatic proposer
 * stream (`AppendStream`) and WAL readers (`readWal`, `WalFollower`) for tests that speak the safekeeper protocol directly.
 */
import { randomBytes } from 'node:crypto';
import type { Channel } from 'nice-grpc';
import { openChannel, createSpgClient, type SpgClient } from '../../src/lib/grpc/client.js';
import { AsyncQueue, Notifier } from '../../src/lib/async.js';
import { formatLsn, type Lsn } from '../../src/lib/lsn.js';
import {
  SafekeeperServiceDefinition,
  type AppendRequest,
  type AppendResponse,
  type AppendStart,
  type DeepPartial,
  type StreamWalResponse,
  type TimelineStatus,
} from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { type ComponentProcess, type Harness, type LogLine, type ProcessExit, waitForGrpcHealth } from './process.js';

/** A client of the safekeeper's gRPC API. */
export type SafekeeperClient = SpgClient<typeof SafekeeperServiceDefinition>;

/** A new random, well-formed timeline id (`tl-` and 32 hex digits). */
export function newTimelineId(): string {
  return `tl-${randomBytes(16).toString('hex')}`;
}

/** Options of a safekeeper start. */
export interface SafekeeperOptions {
  /** Its name (`--id`, and the label in reports); default `sk-<n>`. */
  id?: string;
  /** Environment variables for the process (e.g. `SPG99_LOG_LEVEL`). */
  env?: NodeJS.ProcessEnv;
}

const READY_MESSAGE = 'safekeeper ready';
const START_TIMEOUT_MS = 30_000;

/** A safekeeper under test. Its address stays the same across restarts, so proposers' address lists stay valid. */
export class SafekeeperNode {
  private current: ComponentProcess;
  private channel: Channel;
  private clientValue: SafekeeperClient;
  private portValue: number;
  private readyLine: LogLine;
  private starts = 1;

  private constructor(
    private readonly harness: Harness,
    readonly id: string,
    /** Its data directory (kept across restarts, removed at teardown). */
    readonly dataDir: string,
    private readonly env: NodeJS.ProcessEnv | undefined,
    child: ComponentProcess,
    ready: LogLine,
  ) {
    this.current = child;
    this.readyLine = ready;
    this.portValue = portOf(ready, child);
    this.channel = openChannel(this.address);
    this.clientValue = createSpgClient(SafekeeperServiceDefinition, this.channel);
    // Closes whichever channel is current at teardown (a restart on a new port replaces it).
    harness.defer(() => this.channel.close());
  }

  /** Starts a safekeeper on a free port with a new data directory and waits until it is ready. */
  static async start(harness: Harness, options: SafekeeperOptions = {}): Promise<SafekeeperNode> {
    const id = options.id ?? 'sk-1';
    const dataDir = harness.tempDir(id).path;
    const child = spawnSafekeeper(harness, id, dataDir, 0, id, options.env);
    const ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: START_TIMEOUT_MS });
    return new SafekeeperNode(harness, id, dataDir, options.env, child, ready);
  }

  /** `127.0.0.1:<port>`. */
  get address(): string {
    return `127.0.0.1:${this.portValue}`;
  }

  /** Its gRPC port. */
  get port(): number {
    return this.portValue;
  }

  /** Its Prometheus port (changes on restart). */
  get metricsPort(): number {
    return Number(this.readyLine.metricsPort);
  }

  /** host:port of its framed Append socket (from its ready line). */
  get appendSocketAddress(): string {
    return String(this.readyLine.appendSocket ?? '');
  }

  /** The client of its API (one channel, which reconnects after a restart). */
  get client(): SafekeeperClient {
    return this.clientValue;
  }

  /** The process currently running (or last run). */
  get process(): ComponentProcess {
    return this.current;
  }

  /** The timeline's status. */
  async status(timelineId: string): Promise<TimelineStatus> {
    const { status } = await this.client.getTimelineStatus({ timelineId });
    if (!status) throw new Error(`${this.id} answered GetTimelineStatus without a status`);
    return status;
  }

  /** SIGTERM and wait for the exit. */
  stop(): Promise<ProcessExit> {
    return this.current.stop();
  }

  /** SIGKILL (a crash) and wait for the exit. */
  kill9(): Promise<ProcessExit> {
    return this.current.kill9();
  }

  /**
   * Starts it again from its data directory on the same port (stopping it first with SIGTERM, or SIGKILL with
   * `crash`), and waits until it answers health through its client. Falls back to a new port only when the old one
   * was taken meanwhile.
   */
  async restart(options: { crash?: boolean } = {}): Promise<void> {
    if (!this.current.exited) {
      if (options.crash) await this.current.kill9();
      else await this.current.stop();
    }
    const expected = [...this.current.expectedErrors];
    this.starts += 1;
    const label = `${this.id}#${this.starts}`;
    let child = spawnSafekeeper(this.harness, this.id, this.dataDir, this.portValue, label, this.env);
    child.expectedErrors.push(...expected);
    let ready: LogLine;
    try {
      ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: START_TIMEOUT_MS });
    } catch (error) {
      if (!child.exited || !/EADDRINUSE|address already in use|No address added/i.test(child.tail(100))) throw error;
      child = spawnSafekeeper(this.harness, this.id, this.dataDir, 0, `${label}-newport`, this.env);
      child.expectedErrors.push(...expected);
      ready = await child.waitForLine((line) => line.msg === READY_MESSAGE, { what: `"${READY_MESSAGE}"`, timeoutMs: START_TIMEOUT_MS });
    }
    this.current = child;
    this.readyLine = ready;
    const port = portOf(ready, child);
    if (port !== this.portValue) {
      this.portValue = port;
      this.channel.close();
      this.channel = openChannel(this.address);
      this.clientValue = createSpgClient(SafekeeperServiceDefinition, this.channel);
    }
    // The channel may still be backing off from the stop: wait until it is connected again.
    await waitForGrpcHealth(this.channel, label);
  }
}

function spawnSafekeeper(harness: Harness, id: string, dataDir: string, port: number, label: string, env?: NodeJS.ProcessEnv): ComponentProcess {
  const args = ['--id', id, '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--metrics-listen', '127.0.0.1:0'];
  return harness.spawn('safekeeper', args, { label, env });
}

function portOf(ready: LogLine, child: ComponentProcess): number {
  const port = Number(ready.grpcPort);
  if (!Number.isInteger(port) || port <= 0) throw new Error(`${child.label}'s ready line has no grpcPort: ${JSON.stringify(ready)}`);
  return port;
}

/** Starts one safekeeper holding one new, empty timeline (what most single-safekeeper tests begin with). */
export async function startSafekeeperWithTimeline(harness: Harness): Promise<{ node: SafekeeperNode; timelineId: string }> {
  const [node] = await startSafekeepers(harness, 1);
  const timelineId = newTimelineId();
  await createTimeline([node], timelineId);
  return { node, timelineId };
}

/** Starts `count` safekeepers (`sk-1` … `sk-<count>`) in parallel. */
export async function startSafekeepers(harness: Harness, count: number, options: Omit<SafekeeperOptions, 'id'> = {}): Promise<SafekeeperNode[]> {
  return Promise.all(Array.from({ length: count }, (_, index) => SafekeeperNode.start(harness, { ...options, id: `sk-${index + 1}` })));
}

/** Creates `timelineId` on every node. */
export async function createTimeline(nodes: readonly SafekeeperNode[], timelineId: string): Promise<void> {
  await Promise.all(nodes.map((node) => node.client.createTimeline({ timelineId })));
}

/**
 * One proposer's Append stream to one safekeeper, driven by the test: `send` writes WAL messages, responses are
 * collected, and `waitFlush` waits for an acknowledgement. The stream's end (and its error, if any) is recorded, so
 * a test can assert how it ended. Cancelled at teardown when still open.
 */
export class AppendStream {
  /** Every response received, in order. */
  readonly responses: AppendResponse[] = [];
  private readonly requests = new AsyncQueue<DeepPartial<AppendRequest>>();
  private readonly changed = new Notifier();
  private readonly controller = new AbortController();
  private endedValue = false;
  private errorValue: unknown = undefined;
  private readonly finished: Promise<void>;
  private nextLsn: Lsn;

  /** Opens the stream and sends `start` (pass `start: null` to send a wrong first message with `sendRaw`). */
  constructor(
    client: SafekeeperClient,
    harness: Harness,
    readonly start: AppendStart | null,
  ) {
    this.nextLsn = start?.startStreamingAt ?? 0n;
    if (start) this.requests.push({ start });
    const responses = client.append(this.requests, { signal: this.controller.signal });
    this.finished = (async () => {
      try {
        for await (const response of responses) {
          this.responses.push(response);
          this.changed.notify();
        }
      } catch (error) {
        this.errorValue = error;
      } finally {
        this.endedValue = true;
        this.requests.end();
        this.changed.notify();
      }
    })();
    harness.defer(() => this.cancel());
  }

  /** Whether the server has ended the stream (or it was cancelled). */
  get ended(): boolean {
    return this.endedValue;
  }

  /** The error the stream ended with (undefined while open, or after a clean end). */
  get error(): unknown {
    return this.errorValue;
  }

  /** The LSN the next `send` writes at. */
  get endLsn(): Lsn {
    return this.nextLsn;
  }

  /** The highest flush LSN acknowledged so far (undefined before the first response). */
  get flushLsn(): Lsn | undefined {
    return this.responses.length === 0 ? undefined : this.responses[this.responses.length - 1].flushLsn;
  }

  /** Sends `data` at the end of what this stream sent (or at `beginLsn`), with the proposer's commit LSN. */
  send(data: Buffer, commitLsn: Lsn = 0n, beginLsn: Lsn = this.nextLsn): Lsn {
    this.requests.push({ wal: { beginLsn, walData: data, commitLsn } });
    this.nextLsn = beginLsn + BigInt(data.length);
    return this.nextLsn;
  }

  /** Sends any request, as is. */
  sendRaw(request: DeepPartial<AppendRequest>): void {
    this.requests.push(request);
  }

  /** Waits for a response with a flush LSN of at least `lsn`; fails if the stream ends first. */
  async waitFlush(lsn: Lsn, timeoutMs = 15_000): Promise<AppendResponse> {
    return this.waitUntil(() => this.responses.find((response) => response.flushLsn >= lsn), `flush LSN ${formatLsn(lsn)}`, timeoutMs);
  }

  /** Waits for the first response (the answer to `start`). */
  async waitStarted(timeoutMs = 15_000): Promise<AppendResponse> {
    return this.waitUntil(() => this.responses[0], 'the answer to start', timeoutMs);
  }

  /** Waits until the server ends the stream; resolves with its error (undefined for a clean end). */
  async waitEnded(timeoutMs = 15_000): Promise<unknown> {
    const deadline = Date.now() + timeoutMs;
    while (!this.endedValue) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the Append stream did not end within ${timeoutMs} ms`);
      await this.changed.wait(undefined, left);
    }
    return this.errorValue;
  }

  /** Half-closes the request side and waits for the server to finish the stream. */
  async close(timeoutMs = 15_000): Promise<unknown> {
    this.requests.end();
    return this.waitEnded(timeoutMs);
  }

  /** Cancels the call (client side) and waits for it to end. */
  async cancel(): Promise<void> {
    this.requests.end();
    this.controller.abort();
    await this.finished;
  }

  private async waitUntil<T>(found: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = found();
      if (value !== undefined) return value;
      if (this.endedValue) {
        const reason = this.errorValue instanceof Error ? this.errorValue.message : 'a clean end';
        throw new Error(`the Append stream ended (${reason}) before ${what}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} on the Append stream within ${timeoutMs} ms (last response: ${JSON.stringify(this.lastResponseText())})`);
      await this.changed.wait(undefined, left);
    }
  }

  private lastResponseText(): string {
    const last = this.responses[this.responses.length - 1];
    return last ? `term ${last.term}, flush ${formatLsn(last.flushLsn)}, commit ${formatLsn(last.commitLsn)}` : 'none';
  }
}

/** What a finite StreamWal call returned. */
export interface WalRead {
  data: Buffer;
  /** The commit and flush LSNs of the last message. */
  commitLsn: Lsn;
  flushLsn: Lsn;
}

/**
 * Reads WAL `[startLsn, endLsn)` with StreamWal (which returns once it has sent up to `endLsn`), checking that the
 * messages are contiguous.
 */
export async function readWal(
  client: SafekeeperClient,
  request: { timelineId: string; startLsn: Lsn; endLsn: Lsn; includeUncommitted?: boolean },
  timeoutMs = 15_000,
): Promise<WalRead> {
  const parts: Buffer[] = [];
  let position = request.startLsn;
  let commitLsn = 0n;
  let flushLsn = 0n;
  const stream = client.streamWal({ ...request, includeUncommitted: request.includeUncommitted ?? false }, { signal: AbortSignal.timeout(timeoutMs) });
  for await (const message of stream) {
    if (message.beginLsn !== position) {
      throw new Error(`StreamWal sent WAL at ${formatLsn(message.beginLsn)} where ${formatLsn(position)} was expected`);
    }
    parts.push(Buffer.from(message.walData));
    position += BigInt(message.walData.length);
    commitLsn = message.commitLsn;
    flushLsn = message.flushLsn;
  }
  return { data: Buffer.concat(parts), commitLsn, flushLsn };
}

/**
 * An endless StreamWal call read in the background (what the pageserver does): data and keepalive messages are
 * collected, and a test waits for a position, a keepalive, or the end. Cancelled at teardown when still open.
 */
export class WalFollower {
  /** Every message received (keepalives have empty `walData`). */
  readonly messages: StreamWalResponse[] = [];
  private readonly parts: Buffer[] = [];
  private readonly changed = new Notifier();
  private readonly controller = new AbortController();
  private positionValue: Lsn = 0n;
  private endedValue = false;
  private errorValue: unknown = undefined;
  private readonly finished: Promise<void>;

  constructor(
    client: SafekeeperClient,
    harness: Harness,
    readonly request: { timelineId: string; startLsn: Lsn; endLsn?: Lsn; includeUncommitted?: boolean },
  ) {
    this.positionValue = request.startLsn;
    const stream = client.streamWal(
      { timelineId: request.timelineId, startLsn: request.startLsn, endLsn: request.endLsn ?? 0n, includeUncommitted: request.includeUncommitted ?? false },
      { signal: this.controller.signal },
    );
    this.finished = (async () => {
      try {
        for await (const message of stream) {
          if (message.beginLsn !== this.positionValue) {
            throw new Error(`StreamWal sent WAL at ${formatLsn(message.beginLsn)} where ${formatLsn(this.positionValue)} was expected`);
          }
          this.messages.push(message);
          this.parts.push(Buffer.from(message.walData));
          this.positionValue += BigInt(message.walData.length);
          this.changed.notify();
        }
      } catch (error) {
        this.errorValue = error;
      } finally {
        this.endedValue = true;
        this.changed.notify();
      }
    })();
    harness.defer(() => this.cancel());
  }

  /** All WAL bytes received, from `startLsn`. */
  get data(): Buffer {
    return Buffer.concat(this.parts);
  }

  /** The LSN after the last byte received. */
  get position(): Lsn {
    return this.positionValue;
  }

  /** Whether the call has ended. */
  get ended(): boolean {
    return this.endedValue;
  }

  /** The error the call ended with (undefined while open or after a clean end). */
  get error(): unknown {
    return this.errorValue;
  }

  /** Waits until WAL up to `lsn` has been received. */
  waitForPosition(lsn: Lsn, timeoutMs = 15_000): Promise<Lsn> {
    return this.waitUntil(() => (this.positionValue >= lsn ? this.positionValue : undefined), `WAL up to ${formatLsn(lsn)}`, timeoutMs);
  }

  /**
   * Waits for a keepalive (an empty message) received after the first `afterMessages` messages: the server sends
   * one only when it has had nothing more to send for a while, so everything available before it was received.
   */
  waitForKeepalive(afterMessages = 0, timeoutMs = 15_000): Promise<StreamWalResponse> {
    return this.waitUntil(
      () => this.messages.slice(afterMessages).find((message) => message.walData.length === 0),
      'a keepalive',
      timeoutMs,
    );
  }

  /** Waits until the call ends; resolves with its error (undefined for a clean end). */
  async waitEnded(timeoutMs = 15_000): Promise<unknown> {
    await this.waitUntil(() => (this.endedValue ? true : undefined), 'the end of the stream', timeoutMs, false);
    return this.errorValue;
  }

  /** Cancels the call and waits for it to end. */
  async cancel(): Promise<void> {
    this.controller.abort();
    await this.finished;
  }

  private async waitUntil<T>(found: () => T | undefined, what: string, timeoutMs: number, failOnEnd = true): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = found();
      if (value !== undefined) return value;
      if (failOnEnd && this.endedValue) {
        const reason = this.errorValue instanceof Error ? this.errorValue.message : 'a clean end';
        throw new Error(`StreamWal ended (${reason}) at ${formatLsn(this.positionValue)} before ${what}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} on StreamWal within ${timeoutMs} ms (at ${formatLsn(this.positionValue)})`);
      await this.changed.wait(undefined, left);
    }
  }
}

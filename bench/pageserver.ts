/**
 * `make bench-pageserver`: what reading through the pageserver costs, with real processes (three safekeepers, a
 * pageserver on a local-filesystem object store, computes started by the agent). A timeline is filled with
 * `pgbench -i` (scale 50 by default) and its compute stopped cleanly, so the timeline is at rest; then:
 *
 * 1. GetPage@LSN of random blocks of pgbench_accounts at the timeline's last_record_lsn: one client making
 *    sequential unary calls, eight clients on their own channels, and one GetPages stream with eight requests in
 *    flight; against the baseline of `pread` of the same blocks from a local file (a copy of those pages). The first
 *    read at the LSN (which may materialize an image) is reported apart, after a warm-up read of every block.
 * 2. Basebackup FULL vs THIN of that timeline and of a new empty timeline (bytes, and seconds to receive them).
 * 3. Starting a new compute from the stopped timeline (each round a higher term, an empty data directory): seconds
 *    from spawning the agent to its "agent ready" line, with the phases the agent reports.
 *
 * Every figure is the median of SPG99_BENCH_ROUNDS rounds; the modes of a round alternate so that a noisy moment of
 * this shared machine hits all of them.
 *
 * Last line: `pageserver getpage_p50_ms=<a> getpage_pps=<b> thin_bytes=<c> full_bytes=<d> start_s=<e>`: the
 * sequential client's p50, pages/s of the eight concurrent clients, the THIN and FULL basebackup bytes of the
 * pgbench timeline, and the new-compute start time.
 * Environment: SPG99_BENCH_SCALE (pgbench scale, default 50), SPG99_BENCH_ROUNDS (default 3), SPG99_BENCH_PAGES
 * (distinct random blocks read per mode and round, default 1000), SPG99_BENCH_CONCURRENCY (default 8).
 */
import fs from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type pg from 'pg';
import { Harness, waitFor, type ComponentProcess, type LogLine } from '../test/harness/process.js';
import { createTimeline, newTimelineId, startSafekeepers, type SafekeeperNode } from '../test/harness/safekeepers.js';
import { ComputeNode, postgresSocketDir } from '../test/harness/computes.js';
import { PageserverNode } from '../test/harness/pageserver.js';
import { createSpgClient, openChannel, type SpgClient } from '../src/lib/grpc/client.js';
import { AsyncQueue } from '../src/lib/async.js';
import type { Channel } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { formatLsn, parseLsn, type Lsn } from '../src/lib/lsn.js';
import {
  BasebackupMode,
  ForkNumber,
  PageServiceDefinition,
  type GetPageRequest,
  type GetPagesRequest,
  type RelTag,
} from '../gen/spg99/pageserver/v1/pageserver.js';
import { cleanUpOnExit } from './interrupt.js';

const run = promisify(execFile);
const scale = Number(process.env.SPG99_BENCH_SCALE ?? 50);
const rounds = Number(process.env.SPG99_BENCH_ROUNDS ?? 3);
const pagesPerRound = Number(process.env.SPG99_BENCH_PAGES ?? 1000);
const concurrency = Number(process.env.SPG99_BENCH_CONCURRENCY ?? 8);
const PAGE_SIZE = 8192;
/** A mode of a round stops after this long even when it has not read every block (a slow pageserver). */
const MODE_BUDGET_MS = 8_000;
const TENANT_ID = 'tn-bench';
const CALL_TIMEOUT_MS = 300_000;
/** How long to wait for the pageserver to stop the replayer of the stopped timeline (its --idle-ms is 10 s). */
const REST_WAIT_MS = 60_000;
/** How long ingest may make no progress towards a stopped compute's final LSN before the bench says so. */
const STALL_MS = 30_000;
/** How long the pageserver may take to ingest the WAL a stopped compute left behind. */
const CATCH_UP_MS = 240_000;

type PageClient = SpgClient<typeof PageServiceDefinition>;

function percentile(sorted: readonly number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}

function deadline(ms = CALL_TIMEOUT_MS): { deadline: Date } {
  return { deadline: new Date(Date.now() + ms) };
}

/** Milliseconds since `start` (a `performance.now()`). */
function since(start: number): number {
  return performance.now() - start;
}

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : 'NaN';
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** A small seeded generator (mulberry32), so every run reads the same blocks of the same table. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), 1 | state);
    mixed = (mixed + Math.imul(mixed ^ (mixed >>> 7), 61 | mixed)) ^ mixed;
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` distinct random block numbers below `blocks`. */
function randomBlocks(blocks: number, count: number, random: () => number): number[] {
  const chosen = new Set<number>();
  while (chosen.size < Math.min(count, blocks)) chosen.add(Math.floor(random() * blocks));
  return [...chosen];
}

function shuffled<T>(items: readonly T[], random: () => number): T[] {
  const copy = [...items];
  for (let index = copy.length - 1; index > 0; index -= 1) {
    const other = Math.floor(random() * (index + 1));
    [copy[index], copy[other]] = [copy[other], copy[index]];
  }
  return copy;
}

/** The reads of one mode in one round. */
interface ReadRound {
  latenciesMs: number[];
  pagesPerSecond: number;
}

/** One read mode's rounds, summarized as medians over rounds. */
class ReadFigures {
  readonly rounds: ReadRound[] = [];

  constructor(readonly name: string) {}

  private perRound(pick: (round: ReadRound) => number): number {
    return median(this.rounds.map(pick));
  }

  latency(fraction: number): number {
    return this.perRound((round) => percentile([...round.latenciesMs].sort((a, b) => a - b), fraction));
  }

  get pagesPerSecond(): number {
    return this.perRound((round) => round.pagesPerSecond);
  }

  get reads(): number {
    return this.rounds.reduce((sum, round) => sum + round.latenciesMs.length, 0);
  }
}

/** What one basebackup stream carried. */
interface BasebackupRun {
  seconds: number;
  /** Sum of the tar chunks' lengths. */
  bytes: number;
  tarBytes: number;
  omittedBytes: number;
  omittedRelations: number;
  walBytes: number;
}

async function receiveBasebackup(client: PageClient, timelineId: string, mode: BasebackupMode): Promise<BasebackupRun> {
  const started = performance.now();
  let bytes = 0;
  let omittedRelations = 0;
  let metadata: BasebackupRun | undefined;
  for await (const response of client.basebackup({ timelineId, lsn: 0n, mode, replica: false }, deadline())) {
    if (response.metadata) {
      metadata = {
        seconds: 0,
        bytes: 0,
        tarBytes: Number(response.metadata.tarBytes),
        omittedBytes: Number(response.metadata.omittedBytes),
        omittedRelations: 0,
        walBytes: Number(response.metadata.walBytes),
      };
    } else if (response.omittedRelations) {
      omittedRelations += response.omittedRelations.relations.length;
    } else if (response.tarChunk) {
      bytes += response.tarChunk.length;
    }
  }
  if (!metadata) throw new Error(`the ${BasebackupMode[mode]} basebackup of ${timelineId} had no metadata`);
  if (bytes !== metadata.tarBytes) {
    throw new Error(`the ${BasebackupMode[mode]} basebackup of ${timelineId} carried ${bytes} tar bytes, its metadata announced ${metadata.tarBytes}`);
  }
  return { ...metadata, seconds: since(started) / 1000, bytes, omittedRelations };
}

/** What a pgbench timeline offers to read: pgbench_accounts' main fork at the timeline's last record. */
interface ReadTarget {
  timelineId: string;
  rel: RelTag;
  lsn: Lsn;
}

function pageRequest(target: ReadTarget, block: number): GetPageRequest {
  return { timelineId: target.timelineId, rel: target.rel, blockNumber: block, readLsn: { requestLsn: target.lsn, notModifiedSinceLsn: 0n } };
}

async function getPage(client: PageClient, target: ReadTarget, block: number): Promise<Buffer> {
  const { pageImage } = await client.getPage(pageRequest(target, block), deadline());
  if (pageImage.length !== PAGE_SIZE) throw new Error(`GetPage of block ${block} answered ${pageImage.length} bytes, not ${PAGE_SIZE}`);
  return Buffer.from(pageImage);
}

/** Reads `blocks` one after the other, each call awaited; stops early after `budgetMs`. */
async function readSequentially(read: (block: number) => Promise<unknown>, blocks: readonly number[], budgetMs = MODE_BUDGET_MS): Promise<ReadRound> {
  const latenciesMs: number[] = [];
  const started = performance.now();
  for (const block of blocks) {
    const callStarted = performance.now();
    await read(block);
    latenciesMs.push(since(callStarted));
    if (since(started) > budgetMs) break;
  }
  return { latenciesMs, pagesPerSecond: latenciesMs.length / (since(started) / 1000) };
}

/** `clients.length` clients, each making sequential unary calls, sharing `blocks`. */
async function readConcurrently(clients: readonly PageClient[], target: ReadTarget, blocks: readonly number[]): Promise<ReadRound> {
  const latenciesMs: number[] = [];
  const started = performance.now();
  let next = 0;
  await Promise.all(
    clients.map(async (client) => {
      while (next < blocks.length && since(started) <= MODE_BUDGET_MS) {
        const block = blocks[next];
        next += 1;
        const callStarted = performance.now();
        await getPage(client, target, block);
        latenciesMs.push(since(callStarted));
      }
    }),
  );
  return { latenciesMs, pagesPerSecond: latenciesMs.length / (since(started) / 1000) };
}

/** One GetPages stream with up to `inFlight` requests outstanding. */
async function readStream(client: PageClient, target: ReadTarget, blocks: readonly number[], inFlight: number): Promise<ReadRound> {
  const requests = new AsyncQueue<GetPagesRequest>();
  const sentAt = new Map<bigint, number>();
  const latenciesMs: number[] = [];
  const started = performance.now();
  let next = 0;
  const send = () => {
    if (next >= blocks.length || since(started) > MODE_BUDGET_MS) return false;
    const requestId = BigInt(next);
    sentAt.set(requestId, performance.now());
    requests.push({ requestId, page: pageRequest(target, blocks[next]) });
    next += 1;
    return true;
  };
  while (next < inFlight && send());
  if (sentAt.size === 0) requests.end();
  for await (const response of client.getPages(requests, deadline())) {
    const sent = sentAt.get(response.requestId);
    if (sent === undefined) throw new Error(`GetPages answered request ${response.requestId}, which is not outstanding`);
    sentAt.delete(response.requestId);
    if (response.error) throw new Error(`GetPages request ${response.requestId} failed with status ${response.error.code}: ${response.error.message}`);
    if (response.page?.pageImage.length !== PAGE_SIZE) throw new Error(`GetPages request ${response.requestId} answered no 8192-byte page`);
    latenciesMs.push(since(sent));
    if (!send() && sentAt.size === 0) requests.end();
  }
  return { latenciesMs, pagesPerSecond: latenciesMs.length / (since(started) / 1000) };
}

function pgEnv(port: number): NodeJS.ProcessEnv {
  // A compute's superuser logs in over its private Unix socket only (TCP asks every role for SCRAM).
  return { ...process.env, PGHOST: postgresSocketDir(port) ?? '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres' };
}

/** The lines of `child` from `fromIndex` on with level warn, error or fatal. */
function warnings(child: ComponentProcess, fromIndex = 0): LogLine[] {
  return child.lines.slice(fromIndex).filter((line) => line.level === 'warn' || line.level === 'error' || line.level === 'fatal');
}

function brief(line: LogLine): string {
  const { level, msg, time: _time, pid: _pid, hostname: _hostname, component: _component, ...rest } = line;
  return `${level}: ${msg} ${JSON.stringify(rest)}`;
}

/** Stops a compute cleanly (SIGTERM: a fast shutdown, then a pageserver snapshot at the final LSN). */
async function stopCompute(compute: ComputeNode): Promise<{ seconds: number; snapshot: string; finalLsn?: Lsn }> {
  const started = performance.now();
  const exit = await compute.process.stop(180_000);
  const seconds = since(started) / 1000;
  if (exit.code !== 0) throw new Error(`${compute.computeId} exited ${JSON.stringify(exit)} after SIGTERM; its last output:\n${compute.process.tail()}`);
  const snapshot = compute.process.findLine((line) => line.msg === 'pageserver snapshot at the final LSN');
  const missed = compute.process.findLine((line) => line.msg === 'no snapshot at the final LSN; the pageserver makes one when idle');
  const finalLsn = typeof (snapshot ?? missed)?.lsn === 'string' ? parseLsn(String((snapshot ?? missed)?.lsn)) : undefined;
  return {
    seconds,
    finalLsn,
    snapshot: snapshot ? `snapshot at ${String(snapshot.lsn)}` : missed ? `no snapshot at ${String(missed.lsn)}: ${String(missed.error)}` : 'no snapshot line',
  };
}

/** Where the pageserver's ingest of `timelineId` stands against the safekeepers. */
async function ingestPosition(pageserver: PageserverNode, safekeepers: readonly SafekeeperNode[], timelineId: string): Promise<{ lagBytes: bigint; text: string }> {
  const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
  const statuses = await Promise.all(safekeepers.map(async (node) => ({ id: node.id, status: await node.status(timelineId) })));
  const commitLsn = statuses.reduce((highest, { status }) => (status.commitLsn > highest ? status.commitLsn : highest), 0n);
  const lastRecordLsn = timeline?.lastRecordLsn ?? 0n;
  const lagBytes = commitLsn - lastRecordLsn;
  const safekeeperText = statuses.map(({ id, status }) => `${id} flush ${formatLsn(status.flushLsn)} commit ${formatLsn(status.commitLsn)}`).join(', ');
  return {
    lagBytes,
    text:
      `pageserver last_record_lsn ${formatLsn(lastRecordLsn)} (${mib(Number(lagBytes))} behind the commit LSN), remote_consistent_lsn ` +
      `${formatLsn(timeline?.remoteConsistentLsn ?? 0n)}, following ${timeline?.walSourceAddress || 'no safekeeper'}, ` +
      `replayer ${timeline?.replayerRunning ? 'running' : 'stopped'}; ${safekeeperText}`,
  };
}

const harness = new Harness();
const channels: Array<{ close(): void }> = [];
let cleaning: Promise<void> | null = null;

/** Stops every process and removes every directory, once (after the run, a failure, or a signal). */
function cleanUp(dumpLogs = false): Promise<void> {
  cleaning ??= (async () => {
    for (const channel of channels.splice(0)) channel.close();
    await harness.teardown({ dumpLogs });
  })();
  return cleaning;
}

cleanUpOnExit(cleanUp);

const clients: pg.Client[] = [];
let failed = true;
try {
  console.log(
    `pageserver bench: pgbench scale ${scale}, ${rounds} rounds, ${pagesPerRound} random pages per read mode and round, ` +
      `${concurrency} concurrent clients`,
  );
  const setupStarted = performance.now();
  const [safekeepers, pageserver] = await Promise.all([startSafekeepers(harness, 3), PageserverNode.start(harness)]);
  const newTimeline = async (withWal: readonly SafekeeperNode[]): Promise<string> => {
    const timelineId = newTimelineId();
    await pageserver.timelines.createTimeline({ timelineId, tenantId: TENANT_ID, pgMajorVersion: 18 }, deadline());
    if (withWal.length > 0) {
      await createTimeline(withWal, timelineId);
      await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: withWal.map((node) => node.address) });
    }
    return timelineId;
  };
  const timelineId = await newTimeline(safekeepers);
  let term = 1;
  const first = await ComputeNode.start(harness, { timelineId, term, safekeepers, pageserver: pageserver.address });
  console.log(`setup: 3 safekeepers, pageserver, timeline ${timelineId}, first compute: ${fixed(since(setupStarted) / 1000, 1)} s`);

  const initStarted = performance.now();
  await run('pgbench', ['-i', '-q', '-s', String(scale)], { env: pgEnv(first.pgPort), maxBuffer: 64 * 1024 * 1024 });
  const initSeconds = since(initStarted) / 1000;
  const client = await first.connect();
  clients.push(client);
  const relation = (
    await client.query<{ db: number; rel: number; bytes: string; lsn: string }>(
      `SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::int AS db,
              pg_relation_filenode('pgbench_accounts')::int AS rel,
              pg_relation_size('pgbench_accounts')::text AS bytes,
              pg_current_wal_flush_lsn()::text AS lsn`,
    )
  ).rows[0];
  await client.end();
  clients.length = 0;
  const relationBytes = Number(relation.bytes);
  const blockCount = Math.floor(relationBytes / PAGE_SIZE);
  console.log(
    `pgbench -i -s ${scale}: ${fixed(initSeconds, 1)} s; pgbench_accounts ${mib(relationBytes)} (${blockCount} blocks, ` +
      `db ${relation.db}, relfilenode ${relation.rel}), WAL at ${relation.lsn}`,
  );
  const lagAtEnd = await ingestPosition(pageserver, safekeepers, timelineId);
  console.log(`at the end of pgbench -i: ${lagAtEnd.text}`);
  const firstStop = await stopCompute(first);
  const finalLsn = firstStop.finalLsn ?? parseLsn(relation.lsn);
  console.log(`compute stopped in ${fixed(firstStop.seconds, 1)} s (${firstStop.snapshot}); final LSN ${formatLsn(finalLsn)}`);
  // The reads must see the whole table: wait until the pageserver has ingested the compute's last record.
  const catchUpStarted = performance.now();
  let repointed = '';
  try {
    await pageserver.timelines.waitForLsn({ timelineId, lsn: finalLsn }, deadline(STALL_MS));
  } catch (error) {
    // A pageserver following a safekeeper that a majority left behind waits for WAL that never comes: say so, and
    // point it at the same safekeepers again (what a control plane can do), which makes it pick the most advanced.
    const position = await ingestPosition(pageserver, safekeepers, timelineId);
    repointed = `stalled ${STALL_MS / 1000} s below the final LSN (${(error as Error).message}; ${position.text}); SetWalSource again`;
    console.log(`SURPRISE: pageserver ingest ${repointed}`);
    await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers.map((node) => node.address) });
    try {
      await pageserver.timelines.waitForLsn({ timelineId, lsn: finalLsn }, deadline(CATCH_UP_MS));
    } catch (again) {
      const after = await ingestPosition(pageserver, safekeepers, timelineId);
      throw new Error(`the pageserver did not ingest up to the final LSN ${formatLsn(finalLsn)} (${(again as Error).message}): ${after.text}`);
    }
  }
  const catchUpSeconds = since(catchUpStarted) / 1000;
  // At rest: the pageserver stops the replayer once the timeline is idle and a snapshot covers its end.
  const restStarted = performance.now();
  const timeline = await waitFor(
    async () => {
      const { timeline: described } = await pageserver.timelines.describeTimeline({ timelineId });
      const covered = described && described.snapshots.some((snapshot) => snapshot.lsn >= described.lastRecordLsn);
      return described && ((covered && !described.replayerRunning) || since(restStarted) > REST_WAIT_MS) ? described : undefined;
    },
    { what: `DescribeTimeline of ${timelineId}`, timeoutMs: REST_WAIT_MS + 10_000, intervalMs: 200 },
  );
  const newestSnapshot = timeline.snapshots.at(-1)?.lsn ?? 0n;
  console.log(
    `pageserver caught up with the final LSN ${fixed(catchUpSeconds, 1)} s after the stop; at rest after ${fixed(since(restStarted) / 1000, 1)} s more: ` +
      `last_record_lsn ${formatLsn(timeline.lastRecordLsn)}, ${timeline.snapshots.length} snapshots (newest ${formatLsn(newestSnapshot)}), ` +
      `replayer ${timeline.replayerRunning ? 'running' : 'stopped'}${repointed ? ' (after SetWalSource again, see SURPRISE above)' : ''}`,
  );
  const emptyTimelineId = await newTimeline([]);

  // 1. GetPage@LSN against pread of the same blocks.
  const target: ReadTarget = {
    timelineId,
    rel: { spcNode: 1663, dbNode: relation.db, relNode: relation.rel, fork: ForkNumber.FORK_NUMBER_MAIN },
    lsn: timeline.lastRecordLsn,
  };
  const random = seededRandom(50_050);
  const blocks = randomBlocks(blockCount, pagesPerRound, random);
  const pageClients = Array.from({ length: concurrency }, () => {
    const channel = openChannel(pageserver.address);
    channels.push(channel);
    return createSpgClient(PageServiceDefinition, channel);
  });
  const [sequentialClient] = pageClients;
  const firstReadStarted = performance.now();
  await getPage(sequentialClient, target, blocks[0]);
  const firstReadMs = since(firstReadStarted);
  const copyPath = harness.tempDir('bench').join('pgbench_accounts.copy');
  const copy = fs.openSync(copyPath, 'w+');
  try {
    // The baseline file: the relation's size, holding the pages the pageserver answered at the blocks read.
    fs.ftruncateSync(copy, blockCount * PAGE_SIZE);
    const warmUpStarted = performance.now();
    for (const block of blocks) fs.writeSync(copy, await getPage(sequentialClient, target, block), 0, PAGE_SIZE, block * PAGE_SIZE);
    const warmUpSeconds = since(warmUpStarted) / 1000;
    console.log(
      `GetPage at ${formatLsn(target.lsn)}: first read ${fixed(firstReadMs, 1)} ms, warm-up of ${blocks.length} blocks ${fixed(warmUpSeconds, 1)} s`,
    );
    const page = Buffer.alloc(PAGE_SIZE);
    const pread = new ReadFigures('pread (local file, baseline)');
    const emptyCall = new ReadFigures('gRPC Health/Check (empty call)');
    const healthClient = createSpgClient(HealthDefinition, channels[0] as Channel);
    const sequential = new ReadFigures('GetPage, 1 client, sequential');
    const concurrent = new ReadFigures(`GetPage, ${concurrency} clients`);
    const stream = new ReadFigures(`GetPages stream, ${concurrency} in flight`);
    const modes: Array<{ figures: ReadFigures; read: (order: number[]) => Promise<ReadRound> }> = [
      {
        figures: pread,
        read: (order) =>
          readSequentially(async (block) => {
            if (fs.readSync(copy, page, 0, PAGE_SIZE, block * PAGE_SIZE) !== PAGE_SIZE) throw new Error(`short pread of block ${block}`);
          }, order),
      },
      { figures: emptyCall, read: (order) => readSequentially(async () => void (await healthClient.check({ service: '' }, deadline())), order) },
      { figures: sequential, read: (order) => readSequentially((block) => getPage(sequentialClient, target, block), order) },
      { figures: concurrent, read: (order) => readConcurrently(pageClients, target, order) },
      { figures: stream, read: (order) => readStream(sequentialClient, target, order, concurrency) },
    ];
    for (let round = 0; round < rounds; round += 1) {
      const order = shuffled(blocks, random);
      for (const mode of [...modes.slice(round % modes.length), ...modes.slice(0, round % modes.length)]) {
        mode.figures.rounds.push(await mode.read(order));
      }
    }
    console.log('');
    console.log('GetPage@LSN, random 8 KiB blocks of pgbench_accounts (medians of rounds)');
    console.log(`  ${'mode'.padEnd(36)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'pages/s'.padStart(9)} ${'reads'.padStart(7)}`);
    for (const figures of [pread, emptyCall, sequential, concurrent, stream]) {
      console.log(
        `  ${figures.name.padEnd(36)} ${fixed(figures.latency(0.5), 3).padStart(8)} ${fixed(figures.latency(0.99), 3).padStart(8)} ` +
          `${fixed(figures.pagesPerSecond, 0).padStart(9)} ${String(figures.reads).padStart(7)}`,
      );
    }
    const p50 = sequential.latency(0.5);
    console.log(
      `  ratio GetPage/pread p50 latency: ${fixed(p50 / pread.latency(0.5), 0)}x; GetPage/empty call: ${fixed(p50 / emptyCall.latency(0.5), 2)}x; ` +
        `GetPage p50 ${fixed(p50, 3)} ms (target ≤ 1 ms on loopback: ${p50 <= 1 ? 'met' : 'MISSED'}); ` +
        `first read ${fixed(firstReadMs, 1)} ms`,
    );

    // 2. Basebackup FULL vs THIN, of the pgbench timeline and of an empty one.
    const backups = new Map<string, BasebackupRun[]>();
    const kinds = [
      { name: `scale ${scale} FULL`, timelineId, mode: BasebackupMode.BASEBACKUP_MODE_FULL },
      { name: `scale ${scale} THIN`, timelineId, mode: BasebackupMode.BASEBACKUP_MODE_THIN },
      { name: 'empty FULL', timelineId: emptyTimelineId, mode: BasebackupMode.BASEBACKUP_MODE_FULL },
      { name: 'empty THIN', timelineId: emptyTimelineId, mode: BasebackupMode.BASEBACKUP_MODE_THIN },
    ];
    for (let round = 0; round < rounds; round += 1) {
      for (const kind of round % 2 === 0 ? kinds : [...kinds].reverse()) {
        const runs = backups.get(kind.name) ?? [];
        runs.push(await receiveBasebackup(sequentialClient, kind.timelineId, kind.mode));
        backups.set(kind.name, runs);
      }
    }
    const backup = (name: string) => {
      const runs = backups.get(name) ?? [];
      return { ...runs[0], seconds: median(runs.map((entry) => entry.seconds)), bytes: median(runs.map((entry) => entry.bytes)) };
    };
    console.log('');
    console.log('Basebackup (medians of rounds; bytes are the tar chunks received, equal to metadata.tar_bytes)');
    console.log(`  ${'timeline, mode'.padEnd(20)} ${'tar bytes'.padStart(12)} ${''.padStart(12)} ${'seconds'.padStart(8)} ${'MiB/s'.padStart(7)} ${'omitted'.padStart(12)} ${'WAL bytes'.padStart(10)}`);
    for (const { name } of kinds) {
      const figures = backup(name);
      console.log(
        `  ${name.padEnd(20)} ${String(figures.bytes).padStart(12)} ${`(${mib(figures.bytes)})`.padStart(12)} ${fixed(figures.seconds, 2).padStart(8)} ` +
          `${fixed(figures.bytes / 1024 / 1024 / figures.seconds, 0).padStart(7)} ${mib(figures.omittedBytes).padStart(12)} ${String(figures.walBytes).padStart(10)}` +
          (figures.omittedRelations > 0 ? `  (${figures.omittedRelations} forks omitted)` : ''),
      );
    }
    const thin = backup(`scale ${scale} THIN`);
    const full = backup(`scale ${scale} FULL`);
    const thinEmpty = backup('empty THIN');
    const thinRatio = thin.bytes / thinEmpty.bytes;
    console.log(
      `  thin(scale ${scale})/thin(empty): ${fixed(thinRatio, 2)}x (target ≤ 2: ${thinRatio <= 2 ? 'met' : 'MISSED'}); ` +
        `full/thin (scale ${scale}): ${fixed(full.bytes / thin.bytes, 1)}x; full/thin seconds: ${fixed(full.seconds / thin.seconds, 1)}x`,
    );

    // 3. New computes from the stopped timeline.
    const starts: Array<{ seconds: number; phases: Record<string, number>; tarBytes: number; walBytes: number; stopSeconds: number; snapshot: string }> = [];
    for (let round = 0; round < rounds; round += 1) {
      term += 1;
      const spawned = performance.now();
      const compute = await ComputeNode.start(harness, { timelineId, term, safekeepers, pageserver: pageserver.address });
      const seconds = since(spawned) / 1000;
      const running = compute.process.findLine((line) => line.msg === 'compute running');
      const unpacked = compute.process.findLine((line) => line.msg === 'basebackup unpacked');
      const stopped = await stopCompute(compute);
      fs.rmSync(compute.pgDataDir, { recursive: true, force: true });
      starts.push({
        seconds,
        phases: (running?.phases as Record<string, number> | undefined) ?? {},
        tarBytes: Number(unpacked?.tarBytes ?? Number.NaN),
        walBytes: Number(unpacked?.walBytes ?? Number.NaN),
        stopSeconds: stopped.seconds,
        snapshot: stopped.snapshot,
      });
    }
    const startSeconds = median(starts.map((start) => start.seconds));
    const phaseNames = [...new Set(starts.flatMap((start) => Object.keys(start.phases)))];
    const phaseMedians = Object.fromEntries(phaseNames.map((name) => [name, median(starts.map((start) => start.phases[name] ?? Number.NaN))]));
    console.log('');
    console.log(`New compute from the stopped timeline (empty data directory, terms 2..${term}), spawn to "agent ready"`);
    for (const [index, start] of starts.entries()) {
      const phases = Object.entries(start.phases).map(([name, value]) => `${name}=${fixed(value, 2)}`).join(' ');
      console.log(
        `  term ${index + 2}: ${fixed(start.seconds, 2)} s [${phases}] basebackup ${mib(start.tarBytes)} + ${start.walBytes} WAL bytes to replay; ` +
          `clean stop ${fixed(start.stopSeconds, 1)} s (${start.snapshot})`,
      );
    }
    const basebackupShare = (phaseMedians.basebackup ?? Number.NaN) / startSeconds;
    console.log(
      `  median ${fixed(startSeconds, 2)} s; phases (medians): ${phaseNames.map((name) => `${name}=${fixed(phaseMedians[name], 2)} s`).join(', ')}; ` +
        `basebackup share of the start: ${fixed(basebackupShare * 100, 0)}%`,
    );

    // One line per process and message, with its count and its first occurrence.
    const noisyGroups = new Map<string, { count: number; first: string }>();
    for (const child of harness.started) {
      for (const line of warnings(child)) {
        const key = `${child.label} ${line.level}: ${line.msg}`;
        const group = noisyGroups.get(key) ?? { count: 0, first: `${child.label} ${brief(line)}` };
        group.count += 1;
        noisyGroups.set(key, group);
      }
    }
    const noisy = [...noisyGroups.values()].map((group) => `  ${group.count}x ${group.first}`);
    const images = pageserver.process.lines.filter((line) => line.msg === 'materialized an image for reads');
    console.log('');
    console.log(`pageserver: ${images.length} image(s) materialized for reads${images.map((line) => ` (${String(line.lsn)}: ${fixed(Number(line.seconds), 1)} s)`).join('')}`);
    console.log(noisy.length === 0 ? 'no warnings or errors logged by any process' : `warnings and errors logged (by process and message):\n${noisy.join('\n')}`);
    console.log('');
    console.log(`  ${'figure'.padEnd(42)} ${'value'.padStart(14)}  target`);
    const rows: Array<[string, string, string]> = [
      ['GetPage p50, 1 client (ms)', fixed(p50, 3), '≤ 1 ms'],
      ['GetPage p99, 1 client (ms)', fixed(sequential.latency(0.99), 3), ''],
      ['GetPage/pread p50 latency', `${fixed(p50 / pread.latency(0.5), 0)}x`, ''],
      [`GetPage pages/s, ${concurrency} clients`, fixed(concurrent.pagesPerSecond, 0), ''],
      [`GetPages stream pages/s, ${concurrency} in flight`, fixed(stream.pagesPerSecond, 0), ''],
      ['first GetPage at the LSN (ms)', fixed(firstReadMs, 1), ''],
      [`thin basebackup, scale ${scale}`, mib(thin.bytes), ''],
      ['thin basebackup, empty timeline', mib(thinEmpty.bytes), ''],
      ['thin(scale)/thin(empty)', `${fixed(thinRatio, 2)}x`, '≤ 2x'],
      [`full basebackup, scale ${scale}`, mib(full.bytes), ''],
      ['new compute start (s)', fixed(startSeconds, 2), ''],
      ['basebackup share of the start', `${fixed(basebackupShare * 100, 0)}%`, ''],
    ];
    for (const [name, value, goal] of rows) console.log(`  ${name.padEnd(42)} ${value.padStart(14)}  ${goal}`);
    console.log(
      `pageserver getpage_p50_ms=${fixed(p50, 3)} getpage_pps=${fixed(concurrent.pagesPerSecond, 0)} thin_bytes=${thin.bytes} ` +
        `full_bytes=${full.bytes} start_s=${fixed(startSeconds, 2)}`,
    );
  } finally {
    fs.closeSync(copy);
  }
  failed = false;
} finally {
  for (const client of clients) await client.end().catch(() => undefined);
  if (failed) {
    // The run's own error is what matters: the teardown's findings are printed, not thrown over it.
    await cleanUp(true).catch((error: unknown) => console.error((error as Error).message));
  } else {
    await cleanUp();
  }
}

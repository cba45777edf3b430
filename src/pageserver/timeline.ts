/**
 * One timeline on the pageserver: its identity, snapshots and WAL, and the ingest that follows its committed
 * WAL on the safekeepers (switching between them), writes it to local segments, finds record boundaries and
 * block references, uploads it to object storage and reports durable progress back.
 */
import { delay } from 'abort-controller-x';
import { formatLsn, segmentNumber, type Lsn } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import { Notifier } from '../lib/async.js';
import { notFound, ServerError, Status } from '../lib/grpc/errors.js';
import { Backoff } from '../lib/retry.js';
import { counter, gauge } from '../lib/metrics.js';
import { createSpgClient, openChannel, type SpgClient } from '../lib/grpc/client.js';
import type { Channel } from 'nice-grpc';
import { MAXALIGN, WalDecoder, recordBoundary, type WalRecord } from '../lib/pg/wal-decoder.js';
import { SafekeeperServiceDefinition } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import type { ObjectStore } from './storage/object-store.js';
import { WalArchive } from './wal-archive.js';
import { relationPath, timelineStateKey, type SnapshotIndex, type TimelineDurableState, type TimelineMeta } from './layout.js';
import type { ChangedBlocks } from './snapshots.js';

const ingestedBytes = counter('spg99_pageserver_ingested_bytes_total', 'WAL bytes ingested from safekeepers', ['timeline']);
const uploadedBytes = counter('spg99_pageserver_uploaded_wal_bytes_total', 'WAL bytes uploaded to object storage', ['timeline']);
const lastRecordGauge = gauge('spg99_pageserver_last_record_lsn', 'End of the last WAL record ingested', ['timeline']);
const durableGauge = gauge('spg99_pageserver_remote_consistent_lsn', 'WAL durable in object storage up to here', ['timeline']);

/** Recent commits kept for branching at a time. */
const MAX_COMMITS = 100_000;
const PERSISTED_COMMITS = 2000;
/** Another safekeeper this far ahead of the followed one makes ingest switch to it. */
const SWITCH_LAG_BYTES = 8n * 1024n * 1024n;
const SWITCH_CHECK_MS = 2000;

/** Block references seen in WAL, per relation segment file: the latest LSN each block was touched at. */
export class BlockRefTracker {
  private readonly touched = new Map<string, Map<number, Lsn>>();
  /** References are complete from this LSN on (none before it are known). */
  coveredFrom: Lsn = 0n;
  active = false;

  reset(from: Lsn): void {
    this.touched.clear();
    this.coveredFrom = from;
    this.active = true;
  }

  stop(): void {
    this.touched.clear();
    this.active = false;
  }

  add(record: WalRecord): void {
    for (const block of record.blocks) {
      const { path, blockInFile } = relationPath(block.spcOid, block.dbOid, block.relNumber, block.forkNumber, block.blockNumber);
      let blocks = this.touched.get(path);
      if (!blocks) {
        blocks = new Map();
        this.touched.set(path, blocks);
      }
      blocks.set(blockInFile, record.startLsn);
    }
  }

  /** The blocks touched at or after `since`; every block when the references do not reach back that far. */
  changedSince(since: Lsn): ChangedBlocks {
    if (!this.active || since < this.coveredFrom) return () => 'all';
    return (path) => {
      const blocks = this.touched.get(path);
      const changed = new Set<number>();
      if (blocks) for (const [block, lsn] of blocks) if (lsn >= since) changed.add(block);
      return changed;
    };
  }

  /** Forgets references older than `lsn`. */
  prune(lsn: Lsn): void {
    for (const [path, blocks] of this.touched) {
      for (const [block, touchedAt] of blocks) if (touchedAt < lsn) blocks.delete(block);
      if (blocks.size === 0) this.touched.delete(path);
    }
  }
}

export interface TimelineOptions {
  meta: TimelineMeta;
  state: TimelineDurableState;
  snapshots: SnapshotIndex[];
  localDir: string;
  store: ObjectStore;
  consumerId: string;
  /** How often ingested WAL is uploaded and progress reported. */
  uploadIntervalMs: number;
  log: Logger;
}

export class Timeline {
  readonly meta: TimelineMeta;
  readonly id: string;
  state: TimelineDurableState;
  snapshots: SnapshotIndex[];
  readonly archive: WalArchive;
  readonly changed = new Notifier();
  readonly blockRefs = new BlockRefTracker();
  lastRecordLsn: Lsn;
  prevRecordLsn: Lsn;
  durableLsn: Lsn;
  /** When WAL last arrived (ms since epoch). */
  lastWalAt = 0;
  /** Where the WAL comes from now. */
  walSourceAddress = '';
  deleted = false;
  broken = '';
  /** Called with each local segment file created (the replayer links them). */
  onSegment: ((segment: bigint) => void) | null = null;
  private decoder: WalDecoder;
  private ingestController: AbortController | null = null;
  private ingestLoop: Promise<void> | null = null;
  private readonly log: Logger;
  private readonly clients = new Map<string, SpgClient<typeof SafekeeperServiceDefinition>>();
  private readonly channels: Channel[] = [];

  constructor(private readonly options: TimelineOptions) {
    this.meta = options.meta;
    this.id = options.meta.timelineId;
    this.state = options.state;
    this.snapshots = [...options.snapshots].sort((a, b) => (BigInt(a.lsn) < BigInt(b.lsn) ? -1 : 1));
    this.log = options.log;
    this.archive = new WalArchive(this.id, options.localDir, options.store, options.log);
    this.durableLsn = BigInt(this.state.durableLsn);
    this.lastRecordLsn = this.durableLsn;
    this.prevRecordLsn = BigInt(this.state.durablePrevLsn);
    this.decoder = new WalDecoder(this.lastRecordLsn);
    lastRecordGauge.set({ timeline: this.id }, Number(this.lastRecordLsn));
    durableGauge.set({ timeline: this.id }, Number(this.durableLsn));
  }

  get ancestorLsn(): Lsn {
    return BigInt(this.meta.ancestorLsn);
  }

  get startLsn(): Lsn {
    return BigInt(this.meta.startLsn);
  }

  get gcCutoffLsn(): Lsn {
    return BigInt(this.state.gcCutoffLsn);
  }

  get latestSnapshot(): SnapshotIndex | undefined {
    return this.snapshots[this.snapshots.length - 1];
  }

  /**
   * Waits until WAL up to `lsn` is ingested; rejects when `signal` aborts, or with DEADLINE_EXCEEDED and what was
   * missing at `giveUpAtMs` (just before the caller's deadline).
   */
  async waitForLsn(lsn: Lsn, signal: AbortSignal, giveUpAtMs?: number): Promise<Lsn> {
    while (this.lastRecordLsn < lsn) {
      if (this.deleted) throw notFound(`timeline ${this.id} was deleted`);
      const left = giveUpAtMs === undefined ? 1000 : giveUpAtMs - Date.now();
      if (left <= 0) {
        const source = this.walSourceAddress ? `following ${this.walSourceAddress}` : this.state.walSources.length ? 'no safekeeper answers' : 'no WAL source is set';
        throw new ServerError(
          Status.DEADLINE_EXCEEDED,
          `timeline ${this.id} has WAL only up to ${formatLsn(this.lastRecordLsn)} (${source}); ${formatLsn(lsn)} did not arrive before the deadline: ` +
            'is a compute writing it, or ask for an LSN it has',
        );
      }
      await this.changed.wait(signal, Math.min(1000, left));
    }
    return this.lastRecordLsn;
  }

  /** Starts following the WAL sources (restarting the stream when they change). */
  setWalSources(addresses: string[]): void {
    this.state.walSources = [...addresses];
    this.stopIngest();
    if (addresses.length === 0) return;
    const controller = new AbortController();
    this.ingestController = controller;
    this.ingestLoop = this.runIngest(controller.signal).catch((error: unknown) => {
      if (!controller.signal.aborted) this.log.error({ err: error }, 'WAL ingest stopped');
    });
  }

  /** Stops following and uploads what was ingested. */
  async close(): Promise<void> {
    this.stopIngest();
    await this.ingestLoop;
    await this.uploadNow().catch((error: unknown) => this.log.warn({ error: (error as Error).message }, 'final WAL upload failed'));
    this.archive.close();
    this.closeChannels();
  }

  /** Closes the channels to safekeepers (a deleted or closed timeline). */
  closeChannels(): void {
    for (const channel of this.channels.splice(0)) channel.close();
    this.clients.clear();
  }

  private stopIngest(): void {
    this.ingestController?.abort();
    this.ingestController = null;
    this.walSourceAddress = '';
  }

  /** Takes WAL bytes that start at `begin` (overlap with what was ingested is skipped; a gap is an error). */
  ingest(begin: Lsn, data: Uint8Array): void {
    let bytes = data;
    let position = begin;
    const feedLsn = this.decoder.feedLsn;
    if (position < feedLsn) {
      const skip = Number(feedLsn - position);
      if (skip >= bytes.length) return;
      bytes = bytes.subarray(skip);
      position = feedLsn;
    }
    if (position > feedLsn) throw new Error(`WAL from ${formatLsn(position)} leaves a gap after ${formatLsn(feedLsn)}`);
    const firstSegment = segmentNumber(position);
    const hadSegment = this.archive.hasLocal(segmentNumber(position + BigInt(bytes.length) - 1n));
    this.archive.write(position, bytes);
    if (!hadSegment && this.onSegment) {
      for (let segment = firstSegment; segment <= segmentNumber(position + BigInt(bytes.length) - 1n); segment++) this.onSegment(segment);
    }
    let records: WalRecord[];
    try {
      records = this.decoder.feed(bytes);
    } catch (error) {
      this.broken = `WAL at ${formatLsn(this.decoder.lastRecordEnd)} cannot be decoded: ${(error as Error).message}`;
      throw error;
    }
    ingestedBytes.inc({ timeline: this.id }, bytes.length);
    if (records.length === 0) return;
    for (const record of records) {
      if (this.blockRefs.active) this.blockRefs.add(record);
      if (record.commitTime) {
        this.state.commits.push([MAXALIGN(record.endLsn).toString(), record.commitTime.getTime()]);
      }
    }
    if (this.state.commits.length > MAX_COMMITS) this.state.commits.splice(0, this.state.commits.length - MAX_COMMITS);
    this.lastRecordLsn = recordBoundary(this.decoder);
    this.prevRecordLsn = this.decoder.lastRecordStart;
    this.lastWalAt = Date.now();
    lastRecordGauge.set({ timeline: this.id }, Number(this.lastRecordLsn));
    this.changed.notify();
  }

  /** Uploads ingested WAL up to the last record boundary and persists the durable state. */
  async uploadNow(): Promise<void> {
    const target = this.lastRecordLsn;
    const prev = this.prevRecordLsn;
    if (target <= this.durableLsn) return;
    const bytes = await this.archive.upload(this.durableLsn, target);
    uploadedBytes.inc({ timeline: this.id }, bytes);
    this.state.durableLsn = target.toString();
    this.state.durablePrevLsn = prev.toString();
    await this.persistState();
    this.durableLsn = target;
    durableGauge.set({ timeline: this.id }, Number(target));
    this.changed.notify();
  }

  async persistState(): Promise<void> {
    // Only the newest commits are kept across restarts; older branch times are found by decoding WAL.
    const state = { ...this.state, commits: this.state.commits.slice(-PERSISTED_COMMITS) };
    await this.options.store.put(timelineStateKey(this.id), Buffer.from(JSON.stringify(state)));
  }

  private async runIngest(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff(100, 2000);
    // The segment ingest continues may be only in object storage (a lost local disk): bring it back first, or the
    // new bytes would land in an empty file and its upload would replace the good copy.
    while (!signal.aborted) {
      try {
        await this.archive.ensureLocal(segmentNumber(this.decoder.feedLsn));
        break;
      } catch (error) {
        this.log.warn({ error: (error as Error).message }, 'cannot fetch the WAL segment ingest continues; retrying');
        await backoff.wait(signal).catch(() => undefined);
      }
    }
    const uploader = (async () => {
      while (!signal.aborted) {
        await delay(signal, this.options.uploadIntervalMs).catch(() => undefined);
        try {
          await this.uploadNow();
          await this.reportProgress();
        } catch (error) {
          if (!signal.aborted) this.log.warn({ error: (error as Error).message }, 'WAL upload failed; retrying');
        }
      }
    })();
    while (!signal.aborted) {
      try {
        await this.followBest(signal);
        backoff.reset();
      } catch (error) {
        if (signal.aborted) break;
        this.log.warn({ error: (error as Error).message, source: this.walSourceAddress }, 'WAL stream failed; switching or retrying');
        this.walSourceAddress = '';
        await backoff.wait(signal).catch(() => undefined);
      }
    }
    await uploader;
  }

  /** A client of a safekeeper, on one channel per address for the timeline's life. */
  private safekeeper(address: string): SpgClient<typeof SafekeeperServiceDefinition> {
    let client = this.clients.get(address);
    if (!client) {
      const channel = openChannel(address);
      this.channels.push(channel);
      client = createSpgClient(SafekeeperServiceDefinition, channel);
      this.clients.set(address, client);
    }
    return client;
  }

  /** The commit LSN each WAL source reports (-1 when it does not answer). */
  private async sourceCommitLsns(signal: AbortSignal): Promise<Array<{ address: string; commitLsn: Lsn }>> {
    return Promise.all(
      this.state.walSources.map(async (address) => {
        const client = this.safekeeper(address);
        try {
          const { status } = await client.getTimelineStatus({ timelineId: this.id }, { signal, deadline: new Date(Date.now() + 2000) });
          return { address, commitLsn: status?.commitLsn ?? 0n };
        } catch {
          return { address, commitLsn: -1n };
        }
      }),
    );
  }

  /**
   * Streams from the safekeeper with the highest commit LSN until it fails, falls silent for 5 s, or another one
   * is ahead of it by more than SWITCH_LAG_BYTES (a safekeeper outside the quorum can lag far behind while it
   * still sends keepalives).
   */
  private async followBest(signal: AbortSignal): Promise<void> {
    const statuses = await this.sourceCommitLsns(signal);
    const best = statuses.filter((candidate) => candidate.commitLsn >= 0n).sort((a, b) => (a.commitLsn > b.commitLsn ? -1 : 1))[0];
    if (!best) throw new Error(`no safekeeper of ${this.state.walSources.join(', ')} answers for timeline ${this.id}`);
    const stream = new AbortController();
    const onAbort = () => stream.abort();
    signal.addEventListener('abort', onAbort);
    let lastMessage = Date.now();
    let sourceCommit = best.commitLsn;
    let reason = '';
    const watchdog = setInterval(() => {
      if (Date.now() - lastMessage > 5000) {
        reason = `safekeeper ${best.address} was silent for 5 s`;
        stream.abort();
      }
    }, 1000);
    const comparer = setInterval(() => {
      void this.sourceCommitLsns(stream.signal)
        .then((others) => {
          const ahead = others.find((other) => other.address !== best.address && other.commitLsn > sourceCommit + SWITCH_LAG_BYTES);
          if (ahead && !stream.signal.aborted) {
            reason = `safekeeper ${ahead.address} is ${ahead.commitLsn - sourceCommit} bytes ahead of ${best.address}: switching`;
            stream.abort();
          }
        })
        .catch(() => undefined);
    }, SWITCH_CHECK_MS);
    this.walSourceAddress = best.address;
    try {
      const client = this.safekeeper(best.address);
      const responses = client.streamWal({ timelineId: this.id, startLsn: this.decoder.feedLsn, endLsn: 0n, includeUncommitted: false }, { signal: stream.signal });
      for await (const response of responses) {
        lastMessage = Date.now();
        sourceCommit = response.commitLsn;
        if (response.walData.length > 0) this.ingest(response.beginLsn, response.walData);
      }
      throw new Error(`safekeeper ${best.address} ended the WAL stream`);
    } catch (error) {
      if (stream.signal.aborted && !signal.aborted) throw new Error(reason || `the stream from ${best.address} was cut`);
      throw error;
    } finally {
      clearInterval(watchdog);
      clearInterval(comparer);
      signal.removeEventListener('abort', onAbort);
    }
  }

  private async reportProgress(): Promise<void> {
    await Promise.all(
      this.state.walSources.map(async (address) => {
        const client = this.safekeeper(address);
        try {
          await client.reportConsumerProgress(
            { timelineId: this.id, consumerId: this.options.consumerId, ingestedLsn: this.lastRecordLsn, durableLsn: this.durableLsn },
            { deadline: new Date(Date.now() + 2000) },
          );
        } catch (error) {
          this.log.debug({ safekeeper: address, error: (error as Error).message }, 'progress report failed');
        }
      }),
    );
  }

  /** Decodes WAL records in [from, to) read by `read`, for block references (the replayer's start). */
  static decodeRange(from: Lsn, to: Lsn, read: (from: Lsn, to: Lsn) => Buffer, onRecord: (record: WalRecord) => void): void {
    const decoder = new WalDecoder(from);
    const step = 4n * 1024n * 1024n;
    for (let position = from; position < to; position += step) {
      const end = position + step < to ? position + step : to;
      for (const record of decoder.feed(read(position, end))) onRecord(record);
    }
  }

  /** The commit LSN at or before `time` (the end of that commit record), or undefined when none is known. */
  commitLsnAt(time: Date): Lsn | undefined {
    const ms = time.getTime();
    let found: Lsn | undefined;
    for (const [lsn, at] of this.state.commits) {
      if (at <= ms) found = BigInt(lsn);
      else break;
    }
    return found;
  }
}

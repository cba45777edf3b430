/**
 * The pageserver: every timeline's history (WAL and snapshots in object storage), a replayer per active timeline,
 * basebackups at any LSN, branches, and the policy that decides when to snapshot and when a replayer may stop.
 */
import fs from 'node:fs';
import path from 'node:path';
import { formatLsn, segmentNumber, segmentOffset, segmentStart, walFileName, WAL_SEGMENT_SIZE, type Lsn } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import { gauge, histogram } from '../lib/metrics.js';
import { initdb } from '../lib/pg/postgres.js';
import { MAXALIGN, WalDecoder, crc32c, recordBoundary } from '../lib/pg/wal-decoder.js';
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../lib/grpc/errors.js';
import type { ObjectStore } from './storage/object-store.js';
import { ObjectNotFoundError } from './storage/object-store.js';
import {
  PAGE_SIZE,
  snapshotKey,
  timelineMetaKey,
  timelinePrefix,
  timelineStateKey,
  type SnapshotIndex,
  type SnapshotRef,
  type TimelineDurableState,
  type TimelineMeta,
} from './layout.js';
import { DB_SHUTDOWNED, readControlFile } from './pg-control.js';
import { Replayer, backupLabel } from './replayer.js';
import { captureSnapshot, dataDirEntries, materialize, objectKey, parseSnapshotIndex, rebaseSnapshot, snapshotBytes, SnapshotReader } from './snapshots.js';
import { TAR_END, tarEntryBytes, tarHeader, tarPadding } from './tar.js';
import { Timeline } from './timeline.js';
import { PageReader } from './pages.js';

const SEGMENT_BYTES = Number(WAL_SEGMENT_SIZE);
const replayersGauge = gauge('spg99_pageserver_replayers_running', 'Replayer Postgres processes running');
const snapshotSeconds = histogram('spg99_pageserver_snapshot_seconds', 'Time to take and store a snapshot');
const basebackupSeconds = histogram('spg99_pageserver_basebackup_prepare_seconds', 'Time to prepare a basebackup before its first byte');

/** The PostgreSQL major versions this pageserver can run. */
export const SUPPORTED_PG_MAJOR_VERSIONS = [18];
const TENANT_ID_PATTERN = /^tn-[a-z0-9]{1,40}$/;

/** What GC removed from one timeline. */
export interface GcOutcome {
  timelineId: string;
  gcCutoffLsn: Lsn;
  removedSnapshotLsns: Lsn[];
  removedWalBytes: number;
  removedBytes: number;
}

export interface PageserverOptions {
  id: string;
  dataDir: string;
  store: ObjectStore;
  /** Snapshot once this much WAL has arrived since the newest snapshot. */
  snapshotWalBytes: number;
  /** A timeline with no new WAL for this long is snapshotted (if needed) and its replayer stopped. */
  idleMs: number;
  /** A timeline with new WAL is snapshotted at least this often. */
  snapshotIntervalMs: number;
  uploadIntervalMs: number;
  /** The longest an LSN lease is held. */
  maxLeaseMs: number;
  /** History kept by the periodic GC, and how often it runs (0: never). */
  gcRetentionMs: number;
  gcIntervalMs: number;
  log: Logger;
}

export interface CreateTimelineParams {
  timelineId: string;
  tenantId: string;
  pgMajorVersion: number;
  superuser: string;
  dataChecksums: boolean;
  locale: string;
}

/** A basebackup ready to stream. */
export interface PreparedBasebackup {
  lsn: Lsn;
  prevRecordLsn: Lsn;
  snapshot: SnapshotIndex;
  walBytes: number;
  tarBytes: number;
  omittedBytes: number;
  omitted: Array<{ path: string; blocks: number }>;
  logicalBytes: number;
  systemId: bigint;
  pgMajorVersion: number;
  chunks: () => AsyncIterable<Buffer>;
}

export class Pageserver {
  readonly timelines = new Map<string, Timeline>();
  readonly reader: SnapshotReader;
  readonly pages: PageReader;
  private readonly replayers = new Map<string, Replayer>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private policyTimer: NodeJS.Timeout | null = null;
  private gcTimer: NodeJS.Timeout | null = null;
  private policyRunning = false;
  private closed = false;

  private constructor(private readonly options: PageserverOptions) {
    this.reader = new SnapshotReader(options.store, path.join(options.dataDir, 'cache'), (ref) => this.findSnapshot(ref));
    this.pages = new PageReader(this, path.join(options.dataDir, 'images'), options.log.child({ part: 'pages' }));
  }

  /** Opens the pageserver: loads every timeline from object storage and resumes following WAL. */
  static async open(options: PageserverOptions): Promise<Pageserver> {
    fs.mkdirSync(options.dataDir, { recursive: true });
    fs.rmSync(path.join(options.dataDir, 'tmp'), { recursive: true, force: true });
    const pageserver = new Pageserver(options);
    const keys = await options.store.list('timelines/');
    const ids = new Set<string>();
    for (const object of keys) {
      const match = /^timelines\/([^/]+)\/timeline\.json$/.exec(object.key);
      if (match?.[1]) ids.add(match[1]);
    }
    for (const id of ids) {
      let key = timelineMetaKey(id);
      try {
        const meta = JSON.parse((await options.store.get(key)).toString('utf8')) as TimelineMeta;
        key = timelineStateKey(id);
        const state = JSON.parse((await options.store.get(key)).toString('utf8')) as TimelineDurableState;
        const snapshots: SnapshotIndex[] = [];
        for (const object of keys) {
          if (object.key.startsWith(`${timelinePrefix(id)}snapshots/`) && object.key.endsWith('.json')) {
            key = object.key;
            snapshots.push(parseSnapshotIndex(object.key, await options.store.get(object.key)));
          }
        }
        pageserver.register(meta, state, snapshots);
      } catch (error) {
        // One damaged timeline must not keep the others from being served.
        options.log.error({ timelineId: id, object: key, error: (error as Error).message }, 'cannot load timeline: an object of it is damaged; it is not served');
      }
    }
    for (const timeline of pageserver.timelines.values()) {
      if (timeline.state.walSources.length > 0) timeline.setWalSources(timeline.state.walSources);
    }
    pageserver.policyTimer = setInterval(() => void pageserver.runPolicy(), 500);
    if (options.gcIntervalMs > 0) {
      pageserver.gcTimer = setInterval(() => {
        pageserver.runGc(null, options.gcRetentionMs).catch((error: unknown) => options.log.warn({ error: (error as Error).message }, 'periodic GC failed'));
      }, options.gcIntervalMs);
    }
    options.log.info({ timelines: pageserver.timelines.size, store: options.store.description }, 'pageserver loaded its timelines');
    return pageserver;
  }

  /** Stops replayers and ingest, uploading what was ingested. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.policyTimer) clearInterval(this.policyTimer);
    if (this.gcTimer) clearInterval(this.gcTimer);
    await Promise.all([...this.timelines.values()].map((timeline) => timeline.close()));
    await Promise.all([...this.replayers.keys()].map((id) => this.stopReplayer(id)));
    this.reader.close();
  }

  /** The timeline, or NOT_FOUND. */
  get(timelineId: string): Timeline {
    const timeline = this.timelines.get(timelineId);
    if (!timeline || timeline.deleted) {
      throw notFound(`timeline ${timelineId} does not exist on this pageserver: create it, or check the id`);
    }
    return timeline;
  }

  /** The configured GC retention window. */
  get gcRetentionMs(): number {
    return this.options.gcRetentionMs;
  }

  replayerRunning(timelineId: string): boolean {
    return this.replayers.get(timelineId)?.running ?? false;
  }

  // --- Creating timelines -------------------------------------------------------------------------------------

  async createTimeline(params: CreateTimelineParams): Promise<Timeline> {
    if (!TENANT_ID_PATTERN.test(params.tenantId)) {
      throw invalidArgument(`tenant_id must be tn- followed by 1 to 40 lowercase letters or digits, got "${params.tenantId}"`);
    }
    if (!SUPPORTED_PG_MAJOR_VERSIONS.includes(params.pgMajorVersion)) {
      throw invalidArgument(`pg_major_version ${params.pgMajorVersion} is not supported: use one of ${SUPPORTED_PG_MAJOR_VERSIONS.join(', ')}`);
    }
    await this.ensureNew(params.timelineId);
    return this.exclusive(params.timelineId, async () => {
      await this.ensureNew(params.timelineId);
      const { log, store } = this.options;
      const tmp = path.join(this.options.dataDir, 'tmp', `initdb-${params.timelineId}`);
      fs.rmSync(tmp, { recursive: true, force: true });
      await initdb(tmp, log, { superuser: params.superuser, dataChecksums: params.dataChecksums, locale: params.locale || undefined });
      const control = readControlFile(tmp);
      if (control.state !== DB_SHUTDOWNED) throw new Error(`initdb left ${tmp} in state ${control.state}, not shut down`);
      const segment = segmentNumber(control.checkpointLsn);
      const segmentBytes = fs.readFileSync(path.join(tmp, 'pg_wal', walFileName(control.timelineId, segment)));
      const decoder = new WalDecoder(control.checkpointLsn);
      const [checkpoint] = decoder.feed(segmentBytes.subarray(segmentOffset(control.checkpointLsn)));
      if (!checkpoint) throw new Error(`no checkpoint record at ${formatLsn(control.checkpointLsn)} in initdb's WAL`);
      const startLsn = recordBoundary(decoder);
      const meta: TimelineMeta = {
        version: 1,
        timelineId: params.timelineId,
        tenantId: params.tenantId,
        pgMajorVersion: params.pgMajorVersion,
        systemId: control.systemId.toString(),
        ancestorTimelineId: null,
        ancestorLsn: '0',
        startLsn: startLsn.toString(),
        startPrevLsn: control.checkpointLsn.toString(),
        createdAt: new Date().toISOString(),
      };
      const state = newState(startLsn, control.checkpointLsn);
      const timeline = new Timeline(this.timelineOptions(meta, state, []));
      timeline.archive.write(segmentStart(segment), segmentBytes.subarray(0, segmentOffset(startLsn)));
      await timeline.archive.upload(segmentStart(segment), startLsn);
      const snapshot = await captureSnapshot({
        dataDir: tmp,
        timelineId: params.timelineId,
        lsn: startLsn,
        redoLsn: control.redoLsn,
        checkpointLsn: control.checkpointLsn,
        kind: 'shutdown',
        exact: true,
        parent: null,
        changed: () => 'all',
        afterControlFile: async () => startLsn,
        stagingDir: path.join(this.options.dataDir, 'tmp'),
        store,
        log,
      });
      timeline.snapshots.push(snapshot);
      await store.put(timelineStateKey(params.timelineId), Buffer.from(JSON.stringify(state)));
      // The metadata last: a timeline exists once it does.
      await store.put(timelineMetaKey(params.timelineId), Buffer.from(JSON.stringify(meta)));
      fs.rmSync(tmp, { recursive: true, force: true });
      this.timelines.set(params.timelineId, timeline);
      log.info({ timelineId: params.timelineId, startLsn: formatLsn(startLsn), systemId: meta.systemId }, 'timeline created by initdb');
      return timeline;
    });
  }

  /** Resolves a branch point and creates the branch. */
  async branchTimeline(timelineId: string, ancestorId: string, point: { lsn?: Lsn; time?: Date }, signal: AbortSignal, giveUpAtMs?: number): Promise<Timeline> {
    await this.ensureNew(timelineId);
    const ancestor = this.get(ancestorId);
    let lsn: Lsn;
    if (point.time) {
      const found = ancestor.commitLsnAt(point.time);
      if (found === undefined) {
        throw failedPrecondition(
          `timeline ${ancestorId} has no commit at or before ${point.time.toISOString()} that this pageserver remembers: branch at an LSN instead`,
        );
      }
      lsn = found;
    } else {
      lsn = point.lsn && point.lsn !== 0n ? point.lsn : ancestor.lastRecordLsn;
    }
    if (lsn < ancestor.gcCutoffLsn) {
      throw failedPrecondition(`branch point ${formatLsn(lsn)} is below the GC cutoff ${formatLsn(ancestor.gcCutoffLsn)} of ${ancestorId}: its history is gone`);
    }
    if (lsn < ancestor.startLsn) {
      throw failedPrecondition(`branch point ${formatLsn(lsn)} is before the start ${formatLsn(ancestor.startLsn)} of ${ancestorId}: branch from its ancestor`);
    }
    await ancestor.waitForLsn(lsn, signal, giveUpAtMs);
    const snapshot = this.snapshotFor(ancestor, lsn);
    const prev = await this.recordBefore(ancestor, snapshot, lsn);
    return this.exclusive(timelineId, async () => {
      await this.ensureNew(timelineId);
      const { store } = this.options;
      const meta: TimelineMeta = {
        version: 1,
        timelineId,
        tenantId: ancestor.meta.tenantId,
        pgMajorVersion: ancestor.meta.pgMajorVersion,
        systemId: ancestor.meta.systemId,
        ancestorTimelineId: ancestorId,
        ancestorLsn: lsn.toString(),
        startLsn: lsn.toString(),
        startPrevLsn: prev.toString(),
        createdAt: new Date().toISOString(),
      };
      const state = newState(lsn, prev);
      const timeline = new Timeline(this.timelineOptions(meta, state, []));
      // The branch's own WAL starts with its first segment as the ancestor had it up to the branch point.
      const first = segmentStart(segmentNumber(lsn));
      await this.ensureLocalView(ancestor, first, lsn);
      timeline.archive.seedSegment(lsn, this.readView(ancestor, first, lsn));
      await timeline.archive.upload(first, lsn);
      await store.put(timelineStateKey(timelineId), Buffer.from(JSON.stringify(state)));
      await store.put(timelineMetaKey(timelineId), Buffer.from(JSON.stringify(meta)));
      this.timelines.set(timelineId, timeline);
      this.options.log.info({ timelineId, ancestorId, ancestorLsn: formatLsn(lsn) }, 'branch created');
      return timeline;
    });
  }

  async deleteTimeline(timelineId: string): Promise<void> {
    const timeline = this.get(timelineId);
    const children = [...this.timelines.values()].filter((other) => !other.deleted && other.meta.ancestorTimelineId === timelineId);
    if (children.length > 0) {
      throw failedPrecondition(`timeline ${timelineId} has branches (${children.map((child) => child.id).join(', ')}): delete them first`);
    }
    await this.exclusive(timelineId, async () => {
      timeline.deleted = true;
      timeline.changed.notify();
      timeline.setWalSources([]);
      await this.stopReplayer(timelineId);
      await this.options.store.delete(timelineMetaKey(timelineId));
      const objects = await this.options.store.list(timelinePrefix(timelineId));
      await this.options.store.deleteMany(objects.map((object) => object.key));
      for (const snapshot of timeline.snapshots) this.reader.evict(snapshot);
      this.pages.forget(timelineId);
      timeline.archive.close();
      timeline.closeChannels();
      fs.rmSync(this.timelineDir(timelineId), { recursive: true, force: true });
      this.timelines.delete(timelineId);
    });
    this.options.log.info({ timelineId }, 'timeline deleted');
  }

  // --- Snapshots and the replayer -----------------------------------------------------------------------------

  /** Snapshots the timeline at `lsn` (0: its last record), starting its replayer if needed. */
  async createSnapshot(timelineId: string, lsn: Lsn, signal: AbortSignal, giveUpAtMs?: number): Promise<SnapshotIndex> {
    const timeline = this.get(timelineId);
    const target = lsn === 0n ? timeline.lastRecordLsn : lsn;
    await timeline.waitForLsn(target, signal, giveUpAtMs);
    return this.exclusive(timelineId, async () => {
      const existing = this.viewSnapshots(timeline).find((snapshot) => BigInt(snapshot.lsn) === target);
      if (existing) return existing;
      const replayer = await this.ensureReplayer(timeline);
      await replayer.waitReplayed(target, signal);
      const parent = this.viewSnapshots(timeline).at(-1) ?? null;
      const stop = snapshotSeconds.startTimer();
      const snapshot = await replayer.withRestartPoint(async (point) => {
        const same = this.viewSnapshots(timeline).find((candidate) => BigInt(candidate.lsn) === point.replayLsn);
        if (same) return same;
        return captureSnapshot({
          dataDir: replayer.dataDir,
          timelineId,
          lsn: point.replayLsn,
          redoLsn: point.redoLsn,
          checkpointLsn: point.checkpointLsn,
          kind: 'standby',
          exact: point.flushed,
          parent,
          changed: timeline.blockRefs.changedSince(parent ? BigInt(parent.redoLsn) : 0n),
          afterControlFile: () => replayer.minRecoveryLsn(),
          stagingDir: path.join(this.options.dataDir, 'tmp'),
          store: this.options.store,
          log: this.options.log.child({ timelineId }),
        });
      });
      stop();
      if (!timeline.snapshots.includes(snapshot) && snapshot.timelineId === timelineId) {
        timeline.snapshots.push(snapshot);
        timeline.blockRefs.prune(BigInt(snapshot.redoLsn));
      }
      return snapshot;
    });
  }

  /** Snapshots every timeline at its end of WAL and stops the replayers of idle ones. */
  private async runPolicy(): Promise<void> {
    if (this.closed || this.policyRunning) return;
    this.policyRunning = true;
    try {
      await this.runPolicyOnce();
    } finally {
      this.policyRunning = false;
    }
  }

  private async runPolicyOnce(): Promise<void> {
    for (const timeline of this.timelines.values()) {
      if (timeline.deleted || this.locks.has(timeline.id)) continue;
      const latest = this.viewSnapshots(timeline).at(-1);
      // A branch's history up to its branch point is its ancestor's: it needs a snapshot of its own only once it has
      // WAL of its own (else every new branch would copy what changed since the ancestor's last snapshot).
      const ownStart = timeline.meta.ancestorTimelineId ? timeline.startLsn : 0n;
      const snapshotLsn = latest ? BigInt(latest.lsn) : 0n;
      const covered = snapshotLsn > ownStart ? snapshotLsn : ownStart;
      const behind = timeline.lastRecordLsn - covered;
      const idle = Date.now() - timeline.lastWalAt >= this.options.idleMs;
      try {
        const stale = latest !== undefined && Date.now() - Date.parse(latest.createdAt) >= this.options.snapshotIntervalMs;
        if (behind >= BigInt(this.options.snapshotWalBytes) || (behind > 0n && (idle || stale))) {
          await this.createSnapshot(timeline.id, timeline.lastRecordLsn, AbortSignal.timeout(120_000));
        } else if (behind > 0n && !this.replayers.has(timeline.id)) {
          await this.exclusive(timeline.id, () => this.ensureReplayer(timeline));
        } else if (behind <= 0n && idle && this.replayers.has(timeline.id)) {
          await this.exclusive(timeline.id, () => this.stopReplayer(timeline.id));
          this.options.log.info({ timelineId: timeline.id, lsn: formatLsn(covered) }, 'timeline idle and covered by a snapshot: replayer stopped');
        }
      } catch (error) {
        if (!this.closed) this.options.log.warn({ timelineId: timeline.id, error: (error as Error).message }, 'snapshot policy step failed');
      }
    }
  }

  private async ensureReplayer(timeline: Timeline): Promise<Replayer> {
    const running = this.replayers.get(timeline.id);
    if (running?.running) return running;
    if (running) await this.stopReplayer(timeline.id);
    const start = this.viewSnapshots(timeline).filter((snapshot) => BigInt(snapshot.lsn) <= timeline.lastRecordLsn).at(-1);
    if (!start) throw failedPrecondition(`timeline ${timeline.id} has no snapshot to start a replayer from`);
    const dir = path.join(this.timelineDir(timeline.id), 'replayer');
    fs.rmSync(dir, { recursive: true, force: true });
    await materialize(this.reader, start, dir);
    const redo = BigInt(start.redoLsn);
    const end = timeline.lastRecordLsn;
    await this.ensureLocalView(timeline, segmentStart(segmentNumber(redo)), end);
    for (let segment = segmentNumber(redo); segment <= segmentNumber(end); segment++) {
      fs.mkdirSync(path.join(dir, 'pg_wal'), { recursive: true });
      fs.linkSync(this.segmentFileInView(timeline, segment), path.join(dir, 'pg_wal', walFileName(1, segment)));
    }
    // Block references from the snapshot's redo point on, so the next snapshot stores only changed pages.
    timeline.blockRefs.reset(redo);
    Timeline.decodeRange(redo, timeline.lastRecordLsn, (from, to) => this.readView(timeline, from, to), (record) => timeline.blockRefs.add(record));
    const replayer = await Replayer.start({
      dataDir: dir,
      backupLabel: start.kind === 'standby' ? { redoLsn: redo, checkpointLsn: BigInt(start.checkpointLsn) } : null,
      superuser: 'postgres',
      log: this.options.log.child({ timelineId: timeline.id, part: 'replayer' }),
    });
    timeline.onSegment = (segment) => replayer.linkSegment(timeline.archive.segmentPath(segment));
    // Segments created while it started.
    for (let segment = segmentNumber(end); segment <= segmentNumber(timeline.lastRecordLsn); segment++) {
      if (timeline.archive.hasLocal(segment)) replayer.linkSegment(timeline.archive.segmentPath(segment));
    }
    this.replayers.set(timeline.id, replayer);
    replayersGauge.set(this.replayers.size);
    this.options.log.info({ timelineId: timeline.id, snapshotLsn: formatLsn(BigInt(start.lsn)), redoLsn: formatLsn(redo) }, 'replayer started');
    return replayer;
  }

  private async stopReplayer(timelineId: string): Promise<void> {
    const replayer = this.replayers.get(timelineId);
    if (!replayer) return;
    this.replayers.delete(timelineId);
    replayersGauge.set(this.replayers.size);
    const timeline = this.timelines.get(timelineId);
    if (timeline) {
      timeline.onSegment = null;
      timeline.blockRefs.stop();
    }
    await replayer.stop();
  }

  // --- LSN leases and GC --------------------------------------------------------------------------------------

  /** Holds GC back at `lsn` until the lease expires (an existing lease there is extended, never shortened). */
  async createLease(timelineId: string, lsn: Lsn, ttlMs: number, renew: boolean): Promise<{ lsn: Lsn; expiresAt: Date }> {
    const timeline = this.get(timelineId);
    if (lsn === 0n) throw invalidArgument('lsn is required: the LSN to hold');
    const ttl = Math.min(Math.max(ttlMs, 1000), this.options.maxLeaseMs);
    return this.exclusive(timelineId, async () => {
      const now = Date.now();
      timeline.state.leases = timeline.state.leases.filter((lease) => Date.parse(lease.expiresAt) > now);
      const existing = timeline.state.leases.find((lease) => lease.lsn === lsn.toString());
      if (renew && !existing) {
        throw notFound(`no lease holds ${formatLsn(lsn)} on ${timelineId} any more: create it again (it fails if GC has passed that LSN)`);
      }
      if (!existing && lsn < timeline.gcCutoffLsn) {
        throw failedPrecondition(`LSN ${formatLsn(lsn)} is below the GC cutoff ${formatLsn(timeline.gcCutoffLsn)} of ${timelineId}: its history is gone`);
      }
      const expiresAt = new Date(Math.max(now + ttl, existing ? Date.parse(existing.expiresAt) : 0));
      if (existing) existing.expiresAt = expiresAt.toISOString();
      else timeline.state.leases.push({ lsn: lsn.toString(), expiresAt: expiresAt.toISOString() });
      await timeline.persistState();
      return { lsn, expiresAt };
    });
  }

  /** Runs GC on one timeline or all; answers what was removed. */
  async runGc(timelineId: string | null, retentionMs: number): Promise<GcOutcome[]> {
    const timelines = timelineId ? [this.get(timelineId)] : [...this.timelines.values()].filter((timeline) => !timeline.deleted);
    const outcomes: GcOutcome[] = [];
    for (const timeline of timelines) outcomes.push(await this.exclusive(timeline.id, () => this.gcTimeline(timeline, retentionMs)));
    return outcomes;
  }

  private async gcTimeline(timeline: Timeline, retentionMs: number): Promise<GcOutcome> {
    const { store, log } = this.options;
    const now = Date.now();
    const outcome: GcOutcome = { timelineId: timeline.id, gcCutoffLsn: timeline.gcCutoffLsn, removedSnapshotLsns: [], removedWalBytes: 0, removedBytes: 0 };
    timeline.state.leases = timeline.state.leases.filter((lease) => Date.parse(lease.expiresAt) > now);
    const own = timeline.snapshots;
    // The retention window ends at the newest snapshot older than it; leases and branch points hold it back.
    const old = own.filter((snapshot) => Date.parse(snapshot.createdAt) <= now - retentionMs).at(-1);
    if (!old) return outcome;
    let cutoff = BigInt(old.lsn);
    for (const lease of timeline.state.leases) if (BigInt(lease.lsn) < cutoff) cutoff = BigInt(lease.lsn);
    const children = [...this.timelines.values()].filter((other) => !other.deleted && other.meta.ancestorTimelineId === timeline.id);
    for (const child of children) if (child.ancestorLsn < cutoff) cutoff = child.ancestorLsn;
    if (cutoff < timeline.gcCutoffLsn) cutoff = timeline.gcCutoffLsn;
    // Reads at the cutoff start from the newest snapshot usable there; everything older goes, unless another
    // timeline's snapshot builds on it.
    const first = own.filter((snapshot) => BigInt(snapshot.lsn) <= cutoff && BigInt(snapshot.minRecoveryLsn) <= cutoff).at(-1);
    const referenced = new Set<string>();
    for (const other of this.timelines.values()) {
      if (other === timeline) continue;
      for (const snapshot of other.snapshots) if (snapshot.parent?.timelineId === timeline.id) referenced.add(snapshot.parent.lsn);
    }
    const removed = first ? own.filter((snapshot) => BigInt(snapshot.lsn) < BigInt(first.lsn) && !referenced.has(snapshot.lsn)) : [];
    const removedSet = new Set(removed);
    let kept = own.filter((snapshot) => !removedSet.has(snapshot));
    // Snapshots whose chain runs through removed ones are rewritten onto the nearest kept one (or made whole).
    for (let index = 0; index < kept.length; index++) {
      const snapshot = kept[index] as SnapshotIndex;
      let parent = snapshot.parent ? this.findSnapshot(snapshot.parent) : undefined;
      if (!parent || !removedSet.has(parent)) continue;
      while (parent && removedSet.has(parent)) parent = parent.parent ? this.findSnapshot(parent.parent) : undefined;
      const rebased = await rebaseSnapshot(this.reader, store, snapshot, parent ?? null, path.join(this.options.dataDir, 'tmp'));
      this.reader.evict(snapshot);
      kept = kept.map((candidate) => (candidate === snapshot ? rebased : candidate));
      timeline.snapshots = timeline.snapshots.map((candidate) => (candidate === snapshot ? rebased : candidate));
      if (snapshot.pagesKey) await store.delete(snapshot.pagesKey);
      else await store.delete(snapshotKey(snapshot.timelineId, BigInt(snapshot.lsn), 'pages'));
      log.info({ timelineId: timeline.id, lsn: formatLsn(BigInt(snapshot.lsn)), pages: rebased.pageCount }, 'snapshot rewritten by GC');
    }
    timeline.snapshots = kept;
    for (const snapshot of removed) {
      await store.delete(objectKey(snapshot, 'json'));
      await store.deleteMany([objectKey(snapshot, 'pages'), objectKey(snapshot, 'files')]);
      this.reader.evict(snapshot);
      outcome.removedSnapshotLsns.push(BigInt(snapshot.lsn));
      outcome.removedBytes += snapshotBytes(snapshot);
    }
    // WAL below the oldest redo point any kept snapshot replays from is no longer needed.
    const walFloor = kept.reduce((floor, snapshot) => (BigInt(snapshot.redoLsn) < floor ? BigInt(snapshot.redoLsn) : floor), timeline.lastRecordLsn);
    const floorSegment = segmentNumber(walFloor);
    const walObjects = await store.list(`${timelinePrefix(timeline.id)}wal/`);
    const doomed = walObjects.filter((object) => {
      const name = /\/([0-9A-F]{24})(?:\.partial)?$/.exec(object.key)?.[1];
      if (!name) return false;
      const segment = BigInt(`0x${name.slice(8, 16)}`) * (0x100000000n / WAL_SEGMENT_SIZE) + BigInt(`0x${name.slice(16)}`);
      return segment < floorSegment;
    });
    await store.deleteMany(doomed.map((object) => object.key));
    timeline.archive.dropLocalBelow(walFloor);
    outcome.removedWalBytes = doomed.reduce((sum, object) => sum + object.size, 0);
    outcome.removedBytes += outcome.removedWalBytes;
    timeline.state.gcCutoffLsn = cutoff.toString();
    outcome.gcCutoffLsn = cutoff;
    await timeline.persistState();
    log.info(
      { timelineId: timeline.id, gcCutoffLsn: formatLsn(cutoff), removedSnapshots: removed.length, removedWalBytes: outcome.removedWalBytes },
      'GC done',
    );
    return outcome;
  }

  // --- Basebackups --------------------------------------------------------------------------------------------

  /** Prepares a basebackup at `lsn` (0: the last record); waits (within `signal`) until it is ingested. */
  async basebackup(
    timelineId: string,
    requested: Lsn,
    options: { thin: boolean; replica: boolean },
    signal: AbortSignal,
    giveUpAtMs?: number,
  ): Promise<PreparedBasebackup> {
    const timeline = this.get(timelineId);
    const lsn = requested === 0n ? timeline.lastRecordLsn : requested;
    if (lsn < timeline.gcCutoffLsn) {
      throw failedPrecondition(`LSN ${formatLsn(lsn)} is below the GC cutoff ${formatLsn(timeline.gcCutoffLsn)} of ${timelineId}: hold history with an LSN lease`);
    }
    await timeline.waitForLsn(lsn, signal, giveUpAtMs);
    const stop = basebackupSeconds.startTimer();
    const snapshot = this.snapshotFor(timeline, lsn);
    const prev = await this.recordBefore(timeline, snapshot, lsn);
    const redo = BigInt(snapshot.redoLsn);
    const firstSegment = segmentNumber(redo);
    const lastSegment = segmentNumber(lsn);
    await this.ensureLocalView(timeline, segmentStart(firstSegment), lsn);
    const omitted: Array<{ path: string; blocks: number }> = [];
    const entries = dataDirEntries(this.reader, snapshot, { thin: options.thin, omitted: (file, blocks) => omitted.push({ path: file, blocks }) });
    // Make sure every object is here (and whole) before the first byte goes out.
    await this.reader.local(snapshot, 'files');
    for (let current: SnapshotIndex | undefined = snapshot; current; current = current.parent ? this.findSnapshot(current.parent) : undefined) {
      await this.reader.local(current, 'pages');
    }
    const extra = new Map<string, Buffer>();
    extra.set('postgresql.conf', Buffer.from('# written by SPG99\'s basebackup; the compute gives its settings on the command line\n'));
    extra.set('postgresql.auto.conf', Buffer.alloc(0));
    let controlOverride: Buffer | undefined;
    if (snapshot.kind === 'standby') {
      extra.set('backup_label', Buffer.from(backupLabel(redo, BigInt(snapshot.checkpointLsn))));
    } else if (BigInt(snapshot.lsn) < lsn) {
      // A cleanly shut down directory ignores WAL after its checkpoint; marked as crashed, it replays it.
      const file = snapshot.files.find((candidate) => candidate.path === 'global/pg_control');
      if (!file) throw new Error(`snapshot ${formatLsn(BigInt(snapshot.lsn))} of ${snapshot.timelineId} has no control file`);
      controlOverride = markCrashed(await this.reader.readFile(snapshot, file));
    }
    if (options.replica) extra.set('standby.signal', Buffer.alloc(0));
    let tarBytes = TAR_END.length;
    for (const entry of entries) tarBytes += entry.kind === 'directory' ? tarEntryBytes(0) : tarEntryBytes(entry.size);
    for (const content of extra.values()) tarBytes += tarEntryBytes(content.length);
    tarBytes += (Number(lastSegment - firstSegment) + 1) * tarEntryBytes(SEGMENT_BYTES);
    const hasWalDir = snapshot.directories.includes('pg_wal');
    if (!hasWalDir) tarBytes += tarEntryBytes(0);
    const omittedBytes = omitted.reduce((sum, relation) => sum + relation.blocks * PAGE_SIZE, 0);
    stop();
    const self = this;
    return {
      lsn,
      prevRecordLsn: prev,
      snapshot,
      walBytes: Number(lsn - redo),
      tarBytes,
      omittedBytes,
      omitted,
      logicalBytes: snapshot.relations.reduce((sum, relation) => sum + relation.blocks * PAGE_SIZE, 0),
      systemId: BigInt(timeline.meta.systemId),
      pgMajorVersion: timeline.meta.pgMajorVersion,
      chunks: async function* () {
        const mtime = new Date();
        if (!hasWalDir) yield tarHeader('pg_wal', { size: 0, directory: true, mtime });
        for (const entry of entries) {
          if (entry.kind === 'directory') {
            yield tarHeader(entry.path, { size: 0, directory: true, mtime });
            continue;
          }
          yield tarHeader(entry.path, { size: entry.size, mtime });
          if (entry.path === 'global/pg_control' && controlOverride) {
            yield controlOverride;
          } else {
            for await (const chunk of entry.read()) yield chunk;
          }
          yield tarPadding(entry.size);
        }
        for (const [name, content] of extra) {
          yield tarHeader(name, { size: content.length, mtime });
          yield content;
          yield tarPadding(content.length);
        }
        for (let segment = firstSegment; segment <= lastSegment; segment++) {
          yield tarHeader(`pg_wal/${walFileName(1, segment)}`, { size: SEGMENT_BYTES, mtime });
          const start = segmentStart(segment);
          const end = segmentStart(segment + 1n) < lsn ? segmentStart(segment + 1n) : lsn;
          const step = 1024n * 1024n;
          for (let position = start; position < end; position += step) {
            yield self.readView(timeline, position, position + step < end ? position + step : end);
          }
          // The segment is cut at the LSN: zeros after it, full size (a short file loses the last page).
          let zeros = SEGMENT_BYTES - Number(end - start);
          while (zeros > 0) {
            const length = Math.min(zeros, 1024 * 1024);
            yield Buffer.alloc(length);
            zeros -= length;
          }
        }
        yield TAR_END;
      },
    };
  }

  // --- Views: a timeline's history including its ancestors' up to the branch point ----------------------------

  /** Snapshots usable by the timeline: its own, and its ancestors' at or below the branch points. */
  viewSnapshots(timeline: Timeline): SnapshotIndex[] {
    const own = timeline.snapshots;
    if (!timeline.meta.ancestorTimelineId) return own;
    const ancestor = this.timelines.get(timeline.meta.ancestorTimelineId);
    if (!ancestor) return own;
    const inherited = this.viewSnapshots(ancestor).filter((snapshot) => BigInt(snapshot.lsn) <= timeline.ancestorLsn);
    return [...inherited, ...own];
  }

  /** The newest snapshot a data directory at `lsn` can start from. */
  snapshotFor(timeline: Timeline, lsn: Lsn): SnapshotIndex {
    const candidates = this.viewSnapshots(timeline).filter((snapshot) => BigInt(snapshot.lsn) <= lsn && BigInt(snapshot.minRecoveryLsn) <= lsn);
    const found = candidates.at(-1);
    if (!found) {
      throw failedPrecondition(`no snapshot of ${timeline.id} can start at ${formatLsn(lsn)}: it is before the oldest history kept`);
    }
    return found;
  }

  private findSnapshot(ref: SnapshotRef): SnapshotIndex | undefined {
    return this.timelines.get(ref.timelineId)?.snapshots.find((snapshot) => snapshot.lsn === ref.lsn);
  }

  /** The timeline whose archive holds `segment` of this timeline's history. */
  private segmentOwner(timeline: Timeline, segment: bigint): Timeline {
    let current = timeline;
    while (current.meta.ancestorTimelineId && segment < segmentNumber(current.ancestorLsn)) {
      const ancestor = this.timelines.get(current.meta.ancestorTimelineId);
      if (!ancestor) throw new Error(`timeline ${current.id} lost its ancestor ${current.meta.ancestorTimelineId}`);
      current = ancestor;
    }
    return current;
  }

  private segmentFileInView(timeline: Timeline, segment: bigint): string {
    return this.segmentOwner(timeline, segment).archive.segmentPath(segment);
  }

  /** Fetches to local disk every segment of [from, to) of the timeline's history. */
  async ensureLocalView(timeline: Timeline, from: Lsn, to: Lsn): Promise<void> {
    const last = segmentNumber(to > from ? to - 1n : to);
    for (let segment = segmentNumber(from); segment <= last; segment++) {
      const owner = this.segmentOwner(timeline, segment);
      if (!(await owner.archive.ensureLocal(segment))) {
        throw failedPrecondition(`WAL segment ${walFileName(1, segment)} of ${owner.id} is neither on local disk nor in ${this.options.store.description}`);
      }
    }
  }

  /** Reads WAL [from, to) of the timeline's history (segments must be local). */
  readView(timeline: Timeline, from: Lsn, to: Lsn): Buffer {
    const parts: Buffer[] = [];
    let position = from;
    while (position < to) {
      const segment = segmentNumber(position);
      const end = segmentStart(segment + 1n) < to ? segmentStart(segment + 1n) : to;
      parts.push(this.segmentOwner(timeline, segment).archive.read(position, end));
      position = end;
    }
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
  }

  /** Checks that `lsn` ends a record and answers the start of that record. */
  private async recordBefore(timeline: Timeline, snapshot: SnapshotIndex, lsn: Lsn): Promise<Lsn> {
    if (lsn === timeline.lastRecordLsn) return timeline.prevRecordLsn;
    if (lsn === timeline.startLsn) return BigInt(timeline.meta.startPrevLsn);
    const from = BigInt(snapshot.checkpointLsn);
    await this.ensureLocalView(timeline, from, lsn);
    let prev: Lsn | undefined;
    let end = from;
    Timeline.decodeRange(from, lsn, (a, b) => this.readView(timeline, a, b), (record) => {
      if (MAXALIGN(record.endLsn) <= lsn) {
        prev = record.startLsn;
        end = MAXALIGN(record.endLsn);
      }
    });
    if (prev === undefined || end !== lsn) {
      throw invalidArgument(`${formatLsn(lsn)} is not the end of a WAL record of ${timeline.id}: use a record boundary such as ${formatLsn(end)}`);
    }
    return prev;
  }

  // --- Helpers ------------------------------------------------------------------------------------------------

  private async ensureNew(timelineId: string): Promise<void> {
    if (this.timelines.has(timelineId) || (await this.options.store.head(timelineMetaKey(timelineId)))) {
      throw alreadyExists(`timeline ${timelineId} already exists: choose another id (a retried create answers this too)`);
    }
  }

  private register(meta: TimelineMeta, state: TimelineDurableState, snapshots: SnapshotIndex[]): Timeline {
    const timeline = new Timeline(this.timelineOptions(meta, state, snapshots));
    this.timelines.set(meta.timelineId, timeline);
    return timeline;
  }

  private timelineOptions(meta: TimelineMeta, state: TimelineDurableState, snapshots: SnapshotIndex[]) {
    return {
      meta,
      state,
      snapshots,
      localDir: path.join(this.timelineDir(meta.timelineId), 'wal'),
      store: this.options.store,
      consumerId: this.options.id,
      uploadIntervalMs: this.options.uploadIntervalMs,
      log: this.options.log.child({ timelineId: meta.timelineId }),
    };
  }

  private timelineDir(timelineId: string): string {
    return path.join(this.options.dataDir, 'timelines', timelineId);
  }

  /** Runs `work` after any other exclusive work on the same timeline. */
  private exclusive<T>(timelineId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(timelineId) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    const settled = next.catch(() => undefined);
    this.locks.set(timelineId, settled);
    void settled.then(() => {
      if (this.locks.get(timelineId) === settled) this.locks.delete(timelineId);
    });
    return next;
  }

  /** Bytes of the databases' files as of the newest snapshot in the timeline's view. */
  logicalSize(timeline: Timeline): number {
    const latest = this.viewSnapshots(timeline).at(-1);
    if (!latest) return 0;
    const relations = latest.relations.reduce((sum, relation) => sum + relation.blocks * PAGE_SIZE, 0);
    return relations + latest.files.filter((file) => file.path.startsWith('base/') || file.path.startsWith('global/')).reduce((sum, file) => sum + file.size, 0);
  }

  /** Bytes a timeline owns in object storage. */
  physicalSize(timeline: Timeline): number {
    return timeline.snapshots.reduce((sum, snapshot) => sum + snapshotBytes(snapshot), 0);
  }
}

function newState(durableLsn: Lsn, prevLsn: Lsn): TimelineDurableState {
  return {
    version: 1,
    durableLsn: durableLsn.toString(),
    durablePrevLsn: prevLsn.toString(),
    gcCutoffLsn: '0',
    leases: [],
    walSources: [],
    commits: [],
  };
}

/**
 * A copy of a control file marked "in crash recovery", with its checksum recomputed, so that Postgres replays
 * the WAL after its checkpoint. The checksum's offset is found as the one position where it matches.
 */
export function markCrashed(control: Buffer): Buffer {
  const copy = Buffer.from(control);
  for (let offset = 64; offset + 4 <= 1024; offset += 4) {
    if (crc32c(copy.subarray(0, offset)) === copy.readUInt32LE(offset)) {
      copy.writeInt32LE(4, 16);
      copy.writeUInt32LE(crc32c(copy.subarray(0, offset)), offset);
      return copy;
    }
  }
  throw new Error('the control file\'s checksum was not found: it is corrupt');
}

export { ObjectNotFoundError, snapshotKey };

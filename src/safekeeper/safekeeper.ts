/**
 * A safekeeper's timelines on disk, under `<dataDir>/timelines/<timeline id>/`.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../lib/log.js';
import { gauge } from '../lib/metrics.js';
import { formatLsn } from '../lib/lsn.js';
import { alreadyExists, notFound, unavailable } from '../lib/grpc/errors.js';
import { Timeline } from './timeline.js';
import { controlStateExists } from './control-file.js';
import type { Repair } from './wal-store.js';
import { TIMELINE_ID_PATTERN } from './model.js';
import { PULL_DIRECTORY_PREFIX, syncDirectory } from './timeline-pull.js';
import type { TimelineSnapshot } from './timeline.js';

const flushLsnGauge = gauge('spg99_safekeeper_flush_lsn', 'End of WAL fsynced, per timeline', ['timeline_id']);
const commitLsnGauge = gauge('spg99_safekeeper_commit_lsn', 'Commit LSN known, per timeline', ['timeline_id']);
const termGauge = gauge('spg99_safekeeper_promised_term', 'Highest term promised, per timeline', ['timeline_id']);

/** All timelines of one safekeeper. */
export class Safekeeper {
  private readonly timelines = new Map<string, Timeline>();
  private readonly creating = new Map<string, Promise<Timeline>>();
  private persistTimer: NodeJS.Timeout | null = null;

  private constructor(
    readonly dataDir: string,
    private readonly log: Logger,
  ) {}

  /** Opens the data directory and loads every timeline, repairing torn WAL tails. */
  static async open(dataDir: string, log: Logger): Promise<Safekeeper> {
    const safekeeper = new Safekeeper(dataDir, log);
    const root = path.join(dataDir, 'timelines');
    await fsp.mkdir(root, { recursive: true });
    for (const name of await fsp.readdir(root)) {
      if (name.startsWith(PULL_DIRECTORY_PREFIX)) {
        // A pull that a crash interrupted (never renamed into place), or a copy it replaced: neither is a timeline.
        await fsp.rm(path.join(root, name), { recursive: true, force: true });
        continue;
      }
      if (!TIMELINE_ID_PATTERN.test(name)) continue;
      const directory = path.join(root, name);
      if (!controlStateExists(directory)) {
        // CreateTimeline answers only once the control file is durable: without one, a crash interrupted the create,
        // nothing was promised or accepted here, and the caller (who got no answer) will retry it.
        log.warn({ timelineId: name, directory }, 'removing a timeline whose creation a crash interrupted');
        await fsp.rm(directory, { recursive: true, force: true });
        continue;
      }
      const repairs: Repair[] = [];
      const timeline = await Timeline.load(directory, repairs);
      for (const repair of repairs) {
        log.warn({ timelineId: name, ...repair }, 'cut a torn WAL tail found at start (it was never acknowledged)');
      }
      safekeeper.timelines.set(name, timeline);
    }
    // The commit LSN is persisted lazily: it only grows and proposers resend it.
    safekeeper.persistTimer = setInterval(() => safekeeper.persistAndExport(), 1000);
    safekeeper.persistTimer.unref();
    log.info({ dataDir, timelines: safekeeper.timelines.size }, 'safekeeper data loaded');
    return safekeeper;
  }

  /** The timeline, or NOT_FOUND naming it. */
  get(timelineId: string): Timeline {
    const timeline = this.timelines.get(timelineId);
    if (!timeline) {
      throw notFound(`timeline ${timelineId} does not exist on this safekeeper: create it with CreateTimeline first`);
    }
    return timeline;
  }

  /** All timelines. */
  list(): Timeline[] {
    return [...this.timelines.values()];
  }

  /** Creates an empty timeline; ALREADY_EXISTS when it exists. */
  async create(timelineId: string): Promise<Timeline> {
    if (this.timelines.has(timelineId) || this.creating.has(timelineId)) {
      throw alreadyExists(`timeline ${timelineId} already exists on this safekeeper`);
    }
    const creation = Timeline.create(path.join(this.dataDir, 'timelines', timelineId), timelineId);
    this.creating.set(timelineId, creation);
    try {
      const timeline = await creation;
      this.timelines.set(timelineId, timeline);
      this.log.info({ timelineId }, 'timeline created');
      return timeline;
    } finally {
      this.creating.delete(timelineId);
    }
  }

  /** The timeline, or undefined. */
  find(timelineId: string): Timeline | undefined {
    return this.timelines.get(timelineId);
  }

  /**
   * Puts a timeline pulled from peers (src/safekeeper/timeline-pull.ts) in place of the local copy, if any: `install`
   * sees the local copy's state and answers the complete directory to rename into place. Between `install` and the
   * rename nothing yields to the event loop, so no vote is lost between the two.
   */
  async replace(timelineId: string, install: (existing: TimelineSnapshot | undefined) => string): Promise<Timeline> {
    if (this.creating.has(timelineId)) throw unavailable(`timeline ${timelineId} is being created on this safekeeper; retry`);
    const root = path.join(this.dataDir, 'timelines');
    const directory = path.join(root, timelineId);
    const existing = this.timelines.get(timelineId);
    const source = install(existing?.snapshot());
    if (existing) {
      // Its streams end (UNAVAILABLE: the proposer reconnects and finds the new copy), then its directory goes.
      existing.close();
      this.timelines.delete(timelineId);
      const retired = path.join(root, `${PULL_DIRECTORY_PREFIX}replaced-${timelineId}-${Date.now()}`);
      fs.renameSync(directory, retired);
      fs.renameSync(source, directory);
      syncDirectory(root);
      fs.rmSync(retired, { recursive: true, force: true });
    } else {
      fs.renameSync(source, directory);
      syncDirectory(root);
    }
    const loading = Timeline.load(directory, []);
    // A CreateTimeline while it loads answers ALREADY_EXISTS instead of writing an empty state over it.
    this.creating.set(timelineId, loading);
    try {
      const timeline = await loading;
      this.timelines.set(timelineId, timeline);
      this.log.info({ timelineId, flushLsn: formatLsn(timeline.flushLsn) }, 'timeline installed from peers');
      return timeline;
    } finally {
      this.creating.delete(timelineId);
    }
  }

  /** Deletes a timeline and its WAL. */
  async delete(timelineId: string): Promise<void> {
    const timeline = this.get(timelineId);
    this.timelines.delete(timelineId);
    await timeline.destroy();
    for (const metric of [flushLsnGauge, commitLsnGauge, termGauge]) metric.remove({ timeline_id: timelineId });
    this.log.info({ timelineId }, 'timeline deleted');
  }

  /** Persists moved commit LSNs and exports the gauges. */
  persistAndExport(): void {
    for (const timeline of this.timelines.values()) {
      try {
        timeline.persistCommitIfMoved();
      } catch (error) {
        this.log.error({ err: error, timelineId: timeline.timelineId }, 'could not persist the commit LSN');
      }
      const labels = { timeline_id: timeline.timelineId };
      flushLsnGauge.set(labels, Number(timeline.flushLsn));
      commitLsnGauge.set(labels, Number(timeline.commitLsn));
      termGauge.set(labels, Number(timeline.snapshot().promisedTerm));
    }
  }

  /** Closes every timeline. */
  close(): void {
    if (this.persistTimer) clearInterval(this.persistTimer);
    for (const timeline of this.timelines.values()) timeline.close();
    this.timelines.clear();
  }
}


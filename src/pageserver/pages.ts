/**
 * GetPage@LSN and relation metadata. A read at LSN L is served from the newest snapshot at or below L when no WAL
 * record between the snapshot and L touched what is read (the block references say so) and the snapshot holds it
 * exactly; otherwise from an image of the data directory materialized at L: a basebackup at L that a scratch
 * Postgres recovers and shuts down, so every page on disk is exactly as of L. Images are cached (a few, LRU).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatLsn, type Lsn } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import { freePort } from '../lib/net.js';
import { histogram } from '../lib/metrics.js';
import { PostgresServer } from '../lib/pg/postgres.js';
import { postgresOsUser, prepareDirectoryFor } from '../lib/pg/os-user.js';
import { extractTar } from '../lib/tar-extract.js';
import { failedPrecondition, notFound, ServerError, Status } from '../lib/grpc/errors.js';
import { BLOCKS_PER_SEGMENT, PAGE_SIZE, relationPath, type SnapshotIndex, type SnapshotRelation } from './layout.js';
import type { Pageserver } from './pageserver.js';
import { Timeline } from './timeline.js';
import { relationOf } from './snapshots.js';
import { MAXALIGN } from '../lib/pg/wal-decoder.js';

const materializeSeconds = histogram('spg99_pageserver_materialize_seconds', 'Time to materialize a data directory image at an LSN');

const RM_SMGR_ID = 2;
const RM_DBASE_ID = 4;
const RM_TBLSPC_ID = 5;

/** A relation fork as Postgres numbers forks (main 0, fsm 1, vm 2, init 3). */
export interface RelFork {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  forkNumber: number;
}

/** What the WAL between a snapshot and an LSN touched. */
interface Touched {
  blocks: Map<string, Set<number>>;
  databases: Set<number>;
  /** Records that create, truncate or drop files without block references. */
  fileOperations: boolean;
  /** The end of the last record at or below the LSN: where an image for it is materialized. */
  boundary: Lsn;
}

interface Image {
  dir: string;
  usedAt: number;
}

export class PageReader {
  private readonly images = new Map<string, Promise<Image>>();
  private readonly touched = new Map<string, Promise<Touched>>();
  private readonly storedSets = new WeakMap<SnapshotRelation, Set<number>>();

  constructor(
    private readonly pageserver: Pageserver,
    private readonly imagesDir: string,
    private readonly log: Logger,
    private readonly maxImages = 2,
  ) {
    fs.rmSync(imagesDir, { recursive: true, force: true });
    fs.mkdirSync(imagesDir, { recursive: true });
  }

  /** The 8192-byte page of `rel` block `block` as of `lsn`. */
  async getPage(timeline: Timeline, lsn: Lsn, rel: RelFork, block: number, signal: AbortSignal): Promise<Buffer> {
    const { path: file, blockInFile } = relationPath(rel.spcOid, rel.dbOid, rel.relNumber, rel.forkNumber, block);
    const snapshot = this.snapshotAt(timeline, lsn);
    const touched = await this.touchedSince(timeline, snapshot, lsn);
    const relation = relationOf(snapshot, file);
    if (!touched.fileOperations && !touched.blocks.get(file)?.has(blockInFile) && relation && blockInFile < relation.blocks) {
      if (snapshot.exact || !this.stored(relation).has(blockInFile)) {
        const [source] = this.pageserver.reader.resolveRelation(snapshot, file).slice(blockInFile, blockInFile + 1);
        if (source) return this.pageserver.reader.readPage(source);
      }
    }
    const image = await this.image(timeline, touched.boundary, signal);
    const absolute = path.join(image.dir, file);
    if (!fs.existsSync(absolute)) throw notFound(`relation file ${file} does not exist in ${timeline.id} at ${formatLsn(lsn)}`);
    const fd = fs.openSync(absolute, 'r');
    try {
      const page = Buffer.alloc(PAGE_SIZE);
      const read = fs.readSync(fd, page, 0, PAGE_SIZE, blockInFile * PAGE_SIZE);
      if (read < PAGE_SIZE) {
        throw new ServerError(Status.OUT_OF_RANGE, `block ${block} is beyond the end of ${file} in ${timeline.id} at ${formatLsn(lsn)}`);
      }
      return page;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The length in blocks of a relation fork at `lsn`, or undefined when it does not exist. */
  async relSize(timeline: Timeline, lsn: Lsn, rel: RelFork, signal: AbortSignal): Promise<number | undefined> {
    const base = relationPath(rel.spcOid, rel.dbOid, rel.relNumber, rel.forkNumber, 0).path;
    const snapshot = this.snapshotAt(timeline, lsn);
    const touched = await this.touchedSince(timeline, snapshot, lsn);
    const segments = (blocksOf: (file: string) => number | undefined): number | undefined => {
      let total = 0;
      for (let segment = 0; ; segment++) {
        const blocks = blocksOf(segment === 0 ? base : `${base}.${segment}`);
        if (blocks === undefined) return segment === 0 ? undefined : total;
        total += blocks;
        if (blocks < BLOCKS_PER_SEGMENT) return total;
      }
    };
    const anyTouched = [...touched.blocks.keys()].some((file) => file === base || file.startsWith(`${base}.`));
    if (!touched.fileOperations && !anyTouched) {
      return segments((file) => relationOf(snapshot, file)?.blocks);
    }
    const image = await this.image(timeline, touched.boundary, signal);
    return segments((file) => {
      try {
        return Math.floor(fs.statSync(path.join(image.dir, file)).size / PAGE_SIZE);
      } catch {
        return undefined;
      }
    });
  }

  /** Bytes of a database's directory at `lsn` (what pg_database_size counts in the default tablespace). */
  async dbSize(timeline: Timeline, lsn: Lsn, dbOid: number, signal: AbortSignal): Promise<number> {
    const snapshot = this.snapshotAt(timeline, lsn);
    const touched = await this.touchedSince(timeline, snapshot, lsn);
    const prefix = `base/${dbOid}/`;
    if (!touched.fileOperations && !touched.databases.has(dbOid)) {
      const relations = snapshot.relations.filter((relation) => relation.path.startsWith(prefix));
      const files = snapshot.files.filter((file) => file.path.startsWith(prefix));
      if (relations.length === 0 && files.length === 0) throw notFound(`database ${dbOid} does not exist in ${timeline.id} at ${formatLsn(lsn)}`);
      return relations.reduce((sum, relation) => sum + relation.blocks * PAGE_SIZE, 0) + files.reduce((sum, file) => sum + file.size, 0);
    }
    const image = await this.image(timeline, touched.boundary, signal);
    const dir = path.join(image.dir, 'base', String(dbOid));
    if (!fs.existsSync(dir)) throw notFound(`database ${dbOid} does not exist in ${timeline.id} at ${formatLsn(lsn)}`);
    return fs.readdirSync(dir).reduce((sum, name) => sum + fs.statSync(path.join(dir, name)).size, 0);
  }

  /** Removes every cached image (e.g. of a deleted timeline). */
  forget(timelineId: string): void {
    for (const key of [...this.images.keys()]) {
      if (key.startsWith(`${timelineId}@`)) {
        const image = this.images.get(key);
        this.images.delete(key);
        void image?.then((value) => fs.rmSync(value.dir, { recursive: true, force: true })).catch(() => undefined);
      }
    }
    for (const key of [...this.touched.keys()]) if (key.startsWith(`${timelineId}:`)) this.touched.delete(key);
  }

  private snapshotAt(timeline: Timeline, lsn: Lsn): SnapshotIndex {
    if (lsn < timeline.gcCutoffLsn) {
      throw failedPrecondition(`LSN ${formatLsn(lsn)} is below the GC cutoff ${formatLsn(timeline.gcCutoffLsn)} of ${timeline.id}: hold history with an LSN lease`);
    }
    const snapshot = this.pageserver.viewSnapshots(timeline).filter((candidate) => BigInt(candidate.lsn) <= lsn).at(-1);
    if (!snapshot) throw failedPrecondition(`no history of ${timeline.id} reaches back to ${formatLsn(lsn)}`);
    return snapshot;
  }

  private stored(relation: SnapshotRelation): Set<number> {
    let set = this.storedSets.get(relation);
    if (!set) {
      set = new Set(relation.stored);
      this.storedSets.set(relation, set);
    }
    return set;
  }

  private touchedSince(timeline: Timeline, snapshot: SnapshotIndex, lsn: Lsn): Promise<Touched> {
    const from = BigInt(snapshot.lsn);
    const key = `${timeline.id}:${from}:${lsn}`;
    let touched = this.touched.get(key);
    if (!touched) {
      touched = (async () => {
        const result: Touched = { blocks: new Map(), databases: new Set(), fileOperations: false, boundary: from };
        if (lsn <= from) return result;
        await this.pageserver.ensureLocalView(timeline, from, lsn);
        Timeline.decodeRange(from, lsn, (a, b) => this.pageserver.readView(timeline, a, b), (record) => {
          result.boundary = MAXALIGN(record.endLsn) <= lsn ? MAXALIGN(record.endLsn) : record.endLsn;
          if (record.rmid === RM_SMGR_ID || record.rmid === RM_DBASE_ID || record.rmid === RM_TBLSPC_ID) result.fileOperations = true;
          for (const block of record.blocks) {
            const { path: file, blockInFile } = relationPath(block.spcOid, block.dbOid, block.relNumber, block.forkNumber, block.blockNumber);
            let set = result.blocks.get(file);
            if (!set) {
              set = new Set();
              result.blocks.set(file, set);
            }
            set.add(blockInFile);
            result.databases.add(block.dbOid);
          }
        });
        return result;
      })();
      touched.catch(() => this.touched.delete(key));
      this.touched.set(key, touched);
      if (this.touched.size > 64) this.touched.delete(this.touched.keys().next().value as string);
    }
    return touched;
  }

  private async image(timeline: Timeline, lsn: Lsn, signal: AbortSignal): Promise<Image> {
    const key = `${timeline.id}@${lsn}`;
    let image = this.images.get(key);
    if (!image) {
      image = this.materialize(timeline, lsn, signal);
      image.catch(() => this.images.delete(key));
      this.images.set(key, image);
      while (this.images.size > this.maxImages) {
        const oldest = this.images.keys().next().value as string;
        const evicted = this.images.get(oldest);
        this.images.delete(oldest);
        void evicted?.then((value) => fs.rmSync(value.dir, { recursive: true, force: true })).catch(() => undefined);
      }
    } else {
      // Most recently used last.
      this.images.delete(key);
      this.images.set(key, image);
    }
    const value = await image;
    value.usedAt = Date.now();
    return value;
  }

  private async materialize(timeline: Timeline, lsn: Lsn, signal: AbortSignal): Promise<Image> {
    const stop = materializeSeconds.startTimer();
    const dir = path.join(this.imagesDir, `${timeline.id}-${lsn.toString(16)}`);
    fs.rmSync(dir, { recursive: true, force: true });
    const backup = await this.pageserver.basebackup(timeline.id, lsn, { thin: false, replica: false }, signal);
    await extractTar(backup.chunks(), dir);
    prepareDirectoryFor(postgresOsUser(), dir);
    const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-image-'));
    try {
      // Recovery replays the WAL to `lsn`; its end-of-recovery checkpoint writes every page to disk.
      const server = await PostgresServer.start({
        dataDir: dir,
        port: await freePort(),
        socketDir,
        log: this.log,
        logFile: `${dir}.log`,
        settings: { listen_addresses: '', autovacuum: 'off', fsync: 'off', shared_buffers: '32MB' },
        startTimeoutMs: 120_000,
      });
      await server.stop('fast');
    } finally {
      fs.rmSync(socketDir, { recursive: true, force: true });
    }
    const seconds = stop();
    this.log.info({ timelineId: timeline.id, lsn: formatLsn(lsn), seconds }, 'materialized an image for reads');
    return { dir, usedAt: Date.now() };
  }
}

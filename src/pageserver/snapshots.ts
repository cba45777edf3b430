/**
 * Snapshots: page images of a data directory at an LSN, stored as a delta on the previous snapshot.
 *
 * Capture walks a data directory (the replayer's, paused, after a restartpoint; or initdb's, shut down) and stores
 * the small non-relation files whole and, of each relation file, only the blocks that may have changed since the
 * parent snapshot: those referenced by WAL records since the parent's redo point, those past the parent's length,
 * and every block of free-space-map forks (which the replayer updates without WAL). Reading resolves each block
 * through the chain of parents to the newest snapshot that stores it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { formatLsn, type Lsn } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import type { ObjectStore } from './storage/object-store.js';
import { ObjectNotFoundError } from './storage/object-store.js';
import { ServerError, Status } from '../lib/grpc/errors.js';
import {
  PAGE_SIZE,
  parseRelationPath,
  snapshotKey,
  type SnapshotFile,
  type SnapshotIndex,
  type SnapshotRef,
  type SnapshotRelation,
} from './layout.js';

/** Files never taken into a snapshot (relative paths, or directory prefixes ending in `/`). */
const EXCLUDED_FILES = new Set([
  'postmaster.pid', 'postmaster.opts', 'postgresql.conf', 'postgresql.auto.conf', 'standby.signal', 'recovery.signal',
  'backup_label', 'backup_label.old', 'tablespace_map', 'tablespace_map.old', 'current_logfiles',
]);
/** Directories whose contents are never taken (the directory itself is). */
const EMPTIED_DIRECTORIES = new Set([
  'pg_wal', 'pg_replslot', 'pg_stat_tmp', 'pg_stat', 'pg_dynshmem', 'pg_notify', 'pg_serial', 'pg_snapshots', 'pg_subtrans', 'log',
]);

function isExcluded(relative: string): boolean {
  if (EXCLUDED_FILES.has(relative)) return true;
  const base = path.basename(relative);
  if (base === 'pg_internal.init' || base.startsWith('pgsql_tmp') || base.endsWith('.log')) return true;
  const top = relative.split('/')[0] ?? '';
  return EMPTIED_DIRECTORIES.has(top) && relative !== top;
}

/** Which blocks of a relation file changed since the parent's redo point: a set, or every block. */
export type ChangedBlocks = (relationPath: string) => ReadonlySet<number> | 'all';

export interface CaptureOptions {
  dataDir: string;
  timelineId: string;
  lsn: Lsn;
  redoLsn: Lsn;
  checkpointLsn: Lsn;
  kind: SnapshotIndex['kind'];
  exact: boolean;
  /** The previous snapshot (null: store every block). */
  parent: SnapshotIndex | null;
  changed: ChangedBlocks;
  /** Called right after the control file was copied: answers the minimum recovery LSN to record. */
  afterControlFile: () => Promise<Lsn>;
  /** Where the staging objects are written before upload. */
  stagingDir: string;
  store: ObjectStore;
  log: Logger;
}

/** Copies a data directory into a snapshot in object storage; answers its index once durable. */
export async function captureSnapshot(options: CaptureOptions): Promise<SnapshotIndex> {
  const { dataDir, parent } = options;
  fs.mkdirSync(options.stagingDir, { recursive: true });
  const pagesFile = path.join(options.stagingDir, `${options.timelineId}-${options.lsn}.pages`);
  const filesFile = path.join(options.stagingDir, `${options.timelineId}-${options.lsn}.files`);
  const pagesFd = fs.openSync(pagesFile, 'w');
  const filesFd = fs.openSync(filesFile, 'w');
  const parentRelations = new Map((parent?.relations ?? []).map((relation) => [relation.path, relation]));
  const directories: string[] = [];
  const files: SnapshotFile[] = [];
  const relations: SnapshotRelation[] = [];
  let pageCount = 0;
  let filesBytes = 0;
  const page = Buffer.alloc(PAGE_SIZE);

  const copySmallFile = (relative: string) => {
    const content = fs.readFileSync(path.join(dataDir, relative));
    fs.writeSync(filesFd, content, 0, content.length, filesBytes);
    files.push({ path: relative, offset: filesBytes, size: content.length });
    filesBytes += content.length;
  };

  const walk = (relativeDir: string) => {
    const absolute = path.join(dataDir, relativeDir);
    for (const entry of fs.readdirSync(absolute, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const relative = relativeDir ? `${relativeDir}/${entry.name}` : entry.name;
      if (isExcluded(relative)) continue;
      if (entry.isDirectory()) {
        directories.push(relative);
        walk(relative);
        continue;
      }
      if (!entry.isFile() || relative === 'global/pg_control') continue;
      const relationName = parseRelationPath(relative);
      if (!relationName) {
        copySmallFile(relative);
        continue;
      }
      const size = fs.statSync(path.join(absolute, entry.name)).size;
      const blocks = Math.floor(size / PAGE_SIZE);
      const previous = parentRelations.get(relative);
      const changed = options.changed(relative);
      let wanted: number[];
      if (!previous || changed === 'all' || relationName.forkNumber === 1) {
        wanted = Array.from({ length: blocks }, (_, block) => block);
      } else {
        const set = new Set<number>();
        for (const block of changed) if (block < blocks) set.add(block);
        for (let block = previous.blocks; block < blocks; block++) set.add(block);
        wanted = [...set].sort((a, b) => a - b);
      }
      const relation: SnapshotRelation = { path: relative, blocks, stored: wanted, pageOffset: pageCount };
      if (wanted.length > 0) {
        const fd = fs.openSync(path.join(absolute, entry.name), 'r');
        try {
          for (const block of wanted) {
            const read = fs.readSync(fd, page, 0, PAGE_SIZE, block * PAGE_SIZE);
            if (read < PAGE_SIZE) page.fill(0, read);
            fs.writeSync(pagesFd, page, 0, PAGE_SIZE, pageCount * PAGE_SIZE);
            pageCount++;
          }
        } finally {
          fs.closeSync(fd);
        }
      }
      relations.push(relation);
    }
  };

  let minRecoveryLsn: Lsn;
  try {
    walk('');
    // The control file last, as a base backup takes it: its minimum recovery point then covers every page copied.
    copySmallFile('global/pg_control');
    minRecoveryLsn = await options.afterControlFile();
  } finally {
    fs.closeSync(pagesFd);
    fs.closeSync(filesFd);
  }

  const index: SnapshotIndex = {
    version: 1,
    timelineId: options.timelineId,
    lsn: options.lsn.toString(),
    redoLsn: options.redoLsn.toString(),
    checkpointLsn: options.checkpointLsn.toString(),
    minRecoveryLsn: minRecoveryLsn.toString(),
    kind: options.kind,
    exact: options.exact,
    createdAt: new Date().toISOString(),
    parent: parent ? { timelineId: parent.timelineId, lsn: parent.lsn } : null,
    directories,
    files,
    relations,
    pageCount,
    filesBytes,
  };
  await uploadSnapshot(options.store, index, pagesFile, filesFile);
  fs.rmSync(pagesFile, { force: true });
  fs.rmSync(filesFile, { force: true });
  options.log.info(
    { lsn: formatLsn(options.lsn), redoLsn: formatLsn(options.redoLsn), minRecoveryLsn: formatLsn(minRecoveryLsn), pages: pageCount, filesBytes, delta: parent !== null },
    'snapshot stored',
  );
  return index;
}

async function uploadSnapshot(store: ObjectStore, index: SnapshotIndex, pagesFile: string, filesFile: string): Promise<void> {
  const lsn = BigInt(index.lsn);
  await store.putFile(snapshotKey(index.timelineId, lsn, 'pages'), pagesFile);
  await store.putFile(snapshotKey(index.timelineId, lsn, 'files'), filesFile);
  // The index last: a snapshot exists once its index does.
  await store.put(snapshotKey(index.timelineId, lsn, 'json'), Buffer.from(JSON.stringify(index)));
}

/** The object holding a part of a snapshot. */
export function objectKey(snapshot: SnapshotIndex, part: 'pages' | 'files' | 'json'): string {
  if (part === 'pages' && snapshot.pagesKey) return snapshot.pagesKey;
  return snapshotKey(snapshot.timelineId, BigInt(snapshot.lsn), part);
}

/**
 * Rewrites `snapshot` so that it no longer needs the snapshots between it and `newParent` (null: none at all): it
 * then stores every block whose image it took from them. The new pages go to a new object and the index is
 * replaced last, so a crash leaves the old, still complete, version. Answers the new index.
 */
export async function rebaseSnapshot(
  reader: SnapshotReader,
  store: ObjectStore,
  snapshot: SnapshotIndex,
  newParent: SnapshotIndex | null,
  stagingDir: string,
): Promise<SnapshotIndex> {
  const keep = (source: PageSource) => source.snapshot === snapshot || (newParent !== null && isInChain(reader, newParent, source.snapshot));
  fs.mkdirSync(stagingDir, { recursive: true });
  const generation = Date.now().toString(36);
  const pagesKey = `${snapshotKey(snapshot.timelineId, BigInt(snapshot.lsn), 'pages')}.${generation}`;
  const pagesFile = path.join(stagingDir, `rebase-${snapshot.timelineId}-${snapshot.lsn}-${generation}.pages`);
  const fd = fs.openSync(pagesFile, 'w');
  let pageCount = 0;
  const relations: SnapshotRelation[] = [];
  const page = Buffer.alloc(PAGE_SIZE);
  try {
    for (const relation of snapshot.relations) {
      const sources = reader.resolveRelation(snapshot, relation.path);
      const stored: number[] = [];
      const pageOffset = pageCount;
      for (let block = 0; block < sources.length; block++) {
        const source = sources[block] as PageSource;
        if (source.snapshot !== snapshot && keep(source)) continue;
        await reader.readPage(source, page);
        fs.writeSync(fd, page, 0, PAGE_SIZE, pageCount * PAGE_SIZE);
        stored.push(block);
        pageCount++;
      }
      relations.push({ path: relation.path, blocks: relation.blocks, stored, pageOffset });
    }
  } finally {
    fs.closeSync(fd);
  }
  const rebased: SnapshotIndex = {
    ...snapshot,
    parent: newParent ? { timelineId: newParent.timelineId, lsn: newParent.lsn } : null,
    relations,
    pageCount,
    pagesKey,
  };
  await store.putFile(pagesKey, pagesFile);
  await store.put(snapshotKey(snapshot.timelineId, BigInt(snapshot.lsn), 'json'), Buffer.from(JSON.stringify(rebased)));
  fs.rmSync(pagesFile, { force: true });
  return rebased;
}

function isInChain(reader: SnapshotReader, head: SnapshotIndex, wanted: SnapshotIndex): boolean {
  for (let current: SnapshotIndex | undefined = head; current; current = current.parent ? reader.lookup(current.parent) : undefined) {
    if (current === wanted) return true;
  }
  return false;
}

/** Bytes a snapshot occupies in object storage. */
export function snapshotBytes(index: SnapshotIndex): number {
  return index.pageCount * PAGE_SIZE + index.filesBytes + 512 * index.relations.length;
}

/** Validates a stored index; throws naming the object when it is not one. */
export function parseSnapshotIndex(key: string, body: Buffer): SnapshotIndex {
  let index: SnapshotIndex;
  try {
    index = JSON.parse(body.toString('utf8')) as SnapshotIndex;
  } catch (error) {
    throw new Error(`snapshot index ${key} is corrupt: ${(error as Error).message}`);
  }
  if (index.version !== 1 || typeof index.lsn !== 'string' || !Array.isArray(index.relations) || !Array.isArray(index.files)) {
    throw new Error(`snapshot index ${key} is corrupt: it lacks the fields of a version 1 index`);
  }
  return index;
}

const relationMaps = new WeakMap<SnapshotIndex, Map<string, SnapshotRelation>>();

/** The relation file `relationPath` of a snapshot (indexed once per snapshot). */
export function relationOf(snapshot: SnapshotIndex, relationPath: string): SnapshotRelation | undefined {
  let map = relationMaps.get(snapshot);
  if (!map) {
    map = new Map(snapshot.relations.map((relation) => [relation.path, relation]));
    relationMaps.set(snapshot, map);
  }
  return map.get(relationPath);
}

/** Where one block's image is. */
export interface PageSource {
  snapshot: SnapshotIndex;
  /** Page number in the snapshot's `.pages` object. */
  page: number;
}

/** Finds snapshots by reference (across timelines, for branches). */
export type SnapshotLookup = (ref: SnapshotRef) => SnapshotIndex | undefined;

/**
 * Reads snapshots: resolves blocks through parent chains and keeps the immutable objects in a local cache
 * directory, so each is fetched from object storage once.
 */
export class SnapshotReader {
  private readonly resolved = new Map<string, Map<string, PageSource[]>>();
  private readonly downloads = new Map<string, Promise<string>>();
  private readonly fds = new Map<string, number>();

  constructor(
    private readonly store: ObjectStore,
    private readonly cacheDir: string,
    readonly lookup: SnapshotLookup,
  ) {
    fs.mkdirSync(cacheDir, { recursive: true });
  }

  /** For each block of a relation file of `snapshot`, where its image is. */
  resolveRelation(snapshot: SnapshotIndex, relationPath: string): PageSource[] {
    const key = `${snapshot.timelineId}/${snapshot.lsn}`;
    let perSnapshot = this.resolved.get(key);
    if (!perSnapshot) {
      perSnapshot = new Map();
      this.resolved.set(key, perSnapshot);
    }
    const cached = perSnapshot.get(relationPath);
    if (cached) return cached;
    const relation = relationOf(snapshot, relationPath);
    if (!relation) throw new Error(`snapshot ${formatLsn(BigInt(snapshot.lsn))} of ${snapshot.timelineId} has no file ${relationPath}`);
    const sources: Array<PageSource | undefined> = new Array(relation.blocks);
    let missing = relation.blocks;
    let current: SnapshotIndex | undefined = snapshot;
    while (current && missing > 0) {
      const stored = relationOf(current, relationPath);
      if (stored) {
        stored.stored.forEach((block, position) => {
          if (block < relation.blocks && sources[block] === undefined) {
            sources[block] = { snapshot: current as SnapshotIndex, page: stored.pageOffset + position };
            missing--;
          }
        });
      }
      if (!current.parent) break;
      const parentRef: SnapshotRef = current.parent;
      const parent = this.lookup(parentRef);
      if (!parent) {
        throw new Error(
          `snapshot ${formatLsn(BigInt(current.lsn))} of ${current.timelineId} needs its parent ${formatLsn(BigInt(parentRef.lsn))} of ` +
            `${parentRef.timelineId}, which is gone: the history is broken`,
        );
      }
      current = parent;
    }
    if (missing > 0) {
      throw new Error(`${missing} blocks of ${relationPath} in snapshot ${formatLsn(BigInt(snapshot.lsn))} of ${snapshot.timelineId} are stored nowhere in its chain`);
    }
    const result = sources as PageSource[];
    perSnapshot.set(relationPath, result);
    return result;
  }

  /** The local path of a snapshot object, downloaded once. */
  async local(snapshot: SnapshotIndex, part: 'pages' | 'files'): Promise<string> {
    const key = objectKey(snapshot, part);
    let download = this.downloads.get(key);
    if (!download) {
      const inPlace = this.store.localPath?.(key);
      const file = inPlace ?? path.join(this.cacheDir, key.replace(/\//g, '_'));
      download = (async () => {
        if (!inPlace && !fs.existsSync(file)) {
          try {
            await this.store.getToFile(key, file);
          } catch (error) {
            if (error instanceof ObjectNotFoundError) {
              throw new ServerError(Status.DATA_LOSS, `object ${key} of a snapshot is missing from ${this.store.description}: the history is damaged`);
            }
            throw error;
          }
        }
        const expected = part === 'pages' ? snapshot.pageCount * PAGE_SIZE : snapshot.filesBytes;
        const size = fs.statSync(file).size;
        if (size !== expected) {
          if (!inPlace) fs.rmSync(file, { force: true });
          throw new ServerError(
            Status.DATA_LOSS,
            `object ${key} in ${this.store.description} has ${size} bytes where its index says ${expected}: it is corrupt; restore it from a backup of the bucket`,
          );
        }
        return file;
      })();
      download.catch(() => this.downloads.delete(key));
      this.downloads.set(key, download);
    }
    return download;
  }

  /** Reads `count` page images stored one after another from `first` on. */
  async readPages(first: PageSource, count: number, into: Buffer): Promise<void> {
    const fd = await this.fd(first.snapshot, 'pages');
    fs.readSync(fd, into, 0, count * PAGE_SIZE, first.page * PAGE_SIZE);
  }

  /** Reads one page image. */
  async readPage(source: PageSource, into: Buffer = Buffer.alloc(PAGE_SIZE)): Promise<Buffer> {
    const fd = await this.fd(source.snapshot, 'pages');
    fs.readSync(fd, into, 0, PAGE_SIZE, source.page * PAGE_SIZE);
    return into;
  }

  /** Reads a small file of a snapshot. */
  async readFile(snapshot: SnapshotIndex, file: SnapshotFile): Promise<Buffer> {
    const fd = await this.fd(snapshot, 'files');
    const out = Buffer.alloc(file.size);
    if (file.size > 0) fs.readSync(fd, out, 0, file.size, file.offset);
    return out;
  }

  /** Forgets cached objects of a removed snapshot. */
  evict(snapshot: SnapshotIndex): void {
    for (const part of ['pages', 'files'] as const) {
      const key = objectKey(snapshot, part);
      const fd = this.fds.get(key);
      if (fd !== undefined) fs.closeSync(fd);
      this.fds.delete(key);
      this.downloads.delete(key);
      fs.rmSync(path.join(this.cacheDir, key.replace(/\//g, '_')), { force: true });
    }
    this.resolved.delete(`${snapshot.timelineId}/${snapshot.lsn}`);
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }

  private async fd(snapshot: SnapshotIndex, part: 'pages' | 'files'): Promise<number> {
    const key = objectKey(snapshot, part);
    let fd = this.fds.get(key);
    if (fd === undefined) {
      fd = fs.openSync(await this.local(snapshot, part), 'r');
      const again = this.fds.get(key);
      if (again !== undefined) {
        fs.closeSync(fd);
        return again;
      }
      this.fds.set(key, fd);
    }
    return fd;
  }
}

/** One entry of a data directory rebuilt from a snapshot. */
export type DataDirEntry =
  | { kind: 'directory'; path: string }
  | { kind: 'file'; path: string; size: number; read: () => AsyncIterable<Buffer> };

/** Options of `dataDirEntries`. */
export interface EntryOptions {
  /** Leave out the main, FSM and VM forks of user relations (numbered from 16384). */
  thin?: boolean;
  /** Relation files left out in thin mode are reported here. */
  omitted?: (relationPath: string, blocks: number) => void;
}

/** The files and directories of `snapshot`'s data directory, relation files streamed page by page. */
export function dataDirEntries(reader: SnapshotReader, snapshot: SnapshotIndex, options: EntryOptions = {}): DataDirEntry[] {
  const entries: DataDirEntry[] = snapshot.directories.map((directory) => ({ kind: 'directory', path: directory }));
  for (const file of snapshot.files) {
    entries.push({
      kind: 'file',
      path: file.path,
      size: file.size,
      read: async function* () {
        yield await reader.readFile(snapshot, file);
      },
    });
  }
  for (const relation of snapshot.relations) {
    const name = parseRelationPath(relation.path);
    if (options.thin && name && name.relNumber >= 16384 && name.forkNumber !== 3) {
      options.omitted?.(relation.path, relation.blocks);
      continue;
    }
    entries.push({
      kind: 'file',
      path: relation.path,
      size: relation.blocks * PAGE_SIZE,
      read: async function* () {
        const sources = reader.resolveRelation(snapshot, relation.path);
        const batch = 128;
        for (let first = 0; first < sources.length; first += batch) {
          const count = Math.min(batch, sources.length - first);
          const chunk = Buffer.alloc(count * PAGE_SIZE);
          // Runs of pages stored one after another in the same object are read at once.
          let i = 0;
          while (i < count) {
            const start = sources[first + i] as PageSource;
            let run = 1;
            while (i + run < count) {
              const next = sources[first + i + run] as PageSource;
              if (next.snapshot !== start.snapshot || next.page !== start.page + run) break;
              run++;
            }
            await reader.readPages(start, run, chunk.subarray(i * PAGE_SIZE, (i + run) * PAGE_SIZE));
            i += run;
          }
          yield chunk;
        }
      },
    });
  }
  return entries;
}

/** Writes `snapshot`'s data directory into `target` (which must not exist). */
export async function materialize(reader: SnapshotReader, snapshot: SnapshotIndex, target: string): Promise<void> {
  fs.mkdirSync(target, { recursive: true, mode: 0o700 });
  for (const entry of dataDirEntries(reader, snapshot)) {
    const destination = path.join(target, entry.path);
    if (entry.kind === 'directory') {
      fs.mkdirSync(destination, { recursive: true, mode: 0o700 });
      continue;
    }
    fs.mkdirSync(path.dirname(destination), { recursive: true, mode: 0o700 });
    const fd = fs.openSync(destination, 'w', 0o600);
    try {
      let position = 0;
      for await (const chunk of entry.read()) {
        fs.writeSync(fd, chunk, 0, chunk.length, position);
        position += chunk.length;
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

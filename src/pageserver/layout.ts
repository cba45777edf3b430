/**
 * Where a timeline's history lives in object storage, and the formats of the objects.
 *
 *   timelines/<tl>/timeline.json          TimelineMeta: identity and ancestry (written once, at create/branch)
 *   timelines/<tl>/state.json             TimelineDurableState: what is durable, GC cutoff, leases, WAL sources
 *   timelines/<tl>/wal/<segment>          a complete 16 MiB WAL segment
 *   timelines/<tl>/wal/<segment>.partial  the tail segment from its start to a record boundary (replaced as it grows)
 *   timelines/<tl>/snapshots/<lsn>.pages  page images (8192 bytes each) of the relation blocks the snapshot stores
 *   timelines/<tl>/snapshots/<lsn>.files  the small non-relation files, concatenated
 *   timelines/<tl>/snapshots/<lsn>.json   SnapshotIndex, written last: a snapshot exists once its index does
 *
 * `<lsn>` is the snapshot LSN as 16 hex digits, so keys sort by LSN. LSNs inside JSON are decimal strings.
 */
import { walFileName, type Lsn } from '../lib/lsn.js';

export const PAGE_SIZE = 8192;

export function timelinePrefix(timelineId: string): string {
  return `timelines/${timelineId}/`;
}

export function timelineMetaKey(timelineId: string): string {
  return `${timelinePrefix(timelineId)}timeline.json`;
}

export function timelineStateKey(timelineId: string): string {
  return `${timelinePrefix(timelineId)}state.json`;
}

export function walSegmentKey(timelineId: string, segment: bigint): string {
  return `${timelinePrefix(timelineId)}wal/${walFileName(1, segment)}`;
}

export function walPartialKey(timelineId: string, segment: bigint): string {
  return `${walSegmentKey(timelineId, segment)}.partial`;
}

export function lsnKeyPart(lsn: Lsn): string {
  return lsn.toString(16).toUpperCase().padStart(16, '0');
}

export function snapshotKey(timelineId: string, lsn: Lsn, part: 'pages' | 'files' | 'json'): string {
  return `${timelinePrefix(timelineId)}snapshots/${lsnKeyPart(lsn)}.${part}`;
}

/** Identity and ancestry of a timeline. */
export interface TimelineMeta {
  version: 1;
  timelineId: string;
  tenantId: string;
  pgMajorVersion: number;
  systemId: string;
  ancestorTimelineId: string | null;
  ancestorLsn: string;
  startLsn: string;
  /** The record before startLsn (what the first new record points back to). */
  startPrevLsn: string;
  createdAt: string;
}

/** An LSN lease as stored. */
export interface StoredLease {
  lsn: string;
  expiresAt: string;
}

/** What survives a pageserver restart besides WAL and snapshots. */
export interface TimelineDurableState {
  version: 1;
  /** End of the last record whose WAL is in object storage (a record boundary), and that record's start. */
  durableLsn: string;
  durablePrevLsn: string;
  gcCutoffLsn: string;
  leases: StoredLease[];
  walSources: string[];
  /** End LSNs and times of recent commits, for branching at a time ([lsn, unix ms] pairs, oldest first). */
  commits: Array<[string, number]>;
}

/** A small file stored whole in a snapshot's `.files` object. */
export interface SnapshotFile {
  path: string;
  offset: number;
  size: number;
}

/** One relation segment file of a snapshot. */
export interface SnapshotRelation {
  /** e.g. `base/5/16384`, `base/5/16384_vm`, `global/1262`, `base/5/16384.1` */
  path: string;
  /** Length in blocks at the snapshot. */
  blocks: number;
  /** The blocks whose images this snapshot stores, in the order of the `.pages` object from `pageOffset`. */
  stored: number[];
  /** Index (in pages) of the first stored image in the `.pages` object. */
  pageOffset: number;
}

/** Where a snapshot's earlier pages come from. */
export interface SnapshotRef {
  timelineId: string;
  lsn: string;
}

/** The index of a snapshot: everything needed to rebuild its data directory. */
export interface SnapshotIndex {
  version: 1;
  timelineId: string;
  /** The replayer had replayed exactly to here (or, for `shutdown`, the end of WAL of a cleanly shut down cluster). */
  lsn: string;
  redoLsn: string;
  checkpointLsn: string;
  /** Basebackups from this snapshot need an LSN at or above this. */
  minRecoveryLsn: string;
  /** `shutdown`: a cleanly shut down cluster (no backup label needed); `standby`: copied from the replayer. */
  kind: 'shutdown' | 'standby';
  /**
   * Every page is exactly as of `lsn` (a restartpoint flushed all buffers while replay was paused). Otherwise
   * pages touched since `redoLsn` may be older and only recovery makes them right.
   */
  exact: boolean;
  createdAt: string;
  /** The snapshot holding the blocks this one does not store; null when it stores every block. */
  parent: SnapshotRef | null;
  directories: string[];
  files: SnapshotFile[];
  relations: SnapshotRelation[];
  pageCount: number;
  filesBytes: number;
  /** The `.pages` object when not the default key (a snapshot rewritten by GC gets a new one). */
  pagesKey?: string;
}

/** Relation segment files: `<relfilenode>[_fsm|_vm|_init][.<segment>]` under base/<db>/ or global/. */
const RELATION_FILE = /^(?:base\/(\d+)|global)\/(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$/;

/** A relation file's identity, from its path. */
export interface RelationFileName {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  forkNumber: number;
  segment: number;
}

const FORKS: Record<string, number> = { '': 0, fsm: 1, vm: 2, init: 3 };

/** Parses a data-directory-relative path of a relation segment file; undefined for other files. */
export function parseRelationPath(relativePath: string): RelationFileName | undefined {
  const match = RELATION_FILE.exec(relativePath);
  if (!match) return undefined;
  const global = match[1] === undefined;
  return {
    spcOid: global ? 1664 : 1663,
    dbOid: global ? 0 : Number(match[1]),
    relNumber: Number(match[2]),
    forkNumber: FORKS[match[3] ?? ''] ?? 0,
    segment: match[4] === undefined ? 0 : Number(match[4]),
  };
}

/** Blocks per 1 GiB relation segment file. */
export const BLOCKS_PER_SEGMENT = 131072;

/** The path of the segment file holding `block` of a relation fork (default tablespaces only). */
export function relationPath(spcOid: number, dbOid: number, relNumber: number, forkNumber: number, block: number): { path: string; blockInFile: number } {
  const suffix = ['', '_fsm', '_vm', '_init'][forkNumber] ?? '';
  const segment = Math.floor(block / BLOCKS_PER_SEGMENT);
  const base = spcOid === 1664 ? `global/${relNumber}${suffix}` : `base/${dbOid}/${relNumber}${suffix}`;
  return { path: segment === 0 ? base : `${base}.${segment}`, blockInFile: block % BLOCKS_PER_SEGMENT };
}

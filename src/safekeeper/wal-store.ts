/**
 * A timeline's WAL on a safekeeper's disk: one file per 16 MiB WAL segment, each holding the segment's WAL as
 * framed chunks `[magic][length][begin LSN][crc32][reserved][bytes]`. The frame is what makes a torn write
 * detectable: on open, the last file is scanned and cut after the last chunk whose checksum holds, so a partly
 * written append is never served. Appends are written at once and made durable by a group fsync: the appends of one
 * turn of the event loop share an fdatasync, while one runs later appends queue for the next, and each completion
 * announces the new flush LSN. On a disk whose fdatasync is fast (under 1 ms, smoothed) it runs on the event loop
 * itself: a round trip through libuv's thread pool cost more CPU than the fdatasync (about 35 µs of 140 per Append
 * message here) and a third of the Append round trip. A slow disk's fdatasync goes to the pool, so that the event
 * loop, which serves every timeline, is never blocked for long.
 *
 * The next segment's file is preallocated (written with zeros and fsynced) in the background while the current one
 * fills, as Postgres does: an fdatasync of a write inside an allocated file flushes data only, while one that
 * extends a file also commits file-system metadata, which costs several times more per commit. A zero header
 * marks the clean end of a file's chunks.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { type Lsn, WAL_SEGMENT_SIZE, segmentNumber, segmentOffset, segmentStart, formatLsn } from '../lib/lsn.js';
import { counter } from '../lib/metrics.js';
import { type FileSystem, nodeFileSystem, syncDirectory } from './file-system.js';

const MAGIC = 0x53504757; // "SPGW"
const HEADER_SIZE = 24;
const FILE_SUFFIX = '.wal';
const PREALLOCATION_SUFFIX = '.wal.preallocated';
/** A truncation under way: the cut LSN and the WAL kept of the chunk it cuts (see `truncate`). */
const TRUNCATION_FILE = 'truncation.pending';
const TRUNCATION_HEADER_SIZE = 16;
/** A segment file's preallocated size: its WAL plus room for chunk headers. */
const PREALLOCATED_BYTES = Number(WAL_SEGMENT_SIZE) + 1024 * 1024;
const ZERO_HEADER = Buffer.alloc(HEADER_SIZE);
/** An fdatasync runs on the event loop while the smoothed duration of recent ones is below this. */
const INLINE_FSYNC_MAX_MS = 1;
/** Weight of the newest duration in the smoothed one. */
const FSYNC_SMOOTHING = 0.1;

const fsyncsTotal = counter('spg99_safekeeper_wal_fsyncs_total', 'Group fdatasyncs of WAL, by where they ran (inline: on the event loop; pool: libuv\'s threads)', ['mode']);

/** Where the next fdatasync runs, from the smoothed duration of the recent ones. */
export class FsyncPlacement {
  /** In ms; 0 before the first. */
  private smoothedMs = 0;

  /** Takes the duration of an fdatasync (inline: the call; pool: dispatch to completion, so it errs on the slow side). */
  record(ms: number): void {
    this.smoothedMs = this.smoothedMs === 0 ? ms : this.smoothedMs * (1 - FSYNC_SMOOTHING) + ms * FSYNC_SMOOTHING;
  }

  /** True while fdatasyncs are fast enough to run on the event loop. */
  get inline(): boolean {
    return this.smoothedMs < INLINE_FSYNC_MAX_MS;
  }
}

/** This process's placement: its safekeeper's timelines share one disk, in practice. */
const placement = new FsyncPlacement();

/** fdatasyncs `fds`: on the event loop while the disk is fast, else in the thread pool; measures either. */
async function fdatasyncAll(fileSystem: FileSystem, fds: readonly number[]): Promise<void> {
  const started = performance.now();
  const inline = placement.inline;
  await fileSystem.fdatasync(fds, inline);
  fsyncsTotal.inc({ mode: inline ? 'inline' : 'pool' });
  if (fileSystem.real) placement.record(performance.now() - started);
}

/** A turn of the event loop: the appends of the data read in this one share the fdatasync that follows. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface ChunkRef {
  beginLsn: Lsn;
  length: number;
  /** Offset of the payload in the file. */
  offset: number;
}

interface SegmentFile {
  segment: bigint;
  path: string;
  fd: number | null;
  /** Chunks in LSN order; loaded on first use for older segments. */
  chunks: ChunkRef[] | null;
  size: number;
}

/** What the store found wrong with a file while opening it (reported, then cut). */
export interface Repair {
  file: string;
  cutAtOffset: number;
  reason: string;
}

function fileNameOf(segment: bigint): string {
  return `${segment.toString(16).padStart(16, '0')}${FILE_SUFFIX}`;
}

function encodeHeader(beginLsn: Lsn, payload: Buffer): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  header.writeUInt32LE(MAGIC, 0);
  header.writeUInt32LE(payload.length, 4);
  header.writeBigUInt64LE(beginLsn, 8);
  let crc = zlib.crc32(header.subarray(4, 16));
  crc = zlib.crc32(payload, crc);
  header.writeUInt32LE(crc, 16);
  return header;
}

/** The WAL of one timeline on local disk. */
export class WalStore {
  private readonly segments = new Map<bigint, SegmentFile>();
  private startLsnValue: Lsn = 0n;
  private endLsnValue: Lsn = 0n;
  private flushedLsnValue: Lsn = 0n;
  private fsyncRunning: Promise<void> | null = null;
  private fsyncWanted = false;
  private readonly dirtyFds = new Set<number>();
  private readonly flushWaiters: Array<{ lsn: Lsn; resolve: () => void; reject: (error: Error) => void }> = [];
  private failed: Error | null = null;
  /** The next segment's file, being or already preallocated under a temporary name. */
  private preallocation: { segment: bigint; path: string; ready: boolean } | null = null;

  private constructor(
    private readonly directory: string,
    private readonly fs: FileSystem,
  ) {}

  /**
   * Opens (or creates) the store in `directory`, checking every chunk of the last segment and cutting a torn tail,
   * and finishing a truncation a crash interrupted. `repairs` receives what was cut.
   */
  static async open(directory: string, repairs: Repair[] = [], fileSystem: FileSystem = nodeFileSystem): Promise<WalStore> {
    fileSystem.mkdirSync(directory);
    const store = new WalStore(directory, fileSystem);
    const all = fileSystem.readdirSync(directory);
    // A preallocation interrupted by a restart is redone when needed.
    for (const name of all.filter((entry) => entry.endsWith(PREALLOCATION_SUFFIX))) fileSystem.rmSync(path.join(directory, name));
    const names = all.filter((name) => name.endsWith(FILE_SUFFIX)).sort();
    for (const name of names) {
      const segment = BigInt(`0x${name.slice(0, -FILE_SUFFIX.length)}`);
      const file: SegmentFile = { segment, path: path.join(directory, name), fd: null, chunks: null, size: 0 };
      // Only what is fsynced counts as flushed: the files may hold writes that a crashed process left in the page
      // cache, which a crash of the machine would still lose (Postgres' SyncDataDirectory reasoning). fsync them,
      // and the directory's entries, before the flush LSN is derived from them.
      const fd = store.fdOf(file);
      fileSystem.fsyncSync(fd);
      file.size = fileSystem.fileSize(fd);
      store.segments.set(segment, file);
    }
    syncDirectory(fileSystem, directory);
    const ordered = store.orderedSegments();
    // Scan from the newest file back until one holds a valid chunk: a torn write only affects the end.
    while (ordered.length > 0) {
      const last = ordered[ordered.length - 1];
      const chunks = store.scan(last, repairs);
      if (chunks.length > 0) break;
      store.removeFile(last);
      ordered.pop();
    }
    if (ordered.length > 0) {
      const first = ordered[0];
      const firstChunks = store.loadChunks(first);
      store.startLsnValue = firstChunks[0].beginLsn;
      const last = ordered[ordered.length - 1];
      const lastChunks = store.loadChunks(last);
      const tail = lastChunks[lastChunks.length - 1];
      store.endLsnValue = tail.beginLsn + BigInt(tail.length);
    }
    store.flushedLsnValue = store.endLsnValue;
    store.finishTruncation();
    return store;
  }

  /** The first LSN held (0 when empty). */
  get startLsn(): Lsn {
    return this.startLsnValue;
  }

  /** The end of the WAL written (possibly not yet fsynced). */
  get endLsn(): Lsn {
    return this.endLsnValue;
  }

  /** The end of the WAL known to be on disk. */
  get flushedLsn(): Lsn {
    return this.flushedLsnValue;
  }

  /** Whether the store holds no WAL. */
  get isEmpty(): boolean {
    return this.segments.size === 0;
  }

  /** Makes an empty store start at `lsn` (the first append must begin there). */
  resetTo(lsn: Lsn): void {
    if (!this.isEmpty) throw new Error('resetTo needs an empty WAL store');
    this.startLsnValue = lsn;
    this.endLsnValue = lsn;
    this.flushedLsnValue = lsn;
  }

  /** Writes WAL beginning at the current end. Durable only once `flush()` or `waitFlushed()` resolves. */
  append(beginLsn: Lsn, data: Buffer): void {
    if (this.failed) throw this.failed;
    if (beginLsn !== this.endLsnValue) {
      throw new Error(`append at ${formatLsn(beginLsn)} is not contiguous with the end of WAL ${formatLsn(this.endLsnValue)}`);
    }
    let offset = 0;
    while (offset < data.length) {
      const lsn = beginLsn + BigInt(offset);
      const segment = segmentNumber(lsn);
      const room = Number(segmentStart(segment + 1n) - lsn);
      const piece = data.subarray(offset, offset + Math.min(room, data.length - offset));
      const file = this.segmentForWrite(segment);
      const header = encodeHeader(lsn, piece);
      const fd = this.fdOf(file);
      const written = this.fs.writevSync(fd, [header, piece], file.size);
      if (written !== HEADER_SIZE + piece.length) {
        throw new Error(`short write of WAL to ${file.path} (${written} of ${HEADER_SIZE + piece.length} bytes)`);
      }
      file.chunks?.push({ beginLsn: lsn, length: piece.length, offset: file.size + HEADER_SIZE });
      file.size += HEADER_SIZE + piece.length;
      this.dirtyFds.add(fd);
      offset += piece.length;
    }
    if (this.isEmptyBefore()) this.startLsnValue = beginLsn;
    this.endLsnValue = beginLsn + BigInt(data.length);
    this.preallocateNextWhenHalfFull();
  }

  /** Starts preallocating the next segment's file once the current one is half full. */
  private preallocateNextWhenHalfFull(): void {
    const current = segmentNumber(this.endLsnValue);
    if (this.preallocation && this.preallocation.segment > current) return;
    if (segmentOffset(this.endLsnValue) < Number(WAL_SEGMENT_SIZE) / 2 || !this.fs.real) return;
    const next = current + 1n;
    const target = { segment: next, path: path.join(this.directory, `${fileNameOf(next).slice(0, -FILE_SUFFIX.length)}${PREALLOCATION_SUFFIX}`), ready: false };
    this.preallocation = target;
    void (async () => {
      const handle = await fsp.open(target.path, 'w');
      try {
        const zeros = Buffer.alloc(1024 * 1024);
        for (let offset = 0; offset < PREALLOCATED_BYTES; offset += zeros.length) await handle.write(zeros, 0, zeros.length, offset);
        await handle.sync();
      } finally {
        await handle.close();
      }
      target.ready = true;
      if (this.preallocation !== target) fs.rmSync(target.path, { force: true });
    })().catch(() => {
      // Only an optimization: the segment file is then created when first written.
      if (this.preallocation === target) this.preallocation = null;
      fs.rmSync(target.path, { force: true });
    });
  }

  private isEmptyBefore(): boolean {
    return this.startLsnValue === 0n;
  }

  /** Resolves once everything written before the call is on disk; concurrent calls share one fsync. */
  waitFlushed(lsn: Lsn = this.endLsnValue): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (lsn <= this.flushedLsnValue) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.flushWaiters.push({ lsn, resolve, reject });
      this.scheduleFsync();
    });
  }

  private scheduleFsync(): void {
    if (this.fsyncRunning) {
      this.fsyncWanted = true;
      return;
    }
    let target: Lsn;
    this.fsyncRunning = nextTurn()
      .then(() => {
        target = this.endLsnValue;
        const fds = [...this.dirtyFds];
        this.dirtyFds.clear();
        return fdatasyncAll(this.fs, fds);
      })
      .then(() => {
        // Crash after this point: the chunks up to `target` survive; the flush LSN may be announced.
        if (target > this.flushedLsnValue) this.flushedLsnValue = target;
        const waiting = this.flushWaiters.splice(0);
        for (const waiter of waiting) {
          if (waiter.lsn <= this.flushedLsnValue) waiter.resolve();
          else this.flushWaiters.push(waiter);
        }
      })
      .catch((error: Error) => {
        // An fsync failure leaves the page cache state unknown: refuse everything from now on (as Postgres does).
        this.failed = new Error(`fsync of WAL in ${this.directory} failed: ${error.message}; the safekeeper must restart`);
        for (const waiter of this.flushWaiters.splice(0)) waiter.reject(this.failed);
      })
      .finally(() => {
        this.fsyncRunning = null;
        if (this.fsyncWanted || this.flushWaiters.length > 0) {
          this.fsyncWanted = false;
          if (!this.failed && this.endLsnValue > this.flushedLsnValue) this.scheduleFsync();
        }
      });
  }

  /** Reads up to `maxBytes` of WAL starting at `lsn`, not past `untilLsn`. Empty when nothing is there yet. */
  read(lsn: Lsn, untilLsn: Lsn, maxBytes: number): Buffer {
    if (lsn < this.startLsnValue) {
      throw new RangeError(`WAL at ${formatLsn(lsn)} was removed; the oldest held is ${formatLsn(this.startLsnValue)}`);
    }
    const end = untilLsn < this.endLsnValue ? untilLsn : this.endLsnValue;
    if (lsn >= end) return Buffer.alloc(0);
    const parts: Buffer[] = [];
    let position = lsn;
    let total = 0;
    while (position < end && total < maxBytes) {
      const file = this.segments.get(segmentNumber(position));
      if (!file) throw new Error(`WAL segment file for ${formatLsn(position)} is missing in ${this.directory}`);
      const chunks = this.loadChunks(file);
      let index = this.findChunk(chunks, position);
      while (index < chunks.length && position < end && total < maxBytes) {
        const chunk = chunks[index];
        const skip = Number(position - chunk.beginLsn);
        const length = Math.min(chunk.length - skip, Number(end - position), maxBytes - total);
        const buffer = Buffer.allocUnsafe(length);
        this.fs.readSync(this.fdOf(file), buffer, 0, length, chunk.offset + skip);
        parts.push(buffer);
        total += length;
        position += BigInt(length);
        index += 1;
      }
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, total);
  }

  /**
   * Cuts the WAL at `lsn` (all WAL from `lsn` on is removed), crash-atomically: no crash at any step leaves WAL
   * below `lsn` missing, however the disk orders the writes.
   * 1. Wait for the fsync of everything written, so that the cut applies to durable WAL only.
   * 2. Write `truncation.pending`: the cut LSN and the bytes below it of the chunk the cut falls in (at most one
   *    Append message). Written to a temporary name, fsynced, renamed, the directory fsynced. A crash before the
   *    rename leaves the old log whole; after it, `open` finishes the cut from this file.
   * 3. Remove the later segment files, cut the file at the start of that chunk, append the kept bytes as a new
   *    chunk, fsync the file and the directory. A crash in between may leave the kept bytes missing from the file
   *    (or torn, which the checksum finds): `open` puts them back from the pending file; each step is idempotent.
   * 4. Remove the pending file and fsync the directory before anything else is appended: a pending file that came
   *    back after a crash would cut WAL appended after the truncation.
   */
  async truncate(lsn: Lsn): Promise<void> {
    if (lsn < this.startLsnValue) throw new RangeError(`cannot truncate at ${formatLsn(lsn)}, below the oldest WAL held`);
    await this.waitFlushed();
    if (lsn >= this.endLsnValue) return;
    const kept = this.keptBelow(lsn);
    this.writeTruncationIntent(lsn, kept);
    this.cut(lsn, kept);
    this.clearTruncationIntent();
  }

  /** The bytes below `lsn` of the chunk that holds `lsn` (empty when `lsn` is at a chunk border). */
  private keptBelow(lsn: Lsn): { beginLsn: Lsn; data: Buffer } {
    const file = this.segments.get(segmentNumber(lsn));
    if (!file) return { beginLsn: lsn, data: Buffer.alloc(0) };
    const chunks = this.loadChunks(file);
    const chunk = chunks.find((candidate) => candidate.beginLsn + BigInt(candidate.length) > lsn);
    if (!chunk) return { beginLsn: lsn, data: Buffer.alloc(0) };
    const data = Buffer.alloc(Number(lsn - chunk.beginLsn));
    if (data.length > 0) this.fs.readSync(this.fdOf(file), data, 0, data.length, chunk.offset);
    return { beginLsn: chunk.beginLsn, data };
  }

  private writeTruncationIntent(lsn: Lsn, kept: { beginLsn: Lsn; data: Buffer }): void {
    const header = Buffer.alloc(TRUNCATION_HEADER_SIZE);
    header.writeBigUInt64LE(lsn, 0);
    header.writeBigUInt64LE(kept.beginLsn, 8);
    const target = path.join(this.directory, TRUNCATION_FILE);
    const temporary = `${target}.tmp`;
    const fd = this.fs.openSync(temporary, 'w');
    try {
      this.fs.writevSync(fd, [header, kept.data], 0);
      this.fs.fsyncSync(fd);
    } finally {
      this.fs.closeSync(fd);
    }
    // Crash here: no pending file; the temporary one is ignored and the old log is whole.
    this.fs.renameSync(temporary, target);
    syncDirectory(this.fs, this.directory);
  }

  private clearTruncationIntent(): void {
    this.fs.rmSync(path.join(this.directory, TRUNCATION_FILE));
    syncDirectory(this.fs, this.directory);
  }

  /** At open: finishes a truncation that a crash interrupted (see `truncate`). */
  private finishTruncation(): void {
    const file = path.join(this.directory, TRUNCATION_FILE);
    this.fs.rmSync(`${file}.tmp`);
    if (!this.fs.existsSync(file)) return;
    const content = this.fs.readFileSync(file);
    const lsn = content.readBigUInt64LE(0);
    const kept = { beginLsn: content.readBigUInt64LE(8), data: content.subarray(TRUNCATION_HEADER_SIZE) };
    this.cut(lsn, kept);
    this.clearTruncationIntent();
  }

  /** Steps 3 of `truncate`: removes WAL from `lsn` on and puts the kept bytes of the cut chunk back, durably. */
  private cut(lsn: Lsn, kept: { beginLsn: Lsn; data: Buffer }): void {
    const keepSegment = segmentNumber(lsn);
    for (const file of this.orderedSegments()) {
      if (file.segment > keepSegment) this.removeFile(file);
    }
    const file = this.segments.get(keepSegment);
    let end: Lsn = file ? this.endOf(file) : lsn;
    if (file && end > kept.beginLsn) {
      const chunks = this.loadChunks(file);
      const index = chunks.findIndex((chunk) => chunk.beginLsn + BigInt(chunk.length) > kept.beginLsn);
      if (index >= 0) {
        const cutAt = chunks[index].offset - HEADER_SIZE;
        this.fs.ftruncateSync(this.fdOf(file), cutAt);
        file.size = cutAt;
        file.chunks = chunks.slice(0, index);
        end = chunks[index].beginLsn;
      }
    }
    if (file && file.chunks?.length === 0 && kept.data.length === 0) this.removeFile(file);
    if (this.segments.size === 0) {
      this.startLsnValue = kept.data.length > 0 ? kept.beginLsn : lsn;
      end = this.startLsnValue;
    }
    this.endLsnValue = end;
    if (kept.data.length > 0 && end === kept.beginLsn) this.append(kept.beginLsn, kept.data);
    if (this.endLsnValue !== lsn) {
      throw new Error(`truncating WAL in ${this.directory} at ${formatLsn(lsn)} left it ending at ${formatLsn(this.endLsnValue)}`);
    }
    for (const segment of this.segments.values()) if (segment.fd !== null) this.fs.fsyncSync(segment.fd);
    this.dirtyFds.clear();
    syncDirectory(this.fs, this.directory);
    this.flushedLsnValue = lsn;
  }

  /** The end of the WAL a segment file holds (its start when it holds none). */
  private endOf(file: SegmentFile): Lsn {
    const chunks = this.loadChunks(file);
    const last = chunks[chunks.length - 1];
    return last ? last.beginLsn + BigInt(last.length) : segmentStart(file.segment);
  }

  /** Removes whole segment files that end at or below `lsn`. Returns the new oldest LSN held. */
  removeBelow(lsn: Lsn): Lsn {
    const files = this.orderedSegments();
    // The newest file always stays: it tells where the log ends after a restart.
    for (const file of files.slice(0, -1)) {
      if (segmentStart(file.segment + 1n) <= lsn && segmentStart(file.segment + 1n) <= this.flushedLsnValue) {
        this.removeFile(file);
        this.startLsnValue = segmentStart(file.segment + 1n);
      }
    }
    this.syncDirectory();
    return this.startLsnValue;
  }

  /** Closes the files. */
  close(): void {
    for (const file of this.segments.values()) {
      if (file.fd !== null) this.fs.closeSync(file.fd);
      file.fd = null;
    }
  }

  /** Removes every file and the directory. */
  async destroy(): Promise<void> {
    this.close();
    this.fs.rmSync(this.directory);
  }

  private orderedSegments(): SegmentFile[] {
    return [...this.segments.values()].sort((a, b) => (a.segment < b.segment ? -1 : 1));
  }

  private segmentForWrite(segment: bigint): SegmentFile {
    let file = this.segments.get(segment);
    if (!file) {
      file = { segment, path: path.join(this.directory, fileNameOf(segment)), fd: null, chunks: [], size: 0 };
      this.segments.set(segment, file);
      const preallocated = this.preallocation;
      if (preallocated?.segment === segment && preallocated.ready) {
        this.fs.renameSync(preallocated.path, file.path);
        file.fd = this.fs.openSync(file.path, 'r+');
      } else {
        file.fd = this.fs.openSync(file.path, 'w+');
        // A preallocation that came too late is of no use any more: drop it (its job removes the file).
        if (preallocated && preallocated.segment <= segment) {
          this.preallocation = null;
          if (preallocated.ready) this.fs.rmSync(preallocated.path);
        }
      }
      // The new file's name must survive a crash too.
      this.syncDirectory();
    }
    return file;
  }

  private fdOf(file: SegmentFile): number {
    if (file.fd === null) file.fd = this.fs.openSync(file.path, 'r+');
    return file.fd;
  }

  private removeFile(file: SegmentFile): void {
    if (file.fd !== null) {
      this.dirtyFds.delete(file.fd);
      this.fs.closeSync(file.fd);
    }
    this.fs.rmSync(file.path);
    this.segments.delete(file.segment);
  }

  private syncDirectory(): void {
    syncDirectory(this.fs, this.directory);
  }

  private loadChunks(file: SegmentFile): ChunkRef[] {
    if (!file.chunks) file.chunks = this.scan(file, []);
    return file.chunks;
  }

  /** Reads every chunk header of a file, checking checksums; cuts the file after the last good chunk. */
  private scan(file: SegmentFile, repairs: Repair[]): ChunkRef[] {
    const fd = this.fdOf(file);
    const size = this.fs.fileSize(fd);
    const chunks: ChunkRef[] = [];
    const header = Buffer.alloc(HEADER_SIZE);
    let offset = 0;
    let problem: string | null = null;
    let expectedLsn: Lsn | null = null;
    while (offset < size) {
      if (size - offset < HEADER_SIZE) {
        if (isZero(this.fs, fd, offset, size - offset)) break;
        problem = `a partial chunk header of ${size - offset} bytes`;
        break;
      }
      this.fs.readSync(fd, header, 0, HEADER_SIZE, offset);
      // Zeros: the preallocated rest of the file, the clean end of its chunks -- when all the rest is zeros. Other
      // bytes there are WAL written after a chunk that was lost (a crash persists pages in any order): never
      // acknowledged, and they must be cut, or a later chunk filling the gap exactly would bring them back.
      if (header.equals(ZERO_HEADER)) {
        if (!isZero(this.fs, fd, offset, size - offset)) problem = 'a zeroed (lost) chunk followed by more WAL';
        break;
      }
      const length = header.readUInt32LE(4);
      const beginLsn = header.readBigUInt64LE(8);
      if (header.readUInt32LE(0) !== MAGIC) {
        problem = 'a chunk without the WAL chunk magic';
        break;
      }
      if (offset + HEADER_SIZE + length > size) {
        problem = `a chunk of ${length} bytes of which only ${size - offset - HEADER_SIZE} were written`;
        break;
      }
      if (expectedLsn !== null && beginLsn !== expectedLsn) {
        problem = `a chunk at ${formatLsn(beginLsn)} where ${formatLsn(expectedLsn)} was expected`;
        break;
      }
      const payload = Buffer.allocUnsafe(length);
      this.fs.readSync(fd, payload, 0, length, offset + HEADER_SIZE);
      const crc = zlib.crc32(payload, zlib.crc32(header.subarray(4, 16)));
      if (crc !== header.readUInt32LE(16)) {
        problem = `a chunk at ${formatLsn(beginLsn)} whose checksum does not match`;
        break;
      }
      chunks.push({ beginLsn, length, offset: offset + HEADER_SIZE });
      expectedLsn = beginLsn + BigInt(length);
      offset += HEADER_SIZE + length;
    }
    if (problem) {
      repairs.push({ file: file.path, cutAtOffset: offset, reason: problem });
      this.fs.ftruncateSync(fd, offset);
      this.fs.fsyncSync(fd);
    }
    file.size = offset;
    file.chunks = chunks;
    return chunks;
  }

  private findChunk(chunks: ChunkRef[], lsn: Lsn): number {
    let low = 0;
    let high = chunks.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (chunks[middle].beginLsn <= lsn) low = middle;
      else high = middle - 1;
    }
    return low;
  }
}

/** Whether `length` bytes of the file from `offset` are all zeros (read 1 MiB at a time). */
function isZero(fileSystem: FileSystem, fd: number, offset: number, length: number): boolean {
  const piece = Buffer.alloc(Math.min(length, 1024 * 1024));
  const zeros = Buffer.alloc(piece.length);
  for (let done = 0; done < length; ) {
    const read = fileSystem.readSync(fd, piece, 0, Math.min(piece.length, length - done), offset + done);
    if (read === 0) break;
    if (!piece.subarray(0, read).equals(zeros.subarray(0, read))) return false;
    done += read;
  }
  return true;
}

export { WAL_SEGMENT_SIZE };

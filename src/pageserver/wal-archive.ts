/**
 * One timeline's own WAL: full-size segment files on local disk (what the replayer reads, through hard links,
 * and what basebackups ship) and their copies in object storage (complete segments, and the tail segment as a
 * `.partial` up to a record boundary). Local files are a cache: a segment missing locally is fetched back.
 */
import { postgresOsUser } from '../lib/pg/os-user.js';
import fs from 'node:fs';
import path from 'node:path';
import { type Lsn, WAL_SEGMENT_SIZE, formatLsn, segmentNumber, segmentOffset, segmentStart, walFileName } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import type { ObjectStore } from './storage/object-store.js';
import { ObjectNotFoundError } from './storage/object-store.js';
import { walPartialKey, walSegmentKey } from './layout.js';

const SEGMENT_BYTES = Number(WAL_SEGMENT_SIZE);

export class WalArchive {
  private readonly fds = new Map<bigint, number>();

  constructor(
    readonly timelineId: string,
    readonly localDir: string,
    private readonly store: ObjectStore,
    private readonly log: Logger,
  ) {
    // Private: the replayer reads segments through hard links in its own pg_wal, never through this directory.
    fs.mkdirSync(localDir, { recursive: true, mode: 0o700 });
    fs.chmodSync(localDir, 0o700);
  }

  /** The local file name of a segment (Postgres' name on timeline 1). */
  segmentPath(segment: bigint): string {
    return path.join(this.localDir, walFileName(1, segment));
  }

  /** Whether the segment is on local disk. */
  hasLocal(segment: bigint): boolean {
    return fs.existsSync(this.segmentPath(segment));
  }

  /** Writes WAL bytes at `lsn` into the local segment files (created full size, zero-filled, as needed). */
  write(lsn: Lsn, bytes: Uint8Array): void {
    let position = lsn;
    let done = 0;
    while (done < bytes.length) {
      const segment = segmentNumber(position);
      const offset = segmentOffset(position);
      const length = Math.min(bytes.length - done, SEGMENT_BYTES - offset);
      const fd = this.openForWrite(segment);
      fs.writeSync(fd, bytes, done, length, offset);
      done += length;
      position += BigInt(length);
    }
  }

  /** Reads [from, to) from local segments; throws when one is missing (call `ensureLocal` first). */
  read(from: Lsn, to: Lsn): Buffer {
    const out = Buffer.alloc(Number(to - from));
    let position = from;
    let done = 0;
    while (position < to) {
      const segment = segmentNumber(position);
      const offset = segmentOffset(position);
      const length = Math.min(Number(to - position), SEGMENT_BYTES - offset);
      const fd = fs.openSync(this.segmentPath(segment), 'r');
      try {
        fs.readSync(fd, out, done, length, offset);
      } finally {
        fs.closeSync(fd);
      }
      done += length;
      position += BigInt(length);
    }
    return out;
  }

  /**
   * Makes sure the segment is on local disk, fetching it (or its partial tail) from object storage. Returns false
   * when object storage has neither.
   */
  async ensureLocal(segment: bigint): Promise<boolean> {
    if (this.hasLocal(segment)) return true;
    let body: Buffer;
    try {
      body = await this.store.get(walSegmentKey(this.timelineId, segment));
    } catch (error) {
      if (!(error instanceof ObjectNotFoundError)) throw error;
      try {
        body = await this.store.get(walPartialKey(this.timelineId, segment));
      } catch (partialError) {
        if (partialError instanceof ObjectNotFoundError) return false;
        throw partialError;
      }
    }
    if (body.length > SEGMENT_BYTES) {
      throw new Error(`WAL object ${walSegmentKey(this.timelineId, segment)} in ${this.store.description} has ${body.length} bytes, more than a segment: it is corrupt`);
    }
    const file = this.segmentPath(segment);
    const temp = `${file}.download`;
    const fd = fs.openSync(temp, 'w', 0o600);
    try {
      fs.writeSync(fd, body, 0, body.length, 0);
      fs.ftruncateSync(fd, SEGMENT_BYTES);
      shareWithPostgres(fd);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, file);
    this.log.debug({ segment: walFileName(1, segment), bytes: body.length }, 'fetched WAL segment from object storage');
    return true;
  }

  /**
   * Uploads WAL from `from` up to `to` (a record boundary): every segment completed on the way whole, and the
   * segment holding `to` as a partial. Returns the bytes uploaded.
   */
  async upload(from: Lsn, to: Lsn): Promise<number> {
    if (to <= from) return 0;
    let uploaded = 0;
    const last = segmentNumber(to);
    for (let segment = segmentNumber(from); segment <= last; segment++) {
      const complete = segmentStart(segment + 1n) <= to;
      if (complete) {
        await this.store.putFile(walSegmentKey(this.timelineId, segment), this.segmentPath(segment));
        await this.store.delete(walPartialKey(this.timelineId, segment));
        this.closeSegment(segment);
        uploaded += SEGMENT_BYTES;
      } else {
        const bytes = this.read(segmentStart(segment), to);
        await this.store.put(walPartialKey(this.timelineId, segment), bytes);
        uploaded += bytes.length;
      }
    }
    return uploaded;
  }

  /** Writes the local segment holding `lsn` from `source` bytes [segment start, lsn) (a branch's first segment). */
  seedSegment(lsn: Lsn, prefix: Buffer): void {
    if (prefix.length !== segmentOffset(lsn)) {
      throw new Error(`seeding ${formatLsn(lsn)} needs ${segmentOffset(lsn)} bytes of its segment, got ${prefix.length}`);
    }
    this.write(segmentStart(segmentNumber(lsn)), prefix);
  }

  /** Removes local segment files wholly below `lsn` (they stay in object storage). */
  dropLocalBelow(lsn: Lsn): void {
    const limit = segmentNumber(lsn);
    for (const name of fs.readdirSync(this.localDir)) {
      if (!/^[0-9A-F]{24}$/.test(name)) continue;
      const segment = BigInt(`0x${name.slice(8, 16)}`) * (0x100000000n / WAL_SEGMENT_SIZE) + BigInt(`0x${name.slice(16)}`);
      if (segment < limit) {
        this.closeSegment(segment);
        fs.rmSync(path.join(this.localDir, name), { force: true });
      }
    }
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }

  private openForWrite(segment: bigint): number {
    let fd = this.fds.get(segment);
    if (fd !== undefined) return fd;
    const file = this.segmentPath(segment);
    const exists = fs.existsSync(file);
    fd = fs.openSync(file, exists ? 'r+' : 'w+', 0o600);
    if (!exists) {
      fs.ftruncateSync(fd, SEGMENT_BYTES);
      shareWithPostgres(fd);
    }
    // Few segments are written at once: keep the newest open.
    for (const [open, openFd] of this.fds) {
      if (open < segment - 1n) {
        fs.closeSync(openFd);
        this.fds.delete(open);
      }
    }
    this.fds.set(segment, fd);
    return fd;
  }

  private closeSegment(segment: bigint): void {
    const fd = this.fds.get(segment);
    if (fd !== undefined) {
      fs.closeSync(fd);
      this.fds.delete(segment);
    }
  }
}

/**
 * A segment is read by the replayer's Postgres, which runs as another OS user when this process is root: readable by
 * that user's group (0640), never by others. As the same user, 0600 is enough.
 */
function shareWithPostgres(fd: number): void {
  const user = postgresOsUser();
  if (user.gid === undefined) {
    fs.fchmodSync(fd, 0o600);
    return;
  }
  fs.fchownSync(fd, process.getuid?.() ?? 0, user.gid);
  fs.fchmodSync(fd, 0o640);
}

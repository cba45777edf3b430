/**
 * A streaming decoder of PostgreSQL 18 WAL (little-endian, 8 KiB pages, MAXALIGN 8). It takes WAL bytes in any
 * chunking and returns the records they complete: their boundaries, header fields, the blocks they touch, commit
 * timestamps and segment switches. The compute agent uses it to forward WAL only up to complete records; the
 * pageserver to index records by block.
 *
 * The layout follows PostgreSQL's access/xlog_internal.h (page headers) and access/xlogrecord.h (records and their
 * block headers); the checks follow xlogreader.c. Bytes are copied only when a record header straddles a chunk or
 * page, or when blocks are decoded from a record that does; with `decodeBlocks: false` and `verifyCrc: false` only
 * page and record headers are read.
 */
import { WAL_PAGE_SIZE, WAL_SEGMENT_SIZE, formatLsn, type Lsn } from '../lsn.js';

/** PostgreSQL 18's XLOG_PAGE_MAGIC (17 was 0xD116): a page with another magic is not PostgreSQL 18 WAL. */
export const XLOG_PAGE_MAGIC = 0xd118;
/** Records start at multiples of this (MAXALIGN on x86-64). */
export const MAXIMUM_ALIGNOF = 8;
/** Size of a page header (XLogPageHeaderData, SizeOfXLogShortPHD). */
export const SIZE_OF_SHORT_PAGE_HEADER = 24;
/** Size of the first page header of a segment (XLogLongPageHeaderData, SizeOfXLogLongPHD). */
export const SIZE_OF_LONG_PAGE_HEADER = 40;
/** Size of a record header (XLogRecord, SizeOfXLogRecord). */
export const SIZE_OF_RECORD_HEADER = 24;
/** The largest record PostgreSQL writes (XLogRecordMaxSize, 1020 MiB). */
export const MAX_RECORD_LENGTH = 1020 * 1024 * 1024;

/** Resource manager ids used here (access/rmgrlist.h). */
export const RM_XLOG_ID = 0;
export const RM_XACT_ID = 1;

const PAGE_SIZE = Number(WAL_PAGE_SIZE);
const PAGE_MASK = PAGE_SIZE - 1;

// xlp_info bits.
const XLP_FIRST_IS_CONTRECORD = 0x0001;
const XLP_LONG_HEADER = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008;
const XLP_ALL_FLAGS = 0x000f;

// xl_info of RM_XLOG_ID records (the high nibble; the low one belongs to the WAL machinery).
const XLR_RMGR_INFO_MASK = 0xf0;
const XLOG_CHECKPOINT_SHUTDOWN = 0x00;
const XLOG_CHECKPOINT_ONLINE = 0x10;
const XLOG_SWITCH = 0x40;
// xl_info of RM_XACT_ID records.
const XLOG_XACT_OPMASK = 0x70;
const XLOG_XACT_COMMIT = 0x00;
const XLOG_XACT_COMMIT_PREPARED = 0x30;

// Block references.
const XLR_MAX_BLOCK_ID = 32;
const XLR_BLOCK_ID_DATA_SHORT = 255;
const XLR_BLOCK_ID_DATA_LONG = 254;
const XLR_BLOCK_ID_ORIGIN = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID = 252;
const BKPBLOCK_FORK_MASK = 0x0f;
const BKPBLOCK_HAS_IMAGE = 0x10;
const BKPBLOCK_HAS_DATA = 0x20;
const BKPBLOCK_WILL_INIT = 0x40;
const BKPBLOCK_SAME_REL = 0x80;
const BKPIMAGE_HAS_HOLE = 0x01;
const BKPIMAGE_APPLY = 0x02;
const BKPIMAGE_COMPRESSED = 0x04 | 0x08 | 0x10; // pglz, lz4, zstd
const BLCKSZ = 8192;

/** Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00 UTC). */
const POSTGRES_EPOCH_UNIX_MICROS = 946_684_800_000_000n;

/** One block a record touches (a DecodedBkpBlock without its data). */
export interface BlockRef {
  spcOid: number;
  dbOid: number;
  relNumber: number;
  forkNumber: number;
  blockNumber: number;
  /** The record carries a full-page image of the block. */
  hasImage: boolean;
  /** Redo restores the block from that image (not only kept for consistency checks). */
  applyImage: boolean;
  /** Redo initializes the block from scratch: its previous contents are not needed. */
  willInit: boolean;
}

/** One decoded record. */
export interface WalRecord {
  startLsn: Lsn;
  /**
   * Just past the record's last byte, not aligned: `startLsn + totalLength` plus the page headers the record spans.
   * The next record starts at MAXALIGN(endLsn), after the page header when that is a page boundary.
   */
  endLsn: Lsn;
  prevLsn: Lsn;
  xid: number;
  rmid: number;
  info: number;
  /** xl_tot_len: header and body, without the page headers in between. */
  totalLength: number;
  /** Block references, in block id order (empty with `decodeBlocks: false`). */
  blocks: BlockRef[];
  /** The commit time of a transaction commit (needs `decodeBlocks`). */
  commitTime?: Date;
  /** The same, exact: microseconds since 2000-01-01 00:00 UTC, as PostgreSQL's TimestampTz. */
  commitTimestamp?: bigint;
  /** XLOG_SWITCH: the rest of the segment is padding; the next record starts on the next segment's first page. */
  isSwitch: boolean;
  /** A shutdown or online checkpoint record. */
  isCheckpoint: boolean;
}

/** WAL that is not valid PostgreSQL 18 WAL at `lsn`. */
export class WalDecodeError extends Error {
  override readonly name = 'WalDecodeError';

  constructor(
    readonly lsn: Lsn,
    detail: string,
  ) {
    super(`invalid WAL at ${formatLsn(lsn)}: ${detail}`);
  }
}

/** Options of a {@link WalDecoder}. */
export interface WalDecoderOptions {
  /** Check each record's CRC-32C (default true). */
  verifyCrc?: boolean;
  /** Decode block references and commit times (default true); false finds only boundaries and header fields. */
  decodeBlocks?: boolean;
  /** The start of the record before `startLsn`, when known: the first record's xl_prev must equal it. */
  prevLsn?: Lsn;
  /** The WAL segment size (default 16 MiB); the long page headers must agree. */
  segmentSize?: bigint;
}

/** Rounds `value` up to a multiple of MAXIMUM_ALIGNOF. */
export function MAXALIGN(value: Lsn): Lsn;
export function MAXALIGN(value: number): number;
export function MAXALIGN(value: Lsn | number): Lsn | number {
  if (typeof value === 'bigint') return (value + 7n) & ~7n;
  return (value + 7) & ~7;
}

/**
 * True when a record may start at `lsn`: MAXALIGNed and not inside a page header. (A record ending at `lsn` lets
 * the next one start at MAXALIGN(lsn), after the page header if that is a page boundary.)
 */
export function isRecordBoundaryAligned(lsn: Lsn, segmentSize: bigint = WAL_SEGMENT_SIZE): boolean {
  if (lsn % BigInt(MAXIMUM_ALIGNOF) !== 0n) return false;
  const inPage = Number(lsn % WAL_PAGE_SIZE);
  const headerSize = lsn % segmentSize < WAL_PAGE_SIZE ? SIZE_OF_LONG_PAGE_HEADER : SIZE_OF_SHORT_PAGE_HEADER;
  return inPage >= headerSize;
}

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slice-by-8 tables.
const CRC_TABLES = buildCrcTables();
const [T0, T1, T2, T3, T4, T5, T6, T7] = CRC_TABLES;

function buildCrcTables(): Int32Array[] {
  const tables = Array.from({ length: 8 }, () => new Int32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    tables[0][n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = tables[0][n];
    for (let k = 1; k < 8; k++) {
      c = tables[0][c & 0xff] ^ (c >>> 8);
      tables[k][n] = c;
    }
  }
  return tables;
}

/**
 * CRC-32C of `buf[start, end)`, continuing from `crc` (the result of an earlier call, 0 to begin), so that
 * `crc32c(b, crc32c(a))` equals the CRC of `a` followed by `b`. PostgreSQL's record CRC is
 * `crc32c(header[0, 20), crc32c(body))`.
 */
export function crc32c(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  let c = ~crc;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    c ^= buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24);
    c =
      T7[c & 0xff] ^
      T6[(c >>> 8) & 0xff] ^
      T5[(c >>> 16) & 0xff] ^
      T4[c >>> 24] ^
      T3[buf[i + 4]] ^
      T2[buf[i + 5]] ^
      T1[buf[i + 6]] ^
      T0[buf[i + 7]];
  }
  for (; i < end; i++) c = T0[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// Where the decoder is between page headers.
const SKIP_CONTINUATION = 0; // skipping the tail of a record begun before startLsn
const RECORD_START = 1; // aligning to the next record
const RECORD_HEADER = 2; // collecting a record header
const RECORD_BODY = 3; // consuming a record's body
const SWITCH_PADDING = 4; // skipping the rest of a segment after XLOG_SWITCH
const END_OF_WAL = 5; // zeros where a record or page should be: nothing more is decoded

/**
 * Decodes a contiguous WAL stream. Feed it bytes in order; it returns each record once its last byte arrives.
 *
 * Zeros where a record or page header should start are the end of WAL (a preallocated or cut segment): from then on
 * {@link atEndOfWal} is true, further bytes are only counted, and WAL written later is decoded by a new decoder
 * started at {@link lastRecordEnd} with `prevLsn` {@link lastRecordStart}. A {@link WalDecodeError} leaves the
 * decoder failed (later feeds rethrow it); records before the bad one are reflected in `lastRecordEnd`.
 */
export class WalDecoder {
  private readonly verifyCrc: boolean;
  private readonly decodeBlocks: boolean;
  private readonly segmentSize: number;
  private readonly segmentSizeLsn: bigint;

  /** The segment holding the next byte, and the byte's offset in it. */
  private segmentBase: bigint;
  private offset: number;
  private state: number;
  private inPageHeader: boolean;
  private pageHeaderHave = 0;
  private readonly pageHeaderBytes = new Uint8Array(SIZE_OF_LONG_PAGE_HEADER);
  private readonly pageHeaderView = new DataView(this.pageHeaderBytes.buffer);
  /** On the first page when starting at a page boundary: a continued record's tail is skipped. */
  private firstPage: boolean;
  private skipRemaining = 0;

  // The record being read.
  private recordStart: Lsn = 0n;
  private headerHave = 0;
  private readonly headerBytes = new Uint8Array(SIZE_OF_RECORD_HEADER);
  private readonly headerView = new DataView(this.headerBytes.buffer);
  private totalLength = 0;
  private xid = 0;
  private xlPrev: Lsn = 0n;
  private info = 0;
  private rmid = 0;
  private expectedCrc = 0;
  private crc = 0;
  private bodyRemaining = 0;
  private body = new Uint8Array(0);
  private bodyView = new DataView(this.body.buffer);
  private bodyHave = 0;

  private lastStart: Lsn;
  private lastEnd: Lsn;
  private prevKnown: boolean;
  private failure: WalDecodeError | null = null;
  private readonly pending: WalRecord[] = [];
  private systemIdValue: bigint | null = null;

  /** `startLsn` must be a page boundary (a record continued onto that page is skipped) or where a record starts. */
  constructor(startLsn: Lsn, options: WalDecoderOptions = {}) {
    this.verifyCrc = options.verifyCrc ?? true;
    this.decodeBlocks = options.decodeBlocks ?? true;
    this.segmentSizeLsn = options.segmentSize ?? WAL_SEGMENT_SIZE;
    const size = this.segmentSizeLsn;
    if (size < 1n << 20n || size > 1n << 30n || (size & (size - 1n)) !== 0n) {
      throw new RangeError(`WAL segment size ${size} is not a power of two between 1 MiB and 1 GiB`);
    }
    this.segmentSize = Number(size);
    if (startLsn < 0n) throw new RangeError(`start LSN ${startLsn} is negative`);
    this.segmentBase = startLsn - (startLsn % size);
    this.offset = Number(startLsn % size);
    const inPage = this.offset & PAGE_MASK;
    const headerSize = this.offset < PAGE_SIZE ? SIZE_OF_LONG_PAGE_HEADER : SIZE_OF_SHORT_PAGE_HEADER;
    if (inPage > 0 && inPage < headerSize) {
      throw new RangeError(`start LSN ${formatLsn(startLsn)} lies inside a page header: start at the page boundary or at a record`);
    }
    this.inPageHeader = inPage === 0;
    this.firstPage = inPage === 0;
    this.state = inPage === 0 ? SKIP_CONTINUATION : RECORD_START;
    this.lastStart = options.prevLsn ?? 0n;
    this.prevKnown = options.prevLsn !== undefined;
    this.lastEnd = startLsn;
  }

  /** Where the next fed byte goes. */
  get feedLsn(): Lsn {
    return this.segmentBase + BigInt(this.offset);
  }

  /** End of the last complete record (`startLsn` until one completes): WAL up to here may be forwarded. */
  get lastRecordEnd(): Lsn {
    return this.lastEnd;
  }

  /** Start of the last complete record (the xl_prev of the next one); `prevLsn` or 0 until one completes. */
  get lastRecordStart(): Lsn {
    return this.lastStart;
  }

  /** True once zeros were found where a record or page header should start. */
  get atEndOfWal(): boolean {
    return this.state === END_OF_WAL;
  }

  /** The system identifier from the last long page header read (null before one). */
  get systemId(): bigint | null {
    return this.systemIdValue;
  }

  /**
   * Appends WAL bytes that continue at {@link feedLsn} (when `at` is given it must equal it) and returns the records
   * they complete, in order. Accepts any chunking.
   */
  feed(bytes: Uint8Array, at?: Lsn): WalRecord[] {
    if (this.failure) throw this.failure;
    if (at !== undefined && at !== this.feedLsn) {
      throw new WalDecodeError(at, `bytes fed here, but the decoder continues at ${formatLsn(this.feedLsn)}: feed contiguous WAL`);
    }
    try {
      this.consume(bytes);
    } catch (error) {
      this.pending.length = 0;
      if (error instanceof WalDecodeError) this.failure = error;
      throw error;
    }
    return this.pending.splice(0);
  }

  private consume(bytes: Uint8Array): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const length = bytes.length;
    let i = 0;
    while (i < length) {
      if (this.state === END_OF_WAL) {
        this.skipAny(length - i);
        return;
      }
      if (this.state === SWITCH_PADDING) {
        const take = Math.min(length - i, this.segmentSize - this.offset);
        i += take;
        this.offset += take;
        if (this.offset === this.segmentSize) {
          this.nextSegment();
          this.state = RECORD_START;
        }
        continue;
      }
      if (this.inPageHeader) {
        i += this.readPageHeader(bytes, view, i);
        continue;
      }
      const available = Math.min(length - i, PAGE_SIZE - (this.offset & PAGE_MASK));
      switch (this.state) {
        case SKIP_CONTINUATION: {
          const take = Math.min(available, this.skipRemaining);
          this.skipRemaining -= take;
          if (this.skipRemaining === 0) this.state = RECORD_START;
          if (take > 0) {
            i += take;
            this.advance(take);
          }
          break;
        }
        case RECORD_START: {
          const padding = -this.offset & (MAXIMUM_ALIGNOF - 1);
          if (padding > 0) {
            const take = Math.min(available, padding);
            i += take;
            this.advance(take);
          } else {
            this.recordStart = this.feedLsn;
            this.headerHave = 0;
            this.bodyHave = 0;
            this.state = RECORD_HEADER;
          }
          break;
        }
        case RECORD_HEADER:
          i += this.readRecordHeader(bytes, view, i, available);
          break;
        case RECORD_BODY:
          i += this.readRecordBody(bytes, view, i, available);
          break;
        default:
          throw new Error(`WalDecoder in unknown state ${this.state}`);
      }
    }
  }

  /** Moves `count` bytes on inside the current page; reaching its end means a page header comes next. */
  private advance(count: number): void {
    this.offset += count;
    if ((this.offset & PAGE_MASK) === 0) {
      if (this.offset === this.segmentSize) this.nextSegment();
      this.inPageHeader = true;
      this.pageHeaderHave = 0;
    }
  }

  private nextSegment(): void {
    this.segmentBase += this.segmentSizeLsn;
    this.offset = 0;
    this.inPageHeader = true;
    this.pageHeaderHave = 0;
  }

  private skipAny(count: number): void {
    this.offset += count;
    while (this.offset >= this.segmentSize) {
      this.offset -= this.segmentSize;
      this.segmentBase += this.segmentSizeLsn;
    }
  }

  private readPageHeader(bytes: Uint8Array, view: DataView, at: number): number {
    const pageStart = this.offset - this.pageHeaderHave;
    const size = pageStart === 0 ? SIZE_OF_LONG_PAGE_HEADER : SIZE_OF_SHORT_PAGE_HEADER;
    let source = view;
    let position = at;
    let take = size;
    if (this.pageHeaderHave > 0 || bytes.length - at < size) {
      // The header straddles chunks: collect it.
      take = Math.min(size - this.pageHeaderHave, bytes.length - at);
      this.pageHeaderBytes.set(bytes.subarray(at, at + take), this.pageHeaderHave);
      this.pageHeaderHave += take;
      this.offset += take;
      if (this.pageHeaderHave < size) return take;
      source = this.pageHeaderView;
      position = 0;
    } else {
      this.offset += take;
    }
    this.inPageHeader = false;
    this.pageHeaderHave = 0;
    this.checkPageHeader(source, position, this.segmentBase + BigInt(pageStart), pageStart === 0);
    return take;
  }

  private checkPageHeader(view: DataView, at: number, pageLsn: Lsn, longHeader: boolean): void {
    const magic = view.getUint16(at, true);
    const info = view.getUint16(at + 2, true);
    const pageAddress = view.getBigUint64(at + 8, true);
    const remainingLength = view.getUint32(at + 16, true);
    if (magic !== XLOG_PAGE_MAGIC) {
      if (magic === 0 && info === 0 && pageAddress === 0n && remainingLength === 0 && view.getUint32(at + 4, true) === 0) {
        this.state = END_OF_WAL;
        return;
      }
      throw new WalDecodeError(pageLsn, `page header has magic ${hex(magic, 4)}, not ${hex(XLOG_PAGE_MAGIC, 4)} (PostgreSQL 18 WAL)`);
    }
    if ((info & ~XLP_ALL_FLAGS) !== 0) throw new WalDecodeError(pageLsn, `page header has invalid info bits ${hex(info, 4)}`);
    if (pageAddress !== pageLsn) {
      throw new WalDecodeError(pageLsn, `page header says the page is at ${formatLsn(pageAddress)} (a stale page of a recycled segment, or misplaced bytes)`);
    }
    if (longHeader) {
      if ((info & XLP_LONG_HEADER) === 0) throw new WalDecodeError(pageLsn, 'the first page of a segment lacks its long header');
      const segmentSize = view.getUint32(at + 32, true);
      const blockSize = view.getUint32(at + 36, true);
      if (segmentSize !== this.segmentSize) {
        throw new WalDecodeError(pageLsn, `segment size in the long page header is ${segmentSize}, the decoder expects ${this.segmentSize}`);
      }
      if (blockSize !== PAGE_SIZE) throw new WalDecodeError(pageLsn, `WAL block size in the long page header is ${blockSize}, not ${PAGE_SIZE}`);
      this.systemIdValue = view.getBigUint64(at + 24, true);
    } else if ((info & XLP_LONG_HEADER) !== 0) {
      throw new WalDecodeError(pageLsn, 'a long page header in the middle of a segment');
    }

    const continues = (info & XLP_FIRST_IS_CONTRECORD) !== 0;
    if (this.firstPage) {
      this.firstPage = false;
      this.skipRemaining = continues ? remainingLength : 0;
      this.state = this.skipRemaining > 0 ? SKIP_CONTINUATION : RECORD_START;
      return;
    }
    switch (this.state) {
      case SKIP_CONTINUATION:
      case RECORD_HEADER:
      case RECORD_BODY: {
        if (this.state !== SKIP_CONTINUATION && (info & XLP_FIRST_IS_OVERWRITE_CONTRECORD) !== 0) {
          // The record was cut by a crash and its tail overwritten: forget it; the page starts with the next record.
          this.headerHave = 0;
          this.bodyHave = 0;
          this.state = RECORD_START;
          return;
        }
        const expected = this.state === SKIP_CONTINUATION ? this.skipRemaining : this.totalLength - this.headerHave - this.bodyHave;
        const subject = this.state === SKIP_CONTINUATION ? 'the record continued from before the start' : `the record at ${formatLsn(this.recordStart)}`;
        if (!continues) throw new WalDecodeError(pageLsn, `${subject} continues here, but the page has no continuation flag`);
        if (remainingLength !== expected) {
          throw new WalDecodeError(pageLsn, `page header says ${remainingLength} bytes of a record continue here; ${subject} has ${expected} left`);
        }
        return;
      }
      case RECORD_START:
        if (continues) {
          throw new WalDecodeError(pageLsn, `page says a record continues onto it, but the previous record ended at ${formatLsn(this.lastEnd)}`);
        }
        return;
      default:
        return;
    }
  }

  private readRecordHeader(bytes: Uint8Array, view: DataView, at: number, available: number): number {
    if (this.headerHave === 0 && available >= SIZE_OF_RECORD_HEADER) {
      // The common case: the whole header lies in this chunk and page.
      const totalLength = view.getUint32(at, true);
      if (totalLength === 0) return this.endOfWal(available);
      this.beginRecord(view, at);
      if (this.verifyCrc) this.headerBytes.set(bytes.subarray(at, at + SIZE_OF_RECORD_HEADER));
      this.headerHave = SIZE_OF_RECORD_HEADER;
      this.advance(SIZE_OF_RECORD_HEADER);
      this.startBody();
      return SIZE_OF_RECORD_HEADER;
    }
    const take = Math.min(available, SIZE_OF_RECORD_HEADER - this.headerHave);
    const before = this.headerHave;
    this.headerBytes.set(bytes.subarray(at, at + take), before);
    this.headerHave += take;
    if (before < 4 && this.headerHave >= 4) {
      // xl_tot_len is always on the record's first page (records are MAXALIGNed): check it before a page header.
      const totalLength = this.headerView.getUint32(0, true);
      if (totalLength === 0) {
        this.headerHave = 0;
        this.state = END_OF_WAL;
        this.skipAny(take);
        return take;
      }
      if (totalLength < SIZE_OF_RECORD_HEADER) {
        throw new WalDecodeError(this.recordStart, `record length ${totalLength} is shorter than a record header (${SIZE_OF_RECORD_HEADER})`);
      }
      this.totalLength = totalLength;
    }
    this.advance(take);
    if (this.headerHave === SIZE_OF_RECORD_HEADER) {
      this.beginRecord(this.headerView, 0);
      this.startBody();
    }
    return take;
  }

  private endOfWal(count: number): number {
    this.state = END_OF_WAL;
    this.skipAny(count);
    return count;
  }

  private beginRecord(view: DataView, at: number): void {
    const totalLength = view.getUint32(at, true);
    if (totalLength < SIZE_OF_RECORD_HEADER) {
      throw new WalDecodeError(this.recordStart, `record length ${totalLength} is shorter than a record header (${SIZE_OF_RECORD_HEADER})`);
    }
    if (totalLength > MAX_RECORD_LENGTH) {
      throw new WalDecodeError(this.recordStart, `record length ${totalLength} exceeds PostgreSQL's maximum of ${MAX_RECORD_LENGTH}`);
    }
    const prev = view.getBigUint64(at + 8, true);
    if (this.prevKnown && prev !== this.lastStart) {
      throw new WalDecodeError(
        this.recordStart,
        `record has xl_prev ${formatLsn(prev)}, but the previous record starts at ${formatLsn(this.lastStart)}`,
      );
    }
    this.totalLength = totalLength;
    this.xid = view.getUint32(at + 4, true);
    this.xlPrev = prev;
    this.info = view.getUint8(at + 16);
    this.rmid = view.getUint8(at + 17);
    this.expectedCrc = view.getUint32(at + 20, true);
  }

  private startBody(): void {
    this.bodyRemaining = this.totalLength - SIZE_OF_RECORD_HEADER;
    this.bodyHave = 0;
    this.crc = 0;
    this.state = RECORD_BODY;
    if (this.bodyRemaining === 0) this.finishRecord(this.bodyView, 0, 0);
  }

  private readRecordBody(bytes: Uint8Array, view: DataView, at: number, available: number): number {
    const take = Math.min(available, this.bodyRemaining);
    if (this.bodyHave === 0 && take === this.bodyRemaining) {
      // The whole body lies in this chunk and page: check and decode it in place.
      if (this.verifyCrc) this.crc = crc32c(bytes, 0, at, at + take);
      this.bodyHave = take;
      this.bodyRemaining = 0;
      this.advance(take);
      this.finishRecord(view, at, take);
      return take;
    }
    if (this.verifyCrc) this.crc = crc32c(bytes, this.crc, at, at + take);
    if (this.decodeBlocks) {
      const bodyLength = this.totalLength - SIZE_OF_RECORD_HEADER;
      if (this.body.length < bodyLength) {
        this.body = new Uint8Array(Math.max(bodyLength, 2 * this.body.length, 8192));
        this.bodyView = new DataView(this.body.buffer);
      }
      this.body.set(bytes.subarray(at, at + take), this.bodyHave);
    }
    this.bodyHave += take;
    this.bodyRemaining -= take;
    this.advance(take);
    if (this.bodyRemaining === 0) {
      this.finishRecord(this.bodyView, 0, this.bodyHave);
      // Give back the memory of an exceptionally large record.
      if (this.body.length > 1 << 20) {
        this.body = new Uint8Array(0);
        this.bodyView = new DataView(this.body.buffer);
      }
    }
    return take;
  }

  private finishRecord(view: DataView, bodyStart: number, bodyLength: number): void {
    const startLsn = this.recordStart;
    if (this.verifyCrc) {
      const crc = crc32c(this.headerBytes, this.crc, 0, 20);
      if (crc !== this.expectedCrc) {
        throw new WalDecodeError(startLsn, `record CRC is ${hex(crc, 8)}, the header says ${hex(this.expectedCrc, 8)}: the record is corrupt`);
      }
    }
    const rmid = this.rmid;
    const info = this.info;
    const rmgrInfo = info & XLR_RMGR_INFO_MASK;
    const record: WalRecord = {
      startLsn,
      endLsn: this.feedLsn,
      prevLsn: this.xlPrev,
      xid: this.xid,
      rmid,
      info,
      totalLength: this.totalLength,
      blocks: [],
      isSwitch: rmid === RM_XLOG_ID && rmgrInfo === XLOG_SWITCH,
      isCheckpoint: rmid === RM_XLOG_ID && (rmgrInfo === XLOG_CHECKPOINT_SHUTDOWN || rmgrInfo === XLOG_CHECKPOINT_ONLINE),
    };
    if (this.decodeBlocks) decodeBody(record, view, bodyStart, bodyLength);
    this.pending.push(record);
    this.lastStart = startLsn;
    this.lastEnd = record.endLsn;
    this.prevKnown = true;
    this.headerHave = 0;
    this.bodyHave = 0;
    if (record.isSwitch && !(this.offset === 0 && this.inPageHeader)) {
      this.state = SWITCH_PADDING;
      this.inPageHeader = false;
    } else {
      this.state = RECORD_START;
    }
  }
}

/** Fills `record.blocks` and the commit time from the record's body (DecodeXLogRecord's header walk). */
function decodeBody(record: WalRecord, view: DataView, start: number, length: number): void {
  const end = start + length;
  let cursor = start;
  let dataTotal = 0;
  let mainDataLength = 0;
  let lastBlockId = -1;
  let previous: BlockRef | null = null;
  const need = (count: number, what: string): void => {
    if (cursor + count > end) throw new WalDecodeError(record.startLsn, `record is too short for its ${what}`);
  };
  while (end - cursor > dataTotal) {
    const blockId = view.getUint8(cursor);
    cursor += 1;
    if (blockId === XLR_BLOCK_ID_DATA_SHORT) {
      need(1, 'main data length');
      mainDataLength = view.getUint8(cursor);
      cursor += 1;
      dataTotal += mainDataLength;
      break;
    }
    if (blockId === XLR_BLOCK_ID_DATA_LONG) {
      need(4, 'main data length');
      mainDataLength = view.getUint32(cursor, true);
      cursor += 4;
      dataTotal += mainDataLength;
      break;
    }
    if (blockId === XLR_BLOCK_ID_ORIGIN) {
      need(2, 'replication origin');
      cursor += 2;
      continue;
    }
    if (blockId === XLR_BLOCK_ID_TOPLEVEL_XID) {
      need(4, 'top-level xid');
      cursor += 4;
      continue;
    }
    if (blockId > XLR_MAX_BLOCK_ID) throw new WalDecodeError(record.startLsn, `invalid block id ${blockId}`);
    if (blockId <= lastBlockId) throw new WalDecodeError(record.startLsn, `block id ${blockId} out of order (after ${lastBlockId})`);
    lastBlockId = blockId;
    need(3, 'block header');
    const forkFlags = view.getUint8(cursor);
    const dataLength = view.getUint16(cursor + 1, true);
    cursor += 3;
    const hasData = (forkFlags & BKPBLOCK_HAS_DATA) !== 0;
    if (hasData !== (dataLength > 0)) {
      throw new WalDecodeError(record.startLsn, `block ${blockId} has data length ${dataLength} ${hasData ? 'but' : 'without'} its data flag`);
    }
    dataTotal += dataLength;
    const hasImage = (forkFlags & BKPBLOCK_HAS_IMAGE) !== 0;
    let applyImage = false;
    if (hasImage) {
      need(5, 'block image header');
      const imageLength = view.getUint16(cursor, true);
      const holeOffset = view.getUint16(cursor + 2, true);
      const imageInfo = view.getUint8(cursor + 4);
      cursor += 5;
      const hasHole = (imageInfo & BKPIMAGE_HAS_HOLE) !== 0;
      const compressed = (imageInfo & BKPIMAGE_COMPRESSED) !== 0;
      let holeLength = 0;
      if (compressed) {
        if (hasHole) {
          need(2, 'compressed image header');
          holeLength = view.getUint16(cursor, true);
          cursor += 2;
        }
      } else {
        holeLength = BLCKSZ - imageLength;
      }
      const consistent = hasHole
        ? holeOffset > 0 && holeLength > 0 && imageLength !== BLCKSZ
        : holeOffset === 0 && holeLength === 0 && (compressed ? imageLength !== BLCKSZ : imageLength === BLCKSZ);
      if (!consistent || imageLength === 0) {
        throw new WalDecodeError(
          record.startLsn,
          `block ${blockId} has an inconsistent image (length ${imageLength}, hole offset ${holeOffset}, hole length ${holeLength}, info ${hex(imageInfo, 2)})`,
        );
      }
      dataTotal += imageLength;
      applyImage = (imageInfo & BKPIMAGE_APPLY) !== 0;
    }
    let spcOid: number;
    let dbOid: number;
    let relNumber: number;
    if ((forkFlags & BKPBLOCK_SAME_REL) !== 0) {
      if (!previous) throw new WalDecodeError(record.startLsn, `block ${blockId} refers to the same relation as a previous block, but there is none`);
      ({ spcOid, dbOid, relNumber } = previous);
    } else {
      need(12, 'relation');
      spcOid = view.getUint32(cursor, true);
      dbOid = view.getUint32(cursor + 4, true);
      relNumber = view.getUint32(cursor + 8, true);
      cursor += 12;
    }
    need(4, 'block number');
    const blockNumber = view.getUint32(cursor, true);
    cursor += 4;
    previous = {
      spcOid,
      dbOid,
      relNumber,
      forkNumber: forkFlags & BKPBLOCK_FORK_MASK,
      blockNumber,
      hasImage,
      applyImage,
      willInit: (forkFlags & BKPBLOCK_WILL_INIT) !== 0,
    };
    record.blocks.push(previous);
  }
  if (end - cursor !== dataTotal) {
    throw new WalDecodeError(record.startLsn, `record body has ${end - cursor} bytes after its headers, the headers account for ${dataTotal}`);
  }
  if (record.rmid === RM_XACT_ID && mainDataLength >= 8) {
    const op = record.info & XLOG_XACT_OPMASK;
    if (op === XLOG_XACT_COMMIT || op === XLOG_XACT_COMMIT_PREPARED) {
      const timestamp = view.getBigInt64(end - mainDataLength, true);
      record.commitTimestamp = timestamp;
      record.commitTime = new Date(Number((timestamp + POSTGRES_EPOCH_UNIX_MICROS) / 1000n));
    }
  }
}

function hex(value: number, digits: number): string {
  return value.toString(16).toUpperCase().padStart(digits, '0');
}

/**
 * Where WAL can be cut after the decoder's last complete record: its end MAXALIGNed, as Postgres reports record
 * ends (EndRecPtr, flush LSNs), but never beyond what was fed. A new writer's WAL continues here.
 */
export function recordBoundary(decoder: WalDecoder): Lsn {
  const aligned = MAXALIGN(decoder.lastRecordEnd);
  return aligned < decoder.feedLsn ? aligned : decoder.feedLsn;
}

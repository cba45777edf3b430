/**
 * The WAL decoder on hand-built PostgreSQL 18 WAL: records laid into pages the way XLogInsert lays them (page headers,
 * continuations with xlp_rem_len, MAXALIGN, segment switches, CRC-32C), then decoded in any chunking.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { WAL_SEGMENT_SIZE, formatLsn, type Lsn } from '../../src/lib/lsn.js';
import {
  MAXALIGN,
  WalDecodeError,
  WalDecoder,
  crc32c,
  isRecordBoundaryAligned,
  type BlockRef,
  type WalDecoderOptions,
  type WalRecord,
} from '../../src/lib/pg/wal-decoder.js';

const PAGE = 8192;
const PAGE_LSN = BigInt(PAGE);
const SYSTEM_ID = 7_000_000_000_000_000_001n;
const POSTGRES_EPOCH_MS = 946_684_800_000;

/** What the builder wrote for one record. */
interface BuiltRecord {
  startLsn: Lsn;
  endLsn: Lsn;
  prevLsn: Lsn;
  xid: number;
  rmid: number;
  info: number;
  totalLength: number;
}

interface AppendOptions {
  rmid?: number;
  info?: number;
  xid?: number;
  body?: Uint8Array;
  /** Write this xl_prev instead of the previous record's start. */
  prevLsn?: Lsn;
  corruptCrc?: boolean;
}

/** Lays records into WAL pages as PostgreSQL's XLogInsert does; unwritten bytes stay zero. */
class WalBuilder {
  private buffer = new Uint8Array(4 * PAGE);
  private position: Lsn;
  private previous: Lsn = 0n;
  private overwriteNextPage = false;
  readonly records: BuiltRecord[] = [];

  constructor(
    readonly startLsn: Lsn,
    readonly segmentSize: bigint = WAL_SEGMENT_SIZE,
  ) {
    this.position = startLsn;
  }

  /** Where the next record goes (before alignment). */
  get insertLsn(): Lsn {
    return this.position;
  }

  /** Bytes of the page holding the insert position left for records. */
  get roomInPage(): number {
    return PAGE - Number(this.position % PAGE_LSN);
  }

  append(options: AppendOptions = {}): BuiltRecord {
    const body = options.body ?? new Uint8Array(0);
    const totalLength = 24 + body.length;
    const header = new Uint8Array(24);
    const view = new DataView(header.buffer);
    const prevLsn = options.prevLsn ?? this.previous;
    view.setUint32(0, totalLength, true);
    view.setUint32(4, options.xid ?? 0, true);
    view.setBigUint64(8, prevLsn, true);
    view.setUint8(16, options.info ?? 0);
    view.setUint8(17, options.rmid ?? 10);
    const crc = crc32c(header.subarray(0, 20), crc32c(body));
    view.setUint32(20, options.corruptCrc ? crc ^ 1 : crc, true);
    this.position = MAXALIGN(this.position);
    if (this.position % PAGE_LSN === 0n) this.writePageHeader(0);
    const startLsn = this.position;
    const record = new Uint8Array(totalLength);
    record.set(header);
    record.set(body, 24);
    let written = 0;
    while (written < totalLength) {
      if (this.position % PAGE_LSN === 0n) this.writePageHeader(totalLength - written);
      const take = Math.min(totalLength - written, this.roomInPage);
      this.put(record.subarray(written, written + take));
      written += take;
    }
    const built: BuiltRecord = { startLsn, endLsn: this.position, prevLsn, xid: options.xid ?? 0, rmid: options.rmid ?? 10, info: options.info ?? 0, totalLength };
    this.records.push(built);
    this.previous = startLsn;
    return built;
  }

  /** Appends filler records, each ending at a page end or at `target`, until the next record would start there. */
  fillTo(target: Lsn): void {
    while (MAXALIGN(this.position) < target) {
      let start = MAXALIGN(this.position);
      if (start % PAGE_LSN === 0n) start += start % this.segmentSize === 0n ? 40n : 24n;
      const pageEnd = (start / PAGE_LSN + 1n) * PAGE_LSN;
      const bodyLength = Number((target < pageEnd ? target : pageEnd) - start) - 24;
      if (bodyLength < 0) throw new Error(`no record fits between ${formatLsn(start)} and ${formatLsn(target)}`);
      const mainLength = bodyLength === 0 ? 0 : bodyLength > 257 ? bodyLength - 5 : bodyLength - 2;
      this.append({ body: encodeBody({ mainData: new Uint8Array(mainLength) }) });
    }
  }

  /** XLOG_SWITCH, then the rest of the segment as pages with headers and nothing else. */
  switchSegment(): BuiltRecord {
    const record = this.append({ rmid: 0, info: 0x40 });
    const next = ((this.position + this.segmentSize - 1n) / this.segmentSize) * this.segmentSize;
    this.position = MAXALIGN(this.position);
    while (this.position < next) {
      if (this.position % PAGE_LSN === 0n) this.writePageHeader(0);
      this.position = (this.position / PAGE_LSN + 1n) * PAGE_LSN;
    }
    return record;
  }

  /** Simulates a crash that cut the last record at page `pageLsn`: later WAL overwrites it from there. */
  overwriteFrom(pageLsn: Lsn): void {
    const cut = this.records.pop();
    if (!cut) throw new Error('nothing to overwrite');
    this.previous = this.records.at(-1)?.startLsn ?? 0n;
    this.buffer.fill(0, Number(pageLsn - this.startLsn));
    this.position = pageLsn;
    this.overwriteNextPage = true;
  }

  /** All bytes from the start through the end of the page holding the insert position (zeros after it). */
  bytes(extraZeroPages = 0): Uint8Array {
    const end = (this.position + PAGE_LSN - 1n) / PAGE_LSN * PAGE_LSN + BigInt(extraZeroPages * PAGE);
    this.ensure(end);
    return this.buffer.slice(0, Number(end - this.startLsn));
  }

  private writePageHeader(remaining: number): void {
    const long = this.position % this.segmentSize === 0n;
    const header = new Uint8Array(long ? 40 : 24);
    const view = new DataView(header.buffer);
    let info = long ? 0x0002 : 0;
    if (remaining > 0) info |= 0x0001;
    if (this.overwriteNextPage) info |= 0x0008;
    this.overwriteNextPage = false;
    view.setUint16(0, 0xd118, true);
    view.setUint16(2, info, true);
    view.setUint32(4, 1, true);
    view.setBigUint64(8, this.position, true);
    view.setUint32(16, remaining, true);
    if (long) {
      view.setBigUint64(24, SYSTEM_ID, true);
      view.setUint32(32, Number(this.segmentSize), true);
      view.setUint32(36, PAGE, true);
    }
    this.put(header);
  }

  private put(data: Uint8Array): void {
    this.ensure(this.position + BigInt(data.length));
    this.buffer.set(data, Number(this.position - this.startLsn));
    this.position += BigInt(data.length);
  }

  private ensure(end: Lsn): void {
    const needed = Number(end - this.startLsn);
    if (needed <= this.buffer.length) return;
    const grown = new Uint8Array(Math.max(needed, this.buffer.length * 2));
    grown.set(this.buffer);
    this.buffer = grown;
  }
}

/** A block reference of a test record. */
interface TestBlock {
  id: number;
  rel: [number, number, number];
  fork?: number;
  block: number;
  dataLength?: number;
  image?: { holeOffset?: number; holeLength?: number; apply?: boolean; compressedLength?: number };
  willInit?: boolean;
}

/** A record body as XLogRecordAssemble lays it out: block headers, origin, top-level xid, main data header, payloads. */
function encodeBody(options: { blocks?: TestBlock[]; mainData?: Uint8Array; origin?: number; toplevelXid?: number }): Uint8Array {
  const headers: number[] = [];
  const payload: number[] = [];
  const u16 = (value: number) => headers.push(value & 0xff, value >>> 8);
  const u32 = (value: number) => headers.push(value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24);
  const filler = (length: number, seed: number) => {
    for (let i = 0; i < length; i++) payload.push((seed + i * 31) & 0xff);
  };
  let previousRel: string | null = null;
  for (const block of options.blocks ?? []) {
    const dataLength = block.dataLength ?? 0;
    const sameRel = previousRel === block.rel.join('/');
    let flags = block.fork ?? 0;
    if (block.image) flags |= 0x10;
    if (dataLength > 0) flags |= 0x20;
    if (block.willInit) flags |= 0x40;
    if (sameRel) flags |= 0x80;
    headers.push(block.id, flags);
    u16(dataLength);
    let imageLength = 0;
    if (block.image) {
      const holeLength = block.image.holeLength ?? 0;
      const compressed = block.image.compressedLength !== undefined;
      imageLength = compressed ? block.image.compressedLength! : PAGE - holeLength;
      u16(imageLength);
      u16(block.image.holeOffset ?? 0);
      headers.push((holeLength > 0 ? 0x01 : 0) | (block.image.apply ? 0x02 : 0) | (compressed ? 0x04 : 0));
      if (compressed && holeLength > 0) u16(holeLength);
    }
    if (!sameRel) block.rel.forEach(u32);
    u32(block.block);
    previousRel = block.rel.join('/');
    filler(imageLength, block.id);
    filler(dataLength, block.id + 100);
  }
  if (options.origin !== undefined) {
    headers.push(253);
    u16(options.origin);
  }
  if (options.toplevelXid !== undefined) {
    headers.push(252);
    u32(options.toplevelXid);
  }
  const mainData = options.mainData ?? new Uint8Array(0);
  if (mainData.length > 255) {
    headers.push(254);
    u32(mainData.length);
  } else if (mainData.length > 0) {
    headers.push(255, mainData.length);
  }
  return Uint8Array.from([...headers, ...payload, ...mainData]);
}

function expectedBlock(block: TestBlock): BlockRef {
  return {
    spcOid: block.rel[0],
    dbOid: block.rel[1],
    relNumber: block.rel[2],
    forkNumber: block.fork ?? 0,
    blockNumber: block.block,
    hasImage: block.image !== undefined,
    applyImage: block.image?.apply ?? false,
    willInit: block.willInit ?? false,
  };
}

/** Main data of a commit record (xl_xact_commit: xact_time, then xinfo). */
function commitMainData(time: Date): Uint8Array {
  const data = new Uint8Array(12);
  new DataView(data.buffer).setBigInt64(0, BigInt(time.getTime() - POSTGRES_EPOCH_MS) * 1000n + 123n, true);
  return data;
}

/** A heap-insert-like body. */
function heapBody(block: number, dataLength = 60): Uint8Array {
  return encodeBody({ blocks: [{ id: 0, rel: [1663, 5, 16384], block, dataLength }], mainData: new Uint8Array(3) });
}

function boundaries(records: readonly WalRecord[]): BuiltRecord[] {
  return records.map(({ startLsn, endLsn, prevLsn, xid, rmid, info, totalLength }) => ({ startLsn, endLsn, prevLsn, xid, rmid, info, totalLength }));
}

function decodeAll(startLsn: Lsn, bytes: Uint8Array, options?: WalDecoderOptions, chunk = bytes.length): { decoder: WalDecoder; records: WalRecord[] } {
  const decoder = new WalDecoder(startLsn, options);
  const records: WalRecord[] = [];
  for (let at = 0; at < bytes.length; at += chunk) records.push(...decoder.feed(bytes.subarray(at, at + chunk)));
  return { decoder, records };
}

function decodeError(action: () => unknown): WalDecodeError {
  try {
    action();
  } catch (error) {
    expect(error, String(error)).to.be.instanceOf(WalDecodeError);
    return error as WalDecodeError;
  }
  expect.fail('expected a WalDecodeError');
}

const SEGMENT_1: Lsn = WAL_SEGMENT_SIZE;

describe('WalDecoder', () => {
  describe('crc32c', () => {
    it('computes CRC-32C (Castagnoli) and continues from an earlier result', () => {
      const text = new TextEncoder().encode('123456789');
      expect(crc32c(text)).to.equal(0xe3069283);
      expect(crc32c(text.subarray(4), crc32c(text.subarray(0, 4)))).to.equal(0xe3069283);
      expect(crc32c(new Uint8Array(0))).to.equal(0);
      expect(crc32c(new Uint8Array(32))).to.equal(0x8a9136aa);
    });
  });

  it('aligns and recognises record boundaries', () => {
    expect(MAXALIGN(17)).to.equal(24);
    expect(MAXALIGN(16n)).to.equal(16n);
    expect(isRecordBoundaryAligned(SEGMENT_1 + 40n)).to.equal(true);
    expect(isRecordBoundaryAligned(SEGMENT_1 + 24n)).to.equal(false);
    expect(isRecordBoundaryAligned(SEGMENT_1 + PAGE_LSN + 24n)).to.equal(true);
    expect(isRecordBoundaryAligned(SEGMENT_1 + PAGE_LSN + 28n)).to.equal(false);
    expect(isRecordBoundaryAligned(SEGMENT_1 + PAGE_LSN)).to.equal(false);
  });

  it('decodes records inside one page: boundaries, prev chain, blocks and commit time', () => {
    const builder = new WalBuilder(SEGMENT_1);
    const blocks: TestBlock[] = [
      { id: 0, rel: [1663, 5, 16384], block: 7, dataLength: 40 },
      { id: 1, rel: [1663, 5, 16384], fork: 1, block: 2, willInit: true },
      { id: 3, rel: [1664, 0, 1262], block: 0, image: { holeOffset: 100, holeLength: 7000, apply: true } },
    ];
    builder.append({ body: encodeBody({ blocks, mainData: new Uint8Array(13) }), xid: 740 });
    const commitTime = new Date('2025-03-04T05:06:07.891Z');
    builder.append({ rmid: 1, info: 0x00, xid: 740, body: encodeBody({ mainData: commitMainData(commitTime) }) });
    builder.append({ rmid: 0, info: 0x10, body: encodeBody({ mainData: new Uint8Array(112) }) });

    const { decoder, records } = decodeAll(SEGMENT_1, builder.bytes());
    expect(boundaries(records)).to.deep.equal(builder.records);
    expect(records[0].startLsn).to.equal(SEGMENT_1 + 40n);
    expect(records[0].blocks).to.deep.equal(blocks.map(expectedBlock));
    expect(records[1].commitTime?.toISOString()).to.equal(commitTime.toISOString());
    expect(records[1].commitTimestamp).to.equal(BigInt(commitTime.getTime() - POSTGRES_EPOCH_MS) * 1000n + 123n);
    expect(records[2].isCheckpoint).to.equal(true);
    expect(records.map((record) => record.isSwitch)).to.deep.equal([false, false, false]);
    expect(decoder.lastRecordEnd).to.equal(builder.records[2].endLsn);
    expect(decoder.lastRecordStart).to.equal(builder.records[2].startLsn);
    expect(decoder.systemId).to.equal(SYSTEM_ID);
    expect(decoder.atEndOfWal, 'the zeros after the last record').to.equal(true);
  });

  it('decodes every kind of block header: holes, compressed images, same relation, origin, top-level xid, long main data', () => {
    const blocks: TestBlock[] = [
      { id: 0, rel: [1663, 5, 16384], block: 1, image: { compressedLength: 900, holeOffset: 200, holeLength: 3000, apply: true }, dataLength: 10 },
      { id: 1, rel: [1663, 5, 16384], block: 2, image: { compressedLength: 3000 } },
      { id: 2, rel: [1663, 5, 16385], fork: 2, block: 0xfffffffe, image: {} },
      { id: 32, rel: [1663, 5, 16385], block: 9, dataLength: 300 },
    ];
    const builder = new WalBuilder(SEGMENT_1);
    builder.append({ body: encodeBody({ blocks, origin: 3, toplevelXid: 99, mainData: new Uint8Array(1000) }) });
    const { records } = decodeAll(SEGMENT_1, builder.bytes());
    expect(records[0].blocks).to.deep.equal(blocks.map(expectedBlock));
  });

  it('decodes a record spanning three pages, in one chunk and byte by byte', () => {
    const builder = new WalBuilder(SEGMENT_1);
    builder.append({ body: heapBody(1) });
    const big = builder.append({ body: encodeBody({ blocks: [{ id: 0, rel: [1663, 5, 16384], block: 3, image: {} }], mainData: new Uint8Array(9000) }) });
    builder.append({ body: heapBody(4) });
    expect(big.startLsn / PAGE_LSN).to.equal(SEGMENT_1 / PAGE_LSN);
    expect((big.endLsn - 1n) / PAGE_LSN - big.startLsn / PAGE_LSN).to.equal(2n);
    const bytes = builder.bytes();
    for (const chunk of [bytes.length, 1, 7, 24, 8192]) {
      const { records, decoder } = decodeAll(SEGMENT_1, bytes, {}, chunk);
      expect(boundaries(records), `chunks of ${chunk}`).to.deep.equal(builder.records);
      expect(records[1].blocks[0].hasImage).to.equal(true);
      expect(records[1].endLsn, 'the end counts the two page headers inside the record').to.equal(big.startLsn + BigInt(big.totalLength) + 48n);
      expect(decoder.lastRecordEnd).to.equal(builder.records[2].endLsn);
    }
  });

  it('decodes a record whose header is split across a page boundary', () => {
    const builder = new WalBuilder(SEGMENT_1);
    builder.fillTo(SEGMENT_1 + 2n * PAGE_LSN - 8n);
    const split = builder.append({ body: heapBody(5) });
    builder.append({ body: heapBody(6) });
    expect(split.startLsn).to.equal(SEGMENT_1 + 2n * PAGE_LSN - 8n);
    for (const chunk of [1 << 20, 1, 3, 16]) {
      const { records } = decodeAll(SEGMENT_1, builder.bytes(), {}, chunk);
      expect(boundaries(records), `chunks of ${chunk}`).to.deep.equal(builder.records);
      expect(records.at(-2)?.blocks[0].blockNumber).to.equal(5);
    }
  });

  it('continues after a record that ends exactly at a page end', () => {
    const builder = new WalBuilder(SEGMENT_1);
    builder.fillTo(SEGMENT_1 + PAGE_LSN);
    const last = builder.records.at(-1)!;
    expect(last.endLsn).to.equal(SEGMENT_1 + PAGE_LSN);
    const next = builder.append({ body: heapBody(8) });
    expect(next.startLsn).to.equal(SEGMENT_1 + PAGE_LSN + 24n);
    const decoder = new WalDecoder(SEGMENT_1);
    const bytes = builder.bytes();
    const first = decoder.feed(bytes.subarray(0, PAGE));
    expect(decoder.lastRecordEnd, 'complete at the page end').to.equal(SEGMENT_1 + PAGE_LSN);
    expect(boundaries([...first, ...decoder.feed(bytes.subarray(PAGE))])).to.deep.equal(builder.records);
  });

  it('skips the padding after a segment switch: the next record follows the next segment long header', () => {
    const start = 2n * WAL_SEGMENT_SIZE - 2n * PAGE_LSN;
    const builder = new WalBuilder(start);
    builder.append({ body: heapBody(1) });
    builder.append({ body: heapBody(2, 9000) });
    const switchRecord = builder.switchSegment();
    const after = builder.append({ body: heapBody(3) });
    expect(after.startLsn).to.equal(2n * WAL_SEGMENT_SIZE + 40n);
    expect(after.prevLsn).to.equal(switchRecord.startLsn);
    for (const chunk of [1 << 20, 5, 8192]) {
      const { records } = decodeAll(start, builder.bytes(), {}, chunk);
      expect(boundaries(records), `chunks of ${chunk}`).to.deep.equal(builder.records);
      expect(records.map((record) => record.isSwitch)).to.deep.equal([false, false, true, false]);
    }
  });

  it('takes zeros after the last record as the end of WAL, also at a page boundary, and keeps counting fed bytes', () => {
    const builder = new WalBuilder(SEGMENT_1);
    builder.append({ body: heapBody(1) });
    const bytes = builder.bytes(3);
    const { decoder, records } = decodeAll(SEGMENT_1, bytes, {}, 1000);
    expect(records).to.have.length(1);
    expect(decoder.atEndOfWal).to.equal(true);
    expect(decoder.lastRecordEnd).to.equal(builder.records[0].endLsn);
    expect(decoder.feedLsn).to.equal(SEGMENT_1 + BigInt(bytes.length));
    expect(decoder.feed(new Uint8Array(10))).to.deep.equal([]);

    const atPageEnd = new WalBuilder(SEGMENT_1);
    atPageEnd.fillTo(SEGMENT_1 + PAGE_LSN);
    const result = decodeAll(SEGMENT_1, atPageEnd.bytes(2));
    expect(boundaries(result.records)).to.deep.equal(atPageEnd.records);
    expect(result.decoder.atEndOfWal).to.equal(true);
  });

  it('starting at a page boundary skips the tail of a record continued onto that page', () => {
    const builder = new WalBuilder(SEGMENT_1);
    builder.append({ body: heapBody(1) });
    builder.append({ body: encodeBody({ mainData: new Uint8Array(20000) }) });
    const firstWhole = builder.append({ body: heapBody(2) });
    builder.append({ body: heapBody(3) });
    const pageLsn = SEGMENT_1 + PAGE_LSN;
    const bytes = builder.bytes().subarray(PAGE);
    for (const chunk of [bytes.length, 1, 13]) {
      const { records } = decodeAll(pageLsn, bytes, {}, chunk);
      expect(boundaries(records), `chunks of ${chunk}`).to.deep.equal(builder.records.slice(2));
      expect(records[0].startLsn).to.equal(firstWhole.startLsn);
    }
  });

  it('starts at a record start and checks its xl_prev against prevLsn', () => {
    const builder = new WalBuilder(SEGMENT_1);
    builder.append({ body: heapBody(1) });
    const second = builder.append({ body: heapBody(2) });
    builder.append({ body: heapBody(3) });
    const bytes = builder.bytes();
    const tail = bytes.subarray(Number(second.startLsn - SEGMENT_1));
    const { records } = decodeAll(second.startLsn, tail, { prevLsn: builder.records[0].startLsn });
    expect(boundaries(records)).to.deep.equal(builder.records.slice(1));
    // Resuming at the (unaligned) end of a record works too.
    const resumed = decodeAll(builder.records[0].endLsn, bytes.subarray(Number(builder.records[0].endLsn - SEGMENT_1)));
    expect(boundaries(resumed.records)).to.deep.equal(builder.records.slice(1));
    const wrong = decodeError(() => decodeAll(second.startLsn, tail, { prevLsn: second.startLsn - 8n }));
    expect(wrong.lsn).to.equal(second.startLsn);
    expect(() => new WalDecoder(SEGMENT_1 + 16n)).to.throw(RangeError, /inside a page header/);
  });

  it('forgets a record cut by a crash when the next page is marked as overwriting it', () => {
    const builder = new WalBuilder(SEGMENT_1);
    const kept = builder.append({ body: heapBody(1) });
    builder.append({ body: encodeBody({ mainData: new Uint8Array(12000) }) });
    builder.overwriteFrom(SEGMENT_1 + PAGE_LSN);
    const overwrite = builder.append({ rmid: 0, info: 0xd0, body: encodeBody({ mainData: new Uint8Array(16) }) });
    builder.append({ body: heapBody(2) });
    expect(overwrite.prevLsn).to.equal(kept.startLsn);
    expect(overwrite.startLsn).to.equal(SEGMENT_1 + PAGE_LSN + 24n);
    for (const chunk of [1 << 20, 1]) {
      const { records } = decodeAll(SEGMENT_1, builder.bytes(), {}, chunk);
      expect(boundaries(records)).to.deep.equal(builder.records);
    }
  });

  describe('corrupt WAL', () => {
    it('a CRC mismatch names the record; the decoder stays failed', () => {
      const builder = new WalBuilder(SEGMENT_1);
      builder.append({ body: heapBody(1) });
      const bad = builder.append({ body: heapBody(2), corruptCrc: true });
      const decoder = new WalDecoder(SEGMENT_1);
      const error = decodeError(() => decoder.feed(builder.bytes()));
      expect(error.lsn).to.equal(bad.startLsn);
      expect(error.message).to.include(formatLsn(bad.startLsn)).and.match(/CRC/);
      expect(decoder.lastRecordEnd, 'the good record before it').to.equal(builder.records[0].endLsn);
      expect(decodeError(() => decoder.feed(new Uint8Array(1)))).to.equal(error);
      // Without CRC checks the same bytes decode.
      expect(decodeAll(SEGMENT_1, builder.bytes(), { verifyCrc: false }).records).to.have.length(2);
    });

    it('a bad page magic names the page', () => {
      const builder = new WalBuilder(SEGMENT_1);
      builder.append({ body: encodeBody({ mainData: new Uint8Array(10000) }) });
      const bytes = builder.bytes();
      bytes[PAGE] = 0x16; // PostgreSQL 17's magic, 0xD116
      const error = decodeError(() => decodeAll(SEGMENT_1, bytes, {}, 100));
      expect(error.lsn).to.equal(SEGMENT_1 + PAGE_LSN);
      expect(error.message).to.include(formatLsn(SEGMENT_1 + PAGE_LSN)).and.include('D116');
    });

    it('a page from elsewhere (wrong xlp_pageaddr) names the page', () => {
      const builder = new WalBuilder(SEGMENT_1);
      builder.append({ body: encodeBody({ mainData: new Uint8Array(10000) }) });
      const bytes = builder.bytes();
      new DataView(bytes.buffer).setBigUint64(PAGE + 8, 5n * PAGE_LSN, true);
      const error = decodeError(() => decodeAll(SEGMENT_1, bytes));
      expect(error.message).to.include(formatLsn(SEGMENT_1 + PAGE_LSN)).and.include(formatLsn(5n * PAGE_LSN));
    });

    it('an xl_prev that is not the previous record names the record', () => {
      const builder = new WalBuilder(SEGMENT_1);
      builder.append({ body: heapBody(1) });
      const bad = builder.append({ body: heapBody(2), prevLsn: SEGMENT_1 + 8n });
      const error = decodeError(() => decodeAll(SEGMENT_1, builder.bytes()));
      expect(error.lsn).to.equal(bad.startLsn);
      expect(error.message).to.include(formatLsn(bad.startLsn)).and.include(formatLsn(SEGMENT_1 + 8n)).and.include('xl_prev');
    });

    it('a record length below the header size, a bad block id and a wrong continuation length are refused', () => {
      const builder = new WalBuilder(SEGMENT_1);
      const record = builder.append({ body: heapBody(1) });
      const bytes = builder.bytes();
      new DataView(bytes.buffer).setUint32(Number(record.startLsn - SEGMENT_1), 20, true);
      expect(decodeError(() => decodeAll(SEGMENT_1, bytes, { verifyCrc: false })).message).to.match(/record length 20/);

      const badBlock = new WalBuilder(SEGMENT_1);
      badBlock.append({ body: Uint8Array.from([40, 0, 0, 0]) });
      expect(decodeError(() => decodeAll(SEGMENT_1, badBlock.bytes())).message).to.match(/invalid block id 40/);

      const spanning = new WalBuilder(SEGMENT_1);
      spanning.append({ body: encodeBody({ mainData: new Uint8Array(10000) }) });
      const spanBytes = spanning.bytes();
      new DataView(spanBytes.buffer).setUint32(PAGE + 16, 5, true);
      expect(decodeError(() => decodeAll(SEGMENT_1, spanBytes)).message).to.match(/5 bytes of a record continue here/);
    });

    it('bytes fed at another position are refused without failing the decoder', () => {
      const builder = new WalBuilder(SEGMENT_1);
      builder.append({ body: heapBody(1) });
      const bytes = builder.bytes();
      const decoder = new WalDecoder(SEGMENT_1);
      decoder.feed(bytes.subarray(0, 100), SEGMENT_1);
      const error = decodeError(() => decoder.feed(bytes.subarray(100), SEGMENT_1 + 99n));
      expect(error.message).to.include(formatLsn(SEGMENT_1 + 100n));
      expect(decoder.feed(bytes.subarray(100), SEGMENT_1 + 100n)).to.have.length(1);
    });
  });

  it('boundaries only (no blocks, no CRC) finds the same records', () => {
    const builder = new WalBuilder(SEGMENT_1);
    for (let block = 0; block < 50; block++) builder.append({ body: heapBody(block, (block * 977) % 9000) });
    const full = decodeAll(SEGMENT_1, builder.bytes(), {}, 3000);
    const cheap = decodeAll(SEGMENT_1, builder.bytes(), { decodeBlocks: false, verifyCrc: false }, 3000);
    expect(boundaries(cheap.records)).to.deep.equal(boundaries(full.records));
    expect(cheap.records.every((record) => record.blocks.length === 0)).to.equal(true);
    expect(full.records.every((record) => record.blocks.length === 1)).to.equal(true);
  });

  it('any chunking of the same bytes yields the same records (property)', () => {
    const recordArbitrary = fc.record({
      kind: fc.constantFrom('heap', 'big', 'commit', 'switch', 'empty'),
      size: fc.integer({ min: 0, max: 20000 }),
      block: fc.nat(),
    });
    fc.assert(
      fc.property(
        fc.array(recordArbitrary, { minLength: 1, maxLength: 25 }),
        fc.array(fc.integer({ min: 1, max: 20000 }), { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 0, max: 2 }),
        (specs, chunkSizes, startPage) => {
          // Near the end of a 1 MiB segment, so that segment borders (long headers) are crossed too.
          const segmentSize = 1n << 20n;
          const start = 2n * segmentSize - BigInt(startPage + 1) * PAGE_LSN;
          const builder = new WalBuilder(start, segmentSize);
          for (const spec of specs) {
            if (spec.kind === 'switch') builder.switchSegment();
            else if (spec.kind === 'commit') builder.append({ rmid: 1, body: encodeBody({ mainData: commitMainData(new Date(1_700_000_000_000 + spec.block)) }) });
            else if (spec.kind === 'empty') builder.append({ rmid: 2, info: 0x10 });
            else builder.append({ body: heapBody(spec.block, spec.kind === 'big' ? spec.size : spec.size % 200) });
          }
          const bytes = builder.bytes(1);
          const options = { segmentSize };
          const whole = decodeAll(start, bytes, options);
          expect(boundaries(whole.records)).to.deep.equal(builder.records);
          const decoder = new WalDecoder(start, options);
          const chunked: WalRecord[] = [];
          let at = 0;
          for (let index = 0; at < bytes.length; index++) {
            const size = chunkSizes[index % chunkSizes.length];
            chunked.push(...decoder.feed(bytes.subarray(at, at + size), decoder.feedLsn));
            at += size;
          }
          expect(chunked).to.deep.equal(whole.records);
          expect(decoder.lastRecordEnd).to.equal(whole.decoder.lastRecordEnd);
          const cheap = decodeAll(start, bytes, { ...options, decodeBlocks: false, verifyCrc: false }, chunkSizes[0]);
          expect(boundaries(cheap.records)).to.deep.equal(builder.records);
        },
      ),
      { numRuns: 150 },
    );
  });
});

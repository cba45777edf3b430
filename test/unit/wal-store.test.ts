/**
 * The safekeeper's on-disk WAL: appends, reads, group fsync, reopening, torn-tail repair, truncation and removal of
 * old segments. Each test works in its own temporary directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { FsyncPlacement, WalStore, type Repair } from '../../src/safekeeper/wal-store.js';
import { WAL_SEGMENT_SIZE, formatLsn, type Lsn } from '../../src/lib/lsn.js';
import { TempDir, waitFor } from '../harness/process.js';

const START = 0x1000000n;
/** The size of a chunk's frame header in a segment file (magic, length, begin LSN, crc32, reserved). */
const HEADER_SIZE = 24;

describe('WalStore', () => {
  let directory: TempDir;
  let walDir: string;
  const open: WalStore[] = [];

  async function openStore(repairs?: Repair[]): Promise<WalStore> {
    const store = await WalStore.open(walDir, repairs);
    open.push(store);
    return store;
  }

  /** The segment files, oldest first. */
  function segmentFiles(): string[] {
    return fs
      .readdirSync(walDir)
      .filter((name) => name.endsWith('.wal'))
      .sort()
      .map((name) => path.join(walDir, name));
  }

  /** Appends `chunks` as separate writes from the store's end and waits for the fsync; returns all bytes written. */
  async function appendChunks(store: WalStore, chunks: Buffer[]): Promise<Buffer> {
    for (const chunk of chunks) store.append(store.endLsn, chunk);
    await store.waitFlushed();
    return Buffer.concat(chunks);
  }

  beforeEach(() => {
    directory = TempDir.create('wal-store');
    walDir = directory.join('wal');
  });

  afterEach(() => {
    for (const store of open.splice(0)) store.close();
    directory.remove();
  });

  describe('a new store', () => {
    it('is empty and starts where it is told', async () => {
      const store = await openStore();
      expect(store.isEmpty).to.equal(true);
      expect(store.startLsn).to.equal(0n);
      store.resetTo(START);
      expect([store.startLsn, store.endLsn, store.flushedLsn]).to.deep.equal([START, START, START]);
      expect(store.read(START, START + 100n, 1000)).to.have.length(0);
    });

    it('announces the flush LSN only after the fsync', async () => {
      const store = await openStore();
      store.resetTo(START);
      store.append(START, Buffer.from('hello'));
      expect(store.endLsn).to.equal(START + 5n);
      expect(store.flushedLsn).to.equal(START);
      await store.waitFlushed();
      expect(store.flushedLsn).to.equal(START + 5n);
      expect(store.isEmpty).to.equal(false);
    });

    it('refuses a non-contiguous append, naming both LSNs', async () => {
      const store = await openStore();
      store.resetTo(START);
      store.append(START, Buffer.from('abc'));
      expect(() => store.append(START + 10n, Buffer.from('x'))).to.throw(
        `append at ${formatLsn(START + 10n)} is not contiguous with the end of WAL ${formatLsn(START + 3n)}`,
      );
      expect(() => store.append(START, Buffer.from('x'))).to.throw('not contiguous');
    });

    it('refuses resetTo once it holds WAL', async () => {
      const store = await openStore();
      store.resetTo(START);
      store.append(START, Buffer.from('abc'));
      expect(() => store.resetTo(START + 100n)).to.throw('empty');
    });
  });

  describe('reads', () => {
    it('return what was appended, across chunk borders, within untilLsn and maxBytes', async () => {
      const store = await openStore();
      store.resetTo(START);
      const all = await appendChunks(store, [randomBytes(100), randomBytes(1), randomBytes(300), randomBytes(57)]);
      const end = START + BigInt(all.length);
      expect(store.read(START, end, 1 << 20).equals(all)).to.equal(true);
      expect(store.read(START + 50n, START + 150n, 1 << 20).equals(all.subarray(50, 150))).to.equal(true);
      expect(store.read(START + 99n, end, 3).equals(all.subarray(99, 102))).to.equal(true);
      expect(store.read(START + 401n, end, 1 << 20).equals(all.subarray(401))).to.equal(true);
      // Asking beyond the end returns what there is; at or past the end, nothing.
      expect(store.read(START + 400n, end + 1000n, 1 << 20).equals(all.subarray(400))).to.equal(true);
      expect(store.read(end, end + 1000n, 1 << 20)).to.have.length(0);
    });

    it('refuse an LSN below the oldest held', async () => {
      const store = await openStore();
      store.resetTo(START);
      await appendChunks(store, [randomBytes(10)]);
      expect(() => store.read(START - 1n, START + 5n, 100)).to.throw(RangeError, 'was removed');
    });

    it('serve many concurrent flush waits with shared fsyncs', async () => {
      const store = await openStore();
      store.resetTo(START);
      const chunks: Buffer[] = [];
      const waits: Array<Promise<void>> = [];
      for (let index = 0; index < 200; index += 1) {
        const chunk = randomBytes(1 + (index % 50));
        chunks.push(chunk);
        store.append(store.endLsn, chunk);
        waits.push(store.waitFlushed());
      }
      await Promise.all(waits);
      const all = Buffer.concat(chunks);
      expect(store.flushedLsn).to.equal(START + BigInt(all.length));
      expect(store.read(START, store.endLsn, 1 << 20).equals(all)).to.equal(true);
    });
  });

  describe('segments', () => {
    it('split an append at a segment border into two files and read it back whole', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE - 100n;
      store.resetTo(start);
      const data = await appendChunks(store, [randomBytes(300)]);
      const files = segmentFiles();
      expect(files.map((file) => path.basename(file))).to.deep.equal(['0000000000000000.wal', '0000000000000001.wal']);
      expect(fs.statSync(files[0]).size).to.equal(HEADER_SIZE + 100);
      expect(fs.statSync(files[1]).size).to.equal(HEADER_SIZE + 200);
      expect(store.read(start, start + 300n, 1 << 20).equals(data)).to.equal(true);
      expect(store.read(WAL_SEGMENT_SIZE - 1n, WAL_SEGMENT_SIZE + 1n, 10).equals(data.subarray(99, 101))).to.equal(true);
    });
  });

  describe('reopening', () => {
    it('finds the same start and end and continues appending', async () => {
      const first = await openStore();
      first.resetTo(START);
      const before = await appendChunks(first, [randomBytes(64), randomBytes(64)]);
      first.close();
      const repairs: Repair[] = [];
      const second = await openStore(repairs);
      expect(repairs).to.deep.equal([]);
      expect([second.startLsn, second.endLsn, second.flushedLsn]).to.deep.equal([START, START + 128n, START + 128n]);
      const after = await appendChunks(second, [randomBytes(10)]);
      expect(second.read(START, second.endLsn, 1 << 20).equals(Buffer.concat([before, after]))).to.equal(true);
      second.close();
      const third = await openStore();
      expect(third.endLsn).to.equal(START + 138n);
    });

    it('continues across segment files', async () => {
      const first = await openStore();
      const start = WAL_SEGMENT_SIZE - 10n;
      first.resetTo(start);
      const data = await appendChunks(first, [randomBytes(25)]);
      first.close();
      const second = await openStore();
      expect([second.startLsn, second.endLsn]).to.deep.equal([start, start + 25n]);
      expect(second.read(start, second.endLsn, 1 << 20).equals(data)).to.equal(true);
    });
  });

  describe('a torn last chunk', () => {
    /** Writes three chunks and closes the store; returns the bytes and where the third chunk begins. */
    async function threeChunks(): Promise<{ data: Buffer; thirdBegins: Lsn; end: Lsn }> {
      const store = await openStore();
      store.resetTo(START);
      const data = await appendChunks(store, [randomBytes(40), randomBytes(40), randomBytes(40)]);
      store.close();
      return { data, thirdBegins: START + 80n, end: START + 120n };
    }

    it('missing its last bytes is cut, reported, and never read', async () => {
      const { data, thirdBegins, end } = await threeChunks();
      const [file] = segmentFiles();
      const size = fs.statSync(file).size;
      fs.truncateSync(file, size - 3);
      const repairs: Repair[] = [];
      const store = await openStore(repairs);
      expect(repairs).to.have.length(1);
      expect(repairs[0].file).to.equal(file);
      expect(repairs[0].reason).to.include('of which only');
      expect(repairs[0].cutAtOffset).to.equal(2 * (HEADER_SIZE + 40));
      expect(fs.statSync(file).size).to.equal(2 * (HEADER_SIZE + 40));
      expect([store.endLsn, store.flushedLsn]).to.deep.equal([thirdBegins, thirdBegins]);
      const read = store.read(START, end, 1 << 20);
      expect(read.equals(data.subarray(0, 80))).to.equal(true);
      expect(store.read(thirdBegins, end, 1 << 20)).to.have.length(0);
      // The log continues from the cut.
      expect(() => store.append(end, Buffer.from('x'))).to.throw('not contiguous');
      const more = await appendChunks(store, [Buffer.from('continued')]);
      expect(store.read(START, store.endLsn, 1 << 20).equals(Buffer.concat([data.subarray(0, 80), more]))).to.equal(true);
    });

    it('with a corrupt payload is cut by its checksum', async () => {
      const { data, thirdBegins } = await threeChunks();
      const [file] = segmentFiles();
      const fd = fs.openSync(file, 'r+');
      const offset = 2 * (HEADER_SIZE + 40) + HEADER_SIZE + 7;
      fs.writeSync(fd, Buffer.from([data[87] ^ 0xff]), 0, 1, offset);
      fs.closeSync(fd);
      const repairs: Repair[] = [];
      const store = await openStore(repairs);
      expect(repairs.map((repair) => repair.reason)).to.deep.equal([`a chunk at ${formatLsn(thirdBegins)} whose checksum does not match`]);
      expect(store.endLsn).to.equal(thirdBegins);
      expect(store.read(START, thirdBegins + 40n, 1 << 20).equals(data.subarray(0, 80))).to.equal(true);
    });

    it('with only part of its header is cut', async () => {
      const { end } = await threeChunks();
      const [file] = segmentFiles();
      fs.appendFileSync(file, Buffer.from([0x57, 0x47, 0x50]));
      const repairs: Repair[] = [];
      const store = await openStore(repairs);
      expect(repairs.map((repair) => repair.reason)).to.deep.equal(['a partial chunk header of 3 bytes']);
      expect(store.endLsn).to.equal(end);
    });

    it('that was alone in the newest file removes the file; the log ends at the previous one', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE - 50n;
      store.resetTo(start);
      const data = await appendChunks(store, [randomBytes(50), randomBytes(30)]);
      store.close();
      const files = segmentFiles();
      expect(files).to.have.length(2);
      fs.truncateSync(files[1], HEADER_SIZE + 10);
      const repairs: Repair[] = [];
      const reopened = await openStore(repairs);
      expect(repairs).to.have.length(1);
      expect(segmentFiles()).to.deep.equal([files[0]]);
      expect(reopened.endLsn).to.equal(WAL_SEGMENT_SIZE);
      expect(reopened.read(start, start + 80n, 1 << 20).equals(data.subarray(0, 50))).to.equal(true);
      const more = await appendChunks(reopened, [randomBytes(5)]);
      expect(reopened.read(start, reopened.endLsn, 1 << 20).equals(Buffer.concat([data.subarray(0, 50), more]))).to.equal(true);
    });
  });

  describe('zeros after the chunks (a preallocated segment file)', () => {
    /** Writes `chunks`, closes the store, and extends the file with `zeros` bytes of zeros (what preallocation leaves). */
    async function writeThenZeroFill(chunks: Buffer[], zeros = 1 << 20): Promise<{ data: Buffer; file: string; chunkEnd: number }> {
      const store = await openStore();
      store.resetTo(START);
      const data = await appendChunks(store, chunks);
      store.close();
      const [file] = segmentFiles();
      const chunkEnd = fs.statSync(file).size;
      fs.truncateSync(file, chunkEnd + zeros);
      return { data, file, chunkEnd };
    }

    it('end cleanly: nothing is reported or cut, and appends go on in place', async () => {
      const { data, file, chunkEnd } = await writeThenZeroFill([randomBytes(100), randomBytes(100)]);
      const repairs: Repair[] = [];
      const store = await openStore(repairs);
      expect(repairs).to.deep.equal([]);
      expect(store.endLsn).to.equal(START + 200n);
      expect(fs.statSync(file).size).to.equal(chunkEnd + (1 << 20));
      const more = await appendChunks(store, [randomBytes(50)]);
      store.close();
      const reopened = await openStore();
      expect(reopened.endLsn).to.equal(START + 250n);
      expect(reopened.read(START, reopened.endLsn, 1 << 20).equals(Buffer.concat([data, more]))).to.equal(true);
    });

    it('a torn last chunk before them is still cut and reported', async () => {
      const { data, file } = await writeThenZeroFill([randomBytes(100), randomBytes(100)]);
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.alloc(30), 0, 30, HEADER_SIZE + 100 + HEADER_SIZE + 70);
      fs.closeSync(fd);
      const repairs: Repair[] = [];
      const store = await openStore(repairs);
      expect(repairs.map((repair) => repair.reason)).to.deep.equal([`a chunk at ${formatLsn(START + 100n)} whose checksum does not match`]);
      expect(store.endLsn).to.equal(START + 100n);
      expect(store.read(START, START + 200n, 1 << 20).equals(data.subarray(0, 100))).to.equal(true);
    });

    it('WAL written after a chunk that was lost never comes back, even when a new chunk fills the gap exactly', async () => {
      // A crash persisted chunk 3 but not chunk 2 (pages reach the disk in any order): chunk 2's place reads as zeros.
      const chunks = [randomBytes(100), randomBytes(100), randomBytes(100)];
      const { file } = await writeThenZeroFill(chunks);
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.alloc(HEADER_SIZE + 100), 0, HEADER_SIZE + 100, HEADER_SIZE + 100);
      fs.closeSync(fd);
      const repairs: Repair[] = [];
      const store = await openStore(repairs);
      expect(store.endLsn).to.equal(START + 100n);
      expect(repairs.map((repair) => repair.reason), 'the lost chunk and what follows it are reported').to.deep.equal([
        'a zeroed (lost) chunk followed by more WAL',
      ]);
      // A new proposer writes other WAL of the same length at the same LSN; then the safekeeper restarts.
      const replacement = randomBytes(100);
      await appendChunks(store, [replacement]);
      store.close();
      const reopened = await openStore();
      expect(formatLsn(reopened.endLsn)).to.equal(formatLsn(START + 200n));
      expect(reopened.read(START, START + 300n, 1 << 20).equals(Buffer.concat([chunks[0], replacement]))).to.equal(true);
    });
  });

  describe('preallocation of the next segment', () => {
    it('starts once a segment is half full; crossing into the next segment and reopening keep every byte', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE + WAL_SEGMENT_SIZE / 2n - 10n;
      store.resetTo(start);
      const first = await appendChunks(store, [randomBytes(20)]);
      const preallocated = path.join(walDir, '0000000000000002.wal.preallocated');
      await waitFor(() => fs.existsSync(preallocated) && fs.statSync(preallocated).size >= Number(WAL_SEGMENT_SIZE), {
        what: 'the next segment file to be preallocated',
        timeoutMs: 20_000,
      });
      // Cross into segment 2 (with or without the preallocated file, depending on whether it is ready yet).
      const fill = Number(2n * WAL_SEGMENT_SIZE - store.endLsn);
      const rest = await appendChunks(store, [randomBytes(fill - 5), randomBytes(5 + 300)]);
      expect(store.endLsn).to.equal(2n * WAL_SEGMENT_SIZE + 300n);
      const all = Buffer.concat([first, rest]);
      expect(store.read(start, store.endLsn, 1 << 25).equals(all)).to.equal(true);
      store.close();
      const repairs: Repair[] = [];
      const reopened = await openStore(repairs);
      expect(repairs).to.deep.equal([]);
      expect([reopened.startLsn, reopened.endLsn]).to.deep.equal([start, 2n * WAL_SEGMENT_SIZE + 300n]);
      expect(reopened.read(start, reopened.endLsn, 1 << 25).equals(all)).to.equal(true);
      // A preallocation left behind by the restart is removed.
      expect(fs.readdirSync(walDir).filter((name) => name.endsWith('.preallocated'))).to.deep.equal([]);
    });
  });

  describe('truncate', () => {
    it('cuts inside a chunk, durably', async () => {
      const store = await openStore();
      store.resetTo(START);
      const data = await appendChunks(store, [randomBytes(100), randomBytes(100), randomBytes(100)]);
      await store.truncate(START + 150n);
      expect([store.endLsn, store.flushedLsn]).to.deep.equal([START + 150n, START + 150n]);
      expect(store.read(START, START + 300n, 1 << 20).equals(data.subarray(0, 150))).to.equal(true);
      // New WAL follows the cut, and a reopen sees exactly that.
      const other = await appendChunks(store, [randomBytes(20)]);
      store.close();
      const repairs: Repair[] = [];
      const reopened = await openStore(repairs);
      expect(repairs).to.deep.equal([]);
      expect(reopened.endLsn).to.equal(START + 170n);
      expect(reopened.read(START, reopened.endLsn, 1 << 20).equals(Buffer.concat([data.subarray(0, 150), other]))).to.equal(true);
    });

    it('cuts at a chunk border', async () => {
      const store = await openStore();
      store.resetTo(START);
      const data = await appendChunks(store, [randomBytes(10), randomBytes(10)]);
      await store.truncate(START + 10n);
      expect(store.endLsn).to.equal(START + 10n);
      expect(store.read(START, START + 20n, 100).equals(data.subarray(0, 10))).to.equal(true);
    });

    it('removes later segment files', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE - 20n;
      store.resetTo(start);
      const data = await appendChunks(store, [randomBytes(60)]);
      expect(segmentFiles()).to.have.length(2);
      await store.truncate(start + 10n);
      expect(segmentFiles()).to.have.length(1);
      expect(store.endLsn).to.equal(start + 10n);
      expect(store.read(start, start + 60n, 100).equals(data.subarray(0, 10))).to.equal(true);
      store.close();
      expect((await openStore()).endLsn).to.equal(start + 10n);
    });

    it('at a segment border keeps the previous file whole', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE - 20n;
      store.resetTo(start);
      const data = await appendChunks(store, [randomBytes(60)]);
      await store.truncate(WAL_SEGMENT_SIZE);
      expect(segmentFiles()).to.have.length(1);
      expect(store.read(start, start + 60n, 100).equals(data.subarray(0, 20))).to.equal(true);
      await appendChunks(store, [randomBytes(5)]);
      expect(segmentFiles()).to.have.length(2);
    });

    it('to the start leaves an empty log that starts there', async () => {
      const store = await openStore();
      store.resetTo(START);
      await appendChunks(store, [randomBytes(10)]);
      await store.truncate(START);
      expect([store.startLsn, store.endLsn, store.flushedLsn]).to.deep.equal([START, START, START]);
      expect(store.isEmpty).to.equal(true);
      const data = await appendChunks(store, [randomBytes(7)]);
      expect(store.read(START, store.endLsn, 100).equals(data)).to.equal(true);
    });

    it('at or beyond the end changes nothing; below the start is refused', async () => {
      const store = await openStore();
      store.resetTo(START);
      await appendChunks(store, [randomBytes(10)]);
      await store.truncate(START + 10n);
      await store.truncate(START + 50n);
      expect(store.endLsn).to.equal(START + 10n);
      await store.truncate(START + 1n);
      let refused: unknown;
      await store.truncate(START - 1n).catch((error: unknown) => {
        refused = error;
      });
      expect(refused).to.be.instanceOf(RangeError);
    });
  });

  describe('removeBelow', () => {
    it('removes whole segment files below the LSN, never the newest', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE - 10n;
      store.resetTo(start);
      const data = await appendChunks(store, [randomBytes(30)]);
      // Not yet below: the first segment ends at WAL_SEGMENT_SIZE.
      expect(store.removeBelow(WAL_SEGMENT_SIZE - 1n)).to.equal(start);
      expect(segmentFiles()).to.have.length(2);
      expect(store.removeBelow(WAL_SEGMENT_SIZE)).to.equal(WAL_SEGMENT_SIZE);
      expect(segmentFiles().map((file) => path.basename(file))).to.deep.equal(['0000000000000001.wal']);
      expect(store.startLsn).to.equal(WAL_SEGMENT_SIZE);
      expect(() => store.read(start, start + 30n, 100)).to.throw(RangeError, 'was removed');
      expect(store.read(WAL_SEGMENT_SIZE, start + 30n, 100).equals(data.subarray(10))).to.equal(true);
      // The newest file stays even when everything is below the LSN.
      expect(store.removeBelow(WAL_SEGMENT_SIZE * 4n)).to.equal(WAL_SEGMENT_SIZE);
      expect(segmentFiles()).to.have.length(1);
      store.close();
      const reopened = await openStore();
      expect([reopened.startLsn, reopened.endLsn]).to.deep.equal([WAL_SEGMENT_SIZE, start + 30n]);
    });

    it('keeps segments not yet fsynced', async () => {
      const store = await openStore();
      const start = WAL_SEGMENT_SIZE - 10n;
      store.resetTo(start);
      store.append(start, randomBytes(10));
      store.append(WAL_SEGMENT_SIZE, randomBytes(10));
      // Nothing is flushed yet, so nothing may go.
      expect(store.removeBelow(WAL_SEGMENT_SIZE)).to.equal(start);
      expect(segmentFiles()).to.have.length(2);
      await store.waitFlushed();
      expect(store.removeBelow(WAL_SEGMENT_SIZE)).to.equal(WAL_SEGMENT_SIZE);
    });
  });
});

describe('FsyncPlacement', () => {
  it('runs fdatasync on the event loop while the disk is fast, moves it to the thread pool when the disk turns slow, and back', () => {
    const placement = new FsyncPlacement();
    expect(placement.inline, 'before any fdatasync').to.equal(true);
    for (let sync = 0; sync < 20; sync += 1) placement.record(0.06);
    expect(placement.inline, 'a local SSD (60 µs)').to.equal(true);
    // One slow fdatasync among fast ones does not move it; a disk that stays slow does, within a few.
    placement.record(3);
    expect(placement.inline, 'one 3 ms fdatasync').to.equal(true);
    for (let sync = 0; sync < 10; sync += 1) placement.record(4);
    expect(placement.inline, 'a network disk (4 ms)').to.equal(false);
    // Measured through the pool, fast again: back on the event loop.
    for (let sync = 0; sync < 40; sync += 1) placement.record(0.2);
    expect(placement.inline, 'fast again').to.equal(true);
  });

  it('puts a first fdatasync that was slow in the pool at once', () => {
    const placement = new FsyncPlacement();
    placement.record(12);
    expect(placement.inline).to.equal(false);
  });
});

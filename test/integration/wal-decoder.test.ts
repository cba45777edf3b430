/**
 * The WAL decoder on WAL written by a real PostgreSQL 18: inserts, an index, full-page images after a checkpoint
 * (plain and pglz-compressed), a logical message spanning many pages, a segment switch and commits, read from the
 * segment files in pg_wal and decoded with every CRC checked.
 */
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import pg from 'pg';
import { pino } from 'pino';
import { freePort } from '../../src/lib/net.js';
import { initdb, PostgresServer } from '../../src/lib/pg/postgres.js';
import { WAL_PAGE_SIZE, WAL_SEGMENT_SIZE, parseLsn, segmentNumber, segmentStart, walFileName, type Lsn } from '../../src/lib/lsn.js';
import { MAXALIGN, WalDecoder, type WalDecoderOptions, type WalRecord } from '../../src/lib/pg/wal-decoder.js';
import { TempDir } from '../harness/process.js';

const RM_HEAP_ID = 10;
const RM_LOGICALMSG_ID = 21;
const DEFAULT_TABLESPACE_OID = 1663;

/** Feeds the WAL in `[from, to)` from the segment files of timeline 1, a segment at a time. */
function decodeWal(dataDir: string, from: Lsn, to: Lsn, options: WalDecoderOptions = {}): { decoder: WalDecoder; records: WalRecord[] } {
  const decoder = new WalDecoder(from, options);
  const records: WalRecord[] = [];
  for (let segment = segmentNumber(from); segment <= segmentNumber(to - 1n); segment++) {
    const file = fs.readFileSync(path.join(dataDir, 'pg_wal', walFileName(1, segment)));
    const base = segmentStart(segment);
    const begin = from > base ? Number(from - base) : 0;
    const end = to < base + WAL_SEGMENT_SIZE ? Number(to - base) : file.length;
    records.push(...decoder.feed(file.subarray(begin, end), decoder.feedLsn));
  }
  return { decoder, records };
}

describe('WalDecoder on real PostgreSQL 18 WAL', function () {
  this.timeout(120_000);
  const log = pino({ level: 'warn' });
  let directory: TempDir;
  let dataDir: string;
  let server: PostgresServer | null = null;
  let client: pg.Client | null = null;

  // What the workload did.
  let workloadStart: Date;
  let workloadEnd: Date;
  let firstLsn: Lsn;
  let startLsn: Lsn;
  let flushLsn: Lsn;
  let insertXid: number;
  let insertBefore: Date;
  let insertAfter: Date;
  let checkpointLsn: Lsn;
  let messageLsn: Lsn;
  let switchLsn: Lsn;
  let relNumber: number;
  let dbOid: number;
  let records: WalRecord[];
  let decoder: WalDecoder;

  async function value(sql: string): Promise<string> {
    const result = await client!.query<{ value: string }>(sql);
    return result.rows[0].value;
  }

  before(async () => {
    directory = TempDir.create('wal-decoder');
    dataDir = directory.join('data');
    await initdb(dataDir, log);
    server = await PostgresServer.start({
      dataDir,
      port: await freePort(),
      // wal_keep_size keeps the segments the checkpoints would otherwise remove before they are read.
      settings: { wal_level: 'replica', full_page_writes: 'on', wal_keep_size: '1GB', autovacuum: 'off', fsync: 'off' },
      log,
    });
    client = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres' });
    await client.connect();

    workloadStart = new Date();
    firstLsn = parseLsn(await value('SELECT pg_current_wal_insert_lsn()::text AS value'));
    startLsn = firstLsn - (firstLsn % WAL_PAGE_SIZE);
    await client.query('CREATE TABLE items (id int, payload text)');
    insertBefore = new Date();
    await client.query('BEGIN');
    await client.query(`INSERT INTO items SELECT g, repeat('v', 50) FROM generate_series(1, 3000) g`);
    insertXid = Number(BigInt(await value('SELECT pg_current_xact_id()::text AS value')) & 0xffffffffn);
    await client.query('COMMIT');
    insertAfter = new Date();
    await client.query('CREATE INDEX items_id ON items (id)');
    relNumber = Number(await value(`SELECT pg_relation_filenode('items')::text AS value`));
    dbOid = Number(await value('SELECT oid::text AS value FROM pg_database WHERE datname = current_database()'));

    await client.query('CHECKPOINT');
    checkpointLsn = parseLsn(await value('SELECT checkpoint_lsn::text AS value FROM pg_control_checkpoint()'));
    await client.query(`UPDATE items SET payload = 'updated' WHERE id % 40 = 0`);
    await client.query('SET wal_compression = pglz');
    await client.query('CHECKPOINT');
    await client.query(`UPDATE items SET payload = 'again' WHERE id % 40 = 1`);
    await client.query('RESET wal_compression');

    messageLsn = parseLsn(await value(`SELECT pg_logical_emit_message(false, 'p', repeat('x', 100000))::text AS value`));
    switchLsn = parseLsn(await value('SELECT pg_switch_wal()::text AS value'));
    await client.query(`INSERT INTO items VALUES (0, 'after the switch')`);
    await client.query('CHECKPOINT');
    flushLsn = parseLsn(await value('SELECT pg_current_wal_flush_lsn()::text AS value'));
    workloadEnd = new Date();

    ({ decoder, records } = decodeWal(dataDir, startLsn, flushLsn));
  });

  after(async () => {
    await client?.end().catch(() => undefined);
    await server?.stop('fast');
    directory?.remove();
  });

  it('decodes every record with a valid CRC and a consistent xl_prev chain up to the flush LSN', () => {
    expect(records.length).to.be.greaterThan(3000);
    for (let index = 1; index < records.length; index++) {
      expect(records[index].prevLsn, `xl_prev of record ${index}`).to.equal(records[index - 1].startLsn);
      expect(records[index].startLsn >= MAXALIGN(records[index - 1].endLsn)).to.equal(true);
    }
    expect(records[0].startLsn <= firstLsn).to.equal(true);
    expect(decoder.lastRecordEnd <= flushLsn, 'the last record ends by the flush LSN').to.equal(true);
    expect(MAXALIGN(decoder.lastRecordEnd), 'the flush LSN is the aligned end of the last record').to.equal(flushLsn);
    expect(decoder.feedLsn).to.equal(flushLsn);
    expect(records.at(-1)?.isCheckpoint).to.equal(true);
    expect(decoder.systemId).to.not.equal(null);
  });

  it('finds the heap table in the block references of the inserts (main fork)', () => {
    const inserts = records.filter((record) => record.xid === insertXid && record.rmid === RM_HEAP_ID);
    expect(inserts.length).to.be.at.least(3000);
    const blocks = new Set<number>();
    for (const record of inserts) {
      const block = record.blocks[0];
      expect(block).to.include({ spcOid: DEFAULT_TABLESPACE_OID, dbOid, relNumber, forkNumber: 0 });
      blocks.add(block.blockNumber);
    }
    expect(blocks.size, 'heap pages written').to.be.greaterThan(10);
    expect(Math.max(...blocks)).to.equal(blocks.size - 1);
  });

  it('after the checkpoint, the first change of each existing page carries a full-page image', () => {
    const checkpointIndex = records.findIndex((record) => record.startLsn === checkpointLsn);
    expect(checkpointIndex).to.be.greaterThan(0);
    expect(records[checkpointIndex].isCheckpoint).to.equal(true);
    const updates = records.slice(checkpointIndex + 1).filter((record) => record.blocks.some((block) => block.relNumber === relNumber));
    const seen = new Set<number>();
    let images = 0;
    for (const record of updates.slice(0, 40)) {
      for (const block of record.blocks.filter((candidate) => candidate.relNumber === relNumber && candidate.forkNumber === 0)) {
        if (seen.has(block.blockNumber)) continue;
        seen.add(block.blockNumber);
        if (block.willInit) continue; // a page the table grew by: initialized, not restored
        expect(block.hasImage, `first change of block ${block.blockNumber} after the checkpoint`).to.equal(true);
        expect(block.applyImage).to.equal(true);
        images++;
      }
    }
    expect(images).to.be.greaterThan(5);
  });

  it('reads commit timestamps between the times measured around the commits', () => {
    const insertCommit = records.find((record) => record.xid === insertXid && record.commitTime !== undefined);
    expect(insertCommit, 'the commit of the inserts').to.not.equal(undefined);
    expect(insertCommit!.commitTime!.getTime()).to.be.within(insertBefore.getTime(), insertAfter.getTime());
    const commits = records.filter((record) => record.startLsn >= firstLsn && record.commitTime !== undefined);
    expect(commits.length).to.be.at.least(5);
    for (const commit of commits) expect(commit.commitTime!.getTime()).to.be.within(workloadStart.getTime(), workloadEnd.getTime());
  });

  it('decodes the 100 kB logical message as one record spanning pages', () => {
    const messages = records.filter((record) => record.rmid === RM_LOGICALMSG_ID && record.totalLength > 100_000);
    expect(messages).to.have.length(1);
    const message = messages[0];
    const pages = Number((message.endLsn - 1n) / WAL_PAGE_SIZE - message.startLsn / WAL_PAGE_SIZE) + 1;
    expect(pages).to.be.at.least(13);
    expect(message.endLsn - message.startLsn, 'the record plus the page headers inside it').to.equal(BigInt(message.totalLength + 24 * (pages - 1)));
    expect(MAXALIGN(message.endLsn), 'pg_logical_emit_message returns the end of the record').to.equal(messageLsn);
  });

  it('recognises the segment switch: the next record follows the long header of the next segment', () => {
    const switchIndex = records.findIndex((record) => record.isSwitch);
    expect(switchIndex).to.be.greaterThan(0);
    const switchRecord = records[switchIndex];
    const nextSegment = (segmentNumber(switchRecord.startLsn) + 1n) * WAL_SEGMENT_SIZE;
    expect(switchLsn, 'pg_switch_wal returns the end of the switch record').to.equal(switchRecord.endLsn);
    expect(records[switchIndex + 1].startLsn).to.equal(nextSegment + 40n);
    expect(records[switchIndex + 1].prevLsn).to.equal(switchRecord.startLsn);
  });

  it('finds the same boundaries without decoding blocks or checking CRCs', () => {
    const cheap = decodeWal(dataDir, startLsn, flushLsn, { decodeBlocks: false, verifyCrc: false });
    const strip = (list: WalRecord[]) => list.map(({ startLsn: start, endLsn, prevLsn, xid, rmid, info, totalLength }) => ({ start, endLsn, prevLsn, xid, rmid, info, totalLength }));
    expect(strip(cheap.records)).to.deep.equal(strip(records));
    expect(cheap.decoder.lastRecordEnd).to.equal(decoder.lastRecordEnd);
  });
});

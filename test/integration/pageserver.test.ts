/**
 * The pageserver with real processes: computes write through safekeepers, the pageserver follows the WAL into
 * object storage and snapshots it with its replayer, and new computes start from its basebackups.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import type pg from 'pg';
import type { AddressInfo } from 'node:net';
import S3rver from 's3rver';
import { TempDir, useHarness, waitFor, grpcHealthStatus, HealthCheckResponse_ServingStatus } from '../harness/process.js';
import { reflectedServices } from '../harness/reflection.js';
import { openChannel } from '../../src/lib/grpc/client.js';
import { createTimeline, newTimelineId, startSafekeepers, type SafekeeperNode } from '../harness/safekeepers.js';
import { ComputeNode, postgresSocketDir } from '../harness/computes.js';
import { PageserverNode } from '../harness/pageserver.js';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { formatLsn, parseLsn } from '../../src/lib/lsn.js';
import { BasebackupMode, ForkNumber, type TimelineInfo } from '../../gen/spg99/pageserver/v1/pageserver.js';

const run = promisify(execFile);

/** md5 of every user table's rows, by table name. */
async function tableChecksums(client: pg.Client): Promise<Record<string, string>> {
  const tables = await client.query<{ name: string }>(
    `SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
  );
  const sums: Record<string, string> = {};
  for (const { name } of tables.rows) {
    const result = await client.query<{ sum: string | null; count: string }>(
      `SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) AS sum, count(*) AS count FROM ${name} t`,
    );
    sums[name] = `${result.rows[0].count}:${result.rows[0].sum ?? ''}`;
  }
  return sums;
}

async function flushLsn(client: pg.Client): Promise<bigint> {
  const result = await client.query<{ lsn: string }>('SELECT pg_current_wal_flush_lsn()::text AS lsn');
  return parseLsn(result.rows[0].lsn);
}

/** Returns once the server's clock has reached a later millisecond than `time` (a query per round, no sleep). */
async function untilClockPasses(client: pg.Client, time: Date): Promise<void> {
  for (;;) {
    const now = (await client.query<{ now: Date }>('SELECT clock_timestamp() AS now')).rows[0].now;
    if (now.getTime() > time.getTime()) return;
  }
}

/** Bytes of the files under `directory`. */
function directoryBytes(directory: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(directory, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  }
  return total;
}

async function currentLsn(client: pg.Client): Promise<bigint> {
  const result = await client.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn');
  return parseLsn(result.rows[0].lsn);
}

describe('pageserver (safekeepers → pageserver → new computes)', function () {
  this.timeout(300_000);
  const harness = useHarness();
  let safekeepers: SafekeeperNode[];
  let pageserver: PageserverNode;
  const clients: pg.Client[] = [];

  beforeEach(async () => {
    safekeepers = await startSafekeepers(harness(), 3);
    pageserver = await PageserverNode.start(harness(), { args: ['--idle-ms', '1500', '--snapshot-wal-mb', '16'] });
  });

  afterEach(async () => {
    for (const client of clients.splice(0)) await client.end().catch(() => undefined);
  });

  function objectsDir(): string {
    return pageserver.objectStore.replace(/^file:\/\//, '');
  }

  async function connect(compute: ComputeNode): Promise<pg.Client> {
    const client = await compute.connect();
    clients.push(client);
    return client;
  }

  /** A timeline on the pageserver and the safekeepers, followed by the pageserver. */
  async function newTimeline(): Promise<string> {
    const timelineId = newTimelineId();
    await pageserver.timelines.createTimeline({ timelineId, tenantId: 'tn-test', pgMajorVersion: 18 });
    await createTimeline(safekeepers, timelineId);
    await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers.map((node) => node.address) });
    return timelineId;
  }

  it('starts from a cached data directory only while the timeline ends where it was cached; else from a basebackup', async () => {
    const timelineId = await newTimeline();
    const first = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    let client = await connect(first);
    await client.query('CREATE TABLE kept (id int PRIMARY KEY, note text)');
    await client.query(`INSERT INTO kept SELECT g, 'first' FROM generate_series(1, 100) g`);
    await client.end();
    // A clean stop (what the provisioner caches after): the data directory ends at the final LSN.
    const { finalLsn } = await first.client.stop({ checkpoint: true });
    await first.process.stop();
    const cached = path.join(harness().tempDir('cache').path, 'pgdata');
    fs.cpSync(first.pgDataDir, cached, { recursive: true });

    // Current: the next compute starts from it, without a basebackup, and sees every row.
    const second = await ComputeNode.start(harness(), { timelineId, term: 2, safekeepers, pageserver: pageserver.address, pgDataDir: first.pgDataDir, cachedDataLsn: finalLsn });
    expect(second.process.lines.some((line) => line.msg === 'starting from the cached data directory: the timeline ends where it does')).to.equal(true);
    expect(second.process.lines.some((line) => line.msg === 'basebackup unpacked')).to.equal(false);
    client = await connect(second);
    expect((await client.query('SELECT count(*)::int AS n FROM kept')).rows[0].n).to.equal(100);
    await client.query(`INSERT INTO kept SELECT g, 'second' FROM generate_series(101, 150) g`);
    await client.end();
    await second.client.stop({ checkpoint: true });
    await second.process.stop();

    // Stale: the copy from before the second writer must not be used; the basebackup has the second writer's rows.
    const third = await ComputeNode.start(harness(), { timelineId, term: 3, safekeepers, pageserver: pageserver.address, pgDataDir: cached, cachedDataLsn: finalLsn });
    expect(third.process.lines.some((line) => line.msg === 'the cached data directory is stale: starting from a basebackup')).to.equal(true);
    client = await connect(third);
    expect((await client.query(`SELECT count(*)::int AS n, count(*) FILTER (WHERE note = 'second')::int AS later FROM kept`)).rows[0]).to.deep.equal({ n: 150, later: 50 });
  });

  it('starts new computes from the pageserver with the same content, three times in a row', async () => {
    const timelineId = await newTimeline();
    let compute = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    let client = await connect(compute);
    await run('pgbench', ['-i', '-q', '-s', '1'], { env: { ...process.env, PGHOST: postgresSocketDir(compute.pgPort) ?? '', PGPORT: String(compute.pgPort), PGUSER: 'postgres' } });
    await client.query('CREATE TABLE known (id int PRIMARY KEY, note text)');
    await client.query(`INSERT INTO known SELECT g, 'row ' || g FROM generate_series(1, 1000) g`);
    let expected = await tableChecksums(client);
    expect(Object.keys(expected)).to.include.members(['public.known', 'public.pgbench_accounts']);
    for (let round = 2; round <= 4; round++) {
      await client.end();
      await compute.process.stop();
      fs.rmSync(compute.pgDataDir, { recursive: true, force: true });
      compute = await ComputeNode.start(harness(), { timelineId, term: round, safekeepers, pageserver: pageserver.address });
      client = await connect(compute);
      expect(await tableChecksums(client)).to.deep.equal(expected);
      await client.query(`INSERT INTO known SELECT g, 'round ${round}' FROM generate_series(${round * 1000 + 1}, ${round * 1000 + 100}) g`);
      await client.query(`UPDATE pgbench_accounts SET abalance = abalance + ${round} WHERE aid % 7 = 0`);
      expected = await tableChecksums(client);
    }
    const count = await client.query<{ count: string }>('SELECT count(*) FROM known');
    expect(Number(count.rows[0].count)).to.equal(1300);
  });

  it('recovers from object storage alone after losing its local disk', async () => {
    const timelineId = await newTimeline();
    const compute = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    const client = await connect(compute);
    await client.query('CREATE TABLE kept (id int, payload text)');
    await client.query(`INSERT INTO kept SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g`);
    const expected = await tableChecksums(client);
    const end = await currentLsn(client);
    await waitFor(async () => {
      const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
      return (timeline?.remoteConsistentLsn ?? 0n) >= end;
    }, { what: `WAL up to ${formatLsn(end)} durable in object storage` });
    await client.end();
    clients.length = 0;
    await compute.process.stop();
    // The writer stopped: a snapshot covers the end of its WAL, and the idle timeline's replayer stops.
    await waitFor(async () => {
      const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
      const covered = timeline?.snapshots.at(-1)?.lsn ?? 0n;
      return timeline !== undefined && !timeline.replayerRunning && covered === timeline.lastRecordLsn && covered >= end;
    }, { what: 'a snapshot at the end of WAL and the replayer stopped', timeoutMs: 60_000 });
    await pageserver.restart({ crash: true, wipeLocal: true });
    const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
    expect(timeline?.lastRecordLsn !== undefined && timeline.lastRecordLsn >= end, `last record ${formatLsn(timeline?.lastRecordLsn ?? 0n)} ≥ ${formatLsn(end)}`).to.equal(true);
    const next = await ComputeNode.start(harness(), { timelineId, term: 2, safekeepers, pageserver: pageserver.address });
    expect(await tableChecksums(await connect(next))).to.deep.equal(expected);
  });

  /** A branch on the pageserver, its own timeline on the safekeepers, followed by the pageserver. */
  async function newBranch(ancestorTimelineId: string, point: { ancestorLsn?: bigint; ancestorTime?: Date }): Promise<TimelineInfo> {
    const timelineId = newTimelineId();
    const { timeline } = await pageserver.timelines.branchTimeline({ timelineId, ancestorTimelineId, ...point });
    await createTimeline(safekeepers, timelineId);
    await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers.map((node) => node.address) });
    return timeline as TimelineInfo;
  }

  async function phases(client: pg.Client): Promise<Record<string, number>> {
    const result = await client.query<{ phase: string; count: string }>('SELECT phase, count(*) FROM t GROUP BY phase ORDER BY phase');
    return Object.fromEntries(result.rows.map((row) => [row.phase, Number(row.count)]));
  }

  it('branches at a past LSN and at a time: each shows exactly that state, writes stay apart, nothing is copied', async () => {
    const timelineId = await newTimeline();
    const parent = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    const client = await connect(parent);
    await client.query(`CREATE TABLE bulk AS SELECT g AS id, repeat('x', 200) AS payload FROM generate_series(1, 200000) g`);
    await client.query('CREATE TABLE t (id int PRIMARY KEY, phase text)');
    const beforeA = await flushLsn(client);
    await client.query(`INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g`);
    const lsnA = await flushLsn(client);
    const timeA = (await client.query<{ now: Date }>('SELECT clock_timestamp() AS now')).rows[0].now;
    // A time names a millisecond: the next commit must fall in a later one, or it would belong to timeA too.
    await untilClockPasses(client, timeA);
    await client.query(`INSERT INTO t SELECT g, 'b' FROM generate_series(101, 200) g`);
    const lsnB = await flushLsn(client);
    const databaseBytes = Number((await client.query<{ size: string }>('SELECT pg_database_size(current_database()) AS size')).rows[0].size);
    await pageserver.timelines.waitForLsn({ timelineId, lsn: lsnB }, { deadline: new Date(Date.now() + 60_000) });

    const atLsn = await newBranch(timelineId, { ancestorLsn: lsnA });
    const atTime = await newBranch(timelineId, { ancestorTime: timeA });
    // What the branches added to object storage (the parent's own snapshots go on meanwhile and are not theirs).
    const growth = [atLsn, atTime].reduce((sum, branch) => sum + directoryBytes(path.join(objectsDir(), 'timelines', branch.timelineId)), 0);
    expect(databaseBytes).to.be.greaterThan(40 * 1024 * 1024);
    // Each branch holds only its first WAL segment up to the branch point; no page is copied.
    expect(growth, `object storage grew by ${growth} bytes for two branches of a ${databaseBytes}-byte database`).to.be.lessThan(2 * 16 * 1024 * 1024 + 65536);
    expect(atLsn.ancestorLsn).to.equal(lsnA);
    // The end of the last commit at or before timeA: after 'a' began, before 'b' ended (other WAL, such as a
    // standby snapshot, may follow 'a' before lsnA was read, and another commit may fall between).
    expect(
      atTime.ancestorLsn > beforeA && atTime.ancestorLsn < lsnB,
      `time branch point ${formatLsn(atTime.ancestorLsn)} in (${formatLsn(beforeA)}, ${formatLsn(lsnB)})`,
    ).to.equal(true);

    const onLsn = await connect(await ComputeNode.start(harness(), { timelineId: atLsn.timelineId, term: 1, safekeepers, pageserver: pageserver.address }));
    const onTime = await connect(await ComputeNode.start(harness(), { timelineId: atTime.timelineId, term: 1, safekeepers, pageserver: pageserver.address }));
    expect(await phases(onLsn)).to.deep.equal({ a: 100 });
    expect(await phases(onTime)).to.deep.equal({ a: 100 });
    expect(await phases(client)).to.deep.equal({ a: 100, b: 100 });

    await onLsn.query(`INSERT INTO t SELECT g, 'branch' FROM generate_series(1001, 1010) g`);
    await client.query(`INSERT INTO t SELECT g, 'parent' FROM generate_series(2001, 2020) g`);
    expect(await phases(onLsn)).to.deep.equal({ a: 100, branch: 10 });
    expect(await phases(onTime)).to.deep.equal({ a: 100 });
    expect(await phases(client)).to.deep.equal({ a: 100, b: 100, parent: 20 });
  });

  it('GetPage at two LSNs returns the two versions of a page, as pageinspect saw them', async () => {
    const timelineId = await newTimeline();
    const compute = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    const client = await connect(compute);
    await client.query('CREATE EXTENSION pageinspect');
    await client.query('CREATE TABLE g (id int, v text)');
    await client.query(`INSERT INTO g SELECT i, 'first ' || i FROM generate_series(1, 20) i`);
    const rel = (await client.query<{ db: number; rel: number }>(
      `SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::int AS db, pg_relation_filenode('g')::int AS rel`,
    )).rows[0];
    const lsn1 = await flushLsn(client);
    const raw1 = (await client.query<{ page: Buffer }>(`SELECT get_raw_page('g', 0) AS page`)).rows[0].page;
    await client.query(`UPDATE g SET v = 'second ' || id WHERE id % 2 = 0`);
    const lsn2 = await flushLsn(client);
    const raw2 = (await client.query<{ page: Buffer }>(`SELECT get_raw_page('g', 0) AS page`)).rows[0].page;
    const relTag = { spcNode: 1663, dbNode: rel.db, relNode: rel.rel, fork: ForkNumber.FORK_NUMBER_MAIN };
    const read = async (lsn: bigint, block = 0) =>
      (await pageserver.pages.getPage({ timelineId, rel: relTag, blockNumber: block, readLsn: { requestLsn: lsn, notModifiedSinceLsn: 0n } }, { deadline: new Date(Date.now() + 60_000) })).pageImage;
    const page1 = await read(lsn1);
    const page2 = await read(lsn2);
    expect(page1.length).to.equal(8192);
    /** What pageinspect sees in a page: its LSN and its tuples (hint bits aside, which reads set on the compute). */
    const inspect = async (page: Buffer) => {
      const header = await client.query<{ lsn: string }>('SELECT lsn::text FROM page_header($1::bytea)', [page]);
      const items = await client.query('SELECT lp, t_xmin, t_xmax, t_ctid, t_data FROM heap_page_items($1::bytea) ORDER BY lp', [page]);
      return { lsn: header.rows[0].lsn, items: items.rows };
    };
    expect(await inspect(page1)).to.deep.equal(await inspect(raw1));
    expect(await inspect(page2)).to.deep.equal(await inspect(raw2));
    expect(await inspect(page1)).to.not.deep.equal(await inspect(page2));

    const readLsn = { requestLsn: lsn2, notModifiedSinceLsn: 0n };
    expect((await pageserver.pages.getRelSize({ timelineId, rel: relTag, readLsn })).blockCount).to.equal(1);
    expect((await pageserver.pages.getRelExists({ timelineId, rel: relTag, readLsn })).exists).to.equal(true);
    expect((await pageserver.pages.getRelExists({ timelineId, rel: { ...relTag, relNode: 999_999 }, readLsn })).exists).to.equal(false);
    const beyond = await read(lsn2, 5).catch((caught: unknown) => caught);
    expect((beyond as ClientError).code).to.equal(Status.OUT_OF_RANGE);
    const { sizeBytes } = await pageserver.pages.getDbSize({ timelineId, dbNode: rel.db, readLsn });
    expect(Number(sizeBytes)).to.be.greaterThan(1024 * 1024);

    // A thin basebackup leaves out the user relations of its snapshot and lists them; a full one carries them.
    // The snapshot lands where replay stood, at or after lsn2 (a background record may follow): back up there.
    const { snapshot } = await pageserver.timelines.createSnapshot({ timelineId, lsn: lsn2 }, { deadline: new Date(Date.now() + 60_000) });
    const at = snapshot?.lsn ?? 0n;
    const omitted: number[] = [];
    let thinBytes = 0n;
    for await (const response of pageserver.pages.basebackup({ timelineId, lsn: at, mode: BasebackupMode.BASEBACKUP_MODE_THIN, replica: false })) {
      for (const relation of response.omittedRelations?.relations ?? []) omitted.push(relation.rel?.relNode ?? 0);
      if (response.metadata) thinBytes = response.metadata.tarBytes;
    }
    expect(omitted).to.include(rel.rel);
    expect(thinBytes < (await basebackupAt(timelineId, at)).tarBytes).to.equal(true);
  });

  it('lets a safekeeper that was down catch up after the pageserver made the WAL it missed durable', async () => {
    const timelineId = await newTimeline();
    // A small WAL buffer in the walproposer: the laggard must catch up from its peers' disks.
    const compute = await ComputeNode.start(harness(), {
      timelineId, term: 1, safekeepers, pageserver: pageserver.address, env: { SPG99_WAL_BUFFER_MB: '4' },
    });
    const client = await connect(compute);
    const [laggard] = safekeepers as [SafekeeperNode];
    await laggard.kill9();
    // More than two segments of WAL while it is down, all of it durable in object storage.
    await client.query(`CREATE TABLE filler AS SELECT g AS id, repeat('y', 150) AS payload FROM generate_series(1, 250000) g`);
    const end = await flushLsn(client);
    await waitFor(async () => {
      const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
      return (timeline?.remoteConsistentLsn ?? 0n) >= end;
    }, { what: `WAL up to ${formatLsn(end)} durable in object storage`, timeoutMs: 60_000 });
    const [, other] = safekeepers as [SafekeeperNode, SafekeeperNode];
    // The others were told it lags, so they kept what it needs.
    const status = await other.status(timelineId);
    expect(status.consumerDurableLsn >= end - 1n, 'the pageserver reported its progress').to.equal(true);
    await laggard.restart();
    await waitFor(async () => (await laggard.status(timelineId)).flushLsn >= end, {
      what: `the restarted safekeeper caught up to ${formatLsn(end)}`,
      timeoutMs: 60_000,
    });
  });

  it('keeps ingesting when the safekeeper it follows dies', async () => {
    const timelineId = await newTimeline();
    const compute = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    const client = await connect(compute);
    await client.query('CREATE TABLE s (id int)');
    await client.query('INSERT INTO s SELECT generate_series(1, 100)');
    let followed = '';
    await waitFor(async () => {
      const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
      followed = timeline?.walSourceAddress ?? '';
      return followed !== '';
    }, { what: 'the pageserver following a safekeeper' });
    const victim = safekeepers.find((node) => node.address === followed) as SafekeeperNode;
    await victim.kill9();
    await client.query('INSERT INTO s SELECT generate_series(101, 200)');
    const end = await flushLsn(client);
    await waitFor(async () => {
      const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
      return timeline !== undefined && timeline.lastRecordLsn >= end && timeline.walSourceAddress !== followed;
    }, { what: `WAL up to ${formatLsn(end)} from another safekeeper than ${followed}`, timeoutMs: 60_000 });
  });

  /** Reads a whole basebackup stream; answers its metadata and the tar bytes received. */
  async function basebackupAt(timelineId: string, lsn: bigint, thin = false, deadlineMs = 60_000): Promise<{ lsn: bigint; tarBytes: bigint; received: number }> {
    let metadata: { lsn: bigint; tarBytes: bigint } | undefined;
    let received = 0;
    const mode = thin ? BasebackupMode.BASEBACKUP_MODE_THIN : BasebackupMode.BASEBACKUP_MODE_FULL;
    for await (const response of pageserver.pages.basebackup({ timelineId, lsn, mode, replica: false }, { deadline: new Date(Date.now() + deadlineMs) })) {
      if (response.metadata) metadata = response.metadata;
      if (response.tarChunk) received += response.tarChunk.length;
    }
    if (!metadata) throw new Error('no basebackup metadata');
    return { lsn: metadata.lsn, tarBytes: metadata.tarBytes, received };
  }

  it('keeps history under an LSN lease from GC until the lease expires, then GC removes it', async () => {
    const timelineId = await newTimeline();
    const compute = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    const client = await connect(compute);
    await client.query('CREATE TABLE t (id int PRIMARY KEY, phase text)');
    await client.query(`INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g`);
    const lsnA = await flushLsn(client);
    const { snapshot: snapshotA } = await pageserver.timelines.createSnapshot({ timelineId, lsn: lsnA }, { deadline: new Date(Date.now() + 60_000) });
    await client.query(`INSERT INTO t SELECT g, 'b' FROM generate_series(101, 200) g`);
    await client.query('CHECKPOINT');
    const lsnB = await flushLsn(client);
    await pageserver.timelines.createSnapshot({ timelineId, lsn: lsnB }, { deadline: new Date(Date.now() + 60_000) });
    const { lease } = await pageserver.timelines.createLsnLease({ timelineId, lsn: lsnA, ttl: { seconds: 3n, nanos: 0 } });
    const retention = { seconds: 0n, nanos: 0 };

    const held = await pageserver.timelines.runGc({ timelineId, retention });
    expect(held.results[0]?.gcCutoffLsn).to.equal(lsnA);
    expect((await basebackupAt(timelineId, lsnA)).lsn).to.equal(lsnA);

    // Once the lease has expired, GC moves past it.
    let after = held;
    await waitFor(async () => {
      after = await pageserver.timelines.runGc({ timelineId, retention });
      return (after.results[0]?.gcCutoffLsn ?? 0n) > lsnA;
    }, { what: `GC past ${formatLsn(lsnA)} after the lease (expiring ${lease?.expiresAt?.toISOString()}) ends`, timeoutMs: 30_000 });
    expect(after.results[0]?.removedSnapshotLsns).to.include(snapshotA?.lsn);
    const gone = await basebackupAt(timelineId, lsnA).catch((caught: unknown) => caught);
    expect((gone as ClientError).code).to.equal(Status.FAILED_PRECONDITION);
    expect((gone as ClientError).details).to.contain('GC cutoff');
    const branch = await pageserver.timelines
      .branchTimeline({ timelineId: newTimelineId(), ancestorTimelineId: timelineId, ancestorLsn: lsnA })
      .catch((caught: unknown) => caught);
    expect((branch as ClientError).code).to.equal(Status.FAILED_PRECONDITION);
    const again = await pageserver.timelines.createLsnLease({ timelineId, lsn: lsnA, ttl: { seconds: 60n, nanos: 0 } }).catch((caught: unknown) => caught);
    expect((again as ClientError).code).to.equal(Status.FAILED_PRECONDITION);

    // What GC kept (rewritten without the removed snapshots) still starts a compute with every row.
    await client.end();
    clients.length = 0;
    await compute.process.stop();
    const next = await ComputeNode.start(harness(), { timelineId, term: 2, safekeepers, pageserver: pageserver.address });
    expect(await phases(await connect(next))).to.deep.equal({ a: 100, b: 100 });
  });

  it('waits for WAL not yet ingested until just before the deadline, then says what is missing', async () => {
    const timelineId = await newTimeline();
    const { timeline } = await pageserver.timelines.describeTimeline({ timelineId });
    const ahead = (timeline?.lastRecordLsn ?? 0n) + 1024n * 1024n;
    const started = Date.now();
    const error = await pageserver.timelines
      .waitForLsn({ timelineId, lsn: ahead }, { deadline: new Date(Date.now() + 2500) })
      .catch((caught: unknown) => caught);
    expect(Date.now() - started).to.be.greaterThan(1000);
    expect((error as ClientError).code).to.equal(Status.DEADLINE_EXCEEDED);
    expect((error as ClientError).details).to.contain(formatLsn(ahead)).and.to.contain('did not arrive');
    const backup = await basebackupAt(timelineId, ahead, false, 2500).catch((caught: unknown) => caught);
    expect((backup as ClientError).code).to.equal(Status.DEADLINE_EXCEEDED);
    expect((backup as ClientError).details).to.contain(formatLsn(ahead));
  });

  it('names a corrupt object in storage instead of serving from it', async () => {
    const timelineId = await newTimeline();
    const pagesObject = fs
      .readdirSync(path.join(objectsDir(), 'timelines', timelineId, 'snapshots'))
      .find((name) => name.endsWith('.pages')) as string;
    const file = path.join(objectsDir(), 'timelines', timelineId, 'snapshots', pagesObject);
    fs.truncateSync(file, fs.statSync(file).size - 8192);
    const error = await basebackupAt(timelineId, 0n).catch((caught: unknown) => caught);
    expect((error as ClientError).code).to.equal(Status.DATA_LOSS);
    expect((error as ClientError).details).to.contain(pagesObject).and.to.contain('corrupt');
  });

  it('answers health, lists its services through reflection, and deletes timelines (not while branched)', async () => {
    const channel = openChannel(pageserver.address);
    try {
      expect(await grpcHealthStatus(channel)).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      channel.close();
    }
    expect(await reflectedServices(pageserver.address)).to.include.members([
      'spg99.pageserver.v1.TimelineService',
      'spg99.pageserver.v1.PageService',
      'grpc.health.v1.Health',
    ]);
    const timelineId = await newTimeline();
    const child = await newBranch(timelineId, {});
    const refused = await pageserver.timelines.deleteTimeline({ timelineId }).catch((caught: unknown) => caught);
    expect((refused as ClientError).code).to.equal(Status.FAILED_PRECONDITION);
    expect((refused as ClientError).details).to.contain(child.timelineId);
    await pageserver.timelines.deleteTimeline({ timelineId: child.timelineId });
    await pageserver.timelines.deleteTimeline({ timelineId });
    const gone = await pageserver.timelines.describeTimeline({ timelineId }).catch((caught: unknown) => caught);
    expect((gone as ClientError).code).to.equal(Status.NOT_FOUND);
    const left = path.join(objectsDir(), 'timelines', timelineId);
    expect(fs.existsSync(left) ? directoryBytes(left) : 0, 'bytes left in object storage').to.equal(0);
    const { timelines } = await pageserver.timelines.listTimelines({ tenantId: 'tn-test' });
    expect(timelines.map((timeline) => timeline.timelineId)).to.not.include(timelineId);
  });

  it('answers NOT_FOUND for an unknown timeline and INVALID_ARGUMENT for a malformed one', async () => {
    const unknown = newTimelineId();
    const error = await pageserver.timelines.describeTimeline({ timelineId: unknown }).catch((caught: unknown) => caught);
    expect(error).to.be.instanceOf(ClientError);
    expect((error as ClientError).code).to.equal(Status.NOT_FOUND);
    expect((error as ClientError).details).to.contain(unknown);
    const malformed = await pageserver.timelines.describeTimeline({ timelineId: 'tl-nothex' }).catch((caught: unknown) => caught);
    expect((malformed as ClientError).code).to.equal(Status.INVALID_ARGUMENT);
    expect((malformed as ClientError).details).to.contain('tl-nothex');
    const existing = await newTimeline();
    const again = await pageserver.timelines
      .createTimeline({ timelineId: existing, tenantId: 'tn-test', pgMajorVersion: 18 })
      .catch((caught: unknown) => caught);
    expect((again as ClientError).code).to.equal(Status.ALREADY_EXISTS);
    const version = await pageserver.timelines
      .createTimeline({ timelineId: newTimelineId(), tenantId: 'tn-test', pgMajorVersion: 9 })
      .catch((caught: unknown) => caught);
    expect((version as ClientError).code).to.equal(Status.INVALID_ARGUMENT);
  });
});

describe('pageserver on S3-compatible object storage', function () {
  this.timeout(300_000);
  const harness = useHarness();
  let server: S3rver;
  let serverDir: TempDir;
  let port: number;

  before(async () => {
    serverDir = TempDir.create('s3rver');
    server = new S3rver({ port: 0, address: '127.0.0.1', directory: serverDir.path, silent: true });
    const address: AddressInfo = await server.run();
    port = address.port;
  });

  after(async () => {
    await server?.close();
    serverDir?.remove();
  });

  it('keeps a timeline in S3 only: a pageserver without its local disk starts a compute with the same rows', async () => {
    const safekeepers = await startSafekeepers(harness(), 3);
    const pageserver = await PageserverNode.start(harness(), {
      objectStore: `s3://spg99-test/pageserver?endpoint=http://127.0.0.1:${port}`,
      env: { SPG99_S3_ACCESS_KEY: 'S3RVER', SPG99_S3_SECRET_KEY: 'S3RVER' },
      args: ['--idle-ms', '1500'],
    });
    const timelineId = newTimelineId();
    await pageserver.timelines.createTimeline({ timelineId, tenantId: 'tn-s3', pgMajorVersion: 18 });
    await createTimeline(safekeepers, timelineId);
    await pageserver.timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers.map((node) => node.address) });
    const first = await ComputeNode.start(harness(), { timelineId, term: 1, safekeepers, pageserver: pageserver.address });
    const client = await first.connect();
    await client.query('CREATE TABLE s3 (id int PRIMARY KEY, note text)');
    await client.query(`INSERT INTO s3 SELECT g, 'in s3 ' || g FROM generate_series(1, 5000) g`);
    const expected = await tableChecksums(client);
    await client.end();
    await first.process.stop();
    await pageserver.restart({ wipeLocal: true });
    const second = await ComputeNode.start(harness(), { timelineId, term: 2, safekeepers, pageserver: pageserver.address });
    const again = await second.connect();
    try {
      expect(await tableChecksums(again)).to.deep.equal(expected);
    } finally {
      await again.end();
    }
  });
});

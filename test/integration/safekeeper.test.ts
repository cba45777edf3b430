/**
 * Real safekeeper processes through their gRPC API: health and reflection, refusal of bad input with the right
 * status, a programmatic proposer (vote, append, flush acknowledgements, committed reads), fencing by term,
 * truncation of a divergent tail, restarts from disk (also with a torn last record), consumer progress, and a
 * prompt clean stop while an endless WAL stream is open.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { createChannel } from 'nice-grpc';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { formatLsn, type Lsn } from '../../src/lib/lsn.js';
import { agreementPoint, chooseDonor, proposerHistory, type TermSwitch } from '../../src/lib/consensus/term-history.js';
import type { AppendStart, TimelineStatus } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { HealthCheckResponse_ServingStatus, grpcHealthStatus, useHarness, waitFor } from '../harness/process.js';
import { reflectedServices } from '../harness/reflection.js';
import {
  AppendStream,
  WalFollower,
  createTimeline,
  newTimelineId,
  readWal,
  startSafekeepers,
  startSafekeeperWithTimeline,
  type SafekeeperNode,
} from '../harness/safekeepers.js';

/** Where the first term's WAL starts in these tests (a segment border, as after initdb). */
const BASE: Lsn = 0x1000000n;
const SYSTEM_ID = 42n;
/** The largest wal_data an Append message may carry. */
const MAX_WAL_MESSAGE_BYTES = 128 * 1024;

/** The ClientError a call fails with; fails the test when it succeeds or fails otherwise. */
async function callError(call: Promise<unknown>): Promise<ClientError> {
  try {
    await call;
  } catch (error) {
    expect(error, String(error)).to.be.instanceOf(ClientError);
    return error as ClientError;
  }
  expect.fail('expected the call to fail');
}

/** Checks a call or stream error has `code` and a message matching `pattern`. */
function expectStatus(error: unknown, code: Status, pattern: RegExp): void {
  expect(error, `expected ${Status[code]}, got ${String(error)}`).to.be.instanceOf(ClientError);
  const clientError = error as ClientError;
  expect(Status[clientError.code], clientError.details).to.equal(Status[code]);
  expect(clientError.details).to.match(pattern);
}

/** An AppendStart for `proposerId` in `term` with its `termHistory`. */
function startMessage(timelineId: string, term: bigint, proposerId: string, termHistory: TermSwitch[], startStreamingAt: Lsn): AppendStart {
  return { timelineId, term, proposerId, termHistory, startStreamingAt, systemId: SYSTEM_ID };
}

/** The last segment file of a timeline's WAL on disk. */
function lastSegmentFile(node: SafekeeperNode, timelineId: string): string {
  const directory = path.join(node.dataDir, 'timelines', timelineId, 'wal');
  const files = fs.readdirSync(directory).filter((name) => name.endsWith('.wal')).sort();
  expect(files, `segment files in ${directory}`).to.not.be.empty;
  return path.join(directory, files[files.length - 1]);
}

/** The parts of a status that must survive a restart. */
function durablePart(status: TimelineStatus) {
  return {
    promisedTerm: status.promisedTerm,
    promisedProposerId: status.promisedProposerId,
    termHistory: status.termHistory,
    timelineStartLsn: status.timelineStartLsn,
    flushLsn: status.flushLsn,
    systemId: status.systemId,
  };
}

describe('safekeeper (real processes over gRPC)', function () {
  this.timeout(60_000);
  const harness = useHarness();

  it('answers gRPC health SERVING and lists its services through reflection', async () => {
    const nodes = await startSafekeepers(harness(), 2);
    for (const node of nodes) {
      const channel = createChannel(node.address);
      harness().defer(() => channel.close());
      expect(HealthCheckResponse_ServingStatus[await grpcHealthStatus(channel)]).to.equal('SERVING');

      const services = await reflectedServices(node.address);
      expect(services).to.include.members(['spg99.safekeeper.v1.SafekeeperService', 'grpc.health.v1.Health']);
    }
  });

  describe('refuses bad input with the right status', () => {
    let node: SafekeeperNode;
    let timelineId: string;

    beforeEach(async () => {
      ({ node, timelineId } = await startSafekeeperWithTimeline(harness()));
    });

    it('a malformed timeline id: INVALID_ARGUMENT naming timeline_id', async () => {
      for (const call of [() => node.client.createTimeline({ timelineId: 'abc' }), () => node.client.getTimelineStatus({ timelineId: 'abc' })]) {
        expectStatus(await callError(call()), Status.INVALID_ARGUMENT, /timeline_id "abc" is not a timeline id/);
      }
      expectStatus(await callError(node.client.vote({ timelineId: '', term: 1n, proposerId: 'p' })), Status.INVALID_ARGUMENT, /timeline_id is required/);
    });

    it('an unknown timeline: NOT_FOUND; an existing one created again: ALREADY_EXISTS', async () => {
      const unknown = newTimelineId();
      const status = node.client.getTimelineStatus({ timelineId: unknown });
      expectStatus(await callError(status), Status.NOT_FOUND, new RegExp(`timeline ${unknown} does not exist`));
      expectStatus(await callError(node.client.vote({ timelineId: unknown, term: 1n, proposerId: 'p' })), Status.NOT_FOUND, /does not exist/);
      expectStatus(await callError(node.client.createTimeline({ timelineId })), Status.ALREADY_EXISTS, /already exists/);
    });

    it('a vote for a stale term: ABORTED naming the term already promised', async () => {
      await node.client.vote({ timelineId, term: 5n, proposerId: 'proposer-a' });
      const stale = node.client.vote({ timelineId, term: 3n, proposerId: 'proposer-b' });
      expectStatus(await callError(stale), Status.ABORTED, /term 3 is not above term 5 already promised/);
      // The same term for another proposer is stale too; for the same proposer it is a reconnect.
      expectStatus(await callError(node.client.vote({ timelineId, term: 5n, proposerId: 'proposer-b' })), Status.ABORTED, /term 5 already promised/);
      const { status } = await node.client.vote({ timelineId, term: 5n, proposerId: 'proposer-a' });
      expect(status?.promisedTerm).to.equal(5n);
      const zero = node.client.vote({ timelineId, term: 0n, proposerId: 'proposer-a' });
      expectStatus(await callError(zero), Status.INVALID_ARGUMENT, /term must be a positive term/);
    });

    it('Append with a gap: FAILED_PRECONDITION', async () => {
      await node.client.vote({ timelineId, term: 1n, proposerId: 'p1' });
      const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', [{ term: 1n, startLsn: BASE }], BASE));
      await stream.waitStarted();
      stream.send(randomBytes(100));
      await stream.waitFlush(BASE + 100n);
      stream.send(randomBytes(10), 0n, BASE + 200n);
      const gap = /WAL at 0\/10000C8 does not continue this safekeeper's log, which ends at 0\/1000064/;
      expectStatus(await stream.waitEnded(), Status.FAILED_PRECONDITION, gap);
      expect((await node.status(timelineId)).flushLsn).to.equal(BASE + 100n);
    });

    it('Append that cannot continue this log: FAILED_PRECONDITION', async () => {
      await node.client.vote({ timelineId, term: 1n, proposerId: 'p1' });
      const history = [{ term: 1n, startLsn: BASE }];
      const writer = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', history, BASE));
      await writer.waitFlush(writer.send(randomBytes(100)));
      await writer.close();
      const beyond = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', history, BASE + 500n));
      expectStatus(await beyond.waitEnded(), Status.FAILED_PRECONDITION, /cannot stream from 0\/10001F4: this safekeeper holds WAL only up to 0\/1000064/);
      const otherDatabase = new AppendStream(node.client, harness(), { ...startMessage(timelineId, 1n, 'p1', history, BASE + 100n), systemId: 7n });
      expectStatus(await otherDatabase.waitEnded(), Status.FAILED_PRECONDITION, /holds WAL of Postgres system 42, not 7/);
    });

    it('Append that does not begin with `start`: INVALID_ARGUMENT', async () => {
      const stream = new AppendStream(node.client, harness(), null);
      stream.sendRaw({ wal: { beginLsn: BASE, walData: Buffer.from('x'), commitLsn: 0n } });
      expectStatus(await stream.waitEnded(), Status.INVALID_ARGUMENT, /the first Append request must be `start`/);
    });

    it('Append of a message over 128 KiB: INVALID_ARGUMENT (128 KiB itself is fine)', async () => {
      await node.client.vote({ timelineId, term: 1n, proposerId: 'p1' });
      const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', [{ term: 1n, startLsn: BASE }], BASE));
      const end = stream.send(randomBytes(MAX_WAL_MESSAGE_BYTES));
      await stream.waitFlush(end);
      stream.send(randomBytes(MAX_WAL_MESSAGE_BYTES + 1));
      expectStatus(await stream.waitEnded(), Status.INVALID_ARGUMENT, /wal_data of 131073 bytes is over the limit of 131072/);
      expect((await node.status(timelineId)).flushLsn).to.equal(end);
    });

    it('Append before a vote, or with a history not ending in its term: FAILED_PRECONDITION', async () => {
      const unvoted = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', [{ term: 1n, startLsn: BASE }], BASE));
      expectStatus(await unvoted.waitEnded(), Status.FAILED_PRECONDITION, /has not been voted for/);
      await node.client.vote({ timelineId, term: 2n, proposerId: 'p2' });
      const wrongHistory = new AppendStream(node.client, harness(), startMessage(timelineId, 2n, 'p2', [{ term: 1n, startLsn: BASE }], BASE));
      expectStatus(await wrongHistory.waitEnded(), Status.FAILED_PRECONDITION, /must end with its own term 2/);
    });

    it('StreamWal without a start LSN: INVALID_ARGUMENT', async () => {
      expectStatus(await callError(readWal(node.client, { timelineId, startLsn: 0n, endLsn: 0n })), Status.INVALID_ARGUMENT, /start_lsn is required/);
    });

  });

  describe('consumer progress', () => {
    let node: SafekeeperNode;
    let timelineId: string;

    beforeEach(async () => {
      ({ node, timelineId } = await startSafekeeperWithTimeline(harness()));
    });

    it('beyond the commit LSN is refused with INVALID_ARGUMENT; a valid report shows in the status', async () => {
      await node.client.vote({ timelineId, term: 1n, proposerId: 'p1' });
      const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', [{ term: 1n, startLsn: BASE }], BASE));
      const end = stream.send(randomBytes(1000));
      await stream.waitFlush(end);
      // Commit only the first 600 bytes, with a heartbeat.
      stream.send(Buffer.alloc(0), BASE + 600n);
      await waitFor(async () => (await node.status(timelineId)).commitLsn === BASE + 600n, { what: 'commit LSN 0/1000258' });

      const tooFar = node.client.reportConsumerProgress({ timelineId, consumerId: 'pageserver-1', ingestedLsn: end, durableLsn: BASE + 601n });
      expectStatus(await callError(tooFar), Status.INVALID_ARGUMENT, /durable_lsn 0\/1000259 is beyond the commit LSN 0\/1000258/);
      const anonymous = node.client.reportConsumerProgress({ timelineId, consumerId: '', durableLsn: BASE });
      expectStatus(await callError(anonymous), Status.INVALID_ARGUMENT, /consumer_id is required/);

      const report = { timelineId, consumerId: 'pageserver-1', ingestedLsn: BASE + 600n, durableLsn: BASE + 500n };
      const { status } = await node.client.reportConsumerProgress(report);
      expect(status?.consumerDurableLsn).to.equal(BASE + 500n);
      expect((await node.status(timelineId)).consumerDurableLsn).to.equal(BASE + 500n);
      // Nothing below the report is removed while the segment is still in use.
      expect((await node.status(timelineId)).oldestLsn).to.equal(BASE);
    });

    it('lets the safekeeper remove whole segments below the durable LSN, for good', async () => {
      // Start 4 KiB before a segment border so that a little WAL spans two segment files.
      const start = 2n * 0x1000000n - 4096n;
      const border = 2n * 0x1000000n;
      await node.client.vote({ timelineId, term: 1n, proposerId: 'p1' });
      const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'p1', [{ term: 1n, startLsn: start }], start));
      const wal = randomBytes(8192);
      const end = stream.send(wal);
      await stream.waitFlush(end);
      stream.send(Buffer.alloc(0), end);
      await waitFor(async () => (await node.status(timelineId)).commitLsn === end, { what: 'commit at the end of WAL' });
      const walDirectory = path.join(node.dataDir, 'timelines', timelineId, 'wal');
      expect(fs.readdirSync(walDirectory).filter((name) => name.endsWith('.wal'))).to.have.length(2);

      const { status } = await node.client.reportConsumerProgress({ timelineId, consumerId: 'pageserver-1', ingestedLsn: end, durableLsn: border + 10n });
      expect(status).to.deep.include({ consumerDurableLsn: border + 10n, oldestLsn: border });
      expect(fs.readdirSync(walDirectory).filter((name) => name.endsWith('.wal'))).to.have.length(1);
      const removed = readWal(node.client, { timelineId, startLsn: start, endLsn: end });
      expectStatus(await callError(removed), Status.FAILED_PRECONDITION, /WAL at 0\/1FFF000 is no longer on this safekeeper \(oldest held: 0\/2000000\)/);
      expect((await readWal(node.client, { timelineId, startLsn: border, endLsn: end })).data.equals(wal.subarray(4096))).to.equal(true);

      await stream.close();
      await node.restart();
      expect(await node.status(timelineId)).to.deep.include({ oldestLsn: border, consumerDurableLsn: border + 10n, flushLsn: end });
      expect((await readWal(node.client, { timelineId, startLsn: border, endLsn: end })).data.equals(wal.subarray(4096))).to.equal(true);
    });
  });

  it('accepts WAL from an elected proposer, acknowledges flushes, and serves exactly the committed WAL', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());

    const { status: voted } = await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    expect(voted).to.deep.include({ promisedTerm: 1n, promisedProposerId: 'compute-1', flushLsn: 0n, termHistory: [] });

    const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', [{ term: 1n, startLsn: BASE }], BASE));
    const greeting = await stream.waitStarted();
    expect(greeting).to.deep.equal({ term: 1n, flushLsn: BASE, commitLsn: 0n });

    const chunks = [randomBytes(3000), randomBytes(5000), randomBytes(2000)];
    const ends = chunks.map((chunk) => stream.send(chunk));
    const acknowledged = await stream.waitFlush(ends[2]);
    expect(acknowledged.term).to.equal(1n);
    expect(acknowledged.flushLsn).to.equal(ends[2]);
    // Acknowledgements only go forward.
    const flushes = stream.responses.map((response) => response.flushLsn);
    expect(flushes).to.deep.equal([...flushes].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));

    // The proposer tells the commit LSN with the next WAL: the first two chunks are on a quorum.
    const commitLsn = ends[1];
    const fourth = randomBytes(700);
    const end = stream.send(fourth, commitLsn);
    const withCommit = await stream.waitFlush(end);
    expect(withCommit.commitLsn).to.equal(commitLsn);

    const status = await node.status(timelineId);
    expect(status).to.deep.include({ flushLsn: end, commitLsn, timelineStartLsn: BASE, systemId: SYSTEM_ID, termHistory: [{ term: 1n, startLsn: BASE }] });

    // Committed WAL only: exactly the first two chunks, and nothing more before the first keepalive.
    const follower = new WalFollower(node.client, harness(), { timelineId, startLsn: BASE });
    const keepalive = await follower.waitForKeepalive();
    expect(follower.position).to.equal(commitLsn);
    expect(follower.data.equals(Buffer.concat(chunks.slice(0, 2)))).to.equal(true);
    expect(keepalive).to.deep.include({ beginLsn: commitLsn, commitLsn, flushLsn: end });

    // Everything flushed, with include_uncommitted; and a bounded read from the middle.
    const all = Buffer.concat([...chunks, fourth]);
    const uncommitted = await readWal(node.client, { timelineId, startLsn: BASE, endLsn: end, includeUncommitted: true });
    expect(uncommitted.data.equals(all)).to.equal(true);
    expect(uncommitted.flushLsn).to.equal(end);
    const middle = await readWal(node.client, { timelineId, startLsn: BASE + 100n, endLsn: BASE + 4000n });
    expect(middle.data.equals(all.subarray(100, 4000))).to.equal(true);

    // A heartbeat moves the commit LSN, and the open committed stream follows.
    stream.send(Buffer.alloc(0), end);
    await follower.waitForPosition(end);
    expect(follower.data.equals(all)).to.equal(true);
    expect(await stream.close()).to.equal(undefined);
  });

  it('fences a proposer whose term was superseded', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());

    const { status: first } = await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    const oldWriter = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', [{ term: 1n, startLsn: BASE }], BASE));
    const written = oldWriter.send(randomBytes(4096));
    await oldWriter.waitFlush(written);

    // Another proposer is elected with term 2: the open term-1 stream ends at once with ABORTED.
    const { status: second } = await node.client.vote({ timelineId, term: 2n, proposerId: 'compute-2' });
    expect(second?.promisedTerm).to.equal(2n);
    expectStatus(await oldWriter.waitEnded(), Status.ABORTED, /term 1 was superseded by term 2/);

    // Everything the old writer tries now is refused.
    const retry = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', [{ term: 1n, startLsn: BASE }], written));
    expectStatus(await retry.waitEnded(), Status.ABORTED, /term 1 was superseded by term 2 .*fenced/);
    expectStatus(await callError(node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' })), Status.ABORTED, /already promised/);

    // The new writer continues the log from where the old one's WAL ends.
    expect(first?.flushLsn).to.equal(0n);
    const donorStatus = await node.status(timelineId);
    const donor = { history: donorStatus.termHistory, flushLsn: donorStatus.flushLsn, timelineStartLsn: donorStatus.timelineStartLsn };
    const history = proposerHistory(donor, 2n, BASE);
    expect(history).to.deep.equal([{ term: 1n, startLsn: BASE }, { term: 2n, startLsn: written }]);
    const newWriter = new AppendStream(node.client, harness(), startMessage(timelineId, 2n, 'compute-2', history, written));
    const end = newWriter.send(randomBytes(100));
    await newWriter.waitFlush(end);
    expect((await node.status(timelineId)).termHistory).to.deep.equal(history);
  });

  it('a refused Append leaves the current writer\'s stream alone', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());
    await node.client.vote({ timelineId, term: 2n, proposerId: 'compute-2' });
    const history = [{ term: 2n, startLsn: BASE }];
    const writer = new AppendStream(node.client, harness(), startMessage(timelineId, 2n, 'compute-2', history, BASE));
    await writer.waitFlush(writer.send(randomBytes(100)));

    // Another proposer with the same term (never voted for it), and one with a term nobody voted for.
    const sameTerm = new AppendStream(node.client, harness(), startMessage(timelineId, 2n, 'intruder', history, BASE + 100n));
    expectStatus(await sameTerm.waitEnded(), Status.ABORTED, /fenced/);
    const unvoted = new AppendStream(node.client, harness(), startMessage(timelineId, 3n, 'compute-3', [{ term: 3n, startLsn: BASE }], BASE + 100n));
    expectStatus(await unvoted.waitEnded(), Status.FAILED_PRECONDITION, /call Vote first/);

    expect(writer.ended, `the writer's stream ended: ${String(writer.error)}`).to.equal(false);
    await writer.waitFlush(writer.send(randomBytes(100)));
    expect((await node.status(timelineId)).flushLsn).to.equal(BASE + 200n);
  });

  it('a new term truncates a divergent tail of an old term and replaces it with the elected history', async () => {
    const [a, b, c] = await startSafekeepers(harness(), 3);
    const timelineId = newTimelineId();
    await createTimeline([a, b, c], timelineId);
    const history1 = [{ term: 1n, startLsn: BASE }];

    // Term 1 writes a common prefix to all three, then a tail that only reaches A.
    const common = randomBytes(6000);
    const tail1 = randomBytes(3000);
    const streams1 = await Promise.all(
      [a, b, c].map(async (node) => {
        await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
        return new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', history1, BASE));
      }),
    );
    const prefixEnd = BASE + BigInt(common.length);
    for (const stream of streams1) stream.send(common);
    await Promise.all(streams1.map((stream) => stream.waitFlush(prefixEnd)));
    const tailEnd = streams1[0].send(tail1, prefixEnd);
    await streams1[0].waitFlush(tailEnd);
    for (const stream of streams1) await stream.close();

    // Term 2 is elected by B and C (A is unreachable): both have the shorter log; it writes other WAL.
    const voters2 = await Promise.all(
      [b, c].map(async (node) => {
        const { status } = await node.client.vote({ timelineId, term: 2n, proposerId: 'compute-2' });
        return { node, history: status!.termHistory, flushLsn: status!.flushLsn, timelineStartLsn: status!.timelineStartLsn };
      }),
    );
    const donor2 = chooseDonor(voters2);
    expect(donor2.flushLsn).to.equal(prefixEnd);
    const history2 = proposerHistory(donor2, 2n, BASE);
    const term2Wal = randomBytes(2000);
    const term2End = prefixEnd + BigInt(term2Wal.length);
    const streams2 = voters2.map((voter) => {
      const point = agreementPoint(history2, prefixEnd, voter.history, voter.flushLsn);
      expect(point).to.equal(prefixEnd);
      return new AppendStream(voter.node.client, harness(), startMessage(timelineId, 2n, 'compute-2', history2, point));
    });
    for (const stream of streams2) stream.send(term2Wal, prefixEnd);
    await Promise.all(streams2.map((stream) => stream.waitFlush(term2End)));
    for (const stream of streams2) await stream.close();

    // Term 3 gets votes from all three; the donor is the most advanced log by (last term, flush): B or C.
    const voters3 = await Promise.all(
      [a, b, c].map(async (node) => {
        const { status } = await node.client.vote({ timelineId, term: 3n, proposerId: 'compute-3' });
        return { node, history: status!.termHistory, flushLsn: status!.flushLsn, timelineStartLsn: status!.timelineStartLsn };
      }),
    );
    expect(voters3[0].flushLsn).to.equal(tailEnd);
    const donor3 = chooseDonor(voters3);
    expect(donor3.node).to.not.equal(a);
    expect(donor3.flushLsn).to.equal(term2End);
    const history3 = proposerHistory(donor3, 3n, BASE);
    expect(history3).to.deep.equal([{ term: 1n, startLsn: BASE }, { term: 2n, startLsn: prefixEnd }, { term: 3n, startLsn: term2End }]);

    // A's log agrees with the proposer's only up to the end of the common prefix.
    const pointA = agreementPoint(history3, term2End, voters3[0].history, voters3[0].flushLsn);
    expect(formatLsn(pointA)).to.equal(formatLsn(prefixEnd));
    const streamA = new AppendStream(a.client, harness(), startMessage(timelineId, 3n, 'compute-3', history3, pointA));
    const answer = await streamA.waitStarted();
    expect(answer.flushLsn).to.equal(prefixEnd);
    const truncated = await a.status(timelineId);
    expect(truncated.flushLsn).to.equal(prefixEnd);
    expect(truncated.termHistory).to.deep.equal(history3);

    // The proposer brings A up to date with the donor's WAL (read from the donor), then writes its own.
    const fromDonor = await readWal(donor3.node.client, { timelineId, startLsn: pointA, endLsn: term2End, includeUncommitted: true });
    expect(fromDonor.data.equals(term2Wal)).to.equal(true);
    streamA.send(fromDonor.data, 0n, pointA);
    const term3Wal = randomBytes(500);
    const end = streamA.send(term3Wal);
    await streamA.waitFlush(end);

    const onA = await readWal(a.client, { timelineId, startLsn: BASE, endLsn: end, includeUncommitted: true });
    expect(onA.data.equals(Buffer.concat([common, term2Wal, term3Wal]))).to.equal(true);
    expect(onA.data.includes(tail1)).to.equal(false);
    expect((await a.status(timelineId)).termHistory).to.deep.equal(history3);
  });

  it('a restarted safekeeper answers the same durable state from its disk (after SIGTERM and after kill -9)', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());
    await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    const history = [{ term: 1n, startLsn: BASE }];
    let stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', history, BASE));
    const first = randomBytes(10_000);
    let end = stream.send(first);
    await stream.waitFlush(end);
    stream.send(Buffer.alloc(0), end);
    await waitFor(async () => (await node.status(timelineId)).commitLsn === end, { what: 'the commit LSN to reach the flush LSN' });
    await stream.close();
    const before = await node.status(timelineId);
    const oldAddress = node.address;

    const exit = await node.stop();
    expect(exit).to.deep.equal({ code: 0, signal: null });
    await node.restart();
    expect(node.address).to.equal(oldAddress);
    const afterStop = await node.status(timelineId);
    expect(durablePart(afterStop)).to.deep.equal(durablePart(before));
    // A clean stop persists the commit LSN too.
    expect(afterStop.commitLsn).to.equal(before.commitLsn);

    // Acknowledged WAL and a promise survive a crash.
    await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', history, end));
    const second = randomBytes(20_000);
    end = stream.send(second);
    await stream.waitFlush(end);
    const { status: promised } = await node.client.vote({ timelineId, term: 7n, proposerId: 'compute-7' });
    await node.restart({ crash: true });
    const afterCrash = await node.status(timelineId);
    expect(durablePart(afterCrash)).to.deep.equal(durablePart(promised!));
    expect(afterCrash).to.deep.include({ flushLsn: end, promisedTerm: 7n, promisedProposerId: 'compute-7' });
    expect(afterCrash.commitLsn >= before.commitLsn && afterCrash.commitLsn <= end).to.equal(true);
    const wal = await readWal(node.client, { timelineId, startLsn: BASE, endLsn: end, includeUncommitted: true });
    expect(wal.data.equals(Buffer.concat([first, second]))).to.equal(true);
  });

  it('drops a timeline whose creation a crash interrupted (it was never acknowledged) and starts', async () => {
    const [node] = await startSafekeepers(harness(), 1);
    const kept = newTimelineId();
    await createTimeline([node], kept);
    await node.kill9();
    // What a crash between the directory's mkdir and the control file's rename leaves behind.
    const interrupted = newTimelineId();
    const directory = path.join(node.dataDir, 'timelines', interrupted);
    fs.mkdirSync(path.join(directory, 'wal'), { recursive: true });
    fs.writeFileSync(path.join(directory, 'control.json.tmp'), '{"version":1,"timeli');
    await node.restart();
    const removal = node.process.findLine((line) => line.msg.startsWith('removing a timeline whose creation'));
    expect(removal).to.deep.include({ level: 'warn', timelineId: interrupted });
    expect(fs.existsSync(directory)).to.equal(false);
    expect((await node.client.listTimelines({})).timelines.map((timeline) => timeline.timelineId)).to.deep.equal([kept]);
    expectStatus(await callError(node.client.getTimelineStatus({ timelineId: interrupted })), Status.NOT_FOUND, /does not exist/);
    // The caller got no answer, so it retries the create, which must work.
    const { status } = await node.client.createTimeline({ timelineId: interrupted });
    expect(status?.timelineId).to.equal(interrupted);
  });

  it('cuts a torn last record at restart: the log ends at the last whole record and continues from there', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());
    await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    const history = [{ term: 1n, startLsn: BASE }];
    const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', history, BASE));
    // Each message is one record (chunk) on disk.
    const records = [randomBytes(1000), randomBytes(1000), randomBytes(1000)];
    const ends = records.map((record) => stream.send(record, BASE + 1000n));
    await stream.waitFlush(ends[2]);
    await stream.close();
    expect(await node.stop()).to.deep.equal({ code: 0, signal: null });

    const file = lastSegmentFile(node, timelineId);
    fs.truncateSync(file, fs.statSync(file).size - 5);
    await node.restart();

    const cut = node.process.findLine((line) => line.msg.startsWith('cut a torn WAL tail'));
    expect(cut, 'the restart reports the cut').to.not.equal(undefined);
    expect(cut).to.deep.include({ level: 'warn', timelineId, file });
    const status = await node.status(timelineId);
    expect(status.flushLsn).to.equal(ends[1]);
    expect(status.commitLsn).to.equal(BASE + 1000n);
    expect(status.termHistory).to.deep.equal(history);

    // Nothing beyond the cut is ever served: the stream stops at the new end and idles there.
    const follower = new WalFollower(node.client, harness(), { timelineId, startLsn: BASE, includeUncommitted: true });
    const keepalive = await follower.waitForKeepalive();
    expect(keepalive.flushLsn).to.equal(ends[1]);
    expect(follower.data.equals(Buffer.concat(records.slice(0, 2)))).to.equal(true);

    // The same proposer reconnects and continues from the new end; WAL at the old end is refused as a gap.
    await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    const gap = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', history, ends[1]));
    gap.send(randomBytes(10), 0n, ends[2]);
    expectStatus(await gap.waitEnded(), Status.FAILED_PRECONDITION, /does not continue/);
    const resumed = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', history, ends[1]));
    const replacement = randomBytes(1500);
    const end = resumed.send(replacement);
    await resumed.waitFlush(end);
    await follower.waitForPosition(end);
    expect(follower.data.equals(Buffer.concat([records[0], records[1], replacement]))).to.equal(true);
  });

  it('DeleteTimeline ends the timeline\'s streams and removes it from disk for good', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());
    await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    const writer = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', [{ term: 1n, startLsn: BASE }], BASE));
    await writer.waitFlush(writer.send(randomBytes(1000)));
    const follower = new WalFollower(node.client, harness(), { timelineId, startLsn: BASE, includeUncommitted: true });
    await follower.waitForPosition(BASE + 1000n);

    await node.client.deleteTimeline({ timelineId });
    expectStatus(await writer.waitEnded(), Status.ABORTED, /was deleted/);
    expectStatus(await follower.waitEnded(), Status.NOT_FOUND, /was deleted/);
    expectStatus(await callError(node.client.getTimelineStatus({ timelineId })), Status.NOT_FOUND, /does not exist/);
    expectStatus(await callError(node.client.deleteTimeline({ timelineId })), Status.NOT_FOUND, /does not exist/);
    expect(fs.existsSync(path.join(node.dataDir, 'timelines', timelineId))).to.equal(false);

    await node.restart();
    expect((await node.client.listTimelines({})).timelines).to.deep.equal([]);
  });

  it('stops promptly and cleanly on SIGTERM while an endless StreamWal is open', async () => {
    const { node, timelineId } = await startSafekeeperWithTimeline(harness());
    await node.client.vote({ timelineId, term: 1n, proposerId: 'compute-1' });
    const stream = new AppendStream(node.client, harness(), startMessage(timelineId, 1n, 'compute-1', [{ term: 1n, startLsn: BASE }], BASE));
    const end = stream.send(randomBytes(5000));
    await stream.waitFlush(end);
    stream.send(Buffer.alloc(0), end);

    const follower = new WalFollower(node.client, harness(), { timelineId, startLsn: BASE });
    await follower.waitForPosition(end);

    const started = Date.now();
    const exit = await node.stop();
    const elapsedMs = Date.now() - started;
    expect(exit).to.deep.equal({ code: 0, signal: null });
    expect(elapsedMs, 'time from SIGTERM to exit').to.be.below(5000);
    expect(node.process.findLine((line) => line.msg === 'stopped cleanly')).to.not.equal(undefined);
    // Both streams are ended by the server, as retryable.
    expectStatus(await follower.waitEnded(), Status.UNAVAILABLE, /./);
    expectStatus(await stream.waitEnded(), Status.UNAVAILABLE, /./);
  });
});

/**
 * PullTimeline with real safekeeper processes: a safekeeper without a timeline copies the committed WAL of its peers
 * from the segment it is asked for (not the timeline's start), adopts the highest term any peer promised (so an old
 * writer cannot win its vote), refuses when too few peers answer, and leaves alone a copy its writer can still feed.
 */
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { WAL_SEGMENT_SIZE, type Lsn } from '../../src/lib/lsn.js';
import { useHarness, waitFor } from '../harness/process.js';
import { AppendStream, createTimeline, newTimelineId, readWal, startSafekeepers } from '../harness/safekeepers.js';

const SYSTEM_ID = 42n;
/** The timeline's start: in segment 1, not at its beginning. */
const BASE: Lsn = WAL_SEGMENT_SIZE + 40n;
const MESSAGE_BYTES = 128 * 1024;

async function refusal(call: Promise<unknown>): Promise<ClientError> {
  const outcome = await call.then(
    () => null,
    (error: unknown) => error,
  );
  if (!(outcome instanceof ClientError)) throw new Error(`expected a gRPC error, got ${outcome === null ? 'success' : String(outcome)}`);
  return outcome;
}

describe('PullTimeline (safekeepers, real processes)', function () {
  this.timeout(120_000);
  const harness = useHarness();

  it('copies committed WAL from a recent segment with the highest promised term, and refuses what is unsafe or not needed', async () => {
    const h = harness();
    const [a, b, c] = await startSafekeepers(h, 3);
    const timelineId = newTimelineId();
    // c was down when the timeline was created and written.
    await createTimeline([a, b], timelineId);
    const history = [{ term: 1n, startLsn: BASE }];
    const streams = [];
    for (const node of [a, b]) {
      await node.client.vote({ timelineId, term: 1n, proposerId: 'p1' });
      const stream = new AppendStream(node.client, h, { timelineId, term: 1n, proposerId: 'p1', termHistory: history, startStreamingAt: BASE, systemId: SYSTEM_ID });
      await stream.waitStarted();
      streams.push(stream);
    }
    // About 20 MiB: into segment 2; each message carries the commit LSN of the previous one.
    const wal = randomBytes(20 * 1024 * 1024);
    let end = BASE;
    for (let offset = 0; offset < wal.length; offset += MESSAGE_BYTES) {
      const piece = wal.subarray(offset, offset + MESSAGE_BYTES);
      for (const stream of streams) stream.send(piece, end);
      end += BigInt(piece.length);
      if (offset % (4 * 1024 * 1024) === 0) await Promise.all(streams.map((stream) => stream.waitFlush(end)));
    }
    await Promise.all(streams.map((stream) => stream.waitFlush(end)));
    for (const stream of streams) stream.send(Buffer.alloc(0), end);
    await waitFor(async () => (await a.status(timelineId)).commitLsn === end && (await b.status(timelineId)).commitLsn === end, { what: 'the commit LSN known' });
    // A newer writer's promise on one peer only (its election went no further yet).
    await a.client.vote({ timelineId, term: 5n, proposerId: 'p2' });

    // Too few peers: with b down, a alone cannot tell every term that may have been elected.
    await b.stop();
    const tooFew = await refusal(c.client.pullTimeline({ timelineId, peerAddresses: [a.address, b.address], startLsn: 0n }));
    expect(tooFew.code, tooFew.details).to.equal(Status.UNAVAILABLE);
    expect(tooFew.details).to.match(/only 1 of 2 peers answered/);
    await b.restart();

    // From the segment of the given LSN (as the pageserver's durable LSN would be), not from the timeline's start.
    const startLsn = 2n * WAL_SEGMENT_SIZE + 1000n;
    const pulled = await c.client.pullTimeline({ timelineId, peerAddresses: [a.address, b.address], startLsn });
    expect(pulled.copiedBytes).to.equal(end - 2n * WAL_SEGMENT_SIZE);
    const status = await c.status(timelineId);
    expect(status.oldestLsn).to.equal(2n * WAL_SEGMENT_SIZE);
    expect(status.flushLsn).to.equal(end);
    expect(status.commitLsn).to.equal(end);
    expect(status.timelineStartLsn).to.equal(BASE);
    expect(status.termHistory).to.deep.equal(history);
    expect(status.systemId).to.equal(SYSTEM_ID);
    expect(status.promisedTerm, 'the highest term a peer promised').to.equal(5n);
    expect(status.promisedProposerId).to.equal('p2');
    const copied = await readWal(c.client, { timelineId, startLsn: 2n * WAL_SEGMENT_SIZE, endLsn: end });
    expect(copied.data.equals(wal.subarray(Number(2n * WAL_SEGMENT_SIZE - BASE))), 'the copied WAL is the peers\' WAL').to.equal(true);

    // The old writer cannot get its vote: its promise went with it, but the pull restored it.
    const old = await refusal(c.client.vote({ timelineId, term: 1n, proposerId: 'p1' }));
    expect(old.code).to.equal(Status.ABORTED);

    // A copy that holds WAL its peers still have is the writer's to feed, not replaced.
    const notNeeded = await refusal(b.client.pullTimeline({ timelineId, peerAddresses: [a.address, c.address], startLsn: 0n }));
    expect(notNeeded.code, notNeeded.details).to.equal(Status.FAILED_PRECONDITION);

    // It survives a restart as a whole timeline.
    await c.restart({ crash: true });
    const reloaded = await c.status(timelineId);
    expect([reloaded.oldestLsn, reloaded.flushLsn, reloaded.promisedTerm]).to.deep.equal([2n * WAL_SEGMENT_SIZE, end, 5n]);
  });
});

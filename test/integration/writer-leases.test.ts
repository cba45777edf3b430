/**
 * Writer leases and terms against a real redis-server: one writer per timeline, terms that only grow (across
 * releases, takeovers and a kill -9 of Redis), exactly one winner among concurrent acquires, fenced writers told by
 * which term, and a model-based property over random interleavings of acquire, renew, release and expiry.
 */
import crypto from 'node:crypto';
import { expect } from 'chai';
import fc from 'fast-check';
import { ServerError, Status } from '../../src/lib/grpc/errors.js';
import { WriterLeases, writerLeaseKey, writerTermKey, type WriterLeaseState } from '../../src/control-plane/leases.js';
import { useHarness, waitFor } from '../harness/process.js';
import { RedisNode } from '../harness/redis.js';

/** A new timeline id. */
function newTimelineId(): string {
  return `tl-${crypto.randomBytes(16).toString('hex')}`;
}

/** Awaits `promise`, expects it to reject with a ServerError of `code` whose details match `details`; returns it. */
async function expectServerError(promise: Promise<unknown>, code: Status, details?: RegExp): Promise<ServerError> {
  let result: unknown;
  try {
    result = await promise;
  } catch (error) {
    expect(error, String(error)).to.be.instanceOf(ServerError);
    const serverError = error as ServerError;
    expect(Status[serverError.code], serverError.details).to.equal(Status[code]);
    if (details) expect(serverError.details).to.match(details);
    return serverError;
  }
  return expect.fail(`expected ${Status[code]}, got ${JSON.stringify(result, (_key, value: unknown) => (typeof value === 'bigint' ? `${value}n` : value))}`);
}

/** Polls the lease state (Redis' clock) until nobody holds the timeline's lease. */
async function waitUntilExpired(leases: WriterLeases, timelineId: string): Promise<WriterLeaseState> {
  return waitFor(
    async () => {
      const state = await leases.get(timelineId);
      return state.holder === null && state;
    },
    { what: `the writer lease of ${timelineId} to expire`, timeoutMs: 10_000, intervalMs: 10 },
  );
}

/** Short leases for the tests that wait for an expiry; long ones never expire during a test. */
const SHORT_TTL_MS = 200;
const LONG_TTL_MS = 300_000;

describe('writer leases (a real redis-server)', function () {
  this.timeout(120_000);
  const harness = useHarness();

  async function start(options: { appendfsync?: 'always' } = {}): Promise<{ node: RedisNode; leases: WriterLeases }> {
    const node = await RedisNode.start(harness(), options);
    const leases = new WriterLeases(await node.client(), { minTtlMs: 1, maxTtlMs: LONG_TTL_MS });
    return { node, leases };
  }

  it('grants term 1, answers the same lease to a retried acquire, renews, and shows the holder', async () => {
    const { node, leases } = await start();
    const timelineId = newTimelineId();
    expect(await leases.get(timelineId)).to.include({ latestTerm: 0n, lease: null, holder: null });

    const first = await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: 5_000 });
    expect(first.newTerm).to.equal(true);
    expect(first.lease).to.include({ timelineId, computeId: 'compute-a', term: 1n });
    expect(first.lease.expiresAt.getTime() - first.serverTime.getTime()).to.equal(5_000);
    expect(first.lease.grantedAt.getTime()).to.equal(first.serverTime.getTime());
    // Expiry is Redis' clock: within a second of what TIME says.
    const [seconds] = await (await node.client()).time();
    expect(Math.abs(first.serverTime.getTime() - Number(seconds) * 1000)).to.be.below(2_000);

    const retried = await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: 6_000 });
    expect(retried.newTerm).to.equal(false);
    expect(retried.lease.term).to.equal(1n);
    expect(retried.lease.grantedAt).to.deep.equal(first.lease.grantedAt);
    expect(retried.lease.expiresAt.getTime() - retried.serverTime.getTime()).to.equal(6_000);

    const renewed = await leases.renew({ timelineId, computeId: 'compute-a', term: 1n, ttlMs: 7_000 });
    expect(renewed.lease).to.include({ computeId: 'compute-a', term: 1n });
    expect(renewed.lease.expiresAt.getTime() - renewed.serverTime.getTime()).to.equal(7_000);

    const state = await leases.get(timelineId);
    expect(state.latestTerm).to.equal(1n);
    expect(state.holder).to.deep.equal(renewed.lease);
    expect(state.lease).to.include({ releasedAt: null, finalLsn: null });
  });

  it('keeps its state in the documented keys', async () => {
    const { node, leases } = await start();
    const timelineId = newTimelineId();
    await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: 5_000 });
    const client = await node.client();
    expect(await client.get(writerTermKey(timelineId))).to.equal('1');
    expect(await client.hget(writerLeaseKey(timelineId), 'computeId')).to.equal('compute-a');
    expect(writerTermKey(timelineId)).to.equal(`spg99:writer-term:{${timelineId}}`);
    expect(writerLeaseKey(timelineId)).to.equal(`spg99:writer-lease:{${timelineId}}`);
  });

  it('refuses a second compute while the lease is held, and lets it take over with a higher term after expiry', async () => {
    const { leases } = await start();
    const timelineId = newTimelineId();
    await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: SHORT_TTL_MS });
    await expectServerError(
      leases.acquire({ timelineId, computeId: 'compute-b', ttlMs: LONG_TTL_MS }),
      Status.FAILED_PRECONDITION,
      /compute compute-a holds the lease of term 1 until .*wait for the lease to expire/,
    );

    const expired = await waitUntilExpired(leases, timelineId);
    expect(expired.lease).to.include({ computeId: 'compute-a', term: 1n, releasedAt: null });
    const takeover = await leases.acquire({ timelineId, computeId: 'compute-b', ttlMs: LONG_TTL_MS });
    expect(takeover).to.deep.include({ newTerm: true });
    expect(takeover.lease.term).to.equal(2n);
    expect(takeover.lease.grantedAt.getTime()).to.be.at.least(expired.lease!.expiresAt.getTime());

    // The old writer is fenced: its renew names the newer term, its acquire is refused, its release is a no-op.
    await expectServerError(
      leases.renew({ timelineId, computeId: 'compute-a', term: 1n }),
      Status.ABORTED,
      /this writer was superseded by term 2 \(compute compute-b\)/,
    );
    await expectServerError(leases.acquire({ timelineId, computeId: 'compute-a' }), Status.FAILED_PRECONDITION, /compute compute-b holds the lease of term 2/);
    expect((await leases.release({ timelineId, computeId: 'compute-a', term: 1n })).released).to.equal(false);
    expect((await leases.get(timelineId)).holder).to.include({ computeId: 'compute-b', term: 2n });
  });

  it('lets the holder renew, or acquire again, past expiry as long as nobody took over', async () => {
    const { leases } = await start();
    const timelineId = newTimelineId();
    await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: SHORT_TTL_MS });
    await waitUntilExpired(leases, timelineId);
    const renewed = await leases.renew({ timelineId, computeId: 'compute-a', term: 1n, ttlMs: SHORT_TTL_MS });
    expect(renewed.lease.term).to.equal(1n);
    expect((await leases.get(timelineId)).holder).to.include({ computeId: 'compute-a', term: 1n });
    await waitUntilExpired(leases, timelineId);
    const again = await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: LONG_TTL_MS });
    expect(again).to.deep.include({ newTerm: false });
    expect(again.lease.term).to.equal(1n);
  });

  it('ends the lease on release (final LSN kept): renew is ABORTED, the next acquire gets a higher term', async () => {
    const { leases } = await start();
    const timelineId = newTimelineId();
    await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: LONG_TTL_MS });
    const released = await leases.release({ timelineId, computeId: 'compute-a', term: 1n, finalLsn: 0x1_6b3748n });
    expect(released.released).to.equal(true);
    const state = await leases.get(timelineId);
    expect(state).to.include({ latestTerm: 1n, holder: null });
    expect(state.lease).to.include({ computeId: 'compute-a', term: 1n, finalLsn: 0x1_6b3748n });
    expect(state.lease!.releasedAt).to.deep.equal(released.serverTime);

    expect((await leases.release({ timelineId, computeId: 'compute-a', term: 1n })).released).to.equal(false);
    await expectServerError(
      leases.renew({ timelineId, computeId: 'compute-a', term: 1n }),
      Status.ABORTED,
      /the lease of term 1 .* was released at .*acquire a new lease \(a higher term\)/,
    );
    // The same compute too: a release is the end of that writer.
    const next = await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: LONG_TTL_MS });
    expect(next).to.deep.include({ newTerm: true });
    expect(next.lease.term).to.equal(2n);
    expect((await leases.get(timelineId)).lease).to.include({ releasedAt: null, finalLsn: null });

    await leases.release({ timelineId, computeId: 'compute-a', term: 2n });
    const other = await leases.acquire({ timelineId, computeId: 'compute-b', ttlMs: LONG_TTL_MS });
    expect(other.lease.term).to.equal(3n);
    await expectServerError(leases.renew({ timelineId, computeId: 'compute-a', term: 2n }), Status.ABORTED, /superseded by term 3 \(compute compute-b\)/);
    await expectServerError(leases.renew({ timelineId, computeId: 'compute-a', term: 3n }), Status.ABORTED, /term 3 .* was granted to compute compute-b, not compute-a/);
  });

  it('keeps terms growing across releases, takeovers and a kill -9 of Redis (appendfsync always)', async () => {
    const { node, leases } = await start({ appendfsync: 'always' });
    const timelineId = newTimelineId();
    const terms: bigint[] = [];
    for (const computeId of ['compute-a', 'compute-b', 'compute-c']) {
      const { lease } = await leases.acquire({ timelineId, computeId, ttlMs: LONG_TTL_MS });
      terms.push(lease.term);
      await leases.release({ timelineId, computeId, term: lease.term });
    }
    terms.push((await leases.acquire({ timelineId, computeId: 'compute-d', ttlMs: SHORT_TTL_MS })).lease.term);
    await waitUntilExpired(leases, timelineId);
    terms.push((await leases.acquire({ timelineId, computeId: 'compute-e', ttlMs: LONG_TTL_MS })).lease.term);
    expect(terms).to.deep.equal([1n, 2n, 3n, 4n, 5n]);

    await node.restart({ crash: true });

    // The same client rides through the restart (and the scripts are sent again: Redis forgot them).
    const state = await leases.get(timelineId);
    expect(state.latestTerm).to.equal(5n);
    expect(state.holder).to.include({ computeId: 'compute-e', term: 5n });
    await expectServerError(leases.acquire({ timelineId, computeId: 'compute-a' }), Status.FAILED_PRECONDITION, /compute compute-e holds the lease of term 5/);
    await expectServerError(leases.renew({ timelineId, computeId: 'compute-d', term: 4n }), Status.ABORTED, /superseded by term 5/);
    expect((await leases.renew({ timelineId, computeId: 'compute-e', term: 5n })).lease.term).to.equal(5n);
    await leases.release({ timelineId, computeId: 'compute-e', term: 5n });

    // A fresh client and WriterLeases, as a restarted control plane would have.
    const fresh = new WriterLeases(await node.client(), { minTtlMs: 1 });
    expect((await fresh.acquire({ timelineId, computeId: 'compute-a' })).lease.term).to.equal(6n);
  });

  it('gives exactly one of 20 concurrent acquires (20 connections) the lease; the others are FAILED_PRECONDITION', async () => {
    const node = await RedisNode.start(harness());
    const contenders = await Promise.all(
      Array.from({ length: 20 }, async (_, index) => ({
        computeId: `compute-${index}`,
        leases: new WriterLeases(await node.client()),
      })),
    );
    const timelineId = newTimelineId();
    for (let round = 1; round <= 3; round += 1) {
      const outcomes = await Promise.allSettled(contenders.map(({ computeId, leases }) => leases.acquire({ timelineId, computeId, ttlMs: LONG_TTL_MS })));
      const winners = outcomes.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
      expect(winners, `round ${round}`).to.have.length(1);
      const [winner] = winners;
      expect(winner.lease.term).to.equal(BigInt(round));
      for (const outcome of outcomes) {
        if (outcome.status === 'rejected') {
          await expectServerError(
            Promise.reject(outcome.reason),
            Status.FAILED_PRECONDITION,
            new RegExp(`compute ${winner.lease.computeId} holds the lease of term ${round} `),
          );
        }
      }
      expect((await contenders[0].leases.get(timelineId)).holder).to.deep.equal(winner.lease);
      await contenders[0].leases.release({ timelineId, computeId: winner.lease.computeId, term: winner.lease.term });
    }
  });

  it('answers INVALID_ARGUMENT naming the field for bad input, NOT_FOUND for a term never granted', async () => {
    const { leases } = await start();
    const timelineId = newTimelineId();
    const invalid: Array<[Promise<unknown>, RegExp]> = [
      [leases.acquire({ timelineId: 'tl-1', computeId: 'compute-a' }), /^timeline_id must be "tl-" and 32 lowercase hex digits, not "tl-1"/],
      [leases.acquire({ timelineId: timelineId.toUpperCase(), computeId: 'compute-a' }), /^timeline_id /],
      [leases.get(''), /^timeline_id /],
      [leases.acquire({ timelineId, computeId: '' }), /^compute_id must be 1 to 100 letters/],
      [leases.acquire({ timelineId, computeId: 'a b' }), /^compute_id /],
      [leases.acquire({ timelineId, computeId: 'x'.repeat(101) }), /^compute_id /],
      [leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: 0 }), /^ttl must be a positive whole number of milliseconds/],
      [leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: -5 }), /^ttl /],
      [leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: 1.5 }), /^ttl /],
      [leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: Number.NaN }), /^ttl /],
      [leases.renew({ timelineId, computeId: 'compute-a', term: 0n }), /^term must be the term of a granted lease/],
      [leases.renew({ timelineId, computeId: 'compute-a', term: -1n }), /^term /],
      [leases.release({ timelineId, computeId: 'compute-a', term: 1n << 60n }), /^term /],
      [leases.release({ timelineId, computeId: 'compute-a', term: 1n, finalLsn: -1n }), /^final_lsn must be an LSN/],
      [leases.release({ timelineId, computeId: 'compute-a', term: 1n, finalLsn: 1n << 64n }), /^final_lsn /],
    ];
    for (const [promise, details] of invalid) await expectServerError(promise, Status.INVALID_ARGUMENT, details);
    expect((await leases.get(timelineId)).latestTerm, 'nothing was written').to.equal(0n);

    await expectServerError(leases.renew({ timelineId, computeId: 'compute-a', term: 1n }), Status.NOT_FOUND, /no writer lease was ever granted on timeline .*acquire one first/);
    await expectServerError(leases.release({ timelineId, computeId: 'compute-a', term: 1n }), Status.NOT_FOUND, /no writer lease was ever granted/);
    await leases.acquire({ timelineId, computeId: 'compute-a' });
    await expectServerError(leases.renew({ timelineId, computeId: 'compute-a', term: 2n }), Status.NOT_FOUND, /term 2 was never granted .*\(the latest is 1\)/);
  });

  it('clamps the ttl to its bounds and uses the default when none is given', async () => {
    const node = await RedisNode.start(harness());
    const leases = new WriterLeases(await node.client(), { minTtlMs: 2_000, defaultTtlMs: 3_000, maxTtlMs: 4_000 });
    const remaining = (grant: { lease: { expiresAt: Date }; serverTime: Date }) => grant.lease.expiresAt.getTime() - grant.serverTime.getTime();
    const timelineId = newTimelineId();
    expect(remaining(await leases.acquire({ timelineId, computeId: 'compute-a' }))).to.equal(3_000);
    expect(remaining(await leases.acquire({ timelineId, computeId: 'compute-a', ttlMs: 1 }))).to.equal(2_000);
    expect(remaining(await leases.renew({ timelineId, computeId: 'compute-a', term: 1n, ttlMs: 3_600_000 }))).to.equal(4_000);
    expect(() => new WriterLeases(leasesClientPlaceholder(), { minTtlMs: 5, maxTtlMs: 4 })).to.throw(RangeError, /minTtlMs \(5\) exceeds maxTtlMs \(4\)/);
  });

  it('answers UNAVAILABLE (retry with backoff) when Redis is down', async () => {
    const { node, leases } = await start();
    await node.process.kill();
    await expectServerError(leases.acquire({ timelineId: newTimelineId(), computeId: 'compute-a' }), Status.UNAVAILABLE, /cannot reach Redis .*retry with backoff/);
  });

  it('keeps one unexpired holder and growing terms over random interleavings (model-based, fast-check)', async () => {
    const { leases } = await start();
    const started = Date.now();
    await fc.assert(
      fc.asyncProperty(fc.commands(commandArbitraries, { maxCommands: 40 }), async (commands) => {
        const setup = () => ({ model: newModel(), real: leases });
        await fc.asyncModelRun(setup, commands);
      }),
      { numRuns: 100 },
    );
    expect(Date.now() - started, 'the property stays fast').to.be.below(30_000);
  });
});

/** The constructor does not touch Redis; a placeholder client is enough to check option validation. */
function leasesClientPlaceholder(): ConstructorParameters<typeof WriterLeases>[0] {
  return {} as ConstructorParameters<typeof WriterLeases>[0];
}

// ---- The model of one timeline's lease, for the property test ----

interface LeaseModel {
  timelineId: string;
  latestTerm: bigint;
  lease: { computeId: string; term: bigint; expiresAtMs: number; released: boolean; expired: boolean } | null;
  /** The term each compute was last granted: what it would renew or release with. */
  knownTerms: Map<string, bigint>;
}

function newModel(): LeaseModel {
  return { timelineId: newTimelineId(), latestTerm: 0n, lease: null, knownTerms: new Map() };
}

type LeaseCommand = fc.AsyncCommand<LeaseModel, WriterLeases>;

/** After every command: Redis agrees with the model on the latest term and on who holds the lease now. */
async function expectAgreement(model: LeaseModel, leases: WriterLeases): Promise<void> {
  const state = await leases.get(model.timelineId);
  expect(state.latestTerm).to.equal(model.latestTerm);
  const heldInModel = model.lease !== null && !model.lease.released && !model.lease.expired;
  if (heldInModel) {
    expect(state.holder, 'the holder').to.include({ computeId: model.lease!.computeId, term: model.lease!.term });
  } else {
    expect(state.holder, 'no holder').to.equal(null);
  }
}

class AcquireCommand implements LeaseCommand {
  constructor(readonly computeId: string) {}
  check(): boolean {
    return true;
  }
  async run(model: LeaseModel, leases: WriterLeases): Promise<void> {
    const previous = model.lease;
    const promise = leases.acquire({ timelineId: model.timelineId, computeId: this.computeId, ttlMs: LONG_TTL_MS });
    if (previous && !previous.released && previous.computeId === this.computeId) {
      const { lease, newTerm } = await promise;
      expect(newTerm).to.equal(false);
      expect(lease.term).to.equal(previous.term);
      previous.expiresAtMs = lease.expiresAt.getTime();
      previous.expired = false;
    } else if (previous && !previous.released && !previous.expired) {
      await expectServerError(promise, Status.FAILED_PRECONDITION, new RegExp(`compute ${previous.computeId} holds the lease of term ${previous.term} `));
    } else {
      const { lease, newTerm } = await promise;
      expect(newTerm).to.equal(true);
      // A new holder's term is greater than every earlier one (and the counter never skips).
      expect(lease.term).to.equal(model.latestTerm + 1n);
      // At most one unexpired holder: the previous lease had ended (as its holder was last told) before this grant.
      if (previous && !previous.released) expect(lease.grantedAt.getTime()).to.be.at.least(previous.expiresAtMs);
      model.latestTerm = lease.term;
      model.lease = { computeId: this.computeId, term: lease.term, expiresAtMs: lease.expiresAt.getTime(), released: false, expired: false };
      model.knownTerms.set(this.computeId, lease.term);
    }
    await expectAgreement(model, leases);
  }
  toString(): string {
    return `acquire(${this.computeId})`;
  }
}

class RenewCommand implements LeaseCommand {
  constructor(readonly computeId: string) {}
  check(): boolean {
    return true;
  }
  async run(model: LeaseModel, leases: WriterLeases): Promise<void> {
    const term = model.knownTerms.get(this.computeId) ?? 1n;
    const promise = leases.renew({ timelineId: model.timelineId, computeId: this.computeId, term, ttlMs: LONG_TTL_MS });
    const lease = model.lease;
    if (term > model.latestTerm) {
      await expectServerError(promise, Status.NOT_FOUND);
    } else if (!lease || lease.term !== term) {
      await expectServerError(promise, Status.ABORTED, new RegExp(`superseded by term ${model.latestTerm} `));
    } else if (lease.computeId !== this.computeId) {
      await expectServerError(promise, Status.ABORTED, /was granted to compute/);
    } else if (lease.released) {
      await expectServerError(promise, Status.ABORTED, /was released/);
    } else {
      const renewed = await promise;
      expect(renewed.lease.term).to.equal(term);
      lease.expiresAtMs = renewed.lease.expiresAt.getTime();
      lease.expired = false;
    }
    await expectAgreement(model, leases);
  }
  toString(): string {
    return `renew(${this.computeId})`;
  }
}

class ReleaseCommand implements LeaseCommand {
  constructor(readonly computeId: string) {}
  check(): boolean {
    return true;
  }
  async run(model: LeaseModel, leases: WriterLeases): Promise<void> {
    const term = model.knownTerms.get(this.computeId) ?? 1n;
    const promise = leases.release({ timelineId: model.timelineId, computeId: this.computeId, term });
    const lease = model.lease;
    if (term > model.latestTerm) {
      await expectServerError(promise, Status.NOT_FOUND);
    } else {
      const ends = lease !== null && lease.computeId === this.computeId && lease.term === term && !lease.released;
      expect((await promise).released).to.equal(ends);
      if (ends) lease.released = true;
    }
    await expectAgreement(model, leases);
  }
  toString(): string {
    return `release(${this.computeId})`;
  }
}

/** Lets the current lease run out: its holder shortens it to a few milliseconds, then we wait on Redis' clock. */
class ExpireCommand implements LeaseCommand {
  check(model: Readonly<LeaseModel>): boolean {
    return model.lease !== null && !model.lease.released && !model.lease.expired;
  }
  async run(model: LeaseModel, leases: WriterLeases): Promise<void> {
    const lease = model.lease!;
    const renewed = await leases.renew({ timelineId: model.timelineId, computeId: lease.computeId, term: lease.term, ttlMs: 5 });
    lease.expiresAtMs = renewed.lease.expiresAt.getTime();
    const state = await waitUntilExpired(leases, model.timelineId);
    expect(state.serverTime.getTime()).to.be.at.least(lease.expiresAtMs);
    lease.expired = true;
    await expectAgreement(model, leases);
  }
  toString(): string {
    return 'expire';
  }
}

const computeIds = fc.constantFrom('compute-a', 'compute-b', 'compute-c');
const commandArbitraries = [
  computeIds.map((computeId) => new AcquireCommand(computeId)),
  computeIds.map((computeId) => new RenewCommand(computeId)),
  computeIds.map((computeId) => new ReleaseCommand(computeId)),
  fc.constant(new ExpireCommand()),
];

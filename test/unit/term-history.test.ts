/**
 * The consensus functions on term histories: donor choice, the proposer's history, the agreement point where
 * divergent tails are cut, and the commit rule; then a property test that runs random elections over three
 * acceptors and checks that no committed WAL is ever lost or rewritten.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  agreementPoint,
  chooseDonor,
  historyProblem,
  historyUpTo,
  lastLogTerm,
  proposerHistory,
  quorumCommitLsn,
  type TermHistory,
  type TermSwitch,
  type VoterLog,
} from '../../src/lib/consensus/term-history.js';
import type { Lsn } from '../../src/lib/lsn.js';

const BASE = 0x1000000n;

/** A history from `[term, startLsn]` pairs. */
function history(...entries: Array<[number, Lsn]>): TermSwitch[] {
  return entries.map(([term, startLsn]) => ({ term: BigInt(term), startLsn }));
}

function voter(name: string, entries: Array<[number, Lsn]>, flushLsn: Lsn): VoterLog & { name: string } {
  return { name, history: history(...entries), flushLsn, timelineStartLsn: BASE };
}

describe('term history', () => {
  describe('historyUpTo / lastLogTerm', () => {
    const entries = history([1, BASE], [2, BASE + 100n], [4, BASE + 300n]);

    it('keeps the entries that start at or before the LSN', () => {
      expect(historyUpTo(entries, BASE + 99n)).to.deep.equal(history([1, BASE]));
      expect(historyUpTo(entries, BASE + 100n)).to.deep.equal(history([1, BASE], [2, BASE + 100n]));
      expect(historyUpTo(entries, BASE - 1n)).to.deep.equal([]);
    });

    it('gives the term of the last WAL held, ignoring terms that start beyond the log end', () => {
      expect(lastLogTerm(entries, BASE + 50n)).to.equal(1n);
      expect(lastLogTerm(entries, BASE + 299n)).to.equal(2n);
      expect(lastLogTerm(entries, BASE + 1000n)).to.equal(4n);
      expect(lastLogTerm([], BASE)).to.equal(0n);
    });
  });

  describe('historyProblem', () => {
    it('accepts increasing terms with non-decreasing start LSNs (a term may write nothing)', () => {
      expect(historyProblem([])).to.equal(null);
      expect(historyProblem(history([1, BASE], [2, BASE], [5, BASE + 10n]))).to.equal(null);
    });

    it('names a term that does not increase', () => {
      expect(historyProblem(history([2, BASE], [2, BASE + 10n]))).to.include('term 2 follows term 2');
      expect(historyProblem(history([3, BASE], [1, BASE + 10n]))).to.include('not increasing');
    });

    it('names a start LSN that goes back', () => {
      expect(historyProblem(history([1, BASE + 10n], [2, BASE]))).to.include('term 2 starts before term 1');
    });
  });

  describe('chooseDonor', () => {
    it('prefers the higher last log term over a longer log', () => {
      const long = voter('long', [[1, BASE]], BASE + 1000n);
      const newer = voter('newer', [[1, BASE], [2, BASE + 10n]], BASE + 20n);
      expect(chooseDonor([long, newer]).name).to.equal('newer');
      expect(chooseDonor([newer, long]).name).to.equal('newer');
    });

    it('prefers the longer log within the same last term', () => {
      const a = voter('a', [[1, BASE], [2, BASE + 10n]], BASE + 20n);
      const b = voter('b', [[1, BASE], [2, BASE + 10n]], BASE + 30n);
      expect(chooseDonor([a, b]).name).to.equal('b');
    });

    it('judges by the WAL held, not by a promised term that wrote nothing there', () => {
      // `adopted` took term 3's history but holds no term-3 WAL: its last log term is 1.
      const adopted = voter('adopted', [[1, BASE], [3, BASE + 500n]], BASE + 40n);
      const wrote2 = voter('wrote2', [[1, BASE], [2, BASE + 30n]], BASE + 35n);
      expect(chooseDonor([adopted, wrote2]).name).to.equal('wrote2');
    });

    it('breaks ties by order, and needs a voter', () => {
      const a = voter('a', [[1, BASE]], BASE + 5n);
      const b = voter('b', [[1, BASE]], BASE + 5n);
      expect(chooseDonor([a, b]).name).to.equal('a');
      expect(() => chooseDonor([])).to.throw('at least one voter');
    });
  });

  describe('proposerHistory', () => {
    it('starts the WAL at the given LSN when no voter holds any', () => {
      expect(proposerHistory({ history: [], flushLsn: 0n, timelineStartLsn: 0n }, 1n, BASE)).to.deep.equal(history([1, BASE]));
    });

    it('appends the new term at the end of the donor\'s log, dropping entries beyond it', () => {
      const donor = voter('d', [[1, BASE], [2, BASE + 100n], [3, BASE + 900n]], BASE + 150n);
      expect(proposerHistory(donor, 5n, BASE)).to.deep.equal(history([1, BASE], [2, BASE + 100n], [5, BASE + 150n]));
    });

    it('refuses a term not above the donor\'s last term', () => {
      const donor = voter('d', [[1, BASE], [4, BASE + 10n]], BASE + 20n);
      expect(() => proposerHistory(donor, 4n, BASE)).to.throw('a newer proposer exists');
      expect(() => proposerHistory(donor, 3n, BASE)).to.throw('not above');
    });
  });

  describe('agreementPoint', () => {
    const proposer = history([1, BASE], [2, BASE + 100n], [3, BASE + 200n]);

    it('is the acceptor\'s end when it holds a prefix of the proposer\'s log', () => {
      expect(agreementPoint(proposer, BASE + 250n, history([1, BASE], [2, BASE + 100n]), BASE + 150n)).to.equal(BASE + 150n);
      expect(agreementPoint(proposer, BASE + 250n, history([1, BASE]), BASE + 60n)).to.equal(BASE + 60n);
    });

    it('is where the acceptor\'s divergent tail of an old term begins to differ', () => {
      // Term 1 wrote on this acceptor beyond BASE+100, where term 2 (elected without it) wrote other WAL.
      expect(agreementPoint(proposer, BASE + 250n, history([1, BASE]), BASE + 180n)).to.equal(BASE + 100n);
    });

    it('cuts a tail of a term the proposer never heard of', () => {
      // Term 2' was elected with this acceptor, wrote from BASE+50, and lost; the proposer's history has no 2'.
      const acceptor = history([1, BASE], [2, BASE + 50n]);
      const other = history([1, BASE], [3, BASE + 80n]);
      expect(agreementPoint(other, BASE + 120n, acceptor, BASE + 90n)).to.equal(BASE + 50n);
    });

    it('is the proposer\'s end when the acceptor holds more of the same term', () => {
      expect(agreementPoint(history([1, BASE], [2, BASE + 100n]), BASE + 130n, history([1, BASE], [2, BASE + 100n]), BASE + 170n)).to.equal(
        BASE + 130n,
      );
    });

    it('is the start of the proposer\'s WAL for an acceptor with nothing in common', () => {
      expect(agreementPoint(proposer, BASE + 250n, [], BASE)).to.equal(BASE);
      expect(agreementPoint(history([2, BASE]), BASE + 10n, history([1, BASE]), BASE + 300n)).to.equal(BASE);
    });

    it('ignores acceptor entries that start beyond its log end', () => {
      // The acceptor adopted a history [1, 2@100] but only holds term-1 WAL up to 90.
      expect(agreementPoint(proposer, BASE + 250n, history([1, BASE], [2, BASE + 100n]), BASE + 90n)).to.equal(BASE + 90n);
    });
  });

  describe('quorumCommitLsn', () => {
    it('is the quorum-th highest acknowledged flush LSN', () => {
      expect(quorumCommitLsn([BASE + 30n, BASE + 10n, BASE + 20n], 2, BASE)).to.equal(BASE + 20n);
      expect(quorumCommitLsn([BASE + 30n, BASE + 10n, BASE + 20n], 3, BASE)).to.equal(BASE + 10n);
      expect(quorumCommitLsn([BASE + 30n, BASE + 30n], 2, BASE)).to.equal(BASE + 30n);
    });

    it('is unknown with fewer acknowledgements than a quorum', () => {
      expect(quorumCommitLsn([BASE + 30n], 2, BASE)).to.equal(null);
      expect(quorumCommitLsn([], 1, BASE)).to.equal(null);
    });

    it('counts nothing below the current term\'s start (older WAL commits only through this term\'s)', () => {
      const termStart = BASE + 100n;
      expect(quorumCommitLsn([BASE + 150n, BASE + 90n, BASE + 80n], 2, termStart)).to.equal(null);
      expect(quorumCommitLsn([BASE + 150n, termStart, BASE + 80n], 2, termStart)).to.equal(termStart);
      expect(quorumCommitLsn([BASE + 150n, BASE + 120n, BASE + 80n], 2, termStart)).to.equal(BASE + 120n);
    });
  });

  describe('random elections over three acceptors (property)', () => {
    /**
     * An acceptor of the model. Its log is the term that wrote each byte from BASE on: within a term one proposer
     * writes, so (term, position) determines the byte, and comparing terms compares contents.
     */
    interface ModelAcceptor {
      history: TermSwitch[];
      log: bigint[];
      commitLsn: Lsn;
    }

    const flushOf = (acceptor: ModelAcceptor): Lsn => BASE + BigInt(acceptor.log.length);

    /** The terms of `[BASE, flush)` as the history describes them. */
    function describedLog(entries: TermHistory, flushLsn: Lsn): bigint[] {
      const log: bigint[] = [];
      for (let lsn = BASE; lsn < flushLsn; lsn += 1n) log.push(lastLogTerm(entries, lsn));
      return log;
    }

    /**
     * One term: who votes (a majority), who gets the start message, how much new WAL the proposer writes, and how
     * many bytes past its agreement point each started voter receives before the term ends.
     */
    interface TermPlan {
      voters: number[];
      started: number[];
      newBytes: number;
      reach: number[];
    }
    const termArbitrary: fc.Arbitrary<TermPlan> = fc.record({
      voters: fc.subarray([0, 1, 2], { minLength: 2, maxLength: 3 }),
      started: fc.subarray([0, 1, 2]),
      newBytes: fc.integer({ min: 0, max: 12 }),
      reach: fc.array(fc.integer({ min: 0, max: 15 }), { minLength: 3, maxLength: 3 }),
    });
    const termPlan = (voters: number[], started: number[], newBytes: number, reach: number[]): TermPlan => ({ voters, started, newBytes, reach });
    /**
     * Raft's "figure 8": term 3 re-replicates term-1 WAL to a majority without reaching its own start; counting
     * that as committed would let term 4 (elected with the term-2 log) overwrite it.
     */
    const figure8 = [
      termPlan([0, 1, 2], [0], 5, [5, 0, 0]),
      termPlan([1, 2], [1], 3, [0, 3, 0]),
      termPlan([0, 2], [0, 2], 2, [0, 0, 3]),
      termPlan([1, 2], [1, 2], 1, [5, 5, 5]),
    ];

    it('never loses or rewrites committed WAL, and histories always describe the logs', () => {
      fc.assert(
        fc.property(fc.array(termArbitrary, { minLength: 1, maxLength: 10 }), (terms) => {
          const acceptors: ModelAcceptor[] = [0, 1, 2].map(() => ({ history: [], log: [], commitLsn: 0n }));
          let committed: bigint[] = [];
          terms.forEach((plan, index) => {
            const term = BigInt(index + 1);
            const voters = plan.voters.map((which) => {
              const acceptor = acceptors[which];
              return { which, history: acceptor.history, flushLsn: flushOf(acceptor), timelineStartLsn: BASE };
            });
            const donor = chooseDonor(voters);
            const proposer = proposerHistory(donor, term, BASE);
            expect(historyProblem(proposer)).to.equal(null);
            const termStart = proposer[proposer.length - 1].startLsn;
            // The proposer's log: the donor's, then its own WAL.
            const proposerLog = [...acceptors[donor.which].log, ...Array.from({ length: plan.newBytes }, () => term)];
            expect(describedLog(proposer, BASE + BigInt(proposerLog.length))).to.deep.equal(proposerLog);
            // Whatever was committed before is in the new proposer's log, unchanged.
            expect(proposerLog.slice(0, committed.length)).to.deep.equal(committed);

            const acks: Lsn[] = [];
            for (const which of plan.voters.filter((voterIndex) => plan.started.includes(voterIndex))) {
              const acceptor = acceptors[which];
              const point = agreementPoint(proposer, BASE + BigInt(proposerLog.length), acceptor.history, flushOf(acceptor));
              // The safekeeper refuses to cut below what it knows committed, and cannot start beyond its end.
              expect(point >= acceptor.commitLsn, `agreement point below commit on acceptor ${which}`).to.equal(true);
              expect(point <= flushOf(acceptor)).to.equal(true);
              const kept = acceptor.log.slice(0, Number(point - BASE));
              expect(kept).to.deep.equal(proposerLog.slice(0, kept.length));
              // Then the proposer streams to it from the agreement point, as far as this voter gets.
              acceptor.log = proposerLog.slice(0, Math.min(kept.length + plan.reach[which], proposerLog.length));
              acceptor.history = proposer.map((entry) => ({ ...entry }));
              acks.push(flushOf(acceptor));
            }
            const commitLsn = quorumCommitLsn(acks, 2, termStart);
            if (commitLsn !== null) {
              const newlyCommitted = proposerLog.slice(0, Number(commitLsn - BASE));
              if (newlyCommitted.length > committed.length) committed = newlyCommitted;
              for (const which of plan.voters.filter((voterIndex) => plan.started.includes(voterIndex))) {
                const acceptor = acceptors[which];
                const learned = commitLsn < flushOf(acceptor) ? commitLsn : flushOf(acceptor);
                if (learned > acceptor.commitLsn) acceptor.commitLsn = learned;
              }
            }
            for (const acceptor of acceptors) {
              expect(describedLog(acceptor.history, flushOf(acceptor))).to.deep.equal(acceptor.log);
            }
          });
        }),
        { numRuns: 1000, examples: [[figure8]] },
      );
    });
  });
});

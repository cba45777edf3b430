/**
 * The decisions of a proposer (the walproposer) as a state machine without I/O: it takes events (a vote, an
 * acknowledged flush, a refusal) and answers what follows (elected with this donor, stream to this safekeeper from
 * this LSN, the commit LSN moved to X, fenced). The agent's WalProposer feeds it from gRPC; the deterministic
 * simulation (test/sim/) feeds it from a seeded schedule, so that both run the same decisions.
 */
import type { Lsn } from '../lsn.js';
import { agreementPoint, chooseDonor, proposerHistory, quorumCommitLsn, type TermSwitch, type VoterLog } from './term-history.js';

/** The outcome of an election: a majority promised the term. */
export interface ElectionResult<V extends VoterLog> {
  /** The voters that made the majority (in the order their votes arrived). */
  voters: V[];
  /** The most advanced log among them: the truth this term continues. */
  donor: V;
  /** True when no voter holds any WAL (a new timeline). */
  emptyLog: boolean;
}

/** The proposer of one term, given its peers by key (an address, an index). */
export class ProposerCore<V extends VoterLog, K = string> {
  /** How many safekeepers make a majority. */
  readonly quorum: number;
  private readonly votes = new Map<K, V>();
  private election: ElectionResult<V> | null = null;
  private history: TermSwitch[] = [];
  private termStart: Lsn = 0n;
  private begun = false;
  /** Flush LSNs acknowledged in this term, by peer. */
  private readonly flushes = new Map<K, Lsn>();
  private commit: Lsn = 0n;
  private fencedReason: string | null = null;

  constructor(
    readonly term: bigint,
    peerCount: number,
  ) {
    if (peerCount <= 0) throw new Error('a proposer needs at least one safekeeper');
    this.quorum = Math.floor(peerCount / 2) + 1;
  }

  /**
   * Records a promise of our term. Answers the election once, on the vote that completes a majority; null before
   * (and after: later voters only join the term).
   */
  recordVote(peer: K, voter: V): ElectionResult<V> | null {
    if (this.election || this.fencedReason) return null;
    this.votes.set(peer, voter);
    if (this.votes.size < this.quorum) return null;
    const voters = [...this.votes.values()];
    this.election = { voters, donor: chooseDonor(voters), emptyLog: voters.every((candidate) => candidate.flushLsn === 0n) };
    return this.election;
  }

  /** The election, once won. */
  get elected(): ElectionResult<V> | null {
    return this.election;
  }

  /** Starts the term at `termStartLsn`: our history is the donor's plus this term. Answers the history. */
  begin(donor: VoterLog, termStartLsn: Lsn): TermSwitch[] {
    this.history = proposerHistory(donor, this.term, termStartLsn);
    this.termStart = termStartLsn;
    this.begun = true;
    return this.history;
  }

  get termHistory(): readonly TermSwitch[] {
    return this.history;
  }

  get termStartLsn(): Lsn {
    return this.termStart;
  }

  get started(): boolean {
    return this.begun;
  }

  /**
   * Where a safekeeper that answered `voter` (its current log) is streamed from, given that our log ends at
   * `endLsn`: where its log stops agreeing with ours (it truncates there).
   */
  startPoint(voter: VoterLog, endLsn: Lsn): Lsn {
    if (!this.begun) throw new Error('startPoint before begin');
    return agreementPoint(this.history, endLsn > this.termStart ? endLsn : this.termStart, voter.history, voter.flushLsn);
  }

  /** A safekeeper's (re)joined stream starts over: its acknowledgements count again only from its next one. */
  forgetFlush(peer: K): void {
    this.flushes.delete(peer);
  }

  /**
   * A safekeeper acknowledged that its log, which is ours, is fsynced up to `flushLsn` in this term. Answers the new
   * commit LSN when it moved (the quorum-th highest acknowledgement, never below the term's start), else null.
   */
  acknowledge(peer: K, flushLsn: Lsn): Lsn | null {
    if (this.fencedReason) return null;
    const previous = this.flushes.get(peer);
    if (previous === undefined || flushLsn > previous) this.flushes.set(peer, flushLsn);
    const candidate = quorumCommitLsn([...this.flushes.values()], this.quorum, this.termStart);
    if (candidate === null || candidate <= this.commit) return null;
    this.commit = candidate;
    return candidate;
  }

  /** The highest LSN fsynced on a majority in this term. */
  get commitLsn(): Lsn {
    return this.commit;
  }

  /** A safekeeper refused our term (ABORTED): a newer term exists. True the first time (then stop everything). */
  fence(reason: string): boolean {
    if (this.fencedReason) return false;
    this.fencedReason = reason;
    return true;
  }

  get fenced(): string | null {
    return this.fencedReason;
  }
}

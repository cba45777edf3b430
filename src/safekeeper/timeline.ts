/**
 * One timeline on a safekeeper: the acceptor side of the consensus. It promises terms, adopts an elected
 * proposer's history (truncating a divergent tail), accepts contiguous WAL of the promised term only, and knows
 * the commit LSN. Durable state changes are fsynced before the answer that depends on them.
 */
import path from 'node:path';
import { aborted, failedPrecondition, invalidArgument, unavailable } from '../lib/grpc/errors.js';
import { type Lsn, formatLsn, minLsn, segmentNumber } from '../lib/lsn.js';
import { historyProblem, lastLogTerm, type TermSwitch } from '../lib/consensus/term-history.js';
import { Notifier } from '../lib/async.js';
import { type ControlState, emptyControlState, readControlState, writeControlState } from './control-file.js';
import { WalStore, type Repair } from './wal-store.js';
import { type FileSystem, nodeFileSystem, syncDirectory } from './file-system.js';

/**
 * The highest term a safekeeper promises: the control plane grants terms from a counter kept exact only up to 2^53
 * (Lua numbers are doubles), so a higher one was never granted, and promising it would fence the timeline forever.
 */
export const MAX_TERM = BigInt(Number.MAX_SAFE_INTEGER);

/** INVALID_ARGUMENT for a term above {@link MAX_TERM}, or null. */
export function termProblem(term: bigint, field = 'term'): Error | null {
  if (term <= MAX_TERM) return null;
  return invalidArgument(
    `${field} ${term} is above the highest term a control plane grants (${MAX_TERM}, 2^53 - 1): use the term of your writer lease`,
  );
}

/** A snapshot of a timeline's state, as answered to callers. */
export interface TimelineSnapshot extends ControlState {
  flushLsn: Lsn;
  oldestLsn: Lsn;
}

/** An open Append stream; a newer term (or a newer stream of the same proposer) ends it. */
export interface AppendSession {
  term: bigint;
  /** Ends the stream with an error; set by the service. */
  end(error: Error): void;
}

/** The elected proposer's greeting, validated. */
export interface AppendStartInput {
  term: bigint;
  proposerId: string;
  termHistory: TermSwitch[];
  startStreamingAt: Lsn;
  systemId: bigint;
}

/** A safekeeper's timeline. */
export class Timeline {
  /** Notified whenever flush or commit LSN moves (WAL readers wait on it). */
  readonly changed = new Notifier();
  private state: ControlState;
  private commitPersisted: Lsn;
  private readonly sessions = new Set<AppendSession>();
  private deleted = false;
  /** The proposer's last peer horizon (0: unknown, held in memory only). */
  private peerHorizonLsn: Lsn = 0n;

  private constructor(
    readonly directory: string,
    state: ControlState,
    private readonly wal: WalStore,
    private readonly fs: FileSystem,
  ) {
    this.state = state;
    this.commitPersisted = state.commitLsn;
  }

  /** Creates a new empty timeline in `directory`. */
  static async create(directory: string, timelineId: string, fileSystem: FileSystem = nodeFileSystem): Promise<Timeline> {
    fileSystem.mkdirSync(directory);
    const state = emptyControlState(timelineId);
    writeControlState(directory, state, fileSystem);
    // The timeline's directory entry must survive a crash before CreateTimeline answers.
    syncDirectory(fileSystem, path.dirname(directory));
    return new Timeline(directory, state, await WalStore.open(path.join(directory, 'wal'), [], fileSystem), fileSystem);
  }

  /** Loads a timeline from disk, cutting a torn WAL tail (reported in `repairs`). */
  static async load(directory: string, repairs: Repair[], fileSystem: FileSystem = nodeFileSystem): Promise<Timeline> {
    const state = readControlState(directory, fileSystem);
    if (!state) throw new Error(`${directory} holds no control.json`);
    const wal = await WalStore.open(path.join(directory, 'wal'), repairs, fileSystem);
    if (wal.isEmpty && state.timelineStartLsn !== 0n) wal.resetTo(maxStart(state));
    // The commit LSN can never be above what is on disk here.
    state.commitLsn = minLsn(state.commitLsn, wal.flushedLsn);
    return new Timeline(directory, state, wal, fileSystem);
  }

  get timelineId(): string {
    return this.state.timelineId;
  }

  get flushLsn(): Lsn {
    return this.wal.flushedLsn;
  }

  get commitLsn(): Lsn {
    return this.state.commitLsn;
  }

  get oldestLsn(): Lsn {
    return this.wal.startLsn;
  }

  get isDeleted(): boolean {
    return this.deleted;
  }

  /** The current state. */
  snapshot(): TimelineSnapshot {
    return { ...this.state, termHistory: [...this.state.termHistory], flushLsn: this.wal.flushedLsn, oldestLsn: this.wal.startLsn };
  }

  /**
   * Promises `term` to `proposerId` (one process: a term is never promised to two), or throws ABORTED naming the
   * term already promised. The answer reports the log once everything written before the promise is fsynced: WAL
   * of an older term still being fsynced could otherwise be acknowledged to its proposer (and count towards a
   * commit) while the new proposer's election did not see it.
   */
  async vote(term: bigint, proposerId: string): Promise<TimelineSnapshot> {
    const tooHigh = termProblem(term);
    if (tooHigh) throw tooHigh;
    const sameProposer = term === this.state.promisedTerm && proposerId === this.state.promisedProposerId;
    if (term === this.state.promisedTerm && !sameProposer) {
      throw aborted(
        `term ${term} already promised to proposer ${this.state.promisedProposerId} on timeline ${this.timelineId}, not to ` +
          `${proposerId}: a term belongs to one writer process; get a new writer lease (a higher term) to write`,
      );
    }
    if (term < this.state.promisedTerm) {
      throw aborted(
        `term ${term} is not above term ${this.state.promisedTerm} already promised on timeline ${this.timelineId}: ` +
          'a newer writer exists; stop writing and get a new lease',
      );
    }
    if (!sameProposer) {
      this.state = { ...this.state, promisedTerm: term, promisedProposerId: proposerId, commitLsn: this.state.commitLsn };
      writeControlState(this.directory, this.state, this.fs);
      this.commitPersisted = this.state.commitLsn;
      // Open streams of older terms end now: their proposer learns at once that it is fenced.
      for (const session of this.sessions) {
        if (session.term < term) session.end(aborted(`term ${session.term} was superseded by term ${term} on timeline ${this.timelineId}`));
      }
    }
    // From the promise on no older term's WAL is accepted; what was written before it is in the answer.
    await this.wal.waitFlushed();
    return this.snapshot();
  }

  /**
   * Registers an Append stream of `proposerId`; older streams of the same or a lower term are ended (the proposer
   * reconnected). The term is checked first: a stream that is refused must not end the current writer's.
   */
  openSession(session: AppendSession, proposerId: string): void {
    this.checkTerm(session.term, proposerId);
    for (const other of this.sessions) {
      // UNAVAILABLE, not ABORTED: the proposer is not fenced, it reconnected; ABORTED always means a lost term.
      if (other.term <= session.term) other.end(unavailable(`a newer Append stream of term ${session.term} replaced this one`));
    }
    this.sessions.add(session);
  }

  closeSession(session: AppendSession): void {
    this.sessions.delete(session);
  }

  /** Adopts the elected proposer's history and truncates the log where it stops agreeing with it. */
  async startAppend(input: AppendStartInput): Promise<TimelineSnapshot> {
    this.checkTerm(input.term, input.proposerId);
    const problem = historyProblem(input.termHistory);
    if (problem) throw failedPrecondition(`the proposer's ${problem}`);
    const last = input.termHistory[input.termHistory.length - 1];
    if (!last || last.term !== input.term) {
      throw failedPrecondition(`the proposer's term history must end with its own term ${input.term}`);
    }
    if (this.state.systemId !== 0n && input.systemId !== 0n && input.systemId !== this.state.systemId) {
      throw failedPrecondition(
        `timeline ${this.timelineId} holds WAL of Postgres system ${this.state.systemId}, not ${input.systemId}: ` +
          'this compute belongs to another database; start it from this timeline\'s basebackup',
      );
    }
    // Bytes still being fsynced (an older term's last append) must not become durable under the new history: the
    // comparison below is with the end of everything written, once it is all fsynced.
    await this.wal.waitFlushed();
    this.checkTerm(input.term, input.proposerId);
    const start = input.startStreamingAt;
    if (!(this.wal.isEmpty && this.wal.startLsn === 0n) && start > this.wal.endLsn) {
      throw failedPrecondition(
        `cannot stream from ${formatLsn(start)}: this safekeeper holds WAL only up to ${formatLsn(this.wal.flushedLsn)}`,
      );
    }
    const adopted = this.state.termHistory[this.state.termHistory.length - 1];
    if (adopted?.term === input.term) {
      // This term's history was adopted here already: the proposer's stream resumes at the end of the log, all of
      // which is its own WAL. Nothing is truncated: a late greeting (of an older stream) must never cut WAL that was
      // acknowledged since.
      if (!sameHistory(this.state.termHistory, input.termHistory)) {
        throw failedPrecondition(`the proposer's term history differs from the one of term ${input.term} adopted here`);
      }
      return this.snapshot();
    }
    if (this.wal.isEmpty && this.wal.startLsn === 0n) {
      this.wal.resetTo(start);
    } else if (start < this.wal.endLsn) {
      if (start < this.state.commitLsn) {
        throw failedPrecondition(
          `refusing to truncate WAL at ${formatLsn(start)} below the commit LSN ${formatLsn(this.state.commitLsn)}`,
        );
      }
      if (start < this.wal.startLsn) {
        throw failedPrecondition(`cannot truncate at ${formatLsn(start)}: WAL below ${formatLsn(this.wal.startLsn)} was removed`);
      }
      await this.wal.truncate(start);
    }
    // Crash after the truncation but before the control file: the old history over a shorter log, which only
    // makes this safekeeper look less advanced at the next election (safe).
    this.state = {
      ...this.state,
      termHistory: input.termHistory.map((entry) => ({ ...entry })),
      timelineStartLsn: this.state.timelineStartLsn === 0n ? this.wal.startLsn : this.state.timelineStartLsn,
      systemId: this.state.systemId === 0n ? input.systemId : this.state.systemId,
    };
    writeControlState(this.directory, this.state, this.fs);
    this.commitPersisted = this.state.commitLsn;
    this.changed.notify();
    return this.snapshot();
  }

  /** Writes WAL of `term` at `beginLsn` (must be the end of the log) and learns the proposer's commit LSN. */
  appendWal(term: bigint, proposerId: string, beginLsn: Lsn, data: Buffer): void {
    this.checkTerm(term, proposerId);
    if (beginLsn !== this.wal.endLsn) {
      throw failedPrecondition(
        `WAL at ${formatLsn(beginLsn)} does not continue this safekeeper's log, which ends at ${formatLsn(this.wal.endLsn)}; ` +
          'restart the Append stream from the end of the log',
      );
    }
    if (data.length > 0) this.wal.append(beginLsn, data);
  }

  /** Resolves when everything written so far is fsynced. */
  async waitFlushed(): Promise<void> {
    await this.wal.waitFlushed();
    this.changed.notify();
  }

  /** Raises the commit LSN to the proposer's (bounded by what is on disk here). */
  learnCommit(proposerCommitLsn: Lsn): void {
    const commit = minLsn(proposerCommitLsn, this.wal.flushedLsn);
    if (commit > this.state.commitLsn) {
      this.state.commitLsn = commit;
      this.changed.notify();
    }
  }

  /** Persists the commit LSN when it moved (called periodically: it is a hint that only grows). */
  persistCommitIfMoved(): void {
    if (this.deleted || this.state.commitLsn === this.commitPersisted) return;
    writeControlState(this.directory, this.state, this.fs);
    this.commitPersisted = this.state.commitLsn;
  }

  /** Reads WAL from `lsn`, up to the commit LSN (or the flush LSN with `includeUncommitted`). */
  readWal(lsn: Lsn, untilLsn: Lsn, includeUncommitted: boolean, maxBytes: number): Buffer {
    const limit = includeUncommitted ? this.wal.flushedLsn : this.state.commitLsn;
    return this.wal.read(lsn, untilLsn === 0n ? limit : minLsn(untilLsn, limit), maxBytes);
  }

  /** Records what a consumer has made durable, and removes WAL segments no longer needed. */
  reportConsumer(durableLsn: Lsn): TimelineSnapshot {
    if (durableLsn > this.state.consumerDurableLsn) {
      this.state.consumerDurableLsn = minLsn(durableLsn, this.state.commitLsn);
      writeControlState(this.directory, this.state, this.fs);
      this.commitPersisted = this.state.commitLsn;
      this.removeUnneeded();
    }
    return this.snapshot();
  }

  /**
   * Learns the proposer's peer horizon (the lowest log end among the safekeepers): WAL above it stays, a lagging
   * peer catches up from it. Removes what is no longer held back when it moves past a segment.
   */
  learnPeerHorizon(horizon: Lsn): void {
    if (horizon === this.peerHorizonLsn) return;
    const crossed = segmentNumber(horizon) !== segmentNumber(this.peerHorizonLsn);
    this.peerHorizonLsn = horizon;
    if (crossed && horizon > this.wal.startLsn) this.removeUnneeded();
  }

  /** WAL below what the consumer made durable, and below what every peer holds, is removed. */
  private removeUnneeded(): void {
    const keepFrom = this.peerHorizonLsn === 0n ? this.state.consumerDurableLsn : minLsn(this.state.consumerDurableLsn, this.peerHorizonLsn);
    if (keepFrom > this.wal.startLsn) this.wal.removeBelow(keepFrom);
  }

  /** The term of the last WAL held. */
  lastLogTerm(): bigint {
    return lastLogTerm(this.state.termHistory, this.wal.flushedLsn);
  }

  /** Ends every stream and closes files. */
  close(): void {
    this.persistCommitIfMoved();
    for (const session of this.sessions) session.end(unavailable('the safekeeper is stopping; reconnect'));
    this.wal.close();
  }

  /** Removes the timeline from disk. */
  async destroy(): Promise<void> {
    this.deleted = true;
    for (const session of this.sessions) session.end(aborted(`timeline ${this.timelineId} was deleted`));
    this.changed.notify();
    await this.wal.destroy();
    this.fs.rmSync(this.directory);
  }

  private checkTerm(term: bigint, proposerId: string): void {
    if (term < this.state.promisedTerm || (term === this.state.promisedTerm && proposerId !== this.state.promisedProposerId)) {
      throw aborted(
        `term ${term} was superseded by term ${this.state.promisedTerm} on timeline ${this.timelineId}: ` +
          'this writer is fenced and must stop',
      );
    }
    if (term > this.state.promisedTerm) {
      throw failedPrecondition(`term ${term} has not been voted for on timeline ${this.timelineId}: call Vote first`);
    }
  }
}

function sameHistory(a: readonly TermSwitch[], b: readonly TermSwitch[]): boolean {
  return a.length === b.length && a.every((entry, index) => entry.term === b[index].term && entry.startLsn === b[index].startLsn);
}

function maxStart(state: ControlState): Lsn {
  return state.consumerDurableLsn > state.timelineStartLsn ? state.consumerDurableLsn : state.timelineStartLsn;
}

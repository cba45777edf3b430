/**
 * Term histories: who wrote which part of a timeline's WAL. Safekeepers keep one each; an elected proposer
 * adopts the most advanced voter's ("donor's") and appends its own term. Comparing two histories tells exactly
 * where two logs agree, so divergent tails are found without reading WAL. These are pure functions, shared by the
 * safekeeper (acceptor) and the agent's walproposer (proposer), and tested on their own.
 */
import type { Lsn } from '../lsn.js';

/** From `startLsn` on, the WAL was written by the proposer of `term`. */
export interface TermSwitch {
  term: bigint;
  startLsn: Lsn;
}

/** Term switches in increasing order of term (and non-decreasing start LSN). */
export type TermHistory = readonly TermSwitch[];

/** The entries that describe WAL up to `lsn`: those starting at or before it. */
export function historyUpTo(history: TermHistory, lsn: Lsn): TermSwitch[] {
  return history.filter((entry) => entry.startLsn <= lsn);
}

/** The term of the last WAL a log ending at `flushLsn` holds (0 for an empty history). */
export function lastLogTerm(history: TermHistory, flushLsn: Lsn): bigint {
  const held = historyUpTo(history, flushLsn);
  return held.length === 0 ? 0n : held[held.length - 1].term;
}

/** Checks a history is well formed: terms strictly increase, start LSNs never decrease. Returns a problem or null. */
export function historyProblem(history: TermHistory): string | null {
  for (let index = 1; index < history.length; index += 1) {
    if (history[index].term <= history[index - 1].term) {
      return `term history is not increasing: term ${history[index].term} follows term ${history[index - 1].term}`;
    }
    if (history[index].startLsn < history[index - 1].startLsn) {
      return `term history goes back: term ${history[index].term} starts before term ${history[index - 1].term}`;
    }
  }
  return null;
}

/** A voter's answer, as the proposer sees it. */
export interface VoterLog {
  history: TermHistory;
  flushLsn: Lsn;
  timelineStartLsn: Lsn;
}

/**
 * The donor among a majority of voters: the most advanced log, by (last log term, flush LSN).
 * Ties go to the first, which is as good as any since equal (term, LSN) means equal logs.
 */
export function chooseDonor<V extends VoterLog>(voters: readonly V[]): V {
  if (voters.length === 0) throw new Error('chooseDonor needs at least one voter');
  let best = voters[0];
  for (const voter of voters.slice(1)) {
    const bestTerm = lastLogTerm(best.history, best.flushLsn);
    const term = lastLogTerm(voter.history, voter.flushLsn);
    if (term > bestTerm || (term === bestTerm && voter.flushLsn > best.flushLsn)) best = voter;
  }
  return best;
}

/**
 * The new proposer's history: the donor's (what its log holds) plus this term, starting where the donor's log
 * ends. `emptyStartLsn` is where the WAL starts when no voter has any.
 */
export function proposerHistory(donor: VoterLog, term: bigint, emptyStartLsn: Lsn): TermSwitch[] {
  const held = historyUpTo(donor.history, donor.flushLsn);
  const termStartLsn = held.length === 0 ? emptyStartLsn : donor.flushLsn;
  const last = held[held.length - 1];
  if (last && last.term >= term) {
    throw new Error(`term ${term} is not above the donor's last term ${last.term}: a newer proposer exists`);
  }
  return [...held, { term, startLsn: termStartLsn }];
}

/**
 * Where a safekeeper's log agrees with the proposer's, so that it is truncated there and the proposer streams from
 * there. The two logs agree through the last term they share, up to where either stops holding that term's WAL.
 * `proposerEndLsn` is how far the proposer's own log goes (its current end of WAL).
 */
export function agreementPoint(
  proposer: TermHistory,
  proposerEndLsn: Lsn,
  acceptor: TermHistory,
  acceptorFlushLsn: Lsn,
): Lsn {
  const held = historyUpTo(acceptor, acceptorFlushLsn);
  let common = -1;
  while (
    common + 1 < held.length &&
    common + 1 < proposer.length &&
    held[common + 1].term === proposer[common + 1].term &&
    held[common + 1].startLsn === proposer[common + 1].startLsn
  ) {
    common += 1;
  }
  // Nothing in common (an empty log): stream from the start of the proposer's WAL.
  if (common < 0) return proposer[0].startLsn;
  const acceptorEnd = common + 1 < held.length ? held[common + 1].startLsn : acceptorFlushLsn;
  const proposerEnd = common + 1 < proposer.length ? proposer[common + 1].startLsn : proposerEndLsn;
  return acceptorEnd < proposerEnd ? acceptorEnd : proposerEnd;
}

/**
 * The commit LSN given the flush LSNs acknowledged in the current term: the quorum-th highest. Acknowledgements
 * below the term's start LSN count for nothing (an earlier term's WAL is committed only through this term's).
 */
export function quorumCommitLsn(flushLsns: readonly Lsn[], quorum: number, termStartLsn: Lsn): Lsn | null {
  if (flushLsns.length < quorum) return null;
  const sorted = [...flushLsns].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0));
  const candidate = sorted[quorum - 1];
  return candidate >= termStartLsn ? candidate : null;
}

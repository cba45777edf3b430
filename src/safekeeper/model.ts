/**
 * Turns safekeeper protobuf messages into validated domain values; a missing or wrong field answers
 * INVALID_ARGUMENT naming it, so the domain code never sees undefined fields.
 */
import { invalidArgument } from '../lib/grpc/errors.js';
import { TIMELINE_ID_PATTERN } from '../lib/ids.js';
import type { TermSwitch as TermSwitchMessage, TimelineStatus } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import type { TermSwitch } from '../lib/consensus/term-history.js';
import { termProblem, type TimelineSnapshot } from './timeline.js';

export { TIMELINE_ID_PATTERN };

/** Checks a timeline id. */
export function parseTimelineId(value: string, field = 'timeline_id'): string {
  if (!value) throw invalidArgument(`${field} is required: a timeline id such as tl-0123456789abcdef0123456789abcdef`);
  if (!TIMELINE_ID_PATTERN.test(value)) {
    throw invalidArgument(`${field} "${value.slice(0, 80)}" is not a timeline id: expected tl- followed by 32 lowercase hex digits`);
  }
  return value;
}

/** Checks a term: positive, and not above what a control plane can grant (2^53 - 1). */
export function parseTerm(value: bigint, field = 'term'): bigint {
  if (value <= 0n) throw invalidArgument(`${field} must be a positive term issued with a writer lease, got ${value}`);
  const tooHigh = termProblem(value, field);
  if (tooHigh) throw tooHigh;
  return value;
}

/** Checks a proposer id. */
export function parseProposerId(value: string): string {
  if (!value || value.length > 200) throw invalidArgument('proposer_id is required (at most 200 characters): who is proposing');
  return value;
}

/** Converts and checks a term history. */
export function parseTermHistory(entries: TermSwitchMessage[]): TermSwitch[] {
  if (entries.length === 0) throw invalidArgument('term_history is required: the elected proposer\'s history, ending with its own term');
  return entries.map((entry) => ({ term: entry.term, startLsn: entry.startLsn }));
}

/** The protobuf form of a timeline's state. */
export function toTimelineStatus(snapshot: TimelineSnapshot): TimelineStatus {
  return {
    timelineId: snapshot.timelineId,
    promisedTerm: snapshot.promisedTerm,
    promisedProposerId: snapshot.promisedProposerId,
    termHistory: snapshot.termHistory.map((entry) => ({ term: entry.term, startLsn: entry.startLsn })),
    timelineStartLsn: snapshot.timelineStartLsn,
    flushLsn: snapshot.flushLsn,
    commitLsn: snapshot.commitLsn,
    consumerDurableLsn: snapshot.consumerDurableLsn,
    oldestLsn: snapshot.oldestLsn,
    systemId: snapshot.systemId,
  };
}

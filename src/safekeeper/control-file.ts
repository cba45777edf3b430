/**
 * A timeline's durable consensus state on a safekeeper, in `control.json`. Replaced atomically: write a temporary
 * file, fsync it, rename it over the old one, fsync the directory. A crash at any step leaves either the old or
 * the new state, never a mix.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { TermSwitch } from '../lib/consensus/term-history.js';
import type { Lsn } from '../lib/lsn.js';

/** What a safekeeper must remember about a timeline across restarts. */
export interface ControlState {
  timelineId: string;
  /** The highest term promised; no WAL from a lower term is accepted. */
  promisedTerm: bigint;
  /** The proposer the promise went to (a reconnect of the same proposer and term is accepted). */
  promisedProposerId: string;
  termHistory: TermSwitch[];
  timelineStartLsn: Lsn;
  /** A lower bound of the commit LSN (persisted lazily: it only grows and is relearned from the proposer). */
  commitLsn: Lsn;
  consumerDurableLsn: Lsn;
  systemId: bigint;
}

const FILE = 'control.json';
const FORMAT_VERSION = 1;

/** An empty state for a new timeline. */
export function emptyControlState(timelineId: string): ControlState {
  return {
    timelineId,
    promisedTerm: 0n,
    promisedProposerId: '',
    termHistory: [],
    timelineStartLsn: 0n,
    commitLsn: 0n,
    consumerDurableLsn: 0n,
    systemId: 0n,
  };
}

/** Writes the state durably (see the file comment). */
export function writeControlState(directory: string, state: ControlState): void {
  const body = JSON.stringify({
    version: FORMAT_VERSION,
    timelineId: state.timelineId,
    promisedTerm: state.promisedTerm.toString(),
    promisedProposerId: state.promisedProposerId,
    termHistory: state.termHistory.map((entry) => ({ term: entry.term.toString(), startLsn: entry.startLsn.toString() })),
    timelineStartLsn: state.timelineStartLsn.toString(),
    commitLsn: state.commitLsn.toString(),
    consumerDurableLsn: state.consumerDurableLsn.toString(),
    systemId: state.systemId.toString(),
  });
  const target = path.join(directory, FILE);
  const temporary = `${target}.tmp`;
  const fd = fs.openSync(temporary, 'w');
  try {
    fs.writeSync(fd, body);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  // Crash here: the old control file is intact and the temporary one is ignored.
  fs.renameSync(temporary, target);
  const directoryFd = fs.openSync(directory, 'r');
  try {
    fs.fsyncSync(directoryFd);
  } finally {
    fs.closeSync(directoryFd);
  }
}

/** Whether `directory` holds a control file (a leftover `.tmp` alone does not count). */
export function controlStateExists(directory: string): boolean {
  return fs.existsSync(path.join(directory, FILE));
}

/** Reads the state; throws an error naming the file when it is unreadable. Null when there is none. */
export function readControlState(directory: string): ControlState | null {
  const file = path.join(directory, FILE);
  if (!fs.existsSync(file)) return null;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new Error(`control file ${file} is corrupt (${(error as Error).message}); restore it or delete the timeline`);
  }
  if (raw.version !== FORMAT_VERSION) throw new Error(`control file ${file} has unknown format version ${String(raw.version)}`);
  const big = (value: unknown) => BigInt(value as string);
  return {
    timelineId: raw.timelineId as string,
    promisedTerm: big(raw.promisedTerm),
    promisedProposerId: raw.promisedProposerId as string,
    termHistory: (raw.termHistory as Array<{ term: string; startLsn: string }>).map((entry) => ({
      term: big(entry.term),
      startLsn: big(entry.startLsn),
    })),
    timelineStartLsn: big(raw.timelineStartLsn),
    commitLsn: big(raw.commitLsn),
    consumerDurableLsn: big(raw.consumerDurableLsn),
    systemId: big(raw.systemId),
  };
}

/**
 * A timeline's durable consensus state on a safekeeper, in `control.json`. Replaced atomically: write a temporary
 * file, fsync it, rename it over the old one, fsync the directory. A crash at any step leaves either the old or
 * the new state, never a mix.
 */
import path from 'node:path';
import type { TermSwitch } from '../lib/consensus/term-history.js';
import type { Lsn } from '../lib/lsn.js';
import { type FileSystem, nodeFileSystem, syncDirectory } from './file-system.js';

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
export function writeControlState(directory: string, state: ControlState, fileSystem: FileSystem = nodeFileSystem): void {
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
  const fd = fileSystem.openSync(temporary, 'w');
  try {
    fileSystem.writevSync(fd, [Buffer.from(body)], 0);
    fileSystem.fsyncSync(fd);
  } finally {
    fileSystem.closeSync(fd);
  }
  // Crash here: the old control file is intact and the temporary one is ignored.
  fileSystem.renameSync(temporary, target);
  // Crash before this fsync: either file may be found; both are whole, and nothing was answered yet.
  syncDirectory(fileSystem, directory);
}

/** Whether `directory` holds a control file (a leftover `.tmp` alone does not count). */
export function controlStateExists(directory: string, fileSystem: FileSystem = nodeFileSystem): boolean {
  return fileSystem.existsSync(path.join(directory, FILE));
}

/** Reads the state; throws an error naming the file when it is unreadable. Null when there is none. */
export function readControlState(directory: string, fileSystem: FileSystem = nodeFileSystem): ControlState | null {
  const file = path.join(directory, FILE);
  if (!fileSystem.existsSync(file)) return null;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fileSystem.readFileSync(file).toString('utf8')) as Record<string, unknown>;
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

/**
 * PullTimeline: a safekeeper fills its copy of a timeline from its peers, so that redundancy returns by itself after
 * a safekeeper missed a timeline's creation, lost its disk, or fell behind the oldest WAL its peers still hold (a
 * proposer can then no longer bring it up to date, since it streams what a safekeeper lacks from the peers).
 *
 * What is copied, and why it is safe:
 * - The promised term: the highest among the peers that answered, and at least a majority of the whole set must
 *   answer. Any term that won an election was promised by a majority; a wiped safekeeper may have been part of it,
 *   but the rest of that majority meets any `quorum` of the others, so the highest term seen here is at least every
 *   elected term. Without it, a wiped safekeeper could give an old proposer the majority it lost (its promise went
 *   with its disk) and let that proposer overwrite commits of a newer term.
 * - WAL: only what is committed (below the chosen peer's commit LSN), which is the same on every safekeeper that holds
 *   it, so any peer is as good as another; the most advanced one is taken. It starts at a recent segment (the one the
 *   caller names, usually what the pageserver made durable), not at the timeline's start: older WAL is in object
 *   storage, and a proposer brings the rest (above the commit LSN) as it does for any lagging safekeeper.
 * - The term history: the peer's, up to the end of the copied WAL (equal logs up to an LSN have equal histories there).
 *
 * Durability: the WAL and the control file are written and fsynced in a directory of their own, which is then renamed
 * into place and the parent fsynced. A crash before the rename leaves a temporary directory (removed at the next
 * start) and no timeline, so the caller pulls again; after it, a complete timeline.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { SafekeeperServiceDefinition, type TimelineStatus } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { createSpgClient, openChannel } from '../lib/grpc/client.js';
import { ClientError, failedPrecondition, hasStatus, invalidArgument, Status, unavailable } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import { type Lsn, formatLsn, maxLsn, minLsn, segmentNumber, segmentStart } from '../lib/lsn.js';
import { counter } from '../lib/metrics.js';
import { writeControlState, type ControlState } from './control-file.js';
import { WalStore } from './wal-store.js';
import type { Timeline, TimelineSnapshot } from './timeline.js';

/** The temporary directories of pulls in progress start with this (never a timeline id, so never loaded). */
export const PULL_DIRECTORY_PREFIX = '.pull-';

const PEER_STATUS_DEADLINE_MS = 5_000;
/** A pull of a few hundred MiB at most (segments since the pageserver's durable LSN) fits in this. */
const COPY_DEADLINE_MS = 10 * 60_000;
/** The copied WAL is fsynced every this many bytes, so the page cache never holds much of it dirty. */
const FLUSH_EVERY_BYTES = 16 * 1024 * 1024;

const pulledBytes = counter('spg99_safekeeper_pulled_bytes_total', 'WAL bytes copied from peers by PullTimeline');
const pullsTotal = counter('spg99_safekeeper_timeline_pulls_total', 'PullTimeline calls, by outcome', ['outcome']);

/** What a pull needs of the safekeeper it fills. */
export interface PullTarget {
  dataDir: string;
  /** The local copy, or undefined when there is none. */
  find(timelineId: string): Timeline | undefined;
  /**
   * Puts the pulled timeline in place of the local copy (if any), atomically for callers: `install` gets the final
   * directory and must leave a loadable timeline there. Runs without yielding to the event loop between its checks
   * and the rename, so no vote slips in between.
   */
  replace(timelineId: string, install: (existing: TimelineSnapshot | undefined) => string): Promise<Timeline>;
}

/** The outcome of a pull. */
export interface PullOutcome {
  timeline: Timeline;
  donorAddress: string;
  copiedBytes: bigint;
}

interface PeerAnswer {
  address: string;
  /** null: the peer does not have the timeline (it promised nothing on it). */
  status: TimelineStatus | null;
}

const inProgress = new Set<string>();

/** Whether a local copy may be replaced by a pull: it holds no WAL, or less than any peer can still give it. */
function replaceable(local: TimelineSnapshot, peers: TimelineStatus[]): string | null {
  if (local.flushLsn === 0n && local.termHistory.length === 0) return null;
  const holders = peers.filter((peer) => peer.flushLsn > 0n);
  if (holders.length > 0 && holders.every((peer) => peer.oldestLsn > local.flushLsn)) return null;
  return (
    `this safekeeper's copy of timeline ${local.timelineId} ends at ${formatLsn(local.flushLsn)}, which a peer still holds WAL from: ` +
    'the writer brings it up to date by itself'
  );
}

/**
 * Pulls `timelineId` from `peerAddresses` (every other safekeeper of the timeline) into `target`, with WAL from the
 * segment of `startLsn` on (0: the oldest the donor holds).
 */
export async function pullTimeline(
  target: PullTarget,
  input: { timelineId: string; peerAddresses: string[]; startLsn: Lsn },
  log: Logger,
  signal?: AbortSignal,
): Promise<PullOutcome> {
  const { timelineId, peerAddresses, startLsn } = input;
  if (peerAddresses.length === 0) throw invalidArgument('peer_addresses is required: host:port of every other safekeeper of the timeline');
  if (new Set(peerAddresses).size !== peerAddresses.length) throw invalidArgument(`peer_addresses lists an address twice: ${peerAddresses.join(',')}`);
  peerAddresses.forEach((address, index) => {
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    if (!/^[A-Za-z0-9.[\]:-]+:[0-9]{1,5}$/.test(address) || port < 1 || port > 65535) {
      throw invalidArgument(`peer_addresses[${index}] must be host:port with a port from 1 to 65535 (e.g. 127.0.0.1:7502), got "${address.slice(0, 80)}"`);
    }
  });
  if (inProgress.has(timelineId)) throw unavailable(`timeline ${timelineId} is already being pulled on this safekeeper; retry once that pull ends`);
  inProgress.add(timelineId);
  const channels = peerAddresses.map((address) => ({ address, channel: openChannel(address) }));
  const temporary = path.join(target.dataDir, 'timelines', `${PULL_DIRECTORY_PREFIX}${timelineId}-${process.pid}-${Date.now()}`);
  try {
    const clients = channels.map(({ address, channel }) => ({ address, client: createSpgClient(SafekeeperServiceDefinition, channel) }));
    const answers: PeerAnswer[] = [];
    const failures: string[] = [];
    await Promise.all(
      clients.map(async ({ address, client }) => {
        try {
          const { status } = await client.getTimelineStatus({ timelineId }, { deadline: new Date(Date.now() + PEER_STATUS_DEADLINE_MS), signal });
          answers.push({ address, status: status ?? null });
        } catch (error) {
          if (hasStatus(error, Status.NOT_FOUND)) answers.push({ address, status: null });
          else failures.push(`${address}: ${error instanceof ClientError ? `${Status[error.code]} ${error.details}` : String(error)}`);
        }
      }),
    );
    // A majority of the whole set (the peers and this one), all of them from the peers: see the file comment.
    const needed = Math.floor((peerAddresses.length + 1) / 2) + 1;
    if (answers.length < needed) {
      throw unavailable(
        `only ${answers.length} of ${peerAddresses.length} peers answered about timeline ${timelineId} (${failures.join('; ')}); ` +
          `a pull needs ${needed}, so that it learns every term that may have been elected: retry once they are reachable`,
      );
    }
    const statuses = answers.flatMap((answer) => (answer.status ? [{ address: answer.address, status: answer.status }] : []));
    const local = target.find(timelineId)?.snapshot();
    if (local) {
      const problem = replaceable(local, statuses.map((entry) => entry.status));
      if (problem) throw failedPrecondition(problem);
    }
    // The donor: the most advanced committed log.
    const donor = statuses.reduce<{ address: string; status: TimelineStatus } | null>(
      (best, entry) => (best === null || entry.status.commitLsn > best.status.commitLsn ? entry : best),
      null,
    );
    const promised = statuses.reduce(
      (best, entry) => (entry.status.promisedTerm > best.term ? { term: entry.status.promisedTerm, proposerId: entry.status.promisedProposerId } : best),
      { term: 0n, proposerId: '' },
    );

    await fsp.rm(temporary, { recursive: true, force: true });
    await fsp.mkdir(temporary, { recursive: true });
    const wal = await WalStore.open(path.join(temporary, 'wal'));
    let state: ControlState;
    let copied = 0n;
    try {
      if (!donor || donor.status.commitLsn === 0n) {
        // Nothing committed anywhere yet: an empty log that keeps the terms promised.
        state = {
          timelineId,
          promisedTerm: promised.term,
          promisedProposerId: promised.proposerId,
          termHistory: [],
          timelineStartLsn: 0n,
          commitLsn: 0n,
          consumerDurableLsn: 0n,
          systemId: donor?.status.systemId ?? 0n,
        };
      } else {
        const commit = donor.status.commitLsn;
        let from = segmentStart(segmentNumber(maxLsn(startLsn, donor.status.oldestLsn)));
        from = minLsn(maxLsn(from, donor.status.oldestLsn), commit);
        log.info({ timelineId, donor: donor.address, from: formatLsn(from), until: formatLsn(commit) }, 'pulling the timeline\'s committed WAL from a peer');
        const client = clients.find((entry) => entry.address === donor.address)!.client;
        if (from < commit) {
          wal.resetTo(from);
          let unflushed = 0;
          const stream = client.streamWal(
            { timelineId, startLsn: from, endLsn: commit, includeUncommitted: false },
            { deadline: new Date(Date.now() + COPY_DEADLINE_MS), signal },
          );
          for await (const message of stream) {
            if (message.walData.length === 0) continue;
            if (message.beginLsn !== wal.endLsn) {
              throw new Error(`peer ${donor.address} sent WAL at ${formatLsn(message.beginLsn)} where ${formatLsn(wal.endLsn)} was expected`);
            }
            wal.append(message.beginLsn, message.walData);
            unflushed += message.walData.length;
            copied += BigInt(message.walData.length);
            pulledBytes.inc(message.walData.length);
            if (unflushed >= FLUSH_EVERY_BYTES) {
              await wal.waitFlushed();
              unflushed = 0;
            }
          }
          if (wal.endLsn !== commit) throw new Error(`peer ${donor.address} ended the WAL stream at ${formatLsn(wal.endLsn)}, before ${formatLsn(commit)}`);
          await wal.waitFlushed();
        }
        state = {
          timelineId,
          promisedTerm: promised.term,
          promisedProposerId: promised.proposerId,
          // Equal logs up to `commit` have equal histories up to it.
          termHistory: donor.status.termHistory.filter((entry) => entry.startLsn <= commit).map((entry) => ({ term: entry.term, startLsn: entry.startLsn })),
          timelineStartLsn: donor.status.timelineStartLsn,
          commitLsn: commit,
          // An empty copy (nothing to copy above `from`) restarts its log at `from` = `commit` when loaded.
          consumerDurableLsn: maxLsn(from, minLsn(donor.status.consumerDurableLsn, commit)),
          systemId: donor.status.systemId,
        };
      }
    } finally {
      wal.close();
    }
    const timeline = await target.replace(timelineId, (existing) => {
      // The local copy took WAL while the pull ran (a writer is catching it up): replacing it could drop WAL it
      // acknowledged, which may count toward a commit. It no longer needs the pull, or the next one finds it stale.
      if (existing && existing.flushLsn > state.commitLsn) {
        throw failedPrecondition(
          `this safekeeper's copy of timeline ${timelineId} reached ${formatLsn(existing.flushLsn)} during the pull, past the ` +
            `${formatLsn(state.commitLsn)} copied: its writer is bringing it up to date`,
        );
      }
      // A promise made here while the pull ran (the copy was empty or stale, but still voted) is kept.
      if (existing && existing.promisedTerm > state.promisedTerm) {
        state = { ...state, promisedTerm: existing.promisedTerm, promisedProposerId: existing.promisedProposerId };
      }
      writeControlState(temporary, state);
      return temporary;
    });
    pullsTotal.inc({ outcome: 'pulled' });
    log.info(
      { timelineId, donor: donor?.address ?? '', copiedBytes: String(copied), flushLsn: formatLsn(timeline.flushLsn), promisedTerm: String(state.promisedTerm) },
      'timeline pulled from peers',
    );
    return { timeline, donorAddress: donor?.address ?? '', copiedBytes: copied };
  } catch (error) {
    pullsTotal.inc({ outcome: 'failed' });
    await fsp.rm(temporary, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  } finally {
    inProgress.delete(timelineId);
    for (const { channel } of channels) channel.close();
  }
}

/** fsyncs a directory (its entries survive a crash). */
export function syncDirectory(directory: string): void {
  const fd = fs.openSync(directory, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

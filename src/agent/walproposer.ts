/**
 * The walproposer: the proposer side of the safekeepers' consensus, run by the compute agent.
 *
 * 1. Election: ask every safekeeper to promise this term; a majority of promises elects us. The most advanced
 *    voter's log (by last term, then flush LSN) is the truth; our term starts where it ends.
 * 2. Each safekeeper is then brought to our log: the Append stream starts at the point where its log agrees with
 *    ours (a divergent tail is truncated there), WAL it lacks below our buffer comes from another safekeeper,
 *    and new WAL from Postgres follows.
 * 3. The commit LSN is the quorum-th highest flush LSN acknowledged in this term (never counting below the
 *    term's start); Postgres is told it as its synchronous standby's flush position.
 * 4. ABORTED from any safekeeper means a newer term exists: we are fenced, and say so once.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../lib/log.js';
import { type Lsn, formatLsn, maxLsn, minLsn } from '../lib/lsn.js';
import { Notifier, AsyncQueue } from '../lib/async.js';
import { appendOverSocket } from '../lib/append-socket.js';
import { Backoff } from '../lib/retry.js';
import { counter, gauge, histogram } from '../lib/metrics.js';
import { openChannel, createSpgClient, currentProcessToken, type SpgClient } from '../lib/grpc/client.js';
import { ClientError, Status } from '../lib/grpc/errors.js';
import type { TermSwitch, VoterLog } from '../lib/consensus/term-history.js';
import { ProposerCore } from '../lib/consensus/proposer-core.js';
import {
  SafekeeperServiceDefinition,
  type AppendRequest,
  type TimelineStatus,
} from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { WalBuffer } from './wal-buffer.js';

/** WAL per Append message (the safekeeper's limit). */
const MAX_MESSAGE_BYTES = 128 * 1024;
/** WAL sent to one safekeeper and not yet acknowledged, at most. */
const IN_FLIGHT_WINDOW = 8 * 1024 * 1024;
/** WAL messages sent to one safekeeper and not yet acknowledged, at most. */
const MAX_UNACKNOWLEDGED_MESSAGES = 1;
/** WAL kept in memory below the commit LSN for lagging safekeepers; beyond it they catch up from peers. */
const BUFFER_KEEP_BYTES = 64 * 1024 * 1024;
/** WAL read from another safekeeper per StreamWal call when one lags below the buffer. */
const CATCH_UP_READ_BYTES = 4 * 1024 * 1024;
/** A safekeeper hears from us at least this often (it learns the commit LSN from it). */
const HEARTBEAT_MS = 1000;
/** A commit LSN with no WAL to carry it waits at most this long before it is sent on its own. */
const COMMIT_ONLY_INTERVAL_MS = 20;
const VOTE_DEADLINE_MS = 5000;

const commitLsnGauge = gauge('spg99_walproposer_commit_lsn', 'Highest LSN fsynced on a majority of safekeepers');
const receivedLsnGauge = gauge('spg99_walproposer_received_lsn', 'End of WAL read from Postgres');
const peerFlushGauge = gauge('spg99_walproposer_safekeeper_flush_lsn', 'Flush LSN acknowledged by each safekeeper in this term', ['safekeeper']);
const peerLagGauge = gauge('spg99_walproposer_safekeeper_lag_bytes', 'WAL read from Postgres and not yet fsynced by each safekeeper', ['safekeeper']);
const peerConnectedGauge = gauge('spg99_walproposer_safekeeper_connected', '1 while an Append stream to the safekeeper is open', ['safekeeper']);
const commitDelay = histogram(
  'spg99_walproposer_commit_delay_seconds',
  'Time from reading WAL from Postgres to its being fsynced on a majority (what a commit waits for beyond Postgres)',
);
const reconnects = counter('spg99_walproposer_reconnects_total', 'Append streams that failed and were retried', ['safekeeper']);

/**
 * The proposer identity of this process: the compute id and a random incarnation nonce. A term is promised to one
 * identity only, so a second process with the same compute id and term (a restarted agent or pod) can never be
 * granted a term its predecessor was promised, whose WAL it does not know.
 */
export function incarnationProposerId(computeId: string): string {
  return `${computeId}/${randomBytes(6).toString('hex')}`;
}

/** A newer term exists: this proposer must stop writing at once. */
export class FencedError extends Error {
  override name = 'FencedError';
}

/** One safekeeper's answer to our vote. */
export interface Voter extends VoterLog {
  address: string;
  systemId: bigint;
  commitLsn: Lsn;
}

/** The outcome of an election. */
export interface Election {
  voters: Voter[];
  donor: Voter;
  /** True when no voter holds any WAL (a new timeline). */
  emptyLog: boolean;
}

/** Options of a walproposer. */
export interface WalProposerOptions {
  timelineId: string;
  term: bigint;
  proposerId: string;
  /** Safekeeper addresses (host:port); a majority must agree. */
  safekeepers: string[];
  /** Use the safekeepers' framed Append transport when they offer it (default true). */
  useAppendSocket?: boolean;
  /** WAL kept in memory below the commit LSN for lagging safekeepers (default 64 MiB); older WAL comes from peers. */
  bufferKeepBytes?: number;
  log: Logger;
  traceId?: string;
}

/** What the status endpoint shows of each safekeeper. */
export interface PeerStatus {
  address: string;
  connected: boolean;
  flushLsn: Lsn;
  lastError: string;
}

class Peer {
  readonly client: SpgClient<typeof SafekeeperServiceDefinition>;
  connected = false;
  /** Flush LSN acknowledged in this term (null before its Append stream started). */
  flushLsn: Lsn | null = null;
  /** The commit LSN the safekeeper last reported knowing (what it serves to consumers). */
  knownCommitLsn: Lsn = 0n;
  /** The end of its log as last heard (its vote, then its acknowledgements); null if never heard from. */
  lastHeardFlushLsn: Lsn | null = null;
  lastError = '';

  constructor(
    readonly address: string,
    traceId: string | undefined,
  ) {
    this.client = createSpgClient(SafekeeperServiceDefinition, openChannel(address), traceId);
  }
}

function toVoter(address: string, status: TimelineStatus | undefined): Voter {
  if (!status) throw new Error(`safekeeper ${address} answered a vote without a status`);
  return {
    address,
    history: status.termHistory.map((entry) => ({ term: entry.term, startLsn: entry.startLsn })),
    flushLsn: status.flushLsn,
    timelineStartLsn: status.timelineStartLsn,
    systemId: status.systemId,
    commitLsn: status.commitLsn,
  };
}

function isAborted(error: unknown): error is ClientError {
  return error instanceof ClientError && error.code === Status.ABORTED;
}

function describe(error: unknown): string {
  return error instanceof ClientError ? `${Status[error.code]}: ${error.details}` : String((error as Error)?.message ?? error);
}

/** The proposer of one term on one timeline. */
export class WalProposer {
  readonly quorum: number;
  private readonly peers: Peer[];
  private readonly controller = new AbortController();
  /** Wakes the senders: new WAL, a new commit LSN, or an acknowledgement that opens the window. */
  private readonly changed = new Notifier();
  private readonly commitNotifier = new Notifier();
  /** The decisions: election, history, where each safekeeper starts, commit LSN, fencing. */
  private readonly core: ProposerCore<Voter>;
  private donor: Voter | null = null;
  private systemId = 0n;
  private buffer: WalBuffer | null = null;
  private readonly fencedListeners: ((reason: string) => void)[] = [];
  private readonly commitListeners: ((commitLsn: Lsn) => void)[] = [];
  private readonly loops: Promise<void>[] = [];
  /** When each piece of WAL arrived, until it is committed (for the commit delay histogram). */
  private readonly received: { endLsn: Lsn; at: number }[] = [];

  constructor(private readonly options: WalProposerOptions) {
    if (options.safekeepers.length === 0) throw new Error('a walproposer needs at least one safekeeper');
    this.core = new ProposerCore<Voter>(options.term, options.safekeepers.length);
    this.quorum = this.core.quorum;
    this.peers = options.safekeepers.map((address) => new Peer(address, options.traceId));
  }

  get term(): bigint {
    return this.options.term;
  }

  /** The highest LSN fsynced on a majority in this term. */
  get commitLsn(): Lsn {
    return this.core.commitLsn;
  }

  /** Where this term's WAL starts (set by `begin`). */
  get termStartLsn(): Lsn {
    return this.core.termStartLsn;
  }

  /** End of the WAL received from Postgres. */
  get receivedLsn(): Lsn {
    return this.buffer?.endLsn ?? this.core.termStartLsn;
  }

  get termHistory(): readonly TermSwitch[] {
    return this.core.termHistory;
  }

  get fenced(): string | null {
    return this.core.fenced;
  }

  /** Calls `listener` once if this proposer is fenced. */
  onFenced(listener: (reason: string) => void): void {
    this.fencedListeners.push(listener);
  }

  /** Calls `listener` whenever the commit LSN moves. */
  onCommit(listener: (commitLsn: Lsn) => void): void {
    this.commitListeners.push(listener);
  }

  /** The state of each safekeeper. */
  peerStatuses(): PeerStatus[] {
    return this.peers.map((peer) => ({
      address: peer.address,
      connected: peer.connected,
      flushLsn: peer.flushLsn ?? 0n,
      lastError: peer.lastError,
    }));
  }

  /**
   * Asks every safekeeper for its vote until a majority has promised our term. Unreachable safekeepers are
   * retried with backoff; ABORTED from any means a newer term exists and rejects with FencedError.
   */
  async elect(signal: AbortSignal): Promise<Election> {
    const { timelineId, term, proposerId, log } = this.options;
    const election = new AbortController();
    const stop = () => election.abort();
    signal.addEventListener('abort', stop, { once: true });
    try {
      return await new Promise<Election>((resolve, reject) => {
        let settled = false;
        const settle = (outcome: () => void) => {
          if (settled) return;
          settled = true;
          election.abort();
          outcome();
        };
        signal.addEventListener('abort', () => settle(() => reject(signal.reason)), { once: true });
        for (const peer of this.peers) {
          void (async () => {
            const backoff = new Backoff(100, 2000);
            while (!election.signal.aborted) {
              try {
                const answer = await peer.client.vote(
                  { timelineId, term, proposerId },
                  { signal: election.signal, deadline: new Date(Date.now() + VOTE_DEADLINE_MS) },
                );
                const elected = this.core.recordVote(peer.address, toVoter(peer.address, answer.status));
                log.info({ safekeeper: peer.address, term, flushLsn: formatLsn(answer.status?.flushLsn ?? 0n) }, 'vote received');
                if (elected) settle(() => resolve({ voters: [...elected.voters], donor: elected.donor, emptyLog: elected.emptyLog }));
                return;
              } catch (error) {
                if (election.signal.aborted) return;
                if (isAborted(error)) {
                  const reason = `safekeeper ${peer.address} refused term ${term}: ${error.details}`;
                  settle(() => reject(new FencedError(reason)));
                  return;
                }
                if (error instanceof ClientError && error.code !== Status.UNAVAILABLE && error.code !== Status.DEADLINE_EXCEEDED) {
                  // A wrong request (unknown timeline, bad id) will not get better by retrying.
                  settle(() => reject(new Error(`safekeeper ${peer.address} refused the vote: ${describe(error)}`)));
                  return;
                }
                peer.lastError = describe(error);
                log.warn({ safekeeper: peer.address, error: peer.lastError }, 'vote failed; retrying');
                await backoff.wait(election.signal).catch(() => undefined);
              }
            }
          })();
        }
      });
    } finally {
      signal.removeEventListener('abort', stop);
    }
  }

  /**
   * Starts the term after a won election: our history is the donor's plus this term from `termStartLsn`, and the
   * safekeepers are brought to it. `systemId` is Postgres' (safekeepers refuse WAL of another database).
   */
  begin(election: Election, termStartLsn: Lsn, systemId: bigint): void {
    this.donor = election.donor;
    const history = this.core.begin(election.donor, termStartLsn);
    this.systemId = systemId;
    this.buffer = new WalBuffer(termStartLsn);
    receivedLsnGauge.set(Number(termStartLsn));
    this.options.log.info(
      {
        term: this.options.term,
        termStartLsn: formatLsn(termStartLsn),
        donor: election.donor.address,
        history: history.map((entry) => `${entry.term}@${formatLsn(entry.startLsn)}`),
      },
      'term begins',
    );
    for (const peer of this.peers) this.loops.push(this.runPeer(peer));
  }

  /** Adds WAL read from Postgres (it must continue what was received). */
  pushWal(beginLsn: Lsn, data: Buffer): void {
    if (!this.buffer) throw new Error('pushWal before begin');
    this.buffer.append(beginLsn, data);
    this.received.push({ endLsn: this.buffer.endLsn, at: performance.now() });
    receivedLsnGauge.set(Number(this.buffer.endLsn));
    this.changed.notify();
  }

  /** Resolves once the commit LSN reaches `lsn` (or rejects when fenced or `signal` aborts). */
  async waitCommitted(lsn: Lsn, signal: AbortSignal): Promise<void> {
    while (this.core.commitLsn < lsn) {
      if (this.core.fenced) throw new FencedError(this.core.fenced);
      await this.commitNotifier.wait(signal);
    }
  }

  /**
   * Resolves once a majority of safekeepers report knowing that the commit LSN reached `lsn`: from then on they
   * serve that WAL to consumers (the pageserver), also after this proposer is gone.
   */
  async waitCommitPublished(lsn: Lsn, signal: AbortSignal): Promise<void> {
    await this.waitCommitted(lsn, signal);
    for (;;) {
      if (this.peers.filter((peer) => peer.knownCommitLsn >= lsn).length >= this.quorum) return;
      if (this.core.fenced) throw new FencedError(this.core.fenced);
      await this.commitNotifier.wait(signal, 50);
    }
  }

  /**
   * The lowest log end among the safekeepers heard from: WAL above it must stay on the others for the laggard to
   * catch up. A safekeeper never heard from in this process does not hold WAL back (it recovers from object
   * storage, or by operator action, when it returns).
   */
  peerHorizon(): Lsn {
    let horizon: Lsn | null = null;
    for (const peer of this.peers) {
      if (peer.lastHeardFlushLsn === null) continue;
      // An empty log needs everything: 1, since 0 on the wire means "unknown".
      const flush = peer.lastHeardFlushLsn === 0n ? 1n : peer.lastHeardFlushLsn;
      if (horizon === null || flush < horizon) horizon = flush;
    }
    return horizon ?? 0n;
  }

  /** Whether `begin` was called. */
  get begun(): boolean {
    return this.buffer !== null;
  }

  /** Ends every stream. */
  async close(): Promise<void> {
    this.controller.abort();
    this.changed.notify();
    this.commitNotifier.notify();
    await Promise.allSettled(this.loops);
    for (const peer of this.peers) peerConnectedGauge.set({ safekeeper: peer.address }, 0);
  }

  private fence(reason: string): void {
    if (!this.core.fence(reason)) return;
    this.options.log.warn({ term: this.options.term, reason }, 'fenced: a newer term exists; this writer must stop');
    for (const listener of this.fencedListeners) listener(reason);
    this.controller.abort();
    this.changed.notify();
    this.commitNotifier.notify();
  }

  /** Keeps one safekeeper in sync: an Append session, and a new one after any failure. */
  private async runPeer(peer: Peer): Promise<void> {
    const signal = this.controller.signal;
    const backoff = new Backoff(100, 2000);
    const labels = { safekeeper: peer.address };
    while (!signal.aborted) {
      try {
        await this.appendSession(peer, signal, () => backoff.reset());
      } catch (error) {
        peer.connected = false;
        peerConnectedGauge.set(labels, 0);
        if (signal.aborted) return;
        if (isAborted(error)) {
          this.fence(`safekeeper ${peer.address}: ${error.details}`);
          return;
        }
        peer.lastError = describe(error);
        reconnects.inc(labels);
        this.options.log.warn({ safekeeper: peer.address, error: peer.lastError }, 'append stream failed; reconnecting');
        await backoff.wait(signal).catch(() => undefined);
      }
    }
  }

  private async appendSession(peer: Peer, signal: AbortSignal, onStarted: () => void): Promise<void> {
    const { timelineId, term, proposerId, log } = this.options;
    const buffer = this.buffer as WalBuffer;
    // A vote again (the same term and proposer may reconnect) tells where its log is now.
    const vote = await peer.client.vote({ timelineId, term, proposerId }, { signal, deadline: new Date(Date.now() + VOTE_DEADLINE_MS) });
    const voter = toVoter(peer.address, vote.status);
    peer.lastHeardFlushLsn = voter.flushLsn;
    const socketAddress = this.options.useAppendSocket === false ? '' : vote.appendSocketAddress;
    const startAt = this.core.startPoint(voter, buffer.endLsn);

    const session = new AbortController();
    const endSession = () => session.abort();
    signal.addEventListener('abort', endSession, { once: true });
    const requests = new AsyncQueue<AppendRequest>();
    requests.push({
      start: { timelineId, term, proposerId, termHistory: [...this.core.termHistory], startStreamingAt: startAt, systemId: this.systemId },
    });
    try {
      // The framed transport when the safekeeper offers it (far less CPU per message than gRPC), else gRPC.
      const responses = (
        socketAddress ? appendOverSocket(socketAddress, requests, session.signal, currentProcessToken() ?? '') : peer.client.append(requests, { signal: session.signal })
      )[Symbol.asyncIterator]();
      const first = await responses.next();
      if (first.done) throw new Error(`safekeeper ${peer.address} closed the Append stream at once`);
      peer.flushLsn = first.value.flushLsn;
      this.core.forgetFlush(peer.address);
      peer.connected = true;
      peer.lastError = '';
      peerConnectedGauge.set({ safekeeper: peer.address }, 1);
      onStarted();
      log.info(
        {
          safekeeper: peer.address,
          transport: socketAddress ? `socket ${socketAddress}` : 'grpc',
          startAt: formatLsn(startAt),
          flushLsn: formatLsn(first.value.flushLsn),
          heldBefore: formatLsn(voter.flushLsn),
        },
        startAt < voter.flushLsn ? 'safekeeper joined; its divergent tail was truncated' : 'safekeeper joined',
      );
      this.acknowledged(peer);

      const receiving = (async () => {
        for (;;) {
          const next = await responses.next();
          if (next.done) throw new Error(`safekeeper ${peer.address} ended the Append stream`);
          peer.flushLsn = maxLsn(peer.flushLsn ?? 0n, next.value.flushLsn);
          peer.lastHeardFlushLsn = peer.flushLsn;
          peer.knownCommitLsn = maxLsn(peer.knownCommitLsn, next.value.commitLsn);
          this.acknowledged(peer);
        }
      })();
      const sending = this.sendLoop(peer, requests, first.value.flushLsn, session.signal);
      await Promise.race([receiving, sending]);
    } finally {
      session.abort();
      requests.end();
      signal.removeEventListener('abort', endSession);
    }
  }

  /** Sends WAL from `position` on: from the buffer, or from another safekeeper when below it; heartbeats. */
  private async sendLoop(peer: Peer, requests: AsyncQueue<AppendRequest>, position: Lsn, signal: AbortSignal): Promise<never> {
    const buffer = this.buffer as WalBuffer;
    let next = position;
    let sentCommit = -1n;
    let lastSent = Date.now();
    const unacknowledgedEnds: Lsn[] = [];
    let catchUp: { beginLsn: Lsn; data: Buffer } | null = null;
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const acknowledged = peer.flushLsn ?? 0n;
      while (unacknowledgedEnds.length > 0 && unacknowledgedEnds[0] <= acknowledged) unacknowledgedEnds.shift();
      // Few messages in flight: under load, WAL accumulates while one is being fsynced and goes as one larger
      // message (the safekeepers' group commit), instead of one message per Postgres flush.
      if (unacknowledgedEnds.length < MAX_UNACKNOWLEDGED_MESSAGES && next - acknowledged < BigInt(IN_FLIGHT_WINDOW)) {
        let data = buffer.read(next, MAX_MESSAGE_BYTES);
        if (data === null) {
          // Below the buffer: WAL from another safekeeper, fetched a few MiB at a time and sent in message-sized pieces.
          if (!catchUp || next < catchUp.beginLsn || next >= catchUp.beginLsn + BigInt(catchUp.data.length)) {
            catchUp = { beginLsn: next, data: await this.readFromPeers(peer, next, signal) };
          }
          const offset = Number(next - catchUp.beginLsn);
          data = catchUp.data.subarray(offset, offset + MAX_MESSAGE_BYTES);
        }
        const sinceLast = Date.now() - lastSent;
        // The commit LSN rides on WAL messages; alone it goes at most every COMMIT_ONLY_INTERVAL_MS (an extra
        // message per commit to every safekeeper would double the traffic under load).
        if (data.length > 0 || (this.core.commitLsn > sentCommit && sinceLast >= COMMIT_ONLY_INTERVAL_MS) || sinceLast >= HEARTBEAT_MS) {
          requests.push({ wal: { beginLsn: next, walData: data, commitLsn: this.core.commitLsn, peerHorizonLsn: this.peerHorizon() } });
          next += BigInt(data.length);
          if (data.length > 0) unacknowledgedEnds.push(next);
          sentCommit = this.core.commitLsn;
          lastSent = Date.now();
          if (data.length > 0) continue;
        }
      }
      const wait = this.core.commitLsn > sentCommit ? COMMIT_ONLY_INTERVAL_MS : HEARTBEAT_MS;
      await this.changed.wait(signal, Math.max(1, wait - (Date.now() - lastSent)));
    }
  }

  /**
   * WAL at `lsn` that the buffer no longer (or never) held: read from a safekeeper whose log is ours there: the
   * donor below the term start, or a safekeeper that acknowledged it in this term.
   */
  private async readFromPeers(target: Peer, lsn: Lsn, signal: AbortSignal): Promise<Buffer> {
    const sources: { peer: Peer; until: Lsn }[] = [];
    for (const peer of this.peers) {
      if (peer === target) continue;
      if (peer.flushLsn !== null && peer.flushLsn > lsn) sources.push({ peer, until: peer.flushLsn });
      else if (peer.address === this.donor?.address && lsn < this.core.termStartLsn) sources.push({ peer, until: this.core.termStartLsn });
    }
    sources.sort((a, b) => (a.until > b.until ? -1 : 1));
    const bufferStart = (this.buffer as WalBuffer).startLsn;
    for (const source of sources) {
      try {
        const until = lsn < bufferStart ? minLsn(source.until, bufferStart) : source.until;
        const stream = source.peer.client.streamWal(
          { timelineId: this.options.timelineId, startLsn: lsn, endLsn: until, includeUncommitted: true },
          { signal, deadline: new Date(Date.now() + 10_000) },
        );
        const parts: Buffer[] = [];
        let position = lsn;
        for await (const message of stream) {
          if (message.walData.length === 0) continue;
          if (message.beginLsn !== position) throw new Error(`WAL at ${formatLsn(message.beginLsn)} where ${formatLsn(position)} was expected`);
          parts.push(message.walData);
          position += BigInt(message.walData.length);
          if (position - lsn >= BigInt(CATCH_UP_READ_BYTES)) break;
        }
        if (parts.length > 0) return Buffer.concat(parts);
      } catch (error) {
        if (signal.aborted) throw error;
        this.options.log.warn({ source: source.peer.address, lsn: formatLsn(lsn), error: describe(error) }, 'could not read WAL from a peer');
      }
    }
    throw new Error(`no safekeeper can provide WAL at ${formatLsn(lsn)} for ${target.address} yet`);
  }

  /** A safekeeper acknowledged a flush: the commit LSN may move, the buffer may shrink, senders may go on. */
  private acknowledged(peer: Peer): void {
    const labels = { safekeeper: peer.address };
    const flush = peer.flushLsn ?? 0n;
    peerFlushGauge.set(labels, Number(flush));
    peerLagGauge.set(labels, Number(this.receivedLsn > flush ? this.receivedLsn - flush : 0n));
    const candidate = peer.flushLsn === null ? null : this.core.acknowledge(peer.address, peer.flushLsn);
    if (candidate !== null) {
      commitLsnGauge.set(Number(candidate));
      const now = performance.now();
      while (this.received.length > 0 && this.received[0].endLsn <= candidate) {
        commitDelay.observe((now - (this.received.shift() as { at: number }).at) / 1000);
      }
      for (const listener of this.commitListeners) listener(candidate);
      this.commitNotifier.notify();
    }
    this.trimBuffer();
    this.changed.notify();
  }

  /** Keeps what some safekeeper still lacks, but not more than BUFFER_KEEP_BYTES below the commit LSN. */
  private trimBuffer(): void {
    const buffer = this.buffer as WalBuffer;
    let lowest = buffer.endLsn;
    for (const peer of this.peers) lowest = minLsn(lowest, peer.flushLsn ?? buffer.startLsn);
    const keep = BigInt(this.options.bufferKeepBytes ?? BUFFER_KEEP_BYTES);
    if (this.core.commitLsn - lowest > keep) lowest = this.core.commitLsn - keep;
    if (lowest > buffer.startLsn) buffer.trimBelow(minLsn(lowest, this.core.commitLsn));
  }
}

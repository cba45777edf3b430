/**
 * A deterministic simulation of the WAL consensus in one process: three safekeepers running the real acceptor
 * (Timeline, WalStore, control file) on simulated disks, and proposers running the real proposer decisions
 * (ProposerCore, with the agent's proposer identities), connected by a simulated network. A schedule of random
 * numbers, drawn from a seeded PRNG, picks each step: deliver, drop or duplicate a message (in any order, which is
 * any delay), write WAL, stream it, complete a safekeeper's fsync, crash a safekeeper (its unsynced writes are
 * lost), restart a proposer under its term (what a driver restarting an agent does), or start a new proposer with
 * a higher term. After every step the invariants are checked; the first one broken ends the run.
 */
import { Timeline, type AppendSession } from '../../src/safekeeper/timeline.js';
import { readControlState } from '../../src/safekeeper/control-file.js';
import { ProposerCore } from '../../src/lib/consensus/proposer-core.js';
import { historyProblem, type TermSwitch, type VoterLog } from '../../src/lib/consensus/term-history.js';
import { incarnationProposerId } from '../../src/agent/walproposer.js';
import { ServerError, Status } from '../../src/lib/grpc/errors.js';
import { formatLsn, type Lsn } from '../../src/lib/lsn.js';
import { SimulatedDisk } from './simulated-disk.js';

const TIMELINE_ID = 'tl-00000000000000000000000000000001';
const DIRECTORY = `/safekeeper/timelines/${TIMELINE_ID}`;
/** Where the timeline's WAL starts (the start of segment 1, as a new timeline's first segment). */
export const BASE_LSN = 0x1000000n;
const SAFEKEEPERS = 3;
const QUORUM = 2;

/** A broken invariant: which, and what was seen. */
export class InvariantViolation extends Error {
  override name = 'InvariantViolation';
  constructor(
    readonly invariant: string,
    detail: string,
  ) {
    super(`${invariant}: ${detail}`);
  }
}

/** A small, fast, seedable PRNG (mulberry32): the same seed gives the same schedule on every machine. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return (value ^ (value >>> 14)) >>> 0;
  };
}

/** A step of the schedule: four random numbers, read by the step's kind. */
export type Step = readonly [number, number, number, number];

/** The schedule of a seed. */
export function scheduleOf(seed: number, steps: number): Step[] {
  const next = prng(seed);
  return Array.from({ length: steps }, () => [next(), next(), next(), next()] as const);
}

interface Voter extends VoterLog {
  commitLsn: Lsn;
}

type Message =
  | { kind: 'vote'; to: number; from: number; term: bigint; proposerId: string }
  | { kind: 'vote-reply'; to: number; from: number; voter: Voter }
  | { kind: 'start'; to: number; from: number; session: number; term: bigint; proposerId: string; history: TermSwitch[]; startAt: Lsn }
  | { kind: 'started'; to: number; from: number; session: number; flushLsn: Lsn }
  | { kind: 'append'; to: number; from: number; session: number; term: bigint; proposerId: string; beginLsn: Lsn; data: Buffer; commitLsn: Lsn }
  | { kind: 'ack'; to: number; from: number; session: number; flushLsn: Lsn }
  | { kind: 'refused'; to: number; from: number; session: number | null; fenced: boolean; reason: string };

/** A safekeeper: its disk and, while it runs, its timeline. */
interface SimSafekeeper {
  index: number;
  disk: SimulatedDisk;
  timeline: Timeline;
  /** Append sessions open on it, by their proposer's session number. */
  sessions: Map<number, { proposer: number; session: AppendSession; ended: boolean; pendingAck: boolean }>;
  /** The highest term ever promised here (log monotonicity: it never goes back, crash or not). */
  promisedTerm: bigint;
}

interface PeerState {
  /** Where this peer is in our term: asked for a vote, voted, starting its stream, streaming. */
  phase: 'voting' | 'voted' | 'starting' | 'streaming';
  voter: Voter | null;
  session: number;
  next: Lsn;
}

/** A proposer process: one incarnation of a compute, with one term. */
interface SimProposer {
  index: number;
  computeId: string;
  proposerId: string;
  term: bigint;
  core: ProposerCore<Voter, number>;
  peers: PeerState[];
  /** Its log from BASE_LSN: the donor's WAL below the term start, then its own. */
  log: Buffer;
  alive: boolean;
}

/** The world of one seed. */
export class ConsensusWorld {
  readonly safekeepers: SimSafekeeper[] = [];
  private readonly proposers: SimProposer[] = [];
  private network: Message[] = [];
  private latestTerm = 0n;
  private nextSession = 1;
  private computes = 0;
  /** Which proposer incarnations won each term (election safety: at most one). */
  private readonly electedByTerm = new Map<bigint, Set<number>>();
  /** The longest commit acknowledged to a client: its WAL from BASE_LSN. */
  private committed = Buffer.alloc(0);
  /** Bytes of WAL committed (and acknowledged to clients) so far. */
  get committedBytes(): number {
    return this.committed.length;
  }

  /** A trace of the steps taken, for a failure report. */
  readonly trace: string[] = [];

  private constructor() {}

  static async create(): Promise<ConsensusWorld> {
    const world = new ConsensusWorld();
    for (let index = 0; index < SAFEKEEPERS; index += 1) {
      const disk = new SimulatedDisk();
      const timeline = await Timeline.create(DIRECTORY, TIMELINE_ID, disk);
      world.safekeepers.push({ index, disk, timeline, sessions: new Map(), promisedTerm: 0n });
    }
    return world;
  }

  /** Runs one step of the schedule, then checks every invariant. */
  async step(step: Step): Promise<void> {
    const [kind, a, b, c] = step;
    const roll = kind % 1000;
    if (roll < 500) await this.deliver(a, false);
    else if (roll < 510) this.drop(a);
    else if (roll < 520) await this.deliver(a, true);
    else if (roll < 640) await this.flush(a % SAFEKEEPERS);
    else if (roll < 740) this.write(a, b, c);
    else if (roll < 985) this.send(a, b, c);
    else if (roll < 992) await this.crash(a % SAFEKEEPERS, b % 3);
    else if (roll < 996) this.restartProposer(a);
    else this.newProposer();
    await this.checkInvariants();
  }

  // ---- Proposers ----

  /** The control plane grants a new, higher term to a new compute. */
  newProposer(): void {
    this.latestTerm += 1n;
    this.computes += 1;
    this.startProposer(`cp-${this.computes}`, this.latestTerm);
    this.trace.push(`new proposer of term ${this.latestTerm}`);
  }

  /** The driver restarts the newest compute's agent with the same compute id and term: a new process. */
  private restartProposer(pick: number): void {
    const alive = this.proposers.filter((proposer) => proposer.alive);
    if (alive.length === 0) return this.newProposer();
    const old = alive[pick % alive.length];
    old.alive = false;
    this.startProposer(old.computeId, old.term);
    this.trace.push(`restart proposer ${old.proposerId} (term ${old.term})`);
  }

  private startProposer(computeId: string, term: bigint): void {
    const proposer: SimProposer = {
      index: this.proposers.length,
      computeId,
      proposerId: incarnationProposerId(computeId),
      term,
      core: new ProposerCore<Voter, number>(term, SAFEKEEPERS),
      peers: this.safekeepers.map(() => ({ phase: 'voting', voter: null, session: 0, next: 0n })),
      log: Buffer.alloc(0),
      alive: true,
    };
    this.proposers.push(proposer);
    for (const safekeeper of this.safekeepers) this.askVote(proposer, safekeeper.index);
  }

  private askVote(proposer: SimProposer, peer: number): void {
    proposer.peers[peer] = { phase: 'voting', voter: null, session: 0, next: 0n };
    this.network.push({ kind: 'vote', to: peer, from: proposer.index, term: proposer.term, proposerId: proposer.proposerId });
  }

  /** A client commits WAL through a proposer: it goes into the proposer's log. */
  private write(pick: number, length: number, fill: number): void {
    const proposer = this.pickStarted(pick);
    if (!proposer) return;
    const bytes = Buffer.alloc(1 + (length % 48));
    for (let index = 0; index < bytes.length; index += 1) bytes[index] = (fill + index * 31 + proposer.index * 7) & 0xff;
    proposer.log = Buffer.concat([proposer.log, bytes]);
  }

  /** A proposer sends the next piece of its log (or just its commit LSN) to one streaming peer, or to all. */
  private send(pick: number, peerPick: number, length: number): void {
    const proposer = this.pickStarted(pick);
    if (!proposer) return;
    const peer = peerPick % (SAFEKEEPERS + 1);
    if (peer === SAFEKEEPERS) {
      for (let index = 0; index < SAFEKEEPERS; index += 1) this.sendTo(proposer, index, length);
    } else {
      this.sendTo(proposer, peer, length);
    }
  }

  private sendTo(proposer: SimProposer, peer: number, length: number): void {
    const state = proposer.peers[peer];
    if (state.phase !== 'streaming') return;
    const end = BASE_LSN + BigInt(proposer.log.length);
    const size = Math.min(Number(end - state.next), 1 + (length % 64));
    const data = proposer.log.subarray(Number(state.next - BASE_LSN), Number(state.next - BASE_LSN) + size);
    this.network.push({
      kind: 'append',
      to: peer,
      from: proposer.index,
      session: state.session,
      term: proposer.term,
      proposerId: proposer.proposerId,
      beginLsn: state.next,
      data: Buffer.from(data),
      commitLsn: proposer.core.commitLsn,
    });
    state.next += BigInt(data.length);
  }

  private pickStarted(pick: number): SimProposer | null {
    const candidates = this.proposers.filter((proposer) => proposer.alive && proposer.core.started && !proposer.core.fenced);
    return candidates.length === 0 ? null : candidates[pick % candidates.length];
  }

  private async onProposerMessage(message: Message): Promise<void> {
    const proposer = this.proposers[message.to];
    if (!proposer.alive || proposer.core.fenced) return;
    const state = proposer.peers[message.from];
    switch (message.kind) {
      case 'vote-reply': {
        if (state.phase !== 'voting') return;
        state.phase = 'voted';
        state.voter = message.voter;
        const elected = proposer.core.recordVote(message.from, message.voter);
        if (elected) {
          const winners = this.electedByTerm.get(proposer.term) ?? new Set<number>();
          winners.add(proposer.index);
          this.electedByTerm.set(proposer.term, winners);
          this.beginTerm(proposer, elected.donor, elected.emptyLog, this.donorIndex(proposer, elected.donor));
        } else if (proposer.core.started) {
          this.startStream(proposer, message.from);
        }
        return;
      }
      case 'started':
        if (state.phase !== 'starting' || state.session !== message.session) return;
        state.phase = 'streaming';
        state.next = message.flushLsn;
        proposer.core.forgetFlush(message.from);
        this.acknowledged(proposer, message.from, message.flushLsn);
        return;
      case 'ack':
        if (state.phase !== 'streaming' || state.session !== message.session) return;
        this.acknowledged(proposer, message.from, message.flushLsn);
        return;
      case 'refused':
        if (message.fenced) {
          proposer.core.fence(message.reason);
          return;
        }
        if (message.session !== null && message.session !== state.session) return;
        // The stream failed (a gap after a lost message, a restarted safekeeper): reconnect with a vote.
        this.askVote(proposer, message.from);
        return;
      default:
        return;
    }
  }

  private donorIndex(proposer: SimProposer, donor: Voter): number {
    return proposer.peers.findIndex((peer) => peer.voter === donor);
  }

  /** Won: fetch the donor's WAL (below the term start), adopt the history, and start every voter's stream. */
  private beginTerm(proposer: SimProposer, donor: Voter, emptyLog: boolean, donorIndex: number): void {
    const termStart = emptyLog ? BASE_LSN : donor.flushLsn;
    if (!emptyLog) {
      // The walproposer reads WAL below its buffer from the donor (StreamWal); the donor still holds it unless a
      // newer term truncated it, and then this proposer is fenced anyway: it gives up (as a failed start).
      const donorTimeline = this.safekeepers[donorIndex].timeline;
      if (donorTimeline.flushLsn < termStart) {
        proposer.alive = false;
        this.trace.push(`proposer ${proposer.proposerId} gave up: its donor no longer holds ${formatLsn(termStart)}`);
        return;
      }
      proposer.log = donorTimeline.readWal(BASE_LSN, termStart, true, Number(termStart - BASE_LSN) + 1);
      if (proposer.log.length !== Number(termStart - BASE_LSN)) throw new Error('short read of the donor');
    }
    try {
      proposer.core.begin(donor, termStart);
    } catch (error) {
      // The agent's start fails the same way ("term N is not above the donor's last term"): it gives up.
      proposer.alive = false;
      this.trace.push(`proposer ${proposer.proposerId} gave up: ${(error as Error).message}`);
      return;
    }
    this.trace.push(`proposer ${proposer.proposerId} elected in term ${proposer.term}, starts at ${formatLsn(termStart)}`);
    proposer.peers.forEach((peer, index) => {
      if (peer.phase === 'voted') this.startStream(proposer, index);
    });
  }

  private startStream(proposer: SimProposer, peer: number): void {
    const state = proposer.peers[peer];
    const startAt = proposer.core.startPoint(state.voter as Voter, BASE_LSN + BigInt(proposer.log.length));
    state.phase = 'starting';
    state.session = this.nextSession++;
    this.network.push({
      kind: 'start',
      to: peer,
      from: proposer.index,
      session: state.session,
      term: proposer.term,
      proposerId: proposer.proposerId,
      history: [...proposer.core.termHistory],
      startAt,
    });
  }

  private acknowledged(proposer: SimProposer, peer: number, flushLsn: Lsn): void {
    const commit = proposer.core.acknowledge(peer, flushLsn);
    if (commit === null) return;
    // Postgres is told; the commits up to here are acknowledged to their clients.
    const bytes = proposer.log.subarray(0, Number(commit - BASE_LSN));
    const shared = Math.min(bytes.length, this.committed.length);
    if (!bytes.subarray(0, shared).equals(this.committed.subarray(0, shared))) {
      throw new InvariantViolation(
        'log safety',
        `proposer ${proposer.proposerId} (term ${proposer.term}) acknowledged commit ${formatLsn(commit)} whose WAL differs from WAL committed earlier ` +
          `at ${formatLsn(BASE_LSN + BigInt(firstDifference(bytes, this.committed)))}`,
      );
    }
    if (bytes.length > this.committed.length) {
      this.committed = Buffer.from(bytes);
      this.trace.push(`commit ${formatLsn(commit)} acknowledged by ${proposer.proposerId} (term ${proposer.term})`);
    }
  }

  // ---- Safekeepers ----

  private async onSafekeeperMessage(message: Message): Promise<void> {
    const safekeeper = this.safekeepers[message.to];
    const timeline = safekeeper.timeline;
    const reply = (answer: Message) => this.network.push(answer);
    const refuse = (error: unknown, session: number | null) => {
      if (!(error instanceof ServerError)) throw error;
      reply({ kind: 'refused', to: message.from, from: message.to, session, fenced: error.code === Status.ABORTED, reason: error.details });
    };
    switch (message.kind) {
      case 'vote':
        try {
          const snapshot = await timeline.vote(message.term, message.proposerId);
          reply({
            kind: 'vote-reply',
            to: message.from,
            from: message.to,
            voter: { history: snapshot.termHistory, flushLsn: snapshot.flushLsn, timelineStartLsn: snapshot.timelineStartLsn, commitLsn: snapshot.commitLsn },
          });
        } catch (error) {
          refuse(error, null);
        }
        return;
      case 'start': {
        const entry = { proposer: message.from, ended: false, pendingAck: false, session: null as unknown as AppendSession };
        entry.session = {
          term: message.term,
          end: (error: Error) => {
            if (entry.ended) return;
            entry.ended = true;
            safekeeper.sessions.delete(message.session);
            timeline.closeSession(entry.session);
            refuse(error, message.session);
          },
        };
        try {
          timeline.openSession(entry.session, message.proposerId);
          safekeeper.sessions.set(message.session, entry);
          const started = await timeline.startAppend({
            term: message.term,
            proposerId: message.proposerId,
            termHistory: message.history,
            startStreamingAt: message.startAt,
            systemId: 42n,
          });
          if (!entry.ended) reply({ kind: 'started', to: message.from, from: message.to, session: message.session, flushLsn: started.flushLsn });
        } catch (error) {
          if (!entry.ended) entry.session.end(error as Error);
        }
        return;
      }
      case 'append': {
        const entry = safekeeper.sessions.get(message.session);
        if (!entry || entry.ended) return;
        try {
          timeline.appendWal(message.term, message.proposerId, message.beginLsn, message.data);
          timeline.learnCommit(message.commitLsn);
          entry.pendingAck = true;
        } catch (error) {
          entry.session.end(error as Error);
        }
        return;
      }
      default:
        return;
    }
  }

  /** A safekeeper's group fsync completes: the open streams with appends waiting get its flush LSN. */
  private async flush(index: number): Promise<void> {
    const safekeeper = this.safekeepers[index];
    await safekeeper.timeline.waitFlushed();
    if (process.env.SPG99_SIM_TRACE) this.trace.push(`flush safekeeper ${index}: ${formatLsn(safekeeper.timeline.flushLsn)}`);
    for (const [session, entry] of safekeeper.sessions) {
      if (!entry.pendingAck || entry.ended) continue;
      entry.pendingAck = false;
      this.network.push({ kind: 'ack', to: entry.proposer, from: index, session, flushLsn: safekeeper.timeline.flushLsn });
    }
  }

  /**
   * A crash: the process and every unsynced write are gone (`writeBack` 0), or the WAL files' (1) or all files'
   * (2) unsynced writes had been written back early; it starts again from what its disk kept.
   */
  private async crash(index: number, writeBack: number): Promise<void> {
    const safekeeper = this.safekeepers[index];
    for (const [, entry] of safekeeper.sessions) {
      entry.ended = true;
      this.network.push({ kind: 'refused', to: entry.proposer, from: index, session: null, fenced: false, reason: 'safekeeper crashed' });
    }
    safekeeper.sessions.clear();
    safekeeper.disk.crash((file) => writeBack === 2 || (writeBack === 1 && file.endsWith('.wal')));
    const persisted = readControlState(DIRECTORY, safekeeper.disk);
    safekeeper.timeline = await Timeline.load(DIRECTORY, [], safekeeper.disk);
    this.trace.push(`crash safekeeper ${index}${writeBack > 0 ? ` (${writeBack === 1 ? 'WAL' : 'all'} written back)` : ''}: flush ${formatLsn(safekeeper.timeline.flushLsn)}`);
    if (persisted && persisted.commitLsn > safekeeper.timeline.flushLsn) {
      throw new InvariantViolation(
        'committed never truncated',
        `safekeeper ${index} persisted commit LSN ${formatLsn(persisted.commitLsn)} but holds WAL only up to ${formatLsn(safekeeper.timeline.flushLsn)} after a crash`,
      );
    }
  }

  // ---- The network ----

  private async deliver(pick: number, duplicate: boolean): Promise<void> {
    if (this.network.length === 0) return;
    // Mostly one of the oldest messages (a network delivers most in order), else any (a delay of any length).
    const index = pick % 4 === 0 ? (pick >>> 2) % this.network.length : (pick >>> 2) % Math.min(3, this.network.length);
    const message = this.network[index];
    if (!duplicate) this.network.splice(index, 1);
    if (process.env.SPG99_SIM_TRACE) this.trace.push(`deliver${duplicate ? ' (duplicate)' : ''} ${describeMessage(message)}`);
    if (message.kind === 'vote' || message.kind === 'start' || message.kind === 'append') await this.onSafekeeperMessage(message);
    else await this.onProposerMessage(message);
  }

  private drop(pick: number): void {
    if (this.network.length > 0) this.network.splice(pick % this.network.length, 1);
  }

  // ---- Invariants ----

  private async checkInvariants(): Promise<void> {
    for (const [term, winners] of this.electedByTerm) {
      if (winners.size > 1) {
        const names = [...winners].map((index) => this.proposers[index].proposerId).join(', ');
        throw new InvariantViolation('election safety', `term ${term} elected ${winners.size} proposers: ${names}`);
      }
    }
    let holding = 0;
    for (const safekeeper of this.safekeepers) {
      const snapshot = safekeeper.timeline.snapshot();
      if (snapshot.promisedTerm < safekeeper.promisedTerm) {
        throw new InvariantViolation('log monotonicity', `safekeeper ${safekeeper.index} went back from term ${safekeeper.promisedTerm} to ${snapshot.promisedTerm}`);
      }
      safekeeper.promisedTerm = snapshot.promisedTerm;
      const problem = historyProblem(snapshot.termHistory);
      if (problem) throw new InvariantViolation('log monotonicity', `safekeeper ${safekeeper.index}'s ${problem}`);
      const last = snapshot.termHistory[snapshot.termHistory.length - 1];
      if (last && last.term > snapshot.promisedTerm) {
        throw new InvariantViolation('log monotonicity', `safekeeper ${safekeeper.index} holds WAL of term ${last.term} above its promise ${snapshot.promisedTerm}`);
      }
      const log = snapshot.flushLsn > BASE_LSN ? safekeeper.timeline.readWal(BASE_LSN, snapshot.flushLsn, true, Number(snapshot.flushLsn - BASE_LSN)) : Buffer.alloc(0);
      // What this safekeeper knows is committed is the committed WAL.
      const known = Math.min(Number(snapshot.commitLsn > BASE_LSN ? snapshot.commitLsn - BASE_LSN : 0n), log.length, this.committed.length);
      if (!log.subarray(0, known).equals(this.committed.subarray(0, known))) {
        throw new InvariantViolation(
          'log safety',
          `safekeeper ${safekeeper.index} holds other WAL than was committed at ${formatLsn(BASE_LSN + BigInt(firstDifference(log.subarray(0, known), this.committed)))}`,
        );
      }
      if (log.length >= this.committed.length && log.subarray(0, this.committed.length).equals(this.committed)) holding += 1;
    }
    if (this.committed.length > 0 && holding < QUORUM) {
      throw new InvariantViolation(
        'no acknowledged commit lost',
        `commit ${formatLsn(BASE_LSN + BigInt(this.committed.length))} was acknowledged, but only ${holding} safekeeper(s) hold its WAL`,
      );
    }
  }

  /** One line on each safekeeper, for a failure report. */
  describe(): string {
    return this.safekeepers
      .map((safekeeper) => {
        const snapshot = safekeeper.timeline.snapshot();
        const history = snapshot.termHistory.map((entry) => `${entry.term}@${formatLsn(entry.startLsn)}`).join(',');
        return `safekeeper ${safekeeper.index}: promised ${snapshot.promisedTerm} (${snapshot.promisedProposerId}), history [${history}], flush ${formatLsn(snapshot.flushLsn)}, commit ${formatLsn(snapshot.commitLsn)}`;
      })
      .join('\n');
  }
}

function describeMessage(message: Message): string {
  const { kind, from, to } = message;
  const rest = Object.entries(message)
    .filter(([key]) => !['kind', 'from', 'to', 'data', 'voter', 'history'].includes(key))
    .map(([key, value]) => `${key}=${typeof value === 'bigint' && key.endsWith('Lsn') ? formatLsn(value) : String(value)}`);
  if (message.kind === 'append') rest.push(`bytes=${message.data.length}`);
  if (message.kind === 'vote-reply') rest.push(`flushLsn=${formatLsn(message.voter.flushLsn)}`);
  return `${kind} ${from}->${to} ${rest.join(' ')}`;
}

function firstDifference(a: Buffer, b: Buffer): number {
  const length = Math.min(a.length, b.length);
  for (let index = 0; index < length; index += 1) if (a[index] !== b[index]) return index;
  return length;
}

/** The outcome of a run: the step that broke an invariant, or null. */
export interface RunOutcome {
  failedAt: number | null;
  violation: InvariantViolation | null;
  world: ConsensusWorld;
}

/** Runs a schedule from a fresh world; stops at the first broken invariant. */
export async function runSchedule(schedule: readonly Step[]): Promise<RunOutcome> {
  const world = await ConsensusWorld.create();
  world.newProposer();
  for (let index = 0; index < schedule.length; index += 1) {
    try {
      await world.step(schedule[index]);
    } catch (error) {
      if (error instanceof InvariantViolation) return { failedAt: index, violation: error, world };
      throw error;
    }
  }
  return { failedAt: null, violation: null, world };
}

/**
 * A shorter schedule that still breaks the same invariant: drops chunks of steps (halves, quarters, ... single
 * steps) while the run still fails, within `budget` reruns.
 */
export async function shrink(schedule: readonly Step[], invariant: string, budget = 300): Promise<Step[]> {
  let current = [...schedule];
  let runs = 0;
  for (let size = Math.max(1, Math.floor(current.length / 2)); size >= 1 && runs < budget; size = Math.floor(size / 2)) {
    for (let start = 0; start < current.length && runs < budget; ) {
      const candidate = [...current.slice(0, start), ...current.slice(start + size)];
      runs += 1;
      const outcome = await runSchedule(candidate);
      if (outcome.violation?.invariant === invariant) current = outcome.failedAt === null ? candidate : candidate.slice(0, outcome.failedAt + 1);
      else start += size;
    }
    if (size === 1) break;
  }
  return current;
}

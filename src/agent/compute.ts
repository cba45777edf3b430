/**
 * A compute: one writer Postgres and its walproposer, started in the order that keeps commits safe:
 * election on the safekeepers → Postgres (initdb when the data directory is new) → WAL streaming, with Postgres
 * waiting on us as its synchronous standby so that a commit returns only when a majority has it.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { ComputeState } from '../../gen/spg99/compute/v1/compute.js';
import type { Logger } from '../lib/log.js';
import { type Lsn, formatLsn, segmentNumber, segmentStart } from '../lib/lsn.js';
import { gauge } from '../lib/metrics.js';
import { initdb, isInitialized, PostgresServer } from '../lib/pg/postgres.js';
import { ReplicationConnection, type SystemIdentity } from '../lib/pg/replication.js';
import { createSpgClient, openChannel } from '../lib/grpc/client.js';
import { ClientError, Status } from '../lib/grpc/errors.js';
import { SafekeeperServiceDefinition } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { PageServiceDefinition, TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import { WalDecoder, recordBoundary } from '../lib/pg/wal-decoder.js';
import { fetchBasebackup } from './basebackup.js';
import { ActivitySampler, AGENT_APPLICATION_NAME, type ActivityFigures } from './activity.js';
import type { RoleChanges, RoleVerifier } from './model.js';
import { applyRoles, writeHbaFile, type AppliedRoles } from './roles.js';
import { FencedError, incarnationProposerId, WalProposer, type Election } from './walproposer.js';

/** The name Postgres knows the walproposer by (its synchronous standby). */
export const STANDBY_NAME = 'walproposer';
const SLOT_NAME = 'walproposer';

const startPhaseGauge = gauge('spg99_compute_start_phase_seconds', 'Duration of each compute start phase', ['phase']);
const stateGauge = gauge('spg99_compute_state', 'The compute state (ComputeState enum number)');

/** What a compute needs. */
export interface ComputeOptions {
  computeId: string;
  timelineId: string;
  term: bigint;
  safekeepers: string[];
  pgDataDir: string;
  pgPort: number;
  /** Create the timeline on safekeepers that lack it (local clusters; the control plane does it otherwise). */
  createTimeline: boolean;
  /** Whether the walproposer uses the safekeepers' framed Append transport when offered. */
  useAppendSocket?: boolean;
  /** WAL the walproposer keeps in memory for lagging safekeepers, in bytes. */
  walBufferBytes?: number;
  /** The pageserver holding the timeline's history: a compute without a data directory starts from its basebackup. */
  pageserver?: string;
  /**
   * The data directory is a cached one, left by a compute of this timeline that stopped cleanly at this LSN: it is
   * used when the timeline still ends there, and replaced by a basebackup otherwise.
   */
  cachedDataLsn?: bigint;
  /** Extra Postgres settings. */
  pgSettings?: Record<string, string | number>;
  /** Users' roles to create (or update) before the compute counts as running. */
  roles?: RoleVerifier[];
  log: Logger;
  traceId?: string;
}

/** Postgres is not running (yet, or any more): what needs it cannot be done now. */
export class PostgresNotRunningError extends Error {
  override readonly name = 'PostgresNotRunningError';
}

/** Why the compute is where it is. */
export interface ComputeStatus {
  state: ComputeState;
  reason: string;
  term: bigint;
  commitLsn: Lsn;
  receivedLsn: Lsn;
  startPhaseSeconds: Record<string, number>;
}

/** A writer compute. */
export class Compute {
  readonly proposer: WalProposer;
  private state: ComputeState = ComputeState.COMPUTE_STATE_ELECTING;
  private reason = '';
  private postgres: PostgresServer | null = null;
  private replication: ReplicationConnection | null = null;
  private readonly controller = new AbortController();
  private readonly phases: Record<string, number> = {};
  private streaming: Promise<void> | null = null;
  private stopping: Promise<Lsn> | null = null;
  private shuttingDown: Promise<void> | null = null;
  private readonly stateListeners: ((status: ComputeStatus) => void)[] = [];
  private sampler: ActivitySampler | null = null;
  /** Sessions the agent opened to its Postgres (they are not clients' activity). */
  private agentSessions = 0;
  /** Role changes, one at a time. */
  private rolesQueue: Promise<unknown> = Promise.resolve();
  /** Postgres' Unix socket directory: the WAL stream from Postgres goes through it (clients use TCP). */
  private readonly socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-pg-'));

  constructor(private readonly options: ComputeOptions) {
    this.proposer = new WalProposer({
      timelineId: options.timelineId,
      term: options.term,
      // One identity per process: a restarted agent (same compute id and term) is a new proposer, which safekeepers
      // refuse the term already promised to the previous one (docs/rfcs/2026-12-02-consensus-simulation.md).
      proposerId: incarnationProposerId(options.computeId),
      safekeepers: options.safekeepers,
      bufferKeepBytes: options.walBufferBytes,
      useAppendSocket: options.useAppendSocket,
      log: options.log.child({ part: 'walproposer' }),
      traceId: options.traceId,
    });
    this.proposer.onFenced((reason) => void this.onFenced(reason));
    this.proposer.onCommit((commitLsn) => this.replication?.sendStatus(this.proposer.receivedLsn, commitLsn, commitLsn));
    stateGauge.set(this.state);
  }

  /** The current status. */
  status(): ComputeStatus {
    return {
      state: this.state,
      reason: this.reason,
      term: this.options.term,
      commitLsn: this.proposer.commitLsn,
      receivedLsn: this.proposer.receivedLsn,
      startPhaseSeconds: { ...this.phases },
    };
  }

  /** The running Postgres, if any. */
  get postgresServer(): PostgresServer | null {
    return this.postgres;
  }

  /** Calls `listener` after every state change, with the new status. */
  onStateChange(listener: (status: ComputeStatus) => void): void {
    this.stateListeners.push(listener);
  }

  /**
   * Stops Postgres at once (no checkpoint, clients cut) because another writer was chosen: the state becomes FENCED
   * with `reason`. Nothing this compute still writes could commit anyway: the safekeepers refuse a superseded term.
   * A compute that already stopped or failed stays as it is.
   */
  async fence(reason: string): Promise<void> {
    if (this.state === ComputeState.COMPUTE_STATE_STOPPED || this.state === ComputeState.COMPUTE_STATE_FAILED) return;
    await this.onFenced(reason);
  }

  /** The current activity of Postgres. @throws PostgresNotRunningError unless the compute runs. */
  activity(): Promise<ActivityFigures> {
    if (this.state !== ComputeState.COMPUTE_STATE_RUNNING || !this.sampler || !this.postgres?.running) {
      return Promise.reject(new PostgresNotRunningError('Postgres is not running on this compute: activity is known only while it runs'));
    }
    return this.sampler.sample();
  }

  /**
   * Creates, updates and drops roles on the running Postgres (see {@link applyRoles}); one change at a time.
   * @throws PostgresNotRunningError unless the compute runs; RoleInUseError for a role to drop that owns objects.
   */
  applyRoles(changes: RoleChanges): Promise<AppliedRoles> {
    if (this.state !== ComputeState.COMPUTE_STATE_RUNNING || !this.postgres?.running) {
      return Promise.reject(new PostgresNotRunningError('Postgres is not running on this compute: roles can be changed only while it runs'));
    }
    return this.changeRoles(changes);
  }

  private changeRoles(changes: RoleChanges): Promise<AppliedRoles> {
    const run = this.rolesQueue.then(async () => {
      const client = await this.connectAgent();
      try {
        const applied = await applyRoles(client, changes);
        this.options.log.info({ ...applied }, 'roles applied');
        return applied;
      } finally {
        await client.end().catch(() => undefined);
      }
    });
    this.rolesQueue = run.catch(() => undefined);
    return run;
  }

  /** A new session of the agent on its Postgres, over the Unix socket, named so that it never counts as activity. */
  private async connectAgent(): Promise<pg.Client> {
    const client = new pg.Client({
      host: this.socketDir,
      port: this.options.pgPort,
      user: 'postgres',
      database: 'postgres',
      application_name: AGENT_APPLICATION_NAME,
      connectionTimeoutMillis: 10_000,
    });
    // A connection cut by a stop surfaces in the query that was running, not as an unhandled event.
    client.on('error', () => undefined);
    this.agentSessions += 1;
    await client.connect();
    return client;
  }

  /** Elects, starts Postgres and begins streaming; resolves when Postgres runs with the walproposer attached. */
  async start(): Promise<void> {
    const { log } = this.options;
    const signal = this.controller.signal;
    try {
      if (this.options.createTimeline) await this.phase('create_timeline', () => this.ensureTimelines());
      const election = await this.phase('election', () => this.proposer.elect(signal));
      this.setState(ComputeState.COMPUTE_STATE_STARTING);
      if (this.options.cachedDataLsn !== undefined && isInitialized(this.options.pgDataDir)) this.checkCachedData(election);
      if (!isInitialized(this.options.pgDataDir) && this.options.pageserver) {
        await this.phase('basebackup', () => this.fromBasebackup(election, signal));
      } else if (!isInitialized(this.options.pgDataDir)) {
        if (!election.emptyLog) {
          throw new Error(
            `timeline ${this.options.timelineId} already holds WAL up to ${formatLsn(election.donor.flushLsn)} but ${this.options.pgDataDir} ` +
              'is empty: a new writer of an existing timeline must start from a basebackup of it',
          );
        }
        await this.phase('initdb', () => initdb(this.options.pgDataDir, log));
      }
      writeHbaFile(this.options.pgDataDir);
      this.postgres = await this.phase('postgres_start', () =>
        PostgresServer.start({
          dataDir: this.options.pgDataDir,
          port: this.options.pgPort,
          socketDir: this.socketDir,
          log,
          settings: {
            wal_level: 'replica',
            max_wal_senders: 10,
            max_replication_slots: 10,
            synchronous_commit: 'on',
            synchronous_standby_names: STANDBY_NAME,
            wal_sender_timeout: '30s',
            // A commit is durable when a majority of safekeepers fsynced its WAL; Postgres' own fsync of the same WAL
            // (and of data files) would only add its latency to every commit. A compute's directory is never trusted
            // after a crash: a restarted compute starts from a basebackup, and a cleanly stopped one is fsynced by the
            // provisioner before it is kept as a cache. (Neon's computes run so too.)
            fsync: 'off',
            // Users' roles hold SCRAM verifiers (pg_hba.conf asks them for SCRAM); a password set in SQL is hashed so too.
            password_encryption: 'scram-sha-256',
            ...this.options.pgSettings,
          },
        }),
      );
      const postgresStartedAtMs = Date.now();
      if (signal.aborted) {
        // Fenced or stopped while Postgres was starting: the shutdown that ran then did not see it.
        await this.postgres.stop('immediate');
        throw new Error(this.reason || 'the compute was stopped while starting');
      }
      void this.postgres.exited.then((code) => this.onPostgresExit(code));
      // Without a basebackup the safekeepers are synced here, as streaming begins.
      await this.phase(this.proposer.begun ? 'start_streaming' : 'sync_safekeepers', () => this.startStreaming(election));
      if (signal.aborted) throw new Error(this.reason || 'the compute was stopped while starting');
      const postgres = this.postgres;
      this.sampler = new ActivitySampler({
        connect: () => this.connectAgent(),
        agentSessions: () => this.agentSessions,
        postmasterPid: () => (postgres.running ? postgres.pid : undefined),
        startLsn: this.proposer.termStartLsn,
        postgresStartedAtMs,
      });
      // The first sample is the baseline the counters (transactions) count from.
      await this.sampler.sample();
      // Roles exist before anyone is told the compute runs (each CREATE ROLE commits through the safekeepers).
      // Given a roles list (by the provisioner), it is the whole truth: roles deleted meanwhile lose their login.
      const roles = this.options.roles;
      if (roles !== undefined) await this.phase('configure', () => this.changeRoles({ upsert: roles, drop: [], exclusive: true }));
      if (signal.aborted) throw new Error(this.reason || 'the compute was stopped while starting');
      this.setState(ComputeState.COMPUTE_STATE_RUNNING);
      log.info(
        { port: this.options.pgPort, term: this.options.term, termStartLsn: formatLsn(this.proposer.termStartLsn), phases: this.phases },
        'compute running',
      );
    } catch (error) {
      if (error instanceof FencedError || this.state === ComputeState.COMPUTE_STATE_FENCED) {
        if (error instanceof FencedError && this.state !== ComputeState.COMPUTE_STATE_FENCED) {
          log.warn({ term: this.options.term, reason: error.message }, 'fenced at election: a newer term exists; Postgres is not started');
        }
        await this.onFenced(error instanceof FencedError ? error.message : this.reason);
        throw error;
      }
      this.fail((error as Error).message);
      await this.shutdown('immediate');
      throw error;
    }
  }

  /**
   * Stops Postgres (`checkpoint`: a fast shutdown whose final checkpoint reaches the safekeepers; otherwise
   * immediate) and returns the final commit LSN.
   */
  stop(checkpoint: boolean, reason = 'stop requested'): Promise<Lsn> {
    this.stopping ??= (async () => {
      const ended = [ComputeState.COMPUTE_STATE_FENCED, ComputeState.COMPUTE_STATE_FAILED];
      if (!ended.includes(this.state)) {
        this.reason = reason;
        this.setState(ComputeState.COMPUTE_STATE_STOPPING);
      }
      await this.shutdown(checkpoint ? 'fast' : 'immediate');
      if (this.state === ComputeState.COMPUTE_STATE_STOPPING) {
        this.setState(ComputeState.COMPUTE_STATE_STOPPED);
        if (checkpoint) await this.snapshotAtEnd(this.proposer.commitLsn);
      }
      return this.proposer.commitLsn;
    })();
    return this.stopping;
  }

  /** Stops Postgres and the walproposer once; later calls wait for the first. */
  private shutdown(mode: 'fast' | 'immediate'): Promise<void> {
    this.shuttingDown ??= this.shutdownOnce(mode);
    return this.shuttingDown;
  }

  private async shutdownOnce(mode: 'fast' | 'immediate'): Promise<void> {
    const { log } = this.options;
    if (this.postgres?.running) await this.postgres.stop(mode);
    await this.sampler?.close();
    if (mode === 'fast' && this.streaming && !this.proposer.fenced) {
      // Postgres' walsender sent its shutdown checkpoint before exiting; wait until a majority holds it.
      const wait = new AbortController();
      const timer = setTimeout(() => wait.abort(), 10_000);
      try {
        // Committed, and known as committed by a majority: the pageserver can then read the final WAL.
        await this.proposer.waitCommitPublished(this.proposer.receivedLsn, wait.signal);
      } catch (error) {
        log.warn({ error: (error as Error).message, receivedLsn: formatLsn(this.proposer.receivedLsn) }, 'final WAL not confirmed by a majority');
      } finally {
        clearTimeout(timer);
      }
    }
    this.controller.abort();
    this.replication?.close();
    await this.streaming?.catch(() => undefined);
    await this.proposer.close();
    fs.rmSync(this.socketDir, { recursive: true, force: true });
  }

  /**
   * Waits until the pageserver has ingested the timeline's synced end of WAL (a record boundary: the walproposer
   * forwards only whole records) and unpacks its basebackup there.
   */
  private async fromBasebackup(election: Election, signal: AbortSignal): Promise<void> {
    const pageserver = this.options.pageserver as string;
    const channel = openChannel(pageserver);
    const timelineId = this.options.timelineId;
    try {
      const lsn = election.emptyLog ? 0n : election.donor.flushLsn;
      if (lsn !== 0n) {
        // The new term starts at the synced end of WAL. Once a majority holds it in this term it is committed and
        // the safekeepers serve it to the pageserver: the old writer may have stopped before they learnt that.
        this.proposer.begin(election, lsn, election.donor.systemId);
        await this.phase('sync_safekeepers', () => this.proposer.waitCommitPublished(lsn, signal));
        const timelines = createSpgClient(TimelineServiceDefinition, channel, this.options.traceId);
        await this.phase('wait_pageserver', () =>
          timelines.waitForLsn({ timelineId, lsn }, { signal, deadline: new Date(Date.now() + 120_000) }),
        );
      }
      const pages = createSpgClient(PageServiceDefinition, channel, this.options.traceId);
      const metadata = await fetchBasebackup(pages, timelineId, lsn, this.options.pgDataDir, signal);
      this.options.log.info(
        { lsn: formatLsn(metadata.lsn), snapshotLsn: formatLsn(metadata.snapshotLsn), walBytes: Number(metadata.walBytes), tarBytes: Number(metadata.tarBytes) },
        'basebackup unpacked',
      );
    } finally {
      channel.close();
    }
  }

  /** Asks the pageserver for a snapshot at the final LSN, so the next start replays little WAL (best effort). */
  private async snapshotAtEnd(lsn: Lsn): Promise<void> {
    if (!this.options.pageserver || lsn === 0n) return;
    const channel = openChannel(this.options.pageserver);
    try {
      const timelines = createSpgClient(TimelineServiceDefinition, channel, this.options.traceId);
      const { snapshot } = await timelines.createSnapshot({ timelineId: this.options.timelineId, lsn }, { deadline: new Date(Date.now() + 30_000) });
      this.options.log.info({ lsn: formatLsn(snapshot?.lsn ?? 0n) }, 'pageserver snapshot at the final LSN');
    } catch (error) {
      this.options.log.warn({ error: (error as Error).message, lsn: formatLsn(lsn) }, 'no snapshot at the final LSN; the pageserver makes one when idle');
    } finally {
      channel.close();
    }
  }

  private async startStreaming(election: Election): Promise<void> {
    const replication = await ReplicationConnection.connect({
      host: '127.0.0.1',
      port: this.options.pgPort,
      socketDir: this.socketDir,
      user: 'postgres',
      applicationName: STANDBY_NAME,
    });
    this.replication = replication;
    const identity = await replication.identifySystem();
    const termStartLsn = this.proposer.begun ? this.proposer.termStartLsn : this.termStartFor(election, identity);
    if (this.proposer.begun && identity.xlogPos < termStartLsn) {
      throw new Error(`Postgres started from the basebackup ends at ${formatLsn(identity.xlogPos)}, before the term start ${formatLsn(termStartLsn)}`);
    }
    await replication.ensurePhysicalSlot(SLOT_NAME);
    if (!this.proposer.begun) this.proposer.begin(election, termStartLsn, identity.systemId);
    const events = await replication.startReplication(SLOT_NAME, termStartLsn, identity.timeline, this.controller.signal);
    // Only whole records go to the safekeepers: then the end of the log is always a record boundary, where a
    // basebackup can cut and a new writer continue. Postgres flushes up to a record's end before a commit
    // returns, so commits never wait for this.
    const boundaries = new WalDecoder(termStartLsn, { verifyCrc: false, decodeBlocks: false });
    const held: Buffer[] = [];
    let heldFrom = termStartLsn;
    // Postgres accepted the stream; what follows is consumed in the background.
    this.streaming = (async () => {
      for await (const event of events) {
        if (event.kind === 'wal') {
          const { beginLsn, data } = event.message;
          if (beginLsn !== boundaries.feedLsn) {
            throw new Error(`Postgres sent WAL at ${formatLsn(beginLsn)}, expected ${formatLsn(boundaries.feedLsn)}`);
          }
          boundaries.feed(data);
          held.push(data);
          const boundary = recordBoundary(boundaries);
          if (boundary > heldFrom) {
            const pending = held.length === 1 ? (held[0] as Buffer) : Buffer.concat(held);
            const ready = Number(boundary - heldFrom);
            this.proposer.pushWal(heldFrom, pending.subarray(0, ready));
            held.length = 0;
            if (ready < pending.length) held.push(pending.subarray(ready));
            heldFrom = boundary;
          }
        } else if (event.replyRequested) {
          replication.sendStatus(this.proposer.receivedLsn, this.proposer.commitLsn, this.proposer.commitLsn);
        }
      }
    })().catch((error: unknown) => {
      if (this.controller.signal.aborted || this.shuttingDown) return;
      this.options.log.error({ err: error }, 'the replication stream from Postgres failed');
      this.fail(`replication from Postgres failed: ${(error as Error).message}`);
      void this.shutdown('immediate');
    });
  }

  /**
   * A cached data directory is the timeline as of its cached LSN. It is kept only when the timeline (its most advanced
   * safekeeper) ends exactly there: then nothing was written since and the directory is the basebackup the
   * pageserver would give. Otherwise it is removed, and the start goes on from a basebackup.
   */
  private checkCachedData(election: Election): void {
    const cached = this.options.cachedDataLsn!;
    const end = election.donor.flushLsn;
    if (!election.emptyLog && end === cached && this.options.pageserver) {
      this.phases.cached_data = 0;
      this.options.log.info({ lsn: formatLsn(cached) }, 'starting from the cached data directory: the timeline ends where it does');
      return;
    }
    this.options.log.info({ cachedLsn: formatLsn(cached), timelineEnd: formatLsn(end) }, 'the cached data directory is stale: starting from a basebackup');
    fs.rmSync(this.options.pgDataDir, { recursive: true, force: true });
  }

  /** Where this term's WAL starts, after checking this Postgres can continue the timeline. */
  private termStartFor(election: Election, identity: SystemIdentity): Lsn {
    const donor = election.donor;
    if (donor.systemId !== 0n && donor.systemId !== identity.systemId) {
      throw new Error(
        `timeline ${this.options.timelineId} holds WAL of Postgres system ${donor.systemId}, but ${this.options.pgDataDir} is system ` +
          `${identity.systemId}: this data directory belongs to another database`,
      );
    }
    if (election.emptyLog) {
      // A new timeline starts at the beginning of Postgres' current segment, so safekeepers hold whole segments.
      return segmentStart(segmentNumber(identity.xlogPos));
    }
    if (identity.xlogPos < donor.flushLsn) {
      throw new Error(
        `${this.options.pgDataDir} ends at ${formatLsn(identity.xlogPos)} but timeline ${this.options.timelineId} holds WAL up to ` +
          `${formatLsn(donor.flushLsn)} (safekeeper ${donor.address}): start this compute from a basebackup at that LSN`,
      );
    }
    return donor.flushLsn;
  }

  private async ensureTimelines(): Promise<void> {
    await Promise.all(
      this.options.safekeepers.map(async (address) => {
        const client = createSpgClient(SafekeeperServiceDefinition, openChannel(address), this.options.traceId);
        try {
          await client.createTimeline({ timelineId: this.options.timelineId }, { deadline: new Date(Date.now() + 5000) });
        } catch (error) {
          if (error instanceof ClientError && error.code === Status.ALREADY_EXISTS) return;
          // An unreachable safekeeper is fine: a majority is enough, and the election retries.
          this.options.log.warn({ safekeeper: address, error: (error as Error).message }, 'could not create the timeline');
        }
      }),
    );
  }

  private async onFenced(reason: string): Promise<void> {
    if (this.state === ComputeState.COMPUTE_STATE_FENCED) return;
    this.reason = reason;
    this.setState(ComputeState.COMPUTE_STATE_FENCED);
    // Within a second: no checkpoint, no waiting for clients. Nothing it would still write could commit anyway.
    await this.shutdown('immediate');
  }

  private onPostgresExit(code: number | string): void {
    if (this.state === ComputeState.COMPUTE_STATE_RUNNING && !this.shuttingDown) {
      this.options.log.error({ exit: code }, 'Postgres exited unexpectedly');
      this.fail(`Postgres exited unexpectedly (${code})`);
      void this.shutdown('immediate');
    }
  }

  private fail(reason: string): void {
    if (this.state === ComputeState.COMPUTE_STATE_FENCED || this.state === ComputeState.COMPUTE_STATE_STOPPING) return;
    this.reason = reason;
    this.setState(ComputeState.COMPUTE_STATE_FAILED);
  }

  private setState(state: ComputeState): void {
    if (this.state === state) return;
    this.state = state;
    stateGauge.set(state);
    const status = this.status();
    for (const listener of this.stateListeners) {
      try {
        listener(status);
      } catch (error) {
        this.options.log.error({ err: error }, 'a compute state listener failed');
      }
    }
  }

  private async phase<T>(name: string, run: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await run();
    } finally {
      const seconds = (performance.now() - started) / 1000;
      this.phases[name] = seconds;
      startPhaseGauge.set({ phase: name }, seconds);
    }
  }
}

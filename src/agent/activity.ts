/**
 * Activity and load of a compute's Postgres, as the control plane's scale to zero and autoscaler read them (through
 * ReportComputeActivity and ComputeService.GetMetrics): client connections, idle time, CPU and memory of the Postgres
 * processes, WAL written, transactions and the buffer cache hit ratio.
 *
 * The agent's own sessions never count as activity: they carry the application name {@link AGENT_APPLICATION_NAME},
 * and the walproposer's replication stream is a walsender, not a client backend.
 */
import fs from 'node:fs';
import type pg from 'pg';
import { type Lsn, lsnDistance, parseLsn } from '../lib/lsn.js';

/** The application_name of every connection the agent opens to its Postgres (other than its replication stream). */
export const AGENT_APPLICATION_NAME = 'spg99-agent';

/** One sample of a compute's activity; counters count from the compute's start. */
export interface ActivityFigures {
  /** Client connections now, the agent's own excluded. */
  activeConnections: number;
  /** Seconds since a client connection last existed (0 while one does; from Postgres' start when none ever did). */
  idleSeconds: number;
  /** CPU seconds used by the Postgres processes (exited backends included); 0 when /proc cannot tell. */
  cpuSeconds: number;
  /** Memory of the Postgres processes (proportional set size: shared buffers counted once); 0 when unknown. */
  memoryBytes: bigint;
  /** WAL bytes written since the compute's WAL began. */
  walBytes: bigint;
  /** Transactions committed since the sampler began. */
  transactions: bigint;
  /** Block reads served from shared buffers since the statistics began, 0 to 1 (1 when nothing was read). */
  cacheHitRatio: number;
}

/** What the sampler reads from. */
export interface ActivitySourceOptions {
  /** Opens a connection of the agent to its Postgres (application name {@link AGENT_APPLICATION_NAME}). */
  connect: () => Promise<pg.Client>;
  /** How many sessions the agent itself has opened so far (they count in pg_stat_database.sessions too). */
  agentSessions: () => number;
  /** The postmaster's pid, while it runs. */
  postmasterPid: () => number | undefined;
  /** Where this compute's WAL began. */
  startLsn: Lsn;
  /** When Postgres started accepting connections (ms since epoch). */
  postgresStartedAtMs: number;
}

interface StatsRow {
  active: string;
  sessions: string;
  commits: string;
  hits: string;
  reads: string;
  lsn: string;
}

/** Samples activity over one persistent connection; samples are serialized. */
export class ActivitySampler {
  private client: pg.Client | null = null;
  private lastClientSeenAtMs: number;
  private transactionsBase: bigint | null = null;
  private othersSessions: bigint | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: ActivitySourceOptions) {
    this.lastClientSeenAtMs = options.postgresStartedAtMs;
  }

  /** Takes one sample. Rejects when Postgres cannot be queried (the caller skips that report). */
  sample(): Promise<ActivityFigures> {
    const next = this.queue.then(() => this.sampleNow());
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Closes the sampler's connection. */
  async close(): Promise<void> {
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
  }

  private async sampleNow(): Promise<ActivityFigures> {
    const client = await this.connection();
    let row: StatsRow;
    try {
      row = (
        await client.query<StatsRow>(
          `SELECT (SELECT count(*) FROM pg_stat_activity
                    WHERE backend_type = 'client backend' AND application_name IS DISTINCT FROM $1) AS active,
                  coalesce(sum(sessions), 0) AS sessions, coalesce(sum(xact_commit), 0) AS commits,
                  coalesce(sum(blks_hit), 0) AS hits, coalesce(sum(blks_read), 0) AS reads,
                  pg_current_wal_lsn()::text AS lsn
             FROM pg_stat_database`,
          [AGENT_APPLICATION_NAME],
        )
      ).rows[0] as StatsRow;
    } catch (error) {
      this.client = null;
      await client.end().catch(() => undefined);
      throw error;
    }
    const now = Date.now();
    const active = Number(row.active);
    // A client that came and went between two samples still counts: sessions by others grew (counted when it
    // connected, published when it ended or went idle). Erring towards "active" only delays a suspend.
    const others = BigInt(row.sessions) - BigInt(this.options.agentSessions());
    if (active > 0 || (this.othersSessions !== null && others > this.othersSessions)) this.lastClientSeenAtMs = now;
    this.othersSessions = others;
    const commits = BigInt(row.commits);
    // Statistics are reset by a crash recovery (a start from a basebackup is one) or pg_stat_reset(): rebase.
    if (this.transactionsBase === null || commits < this.transactionsBase) this.transactionsBase = commits;
    const hits = Number(row.hits);
    const reads = Number(row.reads);
    const usage = postgresProcessUsage(this.options.postmasterPid());
    return {
      activeConnections: active,
      idleSeconds: active > 0 ? 0 : Math.max(0, (now - this.lastClientSeenAtMs) / 1000),
      cpuSeconds: usage.cpuSeconds,
      memoryBytes: usage.memoryBytes,
      walBytes: BigInt(lsnDistance(this.options.startLsn, parseLsn(row.lsn))),
      transactions: commits - this.transactionsBase,
      cacheHitRatio: hits + reads === 0 ? 1 : hits / (hits + reads),
    };
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    const client = await this.options.connect();
    // Publish this session's own statistics at once, so it is known as the agent's before the first sample counts.
    await client.query('SELECT pg_stat_force_next_flush()');
    this.client = client;
    return client;
  }
}

/** Linux' USER_HZ: the unit of CPU times in /proc (100 on every architecture Linux runs Postgres on). */
const CLOCK_TICKS_PER_SECOND = 100;

/**
 * CPU seconds and memory of a postmaster and its children, from /proc. CPU: the postmaster's own time, its exited
 * children's (cutime, cstime) and its live children's. Memory: the sum of proportional set sizes, which counts
 * shared buffers once, not once per backend. Zeros when /proc cannot tell (not Linux, the postmaster is gone).
 */
export function postgresProcessUsage(postmasterPid: number | undefined): { cpuSeconds: number; memoryBytes: bigint } {
  if (postmasterPid === undefined) return { cpuSeconds: 0, memoryBytes: 0n };
  const postmaster = readStat(postmasterPid);
  if (!postmaster) return { cpuSeconds: 0, memoryBytes: 0n };
  let ticks = postmaster.utime + postmaster.stime + postmaster.cutime + postmaster.cstime;
  let memoryKb = memoryKbOf(postmasterPid);
  let entries: string[] = [];
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    // No /proc: the postmaster's own figures are all there is.
  }
  for (const entry of entries) {
    if (!/^[0-9]+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === postmasterPid) continue;
    const stat = readStat(pid);
    if (!stat || stat.ppid !== postmasterPid) continue;
    ticks += stat.utime + stat.stime;
    memoryKb += memoryKbOf(pid);
  }
  return { cpuSeconds: ticks / CLOCK_TICKS_PER_SECOND, memoryBytes: BigInt(memoryKb) * 1024n };
}

function readStat(pid: number): { ppid: number; utime: number; stime: number; cutime: number; cstime: number } | null {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(fields[1]), utime: Number(fields[11]), stime: Number(fields[12]), cutime: Number(fields[13]), cstime: Number(fields[14]) };
  } catch {
    return null;
  }
}

function memoryKbOf(pid: number): number {
  for (const [file, field] of [[`/proc/${pid}/smaps_rollup`, 'Pss'], [`/proc/${pid}/status`, 'VmRSS']] as const) {
    try {
      const match = new RegExp(`^${field}:\\s+([0-9]+) kB`, 'm').exec(fs.readFileSync(file, 'utf8'));
      if (match) return Number(match[1]);
    } catch {
      // Not readable (another user's process without privileges): try the next source.
    }
  }
  return 0;
}

/**
 * The replayer: an unmodified Postgres hot standby that applies a timeline's WAL (Postgres' own redo is the WAL
 * redo engine). It starts from a snapshot's data directory with a backup label, and reads WAL from its pg_wal,
 * where the pageserver hard-links the timeline's local segment files as they are written: no streaming protocol,
 * no copies. Snapshots pause it, take a restartpoint and copy its files.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { delay } from 'abort-controller-x';
import { formatLsn, parseLsn, segmentNumber, walFileName, type Lsn } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import { freePort } from '../lib/net.js';
import { PostgresServer } from '../lib/pg/postgres.js';
import { postgresOsUser, prepareDirectoryFor } from '../lib/pg/os-user.js';

/** What a snapshot of the replayer's state records. */
export interface RestartPoint {
  /** Where replay was paused. */
  replayLsn: Lsn;
  checkpointLsn: Lsn;
  redoLsn: Lsn;
  /** Whether CHECKPOINT made a restartpoint now (then every page on disk is as of `replayLsn`). */
  flushed: boolean;
}

export interface ReplayerOptions {
  /** A data directory prepared from a snapshot (standby.signal and configuration are added here). */
  dataDir: string;
  /** Whether the data directory needs a backup label to start (snapshots copied from a running standby). */
  backupLabel: { redoLsn: Lsn; checkpointLsn: Lsn } | null;
  superuser: string;
  log: Logger;
}

/** Settings of every replayer. */
const REPLAYER_SETTINGS: Record<string, string | number> = {
  hot_standby: 'on',
  // How often the startup process looks for more WAL in pg_wal once it has replayed everything there.
  wal_retrieve_retry_interval: '20ms',
  // Its files are copied into snapshots, never relied on across crashes: no fsync.
  fsync: 'off',
  full_page_writes: 'on',
  // Hard-linked segments must never be renamed into future ones.
  wal_recycle: 'off',
  shared_buffers: '32MB',
  max_connections: 100,
  max_wal_senders: 10,
  max_replication_slots: 10,
  checkpoint_timeout: '30min',
  max_wal_size: '4GB',
  hot_standby_feedback: 'off',
  max_standby_streaming_delay: '-1',
  max_standby_archive_delay: '-1',
  logging_collector: 'off',
  log_min_messages: 'warning',
};

export class Replayer {
  private client: pg.Client | null = null;

  private constructor(
    readonly dataDir: string,
    private readonly server: PostgresServer,
    private readonly socketDir: string,
    private readonly superuser: string,
    private readonly log: Logger,
  ) {}

  /** Starts the standby; resolves once it accepts read-only connections (it has reached consistency). */
  static async start(options: ReplayerOptions): Promise<Replayer> {
    const { dataDir } = options;
    fs.writeFileSync(path.join(dataDir, 'standby.signal'), '');
    fs.writeFileSync(path.join(dataDir, 'postgresql.conf'), '# the replayer\'s settings are given on its command line\n');
    fs.writeFileSync(path.join(dataDir, 'postgresql.auto.conf'), '');
    if (options.backupLabel) fs.writeFileSync(path.join(dataDir, 'backup_label'), backupLabel(options.backupLabel.redoLsn, options.backupLabel.checkpointLsn));
    fs.rmSync(path.join(dataDir, 'postmaster.pid'), { force: true });
    const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-replayer-'));
    prepareDirectoryFor(postgresOsUser(), dataDir);
    const server = await PostgresServer.start({
      dataDir,
      port: await freePort(),
      socketDir,
      log: options.log,
      settings: { ...REPLAYER_SETTINGS, listen_addresses: '' },
      startTimeoutMs: 120_000,
    });
    const replayer = new Replayer(dataDir, server, socketDir, options.superuser, options.log);
    return replayer;
  }

  /** The postmaster's exit (code or signal). */
  get exited(): Promise<number | string> {
    return this.server.exited;
  }

  get running(): boolean {
    return this.server.running;
  }

  /** Hard-links a WAL segment file into pg_wal (readable by Postgres through the link). */
  linkSegment(file: string): void {
    const target = path.join(this.dataDir, 'pg_wal', path.basename(file));
    if (!fs.existsSync(target)) fs.linkSync(file, target);
  }

  /** The end of the last record replayed. */
  async replayLsn(): Promise<Lsn> {
    const row = await this.queryRow<{ lsn: string | null }>('SELECT pg_last_wal_replay_lsn()::text AS lsn');
    return row.lsn ? parseLsn(row.lsn) : 0n;
  }

  /** Waits until replay has reached `lsn`. */
  async waitReplayed(lsn: Lsn, signal: AbortSignal, timeoutMs = 120_000): Promise<Lsn> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const replayed = await this.replayLsn();
      if (replayed >= lsn) return replayed;
      if (!this.running) throw new Error(`the replayer exited before replaying ${formatLsn(lsn)}`);
      if (Date.now() > deadline) {
        throw new Error(`the replayer is at ${formatLsn(replayed)} after ${timeoutMs} ms, not at ${formatLsn(lsn)}: see ${this.server.logFile}`);
      }
      await delay(signal, 10);
    }
  }

  /**
   * Pauses replay, makes a restartpoint and runs `copy` while nothing is replayed; resumes afterwards.
   * Answers where replay stood and the restartpoint.
   */
  async withRestartPoint<T>(copy: (point: RestartPoint) => Promise<T>): Promise<T> {
    await this.query('SELECT pg_wal_replay_pause()');
    try {
      // The pause takes effect between records, also while waiting for more WAL.
      for (let i = 0; i < 500; i++) {
        const row = await this.queryRow<{ state: string }>('SELECT pg_get_wal_replay_pause_state() AS state');
        if (row.state === 'paused') break;
        await delay(new AbortController().signal, 5);
      }
      const controlSql = 'SELECT checkpoint_lsn::text, redo_lsn::text FROM pg_control_checkpoint()';
      const before = await this.queryRow<{ checkpoint_lsn: string; redo_lsn: string }>(controlSql);
      // A restartpoint happens only if a checkpoint record was replayed since the last one; otherwise this
      // does nothing and pages touched since the last one may still be only in shared buffers.
      await this.query('CHECKPOINT');
      const replayLsn = await this.replayLsn();
      const checkpoint = await this.queryRow<{ checkpoint_lsn: string; redo_lsn: string }>(controlSql);
      return await copy({
        replayLsn,
        checkpointLsn: parseLsn(checkpoint.checkpoint_lsn),
        redoLsn: parseLsn(checkpoint.redo_lsn),
        flushed: checkpoint.checkpoint_lsn !== before.checkpoint_lsn,
      });
    } finally {
      await this.query('SELECT pg_wal_replay_resume()').catch(() => undefined);
    }
  }

  /** The standby's minimum recovery point now (read after its control file was copied). */
  async minRecoveryLsn(): Promise<Lsn> {
    const row = await this.queryRow<{ lsn: string }>('SELECT min_recovery_end_lsn::text AS lsn FROM pg_control_recovery()');
    return parseLsn(row.lsn);
  }

  /** Stops the standby (fast: it has nothing to keep). */
  async stop(): Promise<void> {
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
    await this.server.stop('fast', 30_000);
    fs.rmSync(this.socketDir, { recursive: true, force: true });
  }

  private async query(sql: string): Promise<pg.QueryResult> {
    if (!this.client) {
      const client = new pg.Client({ host: this.socketDir, port: this.server.port, user: this.superuser, database: 'postgres' });
      client.on('error', (error) => this.log.warn({ error: error.message }, 'replayer connection failed'));
      await client.connect();
      this.client = client;
    }
    try {
      return await this.client.query(sql);
    } catch (error) {
      if (!this.running) {
        await this.client?.end().catch(() => undefined);
        this.client = null;
      }
      throw error;
    }
  }

  private async queryRow<T>(sql: string): Promise<T> {
    const result = await this.query(sql);
    return result.rows[0] as T;
  }
}

/** The backup label recovery from a copied standby needs (see notes-replayer-snapshot.md). */
export function backupLabel(redoLsn: Lsn, checkpointLsn: Lsn): string {
  const name = walFileName(1, segmentNumber(redoLsn));
  return [
    `START WAL LOCATION: ${formatLsn(redoLsn)} (file ${name})`,
    `CHECKPOINT LOCATION: ${formatLsn(checkpointLsn)}`,
    'BACKUP METHOD: streamed',
    'BACKUP FROM: standby',
    `START TIME: ${new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}`,
    'LABEL: spg99 snapshot',
    'START TIMELINE: 1',
    '',
  ].join('\n');
}

/**
 * `make bench-wal`: what quorum durability costs. pgbench TPC-B (scale 10, 8 clients, 30 s per setup by default)
 * against Postgres with the walproposer and three safekeepers, and against the same Postgres build and settings
 * with `synchronous_commit=on` and no standby, in the same process tree. Both run side by side, and the 30 s are
 * split into alternating rounds (baseline, quorum, baseline, ...) so that a noisy moment of this shared machine
 * hits both: tps is the median of the rounds, latencies are percentiles over every transaction of the setup
 * (from pgbench's per-transaction log; each TPC-B transaction ends in its commit).
 *
 * Last line: `wal_quorum tps_ratio=<x> commit_p50_ms=<a> commit_p99_ms=<b> baseline_tps=<t>`.
 * Environment: SPG99_BENCH_SECONDS (per setup), SPG99_BENCH_ROUNDS, SPG99_BENCH_CLIENTS, SPG99_BENCH_SCALE.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Harness, TempDir } from '../test/harness/process.js';
import { createTimeline, newTimelineId, startSafekeepers } from '../test/harness/safekeepers.js';
import { ComputeNode } from '../test/harness/computes.js';
import { initdb, PostgresServer } from '../src/lib/pg/postgres.js';
import { createLogger } from '../src/lib/log.js';
import { freePort } from '../src/lib/net.js';

const run = promisify(execFile);
const seconds = Number(process.env.SPG99_BENCH_SECONDS ?? 30);
const rounds = Number(process.env.SPG99_BENCH_ROUNDS ?? 3);
const clients = Number(process.env.SPG99_BENCH_CLIENTS ?? 8);
const scale = Number(process.env.SPG99_BENCH_SCALE ?? 10);
const log = createLogger('bench', {});
log.level = 'warn';

/** One setup's figures over all its rounds. */
class Figures {
  readonly tps: number[] = [];
  readonly latenciesMs: number[] = [];

  get medianTps(): number {
    return percentile([...this.tps].sort((a, b) => a - b), 0.5);
  }

  latency(fraction: number): number {
    return percentile(this.latenciesMs.sort((a, b) => a - b), fraction);
  }

  describe(): string {
    return `tps median=${this.medianTps.toFixed(1)} (rounds ${this.tps.map((tps) => tps.toFixed(0)).join(', ')}) ` +
      `p50_ms=${this.latency(0.5).toFixed(2)} p99_ms=${this.latency(0.99).toFixed(2)}`;
  }
}

function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

function pgEnv(port: number): NodeJS.ProcessEnv {
  return { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres' };
}

async function initialize(port: number): Promise<void> {
  await run('pgbench', ['-i', '-q', '-s', String(scale)], { env: pgEnv(port), maxBuffer: 64 * 1024 * 1024 });
}

/** One pgbench round; adds its tps and per-transaction latencies to `figures`. */
async function measure(port: number, logDir: string, durationSeconds: number, figures: Figures): Promise<void> {
  fs.rmSync(logDir, { recursive: true, force: true });
  fs.mkdirSync(logDir, { recursive: true });
  const { stdout } = await run(
    'pgbench',
    ['-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(durationSeconds), '-l', '--log-prefix', path.join(logDir, 'tx')],
    { env: pgEnv(port), maxBuffer: 64 * 1024 * 1024 },
  );
  const tps = Number(/tps = ([0-9.]+)/.exec(stdout)?.[1]);
  if (!Number.isFinite(tps)) throw new Error(`pgbench printed no tps:\n${stdout}`);
  figures.tps.push(tps);
  // Per-transaction log lines: client_id transaction_no latency_us script_no epoch epoch_us.
  for (const file of fs.readdirSync(logDir)) {
    for (const line of fs.readFileSync(path.join(logDir, file), 'utf8').split('\n')) {
      const fields = line.split(' ');
      if (fields.length >= 3) figures.latenciesMs.push(Number(fields[2]) / 1000);
    }
  }
}

const workDir = TempDir.create('bench');
const harness = new Harness();
let baselinePostgres: PostgresServer | null = null;
try {
  console.log(`pgbench TPC-B: scale ${scale}, ${clients} clients, ${seconds} s per setup in ${rounds} alternating rounds`);
  // Baseline: the same Postgres binaries and settings, no standby.
  const baselineDir = workDir.join('baseline', 'pgdata');
  await initdb(baselineDir, log);
  const baselinePort = await freePort();
  baselinePostgres = await PostgresServer.start({
    dataDir: baselineDir,
    port: baselinePort,
    log,
    settings: { wal_level: 'replica', max_wal_senders: 10, max_replication_slots: 10, synchronous_commit: 'on' },
  });
  // Quorum: three safekeepers and a compute.
  const safekeepers = await startSafekeepers(harness, 3);
  const timelineId = newTimelineId();
  await createTimeline(safekeepers, timelineId);
  const compute = await ComputeNode.start(harness, { timelineId, term: 1, safekeepers });

  await initialize(baselinePort);
  await initialize(compute.pgPort);
  const baseline = new Figures();
  const quorum = new Figures();
  const roundSeconds = Math.max(1, Math.round(seconds / rounds));
  for (let round = 0; round < rounds; round += 1) {
    await measure(baselinePort, workDir.join('log-baseline'), roundSeconds, baseline);
    await measure(compute.pgPort, workDir.join('log-quorum'), roundSeconds, quorum);
  }
  console.log(`baseline (synchronous_commit=on, no standby): ${baseline.describe()}`);
  console.log(`walproposer + 3 safekeepers:                  ${quorum.describe()}`);
  console.log(
    `wal_quorum tps_ratio=${(quorum.medianTps / baseline.medianTps).toFixed(3)} commit_p50_ms=${quorum.latency(0.5).toFixed(2)} ` +
      `commit_p99_ms=${quorum.latency(0.99).toFixed(2)} baseline_tps=${baseline.medianTps.toFixed(1)}`,
  );
} finally {
  await baselinePostgres?.stop('immediate');
  await harness.teardown();
  workDir.remove();
}

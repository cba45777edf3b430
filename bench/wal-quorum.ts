/**
 * `make bench-wal`: what quorum durability costs. pgbench TPC-B (scale 10, 8 clients, 30 s by default) against
 * Postgres with the walproposer and three safekeepers, and against the same Postgres build and settings with
 * `synchronous_commit=on` and no standby, in the same run. Latencies are per TPC-B transaction (each ends in its
 * commit), from pgbench's per-transaction log.
 *
 * Last line: `wal_quorum tps_ratio=<x> commit_p50_ms=<a> commit_p99_ms=<b> baseline_tps=<t>`.
 * Environment: SPG99_BENCH_SECONDS, SPG99_BENCH_CLIENTS, SPG99_BENCH_SCALE.
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
const clients = Number(process.env.SPG99_BENCH_CLIENTS ?? 8);
const scale = Number(process.env.SPG99_BENCH_SCALE ?? 10);
const log = createLogger('bench', {});
log.level = 'warn';

interface Result {
  tps: number;
  p50Ms: number;
  p99Ms: number;
}

function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

async function pgbench(port: number, workDir: string, label: string): Promise<Result> {
  const env = { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres' };
  await run('pgbench', ['-i', '-q', '-s', String(scale)], { env, maxBuffer: 64 * 1024 * 1024 });
  const logDir = path.join(workDir, `pgbench-${label}`);
  fs.mkdirSync(logDir, { recursive: true });
  const { stdout } = await run(
    'pgbench',
    ['-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(seconds), '-l', '--log-prefix', path.join(logDir, 'tx')],
    { env, maxBuffer: 64 * 1024 * 1024 },
  );
  const tps = Number(/tps = ([0-9.]+)/.exec(stdout)?.[1]);
  if (!Number.isFinite(tps)) throw new Error(`pgbench printed no tps:\n${stdout}`);
  // Per-transaction log lines: client_id transaction_no latency_us script_no epoch epoch_us.
  const latencies: number[] = [];
  for (const file of fs.readdirSync(logDir)) {
    for (const line of fs.readFileSync(path.join(logDir, file), 'utf8').split('\n')) {
      const fields = line.split(' ');
      if (fields.length >= 3) latencies.push(Number(fields[2]) / 1000);
    }
  }
  latencies.sort((a, b) => a - b);
  return { tps, p50Ms: percentile(latencies, 0.5), p99Ms: percentile(latencies, 0.99) };
}

async function baseline(workDir: string): Promise<Result> {
  const dataDir = path.join(workDir, 'baseline', 'pgdata');
  await initdb(dataDir, log);
  const port = await freePort();
  const postgres = await PostgresServer.start({
    dataDir,
    port,
    log,
    settings: { wal_level: 'replica', max_wal_senders: 10, max_replication_slots: 10, synchronous_commit: 'on' },
  });
  try {
    return await pgbench(port, workDir, 'baseline');
  } finally {
    await postgres.stop('immediate');
  }
}

async function quorum(workDir: string): Promise<Result> {
  const harness = new Harness();
  try {
    const safekeepers = await startSafekeepers(harness, 3);
    const timelineId = newTimelineId();
    await createTimeline(safekeepers, timelineId);
    const compute = await ComputeNode.start(harness, { timelineId, term: 1, safekeepers });
    return await pgbench(compute.pgPort, workDir, 'quorum');
  } finally {
    await harness.teardown();
  }
}

function format(result: Result): string {
  return `tps=${result.tps.toFixed(1)} p50_ms=${result.p50Ms.toFixed(2)} p99_ms=${result.p99Ms.toFixed(2)}`;
}

const workDir = TempDir.create('bench').path;
try {
  console.log(`pgbench TPC-B: scale ${scale}, ${clients} clients, ${seconds} s each`);
  const base = await baseline(workDir);
  console.log(`baseline (synchronous_commit=on, no standby): ${format(base)}`);
  const withQuorum = await quorum(workDir);
  console.log(`walproposer + 3 safekeepers:                  ${format(withQuorum)}`);
  console.log(
    `wal_quorum tps_ratio=${(withQuorum.tps / base.tps).toFixed(3)} commit_p50_ms=${withQuorum.p50Ms.toFixed(2)} ` +
      `commit_p99_ms=${withQuorum.p99Ms.toFixed(2)} baseline_tps=${base.tps.toFixed(1)}`,
  );
} finally {
  fs.rmSync(workDir, { recursive: true, force: true });
}

/**
 * `make bench-wal`: what quorum durability costs. pgbench TPC-B (scale 10, 8 clients, 30 s per setup by default)
 * against Postgres with the walproposer and three safekeepers, and against the same Postgres build and settings
 * with `synchronous_commit=on` and no standby, in the same process tree. (The compute runs with `fsync=off`, as every
 * compute does: the safekeepers make its commits durable. The baseline keeps `fsync=on`: its own disk is all it has.)
 * Both run side by side, and the 30 s are split into alternating rounds (baseline, quorum, baseline, ...) so that a
 * noisy moment of this shared machine hits both: tps is the median of the rounds, latencies are percentiles over
 * every transaction of the setup (from pgbench's per-transaction log; each TPC-B transaction ends in its commit).
 *
 * A reference runs in the same rounds when Debian's PostgreSQL server and its `pg_receivewal` are installed
 * (`/usr/lib/postgresql/<major>/bin`; pg_receivewal must be of the server's major): PostgreSQL's own quorum commit,
 * `synchronous_standby_names = 'ANY 2 (r1, r2, r3)'` with three `pg_receivewal --synchronous` (C programs that fsync
 * each piece of WAL and answer at once), against the same server without a standby. It is the least any quorum of
 * three can cost on this machine, with no proposer in between: the ceiling for `tps_ratio` here.
 *
 * Last line: `wal_quorum tps_ratio=<x> commit_p50_ms=<a> commit_p99_ms=<b> baseline_tps=<t>`; the reference's line
 * `reference native_quorum tps_ratio=<r> ...` comes before it.
 * Environment: SPG99_BENCH_SECONDS (per setup), SPG99_BENCH_ROUNDS, SPG99_BENCH_CLIENTS, SPG99_BENCH_SCALE,
 * SPG99_BENCH_REFERENCE=0 (skip the reference).
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { Harness, TempDir, waitFor } from '../test/harness/process.js';
import { createTimeline, newTimelineId, startSafekeepers } from '../test/harness/safekeepers.js';
import { ComputeNode, postgresSocketDir } from '../test/harness/computes.js';
import { initdb, PostgresServer } from '../src/lib/pg/postgres.js';
import { createLogger } from '../src/lib/log.js';
import { freePort } from '../src/lib/net.js';

const run = promisify(execFile);
const seconds = Number(process.env.SPG99_BENCH_SECONDS ?? 30);
const rounds = Number(process.env.SPG99_BENCH_ROUNDS ?? 3);
const clients = Number(process.env.SPG99_BENCH_CLIENTS ?? 8);
const scale = Number(process.env.SPG99_BENCH_SCALE ?? 10);
const withReference = process.env.SPG99_BENCH_REFERENCE !== '0';
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
  // A compute's superuser logs in over its private Unix socket only (TCP asks every role for SCRAM).
  return { ...process.env, PGHOST: postgresSocketDir(port) ?? '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres' };
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

/** Debian's PostgreSQL server with a pg_receivewal of the same major (the newest such), or null. */
function findReferencePostgres(): { binDir: string; major: string } | null {
  const root = '/usr/lib/postgresql';
  if (!fs.existsSync(root)) return null;
  const majors = fs.readdirSync(root).filter((name) => /^[0-9]+$/.test(name)).sort((a, b) => Number(b) - Number(a));
  for (const major of majors) {
    const binDir = path.join(root, major, 'bin');
    if (['postgres', 'initdb', 'pg_receivewal'].every((name) => fs.existsSync(path.join(binDir, name)))) return { binDir, major };
  }
  return null;
}

/** The reference's pg_receivewal processes and Postgres servers, stopped at the end. */
const receivers: ChildProcess[] = [];
const referenceServers: PostgresServer[] = [];

/** initdb and start one Postgres of the reference installation; resolves with its port once it accepts connections. */
async function startReferencePostgres(binDir: string, dataDir: string): Promise<number> {
  await initdb(dataDir, log, { binDir });
  const port = await freePort();
  const server = await PostgresServer.start({
    dataDir,
    port,
    binDir,
    log,
    settings: { wal_level: 'replica', max_wal_senders: 10, synchronous_commit: 'on' },
  });
  referenceServers.push(server);
  return port;
}

/**
 * Makes the reference Postgres on `port` commit through PostgreSQL's own quorum: three pg_receivewal --synchronous,
 * any two of which must have fsynced a commit's WAL; resolves once all three stream.
 */
async function startNativeQuorum(binDir: string, port: number, directory: string): Promise<void> {
  const names = ['r1', 'r2', 'r3'];
  for (const name of names) {
    const walDir = path.join(directory, name);
    fs.mkdirSync(walDir, { recursive: true });
    const receiver = spawn(
      path.join(binDir, 'pg_receivewal'),
      ['-d', `host=127.0.0.1 port=${port} user=postgres application_name=${name}`, '-D', walDir, '--synchronous', '--no-loop'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    receivers.push(receiver);
  }
  await run('psql', ['-XAtq', '-c', `ALTER SYSTEM SET synchronous_standby_names = 'ANY 2 (${names.join(', ')})'`, '-c', 'SELECT pg_reload_conf()'], {
    env: pgEnv(port),
  });
  await waitFor(
    async () => {
      const { stdout } = await run('psql', ['-XAtqc', "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'"], { env: pgEnv(port) });
      return Number(stdout.trim()) === names.length;
    },
    { what: 'three pg_receivewal streaming as quorum standbys', timeoutMs: 30_000, intervalMs: 100 },
  );
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
  const setups: Array<{ port: number; name: string; figures: Figures }> = [
    { port: baselinePort, name: 'baseline', figures: new Figures() },
    { port: compute.pgPort, name: 'quorum', figures: new Figures() },
  ];
  const reference = withReference ? findReferencePostgres() : null;
  if (reference) {
    const referenceBaseline = await startReferencePostgres(reference.binDir, workDir.join('reference-baseline', 'pgdata'));
    const referenceQuorum = await startReferencePostgres(reference.binDir, workDir.join('reference-quorum', 'pgdata'));
    await initialize(referenceBaseline);
    await initialize(referenceQuorum);
    await startNativeQuorum(reference.binDir, referenceQuorum, workDir.join('reference-quorum', 'receivers'));
    setups.push(
      { port: referenceBaseline, name: 'reference-baseline', figures: new Figures() },
      { port: referenceQuorum, name: 'reference-quorum', figures: new Figures() },
    );
  } else if (withReference) {
    console.log(
      'reference skipped: no Debian PostgreSQL server with its pg_receivewal in /usr/lib/postgresql/<major>/bin ' +
        '(apt-get install postgresql measures PostgreSQL\'s own quorum commit beside ours)',
    );
  }
  const roundSeconds = Math.max(1, Math.round(seconds / rounds));
  for (let round = 0; round < rounds; round += 1) {
    for (const setup of setups) await measure(setup.port, workDir.join(`log-${setup.name}`), roundSeconds, setup.figures);
  }
  const [baseline, quorum] = setups.map((setup) => setup.figures);
  console.log(`baseline (synchronous_commit=on, no standby): ${baseline.describe()}`);
  console.log(`walproposer + 3 safekeepers:                  ${quorum.describe()}`);
  if (reference) {
    const [referenceBaseline, referenceQuorum] = setups.slice(2).map((setup) => setup.figures);
    console.log(`reference: PostgreSQL ${reference.major} (Debian), synchronous_commit=on, no standby: ${referenceBaseline.describe()}`);
    console.log(`reference: the same, ANY 2 of three pg_receivewal --synchronous: ${referenceQuorum.describe()}`);
    console.log(
      `reference native_quorum tps_ratio=${(referenceQuorum.medianTps / referenceBaseline.medianTps).toFixed(3)} ` +
        `commit_p50_ms=${referenceQuorum.latency(0.5).toFixed(2)} commit_p99_ms=${referenceQuorum.latency(0.99).toFixed(2)} ` +
        `baseline_tps=${referenceBaseline.medianTps.toFixed(1)} (PostgreSQL ${reference.major}'s own quorum commit, C standbys and no proposer between)`,
    );
  }
  console.log(
    `wal_quorum tps_ratio=${(quorum.medianTps / baseline.medianTps).toFixed(3)} commit_p50_ms=${quorum.latency(0.5).toFixed(2)} ` +
      `commit_p99_ms=${quorum.latency(0.99).toFixed(2)} baseline_tps=${baseline.medianTps.toFixed(1)}`,
  );
} finally {
  for (const receiver of receivers) receiver.kill('SIGTERM');
  await Promise.all(referenceServers.map((server) => server.stop('immediate')));
  await baselinePostgres?.stop('immediate');
  await harness.teardown();
  workDir.remove();
}

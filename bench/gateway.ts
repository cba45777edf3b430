/**
 * `make bench-gateway`: what the gateway costs against the pooler people use today, with real processes. The whole
 * platform runs in temporary directories (Redis, three safekeepers, a pageserver, the provisioner, the control
 * plane); a project's endpoint (transaction pooling, never suspended) is woken and filled with `pgbench -i`
 * (scale 10) as the project's role `owner`. Then pgbench `-S -c 16 -j 2 -T 20` against five setups:
 *
 * - direct: the compute's Postgres (SCRAM over TCP, no TLS);
 * - pgbouncer: PgBouncer (Debian's, installed here with apt-get when missing and root) in transaction mode in front
 *   of it, without TLS, and pgbouncer TLS: a second one with `client_tls_sslmode = require`;
 * - node relay: `bench/node-relay.ts`, a 1:1 TCP relay in Node that copies bytes and nothing else: the floor of what
 *   any pooler written for Node costs here (the gateway does all of that and parses, pools and authenticates);
 * - gateway: `dist/cmd/gateway.js` in the endpoint's pooler mode, without TLS (`options=endpoint=ep-…-pooler`) and
 *   with TLS (SNI `ep-…-pooler.localhost`).
 *
 * The setups alternate in rounds (each once per round, the order rotated every round) so that a noisy moment of this
 * shared machine hits all alike; a setup's tps is the median of its rounds. Then cold starts through the gateway:
 * StopEndpoint, wait until STOPPED, and time a new client (TLS, SNI `ep-….localhost`) from connect to the answer of
 * `SELECT 1`, which includes waking the endpoint; beside it, the start phases the compute reported and the same
 * connect to the running endpoint, so the wake and the gateway's own share can be told apart.
 *
 * Last line: `gateway tps_vs_pgbouncer=<x> tps_vs_direct=<y> tls_tps_vs_pgbouncer=<z> cold_start_p50_ms=<a>
 * cold_start_p99_ms=<b>` (x: gateway/pgbouncer without TLS, y: gateway without TLS/direct, z: gateway/pgbouncer
 * with TLS). Targets: x ≥ 1.0, a ≤ 1000.
 * With SPG99_BENCH_GATEWAY=0 the gateway is not started (direct and PgBouncer only, to measure the baselines), and
 * the last line is `gateway baselines direct_tps=<d> pgbouncer_tps=<p> pgbouncer_tls_tps=<t> node_relay_tps=<r>`.
 * Environment: SPG99_BENCH_SECONDS (pgbench -T per setup and round, default 20), SPG99_BENCH_ROUNDS (default 3),
 * SPG99_BENCH_CLIENTS (default 16), SPG99_BENCH_SCALE (default 10), SPG99_BENCH_COLD_STARTS (default 20),
 * SPG99_BENCH_GATEWAY (default 1).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import pg from 'pg';
import { EndpointState, PoolerMode } from '../gen/spg99/controlplane/v1/controlplane.js';
import { Harness, REPO_ROOT, waitFor, type ComponentProcess } from '../test/harness/process.js';
import type { ProvisionerNode } from '../test/harness/provisioner.js';
import type { ControlPlaneClient } from '../test/harness/control-plane.js';
import { startPlatform } from '../test/harness/platform.js';
import { freePort } from '../src/lib/net.js';
import { postgresOsUser, prepareDirectoryFor } from '../src/lib/pg/os-user.js';
import { checkLocalServerIdentity, ensureLocalCertificates, type LocalCertificates } from '../src/lib/tls-certs.js';
import { cleanUpOnExit } from './interrupt.js';

const seconds = Number(process.env.SPG99_BENCH_SECONDS ?? 20);
const rounds = Number(process.env.SPG99_BENCH_ROUNDS ?? 3);
const clients = Number(process.env.SPG99_BENCH_CLIENTS ?? 16);
const scale = Number(process.env.SPG99_BENCH_SCALE ?? 10);
const coldStarts = Number(process.env.SPG99_BENCH_COLD_STARTS ?? 20);
const withGateway = process.env.SPG99_BENCH_GATEWAY !== '0';
const DOMAIN = 'localhost';
const ROLE = 'owner';
const DATABASE = 'postgres';
/** A short unmeasured run per setup first: pools fill, caches warm, and a setup that cannot connect fails early. */
const WARM_UP_SECONDS = 2;
/** Waking a stopped endpoint starts a compute from the pageserver: generous, so a slow start is measured, not cut. */
const WAKE_TIMEOUT_MS = 200_000;
const GATEWAY_SCRIPT = path.join(REPO_ROOT, 'dist', 'cmd', 'gateway.js');
const RELAY_SCRIPT = path.join(REPO_ROOT, 'dist', 'bench', 'node-relay.js');

function percentile(sorted: readonly number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : 'NaN';
}

/** A libpq conninfo value, quoted. */
function quoted(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** Commands still running (pgbench, apt-get): the clean-up kills them. */
const running = new Set<ChildProcess>();
/** PgBouncer processes still running: the clean-up stops them after the commands, and kills any left. */
const daemons = new Set<ChildProcess>();

/** Runs a command to its end; rejects with its output when it fails. */
function runCommand(command: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let output = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.once('error', (error: NodeJS.ErrnoException) => {
      running.delete(child);
      reject(error.code === 'ENOENT' ? new Error(`${command} is not installed (run \`make system-deps\`)`) : error);
    });
    child.once('close', (code, signal) => {
      running.delete(child);
      if (code === 0) resolve(output);
      else reject(new Error(`${command} ${args.join(' ')} exited ${code ?? signal}:\n${output.trim().split('\n').slice(-20).join('\n')}`));
    });
  });
}

/** The environment pgbench and psql run with: the role's password, and nothing from the caller's PG* variables. */
function clientEnv(password: string): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('PG')));
  return { ...env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '60' };
}

/** One pgbench -S run; answers its tps (without the initial connection time). */
async function pgbenchTps(conninfo: string, password: string, durationSeconds: number, rate?: number): Promise<number> {
  const args = ['-S', '-n', '-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(durationSeconds), ...(rate ? ['-R', String(rate)] : []), conninfo];
  const output = await runCommand('pgbench', args, clientEnv(password));
  const tps = Number(/tps = ([0-9.]+)/.exec(output)?.[1]);
  if (!Number.isFinite(tps)) throw new Error(`pgbench printed no tps:\n${output}`);
  const failed = /number of failed transactions: ([1-9][0-9]*)/.exec(output);
  if (failed) throw new Error(`pgbench against ${conninfo}: ${failed[1]} failed transactions:\n${output}`);
  return tps;
}

/** Whether something accepts TCP connections on 127.0.0.1:`port`. */
function accepting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Where Debian's pgbouncer is (it installs into /usr/sbin, often not on a user's PATH), or null. */
function findPgbouncer(): string | null {
  const directories = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin'];
  for (const directory of directories.filter(Boolean)) {
    const candidate = path.join(directory, 'pgbouncer');
    if (fs.existsSync(candidate)) return candidate;
  }
  return null;
}

/** Debian's pgbouncer, installed with apt-get when missing and this process may (root, or sudo without a password). */
async function ensurePgbouncer(): Promise<string> {
  const found = findPgbouncer();
  if (found) return found;
  const apt = ['install', '-y', '-qq', '--no-install-recommends', 'pgbouncer'];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (process.getuid?.() === 0) {
    console.log('pgbouncer is missing: apt-get install pgbouncer');
    await runCommand('apt-get', ['update', '-qq'], env);
    await runCommand('apt-get', apt, env);
  } else if (await runCommand('sudo', ['-n', 'true']).then(() => true, () => false)) {
    console.log('pgbouncer is missing: sudo apt-get install pgbouncer');
    await runCommand('sudo', ['-n', 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', 'update', '-qq']);
    await runCommand('sudo', ['-n', 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get', ...apt]);
  } else {
    throw new Error('pgbouncer is not installed and this user cannot install it: run `apt-get install pgbouncer` as root');
  }
  const installed = findPgbouncer();
  if (!installed) throw new Error('apt-get installed pgbouncer, but no pgbouncer binary is on PATH or in /usr/sbin');
  return installed;
}

/** A PgBouncer in transaction mode in front of one Postgres, as the unprivileged user when this process is root. */
class Pgbouncer {
  private output = '';

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    readonly directory: string,
  ) {
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => this.keep(chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => this.keep(chunk));
  }

  /**
   * Starts pgbouncer with its ini and userlist in `directory` (the role's plain password, so it speaks SCRAM to
   * both the client and Postgres) and waits until it accepts connections. With `tls`, clients must use TLS.
   */
  static async start(options: {
    binary: string;
    directory: string;
    postgresAddress: string;
    password: string;
    tls?: LocalCertificates;
  }): Promise<Pgbouncer> {
    const { binary, directory, postgresAddress, password, tls } = options;
    const user = postgresOsUser();
    fs.mkdirSync(directory, { recursive: true, mode: 0o700 });
    const [host, postgresPort] = postgresAddress.split(':');
    const port = await freePort();
    const lines = [
      '[databases]',
      `${DATABASE} = host=${host} port=${postgresPort} dbname=${DATABASE}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      // No Unix socket: nothing to clash with another pgbouncer's in /tmp.
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${path.join(directory, 'userlist.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${clients}`,
      'max_client_conn = 100',
      'ignore_startup_parameters = extra_float_digits',
      // The gateway reaches the compute without TLS too.
      'server_tls_sslmode = disable',
      `logfile = ${path.join(directory, 'pgbouncer.log')}`,
      'log_connections = 0',
      'log_disconnections = 0',
    ];
    if (tls) {
      // A copy the unprivileged user can read (the originals are root's, mode 0600).
      fs.copyFileSync(tls.certFile, path.join(directory, 'server.crt'));
      fs.copyFileSync(tls.keyFile, path.join(directory, 'server.key'));
      lines.push(
        'client_tls_sslmode = require',
        `client_tls_cert_file = ${path.join(directory, 'server.crt')}`,
        `client_tls_key_file = ${path.join(directory, 'server.key')}`,
      );
    } else {
      lines.push('client_tls_sslmode = disable');
    }
    const ini = path.join(directory, 'pgbouncer.ini');
    fs.writeFileSync(ini, `${lines.join('\n')}\n`, { mode: 0o600 });
    fs.writeFileSync(path.join(directory, 'userlist.txt'), `"${ROLE}" "${password.replace(/"/g, '""')}"\n`, { mode: 0o600 });
    // pgbouncer refuses to run as root.
    prepareDirectoryFor(user, directory);
    const child = spawn(binary, [ini], { uid: user.uid, gid: user.gid, stdio: ['ignore', 'pipe', 'pipe'] });
    daemons.add(child);
    child.once('close', () => daemons.delete(child));
    const bouncer = new Pgbouncer(child, port, directory);
    await waitFor(
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`pgbouncer exited ${child.exitCode ?? child.signalCode}: ${bouncer.tail()}`);
        }
        return accepting(port);
      },
      { what: `pgbouncer on port ${port}`, timeoutMs: 30_000, intervalMs: 50 },
    ).catch((error: Error) => {
      child.kill('SIGKILL');
      throw new Error(`${error.message}\n${bouncer.tail()}`);
    });
    return bouncer;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The last lines it printed. */
  tail(count = 15): string {
    return this.output.trim().split('\n').slice(-count).join('\n');
  }

  /** SIGINT (its safe shutdown: server connections closed), SIGKILL after 10 s. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const closed = new Promise((resolve) => this.child.once('close', resolve));
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await closed;
    clearTimeout(timer);
  }

  private keep(chunk: string): void {
    // Only the tail matters (for failure messages).
    this.output = (this.output + chunk).slice(-20_000);
  }
}

/** Starts bench/node-relay.ts in front of `postgresAddress`; resolves with its port and pid once it listens. */
async function startNodeRelay(postgresAddress: string): Promise<{ port: number; pid: number }> {
  const port = await freePort();
  const child = spawn(process.execPath, [RELAY_SCRIPT, String(port), postgresAddress], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemons.add(child);
  child.once('close', () => daemons.delete(child));
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk;
      if (output.includes('relay ready')) resolve();
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk;
    });
    child.once('exit', (code) => reject(new Error(`the node relay exited ${code}: ${output.trim()}`)));
  });
  return { port, pid: child.pid! };
}

/** A setup pgbench runs against, and its rounds' tps. */
interface Setup {
  name: string;
  conninfo: string;
  tps: number[];
  /** The pooler's process (none for direct): its main thread's time on a CPU and waiting for one is measured. */
  pid?: number;
  /** Per round: the pooler's CPU and run-queue wait, in µs per transaction. */
  cpuUs: number[];
  waitUs: number[];
  /** The pooler's CPU per transaction at a fixed rate that leaves the machine room ({@link FIXED_RATE}). */
  fixedRateCpuUs?: number;
}

/**
 * Transactions per second of the efficiency run: well below what any setup reaches here, so that a pooler's CPU per
 * transaction is its own work, not a figure of how busy the machine was (under full load, waits batch events).
 */
const FIXED_RATE = Number(process.env.SPG99_BENCH_FIXED_RATE ?? 4000);

/** The pooler's CPU per transaction while pgbench runs `setup` at {@link FIXED_RATE}. */
async function measureEfficiency(setup: Setup, password: string, durationSeconds: number): Promise<void> {
  if (!setup.pid) return;
  const before = schedstat(setup.pid);
  const tps = await pgbenchTps(setup.conninfo, password, durationSeconds, FIXED_RATE);
  setup.fixedRateCpuUs = (schedstat(setup.pid).runNs - before.runNs) / 1000 / (tps * durationSeconds);
}

/** A thread's time on a CPU and waiting in a run queue so far, in ns (/proc/<pid>/schedstat: the main thread). */
function schedstat(pid: number): { runNs: number; waitNs: number } {
  const [run, wait] = fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
  return { runNs: run, waitNs: wait };
}

/** One measured round of `setup`: its tps, and the pooler's CPU and wait per transaction. */
async function measureRound(setup: Setup, password: string, durationSeconds: number): Promise<void> {
  const before = setup.pid ? schedstat(setup.pid) : null;
  const tps = await pgbenchTps(setup.conninfo, password, durationSeconds);
  setup.tps.push(tps);
  if (before && setup.pid) {
    const after = schedstat(setup.pid);
    const transactions = tps * durationSeconds;
    setup.cpuUs.push((after.runNs - before.runNs) / 1000 / transactions);
    setup.waitUs.push((after.waitNs - before.waitNs) / 1000 / transactions);
  }
}

/** Polls the endpoint until it is in `state` (failing early when it FAILED). */
async function waitEndpointState(api: ControlPlaneClient, endpointId: string, state: EndpointState): Promise<void> {
  await waitFor(
    async () => {
      const { endpoint } = await api.getEndpoint({ endpointId });
      if (endpoint?.state === EndpointState.ENDPOINT_STATE_FAILED) throw new Error(`endpoint ${endpointId} FAILED: ${endpoint.stateReason}`);
      return endpoint?.state === state;
    },
    { what: `endpoint ${endpointId} ${EndpointState[state]}`, timeoutMs: WAKE_TIMEOUT_MS, intervalMs: 50 },
  );
}

/** The pids of processes whose command line names `directory` (a compute's agent and Postgres name their data directory). */
function processesUsing(directory: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(directory)) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

/** Stops the endpoint through the API while its safekeepers and pageserver still run, so its compute stops cleanly. */
async function stopEndpoint(api: ControlPlaneClient, endpointId: string): Promise<void> {
  await api.stopEndpoint({ endpointId }, { signal: AbortSignal.timeout(10_000) });
  await waitFor(
    async () => (await api.getEndpoint({ endpointId }, { signal: AbortSignal.timeout(5_000) })).endpoint?.state === EndpointState.ENDPOINT_STATE_STOPPED,
    { what: `endpoint ${endpointId} STOPPED`, timeoutMs: 60_000, intervalMs: 100 },
  );
}

const harness = new Harness();
const bouncers: Pgbouncer[] = [];
let gateway: ComponentProcess | null = null;
/** What the clean-up needs to stop the endpoint and find what its compute left behind. */
let platform: { api: ControlPlaneClient; endpointId: string; provisioner: ProvisionerNode } | null = null;
let cleaning: Promise<void> | null = null;

/**
 * Stops everything, once (after the run, a failure, or a signal): pgbench and apt-get children, the gateway and the
 * PgBouncers (clients of the compute, before it goes), then the platform, and removes the directories. What the
 * harness finds (unexpected ERROR lines) is printed to stderr, so stdout's last line stays the summary.
 */
function cleanUp(dumpLogs = false): Promise<void> {
  cleaning ??= (async () => {
    for (const child of running) child.kill('SIGTERM');
    await gateway?.stop();
    await Promise.all(bouncers.map((bouncer) => bouncer.stop()));
    // One interrupted while starting, not yet in `bouncers`.
    for (const child of daemons) child.kill('SIGKILL');
    if (platform) {
      await stopEndpoint(platform.api, platform.endpointId).catch((error: unknown) =>
        console.error(`could not stop ${platform?.endpointId} through the control plane (${(error as Error).message}): the provisioner stops its compute`),
      );
    }
    await harness.teardown({ dumpLogs }).catch((error: unknown) => console.error((error as Error).message));
    // A provisioner killed while its computes still stopped leaves them running, under a directory that is gone.
    const leftovers = platform ? processesUsing(platform.provisioner.dataDir) : [];
    for (const pid of leftovers) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Ended meanwhile.
      }
    }
    if (leftovers.length > 0) console.error(`killed ${leftovers.length} compute process(es) the provisioner left running: ${leftovers.join(', ')}`);
  })();
  return cleaning;
}

cleanUpOnExit(cleanUp);

let failed = true;
let summary = '';
try {
  if (withGateway && !fs.existsSync(GATEWAY_SCRIPT)) {
    throw new Error(
      `${path.relative(process.cwd(), GATEWAY_SCRIPT)} is missing: the gateway (cmd/gateway.ts) is not built. Build it with ` +
        '`npx tsc -p tsconfig.json`, or measure only the baselines (direct and PgBouncer) with SPG99_BENCH_GATEWAY=0',
    );
  }
  const pgbouncerBinary = await ensurePgbouncer();
  const pgbouncerVersion = (await runCommand(pgbouncerBinary, ['--version'])).split('\n')[0];
  console.log(
    `gateway bench: pgbench -S scale ${scale}, ${clients} clients, -T ${seconds} per setup in ${rounds} rotating rounds; ` +
      `${withGateway ? `${coldStarts} cold starts` : 'gateway skipped (SPG99_BENCH_GATEWAY=0)'}; ${pgbouncerVersion}`,
  );

  const setupStarted = performance.now();
  const work = harness.tempDir('bench-gateway');
  const certificates = await ensureLocalCertificates(work.join('tls'), { domain: DOMAIN });
  const { controlPlane, provisioner } = await startPlatform(harness);
  const tenant = await controlPlane.operator().createTenant({ name: 'bench' });
  const api = controlPlane.client(tenant.apiKeySecret);
  const project = await api.createProject({
    name: 'bench',
    // Transaction pooling, as PgBouncer runs; never suspended, so the compute stays between setups.
    defaultEndpointSettings: { suspendTimeout: { seconds: 0n, nanos: 0 }, poolerMode: PoolerMode.POOLER_MODE_TRANSACTION },
  });
  const endpointId = project.defaultEndpoint!.endpointId;
  platform = { api, endpointId, provisioner };
  const password = project.defaultRolePassword;
  if (project.defaultRole?.name !== ROLE) throw new Error(`the project's role is ${project.defaultRole?.name}, not ${ROLE}`);
  const { route } = await controlPlane.internal().wakeEndpoint({ endpointId }, { signal: AbortSignal.timeout(WAKE_TIMEOUT_MS) });
  const postgresAddress = route!.postgresAddress;
  const [postgresHost, postgresPort] = postgresAddress.split(':');
  console.log(`setup: platform and endpoint ${endpointId} running at ${postgresAddress} in ${fixed((performance.now() - setupStarted) / 1000, 1)} s`);

  const direct = `host=${postgresHost} port=${postgresPort} user=${ROLE} dbname=${DATABASE} sslmode=disable`;
  const initStarted = performance.now();
  await runCommand('pgbench', ['-i', '-q', '-s', String(scale), direct], clientEnv(password));
  console.log(`pgbench -i -s ${scale} as ${ROLE}: ${fixed((performance.now() - initStarted) / 1000, 1)} s`);

  bouncers.push(await Pgbouncer.start({ binary: pgbouncerBinary, directory: work.join('pgbouncer'), postgresAddress, password }));
  bouncers.push(
    await Pgbouncer.start({ binary: pgbouncerBinary, directory: work.join('pgbouncer-tls'), postgresAddress, password, tls: certificates }),
  );
  const setups: Setup[] = [
    { name: 'direct (Postgres)', conninfo: direct, tps: [], cpuUs: [], waitUs: [] },
    { name: 'pgbouncer', conninfo: `host=127.0.0.1 port=${bouncers[0].port} user=${ROLE} dbname=${DATABASE} sslmode=disable`, tps: [], pid: bouncers[0].pid, cpuUs: [], waitUs: [] },
    { name: 'pgbouncer TLS', conninfo: `host=127.0.0.1 port=${bouncers[1].port} user=${ROLE} dbname=${DATABASE} sslmode=require`, tps: [], pid: bouncers[1].pid, cpuUs: [], waitUs: [] },
  ];
  const relay = await startNodeRelay(postgresAddress);
  setups.push({
    name: 'node relay',
    conninfo: `host=127.0.0.1 port=${relay.port} user=${ROLE} dbname=${DATABASE} sslmode=disable`,
    tps: [],
    pid: relay.pid,
    cpuUs: [],
    waitUs: [],
  });
  let gatewayPort = 0;
  if (withGateway) {
    const listenPort = await freePort();
    gateway = harness.spawn(
      'gateway',
      [
        '--listen', `127.0.0.1:${listenPort}`,
        '--admin-listen', '127.0.0.1:0',
        '--metrics-listen', '127.0.0.1:0',
        '--control-plane', controlPlane.address,
        '--domain', DOMAIN,
        '--tls-cert', certificates.certFile,
        '--tls-key', certificates.keyFile,
        '--allow-plaintext',
      ],
      { label: 'gateway' },
    );
    const ready = await gateway.waitForLine((line) => line.msg === 'gateway ready', { what: '"gateway ready"', timeoutMs: 30_000 });
    gatewayPort = Number(ready.port ?? listenPort);
    setups.push(
      {
        name: 'gateway',
        conninfo: `host=127.0.0.1 port=${gatewayPort} user=${ROLE} dbname=${DATABASE} sslmode=disable options=${quoted(`endpoint=${endpointId}-pooler`)}`,
        tps: [],
        pid: gateway.pid,
        cpuUs: [],
        waitUs: [],
      },
      {
        name: 'gateway TLS',
        // hostaddr: no DNS lookup of the name, which libpq still sends as SNI.
        conninfo: `host=${endpointId}-pooler.${DOMAIN} hostaddr=127.0.0.1 port=${gatewayPort} user=${ROLE} dbname=${DATABASE} sslmode=require`,
        tps: [],
        pid: gateway.pid,
        cpuUs: [],
        waitUs: [],
      },
    );
  }

  for (const setup of setups) await pgbenchTps(setup.conninfo, password, WARM_UP_SECONDS);
  for (let round = 0; round < rounds; round += 1) {
    const order = [...setups.slice(round % setups.length), ...setups.slice(0, round % setups.length)];
    for (const setup of order) await measureRound(setup, password, seconds);
    console.log(`round ${round + 1}: ${order.map((setup) => `${setup.name} ${fixed(setup.tps.at(-1)!, 0)}`).join(', ')}`);
  }
  const tps = (name: string) => median(setups.find((setup) => setup.name === name)?.tps ?? []);
  console.log('');
  console.log(`pgbench -S, ${clients} clients, ${seconds} s per round (median of ${rounds} rounds)`);
  for (const setup of setups) {
    const pooler = setup.cpuUs.length > 0 ? `; pooler per transaction: cpu ${fixed(median(setup.cpuUs), 1)} µs, waiting for a cpu ${fixed(median(setup.waitUs), 1)} µs` : '';
    console.log(`  ${setup.name.padEnd(18)} tps median=${fixed(median(setup.tps), 1).padStart(9)} (rounds ${setup.tps.map((value) => fixed(value, 0)).join(', ')})${pooler}`);
  }
  const pgbouncerVsDirect = tps('pgbouncer') / tps('direct (Postgres)');
  console.log(
    `  pgbouncer/direct ${fixed(pgbouncerVsDirect, 3)}; pgbouncer TLS/pgbouncer ${fixed(tps('pgbouncer TLS') / tps('pgbouncer'), 3)}; ` +
      `node relay/pgbouncer ${fixed(tps('node relay') / tps('pgbouncer'), 3)} (the floor of a pooler in Node)`,
  );
  // Efficiency: each pooler's own CPU per transaction at a rate that leaves the machine room.
  const efficiencySeconds = Math.min(seconds, 10);
  for (const setup of setups) await measureEfficiency(setup, password, efficiencySeconds);
  console.log(`pooler CPU per transaction at a fixed ${FIXED_RATE} tps (pgbench -R, ${efficiencySeconds} s; its main thread, user and kernel):`);
  for (const setup of setups.filter((one) => one.fixedRateCpuUs !== undefined)) {
    console.log(`  ${setup.name.padEnd(18)} ${fixed(setup.fixedRateCpuUs!, 1).padStart(6)} µs`);
  }

  if (!withGateway) {
    summary =
      `gateway baselines direct_tps=${fixed(tps('direct (Postgres)'), 1)} pgbouncer_tps=${fixed(tps('pgbouncer'), 1)} ` +
      `pgbouncer_tls_tps=${fixed(tps('pgbouncer TLS'), 1)} node_relay_tps=${fixed(tps('node relay'), 1)}`;
  } else {
    const tpsVsPgbouncer = tps('gateway') / tps('pgbouncer');
    const tpsVsDirect = tps('gateway') / tps('direct (Postgres)');
    const tlsVsPgbouncer = tps('gateway TLS') / tps('pgbouncer TLS');
    console.log(
      `  gateway/pgbouncer ${fixed(tpsVsPgbouncer, 3)} (target ≥ 1.0: ${tpsVsPgbouncer >= 1 ? 'met' : 'MISSED'}); gateway/direct ` +
        `${fixed(tpsVsDirect, 3)}; gateway TLS/pgbouncer TLS ${fixed(tlsVsPgbouncer, 3)}; gateway/node relay ${fixed(tps('gateway') / tps('node relay'), 3)}`,
    );

    // PgBouncer's server connections would only die with the compute at each stop: it is done.
    await Promise.all(bouncers.map((bouncer) => bouncer.stop()));
    const ca = fs.readFileSync(certificates.caCertFile);
    /** Connect through the gateway with TLS (SNI names the endpoint: a session of its own, no -pooler), SELECT 1; answers ms. */
    const connectAndSelect = async (): Promise<number> => {
      const client = new pg.Client({
        host: '127.0.0.1',
        port: gatewayPort,
        user: ROLE,
        password,
        database: DATABASE,
        connectionTimeoutMillis: WAKE_TIMEOUT_MS,
        // The CA is all the client trusts; Node's own check refuses *.localhost (see checkLocalServerIdentity).
        ssl: { servername: `${endpointId}.${DOMAIN}`, ca, checkServerIdentity: checkLocalServerIdentity },
      });
      client.on('error', () => undefined);
      const started = performance.now();
      try {
        await client.connect();
        await client.query('SELECT 1');
        return performance.now() - started;
      } finally {
        await client.end().catch(() => undefined);
      }
    };
    const coldStartsMs: number[] = [];
    const phaseRuns: Array<Record<string, number>> = [];
    for (let trial = 0; trial < coldStarts; trial += 1) {
      await api.stopEndpoint({ endpointId });
      await waitEndpointState(api, endpointId, EndpointState.ENDPOINT_STATE_STOPPED);
      const fromIndex = controlPlane.process.lines.length;
      coldStartsMs.push(await connectAndSelect());
      // The start phases the new compute reported: how much of the cold start is the compute's own start.
      const reported = await controlPlane.process
        .waitForLine((line) => line.msg === 'compute reports started', { fromIndex, timeoutMs: 5_000 })
        .catch(() => undefined);
      if (reported?.phases && typeof reported.phases === 'object') phaseRuns.push(reported.phases as Record<string, number>);
    }
    // The same connection to the running endpoint: what the gateway's TLS, SCRAM and routing cost without a wake.
    const warmMs: number[] = [];
    for (let trial = 0; trial < coldStarts; trial += 1) warmMs.push(await connectAndSelect());
    const sorted = [...coldStartsMs].sort((a, b) => a - b);
    const p50 = percentile(sorted, 0.5);
    const p99 = percentile(sorted, 0.99);
    const phaseNames = [...new Set(phaseRuns.flatMap((phases) => Object.keys(phases)))];
    const phaseMediansMs = phaseNames.map((name) => [name, median(phaseRuns.map((phases) => (phases[name] ?? Number.NaN) * 1000))] as const);
    const computeStartMs = median(phaseRuns.map((phases) => Object.values(phases).reduce((sum, value) => sum + value, 0) * 1000));
    console.log('');
    console.log(`cold start through the gateway (STOPPED → SELECT 1 answered, TLS), ${coldStarts} trials:`);
    console.log(`  ms: ${coldStartsMs.map((value) => fixed(value, 0)).join(', ')}`);
    console.log(`  p50 ${fixed(p50, 1)} ms (target ≤ 1000: ${p50 <= 1000 ? 'met' : 'MISSED'}), p99 ${fixed(p99, 1)} ms, min ${fixed(sorted[0], 1)} ms`);
    console.log(
      `  of which the compute's start (phases it reported, medians of ${phaseRuns.length}): ${fixed(computeStartMs, 0)} ms ` +
        `(${phaseMediansMs.map(([name, ms]) => `${name}=${fixed(ms, 0)}`).join(' ')})`,
    );
    console.log(`  warm connect + SELECT 1 to the running endpoint: p50 ${fixed(median(warmMs), 1)} ms, max ${fixed(Math.max(...warmMs), 1)} ms`);
    summary =
      `gateway tps_vs_pgbouncer=${fixed(tpsVsPgbouncer, 3)} tps_vs_direct=${fixed(tpsVsDirect, 3)} tls_tps_vs_pgbouncer=${fixed(tlsVsPgbouncer, 3)} ` +
      `cold_start_p50_ms=${fixed(p50, 2)} cold_start_p99_ms=${fixed(p99, 2)}`;
  }
  failed = false;
} finally {
  if (failed) {
    for (const bouncer of bouncers) {
      const tail = bouncer.tail();
      if (tail) console.error(`----- pgbouncer (${bouncer.directory}) -----\n${tail}`);
    }
  }
  // The run's own error is what matters: teardown findings are printed, not thrown over it.
  await cleanUp(failed).catch((error: unknown) => console.error((error as Error).message));
}
console.log(summary);

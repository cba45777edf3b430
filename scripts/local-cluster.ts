/**
 * `make up` / `make down` / `make status`: a local SPG99 in `.spg99/` — three safekeepers, a pageserver and one
 * compute (agent + Postgres) — started as background processes that outlive the command, with logs in
 * `.spg99/logs/`. Data survives `make down`; the next `make up` elects the compute with a higher term and continues
 * the timeline, from the kept Postgres data directory or, when that is gone, from the pageserver's basebackup.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { createSpgClient, openChannel } from '../src/lib/grpc/client.js';
import { ClientError, Status } from '../src/lib/grpc/errors.js';
import { TimelineServiceDefinition } from '../gen/spg99/pageserver/v1/pageserver.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const home = path.join(root, '.spg99');
const stateFile = path.join(home, 'cluster.json');
const logDir = path.join(home, 'logs');

/** The tenant every local timeline belongs to. */
const TENANT_ID = 'tn-local';
const PG_MAJOR_VERSION = 18;

interface ClusterState {
  /** Recorded once the pageserver created the timeline: from then on it must hold it. */
  timelineId?: string;
  term: number;
  pids: Record<string, number>;
  ports: { safekeepers: number[]; pageserver: number; agent: number; postgres: number };
}

const ports = {
  safekeepers: [7501, 7502, 7503].map((port, index) => Number(process.env[`SPG99_SAFEKEEPER${index + 1}_PORT`] ?? port)),
  pageserver: Number(process.env.SPG99_PAGESERVER_PORT ?? 7600),
  agent: Number(process.env.SPG99_AGENT_PORT ?? 7510),
  postgres: Number(process.env.SPG99_POSTGRES_PORT ?? 55432),
};

function readState(): ClusterState | null {
  try {
    return JSON.parse(fs.readFileSync(stateFile, 'utf8')) as ClusterState;
  } catch {
    return null;
  }
}

function writeState(state: ClusterState): void {
  fs.mkdirSync(home, { recursive: true });
  fs.writeFileSync(stateFile, `${JSON.stringify(state, null, 2)}\n`);
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Starts `node dist/cmd/<command>.js` detached, logging to .spg99/logs/<name>.log; returns its pid. */
function launch(name: string, command: string, args: string[]): { pid: number; logFile: string } {
  fs.mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, `${name}.log`);
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(root, 'dist', 'cmd', `${command}.js`), ...args], {
    cwd: root,
    detached: true,
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  child.unref();
  return { pid: child.pid as number, logFile };
}

interface LogEntry {
  msg?: string;
  err?: { message?: string };
  [field: string]: unknown;
}

/** The JSON log lines of `logFile` written after `offset`. */
function readLog(logFile: string, offset: number): { text: string; entries: LogEntry[] } {
  const text = fs.readFileSync(logFile, 'utf8').slice(offset);
  // The last line may be half written: only whole lines are parsed.
  const whole = text.slice(0, text.lastIndexOf('\n') + 1);
  const entries = whole.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogEntry);
  return { text, entries };
}

/** Waits for a JSON log line with `msg` in `logFile` written after `offset`; fails on `failMsg` or exit. */
async function waitForLog(logFile: string, offset: number, msg: string, pid: number, failMsg?: string, timeoutMs = 90_000): Promise<LogEntry> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { text, entries } = readLog(logFile, offset);
    for (const entry of entries) {
      if (entry.msg === msg) return entry;
      if (failMsg && entry.msg === failMsg) throw new Error(`${path.basename(logFile)}: ${entry.err?.message ?? failMsg}`);
    }
    if (!alive(pid)) throw new Error(`the process exited; see ${logFile}:\n${text.split('\n').slice(-15).join('\n')}`);
    if (Date.now() > deadline) throw new Error(`no "${msg}" in ${logFile} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function logSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function seconds(value: number): string {
  return `${value.toFixed(1)} s`;
}

function printConnection(state: ClusterState, readiness?: string): void {
  console.log(`
SPG99 is up (timeline ${state.timelineId}, writer term ${state.term}).
  Connect:     psql "postgresql://postgres@127.0.0.1:${state.ports.postgres}/postgres"
  Safekeepers: ${state.ports.safekeepers.map((port) => `127.0.0.1:${port}`).join(', ')}
  Pageserver:  127.0.0.1:${state.ports.pageserver} (log ${path.join(logDir, 'pageserver.log')})
  Compute API: 127.0.0.1:${state.ports.agent} (grpcurl -plaintext 127.0.0.1:${state.ports.agent} list)
  Logs:        ${logDir}${readiness ? `\n  Ready in:    ${readiness}` : ''}
  Stop:        make down   (data stays in .spg99/; make up continues it)`);
}

/**
 * Creates the timeline on the pageserver at the first start (`recorded` unset) and, at every start, points it at
 * the safekeepers (idempotent). Returns the timeline id.
 */
async function prepareTimeline(recorded: string | undefined, safekeepers: string[]): Promise<string> {
  const channel = openChannel(`127.0.0.1:${ports.pageserver}`);
  const timelines = createSpgClient(TimelineServiceDefinition, channel);
  try {
    const timelineId = recorded ?? `tl-${randomBytes(16).toString('hex')}`;
    if (!recorded) {
      // Answers once initdb's snapshot is durable in object storage.
      await timelines.createTimeline(
        { timelineId, tenantId: TENANT_ID, pgMajorVersion: PG_MAJOR_VERSION },
        { deadline: new Date(Date.now() + 120_000) },
      );
    }
    try {
      await timelines.setWalSource({ timelineId, safekeeperAddresses: safekeepers }, { deadline: new Date(Date.now() + 30_000) });
    } catch (error) {
      if (error instanceof ClientError && error.code === Status.NOT_FOUND) {
        throw new Error(
          `the pageserver has no timeline ${timelineId} of ${stateFile} (a cluster made before the pageserver was part of make up): ` +
            'run make clean (or make down && rm -rf .spg99) to start over',
        );
      }
      throw error;
    }
    return timelineId;
  } finally {
    channel.close();
  }
}

async function up(): Promise<void> {
  const started = performance.now();
  const previous = readState();
  if (previous?.timelineId && previous.pids.pageserver && Object.values(previous.pids).every(alive)) {
    printConnection(previous);
    return;
  }
  if (previous) await down(true);
  const state: ClusterState = {
    timelineId: previous?.timelineId,
    // Every start is a new writer: it must win a higher term than any before it.
    term: (previous?.term ?? 0) + 1,
    pids: {},
    ports,
  };
  try {
    const readiness = await start(state, started);
    printConnection(state, readiness);
  } catch (error) {
    // Nothing keeps running after a failed start, so `make clean` is safe to follow.
    await down(true);
    throw error;
  }
}

/** Starts safekeepers → pageserver → timeline → compute; returns how long each step took. */
async function start(state: ClusterState, started: number): Promise<string> {
  const safekeepers = ports.safekeepers.map((port) => `127.0.0.1:${port}`);
  await Promise.all(
    ports.safekeepers.map(async (port, index) => {
      const name = `safekeeper-${index + 1}`;
      const logFile = path.join(logDir, `${name}.log`);
      const offset = logSize(logFile);
      const { pid } = launch(name, 'safekeeper', [
        '--id', `sk-${index + 1}`,
        '--data-dir', path.join(home, name),
        '--listen', `127.0.0.1:${port}`,
      ]);
      state.pids[name] = pid;
      await waitForLog(logFile, offset, 'safekeeper ready', pid);
    }),
  );
  writeState(state);
  const safekeepersReady = performance.now();

  const pageserverLog = path.join(logDir, 'pageserver.log');
  const pageserverOffset = logSize(pageserverLog);
  const pageserver = launch('pageserver', 'pageserver', [
    '--data-dir', path.join(home, 'pageserver'),
    '--listen', `127.0.0.1:${ports.pageserver}`,
  ]);
  state.pids.pageserver = pageserver.pid;
  writeState(state);
  await waitForLog(pageserverLog, pageserverOffset, 'pageserver ready', pageserver.pid);
  const pageserverReady = performance.now();

  const created = !state.timelineId;
  state.timelineId = await prepareTimeline(state.timelineId, safekeepers);
  writeState(state);
  const timelineReady = performance.now();

  const agentLog = path.join(logDir, 'compute-1.log');
  const offset = logSize(agentLog);
  const { pid } = launch('compute-1', 'agent', [
    '--compute-id', 'compute-1',
    '--timeline-id', state.timelineId,
    '--term', String(state.term),
    '--safekeepers', safekeepers.join(','),
    '--pageserver', `127.0.0.1:${ports.pageserver}`,
    // An empty or missing data directory is filled from the pageserver's basebackup.
    '--pg-data-dir', path.join(home, 'compute-1', 'pgdata'),
    '--pg-port', String(ports.postgres),
    '--listen', `127.0.0.1:${ports.agent}`,
    '--create-timeline',
  ]);
  state.pids['compute-1'] = pid;
  writeState(state);
  await waitForLog(agentLog, offset, 'agent ready', pid, 'the compute did not start');
  const ready = performance.now();

  const running = readLog(agentLog, offset).entries.find((entry) => entry.msg === 'compute running');
  const phases = Object.entries((running?.phases ?? {}) as Record<string, number>)
    .map(([phase, value]) => `${phase} ${seconds(value)}`)
    .join(', ');
  return (
    `${seconds((ready - started) / 1000)} (safekeepers ${seconds((safekeepersReady - started) / 1000)}, ` +
    `pageserver ${seconds((pageserverReady - safekeepersReady) / 1000)}, ` +
    `timeline ${created ? 'created' : 'set up'} ${seconds((timelineReady - pageserverReady) / 1000)}, ` +
    `compute ${seconds((ready - timelineReady) / 1000)}${phases ? `: ${phases}` : ''})`
  );
}

/**
 * Stop order: the compute first (its fast shutdown puts the final checkpoint on the safekeepers, then it asks the
 * pageserver for a snapshot), then the pageserver (it uploads what it ingested), then the safekeepers together.
 */
function stopRank(name: string): number {
  if (name.startsWith('compute')) return 0;
  return name === 'pageserver' ? 1 : 2;
}

/** SIGTERM, then waits for the exit (SIGKILL after a minute). */
async function stop(name: string, pid: number, quiet: boolean): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 60_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  if (!quiet) console.log(`stopped ${name} (pid ${pid})`);
}

async function down(quiet = false): Promise<void> {
  const state = readState();
  if (!state) {
    if (!quiet) console.log('nothing is running (no .spg99/cluster.json)');
    return;
  }
  for (const rank of [0, 1, 2]) {
    const group = Object.entries(state.pids).filter(([name]) => stopRank(name) === rank);
    await Promise.all(group.map(([name, pid]) => stop(name, pid, quiet)));
  }
  writeState({ ...state, pids: {} });
}

/** Where a process of the cluster listens. */
function addressOf(state: ClusterState, name: string): string {
  if (name === 'pageserver') return `127.0.0.1:${state.ports.pageserver}`;
  if (name.startsWith('compute')) return `127.0.0.1:${state.ports.agent} (postgres 127.0.0.1:${state.ports.postgres})`;
  const safekeeper = /^safekeeper-(\d+)$/.exec(name);
  return safekeeper ? `127.0.0.1:${state.ports.safekeepers[Number(safekeeper[1]) - 1]}` : '';
}

function status(): void {
  const state = readState();
  if (!state) {
    console.log('not started: run make up');
    return;
  }
  for (const [name, pid] of Object.entries(state.pids)) {
    console.log(`${name}\tpid ${pid}\t${alive(pid) ? 'running' : 'stopped'}\t${addressOf(state, name)}`);
  }
  if (Object.keys(state.pids).length === 0) console.log('stopped (data kept in .spg99/)');
}

const command = process.argv[2];
try {
  if (command === 'up') await up();
  else if (command === 'down') await down();
  else if (command === 'status') status();
  else {
    console.error('usage: local-cluster up|down|status');
    process.exit(2);
  }
} catch (error) {
  console.error(`make ${command} failed: ${(error as Error).message}`);
  process.exit(1);
}

/**
 * `make up` / `make down` / `make status`: a local SPG99 in `.spg99/` — three safekeepers and one compute (agent
 * + Postgres) for now — started as background processes that outlive the command, with logs in `.spg99/logs/`.
 * Data survives `make down`; the next `make up` elects the compute with a higher term and continues the timeline.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const home = path.join(root, '.spg99');
const stateFile = path.join(home, 'cluster.json');
const logDir = path.join(home, 'logs');

interface ClusterState {
  timelineId: string;
  term: number;
  pids: Record<string, number>;
  ports: { safekeepers: number[]; agent: number; postgres: number };
}

const ports = {
  safekeepers: [7501, 7502, 7503].map((port, index) => Number(process.env[`SPG99_SAFEKEEPER${index + 1}_PORT`] ?? port)),
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

/** Waits for a JSON log line with `msg` in `logFile` written after `offset`; fails on `failMsg` or exit. */
async function waitForLog(logFile: string, offset: number, msg: string, pid: number, failMsg?: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = fs.readFileSync(logFile, 'utf8').slice(offset);
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      const entry = JSON.parse(line) as { msg?: string; err?: { message?: string } };
      if (entry.msg === msg) return;
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

function printConnection(state: ClusterState): void {
  console.log(`
SPG99 is up (timeline ${state.timelineId}, writer term ${state.term}).
  Connect:     psql "postgresql://postgres@127.0.0.1:${state.ports.postgres}/postgres"
  Safekeepers: ${state.ports.safekeepers.map((port) => `127.0.0.1:${port}`).join(', ')}
  Compute API: 127.0.0.1:${state.ports.agent} (grpcurl -plaintext 127.0.0.1:${state.ports.agent} list)
  Logs:        ${logDir}
  Stop:        make down   (data stays in .spg99/; make up continues it)`);
}

async function up(): Promise<void> {
  const previous = readState();
  if (previous && Object.keys(previous.pids).length > 0 && Object.values(previous.pids).every(alive)) {
    printConnection(previous);
    return;
  }
  if (previous) await down(true);
  const state: ClusterState = {
    timelineId: previous?.timelineId ?? `tl-${randomBytes(16).toString('hex')}`,
    // Every start is a new writer: it must win a higher term than any before it.
    term: (previous?.term ?? 0) + 1,
    pids: {},
    ports,
  };
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
  const agentLog = path.join(logDir, 'compute-1.log');
  const offset = logSize(agentLog);
  const { pid } = launch('compute-1', 'agent', [
    '--compute-id', 'compute-1',
    '--timeline-id', state.timelineId,
    '--term', String(state.term),
    '--safekeepers', safekeepers.join(','),
    '--pg-data-dir', path.join(home, 'compute-1', 'pgdata'),
    '--pg-port', String(ports.postgres),
    '--listen', `127.0.0.1:${ports.agent}`,
    '--create-timeline',
  ]);
  state.pids['compute-1'] = pid;
  writeState(state);
  await waitForLog(agentLog, offset, 'agent ready', pid, 'the compute did not start');
  printConnection(state);
}

async function down(quiet = false): Promise<void> {
  const state = readState();
  if (!state) {
    if (!quiet) console.log('nothing is running (no .spg99/cluster.json)');
    return;
  }
  // The compute first: its fast shutdown puts the final checkpoint on the safekeepers.
  const order = Object.entries(state.pids).sort(([a], [b]) => (a.startsWith('compute') ? -1 : b.startsWith('compute') ? 1 : 0));
  for (const [name, pid] of order) {
    if (!alive(pid)) continue;
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 30_000;
    while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    if (!quiet) console.log(`stopped ${name} (pid ${pid})`);
  }
  writeState({ ...state, pids: {} });
}

function status(): void {
  const state = readState();
  if (!state) {
    console.log('not started: run make up');
    return;
  }
  for (const [name, pid] of Object.entries(state.pids)) console.log(`${name}\tpid ${pid}\t${alive(pid) ? 'running' : 'stopped'}`);
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

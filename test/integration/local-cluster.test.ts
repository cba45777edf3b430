/**
 * `make up` (`node dist/scripts/local-cluster.js up`, in a temporary SPG99_HOME on free ports) with a safekeeper that
 * cannot start: it is reported and the platform runs on the other two, the demo endpoint included; a second `make up`
 * after a safekeeper and the gateway were killed starts those and leaves every running component alone.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { freePort } from '../../src/lib/net.js';
import { isAlive } from '../../src/lib/process.js';
import { REPO_ROOT, TempDir } from '../harness/process.js';

const LOCAL_CLUSTER = path.join(REPO_ROOT, 'dist', 'scripts', 'local-cluster.js');

interface Run {
  code: number | null;
  output: string;
}

function localCluster(command: string, env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LOCAL_CLUSTER, command], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

/** Processes whose command line names `directory`. */
function processesUnder(directory: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(directory)) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

describe('make up with components missing (local-cluster, real processes)', function () {
  this.timeout(900_000);
  let home: TempDir | null = null;
  let env: NodeJS.ProcessEnv = {};

  afterEach(async () => {
    if (!home) return;
    await localCluster('down', env);
    for (const pid of processesUnder(home.path)) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    home.remove();
    home = null;
  });

  it('runs on two safekeepers when one cannot start, and a second make up starts only what is not running', async () => {
    home = TempDir.create('local-cluster');
    const [redis, sk1, sk2, sk3, pageserver, controlPlane, provisioner, gateway, gatewayAdmin] = await Promise.all(Array.from({ length: 9 }, () => freePort()));
    env = { ...process.env };
    for (const name of Object.keys(env)) if (/^SPG99_/.test(name)) delete env[name];
    Object.assign(env, {
      SPG99_HOME: home.path,
      SPG99_REDIS_PORT: String(redis),
      SPG99_SAFEKEEPER1_PORT: String(sk1),
      SPG99_SAFEKEEPER2_PORT: String(sk2),
      SPG99_SAFEKEEPER3_PORT: String(sk3),
      SPG99_PAGESERVER_PORT: String(pageserver),
      SPG99_CONTROL_PLANE_PORT: String(controlPlane),
      SPG99_PROVISIONER_PORT: String(provisioner),
      SPG99_GATEWAY_PORT: String(gateway),
      SPG99_GATEWAY_ADMIN_PORT: String(gatewayAdmin),
      SPG99_CONSOLE_PORT: String(await freePort()),
      // Every port make up opens, so that this test can run beside another make up (make test runs two files at once).
      SPG99_CONTROL_PLANE_INTERNAL_PORT: String(await freePort()),
    });
    // Something else holds the third safekeeper's port: it cannot start. It hangs up on every connection at once,
    // so that closing it does not wait on the control plane's channel to that address.
    const squatter = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => squatter.listen(sk3, '127.0.0.1', resolve));
    let first: Run;
    try {
      first = await localCluster('up', env);
    } finally {
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
    }
    expect(first.code, first.output).to.equal(0);
    expect(first.output).to.match(/warning: safekeeper-3 did not start/);
    expect(first.output).to.match(/demo endpoint woken/);
    expect(first.output).to.contain('SPG99 is up.');

    const stateFile = path.join(home.path, 'cluster.json');
    const before = (JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { pids: Record<string, number> }).pids;
    expect(Object.keys(before)).to.not.include('safekeeper-3');
    process.kill(before['safekeeper-1']!, 'SIGKILL');
    process.kill(before.gateway!, 'SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 500));

    const second = await localCluster('up', env);
    expect(second.code, second.output).to.equal(0);
    const after = (JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { pids: Record<string, number> }).pids;
    const kept = ['redis', 'safekeeper-2', 'pageserver', 'provisioner', 'control-plane'];
    for (const name of kept) expect(after[name], `${name} left running`).to.equal(before[name]);
    for (const name of ['safekeeper-1', 'safekeeper-3', 'gateway']) {
      expect(after[name], `${name} started`).to.be.a('number');
      expect(after[name]).to.not.equal(before[name]);
      expect(isAlive(after[name]!), `${name} alive`).to.equal(true);
    }
    expect(second.output).to.match(/kept running: .*control-plane/);
    expect(second.output).to.match(/started: .*safekeeper-1.*gateway|started: .*gateway.*safekeeper-1/);
    const status = await localCluster('status', env);
    expect(status.code, status.output).to.equal(0);
  });
});

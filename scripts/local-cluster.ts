/**
 * `make up` / `make down` / `make status`: a local SPG99 in `.spg99/` — Redis (the catalog, AOF on), three
 * safekeepers, a pageserver on local-filesystem object storage, the provisioner (process driver: computes are local
 * agent + Postgres processes), the control plane, the gateway (TLS with a local CA in `.spg99/tls/`) and the console (web UI) — started as background processes that outlive the command,
 * with logs in `.spg99/logs/`. The first `make up` creates a tenant (its admin API key is kept in
 * `.spg99/credentials.json`, mode 0600) and a demo project, wakes the demo endpoint and prints how to connect. Data
 * survives `make down`; the next `make up` brings back the same databases. `make up` on a running platform starts
 * whatever component is not running (a crashed or killed one) and leaves the running ones alone; a safekeeper that
 * cannot start is reported while the other two carry on (a majority is enough), and a demo endpoint that does not
 * wake is reported, not a reason to stop the platform.
 *
 * Every component has an identity (docs/security.md): `make up` keeps a key per component role and the trust file in
 * `.spg99/keys/` (0700, keys 0600), and Redis' password in `.spg99/redis.password`; everything in `.spg99/` is
 * private to the user who ran it (umask 077). `node dist/scripts/local-cluster.js operator-token` prints a fresh
 * operator token for grpcurl.
 *
 * Environment: `SPG99_HOME` moves the state directory (default `<repo>/.spg99`), so that a test can run a whole
 * platform in a temporary directory; the ports are `SPG99_REDIS_PORT`, `SPG99_SAFEKEEPER{1,2,3}_PORT`,
 * `SPG99_PAGESERVER_PORT`, `SPG99_CONTROL_PLANE_PORT`, `SPG99_CONTROL_PLANE_INTERNAL_PORT`, `SPG99_PROVISIONER_PORT`, `SPG99_GATEWAY_PORT` and
 * `SPG99_GATEWAY_ADMIN_PORT`, and `SPG99_CONSOLE_PORT` (the console, default 8080; `SPG99_PROMETHEUS_URL` turns its monitoring on). With `SPG99_UP_JSON=1`, `up` also prints one line for programs after the text for people:
 * `SPG99_UP_JSON {"home":…,"tenantId":…,"apiKey":…,"controlPlane":"127.0.0.1:7700","gatewayPort":5432,"caFile":…,
 * "demo":{"projectId":…,"branchId":…,"endpointId":…,"role":…,"password":…,"connectionUri":…}}`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { createSpgClient, openChannel, setProcessCredential } from '../src/lib/grpc/client.js';
import { ClientError, Status } from '../src/lib/grpc/errors.js';
import { ensurePlatformCredentials, readPrivateKey, SelfSigner, type PlatformCredentials } from '../src/lib/grpc/credentials.js';
import { pingRedis, redisServerBinary, writeRedisConfig, writeRedisPassword } from '../src/lib/redis.js';
import { ensureLocalCertificates, LOCAL_DOMAIN, quietIpServerNameWarning } from '../src/lib/tls-certs.js';
import { uriWithPassword } from '../src/cli/connection-formats.js';
import { isAlive } from '../src/lib/process.js';
import { createChannel, createClient } from 'nice-grpc';
import { ChannelCredentials } from '@grpc/grpc-js';
import { HealthDefinition } from 'nice-grpc-server-health';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';
import {
  ControlPlaneInternalServiceDefinition,
  ControlPlaneServiceDefinition,
  EndpointState,
} from '../gen/spg99/controlplane/v1/controlplane.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const home = process.env.SPG99_HOME ? path.resolve(process.env.SPG99_HOME) : path.join(root, '.spg99');
/** The state directory as messages name it: relative when under the working directory (`.spg99/` for make). */
const homeShown = `${shownPath(home)}/`;
const stateFile = path.join(home, 'cluster.json');
const credentialsFile = path.join(home, 'credentials.json');
const operatorTokenFile = path.join(home, 'operator-token');
const logDir = path.join(home, 'logs');
const tlsDir = path.join(home, 'tls');
const keysDir = path.join(home, 'keys');
const redisPasswordFile = path.join(home, 'redis.password');

// Whatever this script and what it starts write (logs, Redis' AOF, keys) is private to this user.
process.umask(0o077);
quietIpServerNameWarning();

/** The platform's keys and trust file, made on first use; this script calls as the operator. */
let platformKeys: PlatformCredentials | null = null;
function keys(): PlatformCredentials {
  if (!platformKeys) {
    fs.mkdirSync(home, { recursive: true, mode: 0o711 });
    // Others may pass through (the Postgres OS user reaches its data directories below; prepareDirectoryFor gives
    // the same bit) but not list it; what is inside is private by umask 077. Not 0700: a second make up, make status
    // or operator-token would take the running Postgres processes' way to their files away.
    fs.chmodSync(home, 0o711);
    platformKeys = ensurePlatformCredentials(keysDir);
    setProcessCredential(new SelfSigner('operator', readPrivateKey(platformKeys.keyFiles.operator)));
  }
  return platformKeys;
}

/** The flags that give a component of `role` its identity. */
function identityArgs(role: 'safekeeper' | 'pageserver' | 'provisioner' | 'control-plane' | 'gateway'): string[] {
  return ['--auth-trust-file', keys().trustFile, '--auth-key-file', keys().keyFiles[role]];
}
/** The CA clients verify the gateway with; connection strings name it (sslrootcert). */
const caFile = path.join(tlsDir, 'ca.crt');

/** Where everything listens (each overridable by an environment variable). */
const ports = {
  redis: Number(process.env.SPG99_REDIS_PORT ?? 7379),
  safekeepers: [7501, 7502, 7503].map((port, index) => Number(process.env[`SPG99_SAFEKEEPER${index + 1}_PORT`] ?? port)),
  pageserver: Number(process.env.SPG99_PAGESERVER_PORT ?? 7600),
  controlPlane: Number(process.env.SPG99_CONTROL_PLANE_PORT ?? 7700),
  controlPlaneInternal: Number(process.env.SPG99_CONTROL_PLANE_INTERNAL_PORT ?? 7701),
  provisioner: Number(process.env.SPG99_PROVISIONER_PORT ?? 7800),
  gateway: Number(process.env.SPG99_GATEWAY_PORT ?? 5432),
  gatewayAdmin: Number(process.env.SPG99_GATEWAY_ADMIN_PORT ?? 7900),
  console: Number(process.env.SPG99_CONSOLE_PORT ?? 8080),
};

interface ClusterState {
  version: 2;
  pids: Record<string, number>;
  ports: typeof ports;
  /** Each component's Prometheus port, from its ready line (older state files have none). */
  metricsPorts?: Record<string, number>;
}

/** Secrets shown once by the control plane, kept for the local user (mode 0600). */
interface Credentials {
  tenantId: string;
  apiKey: string;
  demo?: { projectId: string; branchId: string; endpointId: string; role: string; password: string };
}

/** `file` relative to the working directory when it lies under it, else absolute. */
function shownPath(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative === '' || relative.startsWith('..') || path.isAbsolute(relative) ? file : relative;
}

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

function writeState(state: ClusterState): void {
  fs.mkdirSync(home, { recursive: true });
  fs.writeFileSync(stateFile, `${JSON.stringify(state, null, 2)}\n`);
}

function writeCredentials(credentials: Credentials): void {
  fs.writeFileSync(credentialsFile, `${JSON.stringify(credentials, null, 2)}\n`, { mode: 0o600 });
}

function alive(pid: number | undefined): boolean {
  return pid !== undefined && pid > 0 && isAlive(pid);
}

/** Starts `binary args` detached, its output appended to <home>/logs/<name>.log; returns its pid and log. */
function launch(name: string, binary: string, args: string[]): { pid: number; logFile: string } {
  fs.mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, `${name}.log`);
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(binary, args, { cwd: root, detached: true, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  child.unref();
  return { pid: child.pid as number, logFile };
}

/** Starts `node dist/cmd/<command>.js` like {@link launch}. */
function launchComponent(name: string, command: string, args: string[]): { pid: number; logFile: string } {
  return launch(name, process.execPath, ['--enable-source-maps', path.join(root, 'dist', 'cmd', `${command}.js`), ...args]);
}

interface LogEntry {
  msg?: string;
  err?: { message?: string };
  [field: string]: unknown;
}

/** Waits for a JSON log line with `msg` in `logFile` written after `offset`; fails when the process exits. */
async function waitForLog(logFile: string, offset: number, msg: string, pid: number, timeoutMs = 90_000): Promise<LogEntry> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = fs.readFileSync(logFile, 'utf8').slice(offset);
    // The last line may be half written: only whole lines are parsed.
    const whole = text.slice(0, text.lastIndexOf('\n') + 1);
    for (const line of whole.split('\n')) {
      if (!line.startsWith('{')) continue;
      const entry = JSON.parse(line) as LogEntry;
      if (entry.msg === msg) return entry;
    }
    if (!alive(pid)) throw new Error(`the process exited; see ${logFile}:\n${text.split('\n').slice(-15).join('\n')}`);
    if (Date.now() > deadline) throw new Error(`no "${msg}" in ${logFile} after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Keeps the Prometheus port a component's ready line names, for `make status`. */
function recordMetrics(state: ClusterState, name: string, ready: LogEntry): void {
  if (typeof ready.metricsPort === 'number') state.metricsPorts = { ...state.metricsPorts, [name]: ready.metricsPort };
}

function logSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * Clients of the control plane: the public API with the local tenant's key (or the operator token), and the internal
 * service on its own port, as the operator.
 */
function controlPlaneClients(secret: string) {
  keys();
  // The public API is TLS with the platform's CA, as every client of it verifies.
  const channel = createChannel(`127.0.0.1:${ports.controlPlane}`, ChannelCredentials.createSsl(fs.readFileSync(caFile)));
  const internalChannel = openChannel(`127.0.0.1:${ports.controlPlaneInternal}`);
  return {
    api: createSpgClient(ControlPlaneServiceDefinition, channel, undefined, { authorization: `Bearer ${secret}` }),
    internal: createSpgClient(ControlPlaneInternalServiceDefinition, internalChannel),
    close: () => {
      channel.close();
      internalChannel.close();
    },
  };
}

/** The first time: a tenant (its admin key kept) and a demo project; later: what was kept. */
async function bootstrap(): Promise<Credentials> {
  let credentials = readJson<Credentials>(credentialsFile);
  if (!credentials) {
    const operator = controlPlaneClients(fs.readFileSync(operatorTokenFile, 'utf8').trim());
    try {
      const created = await operator.api.createTenant({ name: 'local' });
      credentials = { tenantId: created.tenant!.tenantId, apiKey: created.apiKeySecret };
      writeCredentials(credentials);
    } finally {
      operator.close();
    }
  }
  if (!credentials.demo) {
    const clients = controlPlaneClients(credentials.apiKey);
    try {
      const project = await clients.api.createProject({ name: 'demo' }, { deadline: new Date(Date.now() + 180_000) });
      credentials.demo = {
        projectId: project.project!.projectId,
        branchId: project.defaultBranch!.branchId,
        endpointId: project.defaultEndpoint!.endpointId,
        role: project.defaultRole!.name,
        password: project.defaultRolePassword,
      };
      writeCredentials(credentials);
    } finally {
      clients.close();
    }
  }
  return credentials;
}

/** The demo's connection string as the API hands it out, with the demo role's password put in. */
async function demoConnectionUri(credentials: Credentials): Promise<string> {
  const clients = controlPlaneClients(credentials.apiKey);
  try {
    const { uri } = await clients.api.getConnectionString(
      { endpointId: credentials.demo!.endpointId, roleName: credentials.demo!.role, databaseName: '', pooled: false },
      { deadline: new Date(Date.now() + 10_000) },
    );
    return uriWithPassword(uri, credentials.demo!.password);
  } finally {
    clients.close();
  }
}

/** Wakes the demo endpoint (starting its compute when stopped) and answers its Postgres address. */
async function wakeDemo(credentials: Credentials): Promise<string> {
  const clients = controlPlaneClients(credentials.apiKey);
  try {
    const { route } = await clients.internal.wakeEndpoint({ endpointId: credentials.demo!.endpointId }, { deadline: new Date(Date.now() + 200_000) });
    return route!.postgresAddress;
  } finally {
    clients.close();
  }
}

function printConnection(credentials: Credentials, connectionUri: string, readiness?: string): void {
  const demo = credentials.demo!;
  const cli = `node ${path.relative(process.cwd(), path.join(root, 'dist', 'cmd', 'spg99.js')) || 'dist/cmd/spg99.js'}`;
  console.log(`
SPG99 is up.
  API key:       export SPG99_API_KEY=${credentials.apiKey}   (kept in ${credentialsFile})
  CLI:           ${ports.controlPlane === 7700 ? '' : `SPG99_API=127.0.0.1:${ports.controlPlane} `}${cli} projects list   (control plane 127.0.0.1:${ports.controlPlane}, TLS, CA ${caFile})
  Demo project:  ${demo.projectId}, endpoint ${demo.endpointId}, branch ${demo.branchId}
  Connect:       psql "${connectionUri}"
  Gateway:       127.0.0.1:${ports.gateway} (TLS, CA ${caFile}); a stopped endpoint wakes on connect
  Console:       ${consoleUrl()}   (sign in with the API key)
  Logs:          ${logDir}${readiness ? `\n  Ready in:      ${readiness}` : ''}
  Stop:          make down   (data stays in ${homeShown}; make up brings it back)`);
  if (process.env.SPG99_UP_JSON === '1') {
    const machine = {
      home,
      tenantId: credentials.tenantId,
      apiKey: credentials.apiKey,
      controlPlane: `127.0.0.1:${ports.controlPlane}`,
      gatewayPort: ports.gateway,
      consoleUrl: consoleUrl(),
      caFile,
      demo: { ...demo, connectionUri },
    };
    console.log(`SPG99_UP_JSON ${JSON.stringify(machine)}`);
  }
}

async function up(): Promise<void> {
  const started = performance.now();
  const previous = readJson<ClusterState & { timelineId?: string }>(stateFile);
  if (previous && previous.version !== 2) {
    throw new Error(
      `${stateFile} was made by an older make up (a bare timeline without the control plane): run make down, then make clean to start over`,
    );
  }
  // What still runs is kept (its pid and metrics port); only what is not running is started.
  const state: ClusterState = { version: 2, pids: {}, ports, metricsPorts: {} };
  for (const [name, pid] of Object.entries(previous?.pids ?? {})) {
    if (!alive(pid)) continue;
    state.pids[name] = pid;
    const metricsPort = previous?.metricsPorts?.[name];
    if (metricsPort !== undefined) state.metricsPorts![name] = metricsPort;
  }
  const kept = Object.keys(state.pids);
  const launched: string[] = [];
  let readiness: string;
  try {
    readiness = await start(state, started, launched);
  } catch (error) {
    // What this run started stops again; what ran before keeps running (make down stops everything).
    for (const name of launched) await stop(name, state.pids[name], true);
    for (const name of launched) delete state.pids[name];
    writeState(state);
    throw error;
  }
  if (kept.length > 0) console.log(launched.length === 0 ? 'every component was running already' : `kept running: ${kept.join(', ')}; started: ${launched.join(', ')}`);
  const credentials = await bootstrap();
  // Woken now so that the first psql is fast; it suspends after its idle timeout and wakes on the next connect.
  const wakeStarted = performance.now();
  try {
    await wakeDemo(credentials);
    readiness += `, demo endpoint woken ${seconds(performance.now() - wakeStarted)}`;
  } catch (error) {
    // The platform runs: the endpoint is retried by the control plane and woken by the next connection.
    console.log(
      `\nthe demo endpoint ${credentials.demo!.endpointId} did not wake: ${error instanceof ClientError ? `${Status[error.code]}: ${error.details}` : (error as Error).message}\n` +
        `  The platform keeps running; the control plane retries the endpoint and a connection wakes it. See make status and ${shownPath(logDir)}/control-plane.log.`,
    );
  }
  printConnection(credentials, await demoConnectionUri(credentials), `${seconds(performance.now() - started)} (${readiness})`);
}

/**
 * Starts, in order, whatever of Redis and the safekeepers → pageserver → provisioner → control plane → gateway is not
 * running (names added to `launched`); answers how long each step took. A safekeeper that cannot start is reported
 * and skipped while a majority runs.
 */
async function start(state: ClusterState, started: number, launched: string[]): Promise<string> {
  const timings: string[] = [];
  const mark = (what: string, since: number) => timings.push(`${what} ${seconds(performance.now() - since)}`);
  const running = (name: string) => alive(state.pids[name]);
  const record = (name: string, pid: number) => {
    state.pids[name] = pid;
    launched.push(name);
  };

  keys();
  // The password is in a 0600 file and the 0600 config, never on a command line.
  const redisPassword = writeRedisPassword(redisPasswordFile);
  const safekeepers = ports.safekeepers.map((port) => `127.0.0.1:${port}`);
  const safekeeperFailures: string[] = [];
  await Promise.all([
    (async () => {
      if (running('redis')) return;
      const redisConfig = writeRedisConfig({ port: ports.redis, dataDir: path.join(home, 'redis'), password: redisPassword });
      const redis = launch('redis', redisServerBinary(), [redisConfig.configFile]);
      record('redis', redis.pid);
      const deadline = Date.now() + 60_000;
      while ((await pingRedis('127.0.0.1', ports.redis, 1_000, redisPassword).catch((error: Error) => error.message)) !== '+PONG') {
        if (!alive(redis.pid)) throw new Error(`redis-server exited; see ${redisConfig.logFile}`);
        if (Date.now() > deadline) throw new Error(`redis-server did not answer PING within 60 s; see ${redisConfig.logFile}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })(),
    ...ports.safekeepers.map(async (port, index) => {
      const name = `safekeeper-${index + 1}`;
      if (running(name)) return;
      const logFile = path.join(logDir, `${name}.log`);
      const offset = logSize(logFile);
      const { pid } = launchComponent(name, 'safekeeper', ['--id', `sk-${index + 1}`, '--data-dir', path.join(home, name), '--listen', `127.0.0.1:${port}`, ...identityArgs('safekeeper')]);
      record(name, pid);
      try {
        recordMetrics(state, name, await waitForLog(logFile, offset, 'safekeeper ready', pid));
      } catch (error) {
        safekeeperFailures.push(`${name} did not start: ${(error as Error).message}`);
        if (alive(pid)) process.kill(pid, 'SIGKILL');
        delete state.pids[name];
        launched.splice(launched.indexOf(name), 1);
      }
    }),
  ]);
  const quorum = Math.floor(ports.safekeepers.length / 2) + 1;
  const safekeepersUp = ports.safekeepers.filter((_, index) => running(`safekeeper-${index + 1}`)).length;
  if (safekeepersUp < quorum) throw new Error(`only ${safekeepersUp} of ${ports.safekeepers.length} safekeepers run (${quorum} are needed):\n${safekeeperFailures.join('\n')}`);
  for (const failure of safekeeperFailures) console.log(`warning: ${failure}\n  The platform runs on the other safekeepers (a majority); fix it and run make up again.`);
  writeState(state);
  mark('redis and safekeepers', started);

  let since = performance.now();
  const waits: Promise<void>[] = [];
  if (!running('pageserver')) {
    const pageserverLog = path.join(logDir, 'pageserver.log');
    const pageserverOffset = logSize(pageserverLog);
    const pageserver = launchComponent('pageserver', 'pageserver', ['--data-dir', path.join(home, 'pageserver'), '--listen', `127.0.0.1:${ports.pageserver}`, ...identityArgs('pageserver')]);
    record('pageserver', pageserver.pid);
    waits.push(waitForLog(pageserverLog, pageserverOffset, 'pageserver ready', pageserver.pid).then((line) => recordMetrics(state, 'pageserver', line)));
  }
  if (!running('provisioner')) {
    const provisionerLog = path.join(logDir, 'provisioner.log');
    const provisionerOffset = logSize(provisionerLog);
    const provisioner = launchComponent('provisioner', 'provisioner', ['--data-dir', path.join(home, 'computes'), '--listen', `127.0.0.1:${ports.provisioner}`, ...identityArgs('provisioner')]);
    record('provisioner', provisioner.pid);
    waits.push(waitForLog(provisionerLog, provisionerOffset, 'provisioner ready', provisioner.pid).then((line) => recordMetrics(state, 'provisioner', line)));
  }
  writeState(state);
  await Promise.all(waits);
  mark('pageserver and provisioner', since);

  since = performance.now();
  if (!fs.existsSync(operatorTokenFile)) fs.writeFileSync(operatorTokenFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  if (!running('control-plane')) await startControlPlane(state, safekeepers, record);
  mark('control plane', since);

  since = performance.now();
  if (!running('gateway')) await startGateway(state, record);
  writeState(state);
  mark('gateway', since);

  since = performance.now();
  if (!running('console')) await startConsole(state, record);
  writeState(state);
  mark('console', since);
  return timings.join(', ');
}

async function startControlPlane(state: ClusterState, safekeepers: string[], record: (name: string, pid: number) => void): Promise<void> {
  // The public API's certificate: the gateway's (it covers 127.0.0.1), from the same CA clients already trust.
  const certificates = await ensureLocalCertificates(tlsDir, { domain: LOCAL_DOMAIN });
  const controlPlaneLog = path.join(logDir, 'control-plane.log');
  const controlPlaneOffset = logSize(controlPlaneLog);
  const controlPlane = launchComponent('control-plane', 'control-plane', [
    '--listen', `127.0.0.1:${ports.controlPlane}`,
    '--tls-cert', certificates.certFile,
    '--tls-key', certificates.keyFile,
    '--internal-listen', `127.0.0.1:${ports.controlPlaneInternal}`,
    '--redis-url', `redis://127.0.0.1:${ports.redis}`,
    '--redis-password-file', redisPasswordFile,
    ...identityArgs('control-plane'),
    '--pageserver', `127.0.0.1:${ports.pageserver}`,
    '--safekeepers', safekeepers.join(','),
    '--provisioner', `127.0.0.1:${ports.provisioner}`,
    '--operator-token-file', operatorTokenFile,
    '--public-port', String(ports.gateway),
    // Endpoints under a domain Node can verify, reached at 127.0.0.1 with the endpoint in options: nothing has to
    // resolve ep-<id>.spg99.localhost (docs/connecting.md).
    '--domain', LOCAL_DOMAIN,
    '--public-host', '127.0.0.1',
    '--public-root-cert', caFile,
  ]);
  record('control-plane', controlPlane.pid);
  writeState(state);
  recordMetrics(state, 'control-plane', await waitForLog(controlPlaneLog, controlPlaneOffset, 'control plane ready', controlPlane.pid));
}

async function startGateway(state: ClusterState, record: (name: string, pid: number) => void): Promise<void> {
  const certificates = await ensureLocalCertificates(tlsDir, { domain: LOCAL_DOMAIN });
  const gatewayLog = path.join(logDir, 'gateway.log');
  const gatewayOffset = logSize(gatewayLog);
  const gateway = launchComponent('gateway', 'gateway', [
    '--listen', `127.0.0.1:${ports.gateway}`,
    '--admin-listen', `127.0.0.1:${ports.gatewayAdmin}`,
    '--control-plane', `127.0.0.1:${ports.controlPlaneInternal}`,
    '--domain', LOCAL_DOMAIN,
    ...identityArgs('gateway'),
    '--tls-cert', certificates.certFile,
    '--tls-key', certificates.keyFile,
  ]);
  record('gateway', gateway.pid);
  writeState(state);
  recordMetrics(state, 'gateway', await waitForLog(gatewayLog, gatewayOffset, 'gateway ready', gateway.pid));
}

/** The console's address for people. */
function consoleUrl(): string {
  return `http://127.0.0.1:${ports.console}/`;
}

/**
 * The console, a client of the public API only; its session key stays in the state directory, so sessions survive a
 * restart. SPG99_PROMETHEUS_URL turns its monitoring pages on.
 */
async function startConsole(state: ClusterState, record: (name: string, pid: number) => void): Promise<void> {
  const consoleLog = path.join(logDir, 'console.log');
  const consoleOffset = logSize(consoleLog);
  const prometheusUrl = process.env.SPG99_PROMETHEUS_URL ?? '';
  const consoleProcess = launchComponent('console', 'console', [
    '--listen', `127.0.0.1:${ports.console}`,
    '--control-plane', `127.0.0.1:${ports.controlPlane}`,
    '--control-plane-ca', caFile,
    '--session-key-file', path.join(home, 'console-session.key'),
    ...(prometheusUrl ? ['--prometheus-url', prometheusUrl] : []),
  ]);
  record('console', consoleProcess.pid);
  writeState(state);
  try {
    recordMetrics(state, 'console', await waitForLog(consoleLog, consoleOffset, 'console ready', consoleProcess.pid, 30_000));
  } catch (error) {
    // The databases work without the web UI (e.g. its port is taken): say so rather than stop the platform.
    if (alive(consoleProcess.pid)) process.kill(consoleProcess.pid, 'SIGKILL');
    delete state.pids.console;
    console.log(`warning: the console did not start (${(error as Error).message.split('\n')[0]}); set SPG99_CONSOLE_PORT to a free port and run make up again`);
  }
}

/**
 * Stop order: the endpoints (their computes put the final WAL on the safekeepers and ask the pageserver for a
 * snapshot), the gateway (its clients are told), the control plane (so it starts nothing more), the provisioner (it stops computes left running), the
 * pageserver (it uploads what it ingested), the safekeepers, and Redis last.
 */
const STOP_ORDER = ['console', 'gateway', 'control-plane', 'provisioner', 'pageserver', 'safekeeper', 'redis'];

function stopRank(name: string): number {
  const rank = STOP_ORDER.findIndex((prefix) => name.startsWith(prefix));
  return rank < 0 ? STOP_ORDER.length : rank;
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

/** Stops the local tenant's running endpoints through the API (best effort: the provisioner stops what is left). */
async function stopEndpoints(quiet: boolean): Promise<void> {
  const credentials = readJson<Credentials>(credentialsFile);
  if (!credentials) return;
  const clients = controlPlaneClients(credentials.apiKey);
  try {
    const options = { deadline: new Date(Date.now() + 5_000) };
    for (const project of (await clients.api.listProjects({}, options)).projects) {
      for (const endpoint of (await clients.api.listEndpoints({ projectId: project.projectId, branchId: '' }, options)).endpoints) {
        if (endpoint.state !== EndpointState.ENDPOINT_STATE_RUNNING) continue;
        await clients.api.stopEndpoint({ endpointId: endpoint.endpointId }, options);
        const until = Date.now() + 60_000;
        while (Date.now() < until) {
          const { endpoint: now } = await clients.api.getEndpoint({ endpointId: endpoint.endpointId }, options);
          if (now?.state !== EndpointState.ENDPOINT_STATE_SUSPENDING) break;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
        if (!quiet) console.log(`stopped endpoint ${endpoint.endpointId}`);
      }
    }
  } catch (error) {
    if (!(error instanceof ClientError && error.code === Status.UNAVAILABLE) && !quiet) {
      console.log(`could not stop the endpoints through the control plane (${(error as Error).message}); the provisioner stops their computes`);
    }
  } finally {
    clients.close();
  }
}

async function down(quiet = false): Promise<void> {
  const state = readJson<ClusterState>(stateFile);
  if (!state || Object.keys(state.pids ?? {}).length === 0) {
    if (!quiet) console.log(`nothing is running (no processes recorded in ${shownPath(stateFile)})`);
    return;
  }
  if (state.version === 2 && alive(state.pids['control-plane'])) await stopEndpoints(quiet);
  const ranks = [...new Set(Object.keys(state.pids).map(stopRank))].sort((a, b) => a - b);
  for (const rank of ranks) {
    const group = Object.entries(state.pids).filter(([name]) => stopRank(name) === rank);
    await Promise.all(group.map(([name, pid]) => stop(name, pid, quiet)));
  }
  writeState({ ...state, version: 2, pids: {} });
}

/** Where a process of the cluster listens. */
function addressOf(name: string): string {
  if (name === 'redis') return `redis://127.0.0.1:${ports.redis}`;
  if (name === 'pageserver') return `127.0.0.1:${ports.pageserver}`;
  if (name === 'control-plane') return `127.0.0.1:${ports.controlPlane} (internal 127.0.0.1:${ports.controlPlaneInternal})`;
  if (name === 'provisioner') return `127.0.0.1:${ports.provisioner}`;
  if (name === 'gateway') return `127.0.0.1:${ports.gateway} (admin 127.0.0.1:${ports.gatewayAdmin})`;
  if (name === 'console') return consoleUrl();
  const safekeeper = /^safekeeper-(\d+)$/.exec(name);
  return safekeeper ? `127.0.0.1:${ports.safekeepers[Number(safekeeper[1]) - 1]}` : '';
}

/** The gRPC address whose health stands for a component (the gateway's admin server). */
function healthAddressOf(name: string): string | null {
  if (name === 'redis') return null;
  if (name === 'gateway') return `127.0.0.1:${ports.gatewayAdmin}`;
  if (name === 'control-plane') return `127.0.0.1:${ports.controlPlane}`;
  return addressOf(name);
}

/** What a component answers now: Redis to PING, the others to grpc.health.v1 Check, within two seconds. */
async function healthOf(name: string, pid: number): Promise<string> {
  if (!alive(pid)) return 'down (process gone)';
  if (name === 'redis') {
    const password = fs.existsSync(redisPasswordFile) ? fs.readFileSync(redisPasswordFile, 'utf8').trim() : undefined;
    const answer = await pingRedis('127.0.0.1', ports.redis, 2_000, password).catch((error: Error) => `no answer (${error.message})`);
    return answer === '+PONG' ? 'ok (PONG)' : answer;
  }
  if (name === 'console') {
    const answer = await fetch(`${consoleUrl()}healthz`, { signal: AbortSignal.timeout(2_000) }).then(
      (response) => (response.ok ? 'ok (HTTP 200)' : `not serving (HTTP ${response.status})`),
      (error: Error) => `no answer (${error.message})`,
    );
    return answer;
  }
  const address = healthAddressOf(name)!;
  // The control plane's health is asked on its public API, which is TLS with the platform's CA.
  const channel = name === 'control-plane' ? createChannel(address, ChannelCredentials.createSsl(fs.readFileSync(caFile))) : openChannel(address);
  try {
    const { status } = await createClient(HealthDefinition, channel).check({ service: '' }, { signal: AbortSignal.timeout(2_000) });
    return status === HealthCheckResponse_ServingStatus.SERVING ? 'ok (SERVING)' : `not serving (${HealthCheckResponse_ServingStatus[status]})`;
  } catch (error) {
    return `no answer (${(error as Error).message.split('\n')[0].slice(0, 60)})`;
  } finally {
    channel.close();
  }
}

/** Every component with its pid, its health as it answers now, its address and its metrics; then the demo endpoint. */
async function status(): Promise<void> {
  const state = readJson<ClusterState>(stateFile);
  if (!state) {
    console.log('not started: run make up');
    return;
  }
  const names = Object.keys(state.pids);
  if (names.length === 0) {
    console.log(`stopped (data kept in ${homeShown})`);
    return;
  }
  const health = await Promise.all(names.map((name) => healthOf(name, state.pids[name])));
  const rows = [
    ['component', 'pid', 'health', 'address', 'metrics'],
    ...names.map((name, index) => {
      const metricsPort = state.metricsPorts?.[name];
      return [name, String(state.pids[name]), health[index], addressOf(name), metricsPort ? `http://127.0.0.1:${metricsPort}/metrics` : '-'];
    }),
  ];
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  for (const row of rows) console.log(row.map((cell, column) => cell.padEnd(widths[column])).join('  ').trimEnd());
  console.log(`logs in ${shownPath(logDir)}/`);
  if (health.some((answer) => !answer.startsWith('ok'))) process.exitCode = 1;
  const credentials = readJson<Credentials>(credentialsFile);
  if (!credentials?.demo || !alive(state.pids['control-plane'])) return;
  const clients = controlPlaneClients(credentials.apiKey);
  try {
    const { endpoint } = await clients.api.getEndpoint({ endpointId: credentials.demo.endpointId }, { deadline: new Date(Date.now() + 5_000) });
    console.log(`demo endpoint ${credentials.demo.endpointId} ${EndpointState[endpoint!.state].replace('ENDPOINT_STATE_', '')}: ${endpoint!.stateReason}`);
  } finally {
    clients.close();
  }
}

const command = process.argv[2];
try {
  if (command === 'up') await up();
  else if (command === 'down') await down();
  else if (command === 'status') await status();
  else if (command === 'operator-token') console.log(new SelfSigner('operator', readPrivateKey(keys().keyFiles.operator)).token());
  else {
    console.error('usage: local-cluster up|down|status|operator-token');
    process.exit(2);
  }
} catch (error) {
  console.error(`make ${command} failed: ${(error as Error).message}`);
  process.exit(1);
}

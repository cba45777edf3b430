/**
 * The `kubernetes` driver against recorded API responses. A small HTTP server in the test answers the REST paths
 * `@kubernetes/client-node` calls (list, watch, create, get, patch, delete of pods and Secrets, pod logs): objects
 * the driver creates are kept as the API server would keep them, and the pod states, errors and the objects of an
 * earlier provisioner come from recorded bodies in test/fixtures/kubernetes/. The test plays the kubelet by putting
 * a recorded pod status on a pod. What is checked is what a user notices: the pod that runs, the states and reasons
 * the Provisioner API answers, the messages of failures, how stops delete, and that a new driver finds its computes.
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import { KubeConfig } from '@kubernetes/client-node';
import { createServer, type Server } from 'nice-grpc';
import { pino } from 'pino';
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { ServerError, Status } from '../../src/lib/grpc/errors.js';
import { freePort } from '../../src/lib/net.js';
import { ComputeState, type ComputeSpec } from '../../src/provisioner/driver.js';
import { KubernetesDriver, type KubernetesDriverOptions } from '../../src/provisioner/kubernetes-driver.js';
import { REPO_ROOT, waitFor } from '../harness/process.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'kubernetes');
const NAMESPACE = 'spg99';
const IMAGE = 'registry.example.com/spg99/compute:0.1.0';
/** The name recorded Status bodies carry; replaced by the name of the object asked for. */
const RECORDED_NAME = 'spg99-cp-00000000000000000000000000000000';
/** The compute of the recorded Secret and pods (an earlier provisioner's). */
const RECORDED_COMPUTE = 'cp-5f0c7a3e9b2d4c1e8a6f0b3d2c1e4a5f';
/** Its spec, as secret-record.json holds it. */
const RECORDED_SPEC: ComputeSpec = {
  endpointId: 'ep-7d1e0c4b9a8f4e2d8c6b5a4f3e2d1c0b',
  timelineId: 'tl-3c9f2e1d0b8a4c7e9f6d5b4a3c2e1f0d',
  term: 7n,
  profile: { cpuMillis: 1000, memoryMib: 2048 },
  safekeeperAddresses: ['sk-0.spg99.svc.cluster.local:7501', 'sk-1.spg99.svc.cluster.local:7501', 'sk-2.spg99.svc.cluster.local:7501'],
  pageserverAddress: 'pageserver.spg99.svc.cluster.local:7600',
  controlPlaneAddress: 'control-plane.spg99.svc.cluster.local:7700',
  pgSettings: { work_mem: '16MB' },
  roles: [{ roleName: 'app', scramVerifier: 'SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$8Kfs0cC2VbG0vQ4cUqC7Xk3D0WfV3r6uYx2n0rS3Hj8=:Qm9Q2mVbUu7wT1kq1n3c9m0Zl6u8s2d0f4g6h8j0k2M=' }],
};

type Kind = 'pods' | 'secrets';
/** Kubernetes objects as JSON: the fake stores and answers them as they travel, untyped. */
type Json = any;

function fixture(name: string): Json {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, name), 'utf8'));
}

/** A recorded Status body, for the object `name` of `kind`. */
function statusFixture(name: string, objectName: string, kind: Kind): Json {
  const text = fs.readFileSync(path.join(FIXTURES, name), 'utf8').replaceAll(RECORDED_NAME, objectName);
  const status = JSON.parse(text);
  if (status.details?.kind && status.code !== 403) {
    status.details.kind = kind;
    status.message = status.message.replace(/^(pods|secrets)/, kind);
  }
  return status;
}

/** A request the fake API server received. */
interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  contentType: string;
  body: Json;
}

/** A JSON merge patch (RFC 7386), as the API server applies `application/merge-patch+json`. */
function mergePatch(target: Json, patch: Json): Json {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const result = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

function matchesSelector(object: Json, selector: string | null): boolean {
  if (!selector) return true;
  return selector.split(',').every((term) => {
    const [key, value] = term.split('=');
    return object.metadata?.labels?.[key] === value;
  });
}

/** The API server of these tests: objects in memory, watches as chunked JSON lines, failures on demand. */
class FakeKubernetes {
  readonly requests: RecordedRequest[] = [];
  /** Pod logs by pod name (GET .../pods/<name>/log). */
  readonly logs = new Map<string, string>();
  /** Delay of the "kubelet" between a graceful delete and the pod's removal. */
  deleteDelayMs = 20;
  /** Pods deleted with a grace period stay (an unreachable node) until force-deleted. */
  holdDeletes = false;
  private readonly objects: Record<Kind, Map<string, Json>> = { pods: new Map(), secrets: new Map() };
  private readonly events: Array<{ resourceVersion: number; kind: Kind; type: string; object: Json }> = [];
  private readonly watchers = new Set<{ kind: Kind; selector: string | null; response: http.ServerResponse }>();
  private readonly failures: Array<{ method: string; pattern: RegExp; code: number; body: (name: string, kind: Kind) => Json; times: number }> = [];
  private resourceVersion = 5000;

  private constructor(private readonly server: http.Server) {}

  static async start(): Promise<FakeKubernetes> {
    let fake: FakeKubernetes | undefined;
    const server = http.createServer((request, response) => {
      void fake!.handle(request, response);
    });
    fake = new FakeKubernetes(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return fake;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** A KubeConfig for this server, as `loadFromOptions` takes one (a bearer token, no TLS). */
  kubeConfig(): KubeConfig {
    const config = new KubeConfig();
    config.loadFromOptions({
      clusters: [{ name: 'recorded', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'provisioner', token: 'recorded-token' }],
      contexts: [{ name: 'recorded', cluster: 'recorded', user: 'provisioner', namespace: NAMESPACE }],
      currentContext: 'recorded',
    });
    return config;
  }

  /** The next `times` requests of `method` whose path matches `pattern` answer `code` with a recorded Status. */
  fail(method: string, pattern: RegExp, code: number, statusFile: string, times = 1): void {
    this.failures.push({ method, pattern, code, body: (name, kind) => statusFixture(statusFile, name, kind), times });
  }

  /** Drops the failures not used up. */
  clearFailures(): void {
    this.failures.length = 0;
  }

  /** Stores a recorded object as if it had been there all along (the watch sees an ADDED). */
  seed(kind: Kind, object: Json): void {
    this.store(kind, structuredClone(object), 'ADDED');
  }

  /** Stores an object without telling watchers (something the driver's mirror has not seen yet). */
  putQuietly(kind: Kind, object: Json): void {
    const copy = structuredClone(object);
    copy.metadata.resourceVersion = String(++this.resourceVersion);
    this.objects[kind].set(copy.metadata.name, copy);
  }

  get(kind: Kind, name: string): Json | undefined {
    return this.objects[kind].get(name);
  }

  names(kind: Kind): string[] {
    return [...this.objects[kind].keys()].sort();
  }

  /** Plays the kubelet: the pod gets the status (and node) of a recorded pod. */
  kubelet(podName: string, fixtureName: string, change: (status: Json) => void = () => undefined): void {
    const pod = this.objects.pods.get(podName);
    if (!pod) throw new Error(`no pod ${podName} (pods: ${this.names('pods').join(', ')})`);
    const recorded = fixture(fixtureName);
    const updated = structuredClone(pod);
    updated.status = recorded.status;
    if (recorded.spec.nodeName) updated.spec.nodeName = recorded.spec.nodeName;
    change(updated.status);
    this.store('pods', updated, 'MODIFIED');
  }

  /** Requests of `method` to paths matching `pattern`. */
  requestsOf(method: string, pattern: RegExp): RecordedRequest[] {
    return this.requests.filter((request) => request.method === method && pattern.test(request.path));
  }

  async close(): Promise<void> {
    for (const watcher of this.watchers) watcher.response.end();
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private store(kind: Kind, object: Json, type: 'ADDED' | 'MODIFIED'): void {
    object.metadata.resourceVersion = String(++this.resourceVersion);
    this.objects[kind].set(object.metadata.name, object);
    this.emit(kind, type, object);
  }

  private remove(kind: Kind, name: string): void {
    const object = this.objects[kind].get(name);
    if (!object) return;
    this.objects[kind].delete(name);
    const removed = structuredClone(object);
    removed.metadata.resourceVersion = String(++this.resourceVersion);
    this.emit(kind, 'DELETED', removed);
  }

  private emit(kind: Kind, type: string, object: Json): void {
    const resourceVersion = Number(object.metadata.resourceVersion);
    this.events.push({ resourceVersion, kind, type, object: structuredClone(object) });
    for (const watcher of this.watchers) {
      if (watcher.kind === kind && matchesSelector(object, watcher.selector)) watcher.response.write(`${JSON.stringify({ type, object })}\n`);
    }
  }

  private send(response: http.ServerResponse, code: number, body: Json): void {
    response.writeHead(code, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify(body));
  }

  private async handle(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', this.url);
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const recorded: RecordedRequest = {
      method: request.method ?? 'GET',
      path: url.pathname,
      query: url.searchParams,
      contentType: String(request.headers['content-type'] ?? ''),
      body: text ? JSON.parse(text) : undefined,
    };
    this.requests.push(recorded);
    const match = /^\/api\/v1\/namespaces\/([^/]+)\/(pods|secrets)(?:\/([^/]+))?(\/log)?$/.exec(url.pathname);
    if (!match || match[1] !== NAMESPACE) {
      this.send(response, 404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', message: `the server could not find the requested resource ${url.pathname}`, reason: 'NotFound', code: 404 });
      return;
    }
    const kind = match[2] as Kind;
    const name = match[3] ?? recorded.body?.metadata?.name ?? '';
    const failure = this.failures.find((candidate) => candidate.method === recorded.method && candidate.pattern.test(url.pathname) && candidate.times > 0);
    if (failure) {
      failure.times -= 1;
      this.send(response, failure.code, failure.body(name, kind));
      return;
    }
    const objects = this.objects[kind];
    const notFound = () => this.send(response, 404, statusFixture('status-404.json', name, kind));
    if (!match[3]) {
      if (recorded.method === 'GET' && url.searchParams.get('watch') === 'true') {
        this.watch(kind, url.searchParams, response);
        return;
      }
      if (recorded.method === 'GET') {
        const selector = url.searchParams.get('labelSelector');
        const items = [...objects.values()].filter((object) => matchesSelector(object, selector));
        this.send(response, 200, { kind: kind === 'pods' ? 'PodList' : 'SecretList', apiVersion: 'v1', metadata: { resourceVersion: String(this.resourceVersion) }, items });
        return;
      }
      if (recorded.method === 'POST') {
        if (objects.has(name)) {
          this.send(response, 409, statusFixture('status-409.json', name, kind));
          return;
        }
        const object = structuredClone(recorded.body);
        object.metadata.namespace = NAMESPACE;
        object.metadata.uid = randomUUID();
        object.metadata.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
        if (kind === 'pods') object.status = { phase: 'Pending', qosClass: 'Guaranteed' };
        this.store(kind, object, 'ADDED');
        this.send(response, 201, object);
        return;
      }
    }
    const object = objects.get(name);
    if (match[4]) {
      if (!object) return notFound();
      response.writeHead(200, { 'Content-Type': 'text/plain' });
      response.end(this.logs.get(name) ?? '');
      return;
    }
    if (!object) return notFound();
    if (recorded.method === 'GET') return this.send(response, 200, object);
    if (recorded.method === 'PATCH') {
      if (recorded.contentType !== 'application/merge-patch+json') {
        this.send(response, 415, { kind: 'Status', apiVersion: 'v1', status: 'Failure', message: `415: Unsupported Media Type ${recorded.contentType}`, reason: 'UnsupportedMediaType', code: 415 });
        return;
      }
      const patched = mergePatch(object, recorded.body);
      this.store(kind, patched, 'MODIFIED');
      return this.send(response, 200, patched);
    }
    if (recorded.method === 'DELETE') {
      const grace = url.searchParams.has('gracePeriodSeconds') ? Number(url.searchParams.get('gracePeriodSeconds')) : 30;
      if (kind === 'secrets' || grace === 0) {
        this.remove(kind, name);
        return this.send(response, 200, object);
      }
      if (!object.metadata.deletionTimestamp) {
        const deleting = structuredClone(object);
        deleting.metadata.deletionTimestamp = new Date(Date.now() + grace * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
        deleting.metadata.deletionGracePeriodSeconds = grace;
        this.store(kind, deleting, 'MODIFIED');
        if (!this.holdDeletes) setTimeout(() => this.remove(kind, name), this.deleteDelayMs);
      }
      return this.send(response, 200, this.objects[kind].get(name));
    }
    this.send(response, 405, { kind: 'Status', apiVersion: 'v1', status: 'Failure', message: 'method not allowed', reason: 'MethodNotAllowed', code: 405 });
  }

  private watch(kind: Kind, query: URLSearchParams, response: http.ServerResponse): void {
    const selector = query.get('labelSelector');
    const since = Number(query.get('resourceVersion') ?? 0);
    response.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    response.flushHeaders();
    // What happened between the list and this watch, as a real API server replays from the resource version.
    for (const event of this.events) {
      if (event.kind === kind && event.resourceVersion > since && matchesSelector(event.object, selector)) {
        response.write(`${JSON.stringify({ type: event.type, object: event.object })}\n`);
      }
    }
    const watcher = { kind, selector, response };
    this.watchers.add(watcher);
    response.on('close', () => this.watchers.delete(watcher));
  }
}

function hex32(): string {
  return randomUUID().replaceAll('-', '');
}

function newComputeId(): string {
  return `cp-${hex32()}`;
}

function computeSpec(overrides: Partial<ComputeSpec> = {}): ComputeSpec {
  return {
    endpointId: `ep-${hex32()}`,
    timelineId: `tl-${hex32()}`,
    term: 3n,
    profile: { cpuMillis: 500, memoryMib: 1024 },
    safekeeperAddresses: ['sk-0.spg99.svc:7501', 'sk-1.spg99.svc:7501', 'sk-2.spg99.svc:7501'],
    pageserverAddress: 'pageserver.spg99.svc:7600',
    controlPlaneAddress: 'control-plane.spg99.svc:7700',
    pgSettings: { work_mem: '8MB' },
    roles: [{ roleName: 'app', scramVerifier: 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy' }],
    ...overrides,
  };
}

async function rejection(promise: Promise<unknown>): Promise<ServerError> {
  try {
    await promise;
  } catch (error) {
    expect(error, String(error)).to.be.instanceOf(ServerError);
    return error as ServerError;
  }
  throw new Error('expected a rejection');
}

function thrown(call: () => unknown): ServerError {
  try {
    call();
  } catch (error) {
    expect(error).to.be.instanceOf(ServerError);
    return error as ServerError;
  }
  throw new Error('expected an error');
}

function argValue(args: string[], flag: string): string | undefined {
  const index = args.indexOf(flag);
  return index >= 0 ? args[index + 1] : undefined;
}

describe('KubernetesDriver (against recorded API responses)', function () {
  this.timeout(30_000);
  let fake: FakeKubernetes;
  const drivers: KubernetesDriver[] = [];
  const agents: Server[] = [];
  const log = pino({ level: 'silent' });

  async function openDriver(options: Partial<KubernetesDriverOptions> = {}): Promise<KubernetesDriver> {
    const driver = await KubernetesDriver.open({
      kubeConfig: fake.kubeConfig(),
      namespace: NAMESPACE,
      image: IMAGE,
      log,
      restartBackoffMs: 10,
      sweepIntervalMs: 25,
      stopSlackMs: 500,
      ...options,
    });
    drivers.push(driver);
    return driver;
  }

  function until<T>(check: () => T | undefined | false, what: string): Promise<Exclude<T, undefined | false>> {
    return waitFor(check, { what, timeoutMs: 10_000, intervalMs: 5 });
  }

  beforeEach(async () => {
    fake = await FakeKubernetes.start();
  });

  afterEach(async () => {
    for (const driver of drivers.splice(0)) await driver.close();
    for (const agent of agents.splice(0)) agent.forceShutdown();
    await fake.close();
  });

  it('creates a record Secret and a pod that runs the agent with the spec, the image, the resources and the labels', async () => {
    const driver = await openDriver();
    const computeId = newComputeId();
    const spec = computeSpec();
    const view = await driver.ensure(computeId, spec);
    expect(view).to.include({ computeId, state: ComputeState.COMPUTE_STATE_PENDING, driver: 'kubernetes', restartCount: 0, postgresAddress: '' });

    const [created] = fake.requestsOf('POST', /\/pods$/);
    const pod = created.body;
    expect(pod.metadata.name).to.equal(`spg99-${computeId}`);
    expect(pod.metadata.labels).to.include({
      'app.kubernetes.io/name': 'spg99-compute',
      'spg99.dev/compute-id': computeId,
      'spg99.dev/endpoint-id': spec.endpointId,
      'spg99.dev/timeline-id': spec.timelineId,
    });
    expect(pod.spec.restartPolicy).to.equal('Never');
    const [container] = pod.spec.containers;
    expect(container.image).to.equal(IMAGE);
    const args: string[] = container.args;
    expect(argValue(args, '--compute-id')).to.equal(computeId);
    expect(argValue(args, '--timeline-id')).to.equal(spec.timelineId);
    expect(argValue(args, '--term')).to.equal('3');
    expect(argValue(args, '--safekeepers')).to.equal(spec.safekeeperAddresses.join(','));
    expect(argValue(args, '--pageserver')).to.equal(spec.pageserverAddress);
    expect(argValue(args, '--pg-data-dir')).to.equal('/var/lib/spg99/pgdata');
    expect(argValue(args, '--pg-port')).to.equal('5432');
    expect(argValue(args, '--listen')).to.equal('0.0.0.0:7900');
    expect(argValue(args, '--metrics-listen')).to.equal('0.0.0.0:9187');
    expect(argValue(args, '--endpoint-id')).to.equal(spec.endpointId);
    expect(argValue(args, '--control-plane')).to.equal(spec.controlPlaneAddress);
    expect(argValue(args, '--roles-file')).to.equal('/etc/spg99/roles/roles.json');
    expect(container.resources).to.deep.equal({ requests: { cpu: '500m', memory: '1024Mi' }, limits: { cpu: '500m', memory: '1024Mi' } });
    expect(container.readinessProbe.grpc).to.deep.equal({ port: 7900, service: 'spg99.compute.v1.ComputeService' });
    expect(container.terminationMessagePolicy).to.equal('FallbackToLogsOnError');
    expect(container.volumeMounts).to.deep.include({ name: 'roles', mountPath: '/etc/spg99/roles', readOnly: true });
    expect(pod.spec.volumes).to.deep.include({ name: 'data', emptyDir: {} });
    const roles = pod.spec.volumes.find((volume: Json) => volume.name === 'roles');
    expect(roles.secret.secretName).to.equal(`spg99-${computeId}`);
    expect(pod.spec.securityContext.runAsNonRoot).to.equal(true);

    // The roles reach the agent through the Secret, never through the pod's spec.
    const secret = fake.get('secrets', `spg99-${computeId}`);
    expect(JSON.parse(Buffer.from(secret.data['roles.json'], 'base64').toString('utf8'))).to.deep.equal(spec.roles);
    expect(JSON.stringify(pod)).not.to.include(spec.roles[0].scramVerifier);
    expect(pod.metadata.ownerReferences[0]).to.include({ kind: 'Secret', name: `spg99-${computeId}`, uid: secret.metadata.uid });
  });

  it('answers a retried EnsureCompute with the same compute and refuses another spec under the same id', async () => {
    const driver = await openDriver();
    const computeId = newComputeId();
    const spec = computeSpec();
    await driver.ensure(computeId, spec);
    const again = await driver.ensure(computeId, structuredClone(spec));
    expect(again.computeId).to.equal(computeId);
    expect(fake.requestsOf('POST', /\/pods$/)).to.have.length(1);

    const error = await rejection(driver.ensure(computeId, { ...spec, term: 4n }));
    expect(error.code).to.equal(Status.FAILED_PRECONDITION);
    expect(error.details).to.match(/exists with another spec \(differs in term \(3 → 4\)\)/);
  });

  it('treats a record another provisioner created meanwhile (409 AlreadyExists) by its spec', async () => {
    const driver = await openDriver();
    // Not in the driver's mirror yet: its create answers 409 and it reads the record to compare the specs.
    fake.putQuietly('secrets', fixture('secret-record.json'));
    const error = await rejection(driver.ensure(RECORDED_COMPUTE, { ...RECORDED_SPEC, pageserverAddress: 'pageserver-2.spg99.svc:7600' }));
    expect(error.code).to.equal(Status.FAILED_PRECONDITION);
    expect(error.details).to.match(/differs in pageserver_address/);
    expect(fake.requestsOf('POST', /\/secrets$/)).to.have.length(1);
    const view = await driver.ensure(RECORDED_COMPUTE, RECORDED_SPEC);
    expect(view).to.include({ computeId: RECORDED_COMPUTE, restartCount: 1 });
  });

  it('maps pod phases, container states and readiness to compute states and addresses', async () => {
    const driver = await openDriver();
    const computeId = newComputeId();
    await driver.ensure(computeId, computeSpec());
    const pod = `spg99-${computeId}`;

    fake.kubelet(pod, 'pod-pending-unschedulable.json');
    let view = await until(() => driver.describe(computeId).reason.includes('Insufficient cpu') && driver.describe(computeId), 'unschedulable');
    expect(view.state).to.equal(ComputeState.COMPUTE_STATE_PENDING);
    expect(view.reason).to.match(/^waiting to be scheduled: 0\/3 nodes are available: 3 Insufficient cpu/);

    fake.kubelet(pod, 'pod-pending-image-pull.json');
    view = await until(() => driver.describe(computeId).reason.includes('image') && driver.describe(computeId), 'image pull back-off');
    expect(view.state).to.equal(ComputeState.COMPUTE_STATE_PENDING);
    expect(view.reason).to.match(/^cannot pull the image registry\.example\.com\/spg99\/compute:0\.1\.0 \(ImagePullBackOff: .*401 Unauthorized/);

    fake.kubelet(pod, 'pod-running-not-ready.json');
    view = await until(() => driver.describe(computeId).state === ComputeState.COMPUTE_STATE_STARTING && driver.describe(computeId), 'STARTING');
    expect(view).to.include({ reason: 'the agent is starting', agentAddress: '10.244.2.17:7900', postgresAddress: '' });
    expect(view.startedAt?.toISOString()).to.equal('2026-11-26T09:12:44.000Z');

    fake.kubelet(pod, 'pod-running-ready.json');
    view = await until(() => driver.describe(computeId).state === ComputeState.COMPUTE_STATE_RUNNING && driver.describe(computeId), 'RUNNING');
    expect(view).to.include({ reason: 'Postgres accepts connections', postgresAddress: '10.244.2.17:5432', agentAddress: '10.244.2.17:7900' });
    expect(view.stateChangedAt.toISOString()).to.equal('2026-11-26T09:12:58.000Z');
    expect(driver.list().map((compute) => compute.computeId)).to.deep.equal([computeId]);
  });

  it('restarts an agent that ended with the same spec and term, then fails with the termination message once restarts run out', async () => {
    const driver = await openDriver({ maxRestarts: 1 });
    const computeId = newComputeId();
    const spec = computeSpec();
    await driver.ensure(computeId, spec);
    fake.kubelet(`spg99-${computeId}`, 'pod-failed-termination-message.json');

    await until(() => fake.get('pods', `spg99-${computeId}-1`), 'the pod of restart 1');
    const [, restarted] = fake.requestsOf('POST', /\/pods$/);
    expect(argValue(restarted.body.spec.containers[0].args, '--term')).to.equal('3');
    expect(restarted.body.metadata.labels['spg99.dev/incarnation']).to.equal('1');
    // The ended pod goes at once (its emptyDir holds a copy of the database); the record keeps why it ended.
    await until(() => !fake.get('pods', `spg99-${computeId}`), 'the first pod deleted');
    expect(fake.requestsOf('DELETE', new RegExp(`/pods/spg99-${computeId}$`))[0].query.get('gracePeriodSeconds')).to.equal('0');
    let view = await until(() => driver.describe(computeId).restartCount === 1 && driver.describe(computeId), 'restart count 1');
    expect(view).to.include({ state: ComputeState.COMPUTE_STATE_PENDING, reason: 'restart 1: waiting to be scheduled' });

    fake.kubelet(`spg99-${computeId}-1`, 'pod-failed-termination-message.json');
    view = await until(() => driver.describe(computeId).state === ComputeState.COMPUTE_STATE_FAILED && driver.describe(computeId), 'FAILED');
    expect(view.reason).to.equal(
      'the agent exited with code 1: the compute did not start: /spg99.pageserver.v1.PageService/GetBasebackup UNAVAILABLE: ' +
        'No connection established. Last error: connect ECONNREFUSED 10.96.14.3:7600; gave up after 1 restarts',
    );
    await until(() => fake.get('secrets', `spg99-${computeId}`).metadata.annotations['spg99.dev/state'] === 'FAILED', 'FAILED recorded');
    expect(fake.requestsOf('POST', /\/pods$/)).to.have.length(2);
    // The last pod stays for `kubectl logs` until the compute is forgotten.
    expect(fake.get('pods', `spg99-${computeId}-1`)).to.not.equal(undefined);
    expect(driver.describe(computeId).restartCount).to.equal(1);
  });

  it('does not restart a fenced agent, and says so when the memory limit killed it', async () => {
    const driver = await openDriver({ maxRestarts: 3 });
    const fencedId = newComputeId();
    await driver.ensure(fencedId, computeSpec());
    fake.kubelet(`spg99-${fencedId}`, 'pod-failed-termination-message.json', (status) => {
      status.containerStatuses[0].state.terminated.message =
        '{"level":"warn","msg":"the compute did not start: fenced","state":6,"reason":"term 3 was superseded by term 4 on 2 of 3 safekeepers"}\n';
    });
    const view = await until(() => driver.describe(fencedId).state === ComputeState.COMPUTE_STATE_FAILED && driver.describe(fencedId), 'fenced FAILED');
    expect(view.reason).to.equal('the agent exited with code 1: the compute did not start: fenced: term 3 was superseded by term 4 on 2 of 3 safekeepers');
    expect(fake.requestsOf('POST', /\/pods$/)).to.have.length(1);

    const oomId = newComputeId();
    await driver.ensure(oomId, computeSpec());
    fake.kubelet(`spg99-${oomId}`, 'pod-failed-oomkilled.json');
    await until(() => fake.get('pods', `spg99-${oomId}-1`), 'restart after OOMKilled');
    const record = await until(() => fake.get('secrets', `spg99-${oomId}`).metadata.annotations['spg99.dev/last-failure'], 'last failure recorded');
    expect(record).to.equal('the agent was killed for exceeding its memory limit (OOMKilled, 1024Mi): give the compute a profile with more memory');
  });

  it('restarts a start that is never ready only once its pod is gone, then fails with the agent\'s last words', async () => {
    // Creation times have whole seconds: the timeout may count up to a second early.
    const driver = await openDriver({ maxRestarts: 1, startTimeoutMs: 1500 });
    const computeId = newComputeId();
    await driver.ensure(computeId, computeSpec());
    const first = `spg99-${computeId}`;
    fake.kubelet(first, 'pod-running-not-ready.json');
    await until(() => fake.get('pods', `${first}-1`), 'the pod of restart 1');
    // The agent may still run: deleted without force (the kubelet confirms), and gone before the same term starts again.
    const order = fake.requests.filter((request) => (request.method === 'DELETE' && request.path.endsWith(`/pods/${first}`)) || (request.method === 'POST' && request.path.endsWith('/pods')));
    expect(order.map((request) => `${request.method} ${request.query.get('gracePeriodSeconds') ?? request.body.metadata.name}`)).to.deep.equal([
      `POST ${first}`,
      'DELETE 1',
      `POST ${first}-1`,
    ]);
    expect(driver.describe(computeId).reason).to.match(/^restart 1: /);

    const second = `${first}-1`;
    fake.kubelet(second, 'pod-running-not-ready.json');
    fake.logs.set(second, fixture('pod-failed-termination-message.json').status.containerStatuses[0].state.terminated.message);
    const view = await until(() => driver.describe(computeId).state === ComputeState.COMPUTE_STATE_FAILED && driver.describe(computeId), 'FAILED');
    expect(view.reason).to.match(/^not ready within 1500 ms \(the agent is starting\); the agent said: the compute did not start: .*ECONNREFUSED 10\.96\.14\.3:7600; gave up after 1 restarts$/);
    expect(view.restartCount).to.equal(1);
    await until(() => !fake.get('pods', second), 'the pod deleted');
    expect(fake.requestsOf('DELETE', new RegExp(`/pods/${second}$`))[0].query.get('gracePeriodSeconds')).to.equal('0');
  });

  it('stops by deleting the pod with the grace period (0 to kill), then answers STOPPED and the stop again unchanged', async () => {
    const driver = await openDriver();
    const computeId = newComputeId();
    await driver.ensure(computeId, computeSpec());
    fake.kubelet(`spg99-${computeId}`, 'pod-running-not-ready.json');
    await until(() => driver.describe(computeId).state === ComputeState.COMPUTE_STATE_STARTING, 'STARTING');

    const { compute, finalLsn } = await driver.stop(computeId, { kill: false, graceMs: 5000 });
    expect(compute).to.include({ state: ComputeState.COMPUTE_STATE_STOPPED, reason: 'stopped by request' });
    expect(finalLsn).to.equal(0n);
    const [deleted] = fake.requestsOf('DELETE', /\/pods\//);
    expect(deleted.query.get('gracePeriodSeconds')).to.equal('5');
    expect(fake.names('pods')).to.deep.equal([]);
    expect(fake.get('secrets', `spg99-${computeId}`).metadata.annotations).to.include({ 'spg99.dev/state': 'STOPPED', 'spg99.dev/reason': 'stopped by request' });
    const again = await driver.stop(computeId, { kill: true, graceMs: 0 });
    expect(again.compute.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    expect(driver.describe(computeId).reason).to.equal('stopped by request');
    expect(fake.requestsOf('DELETE', /\/pods\//)).to.have.length(1);

    const killedId = newComputeId();
    await driver.ensure(killedId, computeSpec());
    fake.kubelet(`spg99-${killedId}`, 'pod-running-ready.json');
    await until(() => driver.describe(killedId).state === ComputeState.COMPUTE_STATE_RUNNING, 'RUNNING');
    const killed = await driver.stop(killedId, { kill: true, graceMs: 30_000 });
    expect(killed.compute).to.include({ state: ComputeState.COMPUTE_STATE_STOPPED, reason: 'killed by request' });
    expect(fake.requestsOf('DELETE', new RegExp(`/pods/spg99-${killedId}$`))[0].query.get('gracePeriodSeconds')).to.equal('0');
  });

  it('asks a running agent for a clean stop and its final LSN before deleting the pod', async () => {
    const agentPort = await freePort();
    const stopCalls: boolean[] = [];
    const agent = createServer();
    const implementation: Record<string, unknown> = {};
    for (const method of Object.keys(ComputeServiceDefinition.methods)) {
      implementation[method] = async () => {
        throw new ServerError(Status.UNIMPLEMENTED, `${method} is not part of this test`);
      };
    }
    implementation.stop = async (request: { checkpoint: boolean }) => {
      stopCalls.push(request.checkpoint);
      return { finalLsn: 0x16b3748n };
    };
    agent.add(ComputeServiceDefinition, implementation as never);
    await agent.listen(`127.0.0.1:${agentPort}`);
    agents.push(agent);

    const driver = await openDriver({ ports: { agent: agentPort } });
    const computeId = newComputeId();
    await driver.ensure(computeId, computeSpec());
    fake.kubelet(`spg99-${computeId}`, 'pod-running-ready.json', (status) => {
      status.podIP = '127.0.0.1';
    });
    await until(() => driver.describe(computeId).state === ComputeState.COMPUTE_STATE_RUNNING, 'RUNNING');
    const outcome = await driver.stop(computeId, { kill: false, graceMs: 20_000 });
    expect(stopCalls).to.deep.equal([true]);
    expect(outcome.finalLsn).to.equal(0x16b3748n);
    expect(outcome.compute.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    const grace = Number(fake.requestsOf('DELETE', /\/pods\//)[0].query.get('gracePeriodSeconds'));
    expect(grace).to.be.within(19, 20);
  });

  it('force-deletes a pod whose node does not confirm the deletion within the grace period', async () => {
    const driver = await openDriver({ stopSlackMs: 100 });
    const computeId = newComputeId();
    await driver.ensure(computeId, computeSpec());
    fake.holdDeletes = true;
    const { compute } = await driver.stop(computeId, { kill: false, graceMs: 1000 });
    expect(compute.state).to.equal(ComputeState.COMPUTE_STATE_STOPPED);
    const graces = fake.requestsOf('DELETE', /\/pods\//).map((request) => request.query.get('gracePeriodSeconds'));
    expect(graces).to.deep.equal(['1', '0']);
  });

  it('answers NOT_FOUND for a stop or describe of an unknown compute', async () => {
    const driver = await openDriver();
    const computeId = newComputeId();
    const error = await rejection(driver.stop(computeId, { kill: false, graceMs: 1000 }));
    expect(error.code).to.equal(Status.NOT_FOUND);
    expect(error.details).to.match(new RegExp(`compute ${computeId} is not known to this provisioner \\(no Secret spg99-${computeId} in namespace spg99`));
    expect(fake.requestsOf('GET', new RegExp(`/secrets/spg99-${computeId}$`))).to.have.length(1);
    expect(thrown(() => driver.describe(computeId)).code).to.equal(Status.NOT_FOUND);
  });

  it('finds the computes of an earlier provisioner in the API server, running or half-stopped', async () => {
    fake.seed('secrets', fixture('secret-record.json'));
    fake.seed('pods', fixture('pod-running-ready.json'));
    const driver = await openDriver();
    const view = driver.describe(RECORDED_COMPUTE);
    expect(view).to.include({ state: ComputeState.COMPUTE_STATE_RUNNING, restartCount: 1, postgresAddress: '10.244.2.17:5432', reason: 'Postgres accepts connections (after restart 1)' });
    expect(view.spec).to.deep.equal(RECORDED_SPEC);
    expect(driver.list('ep-7d1e0c4b9a8f4e2d8c6b5a4f3e2d1c0b').map((compute) => compute.computeId)).to.deep.equal([RECORDED_COMPUTE]);
    expect(driver.list(`ep-${hex32()}`)).to.deep.equal([]);
    expect(fake.requestsOf('POST', /\/pods$/)).to.have.length(0);

    // A driver restarted in the middle of a stop finishes it.
    const computeId = newComputeId();
    const first = await openDriver();
    await first.ensure(computeId, computeSpec());
    await first.close();
    // The API server fails every delete of this driver: it records the stop, but cannot see it through.
    fake.fail('DELETE', /\/pods\//, 503, 'status-503.json', 1_000);
    const halfStopped = await openDriver();
    const error = await rejection(halfStopped.stop(computeId, { kill: false, graceMs: 1000 }));
    expect(error.code).to.equal(Status.UNAVAILABLE);
    expect(error.details).to.match(/the Kubernetes API server answered 503 when the provisioner tried to delete pod spg99-cp-\w+ \(the server is currently unable to handle the request\); retry/);
    await halfStopped.close();
    fake.clearFailures();
    expect(fake.get('secrets', `spg99-${computeId}`).metadata.annotations['spg99.dev/stop-requested']).to.equal('graceful');
    const next = await openDriver();
    await until(() => next.describe(computeId).state === ComputeState.COMPUTE_STATE_STOPPED, 'the stop finished by the next driver');
    expect(fake.get('pods', `spg99-${computeId}`)).to.equal(undefined);
  });

  it('turns API errors into messages that say what to do', async () => {
    const driver = await openDriver();

    fake.fail('POST', /\/pods$/, 403, 'status-403.json');
    const computeId = newComputeId();
    const forbidden = await rejection(driver.ensure(computeId, computeSpec()));
    expect(forbidden.code).to.equal(Status.FAILED_PRECONDITION);
    expect(forbidden.details).to.match(/^the provisioner is not allowed to create pods in namespace spg99 \(Kubernetes said: pods is forbidden: User "system:serviceaccount:spg99:spg99-provisioner"/);
    expect(forbidden.details).to.match(/grant its service account the Role of docs\/kubernetes\.md/);
    expect(driver.describe(computeId)).to.include({ state: ComputeState.COMPUTE_STATE_FAILED });
    expect(driver.describe(computeId).reason).to.match(/^could not create the pod: the provisioner is not allowed to create pods/);

    fake.fail('POST', /\/pods$/, 403, 'status-403-quota.json');
    const full = await rejection(driver.ensure(newComputeId(), computeSpec()));
    expect(full.code).to.equal(Status.RESOURCE_EXHAUSTED);
    expect(full.details).to.match(/^namespace spg99 has no room for this compute \(.*exceeded quota: compute-quota.*\): stop a compute, choose a smaller profile or raise the namespace's ResourceQuota$/);

    fake.fail('GET', /\/pods$/, 403, 'status-403-list.json');
    const cannotList = await rejection(openDriver());
    expect(cannotList.code).to.equal(Status.FAILED_PRECONDITION);
    expect(cannotList.details).to.match(/^the provisioner is not allowed to list pods in namespace spg99/);

    const closedPort = await freePort();
    const unreachable = new KubeConfig();
    unreachable.loadFromOptions({
      clusters: [{ name: 'gone', server: `http://127.0.0.1:${closedPort}`, skipTLSVerify: true }],
      users: [{ name: 'provisioner', token: 'recorded-token' }],
      contexts: [{ name: 'gone', cluster: 'gone', user: 'provisioner' }],
      currentContext: 'gone',
    });
    const down = await rejection(openDriver({ kubeConfig: unreachable }));
    expect(down.code).to.equal(Status.UNAVAILABLE);
    expect(down.details).to.match(
      new RegExp(`^cannot reach the Kubernetes API server at http://127\\.0\\.0\\.1:${closedPort} to list (pods|secrets) \\(ECONNREFUSED\\): check --kubeconfig and that the API server is up; retry$`),
    );
  });

  it('forgets a stopped compute after the retention period, deleting its record', async () => {
    const driver = await openDriver({ retainStoppedMs: 50 });
    const computeId = newComputeId();
    await driver.ensure(computeId, computeSpec());
    await driver.stop(computeId, { kill: true, graceMs: 0 });
    await until(() => driver.list().length === 0, 'the compute forgotten');
    expect(thrown(() => driver.describe(computeId)).code).to.equal(Status.NOT_FOUND);
    expect(fake.names('secrets')).to.deep.equal([]);
  });
});

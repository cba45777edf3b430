/**
 * The `kubernetes` driver: each compute is a Pod running the agent, in one namespace, created through the API
 * server with `@kubernetes/client-node`. This is how computes run beyond one machine (docs/kubernetes.md).
 *
 * State lives in the API server, not in this process: a compute is its record Secret and its pod
 * (kubernetes-objects.ts), and the driver mirrors them through list+watch (informers). A restarted provisioner
 * lists them again and carries on: it finds running computes, finishes stops that were under way and restarts
 * agents that died meanwhile. `describe` and `list` answer from that mirror, so they cost the API server nothing.
 *
 * Pods run with `restartPolicy: Never` and the driver decides restarts, as the process driver does: an agent that
 * ends unexpectedly gets a new pod with the same spec and term, at most `maxRestarts` times with a doubling delay,
 * unless it was fenced. A restart with the same term succeeds only while the term has written nothing (see
 * `restart_count` in provisioner.proto): otherwise the agent refuses it and the compute ends FAILED.
 *
 * Readiness is the pod's: RUNNING once the agent's container is ready (its gRPC readiness probe). An incarnation
 * ends when its container terminates (exit code, OOMKilled, the tail of the agent's log as termination message), its
 * pod fails (evicted) or vanishes, or it is not ready within the start timeout (unschedulable, image not pullable,
 * an agent whose start failed).
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type Informer,
  type KubernetesObject,
  type V1Pod,
  type V1Secret,
} from '@kubernetes/client-node';
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { ConfigError } from '../lib/config.js';
import { createSpgClient, openChannel } from '../lib/grpc/client.js';
import { failedPrecondition, notFound, ServerError, Status } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import { formatLsn } from '../lib/lsn.js';
import { counter, gauge } from '../lib/metrics.js';
import {
  computesGauge,
  restartsTotal,
  ComputeState,
  sameSpec,
  specDifferences,
  type ComputeCredentials,
  type ComputeDriver,
  type ComputeSpec,
  type ComputeView,
  type StopOptions,
  type StopOutcome,
} from './driver.js';
import {
  AGENT_CONTAINER,
  ANNOTATION,
  COMPUTE_SELECTOR,
  computePod,
  CREDENTIAL_FILE,
  DEFAULT_PORTS,
  endedAnnotations,
  LABEL,
  observePod,
  podIncarnation,
  podName,
  readRecord,
  recordName,
  recordSecret,
  summarizeTerminationMessage,
  toDate,
  type ComputePorts,
  type ComputeRecord,
  type PodSettings,
} from './kubernetes-objects.js';

const apiErrorsTotal = counter('spg99_provisioner_kubernetes_api_errors_total', 'Kubernetes API calls that failed, by HTTP status (0: no answer)', ['status']);
const watchConnected = gauge('spg99_provisioner_kubernetes_watch_connected', 'Whether the watch of compute pods and records is connected (1) or being re-established (0)', ['resource']);

/** Options of the Kubernetes driver. */
export interface KubernetesDriverOptions {
  /** How to reach the API server (see {@link loadKubeConfig}). */
  kubeConfig: KubeConfig;
  /** The namespace of the computes' pods and record Secrets. */
  namespace: string;
  /** The compute image: Node 20, the built dist/ and the Postgres binaries (deploy/compute.Dockerfile). */
  image: string;
  log: Logger;
  /** The agent's entry point inside the image (default /app/dist/cmd/agent.js, as deploy/compute.Dockerfile builds). */
  agentScript?: string;
  /** The ports inside compute pods (default Postgres 5432, agent 7900, metrics 9187). */
  ports?: Partial<ComputePorts>;
  /** The uid/gid the agent runs as (default 10001, the image's `spg99` user). */
  runAsUser?: number;
  /** An image pull secret in the namespace, when the registry needs one. */
  imagePullSecret?: string;
  /** A service account for compute pods (default: the namespace's default, with no token mounted). */
  serviceAccountName?: string;
  /** Extra environment of the agent. */
  env?: Record<string, string>;
  /** Restarts of an agent that ended unexpectedly before the compute is FAILED (default 3). */
  maxRestarts?: number;
  /** The first restart's delay; doubled for each further one (default 500 ms). */
  restartBackoffMs?: number;
  /** A pod not ready this long after its creation counts as a failed start (default 180 s). */
  startTimeoutMs?: number;
  /** Stopped and failed computes stay describable this long; then their Secret and pods are deleted (default 1 h). */
  retainStoppedMs?: number;
  /** At most this many computes run at once; more answer RESOURCE_EXHAUSTED (default 64). */
  maxComputes?: number;
  /** The grace period of pods deleted without one, and of stops the driver resumes after a restart (default 30 s). */
  defaultGraceMs?: number;
  /** How long past a stop's grace period to wait for the kubelet before force-deleting the pod (default 30 s). */
  stopSlackMs?: number;
  /** An API call without an answer after this long fails UNAVAILABLE (default 30 s). */
  requestTimeoutMs?: number;
  /** How often every compute is checked for start timeouts and retention (default 2 s). */
  sweepIntervalMs?: number;
  /** The computes' identity: a token in the record Secret, renewed for each incarnation; absent: pods get none. */
  credentials?: ComputeCredentials;
}

/** An API server error, mapped to the gRPC status the Provisioner API answers; `httpStatus` 0 when there was no answer. */
export class KubernetesApiError extends ServerError {
  constructor(
    code: Status,
    message: string,
    readonly httpStatus: number,
  ) {
    super(code, message);
  }
}

/** What the driver keeps in memory only: work under way, which a restarted provisioner re-derives from the API. */
interface LocalState {
  stopping: Promise<StopOutcome> | null;
  /** Whether the stop under way is a kill. */
  killing: boolean;
  restart: { timer: NodeJS.Timeout; at: number; incarnation: number; cause: string } | null;
  /** Pods seen in this compute's life: one that disappears without a stop was deleted by someone else. */
  seenPods: Set<string>;
}

/**
 * Builds the API client configuration: `kubeconfig` when given; else the pod's service account when running in a
 * cluster; else the user's default (KUBECONFIG, ~/.kube/config). Throws ConfigError when there is none.
 */
export function loadKubeConfig(kubeconfig?: string): KubeConfig {
  const config = new KubeConfig();
  try {
    if (kubeconfig) config.loadFromFile(kubeconfig);
    else if (process.env.KUBERNETES_SERVICE_HOST) config.loadFromCluster();
    else if (process.env.KUBECONFIG || fs.existsSync(path.join(os.homedir(), '.kube', 'config'))) config.loadFromDefault();
    else throw new ConfigError('no Kubernetes configuration: give --kubeconfig (or KUBECONFIG), or run the provisioner in a pod with a service account');
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw new ConfigError(`cannot load the Kubernetes configuration${kubeconfig ? ` from --kubeconfig ${kubeconfig}` : ''}: ${(error as Error).message}`);
  }
  if (!config.getCurrentCluster()) {
    throw new ConfigError(`the Kubernetes configuration${kubeconfig ? ` ${kubeconfig}` : ''} has no current cluster: set its current-context`);
  }
  return config;
}

function statusOfBody(body: unknown): { message: string; reason: string; kind: string } {
  let parsed: unknown = body;
  if (typeof body === 'string') {
    try {
      parsed = JSON.parse(body);
    } catch {
      return { message: body.trim(), reason: '', kind: '' };
    }
  }
  const status = (parsed ?? {}) as { message?: unknown; reason?: unknown; details?: { kind?: unknown } };
  return {
    message: typeof status.message === 'string' ? status.message : '',
    reason: typeof status.reason === 'string' ? status.reason : '',
    kind: typeof status.details?.kind === 'string' ? status.details.kind : '',
  };
}

const NETWORK_ERROR_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EPIPE', 'ERR_STREAM_PREMATURE_CLOSE']);

class RequestTimeout extends Error {
  override name = 'RequestTimeout';
}

/**
 * Maps an error of an API call to what the Provisioner API answers: a missing permission, a full quota or a bad
 * manifest is FAILED_PRECONDITION or RESOURCE_EXHAUSTED with what to change; an API server that does not answer, or
 * answers 429/5xx, is UNAVAILABLE (retry). `action` says what the driver was doing ("create pod spg99-cp-…").
 */
export function kubernetesError(error: unknown, action: string, namespace: string, server: string): unknown {
  if (error instanceof KubernetesApiError) return error;
  if (error instanceof ApiException) {
    const code = error.code;
    const status = statusOfBody(error.body);
    const said = status.message || `HTTP ${code}`;
    if (code === 401) {
      return new KubernetesApiError(
        Status.FAILED_PRECONDITION,
        `the Kubernetes API server at ${server} refused the provisioner's credentials (401) when it tried to ${action}: ` +
          'check --kubeconfig, or the service account token when the provisioner runs in a pod',
        code,
      );
    }
    if (code === 403 && /exceeded quota/i.test(said)) {
      return new KubernetesApiError(
        Status.RESOURCE_EXHAUSTED,
        `namespace ${namespace} has no room for this compute (${said}): stop a compute, choose a smaller profile or raise the namespace's ResourceQuota`,
        code,
      );
    }
    if (code === 403) {
      const denied = /cannot (\w+) resource "([^"]+)"/.exec(said);
      const permission = denied ? `${denied[1]} ${denied[2]}` : action;
      return new KubernetesApiError(
        Status.FAILED_PRECONDITION,
        `the provisioner is not allowed to ${permission} in namespace ${namespace} (Kubernetes said: ${said}): grant its service account ` +
          'the Role of docs/kubernetes.md (pods: get, list, watch, create, delete; pods/log: get; secrets: get, list, watch, create, patch, delete)',
        code,
      );
    }
    if (code === 404 && status.kind === 'namespaces') {
      return new KubernetesApiError(Status.FAILED_PRECONDITION, `namespace ${namespace} does not exist: create it (kubectl create namespace ${namespace}) or set --kube-namespace`, code);
    }
    if (code === 404) return new KubernetesApiError(Status.NOT_FOUND, `${said} (when the provisioner tried to ${action})`, code);
    if (code === 409) return new KubernetesApiError(Status.ALREADY_EXISTS, `${said} (when the provisioner tried to ${action})`, code);
    if (code === 429 || code >= 500) {
      return new KubernetesApiError(Status.UNAVAILABLE, `the Kubernetes API server answered ${code} when the provisioner tried to ${action} (${said}); retry`, code);
    }
    return new KubernetesApiError(
      Status.FAILED_PRECONDITION,
      `Kubernetes refused to ${action} (${code}${status.reason ? ` ${status.reason}` : ''}: ${said}): check --kube-image and the other --kube-* flags`,
      code,
    );
  }
  if (error instanceof RequestTimeout) {
    return new KubernetesApiError(Status.UNAVAILABLE, `the Kubernetes API server at ${server} did not answer in time when the provisioner tried to ${action}; retry`, 0);
  }
  const systemCode = (error as { code?: unknown; cause?: { code?: unknown } })?.code ?? (error as { cause?: { code?: unknown } })?.cause?.code;
  if ((error as Error)?.name === 'FetchError' || (typeof systemCode === 'string' && NETWORK_ERROR_CODES.has(systemCode))) {
    return new KubernetesApiError(
      Status.UNAVAILABLE,
      `cannot reach the Kubernetes API server at ${server} to ${action} (${typeof systemCode === 'string' ? systemCode : (error as Error).message}): ` +
        'check --kubeconfig and that the API server is up; retry',
      0,
    );
  }
  return error;
}

/** The text of an error: a ServerError's details without the status prefix of its message. */
function messageOf(error: unknown): string {
  if (error instanceof ServerError) return error.details;
  return error instanceof Error ? error.message : String(error);
}

function formatDuration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

function httpStatusOf(error: unknown): number {
  return error instanceof KubernetesApiError ? error.httpStatus : -1;
}

/** Whether `candidate` is not older than `current` (resource versions of one object are increasing integers in etcd). */
function notOlder(candidate: KubernetesObject, current: KubernetesObject | undefined): boolean {
  const next = Number(candidate.metadata?.resourceVersion);
  const previous = Number(current?.metadata?.resourceVersion);
  if (!current || !Number.isInteger(next) || !Number.isInteger(previous)) return true;
  return next >= previous;
}

const FINAL_STATES: ReadonlySet<ComputeState> = new Set([ComputeState.COMPUTE_STATE_STOPPED, ComputeState.COMPUTE_STATE_FAILED]);

/** Runs computes as Kubernetes pods. Create it with {@link KubernetesDriver.open}. */
export class KubernetesDriver implements ComputeDriver {
  readonly name = 'kubernetes';
  private readonly core: CoreV1Api;
  private readonly namespace: string;
  private readonly server: string;
  private readonly settings: PodSettings;
  private readonly maxRestarts: number;
  private readonly restartBackoffMs: number;
  private readonly startTimeoutMs: number;
  private readonly retainStoppedMs: number;
  private readonly maxComputes: number;
  private readonly defaultGraceMs: number;
  private readonly stopSlackMs: number;
  private readonly requestTimeoutMs: number;
  private readonly sweepIntervalMs: number;
  /** Record Secrets by compute id, as last seen. */
  private readonly records = new Map<string, ComputeRecord & { secret: V1Secret }>();
  /** Compute pods by name, as last seen. */
  private readonly pods = new Map<string, V1Pod>();
  private readonly local = new Map<string, LocalState>();
  private readonly queues = new Map<string, Promise<void>>();
  private readonly kicked = new Set<string>();
  private readonly changes = new EventEmitter();
  private readonly informers: Array<Informer<KubernetesObject>> = [];
  private readonly closing = new AbortController();
  private sweepTimer: NodeJS.Timeout | null = null;
  private closed = false;

  private constructor(private readonly options: KubernetesDriverOptions) {
    this.namespace = options.namespace;
    this.core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.server = options.kubeConfig.getCurrentCluster()?.server ?? '(no cluster)';
    this.defaultGraceMs = options.defaultGraceMs ?? 30_000;
    this.settings = {
      namespace: options.namespace,
      image: options.image,
      agentScript: options.agentScript ?? '/app/dist/cmd/agent.js',
      ports: { ...DEFAULT_PORTS, ...options.ports },
      runAsUser: options.runAsUser ?? 10001,
      terminationGraceSeconds: Math.ceil(this.defaultGraceMs / 1000),
      env: { ...(process.env.SPG99_LOG_LEVEL ? { SPG99_LOG_LEVEL: process.env.SPG99_LOG_LEVEL } : {}), ...options.env },
      imagePullSecret: options.imagePullSecret,
      serviceAccountName: options.serviceAccountName,
      credentials: options.credentials !== undefined,
    };
    this.maxRestarts = options.maxRestarts ?? 3;
    this.restartBackoffMs = options.restartBackoffMs ?? 500;
    this.startTimeoutMs = options.startTimeoutMs ?? 180_000;
    this.retainStoppedMs = options.retainStoppedMs ?? 3_600_000;
    this.maxComputes = options.maxComputes ?? 64;
    this.stopSlackMs = options.stopSlackMs ?? 30_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    this.sweepIntervalMs = options.sweepIntervalMs ?? 2_000;
    this.changes.setMaxListeners(0);
  }

  /**
   * Creates the driver and loads every compute of the namespace from the API server before answering: a
   * provisioner that cannot list pods and Secrets (no permission, no API server) fails at start, not at its first
   * request.
   */
  static async open(options: KubernetesDriverOptions): Promise<KubernetesDriver> {
    if (!options.image) throw new Error('the kubernetes driver needs the compute image (--kube-image)');
    const driver = new KubernetesDriver(options);
    await driver.start();
    return driver;
  }

  private async start(): Promise<void> {
    const { namespace } = this;
    const [pods, secrets] = await Promise.all([
      this.api('list pods', () => this.core.listNamespacedPod({ namespace, labelSelector: COMPUTE_SELECTOR })),
      this.api('list secrets', () => this.core.listNamespacedSecret({ namespace, labelSelector: COMPUTE_SELECTOR })),
    ]);
    for (const secret of secrets.items) this.onSecret(secret);
    for (const pod of pods.items) this.onPod(pod);
    const podInformer = makeInformer<V1Pod>(
      this.options.kubeConfig,
      `/api/v1/namespaces/${namespace}/pods`,
      () => this.core.listNamespacedPod({ namespace, labelSelector: COMPUTE_SELECTOR }),
      COMPUTE_SELECTOR,
    );
    podInformer.on('add', (pod) => this.onPod(pod));
    podInformer.on('update', (pod) => this.onPod(pod));
    podInformer.on('delete', (pod) => this.onPodDeleted(pod));
    const secretInformer = makeInformer<V1Secret>(
      this.options.kubeConfig,
      `/api/v1/namespaces/${namespace}/secrets`,
      () => this.core.listNamespacedSecret({ namespace, labelSelector: COMPUTE_SELECTOR }),
      COMPUTE_SELECTOR,
    );
    secretInformer.on('add', (secret) => this.onSecret(secret));
    secretInformer.on('update', (secret) => this.onSecret(secret));
    secretInformer.on('delete', (secret) => this.onSecretDeleted(secret));
    this.watchWithRetries('pods', podInformer as unknown as Informer<KubernetesObject>);
    this.watchWithRetries('secrets', secretInformer as unknown as Informer<KubernetesObject>);
    await Promise.all(this.informers.map((informer) => informer.start()));
    this.sweepTimer = setInterval(() => this.sweep(), this.sweepIntervalMs);
    this.sweepTimer.unref();
    this.sweep();
    this.options.log.info({ namespace, server: this.server, computes: this.records.size, pods: this.pods.size }, 'kubernetes driver ready');
  }

  /** An informer stops at an error (a lost connection, a 403); it is started again with a doubling delay. */
  private watchWithRetries(resource: string, informer: Informer<KubernetesObject>): void {
    let failures = 0;
    informer.on('connect', () => watchConnected.set({ resource }, 1));
    for (const verb of ['add', 'update', 'delete'] as const) informer.on(verb, () => (failures = 0));
    informer.on('error', (error: unknown) => {
      watchConnected.set({ resource }, 0);
      if (this.closed) return;
      const delayMs = Math.min(30_000, 500 * 2 ** failures);
      failures += 1;
      const mapped = kubernetesError(error, `watch ${resource}`, this.namespace, this.server);
      this.options.log.warn({ resource, delayMs, error: messageOf(mapped) }, 'the watch of compute objects failed; describing from what was last seen until it is back');
      setTimeout(() => {
        if (!this.closed) void informer.start();
      }, delayMs).unref();
    });
    this.informers.push(informer);
  }

  async ensure(computeId: string, spec: ComputeSpec): Promise<ComputeView> {
    this.assertOpen();
    return this.serially(computeId, async () => {
      // The mirror decides; a record it does not show yet answers 409 below.
      const existing = this.records.get(computeId);
      if (existing) {
        this.assertSameSpec(computeId, existing.spec, spec);
        return this.view(computeId);
      }
      const active = [...this.records.keys()].filter((id) => !FINAL_STATES.has(this.view(id).state)).length;
      if (active >= this.maxComputes) {
        throw new ServerError(Status.RESOURCE_EXHAUSTED, `this provisioner already runs ${active} computes (its limit, --max-computes); stop one or use another provisioner`);
      }
      let secret: V1Secret;
      try {
        secret = await this.api(`create secret ${recordName(computeId)}`, () =>
          this.core.createNamespacedSecret({
            namespace: this.namespace,
            body: recordSecret(computeId, spec, this.namespace, this.options.credentials && {
              token: this.options.credentials.issue({ timelineId: spec.timelineId, endpointId: spec.endpointId, computeId }),
              trust: this.options.credentials.trustDocument,
            }),
          }),
        );
      } catch (error) {
        if (httpStatusOf(error) !== 409) throw error;
        // Created meanwhile (another provisioner, or a watch that lags): the same spec is a retry.
        const found = await this.fetchRecord(computeId);
        if (!found) throw error;
        this.assertSameSpec(computeId, found.spec, spec);
        return this.view(computeId);
      }
      this.onSecret(secret);
      const record = this.records.get(computeId)!;
      try {
        await this.createPod(record);
      } catch (error) {
        // Retryable: the compute stays PENDING and the sweep creates its pod once the API server answers.
        if (error instanceof ServerError && error.code === Status.UNAVAILABLE) throw error;
        await this.markFailed(record, `could not create the pod: ${messageOf(error)}`).catch(() => undefined);
        throw error;
      }
      this.options.log.info({ computeId, pod: podName(computeId, 0), term: String(spec.term) }, 'compute pod created');
      return this.view(computeId);
    });
  }

  async stop(computeId: string, options: StopOptions): Promise<StopOutcome> {
    const state = this.localState(computeId);
    if (state.stopping) return state.stopping;
    const record = this.records.get(computeId) ?? (await this.fetchRecord(computeId));
    if (!record) throw this.unknown(computeId);
    if (record.ended) return { compute: this.view(computeId), finalLsn: 0n };
    if (state.restart) clearTimeout(state.restart.timer);
    state.restart = null;
    const stopping = this.serially(computeId, () => this.stopCompute(computeId, options));
    state.stopping = stopping;
    state.killing = options.kill;
    this.changes.emit('change');
    try {
      return await stopping;
    } finally {
      state.stopping = null;
    }
  }

  describe(computeId: string): ComputeView {
    if (!this.records.has(computeId)) throw this.unknown(computeId);
    return this.view(computeId);
  }

  list(endpointId?: string): ComputeView[] {
    return [...this.records.values()]
      .filter((record) => !endpointId || record.spec.endpointId === endpointId)
      .map((record) => this.view(record.computeId));
  }

  /**
   * Detaches from the API server and leaves every compute running: pods do not depend on this process, and the next
   * provisioner finds them (stopping them all would turn every provisioner upgrade into an outage). Stops under way
   * finish in Kubernetes; the next provisioner records them as STOPPED.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const state of this.local.values()) {
      if (state.restart) clearTimeout(state.restart.timer);
      state.restart = null;
    }
    await Promise.all(this.informers.map((informer) => informer.stop()));
    await Promise.allSettled([...this.queues.values()]);
  }

  private assertOpen(): void {
    if (this.closed) throw new ServerError(Status.UNAVAILABLE, 'the provisioner is shutting down; retry on another one');
  }

  private assertSameSpec(computeId: string, existing: ComputeSpec, spec: ComputeSpec): void {
    if (!sameSpec(existing, spec)) {
      throw failedPrecondition(
        `compute ${computeId} exists with another spec (differs in ${specDifferences(existing, spec).join(', ')}): ` +
          'a compute is immutable; choose a new compute id for a new spec',
      );
    }
  }

  private unknown(computeId: string): ServerError {
    return notFound(
      `compute ${computeId} is not known to this provisioner (no Secret ${recordName(computeId)} in namespace ${this.namespace}: ` +
        'never ensured here, or stopped long enough ago to be forgotten)',
    );
  }

  /** An API call with a timeout, its errors mapped (kubernetesError). */
  private async api<T>(action: string, call: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RequestTimeout(action)), this.requestTimeoutMs);
    });
    try {
      return await Promise.race([call(), timeout]);
    } catch (error) {
      const mapped = kubernetesError(error, action, this.namespace, this.server);
      const status = error instanceof ApiException ? String(error.code) : mapped instanceof KubernetesApiError ? String(mapped.httpStatus) : 'other';
      apiErrorsTotal.inc({ status });
      throw mapped;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads a record Secret from the API server (the mirror may lag); undefined when there is none. */
  private async fetchRecord(computeId: string): Promise<ComputeRecord | undefined> {
    try {
      const secret = await this.api(`get secret ${recordName(computeId)}`, () =>
        this.core.readNamespacedSecret({ name: recordName(computeId), namespace: this.namespace }),
      );
      this.onSecret(secret);
      return this.records.get(computeId);
    } catch (error) {
      if (httpStatusOf(error) === 404) return undefined;
      throw error;
    }
  }

  private localState(computeId: string): LocalState {
    let state = this.local.get(computeId);
    if (!state) {
      state = { stopping: null, killing: false, restart: null, seenPods: new Set() };
      this.local.set(computeId, state);
    }
    return state;
  }

  /** Runs `task` after every earlier task of the same compute: creations, restarts, stops and checks never interleave. */
  private serially<T>(computeId: string, task: () => Promise<T>): Promise<T> {
    const previous = this.queues.get(computeId) ?? Promise.resolve();
    const run = previous.then(task);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(computeId, settled);
    void settled.then(() => {
      if (this.queues.get(computeId) === settled) this.queues.delete(computeId);
    });
    return run;
  }

  // ---- the mirror of the API server ----

  private onSecret(secret: V1Secret): void {
    let record: ComputeRecord;
    try {
      record = readRecord(secret);
    } catch (error) {
      this.options.log.warn({ secret: secret.metadata?.name, error: (error as Error).message }, 'ignoring a Secret with the compute label that is not a compute record');
      return;
    }
    const current = this.records.get(record.computeId);
    if (current && !notOlder(secret, current.secret)) return;
    this.records.set(record.computeId, { ...record, secret });
    this.changed(record.computeId);
  }

  private onSecretDeleted(secret: V1Secret): void {
    const computeId = secret.metadata?.labels?.[LABEL.computeId];
    if (!computeId || this.records.get(computeId)?.secret.metadata?.uid !== secret.metadata?.uid) return;
    this.records.delete(computeId);
    this.local.delete(computeId);
    this.changed(computeId);
  }

  private onPod(pod: V1Pod): void {
    const name = pod.metadata?.name;
    const computeId = pod.metadata?.labels?.[LABEL.computeId];
    if (!name || !computeId) return;
    if (!notOlder(pod, this.pods.get(name))) return;
    this.pods.set(name, pod);
    this.localState(computeId).seenPods.add(name);
    this.changed(computeId);
  }

  private onPodDeleted(pod: V1Pod): void {
    const name = pod.metadata?.name;
    const computeId = pod.metadata?.labels?.[LABEL.computeId];
    if (!name || this.pods.get(name)?.metadata?.uid !== pod.metadata?.uid) return;
    this.pods.delete(name);
    if (computeId) this.changed(computeId);
  }

  private changed(computeId: string): void {
    this.changes.emit('change');
    this.kick(computeId);
  }

  /** Resolves once `condition` holds (checked at every change of the mirror), or with false after `timeoutMs`. */
  private waitFor(condition: () => boolean, timeoutMs: number): Promise<boolean> {
    if (condition()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const finish = (result: boolean) => {
        clearTimeout(timer);
        this.changes.off('change', check);
        this.closing.signal.removeEventListener('abort', aborted);
        resolve(result);
      };
      const check = () => {
        if (condition()) finish(true);
      };
      const aborted = () => finish(condition());
      const timer = setTimeout(() => finish(condition()), Math.max(0, timeoutMs));
      this.changes.on('change', check);
      this.closing.signal.addEventListener('abort', aborted);
    });
  }

  private podsOf(computeId: string): V1Pod[] {
    return [...this.pods.values()].filter((pod) => pod.metadata?.labels?.[LABEL.computeId] === computeId);
  }

  private currentPod(record: ComputeRecord): V1Pod | undefined {
    return this.pods.get(podName(record.computeId, record.incarnation));
  }

  // ---- views ----

  private restartsLeft(record: ComputeRecord): boolean {
    return record.incarnation < this.maxRestarts && !this.closed;
  }

  private view(computeId: string): ComputeView {
    const record = this.records.get(computeId);
    if (!record) throw this.unknown(computeId);
    const state = this.localState(computeId);
    const pod = this.currentPod(record);
    const observed = pod ? observePod(pod) : undefined;
    const base = {
      computeId,
      spec: record.spec,
      driver: this.name,
      startedAt: observed?.startedAt,
      restartCount: record.incarnation,
      postgresAddress: '',
      agentAddress: '',
    };
    const restarted = record.incarnation > 0 ? `restart ${record.incarnation}: ` : '';
    if (record.ended) return { ...base, state: record.ended.state, reason: record.ended.reason, stateChangedAt: record.ended.at };
    if (state.stopping || record.stopRequested) {
      const kill = record.stopRequested ? record.stopRequested === 'kill' : state.killing;
      return { ...base, state: ComputeState.COMPUTE_STATE_STOPPING, reason: kill ? 'kill requested' : 'stop requested', stateChangedAt: record.stopRequestedAt ?? new Date() };
    }
    if (state.restart) {
      const inMs = Math.max(0, state.restart.at - Date.now());
      return {
        ...base,
        state: ComputeState.COMPUTE_STATE_STARTING,
        reason: `restart ${state.restart.incarnation} of ${this.maxRestarts} in ${inMs} ms: ${state.restart.cause}`,
        stateChangedAt: observed?.since ?? new Date(),
      };
    }
    if (!pod || !observed) {
      return { ...base, state: ComputeState.COMPUTE_STATE_PENDING, reason: `${restarted}creating the pod`, stateChangedAt: record.createdAt };
    }
    const since = observed.since ?? toDate(pod.metadata?.creationTimestamp) ?? record.createdAt;
    if (observed.ended) {
      // The sweep decides at once; the view already says what it will be.
      if (observed.ended.fenced || !this.restartsLeft(record)) {
        return { ...base, state: ComputeState.COMPUTE_STATE_FAILED, reason: this.finalReason(record, observed.ended), stateChangedAt: since };
      }
      return { ...base, state: ComputeState.COMPUTE_STATE_STARTING, reason: `restart ${record.incarnation + 1} of ${this.maxRestarts} pending: ${observed.ended.cause}`, stateChangedAt: since };
    }
    const { ports } = this.settings;
    const reachable = observed.podIp && (observed.state === ComputeState.COMPUTE_STATE_STARTING || observed.state === ComputeState.COMPUTE_STATE_RUNNING);
    const reason =
      observed.state === ComputeState.COMPUTE_STATE_RUNNING && record.incarnation > 0
        ? `${observed.reason} (after restart ${record.incarnation})`
        : `${restarted}${observed.reason}`;
    return {
      ...base,
      state: observed.state,
      reason,
      stateChangedAt: since,
      postgresAddress: observed.state === ComputeState.COMPUTE_STATE_RUNNING && observed.podIp ? `${observed.podIp}:${ports.postgres}` : '',
      agentAddress: reachable ? `${observed.podIp}:${ports.agent}` : '',
    };
  }

  private finalReason(record: ComputeRecord, ended: { cause: string; fenced: boolean }): string {
    return ended.fenced ? ended.cause : `${ended.cause}; gave up after ${record.incarnation} restarts`;
  }

  private updateGauge(): void {
    const counts = new Map<string, number>();
    for (const computeId of this.records.keys()) {
      const state = ComputeState[this.view(computeId).state];
      counts.set(state, (counts.get(state) ?? 0) + 1);
    }
    for (const state of Object.values(ComputeState)) {
      if (typeof state === 'string' && state !== 'UNRECOGNIZED') computesGauge.set({ state }, counts.get(state) ?? 0);
    }
  }

  // ---- reconciliation: what the driver does about what it sees ----

  private sweep(): void {
    if (this.closed) return;
    for (const computeId of this.records.keys()) this.kick(computeId);
    this.updateGauge();
  }

  /** Schedules one reconciliation of a compute (many changes in a row cause one). */
  private kick(computeId: string): void {
    if (this.closed || this.kicked.has(computeId)) return;
    this.kicked.add(computeId);
    this.serially(computeId, async () => {
      this.kicked.delete(computeId);
      await this.reconcile(computeId);
    }).catch((error: unknown) => {
      this.options.log.warn({ computeId, error: messageOf(error) }, 'could not reconcile a compute; trying again at the next check');
    });
  }

  private async reconcile(computeId: string): Promise<void> {
    if (this.closed) return;
    const record = this.records.get(computeId);
    const state = this.localState(computeId);
    if (!record) return;
    if (record.ended) {
      if (Date.now() - record.ended.at.getTime() > this.retainStoppedMs) await this.forget(record);
      return;
    }
    if (state.stopping || state.restart) return;
    if (record.stopRequested) {
      // A stop this process did not see through (the provisioner restarted): finish it.
      this.options.log.info({ computeId }, 'finishing a stop that was under way');
      await this.stopCompute(computeId, { kill: record.stopRequested === 'kill', graceMs: this.defaultGraceMs });
      return;
    }
    // Earlier incarnations that are still there (a restart interrupted between its steps).
    for (const pod of this.podsOf(computeId)) {
      const incarnation = podIncarnation(pod);
      if (incarnation !== null && incarnation < record.incarnation) await this.deletePod(pod.metadata!.name!, 0);
    }
    const name = podName(computeId, record.incarnation);
    const pod = this.pods.get(name);
    if (!pod) {
      if (state.seenPods.has(name)) {
        await this.incarnationEnded(record, { cause: `the pod ${name} was deleted without a stop through the provisioner (kubectl delete, a node drain or an eviction)`, fenced: false }, false);
      } else {
        // A compute whose pod was never created or was lost before this process saw it (a restart between steps).
        await this.createPod(record);
      }
      return;
    }
    const observed = observePod(pod);
    if (observed.ended) {
      await this.incarnationEnded(record, observed.ended, false);
      return;
    }
    const created = toDate(pod.metadata?.creationTimestamp)?.getTime() ?? Date.now();
    const notReady = observed.state === ComputeState.COMPUTE_STATE_PENDING || observed.state === ComputeState.COMPUTE_STATE_STARTING;
    if (notReady && Date.now() - created > this.startTimeoutMs) {
      const agentSaid = await this.agentLogCause(name);
      const cause = `not ready within ${formatDuration(this.startTimeoutMs)} (${observed.reason})${agentSaid ? `; the agent said: ${agentSaid.text}` : ''}`;
      await this.incarnationEnded(record, { cause, fenced: agentSaid?.fenced ?? false }, true);
    }
  }

  /** The agent's last words from its log (best effort: needs `get pods/log`), for a start that never got ready. */
  private async agentLogCause(name: string): Promise<{ text: string; fenced: boolean } | undefined> {
    try {
      const text = await this.api(`read the log of pod ${name}`, () =>
        this.core.readNamespacedPodLog({ name, namespace: this.namespace, container: AGENT_CONTAINER, tailLines: 40 }),
      );
      return typeof text === 'string' && text.trim() ? summarizeTerminationMessage(text) : undefined;
    } catch (error) {
      this.options.log.debug({ pod: name, error: messageOf(error) }, 'could not read the agent log');
      return undefined;
    }
  }

  /** The current incarnation ended: restart (same spec and term) or give up, as the process driver does. */
  private async incarnationEnded(record: ComputeRecord, ended: { cause: string; fenced: boolean }, stillRunning: boolean): Promise<void> {
    const { computeId } = record;
    const state = this.localState(computeId);
    const pod = podName(computeId, record.incarnation);
    this.options.log.warn({ computeId, pod, cause: ended.cause, restartCount: record.incarnation }, 'agent ended');
    if (ended.fenced || !this.restartsLeft(record)) {
      // A pod that timed out still holds its node's resources; an ended one stays for `kubectl logs` until forgotten.
      if (stillRunning) await this.deletePod(pod, 0);
      await this.markFailed(record, this.finalReason(record, ended));
      return;
    }
    const delayMs = this.restartBackoffMs * 2 ** record.incarnation;
    const timer = setTimeout(() => {
      this.serially(computeId, () => this.restart(computeId, ended.cause)).catch((error: unknown) => {
        this.options.log.warn({ computeId, error: messageOf(error) }, 'could not restart a compute; trying again at the next check');
      });
    }, delayMs);
    state.restart = { timer, at: Date.now() + delayMs, incarnation: record.incarnation + 1, cause: ended.cause };
    this.changes.emit('change');
  }

  private async restart(computeId: string, cause: string): Promise<void> {
    const state = this.localState(computeId);
    state.restart = null;
    const record = this.records.get(computeId);
    if (!record || record.ended || record.stopRequested || state.stopping || this.closed) return;
    const incarnation = record.incarnation + 1;
    const previous = podName(computeId, record.incarnation);
    const previousPod = this.pods.get(previous);
    if (previousPod && !observePod(previousPod).ended) {
      // Two agents must never run with one term: an agent that may still run (a start that timed out) is stopped
      // first, and without force, so the pod goes only once its kubelet confirms the container is dead.
      await this.deletePod(previous, 1);
      if (!(await this.waitFor(() => !this.pods.has(previous), 1000 + this.stopSlackMs))) {
        await this.markFailed(record, `${cause}; the pod ${previous} did not confirm that its agent stopped, so the same term cannot start again`);
        return;
      }
    }
    // The record before the pod: a provisioner that restarts between these steps creates the new pod and deletes the
    // old one (reconcile).
    // A new incarnation gets a fresh token: the first one may have expired since.
    const credentials = this.options.credentials;
    const data = credentials && {
      [CREDENTIAL_FILE]: Buffer.from(credentials.issue({ timelineId: record.spec.timelineId, endpointId: record.spec.endpointId, computeId })).toString('base64'),
    };
    const secret = await this.patchRecord(computeId, { [ANNOTATION.incarnation]: String(incarnation), [ANNOTATION.lastFailure]: cause.slice(0, 1000) }, data);
    this.onSecret(secret);
    await this.createPod(this.records.get(computeId)!);
    // An ended pod's containers are dead: force is safe, and frees its emptyDir (a copy of the database) at once.
    if (this.pods.has(previous)) await this.deletePod(previous, 0);
    restartsTotal.inc();
    this.options.log.info({ computeId, pod: podName(computeId, incarnation), restartCount: incarnation, cause }, 'compute restarted');
  }

  private async createPod(record: ComputeRecord): Promise<void> {
    const body = computePod(record.computeId, record.spec, record.incarnation, record.uid, this.settings);
    const name = body.metadata!.name!;
    try {
      this.onPod(await this.api(`create pod ${name}`, () => this.core.createNamespacedPod({ namespace: this.namespace, body })));
    } catch (error) {
      if (httpStatusOf(error) !== 409) throw error;
      this.onPod(await this.api(`get pod ${name}`, () => this.core.readNamespacedPod({ name, namespace: this.namespace })));
    }
  }

  /** Deletes a pod; a pod that is gone already is fine. Grace 0 removes it at once (the kubelet kills it after). */
  private async deletePod(name: string, graceSeconds: number): Promise<void> {
    try {
      await this.api(`delete pod ${name}`, () => this.core.deleteNamespacedPod({ name, namespace: this.namespace, gracePeriodSeconds: graceSeconds }));
    } catch (error) {
      if (httpStatusOf(error) !== 404) throw error;
      const pod = this.pods.get(name);
      if (pod) this.onPodDeleted(pod);
    }
  }

  private async patchRecord(computeId: string, annotations: Record<string, string>, data?: Record<string, string>): Promise<V1Secret> {
    return this.api(`patch secret ${recordName(computeId)}`, () =>
      this.core.patchNamespacedSecret(
        { name: recordName(computeId), namespace: this.namespace, body: { metadata: { annotations }, ...(data ? { data } : {}) } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      ),
    );
  }

  private async markFailed(record: ComputeRecord, reason: string): Promise<void> {
    this.onSecret(await this.patchRecord(record.computeId, endedAnnotations('FAILED', reason)));
    this.options.log.warn({ computeId: record.computeId, reason }, 'compute failed');
  }

  /** Deletes a compute's pods and record once it ended long enough ago. */
  private async forget(record: ComputeRecord): Promise<void> {
    for (const pod of this.podsOf(record.computeId)) await this.deletePod(pod.metadata!.name!, 0);
    try {
      await this.api(`delete secret ${recordName(record.computeId)}`, () =>
        this.core.deleteNamespacedSecret({ name: recordName(record.computeId), namespace: this.namespace }),
      );
    } catch (error) {
      if (httpStatusOf(error) !== 404) throw error;
    }
    this.records.delete(record.computeId);
    this.local.delete(record.computeId);
    this.options.log.info({ computeId: record.computeId }, 'forgot a compute that ended');
  }

  /**
   * Stops a compute: the stop is written to its record first (so a restarted provisioner finishes it), a graceful
   * stop asks the agent for a clean stop (checkpoint, WAL on a majority) and its final LSN, then the pods are deleted
   * with what is left of the grace period (0 for a kill) and the driver waits until they are gone.
   */
  private async stopCompute(computeId: string, options: StopOptions): Promise<StopOutcome> {
    const { log } = this.options;
    const record = this.records.get(computeId);
    if (!record) throw this.unknown(computeId);
    if (record.ended) return { compute: this.view(computeId), finalLsn: 0n };
    const deadline = Date.now() + options.graceMs;
    const pod = this.currentPod(record);
    const wasRunning = pod !== undefined && observePod(pod).state === ComputeState.COMPUTE_STATE_RUNNING;
    if (!record.stopRequested) {
      try {
        this.onSecret(
          await this.patchRecord(computeId, {
            [ANNOTATION.stopRequested]: options.kill ? 'kill' : 'graceful',
            [ANNOTATION.stopRequestedAt]: new Date().toISOString(),
          }),
        );
      } catch (error) {
        if (httpStatusOf(error) === 404) throw this.unknown(computeId);
        throw error;
      }
    }
    let finalLsn = 0n;
    const podIp = pod?.status?.podIP;
    if (!options.kill && wasRunning && podIp) {
      const channel = openChannel(`${podIp}:${this.settings.ports.agent}`);
      try {
        const client = createSpgClient(ComputeServiceDefinition, channel);
        ({ finalLsn } = await client.stop({ checkpoint: true }, { deadline: new Date(deadline), signal: this.closing.signal }));
        log.info({ computeId, finalLsn: formatLsn(finalLsn) }, 'Postgres stopped cleanly');
      } catch (error) {
        log.warn({ computeId, error: messageOf(error) }, 'the agent did not stop cleanly in time; deleting its pod');
      } finally {
        channel.close();
      }
    }
    // A graceful delete keeps at least a second: Kubernetes takes 0 as "remove at once, kill later".
    const graceSeconds = options.kill ? 0 : Math.max(1, Math.ceil((deadline - Date.now()) / 1000));
    const names = new Set([...this.podsOf(computeId).map((candidate) => candidate.metadata!.name!), podName(computeId, record.incarnation)]);
    for (const name of names) await this.deletePod(name, graceSeconds);
    let gone = await this.waitFor(() => this.podsOf(computeId).length === 0, graceSeconds * 1000 + this.stopSlackMs);
    if (!gone && !this.closed) {
      // The kubelet did not confirm (an unreachable node): remove the objects; the term fences a pod that lives on.
      log.warn({ computeId, graceSeconds }, 'compute pods still there after the grace period: force-deleting them');
      for (const candidate of this.podsOf(computeId)) await this.deletePod(candidate.metadata!.name!, 0);
      gone = await this.waitFor(() => this.podsOf(computeId).length === 0, 5_000);
    }
    if (!gone) {
      throw new ServerError(Status.UNAVAILABLE, `the pods of compute ${computeId} are being deleted but are not gone yet; the stop continues, ask again to see it finish`);
    }
    this.onSecret(await this.patchRecord(computeId, endedAnnotations('STOPPED', options.kill ? 'killed by request' : 'stopped by request')));
    log.info({ computeId, kill: options.kill, finalLsn: formatLsn(finalLsn) }, 'compute stopped');
    return { compute: this.view(computeId), finalLsn };
  }
}

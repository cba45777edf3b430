/**
 * The endpoint lifecycle: `stopped → starting → running → suspending → stopped`, and `failed`, driven by StartEndpoint,
 * StopEndpoint, WakeEndpoint, the computes' reports and a reconciler. Every state change is one atomic catalog
 * transition from the states it is allowed from (and, where it matters, only while a given compute is the endpoint's
 * current one), so two concurrent starts produce exactly one compute: only the caller whose transition to STARTING
 * applied goes on to provision.
 *
 * A start: STOPPED/FAILED → STARTING (a new compute id `cp-…` recorded first), the timeline on a majority of the
 * safekeepers (timeline-replicas.ts; the others get it from its reconciler) and its WAL source set on the pageserver, any other compute still holding the
 * timeline's lease killed and its lease released (the endpoint wants only its current compute), a writer lease
 * acquired for the compute (a new, higher term), EnsureCompute on the provisioner with the spec, then RUNNING with
 * the Postgres address once the agent reports STARTED or the provisioner reports the compute RUNNING. A stop: RUNNING
 * → SUSPENDING, StopCompute (graceful; a kill when that fails), the lease released with the final LSN, STOPPED. A
 * failed start records FAILED with the reason (the failing step, and its cause's gRPC status and words), kills what
 * was started and releases the lease; unless the failure is one the same start meets again (a spec refused), the
 * reconciler retries it with backoff, and a wake retries it at once. A stop that fails stays SUSPENDING, naming the
 * failure, and is retried until its compute is gone and its lease released: never a compute or lease left unnoticed.
 *
 * Every step of a start is idempotent for the same compute id (the lease of the same compute is answered again,
 * EnsureCompute with the same spec is answered unchanged), so the reconciler resumes a STARTING endpoint that no
 * start in this process is driving (the control plane was restarted in the middle): it converges on the compute
 * recorded, never a second one. A SUSPENDING endpoint is resumed the same way.
 *
 * The reconciler also keeps RUNNING endpoints honest: it suspends an endpoint whose compute reported no client
 * connection for the endpoint's suspend timeout (scale to zero), and replaces a compute that died (the provisioner
 * reports it FAILED, STOPPED or forgot it) or whose writer lease expired without renewal (a hung or partitioned
 * agent): a new compute with a higher term takes over, which fences the old writer on the safekeepers.
 *
 * One control plane drives the lifecycle at a time (the local platform runs one); several would need a claim on each
 * endpoint's work, which the catalog does not have yet.
 */
import { EventEmitter } from 'node:events';
import type { ComputeSpec, ProvisionerServiceDefinition } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { ComputeState, StopMode } from '../../gen/spg99/provisioner/v1/provisioner.js';
import type { SafekeeperServiceDefinition } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import type { TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { ClientError, failedPrecondition, hasStatus, ServerError, Status, unavailable } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import { formatLsn } from '../lib/lsn.js';
import { counter, gauge } from '../lib/metrics.js';
import type { Catalog } from './catalog.js';
import { newId } from './ids.js';
import type { WriterLeases } from './leases.js';
import type { EndpointRecord, EndpointStateName } from './model.js';
import { TimelineReplicas } from './timeline-replicas.js';

/** A role as a compute is given it. */
export interface RoleVerifierSpec {
  roleName: string;
  scramVerifier: string;
}

/** Applies role changes to a running compute's Postgres through its agent (ComputeService.ApplyRoles). */
export type RoleApplier = (agentAddress: string, change: { upsert: RoleVerifierSpec[]; drop: string[] }, deadline: Date) => Promise<void>;

export interface EndpointLifecycleOptions {
  catalog: Catalog;
  leases: WriterLeases;
  provisioner: SpgClient<typeof ProvisionerServiceDefinition>;
  pageserver: SpgClient<typeof TimelineServiceDefinition>;
  pageserverAddress: string;
  safekeepers: Array<{ address: string; client: SpgClient<typeof SafekeeperServiceDefinition> }>;
  /** host:port of this control plane's internal service, handed to computes (lease renewal, reports). */
  controlPlaneAddress: string;
  /** Applies role changes to running computes; without it role changes wait for the next start. */
  roleApplier?: RoleApplier;
  log: Logger;
  /** The writer lease's ttl: the agent renews it; one not renewed for this long is taken over. */
  leaseTtlMs: number;
  /** A compute not RUNNING after this long fails the start. */
  startTimeoutMs?: number;
  /** How often the reconciler walks the endpoints (default 1 s). */
  reconcileIntervalMs?: number;
  /** Activity reports older than this are not trusted to suspend an endpoint (default 60 s). */
  activityStaleMs?: number;
  /** The first wait before a failed start or stop is retried (default 2 s); it doubles up to `retryMaxMs`. */
  retryInitialMs?: number;
  /** The longest wait between retries (default 60 s). */
  retryMaxMs?: number;
  /** How often the safekeepers' copies of every timeline are checked and repaired (default 5 s). */
  safekeeperCheckIntervalMs?: number;
  now?: () => number;
}

const CALL_TIMEOUT_MS = 60_000;
const POLL_INTERVAL_MS = 200;
const DEFAULT_RECONCILE_INTERVAL_MS = 1_000;
const DEFAULT_ACTIVITY_STALE_MS = 60_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const transitionsTotal = counter('spg99_control_plane_endpoint_transitions_total', 'Endpoint state changes made by the lifecycle', ['to']);
const retriesTotal = counter('spg99_control_plane_endpoint_retries_total', 'Failed starts and stops retried by the reconciler', ['operation']);
const replacementsTotal = counter('spg99_control_plane_compute_replacements_total', 'Computes replaced under a higher term', ['cause']);
const endpointsGauge = gauge('spg99_control_plane_endpoints', 'Endpoints by state, as the reconciler last saw them', ['state']);

function message(error: unknown): string {
  if (error instanceof ClientError) return `${Status[error.code]}: ${error.details}`;
  if (error instanceof ServerError) return `${Status[error.code]}: ${error.details}`;
  return error instanceof Error ? error.message : String(error);
}

/** The gRPC status an error carries; UNAVAILABLE for one without (a timeout, a compute that died while starting). */
function statusOf(error: unknown): Status {
  if (error instanceof ClientError || error instanceof ServerError) return error.code;
  return Status.UNAVAILABLE;
}

/** A step of a start failed: the step named, the cause's status and words kept. */
function stepFailed(step: string, error: unknown): ServerError {
  return new ServerError(statusOf(error), `${step}: ${message(error)}`);
}

/**
 * Failures that the same start will meet again (a spec a component refuses, a missing resource): not retried by the
 * reconciler. Everything else (a component down or slow, a compute that crashed) is retried with backoff.
 */
const PERMANENT_FAILURES = new Set([Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION, Status.NOT_FOUND, Status.PERMISSION_DENIED, Status.UNAUTHENTICATED, Status.UNIMPLEMENTED]);

/** How the last failed start or stop of an endpoint went, and when the reconciler tries again. */
interface RetryState {
  attempts: number;
  nextAttemptAt: number;
  code: Status;
  permanent: boolean;
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10}s`;
}

export class EndpointLifecycle {
  private readonly now: () => number;
  private readonly startTimeoutMs: number;
  private readonly reconcileIntervalMs: number;
  private readonly activityStaleMs: number;
  /** Starts and stops running in this process (so that tests and shutdown can wait for them). */
  private readonly running = new Set<Promise<void>>();
  /** Endpoints whose start or stop this process drives now: the reconciler leaves them alone. */
  private readonly driving = new Set<string>();
  /** Expired leases are not acted on until a lease ttl after this process began (agents could not renew while it was down). */
  private readonly graceUntil: number;
  private reconciler: { stop: () => Promise<void> } | null = null;
  /** Endpoint ids, emitted when this process changed their state. */
  private readonly changes = new EventEmitter();
  private controlPlaneAddress: string;
  /** Endpoints whose last start or stop failed (kept in memory: after a restart each gets one retry at once). */
  private readonly retries = new Map<string, RetryState>();
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  /** The timelines' copies on the safekeepers: created on a majority, repaired in the background. */
  readonly replicas: TimelineReplicas;

  constructor(private readonly options: EndpointLifecycleOptions) {
    this.now = options.now ?? Date.now;
    this.startTimeoutMs = options.startTimeoutMs ?? 180_000;
    this.reconcileIntervalMs = options.reconcileIntervalMs ?? DEFAULT_RECONCILE_INTERVAL_MS;
    this.activityStaleMs = options.activityStaleMs ?? DEFAULT_ACTIVITY_STALE_MS;
    this.controlPlaneAddress = options.controlPlaneAddress;
    this.graceUntil = Date.now() + options.leaseTtlMs;
    this.retryInitialMs = options.retryInitialMs ?? 2_000;
    this.retryMaxMs = options.retryMaxMs ?? 60_000;
    this.replicas = new TimelineReplicas({
      catalog: options.catalog,
      leases: options.leases,
      safekeepers: options.safekeepers,
      pageserver: options.pageserver,
      log: options.log,
      intervalMs: options.safekeeperCheckIntervalMs,
    });
  }

  /** Records a failed start or stop: when it is retried, and whether at all. */
  private recordFailure(endpointId: string, error: unknown, options: { retryable?: boolean } = {}): RetryState {
    const previous = this.retries.get(endpointId);
    const attempts = (previous?.attempts ?? 0) + 1;
    const code = statusOf(error);
    const waitMs = Math.min(this.retryMaxMs, this.retryInitialMs * 2 ** (attempts - 1));
    const state = { attempts, nextAttemptAt: Date.now() + waitMs, code, permanent: !options.retryable && PERMANENT_FAILURES.has(code) };
    this.retries.set(endpointId, state);
    return state;
  }

  /**
   * The answer to a wake that did not end RUNNING: a FAILED endpoint answers with its failure's status (UNAVAILABLE
   * while the reconciler retries it, so clients retry too), anything else UNAVAILABLE.
   */
  wakeFailure(endpoint: EndpointRecord): Error {
    if (endpoint.state === 'failed') {
      const retry = this.retries.get(endpoint.endpointId);
      if (retry && retry.permanent) {
        return new ServerError(retry.code, `endpoint ${endpoint.endpointId} FAILED: ${endpoint.stateReason}; fix the cause and start it again (StartEndpoint or a new connection)`);
      }
      const inSeconds = retry ? Math.max(0, Math.ceil((retry.nextAttemptAt - Date.now()) / 1000)) : 0;
      return unavailable(`endpoint ${endpoint.endpointId} FAILED: ${endpoint.stateReason}; it is retried automatically (next attempt in ${inSeconds}s): connect again`);
    }
    return wakeFailure(endpoint);
  }

  /** Sets the address computes reach this control plane at (known once it listens). */
  setControlPlaneAddress(address: string): void {
    this.controlPlaneAddress = address;
  }

  private deadline(ms = CALL_TIMEOUT_MS): { deadline: Date } {
    return { deadline: new Date(Date.now() + ms) };
  }

  /** Runs `work` for an endpoint in the background, marked as driven by this process. */
  private drive(endpointId: string, work: () => Promise<void>): void {
    this.driving.add(endpointId);
    const promise = work().finally(() => {
      this.driving.delete(endpointId);
      this.running.delete(promise);
    });
    this.running.add(promise);
  }

  /** Waits for the starts and stops in progress (at shutdown). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }

  // ---- Requests ----

  /**
   * Starts a STOPPED or FAILED endpoint and answers it STARTING; a STARTING, RUNNING or HANDOFF one is answered
   * unchanged; FAILED_PRECONDITION while it is SUSPENDING.
   */
  async start(endpoint: EndpointRecord, reason: string): Promise<EndpointRecord> {
    // A FAILED endpoint's last compute must be gone before another one starts (its failed start may not have
    // reached the provisioner to kill it).
    if (endpoint.state === 'failed') await this.cleanUpFailed(endpoint);
    const computeId = newId('compute');
    const outcome = await this.options.catalog.transitionEndpoint(endpoint.endpointId, ['stopped', 'failed'], {
      state: 'starting',
      stateReason: `${reason}: provisioning compute ${computeId}`,
      stateChangedAt: this.now(),
      currentComputeId: computeId,
      postgresAddress: '',
    });
    if (!outcome) throw failedPrecondition(`endpoint ${endpoint.endpointId} no longer exists`);
    if (!outcome.applied) {
      if (outcome.endpoint.state === 'suspending') {
        throw failedPrecondition(`endpoint ${endpoint.endpointId} is being stopped (${outcome.endpoint.stateReason}): start it again once it is STOPPED`);
      }
      return outcome.endpoint;
    }
    transitionsTotal.inc({ to: 'starting' });
    this.options.log.info({ endpointId: endpoint.endpointId, computeId }, 'endpoint starting');
    this.drive(endpoint.endpointId, () => this.runStart(outcome.endpoint, computeId));
    return outcome.endpoint;
  }

  /** Stops a RUNNING endpoint and answers it SUSPENDING; STOPPED is answered unchanged; FAILED becomes STOPPED. */
  async stop(endpoint: EndpointRecord, reason: string): Promise<EndpointRecord> {
    const { catalog } = this.options;
    const outcome = await catalog.transitionEndpoint(endpoint.endpointId, ['running'], {
      state: 'suspending',
      stateReason: reason,
      stateChangedAt: this.now(),
    });
    if (!outcome) throw failedPrecondition(`endpoint ${endpoint.endpointId} no longer exists`);
    if (outcome.applied) {
      transitionsTotal.inc({ to: 'suspending' });
      this.options.log.info({ endpointId: endpoint.endpointId, computeId: outcome.endpoint.currentComputeId, reason }, 'endpoint stopping');
      this.drive(endpoint.endpointId, () => this.runStop(outcome.endpoint));
      return outcome.endpoint;
    }
    const current = outcome.endpoint;
    if (current.state === 'failed') {
      // A failed start tried to kill its compute and release its lease; make sure, or say why not.
      await this.cleanUpFailed(current);
      this.retries.delete(endpoint.endpointId);
      const stopped = await catalog.transitionEndpoint(endpoint.endpointId, ['failed'], {
        state: 'stopped',
        stateReason: `${reason} (after: ${current.stateReason})`,
        stateChangedAt: this.now(),
        currentComputeId: '',
        postgresAddress: '',
      });
      return stopped?.endpoint ?? current;
    }
    if (current.state === 'starting' || current.state === 'handoff') {
      throw failedPrecondition(`endpoint ${endpoint.endpointId} is ${current.state} (${current.stateReason}): stop it once it is RUNNING`);
    }
    return current;
  }

  /**
   * Replaces the RUNNING endpoint's compute `computeId` by a new one under a higher term (it died, or its lease
   * expired). Answers false when the endpoint moved on already (another replacement, a stop).
   */
  async replace(endpoint: EndpointRecord, computeId: string, cause: 'died' | 'lease-expired' | 'reported', reason: string): Promise<boolean> {
    const newComputeId = newId('compute');
    const outcome = await this.options.catalog.transitionEndpoint(
      endpoint.endpointId,
      ['running'],
      { state: 'starting', stateReason: `${reason}: replacing it with compute ${newComputeId}`, stateChangedAt: this.now(), currentComputeId: newComputeId, postgresAddress: '' },
      computeId,
    );
    if (!outcome?.applied) return false;
    replacementsTotal.inc({ cause });
    transitionsTotal.inc({ to: 'starting' });
    this.options.log.warn({ endpointId: endpoint.endpointId, oldComputeId: computeId, computeId: newComputeId, reason }, 'replacing the endpoint\'s compute');
    this.drive(endpoint.endpointId, () => this.runStart(outcome.endpoint, newComputeId));
    return true;
  }

  /** Waits until the endpoint leaves `states` (or the deadline passes), answering it as it is then. */
  async waitWhile(endpointId: string, states: EndpointStateName[], timeoutMs: number, signal?: AbortSignal): Promise<EndpointRecord> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const endpoint = await this.options.catalog.getEndpoint(endpointId);
      if (!endpoint) throw failedPrecondition(`endpoint ${endpointId} no longer exists`);
      if (!states.includes(endpoint.state) || Date.now() >= until || signal?.aborted) return endpoint;
      // Woken at once by a change made in this process (a cold start's RUNNING); polled for changes made elsewhere.
      await this.changeOrTimeout(endpointId, Math.min(POLL_INTERVAL_MS, Math.max(0, until - Date.now())));
    }
  }

  /** Resolves when this process changes the endpoint's state, or after `ms`. */
  private changeOrTimeout(endpointId: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.changes.off(endpointId, done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.changes.on(endpointId, done);
    });
  }

  /** Tells waiters in this process that the endpoint changed. */
  private changed(endpointId: string): void {
    this.changes.emit(endpointId);
  }

  // ---- Reports from computes ----

  /** The agent says Postgres accepts connections: a STARTING endpoint running that compute becomes RUNNING. */
  async computeStarted(endpointId: string, computeId: string, postgresAddress: string): Promise<void> {
    const outcome = await this.options.catalog.transitionEndpoint(
      endpointId,
      ['starting'],
      { state: 'running', stateReason: `compute ${computeId} running`, stateChangedAt: this.now(), postgresAddress },
      computeId,
    );
    if (outcome?.applied) {
      transitionsTotal.inc({ to: 'running' });
      this.retries.delete(endpointId);
      this.changed(endpointId);
      this.options.log.info({ endpointId, computeId, postgresAddress }, 'endpoint running (reported by its agent)');
    }
  }

  /** The agent says its Postgres stopped or failed: a RUNNING endpoint gets a new compute. */
  async computeGone(endpointId: string, computeId: string, reason: string): Promise<void> {
    const endpoint = await this.options.catalog.getEndpoint(endpointId);
    if (endpoint?.state !== 'running' || endpoint.currentComputeId !== computeId) return;
    await this.replace(endpoint, computeId, 'reported', `compute ${computeId} reported it stopped (${reason})`);
  }

  /**
   * Applies role changes to the compute running the branch's endpoint, if one runs; answers whether one did.
   * UNAVAILABLE when it runs but could not be reached (the change is then not made: the caller undoes its catalog
   * change); FAILED_PRECONDITION passes through (e.g. a role that still owns objects).
   */
  async applyRoles(branchEndpoints: EndpointRecord[], change: { upsert: RoleVerifierSpec[]; drop: string[] }): Promise<boolean> {
    const endpoint = branchEndpoints.find((candidate) => candidate.state === 'running' || candidate.state === 'starting');
    if (!endpoint) return false;
    if (endpoint.state === 'starting') {
      throw unavailable(`endpoint ${endpoint.endpointId} is starting: change its roles once it is RUNNING (retry in a few seconds)`);
    }
    if (!this.options.roleApplier) return false;
    let agentAddress = '';
    try {
      const { compute } = await this.options.provisioner.describeCompute({ computeId: endpoint.currentComputeId }, this.deadline(10_000));
      agentAddress = compute?.agentAddress ?? '';
    } catch (error) {
      throw unavailable(`could not find the compute of endpoint ${endpoint.endpointId}: ${message(error)}; retry`);
    }
    if (!agentAddress) throw unavailable(`the compute of endpoint ${endpoint.endpointId} has no agent address yet; retry`);
    try {
      await this.options.roleApplier(agentAddress, change, new Date(Date.now() + 30_000));
    } catch (error) {
      if (error instanceof ClientError && (error.code === Status.FAILED_PRECONDITION || error.code === Status.INVALID_ARGUMENT)) {
        throw new ServerError(error.code, error.details);
      }
      throw unavailable(`could not apply the role change to the running endpoint ${endpoint.endpointId}: ${message(error)}; retry`);
    }
    return true;
  }

  /** The end of the committed WAL of a timeline: the highest commit LSN a safekeeper knows (0 when none answers). */
  async committedLsn(timelineId: string): Promise<bigint> {
    const answers = await Promise.allSettled(this.options.safekeepers.map((node) => node.client.getTimelineStatus({ timelineId }, this.deadline(5_000))));
    let lsn = 0n;
    for (const answer of answers) {
      if (answer.status === 'fulfilled' && answer.value.status && answer.value.status.commitLsn > lsn) lsn = answer.value.status.commitLsn;
    }
    return lsn;
  }

  /** Deletes a timeline on every safekeeper (NOT_FOUND is fine); failures are logged, the WAL left behind is storage only. */
  async deleteSafekeeperTimeline(timelineId: string): Promise<void> {
    await Promise.all(
      this.options.safekeepers.map(async (node) => {
        try {
          await node.client.deleteTimeline({ timelineId }, this.deadline(30_000));
        } catch (error) {
          if (!hasStatus(error, Status.NOT_FOUND)) this.options.log.warn({ timelineId, safekeeper: node.address, err: error }, 'could not delete the timeline on a safekeeper');
        }
      }),
    );
  }

  // ---- The reconciler ----

  /** Starts the reconciler loop (resumes interrupted starts and stops, suspends idle endpoints, replaces dead computes). */
  startReconciler(): void {
    if (this.reconciler) return;
    this.replicas.start();
    const controller = new AbortController();
    const loop = (async () => {
      while (!controller.signal.aborted) {
        try {
          await this.reconcileOnce();
        } catch (error) {
          this.options.log.warn({ err: error }, 'reconciler pass failed; retrying');
        }
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            controller.signal.removeEventListener('abort', done);
            resolve();
          };
          const timer = setTimeout(done, this.reconcileIntervalMs);
          controller.signal.addEventListener('abort', done, { once: true });
        });
      }
    })();
    this.reconciler = {
      stop: async () => {
        controller.abort();
        await loop;
      },
    };
  }

  /** Stops the reconciler (the work it began keeps running; {@link settle} waits for it). */
  async stopReconciler(): Promise<void> {
    await this.replicas.stop();
    await this.reconciler?.stop();
    this.reconciler = null;
  }

  /** One pass over every endpoint. */
  async reconcileOnce(): Promise<void> {
    const { catalog } = this.options;
    const counts = new Map<string, number>();
    for (const endpointId of await catalog.listAllEndpointIds()) {
      const endpoint = await catalog.getEndpoint(endpointId);
      if (!endpoint) continue;
      counts.set(endpoint.state, (counts.get(endpoint.state) ?? 0) + 1);
      if (this.driving.has(endpointId)) continue;
      try {
        await this.reconcileEndpoint(endpoint);
      } catch (error) {
        this.options.log.warn({ endpointId, err: error }, 'could not reconcile an endpoint; retrying');
      }
    }
    for (const state of ['stopped', 'starting', 'running', 'suspending', 'handoff', 'failed']) endpointsGauge.set({ state }, counts.get(state) ?? 0);
  }

  private async reconcileEndpoint(endpoint: EndpointRecord): Promise<void> {
    const { endpointId, currentComputeId: computeId } = endpoint;
    switch (endpoint.state) {
      case 'starting':
        // No start in this process drives it: the control plane restarted during the start. Converge on its compute.
        this.options.log.info({ endpointId, computeId }, 'resuming an interrupted start');
        this.drive(endpointId, () => this.runStart(endpoint, computeId));
        return;
      case 'suspending': {
        const retry = this.retries.get(endpointId);
        if (retry && Date.now() < retry.nextAttemptAt) return;
        if (retry) retriesTotal.inc({ operation: 'stop' });
        this.options.log.info({ endpointId, computeId, attempt: (retry?.attempts ?? 0) + 1 }, retry ? 'retrying a failed stop' : 'resuming an interrupted stop');
        this.drive(endpointId, () => this.runStop(endpoint));
        return;
      }
      case 'failed': {
        const retry = this.retries.get(endpointId);
        if (retry && (retry.permanent || Date.now() < retry.nextAttemptAt)) return;
        retriesTotal.inc({ operation: 'start' });
        this.options.log.info({ endpointId, attempt: (retry?.attempts ?? 0) + 1, after: endpoint.stateReason }, 'retrying a failed start');
        try {
          await this.start(endpoint, 'retry after a failed start');
        } catch (error) {
          // Its last compute could not be made sure gone (the provisioner is unreachable): tried again later.
          const next = this.recordFailure(endpointId, error, { retryable: true });
          this.options.log.warn({ endpointId, err: error, attempt: next.attempts }, 'could not retry a failed start; trying again later');
        }
        return;
      }
      case 'running':
        await this.checkRunning(endpoint);
        return;
      default:
        return;
    }
  }

  /** Suspends an idle RUNNING endpoint; replaces its compute when it died or stopped renewing its lease. */
  private async checkRunning(endpoint: EndpointRecord): Promise<void> {
    const computeId = endpoint.currentComputeId;
    const now = this.now();
    const timeoutMs = endpoint.settings.suspendTimeoutMs;
    const reportedAt = endpoint.activityReportedAt ?? 0;
    // Only a fresh report of this compute (made after it became RUNNING) says the endpoint is idle.
    // A connected client in the latest report keeps it up, however long ago that report's activity began.
    if (timeoutMs > 0 && reportedAt >= endpoint.stateChangedAt && now - reportedAt < this.activityStaleMs && (endpoint.activeConnections ?? 0) === 0) {
      const idleSince = Math.max(endpoint.lastActivityAt ?? 0, endpoint.stateChangedAt);
      if (now - idleSince >= timeoutMs) {
        await this.stop(endpoint, `suspended: no client connection for ${seconds(now - idleSince)} (suspend timeout ${seconds(timeoutMs)})`);
        return;
      }
    }
    let compute;
    try {
      compute = (await this.options.provisioner.describeCompute({ computeId }, this.deadline(10_000))).compute;
    } catch (error) {
      if (!hasStatus(error, Status.NOT_FOUND)) return; // The provisioner is unreachable: nothing is known, nothing is done.
    }
    if (!compute || compute.state === ComputeState.COMPUTE_STATE_FAILED || compute.state === ComputeState.COMPUTE_STATE_STOPPED) {
      const what = compute ? `${ComputeState[compute.state]}: ${compute.reason}` : 'unknown to the provisioner';
      await this.replace(endpoint, computeId, 'died', `compute ${computeId} is ${what}`);
      return;
    }
    if (Date.now() < this.graceUntil) return;
    const state = await this.options.leases.get(endpoint.branchId);
    const lease = state.lease;
    if (lease && lease.computeId === computeId && lease.releasedAt === null && state.holder === null) {
      await this.replace(endpoint, computeId, 'lease-expired', `the writer lease of compute ${computeId} (term ${lease.term}) expired at ${lease.expiresAt.toISOString()} without renewal`);
    }
  }

  // ---- The work behind the transitions ----

  private async runStart(endpoint: EndpointRecord, computeId: string): Promise<void> {
    const { catalog, leases, log } = this.options;
    const { endpointId, branchId: timelineId } = endpoint;
    let term: bigint | null = null;
    try {
      const safekeeperAddresses = this.options.safekeepers.map((node) => node.address);
      // A majority is enough: a safekeeper that is down gets the timeline from the reconciler when it returns.
      try {
        await this.replicas.ensureOnMajority(timelineId, (await leases.get(timelineId)).latestTerm > 0n);
      } catch (error) {
        throw stepFailed('creating the timeline on the safekeepers', error);
      }
      try {
        await this.options.pageserver.setWalSource({ timelineId, safekeeperAddresses }, this.deadline());
      } catch (error) {
        throw stepFailed('setting the WAL source on the pageserver', error);
      }
      await this.displaceOtherWriter(endpointId, timelineId, computeId);
      let lease;
      try {
        ({ lease } = await leases.acquire({ timelineId, computeId, ttlMs: this.options.leaseTtlMs }));
      } catch (error) {
        // Another writer's lease still running out is worth waiting for, like Redis coming back.
        throw new ServerError(hasStatus(error, Status.INVALID_ARGUMENT) ? Status.INVALID_ARGUMENT : Status.UNAVAILABLE, `acquiring the writer lease: ${message(error)}`);
      }
      term = lease.term;
      const leased = await catalog.transitionEndpoint(
        endpointId,
        ['starting'],
        { state: 'starting', stateReason: `starting compute ${computeId} with term ${term}`, stateChangedAt: this.now(), writerTerm: term },
        computeId,
      );
      if (!leased?.applied) throw new Error('the endpoint no longer wants this compute');
      const roles = await catalog.listRoles(timelineId);
      const spec: ComputeSpec = {
        endpointId,
        timelineId,
        term,
        profile: { cpuMillis: endpoint.settings.profile.cpuMillis || 1000, memoryMib: endpoint.settings.profile.memoryMib || 1024 },
        safekeeperAddresses,
        pageserverAddress: this.options.pageserverAddress,
        controlPlaneAddress: this.controlPlaneAddress,
        pgSettings: {},
        roles: roles.map((role) => ({ roleName: role.name, scramVerifier: role.scramVerifier })),
      };
      try {
        await this.options.provisioner.ensureCompute({ computeId, spec }, this.deadline());
      } catch (error) {
        throw stepFailed('asking the provisioner for the compute', error);
      }
      const started = Date.now();
      let postgresAddress = '';
      for (;;) {
        const current = await catalog.getEndpoint(endpointId);
        if (current?.currentComputeId !== computeId || (current.state !== 'starting' && current.state !== 'running')) {
          throw new Error('the endpoint no longer wants this compute');
        }
        // The agent's STARTED report got there first.
        if (current.state === 'running') return;
        let compute;
        try {
          ({ compute } = await this.options.provisioner.describeCompute({ computeId }, this.deadline()));
        } catch (error) {
          throw stepFailed('asking the provisioner how the compute is', error);
        }
        if (compute?.state === ComputeState.COMPUTE_STATE_RUNNING && compute.postgresAddress) {
          postgresAddress = compute.postgresAddress;
          break;
        }
        if (compute?.state === ComputeState.COMPUTE_STATE_FAILED || compute?.state === ComputeState.COMPUTE_STATE_STOPPED) {
          throw new Error(`compute ${computeId} ${ComputeState[compute.state]}: ${compute.reason}`);
        }
        if (Date.now() - started > this.startTimeoutMs) throw new Error(`compute ${computeId} not running after ${this.startTimeoutMs} ms`);
        await sleep(POLL_INTERVAL_MS);
      }
      const done = await catalog.transitionEndpoint(
        endpointId,
        ['starting'],
        { state: 'running', stateReason: `compute ${computeId} running with term ${term}`, stateChangedAt: this.now(), postgresAddress },
        computeId,
      );
      if (!done?.applied && !(done?.endpoint.state === 'running' && done.endpoint.currentComputeId === computeId)) {
        throw new Error('the endpoint no longer wants this compute');
      }
      if (done.applied) transitionsTotal.inc({ to: 'running' });
      this.retries.delete(endpointId);
      this.changed(endpointId);
      log.info({ endpointId, computeId, term: String(term), postgresAddress }, 'endpoint running');
    } catch (error) {
      const retry = this.recordFailure(endpointId, error);
      const reason =
        `start of compute ${computeId} failed: ${message(error)}` +
        (retry.permanent ? '' : ` (attempt ${retry.attempts}; retried in ${seconds(retry.nextAttemptAt - Date.now())})`);
      log.warn({ endpointId, computeId, err: error, attempt: retry.attempts, retried: !retry.permanent }, 'endpoint start failed');
      // Also when this process did not ensure it: a start resumed after a restart may find it ensured before.
      {
        await this.options.provisioner.stopCompute({ computeId, mode: StopMode.STOP_MODE_KILL }, this.deadline()).catch((stopError: unknown) => {
          if (!hasStatus(stopError, Status.NOT_FOUND)) log.warn({ computeId, err: stopError }, 'could not kill the compute of a failed start');
        });
      }
      if (term !== null) {
        await leases.release({ timelineId, computeId, term }).catch((releaseError: unknown) => {
          log.warn({ computeId, err: releaseError }, 'could not release the lease of a failed start');
        });
      }
      const failed = await catalog
        .transitionEndpoint(endpointId, ['starting'], { state: 'failed', stateReason: reason, stateChangedAt: this.now(), postgresAddress: '' }, computeId)
        .catch((recordError: unknown) => {
          log.error({ endpointId, err: recordError }, 'could not record a failed start');
          return null;
        });
      if (failed?.applied) transitionsTotal.inc({ to: 'failed' });
      // The endpoint moved on (a newer start, a stop): this failure is not its state, nothing to retry.
      else this.retries.delete(endpointId);
      this.changed(endpointId);
    }
  }

  /**
   * Before a compute takes the lease: another compute holding it (the one this start replaces, or one a crashed
   * control plane left behind) is killed and its lease released, since the endpoint wants only `computeId`. Safe for
   * data: the new term fences whatever the old writer still tries on the safekeepers.
   */
  private async displaceOtherWriter(endpointId: string, timelineId: string, computeId: string): Promise<void> {
    const { leases, log } = this.options;
    const state = await leases.get(timelineId);
    const lease = state.lease;
    if (!lease || lease.computeId === computeId || lease.releasedAt !== null) return;
    log.info({ endpointId, oldComputeId: lease.computeId, term: String(lease.term), computeId }, 'stopping the previous writer before the new one takes the lease');
    try {
      await this.options.provisioner.stopCompute({ computeId: lease.computeId, mode: StopMode.STOP_MODE_KILL }, this.deadline());
    } catch (error) {
      if (!hasStatus(error, Status.NOT_FOUND)) log.warn({ oldComputeId: lease.computeId, err: error }, 'could not kill the previous writer; its term is fenced all the same');
    }
    await leases.release({ timelineId, computeId: lease.computeId, term: lease.term });
  }

  /**
   * Makes sure a FAILED endpoint's last compute is gone and holds no lease: the failed start tried, but the
   * provisioner or Redis may have been unreachable then. Throws (UNAVAILABLE) when that cannot be made sure now.
   */
  private async cleanUpFailed(endpoint: EndpointRecord): Promise<void> {
    const { currentComputeId: computeId, branchId: timelineId } = endpoint;
    if (!computeId) return;
    try {
      await this.options.provisioner.stopCompute({ computeId, mode: StopMode.STOP_MODE_KILL }, this.deadline());
    } catch (error) {
      if (!hasStatus(error, Status.NOT_FOUND)) throw stepFailed(`making sure compute ${computeId} of the failed endpoint ${endpoint.endpointId} is gone`, error);
    }
    const { lease } = await this.options.leases.get(timelineId);
    if (lease && lease.computeId === computeId && lease.releasedAt === null) {
      await this.options.leases.release({ timelineId, computeId, term: lease.term });
    }
  }

  private async runStop(endpoint: EndpointRecord): Promise<void> {
    const { catalog, leases, log } = this.options;
    const { endpointId, branchId: timelineId, currentComputeId: computeId, writerTerm: term } = endpoint;
    try {
      let finalLsn = 0n;
      try {
        const stopped = await this.options.provisioner.stopCompute({ computeId, mode: StopMode.STOP_MODE_GRACEFUL }, this.deadline(120_000));
        finalLsn = stopped.finalLsn;
      } catch (error) {
        // A compute the provisioner no longer knows is stopped.
        if (!hasStatus(error, Status.NOT_FOUND)) {
          // A compute that will not stop cleanly is killed: its committed WAL is on a majority of safekeepers already.
          log.warn({ endpointId, computeId, err: error }, 'graceful stop failed; killing the compute');
          try {
            await this.options.provisioner.stopCompute({ computeId, mode: StopMode.STOP_MODE_KILL }, this.deadline());
          } catch (killError) {
            if (!hasStatus(killError, Status.NOT_FOUND)) throw stepFailed(`stopping compute ${computeId} (graceful: ${message(error)}; kill)`, killError);
          }
        }
      }
      if (term > 0n) {
        try {
          await leases.release({ timelineId, computeId, term, finalLsn: finalLsn > 0n ? finalLsn : undefined });
        } catch (error) {
          throw stepFailed(`releasing the writer lease of term ${term}`, error);
        }
      }
      const stopped = await catalog.transitionEndpoint(
        endpointId,
        ['suspending'],
        {
          state: 'stopped',
          stateReason: `${endpoint.stateReason}: compute ${computeId} stopped at LSN ${formatLsn(finalLsn)}`,
          stateChangedAt: this.now(),
          currentComputeId: '',
          postgresAddress: '',
        },
        computeId,
      );
      if (stopped?.applied) transitionsTotal.inc({ to: 'stopped' });
      this.retries.delete(endpointId);
      this.changed(endpointId);
      log.info({ endpointId, computeId, finalLsn: formatLsn(finalLsn) }, 'endpoint stopped');
    } catch (error) {
      // The endpoint stays SUSPENDING, its compute and lease recorded, and the reconciler retries the stop with
      // backoff: a stop that failed never leaves a compute running or a lease held without anyone knowing.
      const retry = this.recordFailure(endpointId, error);
      log.warn({ endpointId, computeId, err: error, attempt: retry.attempts }, 'endpoint stop failed; retrying');
      await catalog
        .transitionEndpoint(
          endpointId,
          ['suspending'],
          {
            state: 'suspending',
            stateReason: `${endpoint.stateReason.replace(/ \(stop of compute .*$/, '')} (stop of compute ${computeId} failed: ${message(error)}; attempt ${retry.attempts}, retried in ${seconds(retry.nextAttemptAt - Date.now())})`,
            stateChangedAt: this.now(),
          },
          computeId,
        )
        .catch((recordError: unknown) => {
          log.error({ endpointId, err: recordError }, 'could not record a failed stop');
        });
      this.changed(endpointId);
    }
  }
}

/** The answer to a wake that did not end RUNNING. */
export function wakeFailure(endpoint: EndpointRecord): Error {
  if (endpoint.state === 'failed') return failedPrecondition(`endpoint ${endpoint.endpointId} FAILED: ${endpoint.stateReason}`);
  return unavailable(`endpoint ${endpoint.endpointId} is ${endpoint.state} (${endpoint.stateReason}); retry`);
}

/** The lifecycle, or UNIMPLEMENTED saying which flags the control plane needs for `method`. */
export function requireLifecycle(lifecycle: EndpointLifecycle | undefined | null, method: string): EndpointLifecycle {
  if (!lifecycle) {
    throw new ServerError(
      Status.UNIMPLEMENTED,
      `${method} is not available: this control plane runs without --provisioner (and --pageserver, --safekeepers); start it with them, or try later`,
    );
  }
  return lifecycle;
}

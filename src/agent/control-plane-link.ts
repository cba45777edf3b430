/**
 * The agent's side of the control plane's internal service: it keeps the writer lease renewed, reports the compute's
 * lifecycle (STARTED, STOPPED, FAILED) and, while it runs, its activity; and it stops Postgres when the control plane
 * says this compute is no longer the writer (ABORTED).
 *
 * Safety does not depend on any of this. A writer that cannot reach the control plane keeps running and keeps
 * retrying: if its lease expires and another compute takes over, the safekeepers fence this one by term (they
 * refuse its WAL once the newer term is promised on a majority), so two writers can never both commit. The lease
 * only tells the control plane whom to wait for, and tells a stale writer to stop sooner.
 */
import { delay } from 'abort-controller-x';
import type { Channel } from 'nice-grpc';
import {
  ComputeStateChange,
  ControlPlaneInternalServiceDefinition,
  type ReportComputeStateRequest,
} from '../../gen/spg99/controlplane/v1/controlplane.js';
import { ComputeState } from '../../gen/spg99/compute/v1/compute.js';
import { createSpgClient, openChannel, type SpgClient } from '../lib/grpc/client.js';
import { ClientError, Status } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import { formatLsn, type Lsn } from '../lib/lsn.js';
import { counter, gauge } from '../lib/metrics.js';
import { Backoff } from '../lib/retry.js';
import type { ActivityFigures } from './activity.js';
import type { ComputeStatus } from './compute.js';

const lastRenewalGauge = gauge('spg99_agent_lease_last_renewal_seconds', 'Unix time of the last successful writer lease renewal');
const leaseExpiryGauge = gauge('spg99_agent_lease_expires_at_seconds', 'Unix time (control plane clock) the writer lease expires unless renewed');
const renewalFailures = counter('spg99_agent_lease_renewal_failures_total', 'Writer lease renewals that failed (each is retried)', ['code']);
const reportFailures = counter('spg99_agent_control_plane_report_failures_total', 'Reports to the control plane that failed', ['rpc', 'code']);

/** How long the final reports of a stop (STOPPED, the lease release) may take in all: a stop must not hang on them. */
const FINAL_REPORT_BUDGET_MS = 10_000;
/** Renewals never come closer together than this (the control plane grants at least a second). */
const MIN_RENEWAL_INTERVAL_MS = 250;
/** The deadline of one report call. */
const REPORT_DEADLINE_MS = 5_000;

/** What the link needs of the compute it speaks for. */
export interface LinkedCompute {
  status(): ComputeStatus;
  /** Calls `listener` on every state change. */
  onStateChange(listener: (status: ComputeStatus) => void): void;
  /** Stops Postgres at once: another writer was chosen. */
  fence(reason: string): Promise<void>;
  /** Current activity figures; rejects when Postgres cannot be asked. */
  activity(): Promise<ActivityFigures>;
}

/** Options of a {@link ControlPlaneLink}. */
export interface ControlPlaneLinkOptions {
  /** host:port of the ControlPlaneInternalService. */
  address: string;
  endpointId: string;
  computeId: string;
  term: bigint;
  /** The lease duration asked for at each renewal; renewals happen every third of it. */
  leaseTtlMs: number;
  /** How often activity is reported while the compute runs. */
  reportIntervalMs: number;
  /** host:port where Postgres accepts connections (reported with STARTED). */
  postgresAddress: string;
  log: Logger;
  traceId?: string;
  /** Takes the fresh credential a lease renewal brings (the compute's token expires; renewals replace it). */
  onCredential?: (credential: string) => void;
}

/**
 * Renews the writer lease from {@link start} until the compute stops or fails (or is fenced), reports its
 * lifecycle and activity, and releases the lease after a clean stop. Every loop ends with {@link close}.
 */
export class ControlPlaneLink {
  private readonly channel: Channel;
  private readonly client: SpgClient<typeof ControlPlaneInternalServiceDefinition>;
  private readonly log: Logger;
  /** Ends everything (close). */
  private readonly controller = new AbortController();
  /** Ends the renewals and activity reports (the compute left RUNNING, or close). */
  private readonly running = new AbortController();
  private readonly tasks = new Set<Promise<void>>();
  private renewing: Promise<void> | null = null;
  /** Report RPCs the control plane does not implement yet: warned about once. */
  private readonly unimplemented = new Set<string>();
  /** RPCs whose last call failed: a failure is logged when a streak begins, not at every retry. */
  private readonly failing = new Set<string>();
  private lastState: ComputeState | null = null;
  private final: Promise<void> | null = null;

  constructor(
    private readonly compute: LinkedCompute,
    private readonly options: ControlPlaneLinkOptions,
  ) {
    this.log = options.log.child({ part: 'control-plane-link', endpointId: options.endpointId });
    this.channel = openChannel(options.address);
    this.client = createSpgClient(ControlPlaneInternalServiceDefinition, this.channel, options.traceId);
  }

  /** Begins renewing the lease (at once: a start may take longer than the lease) and following the compute. */
  start(): void {
    this.compute.onStateChange((status) => this.onState(status));
    this.renewing = this.renewLoop(this.running.signal);
    this.onState(this.compute.status());
  }

  /** Waits for the final reports (bounded), ends every loop and closes the channel. */
  async close(): Promise<void> {
    const final = this.final;
    if (final) await final;
    this.running.abort();
    this.controller.abort();
    await this.renewing;
    await Promise.allSettled([...this.tasks]);
    this.channel.close();
  }

  private onState(status: ComputeStatus): void {
    if (status.state === this.lastState) return;
    this.lastState = status.state;
    switch (status.state) {
      case ComputeState.COMPUTE_STATE_RUNNING:
        this.track(this.reportStarted(status));
        this.track(this.activityLoop(this.running.signal));
        break;
      case ComputeState.COMPUTE_STATE_STOPPED:
        this.final ??= this.finish(status, true);
        break;
      case ComputeState.COMPUTE_STATE_FENCED:
      case ComputeState.COMPUTE_STATE_FAILED:
        this.final ??= this.finish(status, false);
        break;
      default:
        break;
    }
  }

  /**
   * The compute ended: renewals stop; STOPPED (cleanly, or fenced) or FAILED is reported; after a clean stop the lease
   * is released with the final LSN so the next writer need not wait for it to expire. A failed compute keeps its
   * lease until it expires: the provisioner may restart its agent with the same term.
   */
  private async finish(status: ComputeStatus, clean: boolean): Promise<void> {
    this.running.abort();
    // A STARTED still being retried must not arrive after the final report.
    await Promise.allSettled([this.renewing, ...this.tasks]);
    const deadline = Date.now() + FINAL_REPORT_BUDGET_MS;
    const fenced = status.state === ComputeState.COMPUTE_STATE_FENCED;
    const change = status.state === ComputeState.COMPUTE_STATE_FAILED ? ComputeStateChange.COMPUTE_STATE_CHANGE_FAILED : ComputeStateChange.COMPUTE_STATE_CHANGE_STOPPED;
    const reason = fenced ? `fenced: ${status.reason}` : status.reason || (clean ? 'stop requested' : 'the compute failed');
    const finalLsn: Lsn = clean ? status.commitLsn : 0n;
    await Promise.all([
      this.withRetries('ReportComputeState', deadline, (callDeadline) =>
        this.client.reportComputeState(this.stateRequest(change, reason, status), { deadline: callDeadline, signal: this.controller.signal }),
      ),
      clean
        ? this.withRetries('ReleaseWriterLease', deadline, async (callDeadline) => {
            await this.client.releaseWriterLease(
              { endpointId: this.options.endpointId, computeId: this.options.computeId, term: this.options.term, finalLsn },
              { deadline: callDeadline, signal: this.controller.signal },
            );
            this.log.info({ term: String(this.options.term), finalLsn: formatLsn(finalLsn) }, 'writer lease released');
          })
        : Promise.resolve(),
    ]);
  }

  private async reportStarted(status: ComputeStatus): Promise<void> {
    const request = this.stateRequest(ComputeStateChange.COMPUTE_STATE_CHANGE_STARTED, '', status);
    request.postgresAddress = this.options.postgresAddress;
    request.startPhaseSeconds = status.startPhaseSeconds;
    const backoff = new Backoff(200, 5_000);
    const signal = this.running.signal;
    while (!signal.aborted) {
      try {
        await this.client.reportComputeState(request, { deadline: new Date(Date.now() + REPORT_DEADLINE_MS), signal });
        this.succeeded('ReportComputeState');
        this.log.info({ postgresAddress: request.postgresAddress }, 'reported STARTED to the control plane');
        return;
      } catch (error) {
        if (signal.aborted) return;
        // Repeated reports are harmless: a lost one is sent again until it gets through.
        if (!this.failed('ReportComputeState', error) || !isRetryable(error)) return;
        await backoff.wait(signal).catch(() => undefined);
      }
    }
  }

  /**
   * Renews every third of the ttl, or of what the control plane granted when it cut the ttl shorter (read from the
   * answered expiry with the local clock: a clock behind the control plane's makes that look longer, but never longer
   * than asked for). After a failure, sooner (backoff), never later.
   */
  private async renewLoop(signal: AbortSignal): Promise<void> {
    const { leaseTtlMs, endpointId, computeId, term } = this.options;
    const askedIntervalMs = Math.max(MIN_RENEWAL_INTERVAL_MS, Math.floor(leaseTtlMs / 3));
    let intervalMs = askedIntervalMs;
    const backoff = new Backoff(Math.min(200, askedIntervalMs), askedIntervalMs);
    const ttl = { seconds: BigInt(Math.floor(leaseTtlMs / 1000)), nanos: (leaseTtlMs % 1000) * 1e6 };
    let failures = 0;
    while (!signal.aborted) {
      try {
        const { lease, credential } = await this.client.renewWriterLease(
          { endpointId, computeId, term, ttl },
          { deadline: new Date(Date.now() + Math.max(intervalMs, 1000)), signal },
        );
        if (credential) this.options.onCredential?.(credential);
        lastRenewalGauge.set(Date.now() / 1000);
        if (lease?.expiresAt) {
          leaseExpiryGauge.set(lease.expiresAt.getTime() / 1000);
          const remainingMs = lease.expiresAt.getTime() - Date.now();
          const next = remainingMs > 0 ? Math.min(askedIntervalMs, Math.max(MIN_RENEWAL_INTERVAL_MS, Math.floor(remainingMs / 3))) : askedIntervalMs;
          if (next < intervalMs * 0.8 || next > intervalMs * 1.25) {
            this.log.info({ intervalMs: next, expiresAt: lease.expiresAt.toISOString() }, 'renewing the writer lease every third of what the control plane grants');
          }
          intervalMs = next;
        }
        if (failures > 0) this.log.info({ failures }, 'writer lease renewed again');
        failures = 0;
        backoff.reset();
        await delay(signal, intervalMs).catch(() => undefined);
      } catch (error) {
        if (signal.aborted) return;
        const code = error instanceof ClientError ? error.code : Status.UNKNOWN;
        if (code === Status.ABORTED) {
          const reason = `the control plane refused to renew the writer lease of term ${term}: ${(error as ClientError).details}`;
          this.log.warn({ term: String(term), reason }, 'fenced: another compute is the writer; stopping Postgres');
          void this.compute.fence(reason);
          return;
        }
        renewalFailures.inc({ code: Status[code] });
        failures += 1;
        const message = error instanceof ClientError ? `${Status[code]}: ${error.details}` : (error as Error).message;
        if (isRetryable(error)) {
          if (failures === 1) this.log.warn({ error: message }, 'writer lease renewal failed; retrying with backoff (safekeeper terms still fence a stale writer)');
          await delay(signal, Math.min(backoff.next(), intervalMs)).catch(() => undefined);
        } else {
          // A refusal other than ABORTED is a misconfiguration (unknown endpoint or term); keep trying at the interval.
          if (failures === 1) this.log.error({ error: message }, 'the control plane refuses to renew the writer lease; check --endpoint-id and --term');
          await delay(signal, intervalMs).catch(() => undefined);
        }
      }
    }
  }

  private async activityLoop(signal: AbortSignal): Promise<void> {
    const { reportIntervalMs, endpointId, computeId } = this.options;
    while (!signal.aborted) {
      await delay(signal, reportIntervalMs).catch(() => undefined);
      if (signal.aborted) return;
      let figures: ActivityFigures;
      try {
        figures = await this.compute.activity();
      } catch (error) {
        this.log.warn({ error: (error as Error).message }, 'could not read activity from Postgres; skipping this report');
        continue;
      }
      try {
        await this.client.reportComputeActivity(
          { computeId, endpointId, observedAt: new Date(), ...figures },
          { deadline: new Date(Date.now() + Math.min(REPORT_DEADLINE_MS, reportIntervalMs)), signal },
        );
        this.succeeded('ReportComputeActivity');
      } catch (error) {
        if (signal.aborted) return;
        // Figures are not resent: the next report carries newer ones (also after UNIMPLEMENTED, for a control plane
        // upgraded meanwhile).
        this.failed('ReportComputeActivity', error);
      }
    }
  }

  /**
   * Calls `call` until it succeeds, a non-retryable error, or `deadline`. Never throws: a report must not fail the
   * compute.
   */
  private async withRetries(rpc: string, deadline: number, call: (callDeadline: Date) => Promise<unknown>): Promise<void> {
    const backoff = new Backoff(100, 2_000);
    while (!this.controller.signal.aborted) {
      try {
        await call(new Date(Math.min(deadline, Date.now() + REPORT_DEADLINE_MS)));
        this.succeeded(rpc);
        return;
      } catch (error) {
        if (!this.failed(rpc, error) || !isRetryable(error)) return;
        if (Date.now() + 100 >= deadline) {
          this.log.warn({ rpc }, `gave up on ${rpc} after ${FINAL_REPORT_BUDGET_MS} ms: the control plane learns it from the lease expiry`);
          return;
        }
        await delay(this.controller.signal, Math.min(backoff.next(), Math.max(0, deadline - Date.now()))).catch(() => undefined);
      }
    }
  }

  /**
   * Accounts a failed report; false when the caller should stop calling (UNIMPLEMENTED: warned about once). ABORTED
   * from a report of a running compute means it is no longer the endpoint's writer: it is fenced.
   */
  private failed(rpc: string, error: unknown): boolean {
    const code = error instanceof ClientError ? error.code : Status.UNKNOWN;
    reportFailures.inc({ rpc, code: Status[code] });
    const message = error instanceof ClientError ? error.details : (error as Error).message;
    if (code === Status.UNIMPLEMENTED) {
      if (!this.unimplemented.has(rpc)) {
        this.unimplemented.add(rpc);
        this.log.warn({ rpc, error: message }, `the control plane does not implement ${rpc} yet; the compute runs on without it`);
      }
      return false;
    }
    if (code === Status.ABORTED && this.lastState === ComputeState.COMPUTE_STATE_RUNNING) {
      const reason = `the control plane answered ${rpc} with ABORTED: ${message}`;
      this.log.warn({ rpc, reason }, 'fenced: this compute is no longer the endpoint\'s writer; stopping Postgres');
      void this.compute.fence(reason);
      return false;
    }
    if (!this.failing.has(rpc)) {
      this.failing.add(rpc);
      this.log.warn({ rpc, code: Status[code], error: message }, `${rpc} failed${isRetryable(error) ? '; retrying' : ''}`);
    }
    return true;
  }

  private succeeded(rpc: string): void {
    if (this.failing.delete(rpc)) this.log.info({ rpc }, `${rpc} succeeds again`);
  }

  private stateRequest(change: ComputeStateChange, reason: string, status: ComputeStatus): ReportComputeStateRequest {
    return {
      computeId: this.options.computeId,
      endpointId: this.options.endpointId,
      term: status.term,
      change,
      postgresAddress: '',
      reason,
      startPhaseSeconds: {},
    };
  }

  private track(task: Promise<void>): void {
    const tracked = task.catch((error: unknown) => this.log.warn({ error: (error as Error).message }, 'a control plane task ended with an error'));
    this.tasks.add(tracked);
    void tracked.finally(() => this.tasks.delete(tracked));
  }
}

/** UNAVAILABLE, DEADLINE_EXCEEDED (and transport errors): worth another try with backoff. */
function isRetryable(error: unknown): boolean {
  if (!(error instanceof ClientError)) return true;
  return error.code === Status.UNAVAILABLE || error.code === Status.DEADLINE_EXCEEDED;
}

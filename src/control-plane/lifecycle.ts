/**
 * The endpoint lifecycle: `stopped → starting → running → suspending → stopped`, and `failed`, driven by StartEndpoint,
 * StopEndpoint and WakeEndpoint. Every state change is one atomic catalog transition from the states it is allowed
 * from, so two concurrent starts produce exactly one compute: only the caller whose transition to STARTING applied
 * goes on to provision.
 *
 * A start: STOPPED/FAILED → STARTING (a new compute id `cp-…`), the timeline created on every safekeeper (ALREADY_EXISTS
 * is fine) and its WAL source set on the pageserver, a writer lease acquired for the compute (a new, higher term),
 * EnsureCompute on the provisioner with the spec, then RUNNING with the Postgres address once the provisioner reports
 * the compute RUNNING. A stop: RUNNING → SUSPENDING, StopCompute (graceful), the lease released with the final LSN,
 * STOPPED. A failure records FAILED with the reason, kills what was started and releases the lease.
 *
 * Limits of this slice: the lease is granted with a long ttl ({@link EndpointLifecycleOptions.leaseTtlMs}) because
 * nothing renews it yet (no renewal loop in the agent or here); the start and stop run inside this process after the
 * answer, so a control plane restarted in the middle leaves the endpoint STARTING or SUSPENDING (no convergence yet).
 */
import type { ComputeSpec, ProvisionerServiceDefinition } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { ComputeState, StopMode } from '../../gen/spg99/provisioner/v1/provisioner.js';
import type { SafekeeperServiceDefinition } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import type { TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { failedPrecondition, hasStatus, ServerError, Status, unavailable } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import type { Catalog } from './catalog.js';
import { newId } from './ids.js';
import type { WriterLeases } from './leases.js';
import type { EndpointRecord } from './model.js';

export interface EndpointLifecycleOptions {
  catalog: Catalog;
  leases: WriterLeases;
  provisioner: SpgClient<typeof ProvisionerServiceDefinition>;
  pageserver: SpgClient<typeof TimelineServiceDefinition>;
  pageserverAddress: string;
  safekeepers: Array<{ address: string; client: SpgClient<typeof SafekeeperServiceDefinition> }>;
  /** host:port of this control plane's internal service, handed to computes; empty when unknown. */
  controlPlaneAddress: string;
  log: Logger;
  /** The writer lease's ttl: long, as nothing renews it in this version. */
  leaseTtlMs: number;
  /** A compute not RUNNING after this long fails the start. */
  startTimeoutMs?: number;
  now?: () => number;
}

const CALL_TIMEOUT_MS = 60_000;
const POLL_INTERVAL_MS = 200;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class EndpointLifecycle {
  private readonly now: () => number;
  private readonly startTimeoutMs: number;
  /** Starts and stops running in this process (so that tests and shutdown can wait for them). */
  private readonly running = new Set<Promise<void>>();

  constructor(private readonly options: EndpointLifecycleOptions) {
    this.now = options.now ?? Date.now;
    this.startTimeoutMs = options.startTimeoutMs ?? 180_000;
  }

  private deadline(ms = CALL_TIMEOUT_MS): { deadline: Date } {
    return { deadline: new Date(Date.now() + ms) };
  }

  private track(work: Promise<void>): void {
    this.running.add(work);
    void work.finally(() => this.running.delete(work));
  }

  /** Waits for the starts and stops in progress (at shutdown). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }

  /**
   * Starts a STOPPED or FAILED endpoint and answers it STARTING; a STARTING, RUNNING or HANDOFF one is answered
   * unchanged; FAILED_PRECONDITION while it is SUSPENDING.
   */
  async start(endpoint: EndpointRecord, reason: string): Promise<EndpointRecord> {
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
    this.options.log.info({ endpointId: endpoint.endpointId, computeId }, 'endpoint starting');
    this.track(this.runStart(outcome.endpoint, computeId));
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
      this.options.log.info({ endpointId: endpoint.endpointId, computeId: outcome.endpoint.currentComputeId }, 'endpoint stopping');
      this.track(this.runStop(outcome.endpoint));
      return outcome.endpoint;
    }
    const current = outcome.endpoint;
    if (current.state === 'failed') {
      // A failed start already killed its compute and released its lease.
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

  /** Waits until the endpoint leaves `states` (or the deadline passes), answering it as it is then. */
  async waitWhile(endpointId: string, states: string[], timeoutMs: number, signal?: AbortSignal): Promise<EndpointRecord> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const endpoint = await this.options.catalog.getEndpoint(endpointId);
      if (!endpoint) throw failedPrecondition(`endpoint ${endpointId} no longer exists`);
      if (!states.includes(endpoint.state) || Date.now() >= until || signal?.aborted) return endpoint;
      await sleep(POLL_INTERVAL_MS);
    }
  }

  private async runStart(endpoint: EndpointRecord, computeId: string): Promise<void> {
    const { catalog, leases, log } = this.options;
    const { endpointId, branchId: timelineId } = endpoint;
    let term: bigint | null = null;
    let ensured = false;
    try {
      const safekeeperAddresses = this.options.safekeepers.map((node) => node.address);
      await Promise.all(
        this.options.safekeepers.map(async (node) => {
          try {
            await node.client.createTimeline({ timelineId }, this.deadline());
          } catch (error) {
            if (!hasStatus(error, Status.ALREADY_EXISTS)) throw new Error(`creating the timeline on safekeeper ${node.address}: ${message(error)}`);
          }
        }),
      );
      try {
        await this.options.pageserver.setWalSource({ timelineId, safekeeperAddresses }, this.deadline());
      } catch (error) {
        throw new Error(`setting the WAL source on the pageserver: ${message(error)}`);
      }
      const { lease } = await leases.acquire({ timelineId, computeId, ttlMs: this.options.leaseTtlMs });
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
        controlPlaneAddress: this.options.controlPlaneAddress,
        pgSettings: {},
        roles: roles.map((role) => ({ roleName: role.name, scramVerifier: role.scramVerifier })),
      };
      await this.options.provisioner.ensureCompute({ computeId, spec }, this.deadline());
      ensured = true;
      const started = Date.now();
      let postgresAddress = '';
      for (;;) {
        const { compute } = await this.options.provisioner.describeCompute({ computeId }, this.deadline());
        if (compute?.state === ComputeState.COMPUTE_STATE_RUNNING && compute.postgresAddress) {
          postgresAddress = compute.postgresAddress;
          break;
        }
        if (compute?.state === ComputeState.COMPUTE_STATE_FAILED || compute?.state === ComputeState.COMPUTE_STATE_STOPPED) {
          throw new Error(`compute ${computeId} ${ComputeState[compute.state]}: ${compute.reason}`);
        }
        if (Date.now() - started > this.startTimeoutMs) throw new Error(`compute ${computeId} not running after ${this.startTimeoutMs} ms`);
        const current = await catalog.getEndpoint(endpointId);
        if (current?.state !== 'starting' || current.currentComputeId !== computeId) throw new Error('the endpoint no longer wants this compute');
        await sleep(POLL_INTERVAL_MS);
      }
      const done = await catalog.transitionEndpoint(
        endpointId,
        ['starting'],
        { state: 'running', stateReason: `compute ${computeId} running with term ${term}`, stateChangedAt: this.now(), postgresAddress },
        computeId,
      );
      if (!done?.applied) throw new Error('the endpoint no longer wants this compute');
      log.info({ endpointId, computeId, term: String(term), postgresAddress }, 'endpoint running');
    } catch (error) {
      const reason = `start of compute ${computeId} failed: ${message(error)}`;
      log.warn({ endpointId, computeId, err: error }, 'endpoint start failed');
      if (ensured) {
        await this.options.provisioner.stopCompute({ computeId, mode: StopMode.STOP_MODE_KILL }, this.deadline()).catch((stopError: unknown) => {
          log.warn({ computeId, err: stopError }, 'could not kill the compute of a failed start');
        });
      }
      if (term !== null) {
        await leases.release({ timelineId, computeId, term }).catch((releaseError: unknown) => {
          log.warn({ computeId, err: releaseError }, 'could not release the lease of a failed start');
        });
      }
      await catalog
        .transitionEndpoint(endpointId, ['starting'], { state: 'failed', stateReason: reason, stateChangedAt: this.now(), postgresAddress: '' }, computeId)
        .catch((recordError: unknown) => log.error({ endpointId, err: recordError }, 'could not record a failed start'));
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
        if (!hasStatus(error, Status.NOT_FOUND)) throw error;
      }
      await leases.release({ timelineId, computeId, term, finalLsn: finalLsn > 0n ? finalLsn : undefined });
      await catalog.transitionEndpoint(
        endpointId,
        ['suspending'],
        {
          state: 'stopped',
          stateReason: `${endpoint.stateReason}: compute ${computeId} stopped at LSN ${finalLsn}`,
          stateChangedAt: this.now(),
          currentComputeId: '',
          postgresAddress: '',
        },
        computeId,
      );
      log.info({ endpointId, computeId, finalLsn: String(finalLsn) }, 'endpoint stopped');
    } catch (error) {
      log.warn({ endpointId, computeId, err: error }, 'endpoint stop failed');
      await catalog
        .transitionEndpoint(
          endpointId,
          ['suspending'],
          { state: 'failed', stateReason: `stop of compute ${computeId} failed: ${message(error)}`, stateChangedAt: this.now(), postgresAddress: '' },
          computeId,
        )
        .catch((recordError: unknown) => log.error({ endpointId, err: recordError }, 'could not record a failed stop'));
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

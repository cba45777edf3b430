/**
 * A timeline's copies on the safekeepers, from the control plane's side. Every step needs only a majority of them:
 * a timeline is created once a majority has it, and a safekeeper that missed it (down at the time), lost its disk
 * or fell too far behind is repaired later by a reconciler, so that redundancy returns by itself:
 * - a safekeeper without the timeline gets it: created empty when no safekeeper holds WAL yet, else pulled from its
 *   peers (PullTimeline: the highest promised term, and the committed WAL from a recent segment, the one of the
 *   pageserver's durable LSN, not from the timeline's start);
 * - a safekeeper whose copy is empty while its peers hold committed WAL, or ends below the oldest WAL every peer still
 *   holds (a writer could not bring it up to date from them), is pulled the same way;
 * - the number of safekeepers holding the committed WAL is exported per timeline
 *   (`spg99_control_plane_timeline_safekeepers_in_sync`).
 * A lagging copy that peers can still feed is left to the writer's walproposer, which streams it what it lacks.
 */
import type { SafekeeperServiceDefinition, TimelineStatus } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import type { TimelineServiceDefinition } from '../../gen/spg99/pageserver/v1/pageserver.js';
import type { SpgClient } from '../lib/grpc/client.js';
import { ClientError, hasStatus, Status, unavailable } from '../lib/grpc/errors.js';
import type { Logger } from '../lib/log.js';
import { formatLsn, WAL_SEGMENT_SIZE, type Lsn } from '../lib/lsn.js';
import { counter, gauge } from '../lib/metrics.js';
import type { Catalog } from './catalog.js';
import type { WriterLeases } from './leases.js';

/** A safekeeper as the control plane reaches it. */
export interface SafekeeperNodeClient {
  address: string;
  client: SpgClient<typeof SafekeeperServiceDefinition>;
}

export interface TimelineReplicasOptions {
  catalog: Catalog;
  leases: WriterLeases;
  safekeepers: SafekeeperNodeClient[];
  pageserver: SpgClient<typeof TimelineServiceDefinition>;
  log: Logger;
  /** How often every timeline's copies are checked (default 5 s). */
  intervalMs?: number;
}

const DEFAULT_INTERVAL_MS = 5_000;
const CREATE_DEADLINE_MS = 15_000;
const STATUS_DEADLINE_MS = 5_000;
/** A pull copies at most the WAL since the pageserver's durable LSN: minutes at worst. */
const PULL_DEADLINE_MS = 10 * 60_000;

const inSyncGauge = gauge(
  'spg99_control_plane_timeline_safekeepers_in_sync',
  'Safekeepers holding a timeline\'s committed WAL (within one WAL segment of the highest commit LSN), as last checked',
  ['timeline_id'],
);
const repairsTotal = counter('spg99_control_plane_timeline_repairs_total', 'Safekeeper copies of timelines repaired by the control plane, by action and outcome', [
  'action',
  'outcome',
]);

function describe(error: unknown): string {
  if (error instanceof ClientError) return `${Status[error.code]}: ${error.details}`;
  return error instanceof Error ? error.message : String(error);
}

/** One safekeeper's copy of a timeline, as last read: a status, `missing`, or `unreachable`. */
type Copy = { node: SafekeeperNodeClient; status: TimelineStatus } | { node: SafekeeperNodeClient; status: 'missing' | 'unreachable'; error?: string };

/** Whether a copy must be pulled from peers: see the file comment. */
export function needsPull(status: TimelineStatus, peers: readonly TimelineStatus[]): boolean {
  const holders = peers.filter((peer) => peer.flushLsn > 0n);
  if (holders.length === 0) return false;
  const empty = status.flushLsn === 0n && status.termHistory.length === 0;
  if (empty) return holders.some((peer) => peer.commitLsn > 0n);
  return holders.every((peer) => peer.oldestLsn > status.flushLsn);
}

/** Whether a copy holds the committed WAL: within one segment of the highest commit LSN known (WAL in flight). */
export function inSync(status: TimelineStatus, highestCommitLsn: Lsn): boolean {
  return status.flushLsn + WAL_SEGMENT_SIZE >= highestCommitLsn;
}

export class TimelineReplicas {
  readonly quorum: number;
  private loop: { stop: () => Promise<void> } | null = null;
  private readonly intervalMs: number;
  /** Copies that needed a pull on the last pass (`timeline address`). */
  private readonly suspects = new Set<string>();
  /** Timelines whose in-sync gauge is exported. */
  private readonly exported = new Set<string>();

  constructor(private readonly options: TimelineReplicasOptions) {
    this.quorum = Math.floor(options.safekeepers.length / 2) + 1;
    this.intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
  }

  /**
   * Makes sure a majority of safekeepers holds the timeline, and resolves as soon as one does; the others are left to
   * finish or to the reconciler. A timeline that never had a writer (`everWritten` false: no term was ever granted)
   * is created; one that had is never created empty again on a safekeeper that lacks it (a safekeeper that lost its
   * disk lost its promises too, and an empty copy would vote for any term): it is pulled from the peers, which
   * restores the promises. UNAVAILABLE naming each failure when no majority can be reached.
   */
  async ensureOnMajority(timelineId: string, everWritten: boolean): Promise<void> {
    const { safekeepers, log } = this.options;
    const failures: string[] = [];
    let created = 0;
    const copies = everWritten ? await this.copies(timelineId) : [];
    const holding = new Set(copies.flatMap((copy) => (typeof copy.status === 'string' ? [] : [copy.node])));
    if (holding.size >= this.quorum) {
      // A reachable safekeeper without the copy would refuse the writer's vote (NOT_FOUND): pulled now rather than at
      // the reconciler's next pass, without holding the start up.
      for (const copy of copies) {
        if (copy.status === 'missing') void this.pull(timelineId, copy.node, 'missing at a start');
      }
      return;
    }
    const startLsn = everWritten ? await this.durableLsn(timelineId) : 0n;
    await new Promise<void>((resolve, reject) => {
      for (const node of safekeepers) {
        const making = holding.has(node)
          ? Promise.resolve()
          : everWritten
            ? node.client
                .pullTimeline(
                  { timelineId, peerAddresses: safekeepers.filter((peer) => peer !== node).map((peer) => peer.address), startLsn },
                  { deadline: new Date(Date.now() + PULL_DEADLINE_MS) },
                )
                .then(() => undefined)
            : node.client.createTimeline({ timelineId }, { deadline: new Date(Date.now() + CREATE_DEADLINE_MS) });
        void making
          .then(
            () => true,
            (error: unknown) => {
              if (hasStatus(error, Status.ALREADY_EXISTS)) return true;
              failures.push(`safekeeper ${node.address}: ${describe(error)}`);
              log.warn(
                { timelineId, safekeeper: node.address, err: error },
                `could not ${everWritten ? 'pull' : 'create'} the timeline on a safekeeper; a majority is enough, the reconciler adds it later`,
              );
              return false;
            },
          )
          .then((ok) => {
            if (ok) created += 1;
            if (created >= this.quorum) resolve();
            else if (failures.length > safekeepers.length - this.quorum) {
              reject(
                unavailable(
                  `the timeline is on only ${created} of ${safekeepers.length} safekeepers (a majority, ${this.quorum}, is needed): ` +
                    `${failures.join('; ')}; bring the safekeepers back and retry`,
                ),
              );
            }
          });
      }
    });
  }

  /** Starts checking every timeline's copies in the background. */
  start(): void {
    if (this.loop) return;
    const controller = new AbortController();
    const running = (async () => {
      while (!controller.signal.aborted) {
        try {
          await this.reconcileOnce(controller.signal);
        } catch (error) {
          this.options.log.warn({ err: error }, 'safekeeper reconciler pass failed; retrying');
        }
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            controller.signal.removeEventListener('abort', done);
            resolve();
          };
          const timer = setTimeout(done, this.intervalMs);
          controller.signal.addEventListener('abort', done, { once: true });
        });
      }
    })();
    this.loop = {
      stop: async () => {
        controller.abort();
        await running;
      },
    };
  }

  async stop(): Promise<void> {
    await this.loop?.stop();
    this.loop = null;
  }

  /** The timelines the catalog knows and is not deleting: those of its endpoints' branches. */
  private async timelines(): Promise<string[]> {
    const { catalog } = this.options;
    const timelines = new Set<string>();
    for (const endpointId of await catalog.listAllEndpointIds()) {
      const endpoint = await catalog.getEndpoint(endpointId);
      if (endpoint) timelines.add(endpoint.branchId);
    }
    const live: string[] = [];
    for (const timelineId of timelines) {
      const branch = await catalog.getBranch(timelineId);
      if (branch && !branch.deleting) live.push(timelineId);
    }
    return live;
  }

  /** One pass over every timeline. */
  async reconcileOnce(signal?: AbortSignal): Promise<void> {
    const timelines = await this.timelines();
    // A deleted timeline's gauge goes with it.
    for (const gone of [...this.exported].filter((timelineId) => !timelines.includes(timelineId))) {
      inSyncGauge.remove({ timeline_id: gone });
      this.exported.delete(gone);
    }
    for (const timelineId of timelines) this.exported.add(timelineId);
    for (const timelineId of timelines) {
      if (signal?.aborted) return;
      try {
        await this.reconcileTimeline(timelineId, signal);
      } catch (error) {
        this.options.log.warn({ timelineId, err: error }, 'could not check the timeline\'s safekeepers; retrying');
      }
    }
  }

  /** The copies of one timeline, as each safekeeper answers now. */
  async copies(timelineId: string, signal?: AbortSignal): Promise<Copy[]> {
    return Promise.all(
      this.options.safekeepers.map(async (node): Promise<Copy> => {
        try {
          const { status } = await node.client.getTimelineStatus({ timelineId }, { deadline: new Date(Date.now() + STATUS_DEADLINE_MS), signal });
          return status ? { node, status } : { node, status: 'unreachable', error: 'no status in the answer' };
        } catch (error) {
          return hasStatus(error, Status.NOT_FOUND) ? { node, status: 'missing' } : { node, status: 'unreachable', error: describe(error) };
        }
      }),
    );
  }

  /** Checks one timeline's copies, exports how many are in sync, and repairs the missing and hopeless ones. */
  async reconcileTimeline(timelineId: string, signal?: AbortSignal): Promise<void> {
    const copies = await this.copies(timelineId, signal);
    const statuses = copies.flatMap((copy) => (typeof copy.status === 'string' ? [] : [copy.status]));
    // Never created on any safekeeper (an endpoint never started): nothing to repair yet.
    if (statuses.length === 0) {
      inSyncGauge.set({ timeline_id: timelineId }, 0);
      return;
    }
    const highestCommit = statuses.reduce((highest, status) => (status.commitLsn > highest ? status.commitLsn : highest), 0n);
    inSyncGauge.set({ timeline_id: timelineId }, statuses.filter((status) => inSync(status, highestCommit)).length);
    const anyWal = statuses.some((status) => status.flushLsn > 0n);
    for (const copy of copies) {
      if (copy.status === 'unreachable') continue;
      const peers = statuses.filter((status) => status !== copy.status);
      if (copy.status === 'missing') {
        if (anyWal || (await this.everWritten(timelineId))) await this.pull(timelineId, copy.node, 'missing', signal);
        else await this.create(timelineId, copy.node);
      } else if (this.stale(timelineId, copy.node, needsPull(copy.status, peers))) {
        await this.pull(timelineId, copy.node, copy.status.flushLsn === 0n ? 'empty' : `behind (its WAL ends at ${formatLsn(copy.status.flushLsn)})`, signal);
      }
    }
  }

  /**
   * True when a copy needed a pull on two passes in a row: a new timeline's copies are empty for a moment while its
   * first writer starts, and a pull then would only race the writer.
   */
  private stale(timelineId: string, node: SafekeeperNodeClient, needed: boolean): boolean {
    const key = `${timelineId} ${node.address}`;
    if (!needed) {
      this.suspects.delete(key);
      return false;
    }
    if (this.suspects.has(key)) return true;
    this.suspects.add(key);
    return false;
  }

  private async create(timelineId: string, node: SafekeeperNodeClient): Promise<void> {
    try {
      await node.client.createTimeline({ timelineId }, { deadline: new Date(Date.now() + CREATE_DEADLINE_MS) });
      repairsTotal.inc({ action: 'create', outcome: 'done' });
      this.options.log.info({ timelineId, safekeeper: node.address }, 'created a timeline the safekeeper had missed');
    } catch (error) {
      if (hasStatus(error, Status.ALREADY_EXISTS)) return;
      repairsTotal.inc({ action: 'create', outcome: 'failed' });
      this.options.log.warn({ timelineId, safekeeper: node.address, err: error }, 'could not create a timeline the safekeeper had missed; retrying later');
    }
  }

  /** Whether a writer term was ever granted on the timeline (then its copies may hold promises, even without WAL). */
  async everWritten(timelineId: string): Promise<boolean> {
    return (await this.options.leases.get(timelineId)).latestTerm > 0n;
  }

  /** What the pageserver made durable in object storage (0 when it cannot say): where a pull's WAL begins. */
  private async durableLsn(timelineId: string): Promise<Lsn> {
    try {
      const { timeline } = await this.options.pageserver.describeTimeline({ timelineId }, { deadline: new Date(Date.now() + STATUS_DEADLINE_MS) });
      return timeline?.remoteConsistentLsn ?? 0n;
    } catch {
      return 0n;
    }
  }

  private async pull(timelineId: string, node: SafekeeperNodeClient, why: string, signal?: AbortSignal): Promise<void> {
    const { log } = this.options;
    const peerAddresses = this.options.safekeepers.filter((peer) => peer !== node).map((peer) => peer.address);
    const startLsn = await this.durableLsn(timelineId);
    log.info({ timelineId, safekeeper: node.address, why, startLsn: formatLsn(startLsn) }, 'pulling the timeline onto a safekeeper from its peers');
    try {
      const answer = await node.client.pullTimeline({ timelineId, peerAddresses, startLsn }, { deadline: new Date(Date.now() + PULL_DEADLINE_MS), signal });
      repairsTotal.inc({ action: 'pull', outcome: 'done' });
      log.info(
        { timelineId, safekeeper: node.address, donor: answer.donorAddress, copiedBytes: String(answer.copiedBytes), flushLsn: formatLsn(answer.status?.flushLsn ?? 0n) },
        'timeline pulled onto the safekeeper',
      );
    } catch (error) {
      // The copy caught up meanwhile (FAILED_PRECONDITION), or too few peers answer: looked at again next pass.
      repairsTotal.inc({ action: 'pull', outcome: hasStatus(error, Status.FAILED_PRECONDITION) ? 'not-needed' : 'failed' });
      log.warn({ timelineId, safekeeper: node.address, err: error }, 'could not pull the timeline onto the safekeeper; retrying later');
    }
  }
}

/**
 * The pageserver's gRPC services: TimelineService (management) and PageService (reads and basebackups).
 * Validation at the edge; the Pageserver does the work.
 */
import type {
  BasebackupResponse,
  GetPageRequest,
  GetPagesResponse,
  ReadLsn,
  RelTag,
  PageServiceImplementation,
  SnapshotInfo,
  TimelineInfo,
  TimelineServiceImplementation,
} from '../../gen/spg99/pageserver/v1/pageserver.js';
import { BasebackupMode, ForkNumber, TimelineState } from '../../gen/spg99/pageserver/v1/pageserver.js';
import { AsyncQueue } from '../lib/async.js';
import type { Duration } from '../../gen/google/protobuf/duration.js';
import type { RelFork } from './pages.js';
import { beforeDeadline, type ServerContextExtension } from '../lib/grpc/server.js';
import { invalidArgument, notFound, ServerError, Status } from '../lib/grpc/errors.js';
import { echo, TIMELINE_ID_PATTERN } from '../lib/ids.js';
import { formatLsn, isValidLsn, type Lsn } from '../lib/lsn.js';
import { parseHostPort } from '../lib/config.js';
import type { SnapshotIndex } from './layout.js';
import type { Pageserver } from './pageserver.js';
import type { Timeline } from './timeline.js';

const TAR_CHUNK_BYTES = 1024 * 1024;

function timelineId(value: string, field = 'timeline_id'): string {
  if (!value) throw invalidArgument(`${field} is required: tl- followed by 32 lowercase hex digits`);
  if (!TIMELINE_ID_PATTERN.test(value)) throw invalidArgument(`${field} ${echo(value)} is malformed: expected tl- followed by 32 lowercase hex digits`);
  return value;
}

function lsnArgument(value: bigint, field: string): Lsn {
  if (!isValidLsn(value)) throw invalidArgument(`${field} ${value} is not an LSN`);
  return value;
}

function durationMs(duration: Duration | undefined, field: string): number {
  if (!duration) throw invalidArgument(`${field} is required: a duration`);
  const ms = Number(duration.seconds) * 1000 + Math.floor(duration.nanos / 1e6);
  if (!Number.isFinite(ms) || ms < 0) throw invalidArgument(`${field} must not be negative`);
  return ms;
}

function unimplemented(what: string): ServerError {
  return new ServerError(Status.UNIMPLEMENTED, `${what} is not implemented by this pageserver yet`);
}

export function snapshotInfo(snapshot: SnapshotIndex): SnapshotInfo {
  return {
    lsn: BigInt(snapshot.lsn),
    redoLsn: BigInt(snapshot.redoLsn),
    checkpointLsn: BigInt(snapshot.checkpointLsn),
    minRecoveryLsn: BigInt(snapshot.minRecoveryLsn),
    pageCount: BigInt(snapshot.pageCount),
    sizeBytes: BigInt(snapshot.pageCount * 8192 + snapshot.filesBytes),
    createdAt: new Date(snapshot.createdAt),
  };
}

export function timelineInfo(pageserver: Pageserver, timeline: Timeline): TimelineInfo {
  return {
    timelineId: timeline.id,
    tenantId: timeline.meta.tenantId,
    ancestorTimelineId: timeline.meta.ancestorTimelineId ?? '',
    ancestorLsn: timeline.ancestorLsn,
    pgMajorVersion: timeline.meta.pgMajorVersion,
    state: timeline.broken ? TimelineState.TIMELINE_STATE_BROKEN : TimelineState.TIMELINE_STATE_ACTIVE,
    stateReason: timeline.broken,
    startLsn: timeline.startLsn,
    lastRecordLsn: timeline.lastRecordLsn,
    prevRecordLsn: timeline.prevRecordLsn,
    remoteConsistentLsn: timeline.durableLsn,
    gcCutoffLsn: timeline.gcCutoffLsn,
    snapshots: timeline.snapshots.map(snapshotInfo),
    leases: timeline.state.leases.map((lease) => ({ timelineId: timeline.id, lsn: BigInt(lease.lsn), expiresAt: new Date(lease.expiresAt) })),
    logicalSizeBytes: BigInt(pageserver.logicalSize(timeline)),
    physicalSizeBytes: BigInt(pageserver.physicalSize(timeline)),
    safekeeperAddresses: timeline.state.walSources,
    walSourceAddress: timeline.walSourceAddress,
    replayerRunning: pageserver.replayerRunning(timeline.id),
    createdAt: new Date(timeline.meta.createdAt),
  };
}

export function timelineService(pageserver: Pageserver): TimelineServiceImplementation<ServerContextExtension> {
  return {
    async createTimeline(request) {
      const id = timelineId(request.timelineId);
      if (request.importSource) throw unimplemented('creating a timeline by import');
      const initdb = request.initdb ?? { superuserName: '', locale: '', dataChecksums: false };
      const timeline = await pageserver.createTimeline({
        timelineId: id,
        tenantId: request.tenantId,
        pgMajorVersion: request.pgMajorVersion,
        superuser: initdb.superuserName || 'postgres',
        dataChecksums: initdb.dataChecksums,
        locale: initdb.locale,
      });
      return { timeline: timelineInfo(pageserver, timeline) };
    },

    async branchTimeline(request, context) {
      const id = timelineId(request.timelineId);
      const ancestor = timelineId(request.ancestorTimelineId, 'ancestor_timeline_id');
      const point = request.ancestorTime ? { time: request.ancestorTime } : { lsn: lsnArgument(request.ancestorLsn ?? 0n, 'ancestor_lsn') };
      const timeline = await pageserver.branchTimeline(id, ancestor, point, context.signal, beforeDeadline(context)?.atMs);
      return { timeline: timelineInfo(pageserver, timeline) };
    },

    async deleteTimeline(request) {
      await pageserver.deleteTimeline(timelineId(request.timelineId));
      return {};
    },

    async describeTimeline(request) {
      return { timeline: timelineInfo(pageserver, pageserver.get(timelineId(request.timelineId))) };
    },

    async listTimelines(request) {
      const timelines = [...pageserver.timelines.values()].filter(
        (timeline) => !timeline.deleted && (!request.tenantId || timeline.meta.tenantId === request.tenantId),
      );
      return { timelines: timelines.map((timeline) => timelineInfo(pageserver, timeline)) };
    },

    async waitForLsn(request, context) {
      const timeline = pageserver.get(timelineId(request.timelineId));
      const lsn = lsnArgument(request.lsn, 'lsn');
      return { lastRecordLsn: await timeline.waitForLsn(lsn, context.signal, beforeDeadline(context)?.atMs) };
    },

    async createLsnLease(request) {
      const id = timelineId(request.timelineId);
      const lease = await pageserver.createLease(id, lsnArgument(request.lsn, 'lsn'), durationMs(request.ttl, 'ttl'), false);
      return { lease: { timelineId: id, lsn: lease.lsn, expiresAt: lease.expiresAt } };
    },

    async renewLsnLease(request) {
      const id = timelineId(request.timelineId);
      const lease = await pageserver.createLease(id, lsnArgument(request.lsn, 'lsn'), durationMs(request.ttl, 'ttl'), true);
      return { lease: { timelineId: id, lsn: lease.lsn, expiresAt: lease.expiresAt } };
    },

    async runGc(request) {
      const id = request.timelineId ? timelineId(request.timelineId) : null;
      const retention = request.retention ? durationMs(request.retention, 'retention') : pageserver.gcRetentionMs;
      const outcomes = await pageserver.runGc(id, retention);
      return {
        results: outcomes.map((outcome) => ({
          timelineId: outcome.timelineId,
          gcCutoffLsn: outcome.gcCutoffLsn,
          removedSnapshotLsns: outcome.removedSnapshotLsns,
          removedWalBytes: BigInt(outcome.removedWalBytes),
          removedBytes: BigInt(outcome.removedBytes),
        })),
      };
    },

    async createSnapshot(request, context) {
      const id = timelineId(request.timelineId);
      const snapshot = await pageserver.createSnapshot(id, lsnArgument(request.lsn, 'lsn'), context.signal, beforeDeadline(context)?.atMs);
      return { snapshot: snapshotInfo(snapshot) };
    },

    async setWalSource(request) {
      const timeline = pageserver.get(timelineId(request.timelineId));
      for (const address of request.safekeeperAddresses) parseHostPort(address, 'safekeeper_addresses');
      timeline.setWalSources(request.safekeeperAddresses);
      await timeline.persistState();
      return { timeline: timelineInfo(pageserver, timeline) };
    },
  };
}

export function pageService(pageserver: Pageserver): PageServiceImplementation<ServerContextExtension> {
  return {
    async getPage(request, context) {
      return { pageImage: await readPage(pageserver, request, context.signal, beforeDeadline(context)?.atMs) };
    },

    async *getPages(requests, context) {
      const output = new AsyncQueue<GetPagesResponse>();
      let outstanding = 0;
      let inputDone = false;
      void (async () => {
        for await (const request of requests) {
          if (!request.page) throw invalidArgument(`request ${request.requestId} has no page`);
          outstanding++;
          readPage(pageserver, request.page, context.signal)
            .then((pageImage) => output.push({ requestId: request.requestId, page: { pageImage } }))
            .catch((error: unknown) => {
              const code = error instanceof ServerError ? error.code : Status.INTERNAL;
              output.push({ requestId: request.requestId, error: { code, message: error instanceof ServerError ? error.details : (error as Error).message } });
            })
            .finally(() => {
              outstanding--;
              if (inputDone && outstanding === 0) output.end();
            });
        }
        inputDone = true;
        if (outstanding === 0) output.end();
      })().catch((error: unknown) => output.fail(error));
      for await (const response of output) yield response;
    },

    async getRelSize(request, context) {
      const { timeline, lsn } = await readTarget(pageserver, request.timelineId, request.readLsn, context.signal, beforeDeadline(context)?.atMs);
      const blocks = await pageserver.pages.relSize(timeline, lsn, relFork(request.rel), context.signal);
      if (blocks === undefined) throw notFound(`the relation fork does not exist in ${timeline.id} at ${formatLsn(lsn)}`);
      return { blockCount: blocks };
    },

    async getRelExists(request, context) {
      const { timeline, lsn } = await readTarget(pageserver, request.timelineId, request.readLsn, context.signal, beforeDeadline(context)?.atMs);
      return { exists: (await pageserver.pages.relSize(timeline, lsn, relFork(request.rel), context.signal)) !== undefined };
    },

    async getDbSize(request, context) {
      const { timeline, lsn } = await readTarget(pageserver, request.timelineId, request.readLsn, context.signal, beforeDeadline(context)?.atMs);
      if (request.dbNode === 0) throw invalidArgument('db_node is required: the database OID');
      return { sizeBytes: BigInt(await pageserver.pages.dbSize(timeline, lsn, request.dbNode, context.signal)) };
    },

    async *basebackup(request, context): AsyncIterable<BasebackupResponse> {
      const id = timelineId(request.timelineId);
      const thin = request.mode === BasebackupMode.BASEBACKUP_MODE_THIN;
      if (request.mode !== BasebackupMode.BASEBACKUP_MODE_FULL && !thin && request.mode !== BasebackupMode.BASEBACKUP_MODE_UNSPECIFIED) {
        throw invalidArgument(`mode ${request.mode} is not a basebackup mode: use FULL or THIN`);
      }
      const backup = await pageserver.basebackup(id, lsnArgument(request.lsn, 'lsn'), { thin, replica: request.replica }, context.signal, beforeDeadline(context)?.atMs);
      yield {
        metadata: {
          lsn: backup.lsn,
          prevRecordLsn: backup.prevRecordLsn,
          snapshotLsn: BigInt(backup.snapshot.lsn),
          redoLsn: BigInt(backup.snapshot.redoLsn),
          walBytes: BigInt(backup.walBytes),
          tarBytes: BigInt(backup.tarBytes),
          omittedBytes: BigInt(backup.omittedBytes),
          logicalSizeBytes: BigInt(backup.logicalBytes),
          systemId: backup.systemId,
          pgMajorVersion: backup.pgMajorVersion,
        },
      };
      for (let first = 0; first < backup.omitted.length; first += 1000) {
        yield {
          omittedRelations: {
            relations: backup.omitted.slice(first, first + 1000).map((relation) => ({ rel: relTagOf(relation.path), blockCount: relation.blocks })),
          },
        };
      }
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      for await (const chunk of backup.chunks()) {
        let rest = chunk;
        while (rest.length > 0) {
          const take = Math.min(rest.length, TAR_CHUNK_BYTES - pendingBytes);
          pending.push(rest.subarray(0, take));
          pendingBytes += take;
          rest = rest.subarray(take);
          if (pendingBytes === TAR_CHUNK_BYTES) {
            yield { tarChunk: Buffer.concat(pending) };
            pending = [];
            pendingBytes = 0;
          }
        }
      }
      if (pendingBytes > 0) yield { tarChunk: Buffer.concat(pending) };
    },
  };
}

/** The timeline and the LSN a read is made at, once the timeline has ingested what the read needs. */
async function readTarget(
  pageserver: Pageserver,
  id: string,
  readLsn: ReadLsn | undefined,
  signal: AbortSignal,
  giveUpAtMs?: number,
): Promise<{ timeline: Timeline; lsn: Lsn }> {
  const timeline = pageserver.get(timelineId(id));
  if (!readLsn || readLsn.requestLsn === 0n) throw invalidArgument('read_lsn.request_lsn is required: the LSN to read at');
  const requested = lsnArgument(readLsn.requestLsn, 'read_lsn.request_lsn');
  const notModifiedSince = lsnArgument(readLsn.notModifiedSinceLsn, 'read_lsn.not_modified_since_lsn');
  if (notModifiedSince > requested) {
    throw invalidArgument(`not_modified_since_lsn ${formatLsn(notModifiedSince)} is above request_lsn ${formatLsn(requested)}: it must be at or below it`);
  }
  const needed = notModifiedSince === 0n ? requested : notModifiedSince;
  await timeline.waitForLsn(needed, signal, giveUpAtMs);
  // What was read did not change after `needed`: reading at what is ingested (when below the request) is the same.
  return { timeline, lsn: requested <= timeline.lastRecordLsn ? requested : timeline.lastRecordLsn };
}

function relFork(rel: RelTag | undefined): RelFork {
  if (!rel) throw invalidArgument('rel is required: the relation fork to read');
  if (rel.fork === ForkNumber.FORK_NUMBER_UNSPECIFIED || rel.fork > ForkNumber.FORK_NUMBER_INIT) {
    throw invalidArgument(`rel.fork ${rel.fork} is not a fork: use MAIN, FSM, VISIBILITY_MAP or INIT`);
  }
  if (rel.relNode === 0) throw invalidArgument('rel.rel_node is required: the relation file number');
  if (rel.spcNode !== 1663 && rel.spcNode !== 1664) {
    throw invalidArgument(`rel.spc_node ${rel.spcNode} is not supported: only pg_default (1663) and pg_global (1664)`);
  }
  return { spcOid: rel.spcNode, dbOid: rel.dbNode, relNumber: rel.relNode, forkNumber: rel.fork - 1 };
}

async function readPage(pageserver: Pageserver, request: GetPageRequest, signal: AbortSignal, giveUpAtMs?: number): Promise<Buffer> {
  const { timeline, lsn } = await readTarget(pageserver, request.timelineId, request.readLsn, signal, giveUpAtMs);
  return pageserver.pages.getPage(timeline, lsn, relFork(request.rel), request.blockNumber, signal);
}

function relTagOf(path: string) {
  const match = /^base\/(\d+)\/(\d+)(?:_(fsm|vm))?(?:\.\d+)?$/.exec(path);
  const fork = match?.[3] === 'fsm' ? 2 : match?.[3] === 'vm' ? 3 : 1;
  return { spcNode: 1663, dbNode: Number(match?.[1] ?? 0), relNode: Number(match?.[2] ?? 0), fork };
}

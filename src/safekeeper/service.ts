/**
 * The SafekeeperService gRPC implementation: validation at the edge (model.ts), then the timeline.
 */
import type { SafekeeperServiceImplementation, AppendRequest, AppendResponse, StreamWalResponse } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import type { ServerContext, ServerContextExtension } from '../lib/grpc/server.js';
import { failedPrecondition, invalidArgument, notFound, unavailable } from '../lib/grpc/errors.js';
import { AsyncQueue } from '../lib/async.js';
import { counter, histogram } from '../lib/metrics.js';
import { formatLsn, type Lsn } from '../lib/lsn.js';
import type { Safekeeper } from './safekeeper.js';
import type { AppendSession } from './timeline.js';
import { pullTimeline } from './timeline-pull.js';
import { parseProposerId, parseTerm, parseTermHistory, parseTimelineId, toTimelineStatus } from './model.js';

/** The largest WAL payload one Append or StreamWal message carries. */
export const MAX_WAL_MESSAGE_BYTES = 128 * 1024;

const appendedBytes = counter('spg99_safekeeper_appended_bytes_total', 'WAL bytes accepted from proposers');
const servedBytes = counter('spg99_safekeeper_served_bytes_total', 'WAL bytes streamed to consumers');
const flushSeconds = histogram('spg99_safekeeper_append_flush_seconds', 'Time from receiving WAL to answering it is fsynced');

function walRemoved(position: Lsn, oldestLsn: Lsn): Error {
  return failedPrecondition(
    `WAL at ${formatLsn(position)} is no longer on this safekeeper (oldest held: ${formatLsn(oldestLsn)}); read older WAL from object storage`,
  );
}

/** Where the framed Append transport listens (set once it does; empty: none). */
export interface AppendSocketInfo {
  address: string;
}

/** Builds the service over a safekeeper's timelines. */
export function safekeeperService(
  safekeeper: Safekeeper,
  appendSocket: AppendSocketInfo = { address: '' },
): SafekeeperServiceImplementation<ServerContextExtension> {
  return {
    async createTimeline(request, context) {
      const timelineId = parseTimelineId(request.timelineId);
      const timeline = await safekeeper.create(timelineId);
      context.log.info({ timelineId }, 'created timeline');
      return { status: toTimelineStatus(timeline.snapshot()) };
    },

    async deleteTimeline(request) {
      await safekeeper.delete(parseTimelineId(request.timelineId));
      return {};
    },

    async getTimelineStatus(request) {
      return { status: toTimelineStatus(safekeeper.get(parseTimelineId(request.timelineId)).snapshot()) };
    },

    async listTimelines() {
      return { timelines: safekeeper.list().map((timeline) => toTimelineStatus(timeline.snapshot())) };
    },

    async vote(request, context) {
      const timeline = safekeeper.get(parseTimelineId(request.timelineId));
      const term = parseTerm(request.term);
      const snapshot = await timeline.vote(term, parseProposerId(request.proposerId));
      context.log.info({ timelineId: timeline.timelineId, term, proposerId: request.proposerId }, 'vote given');
      return { status: toTimelineStatus(snapshot), appendSocketAddress: appendSocket.address };
    },

    async *append(requests: AsyncIterable<AppendRequest>, context: ServerContext) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      if (first.done) return;
      const start = first.value.start;
      if (!start) throw invalidArgument('the first Append request must be `start` (the elected proposer\'s greeting)');
      const timeline = safekeeper.get(parseTimelineId(start.timelineId));
      const term = parseTerm(start.term);
      const proposerId = parseProposerId(start.proposerId);
      const output = new AsyncQueue<AppendResponse>();
      const session: AppendSession = { term, end: (error) => output.fail(error) };
      timeline.openSession(session, proposerId);
      const onAbort = () => output.fail(context.signal.reason);
      context.signal.addEventListener('abort', onAbort);
      try {
        const started = await timeline.startAppend({
          term,
          proposerId,
          termHistory: parseTermHistory(start.termHistory),
          startStreamingAt: start.startStreamingAt,
          systemId: start.systemId,
        });
        context.log.info(
          { timelineId: timeline.timelineId, term, startStreamingAt: formatLsn(start.startStreamingAt), flushLsn: formatLsn(started.flushLsn) },
          'append stream started',
        );
        output.push({ term, flushLsn: started.flushLsn, commitLsn: started.commitLsn });
        let answered: Lsn = started.flushLsn;
        void (async () => {
          for (;;) {
            const next = await iterator.next();
            if (next.done) break;
            const wal = next.value.wal;
            if (!wal) throw invalidArgument('after `start`, Append requests must be `wal`');
            if (wal.walData.length > MAX_WAL_MESSAGE_BYTES) {
              throw invalidArgument(`wal_data of ${wal.walData.length} bytes is over the limit of ${MAX_WAL_MESSAGE_BYTES}: split it`);
            }
            const received = flushSeconds.startTimer();
            timeline.appendWal(term, proposerId, wal.beginLsn, wal.walData);
            appendedBytes.inc(wal.walData.length);
            const commitLsn = wal.commitLsn;
            timeline.learnCommit(commitLsn);
            timeline.learnPeerHorizon(wal.peerHorizonLsn);
            timeline
              .waitFlushed()
              .then(() => {
                received();
                timeline.learnCommit(commitLsn);
                if (timeline.flushLsn > answered || wal.walData.length === 0) {
                  answered = timeline.flushLsn;
                  output.push({ term, flushLsn: timeline.flushLsn, commitLsn: timeline.commitLsn });
                }
              })
              .catch((error: unknown) => output.fail(error));
          }
          output.end();
        })().catch((error: unknown) => output.fail(error));
        for await (const response of output) yield response;
      } finally {
        context.signal.removeEventListener('abort', onAbort);
        timeline.closeSession(session);
      }
    },

    async *streamWal(request, context: ServerContext) {
      const timeline = safekeeper.get(parseTimelineId(request.timelineId));
      let position = request.startLsn;
      const endLsn = request.endLsn;
      if (position === 0n) throw invalidArgument('start_lsn is required: the LSN to stream WAL from');
      if (endLsn !== 0n && endLsn < position) {
        throw invalidArgument(`end_lsn ${formatLsn(endLsn)} is below start_lsn ${formatLsn(position)}`);
      }
      if (position < timeline.oldestLsn) throw walRemoved(position, timeline.oldestLsn);
      let lastSent = Date.now();
      for (;;) {
        if (timeline.isDeleted) throw notFound(`timeline ${timeline.timelineId} was deleted`);
        // A pull replaced this copy (timeline-pull.ts): the reader reconnects to the new one.
        if (safekeeper.find(timeline.timelineId) !== timeline) throw unavailable(`timeline ${timeline.timelineId} was replaced by a copy pulled from the peers; reconnect`);
        if (endLsn !== 0n && position >= endLsn) return;
        // A consumer's progress report may have removed WAL this (slower) stream still needed.
        if (position < timeline.oldestLsn) throw walRemoved(position, timeline.oldestLsn);
        const data = timeline.readWal(position, endLsn, request.includeUncommitted, MAX_WAL_MESSAGE_BYTES);
        if (data.length > 0) {
          const response: StreamWalResponse = {
            beginLsn: position,
            walData: data,
            commitLsn: timeline.commitLsn,
            flushLsn: timeline.flushLsn,
          };
          position += BigInt(data.length);
          servedBytes.inc(data.length);
          lastSent = Date.now();
          yield response;
          continue;
        }
        if (Date.now() - lastSent >= 1000) {
          lastSent = Date.now();
          yield { beginLsn: position, walData: Buffer.alloc(0), commitLsn: timeline.commitLsn, flushLsn: timeline.flushLsn };
        }
        await timeline.changed.wait(context.signal, 1000);
      }
    },

    async pullTimeline(request, context) {
      const timelineId = parseTimelineId(request.timelineId);
      const outcome = await pullTimeline(
        { dataDir: safekeeper.dataDir, find: (id) => safekeeper.find(id), replace: (id, install) => safekeeper.replace(id, install) },
        { timelineId, peerAddresses: request.peerAddresses, startLsn: request.startLsn },
        context.log,
        context.signal,
      );
      return { status: toTimelineStatus(outcome.timeline.snapshot()), donorAddress: outcome.donorAddress, copiedBytes: outcome.copiedBytes };
    },

    async reportConsumerProgress(request) {
      const timeline = safekeeper.get(parseTimelineId(request.timelineId));
      if (!request.consumerId) throw invalidArgument('consumer_id is required: who reports (e.g. pageserver-1)');
      if (request.durableLsn > timeline.commitLsn) {
        throw invalidArgument(
          `durable_lsn ${formatLsn(request.durableLsn)} is beyond the commit LSN ${formatLsn(timeline.commitLsn)}: a consumer cannot hold WAL not yet committed`,
        );
      }
      return { status: toTimelineStatus(timeline.reportConsumer(request.durableLsn)) };
    },
  };
}

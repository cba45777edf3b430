/**
 * The safekeeper's framed Append transport (docs/rfcs/2026-11-26-append-socket.md): the same Append semantics as
 * the gRPC stream, and bad frames refused without harm to anyone else.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { expect } from 'chai';
import { AsyncQueue } from '../../src/lib/async.js';
import { appendOverSocket } from '../../src/lib/append-socket.js';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import type { AppendRequest, AppendResponse } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { HealthCheckResponse_ServingStatus, grpcHealthStatus, useHarness } from '../harness/process.js';
import { startSafekeeperWithTimeline, type SafekeeperNode } from '../harness/safekeepers.js';
import { openChannel } from '../../src/lib/grpc/client.js';
import { computeToken } from '../harness/credentials.js';

const BASE = 0x1000000n;

/** Sends raw bytes to `address` and answers what comes back until the server closes. */
async function rawExchange(address: string, bytes: Buffer): Promise<Buffer> {
  const [host, port] = address.split(':');
  const socket = net.connect({ host, port: Number(port) });
  await once(socket, 'connect');
  const received: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => received.push(chunk));
  socket.write(bytes);
  await once(socket, 'close');
  return Buffer.concat(received);
}

/** A frame of `body` as the client sends it: `[u32 length][body]`. */
function clientFrame(body: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

/** The error frame `[u32 length][1][u32 code][details]` in `bytes`. */
function errorFrame(bytes: Buffer): { code: number; details: string } {
  expect(bytes.length, 'an error frame').to.be.greaterThan(9);
  expect(bytes[4], 'frame kind').to.equal(1);
  return { code: bytes.readUInt32BE(5), details: bytes.subarray(9, 4 + bytes.readUInt32BE(0)).toString('utf8') };
}

describe('framed Append transport of the safekeeper', function () {
  this.timeout(60_000);
  const harness = useHarness();
  let node: SafekeeperNode;
  let timelineId: string;
  let address: string;

  beforeEach(async () => {
    ({ node, timelineId } = await startSafekeeperWithTimeline(harness()));
    const vote = await node.client.vote({ timelineId, term: 2n, proposerId: 'p2' });
    address = vote.appendSocketAddress;
    expect(address).to.match(/^127\.0\.0\.1:\d+$/);
  });

  async function exchange(requests: AppendRequest[], untilFlush: bigint): Promise<{ responses: AppendResponse[]; error?: unknown }> {
    const queue = new AsyncQueue<AppendRequest>();
    for (const request of requests) queue.push(request);
    const controller = new AbortController();
    const responses: AppendResponse[] = [];
    try {
      for await (const response of appendOverSocket(address, queue, controller.signal, computeToken({ timelineId, computeId: 'p2' }))) {
        responses.push(response);
        if (response.flushLsn >= untilFlush) break;
      }
      return { responses };
    } catch (error) {
      return { responses, error };
    } finally {
      controller.abort();
      queue.end();
    }
  }

  const start = (term: bigint, proposerId: string): AppendRequest => ({
    start: { timelineId, term, proposerId, termHistory: [{ term, startLsn: BASE }], startStreamingAt: BASE, systemId: 42n },
  });

  it('appends WAL and answers the fsynced flush LSN, as the gRPC stream does', async () => {
    const wal = { wal: { beginLsn: BASE, walData: randomBytes(1000), commitLsn: 0n, peerHorizonLsn: 0n } };
    const { responses, error } = await exchange([start(2n, 'p2'), wal], BASE + 1000n);
    expect(error).to.equal(undefined);
    expect(responses.at(-1)?.flushLsn).to.equal(BASE + 1000n);
    expect((await node.status(timelineId)).flushLsn).to.equal(BASE + 1000n);
  });

  it('refuses a superseded term with ABORTED, naming the newer term', async () => {
    const { error } = await exchange([start(1n, 'p1')], BASE);
    expect(error).to.be.instanceOf(ClientError);
    expect((error as ClientError).code).to.equal(Status.ABORTED);
    expect((error as ClientError).details).to.match(/term 1 was superseded by term 2/);
  });

  it('answers malformed and oversized frames with INVALID_ARGUMENT and keeps serving', async () => {
    // After a valid credential frame (without one, nothing is decoded: see internal-auth.test.ts).
    const credential = clientFrame(Buffer.from(computeToken({ timelineId, computeId: 'p2' })));
    const garbage = Buffer.concat([credential, Buffer.from([0, 0, 0, 6]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])]);
    const malformed = errorFrame(await rawExchange(address, garbage));
    expect(malformed.code).to.equal(Status.INVALID_ARGUMENT);
    const oversized = errorFrame(await rawExchange(address, Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])));
    expect(oversized.code).to.equal(Status.INVALID_ARGUMENT);
    expect(oversized.details).to.contain('over the limit');
    const channel = openChannel(node.address);
    try {
      expect(await grpcHealthStatus(channel)).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      channel.close();
    }
    const wal = { wal: { beginLsn: BASE, walData: randomBytes(100), commitLsn: 0n, peerHorizonLsn: 0n } };
    const { error } = await exchange([start(2n, 'p2'), wal], BASE + 100n);
    expect(error).to.equal(undefined);
  });
});

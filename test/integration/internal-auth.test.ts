/**
 * Zero trust inside the platform (docs/security.md): every internal gRPC server and the framed Append socket refuse
 * callers without a credential before reading their request; a compute's credential reaches its own timeline only;
 * a gateway's cannot repoint endpoints (the fake-backend ClientKey theft) nor act as the control plane; Redis asks
 * for a password; and the files the platform writes are private to its OS user.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { once } from 'node:events';
import { generateKeyPairSync } from 'node:crypto';
import { expect } from 'chai';
import { createClient, Metadata, type Channel, type CompatServiceDefinition } from 'nice-grpc';
import { ClientError, Status } from '../../src/lib/grpc/errors.js';
import { openChannel } from '../../src/lib/grpc/client.js';
import { CREDENTIAL_METADATA, SelfSigner } from '../../src/lib/grpc/credentials.js';
import { pingRedis } from '../../src/lib/redis.js';
import { ScramClientSession } from '../../src/lib/scram.js';
import { postgresOsUser } from '../../src/lib/pg/os-user.js';
import { AppendRequest, SafekeeperServiceDefinition } from '../../gen/spg99/safekeeper/v1/safekeeper.js';
import { PageServiceDefinition, TimelineServiceDefinition, BasebackupMode } from '../../gen/spg99/pageserver/v1/pageserver.js';
import { ProvisionerServiceDefinition } from '../../gen/spg99/provisioner/v1/provisioner.js';
import { GatewayAdminServiceDefinition } from '../../gen/spg99/gateway/v1/gateway.js';
import { ComputeServiceDefinition } from '../../gen/spg99/compute/v1/compute.js';
import { ControlPlaneInternalServiceDefinition } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { startGatewayPlatform } from '../harness/platform.js';
import { computeToken, tokenOf } from '../harness/credentials.js';
import { useHarness } from '../harness/process.js';
import { newTimelineId } from '../harness/safekeepers.js';

/** The gRPC error of `call` (fails the test when it succeeds). */
async function failure(call: Promise<unknown> | AsyncIterable<unknown>): Promise<ClientError> {
  const outcome = await (async () => {
    if (Symbol.asyncIterator in Object(call)) {
      for await (const _ of call as AsyncIterable<unknown>) break;
    } else {
      await call;
    }
  })().then(
    () => null,
    (error: unknown) => error,
  );
  if (!(outcome instanceof ClientError)) throw new Error(`expected a gRPC error, got ${outcome === null ? 'success' : String(outcome)}`);
  return outcome;
}

/** A client that sends `token` (none: no credential at all), without the process's own identity. */
function clientWith<D extends CompatServiceDefinition>(definition: D, channel: Channel, token?: string) {
  return createClient(definition, channel, token === undefined ? {} : { '*': { metadata: Metadata({ [CREDENTIAL_METADATA]: token }) } });
}

/** Sends the client frames of the framed Append transport and answers the server's error frame. */
async function framedAppend(address: string, frames: Buffer[]): Promise<{ code: number; details: string }> {
  const [host, port] = address.split(':');
  const socket = net.connect({ host, port: Number(port) });
  await once(socket, 'connect');
  const received: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => received.push(chunk));
  for (const body of frames) {
    const header = Buffer.alloc(4);
    header.writeUInt32BE(body.length, 0);
    socket.write(Buffer.concat([header, body]));
  }
  await once(socket, 'close');
  const bytes = Buffer.concat(received);
  expect(bytes[4], 'an error frame').to.equal(1);
  return { code: bytes.readUInt32BE(5), details: bytes.subarray(9, 4 + bytes.readUInt32BE(0)).toString('utf8') };
}

/**
 * Every regular file and directory under `root` whose mode lets another OS user read or write it: bits for others,
 * or for a group other than the platform's and its Postgres user's (WAL segments the replayer reads are 0640 to it).
 */
function exposedPaths(root: string): string[] {
  const exposed: string[] = [];
  const trustedGroups = new Set([process.getgid?.(), postgresOsUser().gid]);
  const visit = (target: string) => {
    const stat = fs.lstatSync(target);
    if (stat.isSymbolicLink() || stat.isSocket() || stat.isFIFO()) return;
    // Directories may keep an execute bit for others (Postgres, another OS user, must traverse to its data directory).
    const groupExposed = (stat.mode & 0o060) !== 0 && !trustedGroups.has(stat.gid);
    if ((stat.mode & 0o006) !== 0 || groupExposed) exposed.push(`${target} (${(stat.mode & 0o777).toString(8)})`);
    if (stat.isDirectory()) for (const entry of fs.readdirSync(target)) visit(path.join(target, entry));
  };
  visit(root);
  return exposed;
}

describe('internal authentication (every internal call, the Append socket, Redis, files)', function () {
  this.timeout(180_000);
  const harness = useHarness();

  it('refuses what the issue\'s attacker did: anonymous calls, another timeline, the gateway as control plane; Redis and files are private', async () => {
    const platform = await startGatewayPlatform(harness());
    const { controlPlane, provisioner, pageserver, safekeepers, gateway, redis, endpointId } = platform;
    // A running compute, so its agent's server is there to be probed too.
    const { route } = await controlPlane.internal().wakeEndpoint({ endpointId }, { deadline: new Date(Date.now() + 120_000) });
    const { compute } = await provisioner.client.describeCompute({ computeId: route!.computeId });
    const timelineId = compute!.spec!.timelineId;
    const channel = (address: string) => {
      const opened = openChannel(address);
      harness().defer(() => opened.close());
      return opened;
    };
    const safekeeper = channel(safekeepers[0]!.address);
    const pageserverChannel = channel(pageserver.address);
    const internal = channel(controlPlane.internalAddress);
    const admin = channel(`127.0.0.1:${gateway.adminPort}`);
    const agent = channel(compute!.agentAddress);
    const provisionerChannel = channel(provisioner.address);

    // 1. No credential, or one signed by a key the platform does not trust: UNAUTHENTICATED on every internal server.
    const forged = new SelfSigner('control-plane', generateKeyPairSync('ed25519').privateKey).token();
    for (const token of [undefined, 'spg99v1.e30.AAAA', forged]) {
      const attempts: Array<[string, () => Promise<unknown> | AsyncIterable<unknown>]> = [
        ['safekeeper Vote', () => clientWith(SafekeeperServiceDefinition, safekeeper, token).vote({ timelineId, term: 2n ** 64n - 1n, proposerId: 'x' })],
        ['safekeeper DeleteTimeline', () => clientWith(SafekeeperServiceDefinition, safekeeper, token).deleteTimeline({ timelineId })],
        ['safekeeper StreamWal', () => clientWith(SafekeeperServiceDefinition, safekeeper, token).streamWal({ timelineId, startLsn: 0n, endLsn: 0n, includeUncommitted: true })],
        ['pageserver Basebackup', () => clientWith(PageServiceDefinition, pageserverChannel, token).basebackup({ timelineId, lsn: 0n, mode: BasebackupMode.BASEBACKUP_MODE_FULL, replica: false })],
        ['pageserver DeleteTimeline', () => clientWith(TimelineServiceDefinition, pageserverChannel, token).deleteTimeline({ timelineId })],
        ['provisioner ListComputes', () => clientWith(ProvisionerServiceDefinition, provisionerChannel, token).listComputes({ endpointId: '' })],
        ['gateway SetEndpointBackend', () => clientWith(GatewayAdminServiceDefinition, admin, token).setEndpointBackend({ endpointId, postgresAddress: '127.0.0.1:1' })],
        ['agent Stop', () => clientWith(ComputeServiceDefinition, agent, token).stop({})],
        ['control plane GetRoleVerifier', () => clientWith(ControlPlaneInternalServiceDefinition, internal, token).getRoleVerifier({ endpointId, roleName: platform.owner.user })],
        ['control plane WakeEndpoint', () => clientWith(ControlPlaneInternalServiceDefinition, internal, token).wakeEndpoint({ endpointId })],
      ];
      for (const [what, attempt] of attempts) {
        const error = await failure(attempt());
        expect(Status[error.code], `${what} with ${token === undefined ? 'no credential' : 'a bad credential'}: ${error.details}`).to.equal('UNAUTHENTICATED');
      }
    }
    const missing = await failure(clientWith(SafekeeperServiceDefinition, safekeeper).vote({ timelineId, term: 1n, proposerId: 'x' }));
    expect(missing.details).to.contain(CREDENTIAL_METADATA);
    // The framed Append socket: its first frame must be a credential; nothing after is read without one.
    const appendAddress = safekeepers[0]!.appendSocketAddress;
    expect(appendAddress).to.match(/^127\.0\.0\.1:\d+$/);
    const startFrame = Buffer.from(
      AppendRequest.encode({ start: { timelineId, term: 2n ** 64n - 1n, proposerId: 'thief', termHistory: [], startStreamingAt: 0n, systemId: 0n } }).finish(),
    );
    const anonymous = await framedAppend(appendAddress, [startFrame]);
    expect(Status[anonymous.code], anonymous.details).to.equal('UNAUTHENTICATED');
    const otherTimeline = await framedAppend(appendAddress, [Buffer.from(computeToken({ timelineId: newTimelineId(), computeId: 'thief' })), startFrame]);
    expect(Status[otherTimeline.code], otherTimeline.details).to.equal('PERMISSION_DENIED');

    // 2. A compute's credential for another timeline: PERMISSION_DENIED on the data plane, naming what is missing.
    const thief = computeToken({ timelineId: newTimelineId(), computeId: 'thief', endpointId: 'ep-thief' });
    for (const [what, attempt] of [
      ['Vote', () => clientWith(SafekeeperServiceDefinition, safekeeper, thief).vote({ timelineId, term: 2n ** 64n - 1n, proposerId: 'thief' })],
      ['StreamWal', () => clientWith(SafekeeperServiceDefinition, safekeeper, thief).streamWal({ timelineId, startLsn: 0n, endLsn: 0n, includeUncommitted: true })],
      ['Basebackup', () => clientWith(PageServiceDefinition, pageserverChannel, thief).basebackup({ timelineId, lsn: 0n, mode: BasebackupMode.BASEBACKUP_MODE_FULL, replica: false })],
      ['GetRelSize', () => clientWith(PageServiceDefinition, pageserverChannel, thief).getRelSize({ timelineId, rel: { spcNode: 1663, dbNode: 5, relNode: 1259 }, readLsn: undefined })],
      ['RenewWriterLease', () => clientWith(ControlPlaneInternalServiceDefinition, internal, thief).renewWriterLease({ endpointId, computeId: route!.computeId, term: 1n })],
    ] as Array<[string, () => Promise<unknown> | AsyncIterable<unknown>]>) {
      const error = await failure(attempt());
      expect(Status[error.code], `${what}: ${error.details}`).to.equal('PERMISSION_DENIED');
      expect(error.details, what).to.match(/credential is for (timeline|endpoint) /);
    }
    // Its own timeline works, but deleting it is the control plane's alone.
    const own = computeToken({ timelineId, computeId: 'own' });
    const status = await clientWith(SafekeeperServiceDefinition, safekeeper, own).getTimelineStatus({ timelineId });
    expect(status.status?.timelineId).to.equal(timelineId);
    const deletion = await failure(clientWith(TimelineServiceDefinition, pageserverChannel, own).deleteTimeline({ timelineId }));
    expect(Status[deletion.code]).to.equal('PERMISSION_DENIED');
    expect(deletion.details).to.contain('control-plane');
    // An expired compute credential is refused like none.
    const expired = computeToken({ timelineId, computeId: 'old' }, -120_000);
    expect(Status[(await failure(clientWith(SafekeeperServiceDefinition, safekeeper, expired).getTimelineStatus({ timelineId }))).code]).to.equal('UNAUTHENTICATED');

    // 3. The gateway's credential: it may not repoint an endpoint (the fake-backend ClientKey theft) nor act as the control plane.
    const asGateway = tokenOf('gateway');
    const repoint = await failure(clientWith(GatewayAdminServiceDefinition, admin, asGateway).setEndpointBackend({ endpointId, postgresAddress: '127.0.0.1:1' }));
    expect(Status[repoint.code]).to.equal('PERMISSION_DENIED');
    expect(repoint.details).to.contain('control-plane');
    expect(Status[(await failure(clientWith(ProvisionerServiceDefinition, provisionerChannel, asGateway).listComputes({ endpointId: '' }))).code]).to.equal('PERMISSION_DENIED');
    // No verifier leaves the control plane, not even to the gateway (it relays SCRAM messages; the control plane checks
    // the proof); and only the gateway may relay logins.
    for (const token of [asGateway, own, tokenOf('provisioner'), tokenOf('pageserver')]) {
      const error = await failure(clientWith(ControlPlaneInternalServiceDefinition, internal, token).getRoleVerifier({ endpointId, roleName: platform.owner.user }));
      expect(Status[error.code], error.details).to.equal('PERMISSION_DENIED');
      expect(error.details).to.contain('operator');
    }
    for (const token of [own, tokenOf('provisioner'), tokenOf('pageserver')]) {
      const error = await failure(clientWith(ControlPlaneInternalServiceDefinition, internal, token).beginScram({ endpointId, roleName: platform.owner.user, clientFirstMessage: 'n,,n=,r=abc' }));
      expect(Status[error.code]).to.equal('PERMISSION_DENIED');
    }
    // What the gateway gets for a login it relays: a challenge, and nothing but verified = false for a wrong proof.
    const scram = new ScramClientSession({ password: 'not the password' });
    const begun = await clientWith(ControlPlaneInternalServiceDefinition, internal, asGateway).beginScram({ endpointId, roleName: platform.owner.user, clientFirstMessage: scram.clientFirst() });
    expect(begun.serverFirstMessage).to.match(/^r=.+,s=.+,i=\d+$/);
    const finished = await clientWith(ControlPlaneInternalServiceDefinition, internal, asGateway).finishScram({ sessionId: begun.sessionId, clientFinalMessage: scram.handleServerFirst(begun.serverFirstMessage) });
    expect(finished).to.deep.include({ verified: false, serverFinalMessage: '' });
    expect(finished.clientKey.length + finished.serverKey.length).to.equal(0);

    // 4. Redis refuses a client without the password.
    const answer = await pingRedis('127.0.0.1', redis.port, 2_000);
    expect(answer).to.match(/^-NOAUTH/);
    expect(await pingRedis('127.0.0.1', redis.port, 2_000, redis.password)).to.equal('+PONG');

    // 5. Nothing the platform wrote is readable by another OS user: WAL, control files, objects, the AOF, logs, keys.
    const roots = [...safekeepers.map((node) => node.dataDir), pageserver.dataDir, redis.dataDir, provisioner.dataDir];
    const exposed = roots.flatMap(exposedPaths);
    expect(exposed, 'files or directories other users may read').to.deep.equal([]);
    const samples = [path.join(redis.dataDir, 'redis.conf'), ...fs.readdirSync(safekeepers[0]!.dataDir, { recursive: true, withFileTypes: true })
      .filter((entry) => entry.isFile()).slice(0, 3).map((entry) => path.join(entry.parentPath, entry.name))];
    expect(samples.length).to.be.greaterThan(1);
    for (const file of samples) expect(fs.statSync(file).mode & 0o077, file).to.equal(0);
  });
});

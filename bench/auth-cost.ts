/**
 * What authentication costs per call (docs/security.md): a unary call like GetPage to an in-process gRPC server with
 * and without the credential check (same process, loopback, alternating rounds, medians of the CPU time per call), and per Append message
 * the compute scope check a stream pays. Not part of `make bench` (it measures one mechanism, not the platform):
 * `node dist/bench/auth-cost.js`.
 */
import { performance } from 'node:perf_hooks';
import { createChannel, createClient, Metadata } from 'nice-grpc';
import { buildServer } from '../src/lib/grpc/server.js';
import { createLogger } from '../src/lib/log.js';
import { checkScope } from '../src/lib/grpc/auth-policy.js';
import {
  CREDENTIAL_METADATA,
  ensurePlatformCredentials,
  issueComputeToken,
  readPrivateKey,
  readTrustFile,
  TokenVerifier,
} from '../src/lib/grpc/credentials.js';
import { SafekeeperServiceDefinition, type SafekeeperServiceImplementation } from '../gen/spg99/safekeeper/v1/safekeeper.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CALLS = Number(process.env.CALLS ?? 4000);
const ROUNDS = Number(process.env.ROUNDS ?? 5);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-auth-cost-'));
try {
  const files = ensurePlatformCredentials(directory);
  const verifier = new TokenVerifier(readTrustFile(files.trustFile));
  const timelineId = `tl-${'ab'.repeat(16)}`;
  const token = issueComputeToken({ role: 'provisioner', key: readPrivateKey(files.keyFiles.provisioner) }, { timelineId, computeId: 'bench' });
  const log = createLogger('bench');
  log.level = 'error';
  // A GetPage-sized unary call: a small request, an 8 KiB answer would only add the same bytes to both sides.
  // Every method answers an empty message at once: only the call's machinery is measured.
  const implementation = new Proxy({}, { get: () => async () => ({}) }) as unknown as SafekeeperServiceImplementation;
  const servers = [];
  const clients: Record<'open' | 'authenticated', (request: { timelineId: string }) => Promise<unknown>> = {} as never;
  for (const mode of ['open', 'authenticated'] as const) {
    const { server, listen } = buildServer(log, mode === 'open' ? 'public' : { verifier });
    server.add(SafekeeperServiceDefinition, implementation);
    const running = await listen('127.0.0.1:0', ['spg99.safekeeper.v1.SafekeeperService']);
    servers.push(running);
    const client = createClient(SafekeeperServiceDefinition, createChannel(`127.0.0.1:${running.port}`), {
      '*': { metadata: Metadata({ [CREDENTIAL_METADATA]: token }) },
    });
    clients[mode] = (request) => client.getTimelineStatus(request);
  }
  const perCall: Record<string, number[]> = { open: [], authenticated: [] };
  for (let round = 0; round < ROUNDS; round += 1) {
    for (const mode of ['open', 'authenticated'] as const) {
      for (let warm = 0; warm < 200; warm += 1) await clients[mode]({ timelineId });
      // CPU time of this process (client and server both): wall time on a shared machine measures its neighbours.
      const started = process.cpuUsage();
      for (let call = 0; call < CALLS; call += 1) await clients[mode]({ timelineId });
      const used = process.cpuUsage(started);
      perCall[mode]!.push((used.user + used.system) / CALLS);
    }
  }
  const open = median(perCall.open!);
  const authenticated = median(perCall.authenticated!);

  // Per Append message: the scope check of a stream (the token itself is checked once per stream or connection).
  const claims = verifier.verify(token);
  const wal = { wal: { beginLsn: 0n, walData: Buffer.alloc(128), commitLsn: 0n, peerHorizonLsn: 0n } };
  const messages = 1_000_000;
  let started = performance.now();
  for (let index = 0; index < messages; index += 1) checkScope(claims, wal, '/spg99.safekeeper.v1.SafekeeperService/Append', false);
  const scopeUs = ((performance.now() - started) * 1000) / messages;
  // A cached verification (what every unary call pays before its handler), and an uncached one (once per token).
  started = performance.now();
  for (let index = 0; index < messages; index += 1) verifier.verify(token);
  const cachedUs = ((performance.now() - started) * 1000) / messages;
  const trust = readTrustFile(files.trustFile);
  started = performance.now();
  for (let index = 0; index < 500; index += 1) new TokenVerifier(trust).verify(token);
  const uncachedUs = ((performance.now() - started) * 1000) / 500;

  console.log(`unary call, CPU (client + server): ${open.toFixed(1)} µs without authentication, ${authenticated.toFixed(1)} µs with (+${(authenticated - open).toFixed(1)} µs, median of ${ROUNDS} rounds of ${CALLS})`);
  console.log(`per Append message: scope check ${scopeUs.toFixed(3)} µs; token check per call ${cachedUs.toFixed(3)} µs cached, ${uncachedUs.toFixed(1)} µs uncached (the Ed25519 signature check, once per token)`);
  for (const running of servers) await running.stop(100);
} finally {
  fs.rmSync(directory, { recursive: true, force: true });
}
process.exit(0);

/**
 * Service credentials (docs/security.md): what a token proves, who may issue it, what a compute's scope allows.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { expect } from 'chai';
import {
  CredentialError,
  ensurePlatformCredentials,
  issueComputeToken,
  readPrivateKey,
  readTrustFile,
  SelfSigner,
  signToken,
  TokenVerifier,
} from '../../src/lib/grpc/credentials.js';
import { checkRole, checkScope } from '../../src/lib/grpc/auth-policy.js';
import { Status } from '../../src/lib/grpc/errors.js';
import { RefusalLog } from '../../src/lib/grpc/refusal-log.js';
import type { Logger } from '../../src/lib/log.js';

describe('service credentials', () => {
  let directory: string;
  let verifier: TokenVerifier;
  let keyOf: (role: 'provisioner' | 'gateway' | 'control-plane' | 'pageserver') => ReturnType<typeof readPrivateKey>;
  const timelineId = `tl-${'a'.repeat(32)}`;

  before(() => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-credentials-unit-'));
    const files = ensurePlatformCredentials(directory);
    verifier = new TokenVerifier(readTrustFile(files.trustFile));
    keyOf = (role) => readPrivateKey(files.keyFiles[role]);
  });
  after(() => fs.rmSync(directory, { recursive: true, force: true }));

  it('keeps keys private and stable across runs', () => {
    expect(fs.statSync(directory).mode & 0o777).to.equal(0o700);
    const before = fs.readFileSync(path.join(directory, 'gateway.key'), 'utf8');
    expect(fs.statSync(path.join(directory, 'gateway.key')).mode & 0o777).to.equal(0o600);
    ensurePlatformCredentials(directory);
    expect(fs.readFileSync(path.join(directory, 'gateway.key'), 'utf8')).to.equal(before);
  });

  it('accepts a component\'s own token and a compute token from its issuers only', () => {
    expect(verifier.verify(new SelfSigner('gateway', keyOf('gateway')).token()).role).to.equal('gateway');
    const compute = verifier.verify(issueComputeToken({ role: 'control-plane', key: keyOf('control-plane') }, { timelineId, computeId: 'c1' }));
    expect(compute).to.include({ role: 'compute', timelineId, computeId: 'c1' });
    expect(() => issueComputeToken({ role: 'gateway', key: keyOf('gateway') }, { timelineId, computeId: 'c1' })).to.throw(CredentialError);
    // Signed by the pageserver's own key, but claiming to be a compute issued by it: refused.
    const byPageserver = signToken(keyOf('pageserver'), { role: 'compute', iss: 'pageserver', sub: 'x', exp: Date.now() + 60_000, timelineId, computeId: 'x' });
    expect(() => verifier.verify(byPageserver)).to.throw(CredentialError, /may not issue compute/);
    // A gateway key cannot claim the control plane's role.
    const impostor = signToken(keyOf('gateway'), { role: 'control-plane', iss: 'control-plane', sub: 'x', exp: Date.now() + 60_000 });
    expect(() => verifier.verify(impostor)).to.throw(CredentialError, /signature does not match/);
  });

  it('refuses missing, malformed, foreign, tampered and expired tokens, saying why', () => {
    expect(() => verifier.verify(undefined)).to.throw(CredentialError, /no credential/);
    expect(() => verifier.verify('Bearer abc')).to.throw(CredentialError, /not an SPG99 token/);
    expect(() => verifier.verify('x'.repeat(5000))).to.throw(CredentialError, /longer than/);
    const foreign = new SelfSigner('operator', generateKeyPairSync('ed25519').privateKey).token();
    expect(() => verifier.verify(foreign)).to.throw(CredentialError, /signature/);
    const [prefix, , signature] = new SelfSigner('gateway', keyOf('gateway')).token().split('.');
    const tampered = `${prefix}.${Buffer.from(JSON.stringify({ role: 'operator', iss: 'gateway', sub: 'g', exp: Date.now() + 1e6 })).toString('base64url')}.${signature}`;
    expect(() => verifier.verify(tampered)).to.throw(CredentialError);
    const expired = issueComputeToken({ role: 'provisioner', key: keyOf('provisioner') }, { timelineId, computeId: 'c' }, -120_000);
    expect(() => verifier.verify(expired)).to.throw(CredentialError, /expired/);
  });

  it('lets a compute call its own timeline only, and names what is missing', () => {
    const claims = verifier.verify(issueComputeToken({ role: 'provisioner', key: keyOf('provisioner') }, { timelineId, endpointId: 'ep-a', computeId: 'c1' }));
    const path = '/spg99.pageserver.v1.PageService/GetPage';
    expect(checkRole(claims, path)).to.equal(null);
    expect(checkScope(claims, { timelineId }, path, true)).to.equal(null);
    const other = checkScope(claims, { timelineId: `tl-${'b'.repeat(32)}` }, path, true);
    expect(other?.code).to.equal(Status.PERMISSION_DENIED);
    expect(other?.details).to.contain(`credential is for timeline ${timelineId}`);
    expect(checkScope(claims, {}, path, true)?.code).to.equal(Status.PERMISSION_DENIED);
    expect(checkScope(claims, { wal: {} }, '/spg99.safekeeper.v1.SafekeeperService/Append', false)).to.equal(null);
    expect(checkScope(claims, { start: { timelineId: 'tl-x' } }, '/spg99.safekeeper.v1.SafekeeperService/Append', false)?.code).to.equal(Status.PERMISSION_DENIED);
    expect(checkScope(claims, { endpointId: 'ep-b', computeId: 'c1' }, '/x/RenewWriterLease', true)?.details).to.contain('endpoint');
    expect(checkRole(claims, '/spg99.pageserver.v1.TimelineService/DeleteTimeline')?.details).to.match(/operator or control-plane/);
    expect(checkRole(claims, '/spg99.controlplane.v1.ControlPlaneInternalService/GetRoleVerifier')?.code).to.equal(Status.PERMISSION_DENIED);
  });
});

describe('token verification cache', () => {
  it('evicts the oldest verified token when full, keeping the others (not the whole cache)', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const trust = new Map([['gateway' as const, publicKey]]);
    const verifier = new TokenVerifier(trust, 3);
    const exp = Date.now() + 600_000;
    const tokens = ['a', 'b', 'c', 'd'].map((sub) => signToken(privateKey, { role: 'gateway', iss: 'gateway', sub, exp }));
    for (const token of tokens) verifier.verify(token);
    // Without the key, only what is cached still verifies: the three newest, not the first nor none.
    trust.delete('gateway');
    expect(() => verifier.verify(tokens[0])).to.throw(CredentialError);
    for (const token of tokens.slice(1)) expect(verifier.verify(token).sub).to.be.oneOf(['b', 'c', 'd']);
  });
});

describe('refused-call log', () => {
  it('writes one line per caller, method and status per interval, then one with the count of the rest', () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = { warn: (fields: Record<string, unknown>) => lines.push(fields) } as unknown as Logger;
    const refusals = new RefusalLog(log, { intervalMs: 60_000, maxKeys: 2 });
    const method = '/spg99.safekeeper.v1.SafekeeperService/Vote';
    for (let index = 0; index < 1000; index++) refusals.refused({ method, peer: `10.0.0.1:${1000 + index}`, code: 'UNAUTHENTICATED', details: 'no credential' });
    refusals.refused({ method: '/x/Other', peer: '10.0.0.1:1', code: 'UNAUTHENTICATED', details: 'no credential' });
    for (let index = 0; index < 5; index++) refusals.refused({ method, peer: '10.0.0.2:1', code: 'UNAUTHENTICATED', details: 'no credential' });
    expect(lines.map((line) => line.method)).to.deep.equal([method, '/x/Other']);
    refusals.summarize();
    expect(lines.slice(2)).to.deep.equal([
      { method, peer: '10.0.0.1:1999', code: 'UNAUTHENTICATED', details: 'no credential', moreRefused: 999, intervalS: 60 },
      { moreRefused: 5, intervalS: 60, distinctCallers: 'over 2' },
    ]);
    // A new interval logs the first refusal again at once.
    refusals.refused({ method, peer: '10.0.0.1:5', code: 'UNAUTHENTICATED', details: 'no credential' });
    expect(lines).to.have.length(5);
    refusals.summarize();
    expect(lines).to.have.length(5);
  });
});

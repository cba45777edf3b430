/**
 * The platform credentials of a test process (docs/security.md): one key per component role and the trust file, in
 * a private temporary directory made on first use and removed at exit. Every component the harness starts gets its
 * role's key and the trust file (as SPG99_AUTH_* environment variables), so every test runs with authentication on;
 * the test process itself calls as the operator, which may call everything.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setProcessCredential } from '../../src/lib/grpc/client.js';
import {
  ensurePlatformCredentials,
  issueComputeToken,
  readPrivateKey,
  SelfSigner,
  writeTokenFile,
  type PlatformCredentials,
  type Role,
} from '../../src/lib/grpc/credentials.js';

let credentials: PlatformCredentials | null = null;

/** The test process's platform credentials (made on first use; the test process becomes the operator). */
export function platformCredentials(): PlatformCredentials {
  if (credentials) return credentials;
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'spg99-credentials-'));
  credentials = ensurePlatformCredentials(directory);
  process.on('exit', () => fs.rmSync(directory, { recursive: true, force: true }));
  setProcessCredential(new SelfSigner('operator', readPrivateKey(credentials.keyFiles.operator)));
  return credentials;
}

/** The environment that gives a component of `role` its identity. */
export function identityEnv(role: Exclude<Role, 'compute'>): Record<string, string> {
  const { trustFile, keyFiles } = platformCredentials();
  return { SPG99_AUTH_TRUST_FILE: trustFile, SPG99_AUTH_KEY_FILE: keyFiles[role] };
}

/** A token `role` would send (e.g. for a test that calls as the gateway). */
export function tokenOf(role: Exclude<Role, 'compute'>, ttlMs?: number): string {
  return new SelfSigner(role, readPrivateKey(platformCredentials().keyFiles[role]), ttlMs).token();
}

/** A compute's token for `scope`, issued by the provisioner's key (as the process driver issues it). */
export function computeToken(scope: { timelineId: string; endpointId?: string; computeId: string }, ttlMs?: number): string {
  return issueComputeToken({ role: 'provisioner', key: readPrivateKey(platformCredentials().keyFiles.provisioner) }, scope, ttlMs);
}

/** Writes a compute's token for `scope` into `directory` and answers the agent's flags for it. */
export function computeIdentityArgs(directory: string, scope: { timelineId: string; endpointId?: string; computeId: string }): string[] {
  const file = path.join(directory, 'credential.token');
  writeTokenFile(file, computeToken(scope, 24 * 3600 * 1000));
  return ['--auth-trust-file', platformCredentials().trustFile, '--credential-file', file];
}

// Importing the harness makes the test process the operator.
platformCredentials();

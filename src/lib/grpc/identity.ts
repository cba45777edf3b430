/**
 * The flags and start-up of a component's identity: the trust file every server verifies callers with, and the key
 * (or, for a compute, the token) its own calls are signed with. `cmd/` entry points spread {@link identitySpec} into
 * their options and call {@link setupIdentity}.
 */
import { ConfigError } from '../config.js';
import { setProcessCredential } from './client.js';
import {
  CredentialError,
  HeldToken,
  readPrivateKey,
  readTokenFile,
  readTrustFile,
  SelfSigner,
  TokenVerifier,
  type Role,
} from './credentials.js';
import type { KeyObject } from 'node:crypto';

/** The options every internal component takes. */
export const identitySpec = {
  authTrustFile: {
    kind: 'string',
    description: 'the trust file: the public key of each component role, which callers are verified with (`make up` keeps it in .spg99/credentials/trust.json)',
    default: '',
  },
  authKeyFile: { kind: 'string', description: 'this component\'s private key (Ed25519, PKCS#8 PEM, mode 0600), which its own calls are signed with', default: '' },
} as const;

/** What a component's start-up gets. */
export interface Identity {
  /** Verifies callers of this process's servers. */
  verifier: TokenVerifier;
  /** This component's key (signs its tokens; the control plane and provisioner also sign computes' tokens). */
  key: KeyObject | null;
  /** The token source this process's clients send. */
  credential: SelfSigner | HeldToken;
}

function required(value: string, flag: string, what: string): string {
  if (!value) throw new ConfigError(`${flag} is required: ${what} (\`make up\` and the test harness make them; docs/security.md)`);
  return value;
}

function wrapped<T>(fn: () => T, flag: string): T {
  try {
    return fn();
  } catch (error) {
    if (error instanceof CredentialError) throw new ConfigError(`${flag}: ${error.message}`);
    throw error;
  }
}

/** Reads the trust file and this component's key (or a compute's token file), and makes them this process's identity. */
export function setupIdentity(
  role: Exclude<Role, 'compute'> | 'compute',
  config: { authTrustFile: string; authKeyFile?: string; credentialFile?: string },
): Identity {
  const trustFile = required(config.authTrustFile, '--auth-trust-file', 'the public keys callers are verified with');
  const verifier = new TokenVerifier(wrapped(() => readTrustFile(trustFile), '--auth-trust-file'));
  if (role === 'compute') {
    const file = required(config.credentialFile ?? '', '--credential-file', 'the token the provisioner issued to this compute');
    const credential = new HeldToken(wrapped(() => readTokenFile(file), '--credential-file'));
    setProcessCredential(credential);
    return { verifier, key: null, credential };
  }
  const keyFile = required(config.authKeyFile ?? '', '--auth-key-file', `the ${role}'s private key`);
  const key = wrapped(() => readPrivateKey(keyFile), '--auth-key-file');
  const credential = new SelfSigner(role, key);
  setProcessCredential(credential);
  return { verifier, key, credential };
}

/**
 * Service identity between SPG99's components: short-lived tokens signed with Ed25519 (node:crypto, no dependency),
 * carried in the `x-spg99-credential` gRPC metadata and in the first frame of the framed Append socket.
 *
 * Every component role holds its own key pair; every server holds the trust document (role → public key). A
 * component signs its own tokens (10 minutes, re-signed when half is used up), so its private key never leaves
 * its host; a compute gets a token signed by the provisioner (at start) or by the control plane (with each lease
 * renewal), scoped to its timeline, endpoint and compute id. Servers verify once per token and cache the claims
 * until the token expires, so a call pays a map lookup, not a signature check (docs/security.md).
 *
 * Format: `spg99v1.<base64url(JSON claims)>.<base64url(Ed25519 signature of the first two parts)>`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';

/** Who a caller is; what it may do is in auth-policy.ts. */
export const ROLES = ['operator', 'control-plane', 'gateway', 'provisioner', 'pageserver', 'safekeeper', 'compute'] as const;
export type Role = (typeof ROLES)[number];
/** The roles that hold a key pair of their own (a compute holds only tokens issued to it). */
export const KEY_ROLES = ROLES.filter((role) => role !== 'compute') as Exclude<Role, 'compute'>[];
/** Who may issue a compute's token: the provisioner when it starts it, the control plane when it renews its lease. */
export const COMPUTE_ISSUERS: readonly Role[] = ['provisioner', 'control-plane'];

/** The metadata key of the caller's token. */
export const CREDENTIAL_METADATA = 'x-spg99-credential';
const PREFIX = 'spg99v1';
/** A component's own tokens last this long. */
export const COMPONENT_TOKEN_TTL_MS = 10 * 60 * 1000;
/** A compute's token lasts this long; its lease renewals (every few seconds) replace it long before. */
export const COMPUTE_TOKEN_TTL_MS = 60 * 60 * 1000;
/** Clock skew tolerated between hosts. */
const SKEW_MS = 60 * 1000;
/** The longest token accepted (a compute's is about 400 bytes): a longer one is refused before any decoding. */
export const MAX_TOKEN_BYTES = 2048;

/** What a verified token says. */
export interface Claims {
  /** The caller's role. */
  role: Role;
  /** The role whose key signed it (its own role, or a compute's issuer). */
  iss: Role;
  /** A name for logs: the component's role or the compute's id. */
  sub: string;
  /** Expiry, ms since epoch. */
  exp: number;
  /** A compute's scope: it may act on this timeline, endpoint and compute only. */
  timelineId?: string;
  endpointId?: string;
  computeId?: string;
}

/** A credential problem: the message says what is missing. */
export class CredentialError extends Error {
  override name = 'CredentialError';
}

const base64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

/** Signs `claims` with `key` into a token. */
export function signToken(key: KeyObject, claims: Claims): string {
  const body = `${PREFIX}.${base64url(JSON.stringify(claims))}`;
  return `${body}.${base64url(sign(null, Buffer.from(body), key))}`;
}

/** A compute's token: scoped to its timeline, endpoint and compute id, signed by `issuer`'s key. */
export function issueComputeToken(
  issuer: { role: Role; key: KeyObject },
  scope: { timelineId: string; endpointId?: string; computeId: string },
  ttlMs = COMPUTE_TOKEN_TTL_MS,
  now = Date.now(),
): string {
  if (!COMPUTE_ISSUERS.includes(issuer.role)) throw new CredentialError(`a ${issuer.role} may not issue compute credentials`);
  return signToken(issuer.key, {
    role: 'compute',
    iss: issuer.role,
    sub: scope.computeId,
    exp: now + ttlMs,
    timelineId: scope.timelineId,
    ...(scope.endpointId ? { endpointId: scope.endpointId } : {}),
    computeId: scope.computeId,
  });
}

/** Something that answers the current token of this process (re-signed or renewed as needed). */
export interface CredentialSource {
  token(): string;
}

/** A component's own identity: signs short-lived tokens for its role with its private key, re-signing at half-life. */
export class SelfSigner implements CredentialSource {
  private current = '';
  private renewAt = 0;

  constructor(
    readonly role: Exclude<Role, 'compute'>,
    readonly key: KeyObject,
    private readonly ttlMs = COMPONENT_TOKEN_TTL_MS,
  ) {}

  token(): string {
    const now = Date.now();
    if (now >= this.renewAt) {
      this.current = signToken(this.key, { role: this.role, iss: this.role, sub: this.role, exp: now + this.ttlMs });
      this.renewAt = now + this.ttlMs / 2;
    }
    return this.current;
  }
}

/** A token handed to this process (a compute's), replaced when a fresher one arrives (lease renewal). */
export class HeldToken implements CredentialSource {
  constructor(private value: string) {}
  token(): string {
    return this.value;
  }
  replace(value: string): void {
    if (value) this.value = value;
  }
}

/** Verifies tokens against the trust document, caching verified claims until they expire. */
export class TokenVerifier {
  private readonly cache = new Map<string, Claims>();
  private readonly cacheLimit: number;

  constructor(
    private readonly trust: ReadonlyMap<Role, KeyObject>,
    /** Verified tokens kept (default 10,000). */
    cacheLimit = 10_000,
  ) {
    this.cacheLimit = cacheLimit;
  }

  /** The claims of `token`, or a CredentialError saying why it is refused. */
  verify(token: string | undefined, now = Date.now()): Claims {
    if (!token) throw new CredentialError(`no credential: send a token in the ${CREDENTIAL_METADATA} metadata (docs/security.md)`);
    const cached = this.cache.get(token);
    if (cached) {
      if (cached.exp + SKEW_MS <= now) {
        this.cache.delete(token);
        throw new CredentialError(`the ${cached.role} credential of ${cached.sub} expired: get a fresh one`);
      }
      return cached;
    }
    const claims = this.verifyUncached(token, now);
    // Bounded: the oldest entry goes, so a burst of new tokens (an attacker's, or many computes at once) costs the
    // tokens in steady use nothing; clearing the whole cache would make every caller's next call verify again.
    if (this.cache.size >= this.cacheLimit) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(token, claims);
    return claims;
  }

  private verifyUncached(token: string, now: number): Claims {
    if (token.length > MAX_TOKEN_BYTES) throw new CredentialError(`the credential is longer than ${MAX_TOKEN_BYTES} bytes`);
    const parts = token.split('.');
    if (parts.length !== 3 || parts[0] !== PREFIX) throw new CredentialError(`the credential is not an SPG99 token (${PREFIX}.<claims>.<signature>)`);
    let claims: Claims;
    try {
      claims = JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8')) as Claims;
    } catch {
      throw new CredentialError('the credential\'s claims are not JSON');
    }
    if (typeof claims !== 'object' || claims === null || !ROLES.includes(claims.role) || !ROLES.includes(claims.iss)) {
      throw new CredentialError('the credential names no known role');
    }
    const allowedIssuer = claims.role === 'compute' ? COMPUTE_ISSUERS.includes(claims.iss) : claims.iss === claims.role;
    if (!allowedIssuer) throw new CredentialError(`a ${claims.iss} may not issue ${claims.role} credentials`);
    const key = this.trust.get(claims.iss);
    if (!key) throw new CredentialError(`this server trusts no ${claims.iss} key: add it to its trust file`);
    if (!verify(null, Buffer.from(`${parts[0]}.${parts[1]}`), key, Buffer.from(parts[2] as string, 'base64url'))) {
      throw new CredentialError(`the credential's signature does not match the ${claims.iss} key this server trusts`);
    }
    if (typeof claims.exp !== 'number' || claims.exp + SKEW_MS <= now) throw new CredentialError(`the ${claims.role} credential of ${String(claims.sub)} expired: get a fresh one`);
    if (claims.role === 'compute' && (typeof claims.timelineId !== 'string' || typeof claims.computeId !== 'string')) {
      throw new CredentialError('a compute credential must name its timeline and compute');
    }
    return claims;
  }
}

/** The trust document: each key role's public key (SPKI PEM). Public: safe to hand to every process. */
export type TrustDocument = Partial<Record<Exclude<Role, 'compute'>, string>>;

/** Reads a trust file into the key map a {@link TokenVerifier} takes. */
export function readTrustFile(file: string): Map<Role, KeyObject> {
  let document: TrustDocument;
  try {
    document = JSON.parse(fs.readFileSync(file, 'utf8')) as TrustDocument;
  } catch (error) {
    throw new CredentialError(`the trust file ${file} cannot be read as JSON: ${(error as Error).message}`);
  }
  return trustFromDocument(document);
}

/** The key map of a trust document. */
export function trustFromDocument(document: TrustDocument): Map<Role, KeyObject> {
  const trust = new Map<Role, KeyObject>();
  for (const [role, pem] of Object.entries(document)) {
    if (!KEY_ROLES.includes(role as Exclude<Role, 'compute'>) || typeof pem !== 'string') continue;
    trust.set(role as Role, createPublicKey(pem));
  }
  return trust;
}

/** Reads a private key file (PKCS#8 PEM). */
export function readPrivateKey(file: string): KeyObject {
  try {
    return createPrivateKey(fs.readFileSync(file));
  } catch (error) {
    throw new CredentialError(`the key file ${file} cannot be read as a private key: ${(error as Error).message}`);
  }
}

/** Reads a token file (a compute's credential), trimmed. */
export function readTokenFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch (error) {
    throw new CredentialError(`the credential file ${file} cannot be read: ${(error as Error).message}`);
  }
}

/** The files of a platform's credentials (what `make up` and the test harness make). */
export interface PlatformCredentials {
  directory: string;
  /** The trust document every server reads. */
  trustFile: string;
  /** The private key file of each key role. */
  keyFiles: Record<Exclude<Role, 'compute'>, string>;
}

/** Where the files of a credentials directory are. */
export function platformCredentialFiles(directory: string): PlatformCredentials {
  const keyFiles = Object.fromEntries(KEY_ROLES.map((role) => [role, path.join(directory, `${role}.key`)])) as Record<Exclude<Role, 'compute'>, string>;
  return { directory, trustFile: path.join(directory, 'trust.json'), keyFiles };
}

/**
 * Makes sure `directory` (0700) holds a private key (0600) for every key role and the trust document naming their
 * public keys; keeps what is there, so restarts keep their identities. Rotation: delete a key file and run again.
 */
export function ensurePlatformCredentials(directory: string): PlatformCredentials {
  fs.mkdirSync(directory, { recursive: true, mode: 0o700 });
  fs.chmodSync(directory, 0o700);
  const files = platformCredentialFiles(directory);
  const document: TrustDocument = {};
  for (const role of KEY_ROLES) {
    const file = files.keyFiles[role];
    let key: KeyObject;
    if (fs.existsSync(file)) {
      key = readPrivateKey(file);
    } else {
      key = generateKeyPairSync('ed25519').privateKey;
      const temporary = `${file}.new`;
      fs.writeFileSync(temporary, key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
      fs.renameSync(temporary, file);
    }
    document[role] = createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString();
  }
  const temporary = `${files.trustFile}.new`;
  fs.writeFileSync(temporary, `${JSON.stringify(document, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(temporary, files.trustFile);
  return files;
}

/** Writes a token file (0600) atomically. */
export function writeTokenFile(file: string, token: string): void {
  const temporary = `${file}.new`;
  fs.writeFileSync(temporary, `${token}\n`, { mode: 0o600 });
  fs.renameSync(temporary, file);
}

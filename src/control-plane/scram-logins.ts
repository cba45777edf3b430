/**
 * Client SCRAM-SHA-256 logins, verified where the verifiers are: the gateway relays the client's messages
 * (BeginScram, FinishScram) and never holds a verifier, so a gateway credential reads nothing about roles nobody is
 * logging in to. Only a proof that verifies yields the keys the gateway logs in to the compute with.
 *
 * An exchange lives in this process's memory between its two halves (a minute at most, used once). A control plane
 * restart in between fails that one login, which the client retries like any dropped connection.
 */
import { createHash, createHmac, randomBytes, type KeyObject } from 'node:crypto';
import { DEFAULT_SALT_LENGTH, DEFAULT_SCRAM_ITERATIONS, parseVerifier, ScramAuthError, ScramProtocolError, ScramServerSession, type ScramVerifier } from '../lib/scram.js';

/** What a started exchange needs at its end. */
interface Exchange {
  session: ScramServerSession;
  verifier: ScramVerifier;
  /** The role does not exist: the proof is checked against mock keys and fails whatever it is. */
  mock: boolean;
  expiresAt: number;
}

/** The outcome of the second half. */
export type ScramFinish = { verified: false } | { verified: true; serverFinal: string; clientKey: Buffer; serverKey: Buffer };

/** A malformed SCRAM message: the client (relayed by the gateway) broke the protocol. */
export class ScramMessageError extends Error {
  override readonly name = 'ScramMessageError';
}

/** The exchange named does not exist, was used, or expired. */
export class ScramSessionUnknownError extends Error {
  override readonly name = 'ScramSessionUnknownError';
}

export interface ScramLoginsOptions {
  /** The secret mock salts are derived from; stable across restarts so a role's mock salt never changes. */
  mockSaltSecret: Buffer;
  /** How long an exchange waits for its second half (default 60 s, the gateway's login timeout). */
  ttlMs?: number;
  /** Exchanges kept at most; the oldest goes first (default 100,000: bounded memory under a flood). */
  maxExchanges?: number;
  now?: () => number;
}

/** The secret mock salts derive from, taken from the control plane's signing key (stable while the key is). */
export function mockSaltSecretOf(signingKey: KeyObject | undefined): Buffer {
  if (!signingKey) return randomBytes(32);
  return createHash('sha256').update('spg99 control plane mock SCRAM salt\0').update(signingKey.export({ format: 'der', type: 'pkcs8' })).digest();
}

export class ScramLogins {
  private readonly exchanges = new Map<string, Exchange>();
  private readonly now: () => number;

  constructor(private readonly options: ScramLoginsOptions) {
    this.now = options.now ?? Date.now;
  }

  /**
   * The verifier a role that does not exist is challenged with: the salt derived from the endpoint and role name with
   * the secret (the same at every attempt, as PostgreSQL's scram_mock_salt), the iteration count of real verifiers,
   * and keys no proof matches. So the server-first-message does not tell whether the role exists.
   */
  mockVerifier(endpointId: string, roleName: string): ScramVerifier {
    const salt = createHmac('sha256', this.options.mockSaltSecret).update(`${endpointId}\0${roleName}`).digest().subarray(0, DEFAULT_SALT_LENGTH);
    return { iterations: DEFAULT_SCRAM_ITERATIONS, salt, storedKey: randomBytes(32), serverKey: randomBytes(32) };
  }

  /** Starts an exchange against `verifierText` (null: no such role); answers its id and the server-first-message. */
  begin(endpointId: string, roleName: string, verifierText: string | null, clientFirst: string): { sessionId: string; serverFirst: string } {
    const verifier = verifierText === null ? this.mockVerifier(endpointId, roleName) : parseVerifier(verifierText);
    const session = new ScramServerSession(verifier);
    let serverFirst: string;
    try {
      serverFirst = session.handleClientFirst(clientFirst);
    } catch (error) {
      if (error instanceof ScramProtocolError) throw new ScramMessageError(error.message);
      throw error;
    }
    this.prune();
    const sessionId = `sc-${randomBytes(18).toString('base64url')}`;
    this.exchanges.set(sessionId, { session, verifier, mock: verifierText === null, expiresAt: this.now() + (this.options.ttlMs ?? 60_000) });
    return { sessionId, serverFirst };
  }

  /** Checks the proof of the exchange `sessionId` (used up whatever the outcome). */
  finish(sessionId: string, clientFinal: string): ScramFinish {
    const exchange = this.exchanges.get(sessionId);
    this.exchanges.delete(sessionId);
    if (!exchange || exchange.expiresAt <= this.now()) throw new ScramSessionUnknownError(`SCRAM session ${sessionId.slice(0, 40)} is unknown, used or expired: start the login again with BeginScram`);
    try {
      const { serverFinal, clientKey } = exchange.session.handleClientFinal(clientFinal);
      if (exchange.mock) return { verified: false };
      return { verified: true, serverFinal, clientKey, serverKey: exchange.verifier.serverKey };
    } catch (error) {
      if (error instanceof ScramAuthError) return { verified: false };
      if (error instanceof ScramProtocolError) throw new ScramMessageError(error.message);
      throw error;
    }
  }

  /** Exchanges open now (for tests and metrics). */
  get size(): number {
    return this.exchanges.size;
  }

  /** Drops expired exchanges from the front and, over the cap, the oldest (Map keeps insertion order). */
  private prune(): void {
    const now = this.now();
    const max = this.options.maxExchanges ?? 100_000;
    for (const [id, exchange] of this.exchanges) {
      if (exchange.expiresAt > now && this.exchanges.size < max) break;
      this.exchanges.delete(id);
    }
  }
}

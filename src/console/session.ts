/**
 * Sessions without server state: the signed-in user's API key (with its scope and tenant) is sealed with AES-256-GCM
 * into the session cookie under a key read from a file, so a restarted console (or a second replica with the same
 * file) opens the same cookies. The browser holds only ciphertext in an HttpOnly cookie; page scripts never see the
 * API key. Changes carry a CSRF token derived from the cookie (HMAC), which a cross-site page cannot read.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** What a session knows about its user. */
export interface Session {
  /** The API key every call is made with. */
  apiKey: string;
  /** Whether the key may change anything. */
  readOnly: boolean;
  tenantId: string;
  tenantName: string;
  /** When the user signed in (ms since epoch). */
  issuedAt: number;
}

export const SESSION_COOKIE = 'spg99_console';

/** Reads the 32-byte sealing key from `file`, creating it (mode 0600) on first use. */
export function loadSessionKey(file: string): Buffer {
  try {
    const key = Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'hex');
    if (key.length !== 32) throw new Error(`${file} must hold 64 hex digits (a 32-byte key); delete it to have a new one made`);
    return key;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(32);
  // 'wx': two consoles starting at once must not each write their own key; the loser reads the winner's.
  try {
    fs.writeFileSync(file, `${key.toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    return key;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return loadSessionKey(file);
    throw error;
  }
}

/** Seals and opens session cookies and derives their CSRF tokens. */
export class SessionSealer {
  private readonly sealKey: Buffer;
  private readonly csrfKey: Buffer;

  constructor(
    key: Buffer,
    /** How long a session lasts after sign-in. */
    readonly maxAgeMs = 12 * 3600_000,
  ) {
    // Two keys from one: the cookie's encryption and the CSRF MAC never share a key.
    this.sealKey = createHmac('sha256', key).update('spg99-console-seal').digest();
    this.csrfKey = createHmac('sha256', key).update('spg99-console-csrf').digest();
  }

  seal(session: Session): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.sealKey, iv);
    const body = Buffer.concat([cipher.update(JSON.stringify(session), 'utf8'), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url');
  }

  /** The session in `cookie`, or null when it was not sealed with this key, was altered, or has expired. */
  open(cookie: string | undefined, now = Date.now()): Session | null {
    if (!cookie) return null;
    try {
      const raw = Buffer.from(cookie, 'base64url');
      if (raw.length < 29) return null;
      const decipher = createDecipheriv('aes-256-gcm', this.sealKey, raw.subarray(0, 12));
      decipher.setAuthTag(raw.subarray(12, 28));
      const session = JSON.parse(Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8')) as Session;
      if (typeof session.apiKey !== 'string' || typeof session.issuedAt !== 'number') return null;
      if (now - session.issuedAt > this.maxAgeMs) return null;
      return session;
    } catch {
      return null;
    }
  }

  /** The CSRF token of a session cookie: forms and scripts send it back with every change. */
  csrfToken(cookie: string): string {
    return createHmac('sha256', this.csrfKey).update(cookie).digest('base64url');
  }

  checkCsrf(cookie: string, token: string | undefined): boolean {
    if (!token) return false;
    const expected = Buffer.from(this.csrfToken(cookie));
    const given = Buffer.from(token);
    return expected.length === given.length && timingSafeEqual(expected, given);
  }
}

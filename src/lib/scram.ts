/**
 * SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL implements it, for the control plane and the gateway.
 *
 * The control plane keeps only a role's verifier (`createVerifier`), never its password, and checks a client's proof
 * against it (`ScramServerSession`, for the client messages the gateway relays), which also recovers the client's
 * ClientKey (ClientProof XOR HMAC(StoredKey, AuthMessage), checked by H(ClientKey) = StoredKey). The gateway gets that
 * key for a right proof only and logs in to the compute as the same role with it (`ScramClientSession` in its key
 * form): no password ever reaches the gateway, and no verifier either. A ClientKey is password-equivalent for SCRAM (it logs in wherever the verifier is installed): keep it in
 * memory for the one login, never log or store it.
 *
 * Only what Postgres does is supported: mechanism SCRAM-SHA-256 without channel binding (gs2 flags `n` and `y`),
 * no authorization identity, no mandatory extensions. The user name in the messages is ignored, as Postgres does
 * (the role comes from the startup packet).
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

/** The SASL mechanism name Postgres offers and this module speaks. */
export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
/** Postgres' default iteration count (the `scram_iterations` setting). */
export const DEFAULT_SCRAM_ITERATIONS = 4096;
/** Postgres' salt length in bytes. */
export const DEFAULT_SALT_LENGTH = 16;
/** Bytes of a SHA-256 key. */
const KEY_LENGTH = 32;
/** Random bytes in a nonce Postgres generates (base64-encoded on the wire). */
const NONCE_BYTES = 18;

/** A message of the exchange is malformed or breaks the protocol (a bug or an attack, not a wrong password). */
export class ScramProtocolError extends Error {
  override readonly name = 'ScramProtocolError';
}

/** The proof (or the server's signature) does not match: the password or the key is wrong. */
export class ScramAuthError extends Error {
  override readonly name = 'ScramAuthError';
}

/** A parsed `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` verifier. */
export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** How `createVerifier` hashes. */
export interface CreateVerifierOptions {
  /** PBKDF2 iterations (default 4096, Postgres' default). */
  iterations?: number;
  /** The salt (default 16 random bytes, as Postgres). */
  salt?: Buffer;
}

// ---------------------------------------------------------------------------------------------------------------
// Verifiers

/**
 * The verifier of `password` in Postgres' format, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
 * (base64). Postgres stores such a text given to `CREATE ROLE ... PASSWORD` as is, without hashing it again. The
 * password goes through `saslPrep` first, as Postgres and libpq do.
 */
export function createVerifier(password: string, options: CreateVerifierOptions = {}): string {
  const iterations = options.iterations ?? DEFAULT_SCRAM_ITERATIONS;
  checkIterations(iterations, 'createVerifier: iterations');
  const salt = options.salt ?? randomBytes(DEFAULT_SALT_LENGTH);
  if (salt.length === 0) throw new RangeError('createVerifier: the salt is empty; pass at least one byte (Postgres uses 16)');
  const keys = keysFromPassword(password, salt, iterations);
  return formatVerifier({ iterations, salt, storedKey: keys.storedKey, serverKey: keys.serverKey });
}

/** Formats a verifier as Postgres stores it in `pg_authid.rolpassword`. */
export function formatVerifier(verifier: ScramVerifier): string {
  const base64 = (buffer: Buffer) => buffer.toString('base64');
  return `${SCRAM_SHA_256}$${verifier.iterations}:${base64(verifier.salt)}$${base64(verifier.storedKey)}:${base64(verifier.serverKey)}`;
}

/** Parses a Postgres SCRAM verifier; throws an Error naming the part that is wrong. */
export function parseVerifier(text: string): ScramVerifier {
  const parts = text.split('$');
  if (parts.length !== 3) {
    throw new Error(`not a SCRAM verifier: expected "${SCRAM_SHA_256}$<iterations>:<salt>$<StoredKey>:<ServerKey>" (3 parts separated by "$"), got ${parts.length}`);
  }
  const [mechanism, parameters, keys] = parts;
  if (mechanism !== SCRAM_SHA_256) throw new Error(`not a SCRAM verifier: the mechanism is "${truncate(mechanism)}", expected "${SCRAM_SHA_256}"`);
  const [iterationsText, saltText, ...extraParameters] = parameters.split(':');
  if (saltText === undefined || extraParameters.length > 0) throw new Error('malformed SCRAM verifier: the parameters must be "<iterations>:<salt>"');
  if (!/^[1-9][0-9]{0,9}$/.test(iterationsText) || Number(iterationsText) > 0x7fffffff) {
    throw new Error(`malformed SCRAM verifier: the iteration count "${truncate(iterationsText)}" is not a positive 32-bit integer`);
  }
  const salt = decodeBase64(saltText);
  if (!salt || salt.length === 0) throw new Error('malformed SCRAM verifier: the salt is not non-empty base64');
  const [storedKeyText, serverKeyText, ...extraKeys] = keys.split(':');
  if (serverKeyText === undefined || extraKeys.length > 0) throw new Error('malformed SCRAM verifier: the keys must be "<StoredKey>:<ServerKey>"');
  const storedKey = decodeBase64(storedKeyText);
  if (!storedKey || storedKey.length !== KEY_LENGTH) throw new Error(`malformed SCRAM verifier: the StoredKey is not ${KEY_LENGTH} bytes of base64`);
  const serverKey = decodeBase64(serverKeyText);
  if (!serverKey || serverKey.length !== KEY_LENGTH) throw new Error(`malformed SCRAM verifier: the ServerKey is not ${KEY_LENGTH} bytes of base64`);
  return { iterations: Number(iterationsText), salt, storedKey, serverKey };
}

/** The keys SCRAM derives from a password: SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, i). */
export function keysFromPassword(password: string, salt: Buffer, iterations: number): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
  const saltedPassword = pbkdf2Sync(Buffer.from(saslPrep(password), 'utf8'), salt, iterations, KEY_LENGTH, 'sha256');
  const clientKey = hmac(saltedPassword, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(saltedPassword, 'Server Key') };
}

// ---------------------------------------------------------------------------------------------------------------
// Server side (the gateway, facing a client)

/** Test hooks of a server session. */
export interface ScramServerOptions {
  /** The server's part of the nonce (default: 18 random bytes in base64, as Postgres). */
  serverNonce?: string;
}

/**
 * One SCRAM exchange, server side, against a role's verifier: `handleClientFirst` answers the client-first-message,
 * `handleClientFinal` checks the proof and returns the server-final-message and the client's ClientKey.
 */
export class ScramServerSession {
  private readonly verifier: ScramVerifier;
  private readonly serverNonce: string;
  private state: 'start' | 'sent-first' | 'done' = 'start';
  private gs2Header = '';
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';
  /** The user name the client put in its first message (Postgres ignores it; so does this class). */
  username = '';

  constructor(verifier: ScramVerifier | string, options: ScramServerOptions = {}) {
    this.verifier = typeof verifier === 'string' ? parseVerifier(verifier) : verifier;
    this.serverNonce = options.serverNonce ?? randomBytes(NONCE_BYTES).toString('base64');
    checkNonce(this.serverNonce, 'the server nonce');
  }

  /** Parses the client-first-message and returns the server-first-message (`r=<nonce>,s=<salt>,i=<iterations>`). */
  handleClientFirst(message: string): string {
    if (this.state !== 'start') throw new ScramProtocolError('SCRAM: the client-first-message was already handled');
    const { gs2Header, bare } = parseGs2Header(message);
    const attributes = parseAttributes(bare, 'client-first-message');
    if (attributes[0]?.name === 'm') throw new ScramProtocolError('SCRAM: the client requires an extension ("m="), which is not supported');
    expectAttribute(attributes, 0, 'n', 'client-first-message');
    const clientNonce = expectAttribute(attributes, 1, 'r', 'client-first-message');
    checkNonce(clientNonce, 'the client nonce');
    this.username = attributes[0].value;
    this.gs2Header = gs2Header;
    this.clientFirstBare = bare;
    this.nonce = clientNonce + this.serverNonce;
    this.serverFirst = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'sent-first';
    return this.serverFirst;
  }

  /**
   * Checks the client-final-message's proof in constant time. Returns the server-final-message (`v=<signature>`)
   * and the ClientKey the proof reveals; throws ScramAuthError('password authentication failed') when it is wrong.
   */
  handleClientFinal(message: string): { serverFinal: string; clientKey: Buffer } {
    if (this.state !== 'sent-first') throw new ScramProtocolError('SCRAM: the client-final-message came before the client-first-message or after the end');
    this.state = 'done';
    const attributes = parseAttributes(message, 'client-final-message');
    const channelBinding = decodeBase64(expectAttribute(attributes, 0, 'c', 'client-final-message'));
    if (!channelBinding) throw new ScramProtocolError('SCRAM: the channel binding ("c=") of the client-final-message is not base64');
    if (channelBinding.toString('latin1') !== this.gs2Header) {
      throw new ScramProtocolError('SCRAM: the channel binding ("c=") does not repeat the gs2 header of the client-first-message');
    }
    const nonce = expectAttribute(attributes, 1, 'r', 'client-final-message');
    if (nonce !== this.nonce) throw new ScramProtocolError('SCRAM: the nonce of the client-final-message is not the one the server sent');
    const last = attributes[attributes.length - 1];
    if (attributes.length < 3 || last.name !== 'p') throw new ScramProtocolError('SCRAM: the client-final-message does not end with the proof ("p=")');
    const proof = decodeBase64(last.value);
    if (!proof || proof.length !== KEY_LENGTH) throw new ScramProtocolError(`SCRAM: the proof ("p=") is not ${KEY_LENGTH} bytes of base64`);

    const withoutProof = message.slice(0, message.length - last.value.length - ',p='.length);
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const clientKey = xor(proof, hmac(this.verifier.storedKey, authMessage));
    if (!timingSafeEqual(sha256(clientKey), this.verifier.storedKey)) throw new ScramAuthError('password authentication failed');
    return { serverFinal: `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}`, clientKey };
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Client side (the gateway, facing Postgres; tests)

/** What a client authenticates with: the password, or the keys (the gateway's form: it never sees the password). */
export type ScramClientCredentials =
  | { password: string }
  | {
      /** The role's ClientKey, e.g. recovered by `ScramServerSession.handleClientFinal`. */
      clientKey: Buffer;
      /** When given, checked against H(ClientKey) before anything is sent. */
      storedKey?: Buffer;
      /** When given, the server's signature is verified; without it the server is not authenticated. */
      serverKey?: Buffer;
    };

/** Options of a client session. */
export interface ScramClientOptions {
  /** The user name sent in the client-first-message (default empty, as libpq: Postgres uses the startup packet's). */
  username?: string;
  /** The client nonce (default: 18 random bytes in base64). */
  clientNonce?: string;
}

/**
 * One SCRAM exchange, client side: `clientFirst` → (server-first) `handleServerFirst` → (server-final)
 * `handleServerFinal`. With a password, the keys come from the server's salt and iteration count; with keys, they
 * are used as given and the salt and iteration count are ignored.
 */
export class ScramClientSession {
  private readonly clientNonce: string;
  private readonly clientFirstBare: string;
  private state: 'start' | 'sent-first' | 'sent-final' | 'done' = 'start';
  private expectedServerSignature: Buffer | null = null;

  constructor(
    private readonly credentials: ScramClientCredentials,
    options: ScramClientOptions = {},
  ) {
    if ('clientKey' in credentials) {
      if (credentials.clientKey.length !== KEY_LENGTH) throw new RangeError(`SCRAM: the ClientKey must be ${KEY_LENGTH} bytes, got ${credentials.clientKey.length}`);
      if (credentials.storedKey && !timingSafeEqualLength(sha256(credentials.clientKey), credentials.storedKey)) {
        throw new ScramAuthError('SCRAM: the ClientKey does not match the StoredKey (H(ClientKey) differs)');
      }
    }
    this.clientNonce = options.clientNonce ?? randomBytes(NONCE_BYTES).toString('base64');
    checkNonce(this.clientNonce, 'the client nonce');
    this.clientFirstBare = `n=${escapeUsername(options.username ?? '')},r=${this.clientNonce}`;
  }

  /** The client-first-message (`n,,n=<user>,r=<nonce>`): no channel binding. */
  clientFirst(): string {
    if (this.state !== 'start') throw new ScramProtocolError('SCRAM: the client-first-message was already sent');
    this.state = 'sent-first';
    return `n,,${this.clientFirstBare}`;
  }

  /** Parses the server-first-message and returns the client-final-message with the proof. */
  handleServerFirst(message: string): string {
    if (this.state !== 'sent-first') throw new ScramProtocolError('SCRAM: the server-first-message came out of order');
    this.state = 'sent-final';
    const attributes = parseAttributes(message, 'server-first-message');
    if (attributes[0]?.name === 'm') throw new ScramProtocolError('SCRAM: the server requires an extension ("m="), which is not supported');
    const nonce = expectAttribute(attributes, 0, 'r', 'server-first-message');
    if (!nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) {
      throw new ScramProtocolError('SCRAM: the server nonce does not extend the client nonce');
    }
    checkNonce(nonce, 'the server nonce');
    const salt = decodeBase64(expectAttribute(attributes, 1, 's', 'server-first-message'));
    if (!salt || salt.length === 0) throw new ScramProtocolError('SCRAM: the salt ("s=") of the server-first-message is not non-empty base64');
    const iterationsText = expectAttribute(attributes, 2, 'i', 'server-first-message');
    if (!/^[1-9][0-9]{0,9}$/.test(iterationsText) || Number(iterationsText) > 0x7fffffff) {
      throw new ScramProtocolError(`SCRAM: the iteration count ("i=") "${truncate(iterationsText)}" is not a positive integer`);
    }

    let clientKey: Buffer;
    let serverKey: Buffer | undefined;
    if ('password' in this.credentials) {
      ({ clientKey, serverKey } = keysFromPassword(this.credentials.password, salt, Number(iterationsText)));
    } else {
      ({ clientKey, serverKey } = this.credentials);
    }
    const withoutProof = `c=${Buffer.from('n,,').toString('base64')},r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${message},${withoutProof}`;
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    this.expectedServerSignature = serverKey ? hmac(serverKey, authMessage) : null;
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /**
   * Checks the server-final-message: throws ScramAuthError for an error (`e=`) or a signature that does not match
   * the one the password or ServerKey gives. Without a ServerKey the signature is only checked for form.
   */
  handleServerFinal(message: string): void {
    if (this.state !== 'sent-final') throw new ScramProtocolError('SCRAM: the server-final-message came out of order');
    this.state = 'done';
    const attributes = parseAttributes(message, 'server-final-message');
    if (attributes[0]?.name === 'e') throw new ScramAuthError(`SCRAM: the server refused the proof: ${attributes[0].value}`);
    const signature = decodeBase64(expectAttribute(attributes, 0, 'v', 'server-final-message'));
    if (!signature || signature.length !== KEY_LENGTH) throw new ScramProtocolError(`SCRAM: the server signature ("v=") is not ${KEY_LENGTH} bytes of base64`);
    if (this.expectedServerSignature && !timingSafeEqual(signature, this.expectedServerSignature)) {
      throw new ScramAuthError('SCRAM: the server signature does not match: the server does not know this role\'s verifier');
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// SASLprep

// RFC 3454 tables as inclusive [first, last] code point ranges.
/** C.1.2, mapped to U+0020. */
const NON_ASCII_SPACES = [[0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200b], [0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000]];
/** B.1, mapped to nothing. */
const MAPPED_TO_NOTHING = [[0xad, 0xad], [0x34f, 0x34f], [0x1806, 0x1806], [0x180b, 0x180d], [0x200b, 0x200d], [0x2060, 0x2060], [0xfe00, 0xfe0f], [0xfeff, 0xfeff]];
/** SASLprep's prohibited output: C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8, C.9. */
const PROHIBITED = [
  [0x0, 0x1f], [0x7f, 0xa0], [0x340, 0x341], [0x6dd, 0x6dd], [0x70f, 0x70f], [0x1680, 0x1680], [0x180e, 0x180e],
  [0x2000, 0x200f], [0x2028, 0x202f], [0x205f, 0x2063], [0x206a, 0x206f], [0x2ff0, 0x2ffb], [0x3000, 0x3000],
  [0xd800, 0xf8ff], [0xfdd0, 0xfdef], [0xfeff, 0xfeff], [0xfff9, 0xffff], [0x1d173, 0x1d17a], [0xe0001, 0xe0001],
  [0xe0020, 0xe007f], [0xf0000, 0x10ffff],
];
/** D.1: bidirectional category R or AL. */
const RAND_AL_CAT = [
  [0x5be, 0x5be], [0x5c0, 0x5c0], [0x5c3, 0x5c3], [0x5d0, 0x5ea], [0x5f0, 0x5f4], [0x61b, 0x61b], [0x61f, 0x61f],
  [0x621, 0x63a], [0x640, 0x64a], [0x66d, 0x66f], [0x671, 0x6d5], [0x6dd, 0x6dd], [0x6e5, 0x6e6], [0x6fa, 0x6fe],
  [0x700, 0x70d], [0x710, 0x710], [0x712, 0x72c], [0x780, 0x7a5], [0x7b1, 0x7b1], [0x200f, 0x200f], [0xfb1d, 0xfb1d],
  [0xfb1f, 0xfb28], [0xfb2a, 0xfb36], [0xfb38, 0xfb3c], [0xfb3e, 0xfb3e], [0xfb40, 0xfb41], [0xfb43, 0xfb44],
  [0xfb46, 0xfbb1], [0xfbd3, 0xfd3d], [0xfd50, 0xfd8f], [0xfd92, 0xfdc7], [0xfdf0, 0xfdfc], [0xfe70, 0xfe74], [0xfe76, 0xfefc],
];
/** Code points above U+1D7FF that Unicode 3.2 (the version of A.1) had assigned; everything else there is A.1. */
const ASSIGNED_ABOVE_1D7FF = [[0x20000, 0x2a6d6], [0x2f800, 0x2fa1d], [0xe0001, 0xe0001], [0xe0020, 0xe007f], [0xf0000, 0xffffd], [0x100000, 0x10fffd]];
const UNASSIGNED_NOW = /^\p{Cn}$/u;
/** Approximates D.2 (bidirectional category L): letters and spacing marks outside the right-to-left scripts. */
const LEFT_TO_RIGHT = /^[\p{L}\p{Mc}]$/u;
const RIGHT_TO_LEFT_SCRIPT = /^[\p{Script=Hebrew}\p{Script=Arabic}\p{Script=Syriac}\p{Script=Thaana}]$/u;

function inRanges(code: number, ranges: number[][]): boolean {
  return ranges.some(([first, last]) => code >= first && code <= last);
}

/**
 * SASLprep (RFC 4013) the way Postgres' `pg_saslprep` applies it to SCRAM passwords, so that a verifier made here
 * matches what libpq and psql compute from the same password:
 * - an all-ASCII password is used as is (no mapping, no check);
 * - otherwise non-ASCII spaces become U+0020, "mapped to nothing" characters (soft hyphen, zero-width joiners,
 *   variation selectors...) are removed, and the result is NFKC-normalized (`String.prototype.normalize`);
 * - when the mapped password is empty or contains a prohibited character (controls, private use, non-characters...),
 *   a code point unassigned in Unicode 3.2, or breaks the bidirectional rules, Postgres does not reject it but uses
 *   the password unchanged, and so does this function.
 * Approximations: Unicode 3.2's unassigned set (A.1) is exact above U+1D7FF (all emoji, for instance) but below it
 * is "unassigned today" (\p{Cn}), so a BMP character added after Unicode 3.2 is normalized here while Postgres keeps
 * the raw password; and the left-to-right table (D.2) is approximated by letters and spacing marks outside the
 * Hebrew, Arabic, Syriac and Thaana scripts. Both only matter for passwords mixing such characters with ones NFKC
 * changes. Like Postgres, the prohibition checks look at the mapped password before normalization.
 */
export function saslPrep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  const mapped: number[] = [];
  for (const character of password) {
    const code = character.codePointAt(0)!;
    if (inRanges(code, NON_ASCII_SPACES)) mapped.push(0x20);
    else if (!inRanges(code, MAPPED_TO_NOTHING)) mapped.push(code);
  }
  if (mapped.length === 0) return password;
  for (const code of mapped) {
    if (inRanges(code, PROHIBITED)) return password;
    if (code > 0x1d7ff ? !inRanges(code, ASSIGNED_ABOVE_1D7FF) : UNASSIGNED_NOW.test(String.fromCodePoint(code))) return password;
  }
  if (mapped.some((code) => inRanges(code, RAND_AL_CAT))) {
    const leftToRight = (code: number) => {
      const character = String.fromCodePoint(code);
      return LEFT_TO_RIGHT.test(character) && !RIGHT_TO_LEFT_SCRIPT.test(character) && !inRanges(code, RAND_AL_CAT);
    };
    if (mapped.some(leftToRight)) return password;
    if (!inRanges(mapped[0], RAND_AL_CAT) || !inRanges(mapped[mapped.length - 1], RAND_AL_CAT)) return password;
  }
  return String.fromCodePoint(...mapped).normalize('NFKC');
}

// ---------------------------------------------------------------------------------------------------------------
// Message parsing and primitives

interface Attribute {
  name: string;
  value: string;
}

/** Splits `a=1,b=2` into attributes; every part must be one letter, "=", and a value. */
function parseAttributes(message: string, what: string): Attribute[] {
  if (message.length === 0) throw new ScramProtocolError(`SCRAM: the ${what} is empty`);
  return message.split(',').map((part) => {
    if (!/^[A-Za-z]=/.test(part)) throw new ScramProtocolError(`SCRAM: the ${what} has a malformed attribute "${truncate(part)}" (expected <letter>=<value>)`);
    return { name: part[0], value: part.slice(2) };
  });
}

function expectAttribute(attributes: Attribute[], index: number, name: string, what: string): string {
  const attribute = attributes[index];
  if (attribute?.name !== name) {
    throw new ScramProtocolError(`SCRAM: the ${what} lacks the "${name}=" attribute at position ${index + 1}${attribute ? ` (found "${attribute.name}=")` : ''}`);
  }
  return attribute.value;
}

/** Splits the client-first-message into its gs2 header (`n,,` or `y,,`) and the bare message. */
function parseGs2Header(message: string): { gs2Header: string; bare: string } {
  const flag = message[0];
  if (flag === 'p') throw new ScramProtocolError('SCRAM: the client requires channel binding ("p="), which is not supported: offer SCRAM-SHA-256 without channel binding');
  if ((flag !== 'n' && flag !== 'y') || message[1] !== ',') {
    throw new ScramProtocolError('SCRAM: the client-first-message does not start with a gs2 header ("n," or "y,")');
  }
  if (message[2] === 'a' && message[3] === '=') throw new ScramProtocolError('SCRAM: the client sent an authorization identity ("a="), which is not supported');
  if (message[2] !== ',') throw new ScramProtocolError('SCRAM: the gs2 header of the client-first-message is malformed (expected "n,," or "y,,")');
  return { gs2Header: message.slice(0, 3), bare: message.slice(3) };
}

/** A nonce is printable ASCII without a comma (RFC 5802). */
function checkNonce(nonce: string, what: string): void {
  if (!/^[\x21-\x2b\x2d-\x7e]+$/.test(nonce)) throw new ScramProtocolError(`SCRAM: ${what} is empty or not printable ASCII without ","`);
}

/** `=` and `,` are escaped in a SCRAM user name. */
function escapeUsername(username: string): string {
  return username.replaceAll('=', '=3D').replaceAll(',', '=2C');
}

function checkIterations(iterations: number, what: string): void {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 0x7fffffff) throw new RangeError(`${what} must be a positive 32-bit integer, got ${iterations}`);
}

/** Strict base64 (Buffer.from would silently skip garbage); null when `text` is not. */
function decodeBase64(text: string): Buffer | null {
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) return null;
  return Buffer.from(text, 'base64');
}

function hmac(key: Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const result = Buffer.alloc(a.length);
  for (let index = 0; index < a.length; index++) result[index] = a[index] ^ b[index];
  return result;
}

function timingSafeEqualLength(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function truncate(text: string): string {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

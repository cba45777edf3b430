/**
 * The control plane's ids and secrets: a readable prefix and lowercase letters and digits (the contract's rule),
 * so that every id is also a valid DNS label (`ep-<id>.<domain>`) and reads well in logs.
 */
import { randomBytes } from 'node:crypto';

/** RFC 4648 base32 in lowercase: 32 symbols, so each one carries exactly 5 random bits (no modulo bias). */
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

/** `length` random lowercase letters and digits. */
export function randomToken(length: number): string {
  const bytes = randomBytes(length);
  let text = '';
  for (const byte of bytes) text += ALPHABET[byte & 31];
  return text;
}

/** Random characters after an id's prefix: 80 bits, enough that ids never collide. */
const ID_RANDOM_CHARS = 16;

/** The kinds of ids the control plane assigns, by prefix. */
export const ID_PREFIXES = {
  tenant: 'tn-',
  apiKey: 'ky-',
  project: 'pj-',
  endpoint: 'ep-',
  role: 'rl-',
  compute: 'cp-',
} as const;

export type IdKind = keyof typeof ID_PREFIXES;

/** A new id of `kind`, e.g. `pj-k3q7x2mfa9dtn4vb`. */
export function newId(kind: IdKind): string {
  if (HEX_ID_KINDS.has(kind)) return `${ID_PREFIXES[kind]}${randomBytes(16).toString('hex')}`;
  return `${ID_PREFIXES[kind]}${randomToken(ID_RANDOM_CHARS)}`;
}

/**
 * Endpoint and compute ids are also the provisioner's (its contract: the prefix and 32 lowercase hex digits), so the
 * control plane makes them of that shape, which is lowercase letters and digits too.
 */
const HEX_ID_KINDS: ReadonlySet<IdKind> = new Set<IdKind>(['endpoint', 'compute']);

/** Whether `value` is shaped like an id of `kind` the control plane assigns. */
export function isId(kind: IdKind, value: string): boolean {
  if (HEX_ID_KINDS.has(kind)) return new RegExp(`^${ID_PREFIXES[kind]}[0-9a-f]{32}$`).test(value);
  return new RegExp(`^${ID_PREFIXES[kind]}[a-z0-9]{${ID_RANDOM_CHARS}}$`).test(value);
}

/** A new timeline (branch) id: `tl-` and 32 lowercase hex digits, the id the pageserver and safekeepers know. */
export function newTimelineId(): string {
  return `tl-${randomBytes(16).toString('hex')}`;
}

/** What every API key secret starts with, so that a leaked one is recognisable (secret scanners, logs). */
export const API_KEY_SECRET_PREFIX = 'spg99_';
/** 52 base32 characters: 260 random bits. */
const API_KEY_RANDOM_CHARS = 52;
/** An API key secret: {@link API_KEY_SECRET_PREFIX} followed by this many lowercase letters and digits. */
export const API_KEY_SECRET_PATTERN = new RegExp(`^${API_KEY_SECRET_PREFIX}[a-z2-7]{${API_KEY_RANDOM_CHARS}}$`);
/** Characters of a secret kept and shown to recognise a key (`spg99_` and 6 random characters: 30 of 260 bits). */
export const API_KEY_SHOWN_PREFIX_CHARS = 12;

/** A new API key secret. */
export function newApiKeySecret(): string {
  return `${API_KEY_SECRET_PREFIX}${randomToken(API_KEY_RANDOM_CHARS)}`;
}

/** A generated Postgres role password: 32 base32 characters, 160 random bits, nothing to escape in a URI. */
export function newRolePassword(): string {
  return randomToken(32);
}

/**
 * Flag and argument values: durations (`300s`, `5m`, `1h30m`), times (ISO 8601), LSNs (`X/Y`), enums by their
 * short names, and ids by their prefix. Each parser throws a {@link UsageError} naming the flag and what is expected.
 */
import { parseLsn, type Lsn } from '../lib/lsn.js';
import { ApiKeyScope, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { UsageError } from './errors.js';

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `300s`, `5m`, `1h30m`, `250ms`, or a plain number of seconds, as milliseconds. */
export function parseDuration(text: string, flag: string, usageLine: string): number {
  const trimmed = text.trim();
  if (/^[0-9]+$/.test(trimmed)) return Number(trimmed) * 1000;
  const part = /([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let match = part.exec(trimmed); match; match = part.exec(trimmed)) {
    total += Number(match[1]) * DURATION_UNITS_MS[match[2]];
    consumed = part.lastIndex;
  }
  if (trimmed === '' || consumed !== trimmed.length) {
    throw new UsageError(`${flag} "${text}" is not a duration: use e.g. 300s, 5m, 1h30m (or 0)`, usageLine);
  }
  return Math.round(total);
}

/** A point in time as ISO 8601 with a date and a time (`2026-11-26T10:00:00Z`). */
export function parseTime(text: string, flag: string, usageLine: string): Date {
  const time = new Date(text);
  if (!/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}/.test(text) || Number.isNaN(time.getTime())) {
    throw new UsageError(`${flag} "${text}" is not a time: use ISO 8601, e.g. 2026-11-26T10:00:00Z`, usageLine);
  }
  return time;
}

/** A WAL position as Postgres prints it (`0/16B3748`). */
export function parseLsnFlag(text: string, flag: string, usageLine: string): Lsn {
  try {
    return parseLsn(text);
  } catch (error) {
    throw new UsageError(`${flag}: ${(error as Error).message}`, usageLine);
  }
}

/** A positive whole number. */
export function parsePositiveInteger(text: string, flag: string, usageLine: string): number {
  if (!/^[0-9]+$/.test(text.trim()) || Number(text) <= 0 || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`${flag} "${text}" is not a positive whole number`, usageLine);
  }
  return Number(text);
}

/** `admin` or `read`. */
export function parseScope(text: string, flag: string, usageLine: string): ApiKeyScope {
  switch (text.toLowerCase()) {
    case 'admin':
      return ApiKeyScope.API_KEY_SCOPE_ADMIN;
    case 'read':
      return ApiKeyScope.API_KEY_SCOPE_READ;
    default:
      throw new UsageError(`${flag} "${text}" is not a scope: use admin or read`, usageLine);
  }
}

/** `session` or `transaction`. */
export function parsePoolerMode(text: string, flag: string, usageLine: string): PoolerMode {
  switch (text.toLowerCase()) {
    case 'session':
      return PoolerMode.POOLER_MODE_SESSION;
    case 'transaction':
      return PoolerMode.POOLER_MODE_TRANSACTION;
    default:
      throw new UsageError(`${flag} "${text}" is not a pooler mode: use session or transaction`, usageLine);
  }
}

/** What each id prefix names, for messages. */
const ID_KINDS: Record<string, string> = { 'tn-': 'tenant', 'ky-': 'API key', 'pj-': 'project', 'tl-': 'branch', 'ep-': 'endpoint', 'rl-': 'role' };

/**
 * Checks that `value` carries the id prefix `prefix` (the control plane validates the rest), so that an id of the
 * wrong kind is a usage error that says which kind was expected rather than a round trip.
 */
export function requireIdPrefix(value: string, prefix: keyof typeof ID_KINDS, what: string, usageLine: string): string {
  if (!value.startsWith(prefix)) {
    throw new UsageError(`${what} "${value}" is not ${articled(ID_KINDS[prefix])} id: expected ${prefix}…`, usageLine);
  }
  return value;
}

function articled(noun: string): string {
  return /^[aeiou]/i.test(noun) ? `an ${noun}` : `a ${noun}`;
}

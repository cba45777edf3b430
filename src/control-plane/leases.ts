/**
 * Writer leases and terms, kept in Redis: at most one writer compute per timeline at any time, and a term that only
 * grows. The control plane's AcquireWriterLease, RenewWriterLease and ReleaseWriterLease handlers call
 * {@link WriterLeases}; expected refusals are thrown as `ServerError`s with the status the handler answers.
 *
 * Redis keys, per timeline, under the platform's `spg99:` prefix like the catalog's (the `{…}` hash tag keeps both
 * in one cluster slot, so one script can touch both):
 * - `spg99:writer-term:{tl-…}`: the latest term granted, an INCR counter; never reset, not even by a release.
 * - `spg99:writer-lease:{tl-…}`: a hash, the lease of that latest term: `computeId`, `term`, `grantedAtMs`,
 *   `expiresAtMs`, and after a release `releasedAtMs` and `finalLsn`. Kept after expiry and release, so the
 *   holder can still renew an expired lease that nobody took over, and a fenced writer is told by which term.
 *
 * Every transition is one Lua script, so it is atomic against every other control plane; expiry is measured with
 * Redis' own clock (TIME), so the clocks of the control planes and computes do not matter.
 */
import crypto from 'node:crypto';
import type { Redis } from '../lib/redis.js';
import { TIMELINE_ID_PATTERN } from '../lib/ids.js';
import { isValidLsn, type Lsn } from '../lib/lsn.js';
import { aborted, failedPrecondition, invalidArgument, notFound, unavailable } from '../lib/grpc/errors.js';

/** A writer lease: `computeId` may write to `timelineId` under `term` until `expiresAt` (Redis' clock). */
export interface WriterLease {
  timelineId: string;
  computeId: string;
  /** The proposer term the writer runs its election with; unique to this lease, greater than every earlier one. */
  term: bigint;
  grantedAt: Date;
  expiresAt: Date;
}

/** The stored lease of a timeline's latest term, whether or not it is still held. */
export interface WriterLeaseRecord extends WriterLease {
  /** When its holder released it; null while not released. */
  releasedAt: Date | null;
  /** The released writer's last LSN; null when not released or unknown. */
  finalLsn: Lsn | null;
}

/** What Redis knows about a timeline's writer, read at one instant ({@link WriterLeases.get}). */
export interface WriterLeaseState {
  timelineId: string;
  /** The latest term ever granted; 0 before the first. */
  latestTerm: bigint;
  /** The lease of the latest term (held, expired or released); null before the first. */
  lease: WriterLeaseRecord | null;
  /** The lease when it is held now (neither expired nor released), else null. */
  holder: WriterLease | null;
  /** Redis' clock when this was read. */
  serverTime: Date;
}

/** Input of {@link WriterLeases.acquire}. */
export interface AcquireWriterLeaseInput {
  timelineId: string;
  computeId: string;
  /** How long the lease lasts unless renewed (default and bounds in {@link WriterLeaseOptions}); clamped. */
  ttlMs?: number;
}

/** What {@link WriterLeases.acquire} answers. */
export interface AcquiredWriterLease {
  lease: WriterLease;
  /** True when this call granted a new term; false when the compute already held the lease (a retry). */
  newTerm: boolean;
  /** Redis' clock at the grant: `expiresAt - serverTime` is how long the lease lasts, whatever the local clock. */
  serverTime: Date;
}

/** Input of {@link WriterLeases.renew}. */
export interface RenewWriterLeaseInput {
  timelineId: string;
  computeId: string;
  term: bigint;
  ttlMs?: number;
}

/** What {@link WriterLeases.renew} answers. */
export interface RenewedWriterLease {
  lease: WriterLease;
  serverTime: Date;
}

/** Input of {@link WriterLeases.release}. */
export interface ReleaseWriterLeaseInput {
  timelineId: string;
  computeId: string;
  term: bigint;
  /** The stopped writer's last LSN on a majority of safekeepers; omitted or 0 when unknown. */
  finalLsn?: Lsn;
}

/** What {@link WriterLeases.release} answers. */
export interface ReleasedWriterLease {
  /** True when this call ended the lease; false when it was no longer held by this compute and term (not an error). */
  released: boolean;
  serverTime: Date;
}

/** Lease durations (milliseconds). */
export interface WriterLeaseOptions {
  /** When a request names no ttl (default 10 s). */
  defaultTtlMs?: number;
  /** Shorter requests are raised to this (default 1 s): a lease must outlive a renewal round trip. */
  minTtlMs?: number;
  /** Longer requests are cut to this (default 60 s): a dead writer must not block its timeline for long. */
  maxTtlMs?: number;
}

const DEFAULT_TTL_MS = 10_000;
const MIN_TTL_MS = 1_000;
const MAX_TTL_MS = 60_000;
/** Compute ids are chosen by the provisioner; these are the characters the catalog and logs handle safely. */
const COMPUTE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
/**
 * Lua numbers are doubles: terms and times stay exact up to 2^53 (a new term every millisecond for 285 years).
 * A term above it was never granted.
 */
const MAX_TERM = BigInt(Number.MAX_SAFE_INTEGER);

/** Redis' clock in milliseconds; in a script, TIME is replicated and written to the AOF as the values it produced. */
const NOW_MS = `
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
`;

/**
 * KEYS: term counter, lease hash. ARGV: compute id, ttl ms.
 * The holder gets its lease back, extended (a retried or repeated acquire); a lease held by another compute and
 * not yet expired refuses; otherwise (none, expired or released) the counter grants a new, higher term.
 */
const ACQUIRE_SCRIPT = `${NOW_MS}
local compute, ttl = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local lease = redis.call('HMGET', KEYS[2], 'computeId', 'term', 'grantedAtMs', 'expiresAtMs', 'releasedAtMs')
if lease[1] and not lease[5] then
  if lease[1] == compute then
    redis.call('HSET', KEYS[2], 'expiresAtMs', now + ttl)
    return {'current', tonumber(lease[2]), tonumber(lease[3]), now + ttl, now}
  end
  if tonumber(lease[4]) > now then
    return {'held', tonumber(lease[2]), tonumber(lease[3]), tonumber(lease[4]), now, lease[1]}
  end
end
local term = redis.call('INCR', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'computeId', compute, 'term', term, 'grantedAtMs', now, 'expiresAtMs', now + ttl)
return {'granted', term, now, now + ttl, now}
`;

/**
 * KEYS: term counter, lease hash. ARGV: compute id, term, ttl ms.
 * Extends the lease of `term` held by `compute`, even past its expiry, as long as no newer term was granted and it
 * was not released.
 */
const RENEW_SCRIPT = `${NOW_MS}
local compute, term, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
if term > latest then return {'unknown', latest, now} end
local lease = redis.call('HMGET', KEYS[2], 'computeId', 'term', 'grantedAtMs', 'releasedAtMs')
if not lease[2] or tonumber(lease[2]) ~= term then return {'superseded', latest, now, lease[1] or ''} end
if lease[1] ~= compute then return {'not-holder', latest, now, lease[1]} end
if lease[4] then return {'released', latest, now, tonumber(lease[4])} end
redis.call('HSET', KEYS[2], 'expiresAtMs', now + ttl)
return {'renewed', term, now, tonumber(lease[3]), now + ttl}
`;

/**
 * KEYS: term counter, lease hash. ARGV: compute id, term, final LSN (decimal; empty when unknown).
 * Ends the lease when `compute` holds `term`; anything else is a no-op (a retried release).
 */
const RELEASE_SCRIPT = `${NOW_MS}
local compute, term, final_lsn = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
if term > latest then return {'unknown', latest, now} end
local lease = redis.call('HMGET', KEYS[2], 'computeId', 'term', 'releasedAtMs')
if lease[1] == compute and tonumber(lease[2]) == term and not lease[3] then
  redis.call('HSET', KEYS[2], 'releasedAtMs', now)
  if final_lsn ~= '' then redis.call('HSET', KEYS[2], 'finalLsn', final_lsn) end
  return {'released', latest, now}
end
return {'not-held', latest, now}
`;

/** KEYS: term counter, lease hash. Everything as strings ('' when absent), and Redis' clock. */
const GET_SCRIPT = `${NOW_MS}
local latest = redis.call('GET', KEYS[1]) or '0'
local lease = redis.call('HMGET', KEYS[2], 'computeId', 'term', 'grantedAtMs', 'expiresAtMs', 'releasedAtMs', 'finalLsn')
for index = 1, 6 do lease[index] = lease[index] or '' end
return {latest, now_ms(), lease[1], lease[2], lease[3], lease[4], lease[5], lease[6]}
`;

/** A Lua script run by EVALSHA, and sent whole (EVAL) when Redis does not know it (after a restart). */
class LuaScript {
  private readonly sha1: string;

  constructor(readonly source: string) {
    this.sha1 = crypto.createHash('sha1').update(source).digest('hex');
  }

  async run(redis: Redis, keys: string[], args: string[]): Promise<unknown[]> {
    try {
      return (await redis.evalsha(this.sha1, keys.length, ...keys, ...args)) as unknown[];
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return (await redis.eval(this.source, keys.length, ...keys, ...args)) as unknown[];
    }
  }
}

const SCRIPTS = {
  acquire: new LuaScript(ACQUIRE_SCRIPT),
  renew: new LuaScript(RENEW_SCRIPT),
  release: new LuaScript(RELEASE_SCRIPT),
  get: new LuaScript(GET_SCRIPT),
};

/** The namespace of every SPG99 key in Redis (the catalog's `KEY_PREFIX`); the client must have no keyPrefix. */
const KEY_PREFIX = 'spg99:';

/** The Redis key of a timeline's term counter. */
export function writerTermKey(timelineId: string): string {
  return `${KEY_PREFIX}writer-term:{${timelineId}}`;
}

/** The Redis key of a timeline's lease hash. */
export function writerLeaseKey(timelineId: string): string {
  return `${KEY_PREFIX}writer-lease:{${timelineId}}`;
}

/**
 * The writer leases of all timelines, in one Redis. Safe to use from several control planes at once: each call is
 * one atomic script. A call whose reply was lost (Redis restarted) may have taken effect; calling it again is safe:
 * acquire and renew answer the same lease, release answers `released: false`.
 */
export class WriterLeases {
  private readonly defaultTtlMs: number;
  private readonly minTtlMs: number;
  private readonly maxTtlMs: number;

  constructor(
    private readonly redis: Redis,
    options: WriterLeaseOptions = {},
  ) {
    this.minTtlMs = options.minTtlMs ?? MIN_TTL_MS;
    this.maxTtlMs = options.maxTtlMs ?? MAX_TTL_MS;
    this.defaultTtlMs = options.defaultTtlMs ?? DEFAULT_TTL_MS;
    for (const [name, value] of Object.entries({ minTtlMs: this.minTtlMs, maxTtlMs: this.maxTtlMs, defaultTtlMs: this.defaultTtlMs })) {
      if (!Number.isSafeInteger(value) || value <= 0) throw new RangeError(`WriterLeases option ${name} must be a positive integer of milliseconds, not ${value}`);
    }
    if (this.minTtlMs > this.maxTtlMs) throw new RangeError(`WriterLeases option minTtlMs (${this.minTtlMs}) exceeds maxTtlMs (${this.maxTtlMs})`);
  }

  /**
   * Grants `computeId` the writer lease of `timelineId`. The holder gets its lease back with the same term and a new
   * expiry; when nobody holds an unexpired lease (never granted, expired or released) a new term greater than
   * every earlier one is granted.
   *
   * @throws FAILED_PRECONDITION when another compute holds an unexpired lease (the message names it and its expiry);
   *   INVALID_ARGUMENT for a malformed id or ttl; UNAVAILABLE when Redis cannot be reached.
   */
  async acquire(input: AcquireWriterLeaseInput): Promise<AcquiredWriterLease> {
    const timelineId = checkTimelineId(input.timelineId);
    const computeId = checkComputeId(input.computeId);
    const ttlMs = this.ttl(input.ttlMs);
    const reply = await this.run(SCRIPTS.acquire, timelineId, [computeId, String(ttlMs)]);
    const [outcome, term, grantedAtMs, expiresAtMs, nowMs] = reply as [string, number, number, number, number];
    if (outcome === 'held') {
      const holder = String(reply[5]);
      throw failedPrecondition(
        `timeline ${timelineId} already has a writer: compute ${holder} holds the lease of term ${term} until ` +
          `${iso(expiresAtMs)} (${expiresAtMs - nowMs} ms from now). Stop that compute (it releases the lease) or ` +
          'wait for the lease to expire, then acquire again.',
      );
    }
    if (outcome !== 'granted' && outcome !== 'current') throw unexpected('acquire', reply);
    return {
      lease: { timelineId, computeId, term: BigInt(term), grantedAt: new Date(grantedAtMs), expiresAt: new Date(expiresAtMs) },
      newTerm: outcome === 'granted',
      serverTime: new Date(nowMs),
    };
  }

  /**
   * Extends the lease of `term` held by `computeId` to `ttlMs` from now (Redis' clock); also past its expiry, as
   * long as no newer term was granted since.
   *
   * @throws ABORTED when the writer was superseded by a newer term, released its lease, or `term` belongs to another
   *   compute: it must stop writing; NOT_FOUND when `term` was never granted on the timeline; INVALID_ARGUMENT for
   *   malformed input; UNAVAILABLE when Redis cannot be reached.
   */
  async renew(input: RenewWriterLeaseInput): Promise<RenewedWriterLease> {
    const timelineId = checkTimelineId(input.timelineId);
    const computeId = checkComputeId(input.computeId);
    const term = checkTerm(input.term);
    const ttlMs = this.ttl(input.ttlMs);
    const reply = await this.run(SCRIPTS.renew, timelineId, [computeId, term.toString(), String(ttlMs)]);
    const [outcome, latestOrTerm, nowMs] = reply as [string, number, number];
    const latest = BigInt(latestOrTerm);
    switch (outcome) {
      case 'renewed': {
        const [, , , grantedAtMs, expiresAtMs] = reply as [string, number, number, number, number];
        return {
          lease: { timelineId, computeId, term, grantedAt: new Date(grantedAtMs), expiresAt: new Date(expiresAtMs) },
          serverTime: new Date(nowMs),
        };
      }
      case 'unknown':
        throw neverGranted(timelineId, term, latest);
      case 'superseded': {
        const holder = String(reply[3] ?? '');
        throw aborted(
          latest > term
            ? `this writer was superseded by term ${latest}${holder ? ` (compute ${holder})` : ''} on timeline ${timelineId}: ` +
                `compute ${computeId} with term ${term} is fenced; stop its Postgres and do not retry.`
            : `the lease of term ${term} on timeline ${timelineId} is no longer held: stop this writer's Postgres; ` +
                'acquire a new lease (a higher term) to write again.',
        );
      }
      case 'not-holder':
        throw aborted(
          `term ${term} on timeline ${timelineId} was granted to compute ${String(reply[3])}, not ${computeId}: ` +
            'this compute is not the writer; stop its Postgres.',
        );
      case 'released':
        throw aborted(
          `the lease of term ${term} on timeline ${timelineId} was released at ${iso(Number(reply[3]))}: this writer must ` +
            'stay stopped; acquire a new lease (a higher term) to write again.',
        );
      default:
        throw unexpected('renew', reply);
    }
  }

  /**
   * Ends the lease of `term` when `computeId` holds it, recording `finalLsn`; the next acquire, by any compute, gets
   * a higher term. Releasing a lease that is no longer held (expired and taken over, released already) is not an
   * error: it answers `released: false`.
   *
   * @throws NOT_FOUND when `term` was never granted on the timeline; INVALID_ARGUMENT for malformed input;
   *   UNAVAILABLE when Redis cannot be reached.
   */
  async release(input: ReleaseWriterLeaseInput): Promise<ReleasedWriterLease> {
    const timelineId = checkTimelineId(input.timelineId);
    const computeId = checkComputeId(input.computeId);
    const term = checkTerm(input.term);
    const finalLsn = input.finalLsn ?? 0n;
    if (typeof finalLsn !== 'bigint' || !isValidLsn(finalLsn)) {
      throw invalidArgument(`final_lsn must be an LSN (0 to 2^64-1; 0 when unknown), not ${String(finalLsn)}`);
    }
    const reply = await this.run(SCRIPTS.release, timelineId, [computeId, term.toString(), finalLsn === 0n ? '' : finalLsn.toString()]);
    const [outcome, latest, nowMs] = reply as [string, number, number];
    if (outcome === 'unknown') throw neverGranted(timelineId, term, BigInt(latest));
    if (outcome !== 'released' && outcome !== 'not-held') throw unexpected('release', reply);
    return { released: outcome === 'released', serverTime: new Date(nowMs) };
  }

  /** The timeline's latest term and lease, read atomically with Redis' clock. @throws INVALID_ARGUMENT, UNAVAILABLE. */
  async get(timelineId: string): Promise<WriterLeaseState> {
    checkTimelineId(timelineId);
    const reply = (await this.run(SCRIPTS.get, timelineId, [])) as [string, number, string, string, string, string, string, string];
    const [latest, nowMs, computeId, term, grantedAtMs, expiresAtMs, releasedAtMs, finalLsn] = reply;
    const lease: WriterLeaseRecord | null =
      computeId === ''
        ? null
        : {
            timelineId,
            computeId,
            term: BigInt(term),
            grantedAt: new Date(Number(grantedAtMs)),
            expiresAt: new Date(Number(expiresAtMs)),
            releasedAt: releasedAtMs === '' ? null : new Date(Number(releasedAtMs)),
            finalLsn: finalLsn === '' ? null : BigInt(finalLsn),
          };
    const held = lease !== null && lease.releasedAt === null && lease.expiresAt.getTime() > nowMs;
    return {
      timelineId,
      latestTerm: BigInt(latest),
      lease,
      holder: held ? { timelineId, computeId: lease.computeId, term: lease.term, grantedAt: lease.grantedAt, expiresAt: lease.expiresAt } : null,
      serverTime: new Date(nowMs),
    };
  }

  /** The requested ttl, checked and clamped to [minTtlMs, maxTtlMs]. */
  private ttl(ttlMs: number | undefined): number {
    if (ttlMs === undefined) return Math.min(this.maxTtlMs, Math.max(this.minTtlMs, this.defaultTtlMs));
    if (typeof ttlMs !== 'number' || !Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
      throw invalidArgument(`ttl must be a positive whole number of milliseconds (e.g. 10000), not ${String(ttlMs)}`);
    }
    return Math.min(this.maxTtlMs, Math.max(this.minTtlMs, ttlMs));
  }

  /** Runs a script on the timeline's keys; a Redis that cannot be reached is UNAVAILABLE (the caller may retry). */
  private async run(script: LuaScript, timelineId: string, args: string[]): Promise<unknown[]> {
    try {
      return await script.run(this.redis, [writerTermKey(timelineId), writerLeaseKey(timelineId)], args);
    } catch (error) {
      // A ReplyError is Redis refusing the script (a bug, or out of memory): that is INTERNAL, for the middleware.
      if (error instanceof Error && error.name !== 'ReplyError') {
        throw unavailable(`the control plane cannot reach Redis to change writer leases (${error.message}): retry with backoff`);
      }
      throw error;
    }
  }
}

function checkTimelineId(timelineId: string): string {
  if (typeof timelineId !== 'string' || !TIMELINE_ID_PATTERN.test(timelineId)) {
    throw invalidArgument(`timeline_id must be "tl-" and 32 lowercase hex digits, not ${JSON.stringify(timelineId)}`);
  }
  return timelineId;
}

function checkComputeId(computeId: string): string {
  if (typeof computeId !== 'string' || !COMPUTE_ID_PATTERN.test(computeId)) {
    throw invalidArgument(
      `compute_id must be 1 to 100 letters, digits, ".", "_" or "-" starting with a letter or digit, not ${JSON.stringify(computeId)}`,
    );
  }
  return computeId;
}

function checkTerm(term: bigint): bigint {
  if (typeof term !== 'bigint' || term < 1n || term > MAX_TERM) {
    throw invalidArgument(`term must be the term of a granted lease (1 to ${MAX_TERM}), not ${String(term)}: acquire a lease first`);
  }
  return term;
}

function neverGranted(timelineId: string, term: bigint, latest: bigint): Error {
  return notFound(
    latest === 0n
      ? `no writer lease was ever granted on timeline ${timelineId}: acquire one first (term ${term} is unknown)`
      : `term ${term} was never granted on timeline ${timelineId} (the latest is ${latest}): use the term AcquireWriterLease answered`,
  );
}

function iso(epochMs: number): string {
  return new Date(epochMs).toISOString();
}

function unexpected(operation: string, reply: unknown[]): Error {
  return new Error(`the writer-lease ${operation} script answered ${JSON.stringify(reply)}, which this control plane does not understand`);
}


/**
 * PostgreSQL WAL positions. An LSN is a 64-bit byte position in the WAL, held as a `bigint` and printed as `X/Y`
 * (high and low 32 bits in hex). Everything in SPG99 that does LSN arithmetic does it here.
 */

/** A WAL position. */
export type Lsn = bigint;

/** The WAL segment size used by SPG99's Postgres (initdb's default). */
export const WAL_SEGMENT_SIZE = 16n * 1024n * 1024n;
/** The WAL page size. */
export const WAL_PAGE_SIZE = 8192n;
/** The invalid LSN. */
export const INVALID_LSN: Lsn = 0n;
const MAX_LSN = (1n << 64n) - 1n;

/** Formats an LSN as Postgres prints it, e.g. `0/16B3748`. */
export function formatLsn(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Parses `X/Y`; throws a RangeError naming the text when it is not an LSN. */
export function parseLsn(text: string): Lsn {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!match) throw new RangeError(`"${text}" is not an LSN: expected two hex numbers as X/Y, e.g. 0/16B3748`);
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

/** Checks that a value read from the wire fits an LSN. */
export function isValidLsn(value: bigint): boolean {
  return value >= 0n && value <= MAX_LSN;
}

/** The number of the segment holding `lsn`. */
export function segmentNumber(lsn: Lsn, segmentSize = WAL_SEGMENT_SIZE): bigint {
  return lsn / segmentSize;
}

/** The first LSN of segment `segment`. */
export function segmentStart(segment: bigint, segmentSize = WAL_SEGMENT_SIZE): Lsn {
  return segment * segmentSize;
}

/** The offset of `lsn` inside its segment. */
export function segmentOffset(lsn: Lsn, segmentSize = WAL_SEGMENT_SIZE): number {
  return Number(lsn % segmentSize);
}

/** Postgres' file name of a segment on a timeline, e.g. `000000010000000000000003`. */
export function walFileName(timelineId: number, segment: bigint, segmentSize = WAL_SEGMENT_SIZE): string {
  const segmentsPerId = 0x100000000n / segmentSize;
  const hex = (value: bigint | number) => value.toString(16).toUpperCase().padStart(8, '0');
  return `${hex(timelineId)}${hex(segment / segmentsPerId)}${hex(segment % segmentsPerId)}`;
}

/** The larger of two LSNs. */
export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

/** The smaller of two LSNs. */
export function minLsn(a: Lsn, b: Lsn): Lsn {
  return a < b ? a : b;
}

/** Byte distance from `from` to `to` as a number (for metrics and buffers; never negative). */
export function lsnDistance(from: Lsn, to: Lsn): number {
  return to > from ? Number(to - from) : 0;
}

/**
 * The WAL the walproposer has read from Postgres and not yet delivered everywhere, in memory. The walproposer
 * trims it; a safekeeper lagging below it catches up from another safekeeper instead.
 */
import { type Lsn, formatLsn } from '../lib/lsn.js';

interface Chunk {
  beginLsn: Lsn;
  data: Buffer;
}

/** Contiguous WAL `[startLsn, endLsn)`. */
export class WalBuffer {
  private chunks: Chunk[] = [];
  private start: Lsn;
  private end: Lsn;
  private bytes = 0;

  constructor(startLsn: Lsn) {
    this.start = startLsn;
    this.end = startLsn;
  }

  get startLsn(): Lsn {
    return this.start;
  }

  get endLsn(): Lsn {
    return this.end;
  }

  get size(): number {
    return this.bytes;
  }

  /** Adds WAL continuing the buffer; throws when it does not continue it. */
  append(beginLsn: Lsn, data: Buffer): void {
    if (beginLsn !== this.end) {
      throw new Error(`WAL from Postgres at ${formatLsn(beginLsn)} does not continue the buffer ending at ${formatLsn(this.end)}`);
    }
    if (data.length === 0) return;
    this.chunks.push({ beginLsn, data });
    this.end += BigInt(data.length);
    this.bytes += data.length;
  }

  /** Up to `maxBytes` of WAL from `lsn` (empty at the end); null when `lsn` is no longer (or not yet) held. */
  read(lsn: Lsn, maxBytes: number): Buffer | null {
    if (lsn < this.start || lsn > this.end) return null;
    if (lsn === this.end) return Buffer.alloc(0);
    const parts: Buffer[] = [];
    let position = lsn;
    let remaining = maxBytes;
    let index = this.findChunk(lsn);
    while (remaining > 0 && index < this.chunks.length) {
      const chunk = this.chunks[index];
      const offset = Number(position - chunk.beginLsn);
      const piece = chunk.data.subarray(offset, offset + remaining);
      parts.push(piece);
      position += BigInt(piece.length);
      remaining -= piece.length;
      index += 1;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /** Forgets WAL below `lsn` (every safekeeper has it), keeping whole chunks. */
  trimBelow(lsn: Lsn): void {
    while (this.chunks.length > 0 && this.chunks[0].beginLsn + BigInt(this.chunks[0].data.length) <= lsn) this.dropFirst();
    if (this.chunks.length === 0) this.start = this.end;
  }

  private dropFirst(): void {
    const first = this.chunks.shift() as Chunk;
    this.bytes -= first.data.length;
    this.start = first.beginLsn + BigInt(first.data.length);
  }

  private findChunk(lsn: Lsn): number {
    let low = 0;
    let high = this.chunks.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.chunks[middle].beginLsn <= lsn) low = middle;
      else high = middle - 1;
    }
    return low;
  }
}

/**
 * The log of refused gRPC calls, rate-limited: anyone who reaches a port can cause refusals by the thousand, and one
 * WARN line each would make the log the attack's amplifier (and bury everything else). Per caller (its address and,
 * when it sent one, its credential's subject), method and status, the first refusal of an interval is logged at once;
 * the rest are counted and logged as one line with their count when the interval ends.
 */
import type { Logger } from '../log.js';

interface Pending {
  fields: Record<string, unknown>;
  suppressed: number;
}

export interface RefusalLogOptions {
  /** The interval (default 10 s). */
  intervalMs?: number;
  /** Distinct caller/method/status keys tracked per interval; more are summed in one line (default 1000). */
  maxKeys?: number;
}

export class RefusalLog {
  /** Keys seen this interval, with what was held back. */
  private readonly seen = new Map<string, Pending>();
  private overflow = 0;
  private timer: NodeJS.Timeout | null = null;
  private readonly intervalMs: number;
  private readonly maxKeys: number;

  constructor(
    private readonly log: Logger,
    options: RefusalLogOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 10_000;
    this.maxKeys = options.maxKeys ?? 1000;
  }

  /** Records one refused call. */
  refused(fields: { method: string; peer: string; code: string; details: string; caller?: string }): void {
    const host = fields.peer.replace(/:\d+$/, '');
    const key = `${host}\0${fields.caller ?? ''}\0${fields.method}\0${fields.code}`;
    const pending = this.seen.get(key);
    if (pending) {
      pending.suppressed += 1;
      pending.fields = fields;
    } else if (this.seen.size >= this.maxKeys) {
      this.overflow += 1;
    } else {
      this.seen.set(key, { fields, suppressed: 0 });
      this.log.warn(fields, 'call refused');
    }
    if (!this.timer) {
      this.timer = setTimeout(() => this.summarize(), this.intervalMs);
      this.timer.unref();
    }
  }

  /** Ends the interval: one line per key with refusals held back, and one for keys beyond the cap. */
  summarize(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const intervalS = this.intervalMs / 1000;
    for (const { fields, suppressed } of this.seen.values()) {
      if (suppressed > 0) this.log.warn({ ...fields, moreRefused: suppressed, intervalS }, 'call refused');
    }
    if (this.overflow > 0) this.log.warn({ moreRefused: this.overflow, intervalS, distinctCallers: `over ${this.maxKeys}` }, 'call refused');
    this.seen.clear();
    this.overflow = 0;
  }
}

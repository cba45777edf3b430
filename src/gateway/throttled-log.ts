/**
 * A log line for events that an attacker can cause by the thousand (silent connections, connections over a cap):
 * the first one in a window is logged at once, the rest are counted and summarized when the window ends, so the
 * log shows that it happens and how often without becoming the attack's amplifier.
 */
import type { Logger } from '../lib/log.js';

export class ThrottledLog {
  private windowStart = 0;
  private suppressed = 0;
  private lastFields: Record<string, unknown> = {};
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly message: string,
    private readonly windowMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records one event; logs it when it is the first of a window, else counts it for the window's summary. */
  event(fields: Record<string, unknown>): void {
    const now = this.now();
    if (now - this.windowStart >= this.windowMs) {
      this.windowStart = now;
      this.log.warn(fields, this.message);
      return;
    }
    this.suppressed += 1;
    this.lastFields = fields;
    if (!this.timer) {
      this.timer = setTimeout(() => this.summarize(), this.windowStart + this.windowMs - now);
      this.timer.unref();
    }
  }

  private summarize(): void {
    this.timer = null;
    if (this.suppressed === 0) return;
    this.log.warn({ ...this.lastFields, moreSinceLastLine: this.suppressed, windowS: this.windowMs / 1000 }, this.message);
    this.suppressed = 0;
    this.windowStart = this.now();
  }
}

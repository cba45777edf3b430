/**
 * Backoff for loops that must survive failures of their peers (reconnects, streaming). Cancellable.
 */
import { delay } from 'abort-controller-x';

/** Exponential backoff with full jitter between `initialMs` and `maxMs`. */
export class Backoff {
  private attempt = 0;
  constructor(
    private readonly initialMs = 50,
    private readonly maxMs = 2000,
  ) {}

  /** The delay before the next attempt, growing with each failure. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    this.attempt += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  /** Forgets the failures after a success. */
  reset(): void {
    this.attempt = 0;
  }

  /** Waits for the next delay; rejects with an AbortError when `signal` aborts. */
  async wait(signal: AbortSignal): Promise<void> {
    await delay(signal, this.next());
  }
}

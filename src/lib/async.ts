/**
 * Small concurrency tools for long-running loops: a notifier to wait for "something changed", and a queue that
 * turns pushes into an async iterable (for gRPC streams fed from callbacks).
 */

/** Wakes every waiter when notified. Waiting is cancellable. */
export class Notifier {
  private waiters = new Set<() => void>();

  /** Wakes all current waiters. */
  notify(): void {
    const waiting = this.waiters;
    this.waiters = new Set();
    for (const wake of waiting) wake();
  }

  /** Resolves at the next notify, after `timeoutMs` (if given), or rejects when `signal` aborts. */
  wait(signal?: AbortSignal, timeoutMs?: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason ?? new Error('aborted'));
        return;
      }
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiters.delete(done);
        resolve();
      };
      const onAbort = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        reject(signal?.reason ?? new Error('aborted'));
      };
      if (timeoutMs !== undefined) timer = setTimeout(done, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.add(done);
    });
  }
}

/** An unbounded queue read as an async iterable; `fail` makes the reader throw, `end` finishes it. */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private readonly notifier = new Notifier();
  private ended = false;
  private error: unknown = null;

  push(item: T): void {
    if (this.ended || this.error) return;
    this.items.push(item);
    this.notifier.notify();
  }

  end(): void {
    this.ended = true;
    this.notifier.notify();
  }

  fail(error: unknown): void {
    if (this.error) return;
    this.error = error;
    this.notifier.notify();
  }

  get length(): number {
    return this.items.length;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.error) throw this.error;
      if (this.items.length > 0) {
        yield this.items.shift() as T;
        continue;
      }
      if (this.ended) return;
      await this.notifier.wait();
    }
  }
}

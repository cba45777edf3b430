/**
 * Process lifecycle for `cmd/*` entry points: configuration errors printed as such, and a clean stop on SIGTERM
 * or SIGINT (a second signal exits at once).
 */
import { ConfigError } from './config.js';
import type { Logger } from './log.js';

/** Runs `start`; on SIGTERM/SIGINT runs the stop function it returned and exits 0. Exits 2 on a ConfigError. */
export async function runComponent(
  name: string,
  start: () => Promise<{ log: Logger; stop: () => Promise<void> }>,
): Promise<void> {
  let started: { log: Logger; stop: () => Promise<void> };
  try {
    started = await start();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${name}: ${error.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`${name}: could not start: ${(error as Error)?.stack ?? error}\n`);
    process.exit(1);
  }
  const { log, stop } = started;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'stopping');
    stop()
      .then(() => {
        log.info('stopped cleanly');
        process.exit(0);
      })
      .catch((error: unknown) => {
        log.error({ err: error }, 'error while stopping');
        process.exit(1);
      });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

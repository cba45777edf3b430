/**
 * Process lifecycle for `cmd/*` entry points: configuration errors printed as such, and a clean stop on SIGTERM
 * or SIGINT (a second signal exits at once).
 */
import { ConfigError, loadConfig, usage, type ConfigOf, type OptionSpec } from './config.js';
import type { Logger } from './log.js';

/**
 * Runs a component: `--help` prints the options of `spec`; otherwise the configuration is read and `start` runs;
 * on SIGTERM/SIGINT the stop function it returned runs and the process exits 0. Exits 2 on a configuration error.
 */
export async function runComponent<S extends Record<string, OptionSpec>>(
  name: string,
  spec: S,
  start: (config: ConfigOf<S>) => Promise<{ log: Logger; stop: () => Promise<void> }>,
): Promise<void> {
  // Whatever the platform writes (WAL, objects, keys, logs) is private to its OS user (docs/security.md).
  process.umask(0o077);
  if (process.argv.includes('--help')) {
    console.log(usage(name, spec));
    process.exit(0);
  }
  let started: { log: Logger; stop: () => Promise<void> };
  try {
    started = await start(loadConfig(spec));
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

/** What every benchmark does when it is interrupted or its output goes away: stop its processes first. */

/**
 * On SIGINT or SIGTERM, runs `cleanUp(true)` (stop every process, remove the temporary directories, print the
 * logs) and exits 130; when stdout closes (piped into `head`), cleans up and exits 1 instead of orphaning children.
 */
export function cleanUpOnExit(cleanUp: (dumpLogs?: boolean) => Promise<void>): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`${signal}: stopping every process and removing the temporary directories`);
      cleanUp(true)
        .catch((error: unknown) => console.error((error as Error).message))
        .finally(() => process.exit(130));
    });
  }
  process.stdout.on('error', () => {
    cleanUp().catch(() => undefined).finally(() => process.exit(1));
  });
}

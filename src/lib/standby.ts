/**
 * Standby processes: a component started ahead of need with `--standby` (the provisioner does so with agents, so
 * that a cold start does not wait for Node and the agent's modules to load) reads its real command line as one JSON
 * line (an array of flags) on stdin, then runs as if started with it, under the title `<title> <id>` (what `ps`
 * shows). A process started this way also stops when its stdin ends: whoever started it is gone, and nothing would
 * ever stop it otherwise.
 */
import readline from 'node:readline';

/** The flag that makes a process a standby. */
export const STANDBY_FLAG = '--standby';

/**
 * When this process is a standby, waits for its flags on stdin and puts them in `process.argv` (the value of
 * `idFlag` goes into its title); afterwards a closed stdin sends this process SIGTERM. Does nothing for a process
 * started with its flags.
 */
export async function awaitStandbyFlags(title: string, idFlag: string): Promise<void> {
  if (process.argv[2] !== STANDBY_FLAG) return;
  const lines = readline.createInterface({ input: process.stdin });
  const flags = await new Promise<string[]>((resolve, reject) => {
    lines.once('line', (line) => {
      try {
        const parsed = JSON.parse(line) as unknown;
        if (!Array.isArray(parsed) || !parsed.every((flag) => typeof flag === 'string')) throw new Error('not an array of strings');
        resolve(parsed as string[]);
      } catch (error) {
        reject(new Error(`a standby's command line must be a JSON array of strings on one line: ${(error as Error).message}`));
      }
    });
    lines.once('close', () => reject(new Error('stdin closed before the standby got its command line')));
  }).catch((error: Error) => {
    process.stderr.write(`${title}: ${error.message}\n`);
    process.exit(2);
  });
  process.argv.splice(2, process.argv.length - 2, ...flags);
  const id = flags[flags.indexOf(idFlag) + 1];
  process.title = id && flags.includes(idFlag) ? `${title} ${id}` : title;
  lines.on('close', () => process.kill(process.pid, 'SIGTERM'));
}

/** Facts about local OS processes. */
import fs from 'node:fs';

/**
 * Whether process `pid` runs. A zombie counts as gone: a process whose parent has not reaped it (a detached
 * component whose parent exited, in a container whose init does not reap) has exited all the same.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

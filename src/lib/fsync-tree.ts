/**
 * Makes a directory tree durable: every file and directory in it is fsynced. For a data directory written by a
 * Postgres that ran with `fsync=off` (a compute, whose durability is the safekeepers'), before anything else is
 * told the directory may be used again.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';

/** fsyncs in flight at once (a data directory holds about a thousand files). */
const PARALLEL_FSYNCS = 16;

/** fsyncs every regular file and directory under `directory` (itself included); symlinks are not followed. */
export async function fsyncTree(directory: string): Promise<void> {
  const paths: string[] = [];
  const walk = async (current: string): Promise<void> => {
    for (const entry of await fsp.readdir(current, { withFileTypes: true })) {
      const full = path.join(current, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) paths.push(full);
    }
    // A directory after its entries: its own fsync makes their names durable.
    paths.push(current);
  };
  await walk(directory);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < paths.length) await fsyncPath(paths[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_FSYNCS, paths.length) }, worker));
}

/** fsyncs one file or directory. */
export async function fsyncPath(file: string): Promise<void> {
  const handle = await fsp.open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

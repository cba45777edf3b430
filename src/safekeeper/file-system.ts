/**
 * The file operations a safekeeper's durable state uses (WAL segments, control files), behind one small interface
 * so that the same code runs on the real disk and on a simulated one that keeps written-but-unsynced data apart
 * and drops it at a simulated crash (test/sim/simulated-disk.ts). Everything is synchronous except the WAL's group
 * fdatasync, which production may run in libuv's thread pool.
 */
import fs from 'node:fs';

/** What WalStore, the control file and Timeline need of a file system. */
export interface FileSystem {
  /** Whether the disk is real: only then is preallocating segment files worth its I/O. */
  readonly real: boolean;
  existsSync(path: string): boolean;
  mkdirSync(path: string): void;
  readdirSync(path: string): string[];
  /** Opens a file: 'r' (read), 'r+' (read and write), 'w' / 'w+' (created or emptied). */
  openSync(path: string, flags: 'r' | 'r+' | 'w' | 'w+'): number;
  closeSync(fd: number): void;
  fileSize(fd: number): number;
  readSync(fd: number, buffer: Buffer, offset: number, length: number, position: number): number;
  writevSync(fd: number, buffers: readonly Buffer[], position: number): number;
  ftruncateSync(fd: number, length: number): void;
  /** Makes a file's data (and its size) durable; for a directory opened with 'r', its entries. */
  fsyncSync(fd: number): void;
  /** fdatasync of several files, possibly off the event loop (`inline` false). */
  fdatasync(fds: readonly number[], inline: boolean): Promise<void>;
  renameSync(from: string, to: string): void;
  /** Removes a file or a whole directory tree; absent is fine. */
  rmSync(path: string): void;
  readFileSync(path: string): Buffer;
}

/** Node's file system (the real disk). */
export const nodeFileSystem: FileSystem = {
  real: true,
  existsSync: (file) => fs.existsSync(file),
  mkdirSync: (directory) => void fs.mkdirSync(directory, { recursive: true }),
  readdirSync: (directory) => fs.readdirSync(directory),
  openSync: (file, flags) => fs.openSync(file, flags),
  closeSync: (fd) => fs.closeSync(fd),
  fileSize: (fd) => fs.fstatSync(fd).size,
  readSync: (fd, buffer, offset, length, position) => fs.readSync(fd, buffer, offset, length, position),
  writevSync: (fd, buffers, position) => fs.writevSync(fd, buffers as Buffer[], position),
  ftruncateSync: (fd, length) => fs.ftruncateSync(fd, length),
  fsyncSync: (fd) => fs.fsyncSync(fd),
  async fdatasync(fds, inline) {
    if (inline) {
      for (const fd of fds) fs.fdatasyncSync(fd);
      return;
    }
    await Promise.all(fds.map((fd) => new Promise<void>((resolve, reject) => fs.fdatasync(fd, (error) => (error ? reject(error) : resolve())))));
  },
  renameSync: (from, to) => fs.renameSync(from, to),
  rmSync: (file) => fs.rmSync(file, { recursive: true, force: true }),
  readFileSync: (file) => fs.readFileSync(file),
};

/** fsyncs a directory, so that the entries created, renamed or removed in it survive a crash. */
export function syncDirectory(fileSystem: FileSystem, directory: string): void {
  const fd = fileSystem.openSync(directory, 'r');
  try {
    fileSystem.fsyncSync(fd);
  } finally {
    fileSystem.closeSync(fd);
  }
}

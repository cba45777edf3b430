/**
 * A crash-consistent simulated disk for the safekeeper's FileSystem interface: it keeps, apart, what was written
 * and what was made durable, and a crash keeps only the durable part. A file's bytes become durable at its fsync;
 * a name (created, renamed, removed) at the fsync of its directory, as on Linux file systems that promise no more.
 * Directories themselves are created durably (a simplification: the safekeeper fsyncs their parents anyway).
 */
import path from 'node:path';
import type { FileSystem } from '../../src/safekeeper/file-system.js';

interface Inode {
  /** What reads see. */
  data: Buffer;
  /** What a crash keeps. */
  synced: Buffer;
}

interface OpenFile {
  path: string;
  inode: Inode | null;
  directory: boolean;
}

/** A disk in memory, whose unsynced writes a crash drops. */
export class SimulatedDisk implements FileSystem {
  readonly real = false;
  /** The names as processes see them. */
  private names = new Map<string, Inode>();
  /** The names a crash keeps. */
  private durableNames = new Map<string, Inode>();
  private readonly directories = new Set<string>(['/']);
  private readonly fds = new Map<number, OpenFile>();
  private nextFd = 3;
  /** fsyncs that are skipped (a test's way to remove one and see what breaks), by a predicate on the path. */
  skipFsync: ((file: string) => boolean) | null = null;
  /** Counts fsyncs (files and directories). */
  fsyncs = 0;

  /**
   * A crash: every unsynced write and name change is lost, every open file is gone. `writtenBack` names files whose
   * unsynced writes the system had happened to write back before the crash (a disk may persist any of them early,
   * a truncation included): they keep what was written.
   */
  crash(writtenBack: (file: string) => boolean = () => false): void {
    this.fds.clear();
    const names = new Map<string, Inode>();
    for (const [name, inode] of this.durableNames) {
      if (writtenBack(name)) inode.synced = Buffer.from(inode.data);
      inode.data = Buffer.from(inode.synced);
      names.set(name, inode);
    }
    this.names = names;
    this.durableNames = new Map(names);
  }

  existsSync(file: string): boolean {
    return this.names.has(file) || this.directories.has(file);
  }

  mkdirSync(directory: string): void {
    for (let current = directory; !this.directories.has(current); current = path.dirname(current)) this.directories.add(current);
  }

  readdirSync(directory: string): string[] {
    if (!this.directories.has(directory)) throw enoent('scandir', directory);
    const entries = new Set<string>();
    for (const name of [...this.names.keys(), ...this.directories]) {
      if (name !== directory && path.dirname(name) === directory) entries.add(path.basename(name));
    }
    return [...entries].sort();
  }

  openSync(file: string, flags: 'r' | 'r+' | 'w' | 'w+'): number {
    if (this.directories.has(file)) {
      const fd = this.nextFd++;
      this.fds.set(fd, { path: file, inode: null, directory: true });
      return fd;
    }
    let inode = this.names.get(file);
    if (flags === 'w' || flags === 'w+') {
      if (!this.directories.has(path.dirname(file))) throw enoent('open', file);
      if (inode) inode.data = Buffer.alloc(0);
      else {
        inode = { data: Buffer.alloc(0), synced: Buffer.alloc(0) };
        this.names.set(file, inode);
      }
    }
    if (!inode) throw enoent('open', file);
    const fd = this.nextFd++;
    this.fds.set(fd, { path: file, inode, directory: false });
    return fd;
  }

  closeSync(fd: number): void {
    this.fds.delete(fd);
  }

  fileSize(fd: number): number {
    return this.inodeOf(fd).data.length;
  }

  readSync(fd: number, buffer: Buffer, offset: number, length: number, position: number): number {
    const data = this.inodeOf(fd).data;
    const available = Math.max(0, Math.min(length, data.length - position));
    data.copy(buffer, offset, position, position + available);
    return available;
  }

  writevSync(fd: number, buffers: readonly Buffer[], position: number): number {
    const inode = this.inodeOf(fd);
    const total = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
    if (inode.data.length < position + total) {
      const grown = Buffer.alloc(position + total);
      inode.data.copy(grown);
      inode.data = grown;
    }
    let at = position;
    for (const buffer of buffers) {
      buffer.copy(inode.data, at);
      at += buffer.length;
    }
    return total;
  }

  ftruncateSync(fd: number, length: number): void {
    const inode = this.inodeOf(fd);
    const resized = Buffer.alloc(length);
    inode.data.copy(resized, 0, 0, Math.min(length, inode.data.length));
    inode.data = resized;
  }

  fsyncSync(fd: number): void {
    const open = this.fds.get(fd);
    if (!open) throw new Error(`EBADF: fsync of fd ${fd}`);
    if (this.skipFsync?.(open.path)) return;
    this.fsyncs += 1;
    if (open.directory) {
      for (const name of [...this.durableNames.keys()]) {
        if (path.dirname(name) === open.path && !this.names.has(name)) this.durableNames.delete(name);
      }
      for (const [name, inode] of this.names) {
        if (path.dirname(name) === open.path) this.durableNames.set(name, inode);
      }
      return;
    }
    const inode = open.inode as Inode;
    inode.synced = Buffer.from(inode.data);
  }

  async fdatasync(fds: readonly number[]): Promise<void> {
    for (const fd of fds) if (this.fds.has(fd)) this.fsyncSync(fd);
  }

  renameSync(from: string, to: string): void {
    const inode = this.names.get(from);
    if (!inode) throw enoent('rename', from);
    this.names.delete(from);
    this.names.set(to, inode);
  }

  rmSync(target: string): void {
    for (const name of [...this.names.keys()]) {
      if (name === target || name.startsWith(`${target}/`)) this.names.delete(name);
    }
    for (const directory of [...this.directories]) {
      if (directory === target || directory.startsWith(`${target}/`)) this.directories.delete(directory);
    }
  }

  readFileSync(file: string): Buffer {
    const inode = this.names.get(file);
    if (!inode) throw enoent('open', file);
    return Buffer.from(inode.data);
  }

  private inodeOf(fd: number): Inode {
    const open = this.fds.get(fd);
    if (!open?.inode) throw new Error(`EBADF: fd ${fd} is not an open file`);
    return open.inode;
  }
}

function enoent(call: string, file: string): Error {
  return Object.assign(new Error(`ENOENT: no such file or directory, ${call} '${file}'`), { code: 'ENOENT' });
}

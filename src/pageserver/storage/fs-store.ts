/**
 * The filesystem backend of {@link ObjectStore}: an object is a file at `<root>/<key>`. Writes go to a temporary
 * file in the object's directory, are fsynced, renamed over the object and the directory is fsynced, so a reader
 * sees the old or the whole new object and an acknowledged write survives a crash.
 *
 * A key cannot name both an object and a folder of other objects (`a` and `a/b`), as it can in S3: such a put fails.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import {
  type ObjectInfo,
  type ObjectStore,
  ObjectNotFoundError,
  ObjectStoreError,
  compareByKey,
  validateKey,
  validatePrefix,
  validateRange,
} from './object-store.js';

/** Marks the temporary files of writes in progress; they are never listed, and no key may contain it. */
const TEMP_MARKER = '.spg99-tmp-';

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

function isAbsent(error: unknown): boolean {
  // ENOTDIR: a parent of the path is an object; EISDIR: the path is a folder of objects.
  const code = errorCode(error);
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR';
}

function temporaryPathFor(target: string): string {
  return path.join(path.dirname(target), `${path.basename(target)}${TEMP_MARKER}${randomBytes(6).toString('hex')}`);
}

/** Makes a rename or a file creation in `directory` durable. */
async function fsyncDirectory(directory: string): Promise<void> {
  const handle = await fsp.open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Creates `directory` and its missing parents, fsyncing the parent of each one created. */
async function makeDirectoryDurably(directory: string): Promise<void> {
  const firstCreated = await fsp.mkdir(directory, { recursive: true });
  if (firstCreated === undefined) return;
  for (let created = directory; ; created = path.dirname(created)) {
    await fsyncDirectory(path.dirname(created));
    if (created === firstCreated) break;
  }
}

/**
 * Moves `temporary` (already fsynced) over `target` and makes the rename durable. A crash before the rename leaves
 * only the temporary file (never listed) and the old object; after it, the new object.
 */
async function publish(temporary: string, target: string): Promise<void> {
  await fsp.rename(temporary, target);
  await fsyncDirectory(path.dirname(target));
}

/** Writes what `write` produces to a temporary file beside `target`, fsyncs it, and renames it over `target`. */
async function writeAtomically(target: string, write: (temporary: string) => Promise<void>): Promise<void> {
  await makeDirectoryDurably(path.dirname(target));
  const temporary = temporaryPathFor(target);
  try {
    await write(temporary);
    const handle = await fsp.open(temporary, 'r+');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await publish(temporary, target);
  } catch (error) {
    await fsp.rm(temporary, { force: true });
    throw error;
  }
}

/** Objects as files under a local directory. */
export class FsObjectStore implements ObjectStore {
  readonly description: string;

  private constructor(private readonly root: string) {
    this.description = pathToFileURL(root).href;
  }

  /** Opens the store rooted at the absolute directory `root`, creating it when missing. */
  static async open(root: string): Promise<FsObjectStore> {
    const store = new FsObjectStore(root);
    try {
      await makeDirectoryDurably(root);
      const stat = await fsp.stat(root);
      if (!stat.isDirectory()) throw new Error('it is not a directory');
    } catch (error) {
      throw new ObjectStoreError(`cannot open object store ${store.description}: ${describe(error)}`, { cause: error });
    }
    return store;
  }

  async put(key: string, body: Buffer): Promise<void> {
    const target = this.pathOf(key);
    await this.wrap('put', key, () => writeAtomically(target, (temporary) => fsp.writeFile(temporary, body, { flag: 'wx' })));
  }

  async putFile(key: string, localPath: string): Promise<void> {
    const target = this.pathOf(key);
    await this.wrap('put', key, async () => {
      try {
        await fsp.access(localPath, fs.constants.R_OK);
      } catch (error) {
        throw new ObjectStoreError(`cannot upload ${localPath} as "${key}" to ${this.description}: ${describe(error)}`, { cause: error });
      }
      await writeAtomically(target, (temporary) => fsp.copyFile(localPath, temporary, fs.constants.COPYFILE_EXCL));
    });
  }

  async get(key: string): Promise<Buffer> {
    const target = this.pathOf(key);
    return this.wrap('get', key, () => fsp.readFile(target));
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const target = this.pathOf(key);
    validateRange(key, offset, length, this.description);
    return this.wrap('get', key, async () => {
      const handle = await fsp.open(target, 'r');
      try {
        const { size } = await handle.stat();
        if (offset + length > size) {
          throw new ObjectStoreError(
            `range of ${length} bytes at offset ${offset} is past the end of object "${key}" (${size} bytes) in ${this.description}`,
          );
        }
        const buffer = Buffer.alloc(length);
        let filled = 0;
        while (filled < length) {
          const { bytesRead } = await handle.read(buffer, filled, length - filled, offset + filled);
          if (bytesRead === 0) throw new Error(`object shrank while reading: ${filled} of ${length} bytes read`);
          filled += bytesRead;
        }
        return buffer;
      } finally {
        await handle.close();
      }
    });
  }

  async getToFile(key: string, localPath: string): Promise<void> {
    const source = this.pathOf(key);
    // Opened first, so a missing object is reported as such and an overwrite during the copy cannot mix versions.
    const input = await this.wrap('get', key, () => fsp.open(source, 'r'));
    try {
      await writeAtomically(localPath, (temporary) =>
        pipeline(input.createReadStream({ autoClose: false }), fs.createWriteStream(temporary, { flags: 'wx' })),
      );
    } catch (error) {
      throw new ObjectStoreError(`cannot download "${key}" from ${this.description} to ${localPath}: ${describe(error)}`, { cause: error });
    } finally {
      await input.close();
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const target = this.pathOf(key);
    try {
      const stat = await fsp.stat(target);
      return stat.isFile() ? { key, size: stat.size } : undefined;
    } catch (error) {
      if (isAbsent(error)) return undefined;
      throw this.failure('stat', key, error);
    }
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    validatePrefix(prefix, this.description);
    // Walk only the deepest folder the prefix names in full; the rest of the prefix filters names.
    const folder = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const found: ObjectInfo[] = [];
    const walk = async (relative: string): Promise<void> => {
      let entries: fs.Dirent[];
      try {
        entries = await fsp.readdir(path.join(this.root, relative), { withFileTypes: true });
      } catch (error) {
        if (isAbsent(error)) return;
        throw error;
      }
      for (const entry of entries) {
        const key = relative === '' ? entry.name : `${relative}/${entry.name}`;
        if (entry.isDirectory()) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) await walk(key);
        } else if (entry.isFile() && key.startsWith(prefix) && !entry.name.includes(TEMP_MARKER)) {
          try {
            found.push({ key, size: (await fsp.stat(path.join(this.root, key))).size });
          } catch (error) {
            // Deleted since the directory was read.
            if (!isAbsent(error)) throw error;
          }
        }
      }
    };
    try {
      await walk(folder);
    } catch (error) {
      throw this.failure('list', prefix, error);
    }
    return found.sort(compareByKey);
  }

  async delete(key: string): Promise<void> {
    const target = this.pathOf(key);
    try {
      const stat = await fsp.stat(target);
      if (!stat.isFile()) return;
      await fsp.rm(target, { force: true });
      // Empty folders are left behind: removing them would race with a put creating an object in them.
    } catch (error) {
      if (isAbsent(error)) return;
      throw this.failure('delete', key, error);
    }
  }

  async deleteMany(keys: string[]): Promise<void> {
    for (const key of keys) this.pathOf(key);
    for (const key of keys) await this.delete(key);
  }

  async close(): Promise<void> {
    // Nothing is held open between calls.
  }

  /** The file of `key`, after checking the key. */
  localPath(key: string): string | undefined {
    const file = this.pathOf(key);
    return fs.existsSync(file) ? file : undefined;
  }

  private pathOf(key: string): string {
    validateKey(key, this.description);
    if (key.includes(TEMP_MARKER)) {
      throw new ObjectStoreError(`invalid object key ${JSON.stringify(key)} for ${this.description}: "${TEMP_MARKER}" is reserved for temporary files`);
    }
    return path.join(this.root, ...key.split('/'));
  }

  /** Runs `operation`, turning a missing file into ObjectNotFoundError and other failures into ObjectStoreError. */
  private async wrap<T>(verb: string, key: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      if (error instanceof ObjectStoreError) throw error;
      if (verb === 'get' && isAbsent(error)) throw new ObjectNotFoundError(key, this.description, { cause: error });
      throw this.failure(verb, key, error);
    }
  }

  private failure(verb: string, key: string, error: unknown): ObjectStoreError {
    return new ObjectStoreError(`cannot ${verb} "${key}" in ${this.description}: ${describe(error)}`, { cause: error });
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

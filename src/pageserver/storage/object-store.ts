/**
 * The pageserver's object storage: one interface for whole objects under relative `/`-separated keys, with a
 * filesystem backend (`file:///dir`, for tests and single-machine setups) and an S3 backend (`s3://bucket/prefix`).
 * Both write objects atomically, so a reader sees the old object or the whole new one, never a part.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** An object's key (relative to the store) and size in bytes. */
export interface ObjectInfo {
  key: string;
  size: number;
}

/** Whole objects under relative keys such as `timelines/tl-abc/wal/000000010000000000000001`. */
export interface ObjectStore {
  /** e.g. `file:///abs/path` or `s3://bucket/prefix (endpoint http://127.0.0.1:9000)`, for logs and errors. */
  readonly description: string;
  /** Writes a whole object atomically: a reader sees the old object or the whole new one, never a part. */
  put(key: string, body: Buffer): Promise<void>;
  /** Uploads a local file as an object (streamed, not read whole into memory). */
  putFile(key: string, localPath: string): Promise<void>;
  /** Throws ObjectNotFoundError (naming the key and store) when absent. */
  get(key: string): Promise<Buffer>;
  /** `length` bytes from `offset`; ObjectNotFoundError when absent; a range past the end is an ObjectStoreError. */
  getRange(key: string, offset: number, length: number): Promise<Buffer>;
  /** Downloads to a local file (streamed; written to a temp name and renamed). */
  getToFile(key: string, localPath: string): Promise<void>;
  /** undefined when absent. */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every object whose key starts with prefix, sorted by key ascending. */
  list(prefix: string): Promise<ObjectInfo[]>;
  /** No error when absent. */
  delete(key: string): Promise<void>;
  /** Deletes every key given; keys already absent are no error. */
  deleteMany(keys: string[]): Promise<void>;
  /** Releases connections; the store is not used afterwards. */
  /**
   * A local file that holds the object, when the store keeps objects as local files (the filesystem backend):
   * readers of immutable objects then read it in place instead of keeping a copy. Undefined otherwise.
   */
  localPath?(key: string): string | undefined;
  close(): Promise<void>;
}

/** Credentials and region for an S3 store; each falls back to the URL or the environment. */
export interface ObjectStoreOptions {
  /** Default: env `SPG99_S3_ACCESS_KEY`. */
  accessKey?: string;
  /** Default: env `SPG99_S3_SECRET_KEY`. */
  secretKey?: string;
  /** Default: the URL's `region` parameter, else `us-east-1`. */
  region?: string;
}

/** A failure of the object store: a bad key or URL, an I/O or network error (with the original as `cause`). */
export class ObjectStoreError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'ObjectStoreError';
  }
}

/** The object asked for does not exist. */
export class ObjectNotFoundError extends ObjectStoreError {
  constructor(
    readonly key: string,
    storeDescription: string,
    options?: ErrorOptions,
  ) {
    super(`object "${key}" not found in ${storeDescription}`, options);
    this.name = 'ObjectNotFoundError';
  }
}

/** Sorts object infos by key ascending (code unit order, the same in every backend). */
export function compareByKey(a: ObjectInfo, b: ObjectInfo): number {
  if (a.key < b.key) return -1;
  return a.key > b.key ? 1 : 0;
}

/** What is wrong with `value` as a key (`allowPrefix`: also as a list prefix), or undefined when nothing is. */
function keyProblem(value: string, allowPrefix: boolean): string | undefined {
  if (typeof value !== 'string') return 'is not a string';
  if (value === '') return allowPrefix ? undefined : 'is empty';
  if (value.includes('\0')) return 'contains a NUL character';
  if (value.includes('\\')) return 'contains a backslash (keys are "/"-separated)';
  if (value.startsWith('/')) return 'is absolute (keys are relative to the store)';
  if (value.includes('//')) return 'contains "//" (an empty path segment)';
  const segments = value.split('/');
  if (segments.some((segment) => segment === '..')) return 'contains a ".." segment';
  if (segments.some((segment) => segment === '.')) return 'contains a "." segment';
  if (!allowPrefix && value.endsWith('/')) return 'ends with "/" (that names a folder, not an object)';
  return undefined;
}

/** Throws an ObjectStoreError saying what is wrong when `key` is not a valid object key. */
export function validateKey(key: string, storeDescription: string): void {
  const problem = keyProblem(key, false);
  if (problem !== undefined) throw new ObjectStoreError(`invalid object key ${JSON.stringify(key)} for ${storeDescription}: it ${problem}`);
}

/** Like {@link validateKey} for a list prefix, which may be empty or end with "/". */
export function validatePrefix(prefix: string, storeDescription: string): void {
  const problem = keyProblem(prefix, true);
  if (problem !== undefined) throw new ObjectStoreError(`invalid list prefix ${JSON.stringify(prefix)} for ${storeDescription}: it ${problem}`);
}

/** Throws unless `offset` and `length` are non-negative safe integers. */
export function validateRange(key: string, offset: number, length: number, storeDescription: string): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new ObjectStoreError(
      `invalid range of object "${key}" in ${storeDescription}: offset ${offset} and length ${length} must be non-negative integers`,
    );
  }
}

const ACCEPTED_FORMS =
  'accepted forms: file:///absolute/dir, /absolute/dir, s3://bucket[/prefix][?endpoint=http://host:port&region=us-east-1]';

/** The parsed form of an S3 store URL. */
export interface S3Location {
  bucket: string;
  /** The key prefix inside the bucket, without leading or trailing "/" ("" for the whole bucket). */
  prefix: string;
  /** e.g. `http://127.0.0.1:9000`; undefined for AWS S3. */
  endpoint: URL | undefined;
  region: string | undefined;
}

function badUrl(url: string, problem: string): ObjectStoreError {
  return new ObjectStoreError(`invalid object store URL ${JSON.stringify(url)}: ${problem}; ${ACCEPTED_FORMS}`);
}

/** Parses `s3://bucket/prefix?endpoint=...&region=...`. */
function parseS3Url(url: string): S3Location {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw badUrl(url, 'it does not parse as a URL');
  }
  const bucket = parsed.hostname;
  // The S3 rules for bucket names (3 to 63 lower-case letters, digits, dots and hyphens).
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw badUrl(url, `"${bucket}" is not a valid S3 bucket name`);
  if (parsed.port !== '' || parsed.username !== '' || parsed.password !== '') {
    throw badUrl(url, 'the host part must be a bucket name alone (give the server as ?endpoint=, credentials as options)');
  }
  const prefix = decodeURIComponent(parsed.pathname).replace(/^\/+|\/+$/g, '');
  if (prefix !== '') {
    const problem = keyProblem(prefix, false);
    if (problem !== undefined) throw badUrl(url, `the prefix "${prefix}" ${problem}`);
  }
  let endpoint: URL | undefined;
  let region: string | undefined;
  for (const [name, value] of parsed.searchParams) {
    if (name === 'endpoint') {
      try {
        endpoint = new URL(value);
      } catch {
        throw badUrl(url, `endpoint "${value}" is not a URL`);
      }
      if (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') {
        throw badUrl(url, `endpoint "${value}" must be http:// or https://`);
      }
      if (endpoint.pathname !== '/' || endpoint.search !== '') throw badUrl(url, `endpoint "${value}" must have no path or query`);
    } else if (name === 'region') {
      region = value;
    } else {
      throw badUrl(url, `unknown parameter "${name}" (known: endpoint, region)`);
    }
  }
  return { bucket, prefix, endpoint, region };
}

/**
 * Opens the store `url` names: `file:///absolute/dir` or an absolute path (created if missing), or
 * `s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1` (the bucket is created if missing;
 * credentials come from `options`, else env `SPG99_S3_ACCESS_KEY` / `SPG99_S3_SECRET_KEY`).
 */
export async function openObjectStore(url: string, options: ObjectStoreOptions = {}): Promise<ObjectStore> {
  // Backends are loaded on use: no import cycle with this module, and no S3 client for a filesystem store.
  if (url.startsWith('file:')) {
    let directory: string;
    try {
      directory = fileURLToPath(url);
    } catch (error) {
      throw badUrl(url, `it is not a local file URL (${error instanceof Error ? error.message : String(error)})`);
    }
    const { FsObjectStore } = await import('./fs-store.js');
    return FsObjectStore.open(directory);
  }
  if (url.startsWith('s3:')) {
    const location = parseS3Url(url);
    const accessKey = options.accessKey ?? process.env.SPG99_S3_ACCESS_KEY;
    const secretKey = options.secretKey ?? process.env.SPG99_S3_SECRET_KEY;
    if (!accessKey || !secretKey) {
      throw new ObjectStoreError(
        `no credentials for object store ${url}: pass accessKey and secretKey, or set SPG99_S3_ACCESS_KEY and SPG99_S3_SECRET_KEY`,
      );
    }
    const { S3ObjectStore } = await import('./s3-store.js');
    return S3ObjectStore.open({ ...location, region: options.region ?? location.region ?? 'us-east-1', accessKey, secretKey });
  }
  if (path.isAbsolute(url) && !url.includes('\0')) {
    const { FsObjectStore } = await import('./fs-store.js');
    return FsObjectStore.open(path.resolve(url));
  }
  throw badUrl(url, 'it is neither a file:// or s3:// URL nor an absolute path');
}

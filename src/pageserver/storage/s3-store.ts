/**
 * The S3 backend of {@link ObjectStore}, with the MinIO client: works against AWS S3 and S3-compatible servers
 * (MinIO, s3rver). An S3 PUT (single or multipart) replaces an object atomically, so writes need no temporary keys.
 * Every key is stored under the store's prefix, so stores with different prefixes share a bucket without seeing
 * each other's objects.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { Client, type BucketItem } from 'minio';
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

/** Where the store is and how to sign in. */
export interface S3StoreConfig {
  bucket: string;
  /** Key prefix inside the bucket, without leading or trailing "/" ("" for none). */
  prefix: string;
  /** An S3-compatible server such as `http://127.0.0.1:9000`; undefined for AWS S3. */
  endpoint: URL | undefined;
  region: string;
  accessKey: string;
  secretKey: string;
}

/**
 * Files up to this size are uploaded in one PUT, larger ones in parts of at least this size, read one at a time:
 * the most memory an upload takes. S3's minimum part size is 5 MiB, and an upload has at most 10,000 parts.
 */
const PART_SIZE = 8 * 1024 * 1024;
const MAX_PARTS = 10_000;

/** Error codes with which S3 servers report a missing object (HEAD responses carry no body, hence "NotFound"). */
const NOT_FOUND_CODES = new Set(['NoSuchKey', 'NotFound']);

function errorCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = errorCode(error);
  return code !== undefined && !error.message.includes(code) ? `${code}: ${error.message}` : error.message;
}

/** `length` bytes of an open file from `offset`. */
async function readPart(handle: fsp.FileHandle, offset: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(buffer, filled, length - filled, offset + filled);
    if (bytesRead === 0) throw new Error(`the file ended after ${offset + filled} bytes while uploading`);
    filled += bytesRead;
  }
  return buffer;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Objects in an S3 bucket under a key prefix. */
export class S3ObjectStore implements ObjectStore {
  readonly description: string;

  private constructor(
    private readonly client: Client,
    private readonly agent: http.Agent,
    private readonly bucket: string,
    /** The prefix with its trailing "/" ("" for none), prepended to every key. */
    private readonly keyPrefix: string,
    description: string,
  ) {
    this.description = description;
  }

  /** Connects, and creates the bucket when it does not exist. */
  static async open(config: S3StoreConfig): Promise<S3ObjectStore> {
    const endpoint = config.endpoint;
    const useSSL = endpoint === undefined || endpoint.protocol === 'https:';
    // An agent of our own, so close() can end its keep-alive connections.
    const agent = useSSL ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
    const where = config.prefix === '' ? config.bucket : `${config.bucket}/${config.prefix}`;
    const description = `s3://${where} (endpoint ${endpoint === undefined ? `AWS ${config.region}` : endpoint.origin})`;
    let client: Client;
    try {
      client = new Client({
        endPoint: endpoint === undefined ? 's3.amazonaws.com' : endpoint.hostname.replace(/^\[|\]$/g, ''),
        port: endpoint === undefined || endpoint.port === '' ? undefined : Number(endpoint.port),
        useSSL,
        accessKey: config.accessKey,
        secretKey: config.secretKey,
        region: config.region,
        transportAgent: agent,
      });
    } catch (error) {
      agent.destroy();
      throw new ObjectStoreError(`cannot open object store ${description}: ${describe(error)}`, { cause: error });
    }
    const store = new S3ObjectStore(client, agent, config.bucket, config.prefix === '' ? '' : `${config.prefix}/`, description);
    try {
      if (!(await client.bucketExists(config.bucket))) {
        try {
          await client.makeBucket(config.bucket, config.region);
        } catch (error) {
          // Another process created it first.
          const code = errorCode(error);
          if (code !== 'BucketAlreadyOwnedByYou' && code !== 'BucketAlreadyExists') throw error;
        }
      }
    } catch (error) {
      agent.destroy();
      throw new ObjectStoreError(`cannot open object store ${description}: ${describe(error)}`, { cause: error });
    }
    return store;
  }

  async put(key: string, body: Buffer): Promise<void> {
    const name = this.nameOf(key);
    await this.wrap('put', key, async () => {
      if (body.length <= PART_SIZE) await this.client.putObject(this.bucket, name, body, body.length);
      else await this.uploadInParts(name, body.length, async (offset, length) => body.subarray(offset, offset + length));
    });
  }

  async putFile(key: string, localPath: string): Promise<void> {
    const name = this.nameOf(key);
    let size: number;
    try {
      const stat = await fsp.stat(localPath);
      if (!stat.isFile()) throw new Error('it is not a file');
      size = stat.size;
    } catch (error) {
      throw new ObjectStoreError(`cannot upload ${localPath} as "${key}" to ${this.description}: ${describe(error)}`, { cause: error });
    }
    await this.wrap('put', key, async () => {
      const handle = await fsp.open(localPath, 'r');
      try {
        if (size <= PART_SIZE) {
          await this.client.putObject(this.bucket, name, await readPart(handle, 0, size), size);
        } else {
          await this.uploadInParts(name, size, (offset, length) => readPart(handle, offset, length));
        }
      } finally {
        await handle.close();
      }
    });
  }

  /**
   * A multipart upload of our own rather than minio's: minio's first looks for an unfinished upload of the same key to
   * resume (ListMultipartUploads, which s3rver does not implement) and buffers 64 MiB parts. The object appears, whole,
   * only when the upload completes; a failed upload is aborted so its parts are not kept (and billed).
   */
  private async uploadInParts(name: string, size: number, read: (offset: number, length: number) => Promise<Buffer>): Promise<void> {
    const partSize = Math.max(PART_SIZE, Math.ceil(size / MAX_PARTS));
    const uploadId = await this.client.initiateNewMultipartUpload(this.bucket, name, {});
    try {
      const parts: Array<{ part: number; etag: string }> = [];
      for (let offset = 0, part = 1; offset < size; offset += partSize, part += 1) {
        const body = await read(offset, Math.min(partSize, size - offset));
        const uploaded = await this.client.uploadPart(
          { bucketName: this.bucket, objectName: name, uploadID: uploadId, partNumber: part, headers: { 'Content-Length': body.length } },
          body,
        );
        parts.push({ part, etag: uploaded.etag });
      }
      await this.client.completeMultipartUpload(this.bucket, name, uploadId, parts);
    } catch (error) {
      await this.client.abortMultipartUpload(this.bucket, name, uploadId).catch(() => undefined);
      throw error;
    }
  }

  async get(key: string): Promise<Buffer> {
    const name = this.nameOf(key);
    return this.wrap('get', key, async () => readAll(await this.client.getObject(this.bucket, name)));
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const name = this.nameOf(key);
    validateRange(key, offset, length, this.description);
    if (length === 0) {
      // minio reads a length of 0 as "to the end"; an empty range only needs the object to exist and be long enough.
      const info = await this.head(key);
      if (info === undefined) throw new ObjectNotFoundError(key, this.description);
      if (offset > info.size) throw this.pastEnd(key, offset, length, info.size);
      return Buffer.alloc(0);
    }
    let data: Buffer;
    try {
      data = await this.wrap('get', key, async () => readAll(await this.client.getPartialObject(this.bucket, name, offset, length)));
    } catch (error) {
      // S3 answers 416 InvalidRange for a range starting at or past the end.
      if (errorCode((error as Error).cause) !== 'InvalidRange') throw error;
      data = Buffer.alloc(0);
    }
    // A range that starts inside the object but ends past it comes back cut short.
    if (data.length !== length) throw this.pastEnd(key, offset, length, (await this.head(key))?.size);
    return data;
  }

  async getToFile(key: string, localPath: string): Promise<void> {
    const name = this.nameOf(key);
    // Not minio's fGetObject: it resumes from a leftover partial file, which we would rather not trust.
    const body = await this.wrap('get', key, () => this.client.getObject(this.bucket, name));
    const temporary = path.join(path.dirname(localPath), `${path.basename(localPath)}.spg99-tmp-${randomBytes(6).toString('hex')}`);
    try {
      await fsp.mkdir(path.dirname(localPath), { recursive: true });
      await pipeline(body, fs.createWriteStream(temporary, { flags: 'wx' }));
      const handle = await fsp.open(temporary, 'r+');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fsp.rename(temporary, localPath);
    } catch (error) {
      body.destroy();
      await fsp.rm(temporary, { force: true });
      throw new ObjectStoreError(`cannot download "${key}" from ${this.description} to ${localPath}: ${describe(error)}`, { cause: error });
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const name = this.nameOf(key);
    try {
      const stat = await this.client.statObject(this.bucket, name);
      return { key, size: stat.size };
    } catch (error) {
      if (NOT_FOUND_CODES.has(errorCode(error) ?? '')) return undefined;
      throw this.failure('stat', key, error);
    }
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    validatePrefix(prefix, this.description);
    const found: ObjectInfo[] = [];
    try {
      // The stream follows continuation tokens itself, a page of up to 1000 keys at a time.
      const stream = this.client.listObjectsV2(this.bucket, this.keyPrefix + prefix, true);
      for await (const item of stream as AsyncIterable<BucketItem>) {
        if (item.name === undefined) continue;
        found.push({ key: item.name.slice(this.keyPrefix.length), size: item.size });
      }
    } catch (error) {
      throw this.failure('list', prefix, error);
    }
    return found.sort(compareByKey);
  }

  async delete(key: string): Promise<void> {
    const name = this.nameOf(key);
    try {
      await this.client.removeObject(this.bucket, name);
    } catch (error) {
      if (NOT_FOUND_CODES.has(errorCode(error) ?? '')) return;
      throw this.failure('delete', key, error);
    }
  }

  async deleteMany(keys: string[]): Promise<void> {
    const names = keys.map((key) => this.nameOf(key));
    if (names.length === 0) return;
    let results;
    try {
      // minio sends the keys in batches of 1000, the most one DeleteObjects request may carry.
      results = await this.client.removeObjects(this.bucket, names);
    } catch (error) {
      throw this.failure('delete', `${keys.length} keys starting with "${keys[0]}"`, error);
    }
    const failed = results.flatMap((result) => (result?.Error && !NOT_FOUND_CODES.has(result.Error.Code ?? '') ? [result.Error] : []));
    if (failed.length > 0) {
      const first = failed[0];
      throw new ObjectStoreError(
        `cannot delete ${failed.length} of ${keys.length} objects in ${this.description}, ` +
          `the first "${(first.Key ?? '').slice(this.keyPrefix.length)}": ${first.Code ?? 'error'}: ${first.Message ?? ''}`,
      );
    }
  }

  async close(): Promise<void> {
    this.agent.destroy();
  }

  /** The object name in the bucket of `key`, after checking the key. */
  private nameOf(key: string): string {
    validateKey(key, this.description);
    return this.keyPrefix + key;
  }

  private pastEnd(key: string, offset: number, length: number, size: number | undefined): ObjectStoreError {
    const sizeText = size === undefined ? 'which is gone' : `${size} bytes`;
    return new ObjectStoreError(
      `range of ${length} bytes at offset ${offset} is past the end of object "${key}" (${sizeText}) in ${this.description}`,
    );
  }

  /** Runs `operation`, turning a missing object into ObjectNotFoundError and other failures into ObjectStoreError. */
  private async wrap<T>(verb: string, key: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      if (verb === 'get' && NOT_FOUND_CODES.has(errorCode(error) ?? '')) throw new ObjectNotFoundError(key, this.description, { cause: error });
      throw this.failure(verb, key, error);
    }
  }

  private failure(verb: string, key: string, error: unknown): ObjectStoreError {
    return new ObjectStoreError(`cannot ${verb} "${key}" in ${this.description}: ${describe(error)}`, { cause: error });
  }
}

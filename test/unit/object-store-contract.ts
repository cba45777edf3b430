/**
 * What every ObjectStore backend must do, as mocha cases shared by the filesystem backend's unit tests and the S3
 * backend's integration tests: each case gets a new, empty store from `open` and closes it afterwards.
 */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { type ObjectStore, ObjectNotFoundError, ObjectStoreError } from '../../src/pageserver/storage/object-store.js';
import { TempDir } from '../harness/process.js';

/** Awaits `promise` and returns what it rejected with; fails when it resolves. */
export async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    expect(error).to.be.instanceOf(Error);
    return error as Error;
  }
  expect.fail('expected a rejection');
}

/** Keys that no backend may accept, with a word the error must say. */
export const BAD_KEYS: ReadonlyArray<{ key: string; problem: string }> = [
  { key: '', problem: 'empty' },
  { key: '/timelines/x', problem: 'absolute' },
  { key: 'timelines/../x', problem: '..' },
  { key: '..', problem: '..' },
  { key: 'timelines//x', problem: '//' },
  { key: 'timelines\\x', problem: 'backslash' },
  { key: 'timelines/x\0y', problem: 'NUL' },
  { key: 'timelines/', problem: 'ends with "/"' },
];

/** Runs `tasks` with at most `limit` at a time. */
async function inParallel(limit: number, tasks: Array<() => Promise<void>>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

/** What a test server cannot do that the backend under test relies on in production. */
export interface ServerLimits {
  /**
   * The server writes an overwritten object in place (s3rver does), so no client can show atomic overwrites on it;
   * the case checking them is then not registered (the server, not the client, lacks the property). AWS S3 and
   * MinIO replace objects atomically.
   */
  overwritesInPlace?: boolean;
  /**
   * The server ignores `encoding-type=url` in listings (s3rver does) while the minio client always asks for it and
   * URL-decodes the keys listed, so keys with "+" or "%" come back altered (and "'", which s3rver escapes as a
   * numeric entity the client's XML parser leaves undecoded); listing them is then not checked.
   */
  ignoresListEncoding?: boolean;
}

/**
 * Declares the contract's cases for one backend. `open` returns a new store holding no objects (a new directory, a
 * new prefix in a bucket).
 */
export function describeObjectStoreContract(name: string, open: () => Promise<ObjectStore>, limits: ServerLimits = {}): void {
  describe(`${name}: the ObjectStore contract`, () => {
    let store: ObjectStore;
    let local: TempDir;

    beforeEach(async () => {
      store = await open();
      local = TempDir.create('object-store-local');
    });

    afterEach(async () => {
      await store.close();
      local.remove();
    });

    describe('put and get', () => {
      it('return what was put, also for an empty object, and an overwrite replaces it', async () => {
        const body = randomBytes(10_000);
        await store.put('timelines/tl-a/layers/one', body);
        expect((await store.get('timelines/tl-a/layers/one')).equals(body)).to.equal(true);
        await store.put('empty', Buffer.alloc(0));
        expect(await store.get('empty')).to.have.length(0);
        await store.put('timelines/tl-a/layers/one', Buffer.from('shorter'));
        expect((await store.get('timelines/tl-a/layers/one')).toString()).to.equal('shorter');
      });

      it('keep keys with spaces, plus and percent signs, quotes and non-ASCII letters apart and intact', async () => {
        // Listed intact only when the server URL-encodes keys in listings, as minio asks it to.
        const encodedInUrls = ['odd/a+b', 'odd/a%20b', 'odd/100%', "odd/it's"];
        const keys = ['odd/a b', 'odd/a=b&c', 'odd/ünïcödé-ß', 'odd/x~y.z_1-2', 'odd/<tag>"quoted"', ...encodedInUrls];
        for (const key of keys) await store.put(key, Buffer.from(key));
        for (const key of keys) expect((await store.get(key)).toString()).to.equal(key);
        for (const key of keys) expect(await store.head(key)).to.deep.equal({ key, size: Buffer.byteLength(key) });
        const listable = limits.ignoresListEncoding ? keys.filter((key) => !encodedInUrls.includes(key)) : keys;
        for (const key of encodedInUrls.filter(() => limits.ignoresListEncoding)) await store.delete(key);
        expect((await store.list('odd/')).map((info) => info.key)).to.deep.equal([...listable].sort());
      });

      it('report a missing object with ObjectNotFoundError naming the key and the store', async () => {
        const error = await rejectionOf(store.get('timelines/tl-a/missing'));
        expect(error).to.be.instanceOf(ObjectNotFoundError);
        expect(error).to.be.instanceOf(ObjectStoreError);
        expect((error as ObjectNotFoundError).key).to.equal('timelines/tl-a/missing');
        expect(error.message).to.include('"timelines/tl-a/missing"').and.to.include(store.description);
      });

      if (!limits.overwritesInPlace) it('never show a partly written object to a reader during overwrites', async () => {
        const size = 256 * 1024;
        const versions = [0x41, 0x42, 0x43].map((byte) => Buffer.alloc(size, byte));
        await store.put('hot', versions[0]);
        let writing = true;
        const writer = (async () => {
          for (let round = 1; round <= 15; round += 1) await store.put('hot', versions[round % versions.length]);
          writing = false;
        })();
        const reads: Buffer[] = [];
        const reader = async () => {
          while (writing) reads.push(await store.get('hot'));
        };
        await Promise.all([writer, reader(), reader()]);
        expect(reads.length).to.be.greaterThan(0);
        for (const read of reads) {
          expect(read.length).to.equal(size);
          expect(versions.some((version) => version.equals(read))).to.equal(true, 'a read mixed two versions');
        }
        expect(await store.list('')).to.deep.equal([{ key: 'hot', size }]);
      });
    });

    describe('getRange', () => {
      const body = Buffer.from('0123456789abcdef');

      beforeEach(async () => {
        await store.put('ranged', body);
      });

      it('returns the bytes asked for, up to the very end', async () => {
        expect((await store.getRange('ranged', 0, 16)).toString()).to.equal('0123456789abcdef');
        expect((await store.getRange('ranged', 3, 4)).toString()).to.equal('3456');
        expect((await store.getRange('ranged', 15, 1)).toString()).to.equal('f');
        expect(await store.getRange('ranged', 16, 0)).to.have.length(0);
        expect(await store.getRange('ranged', 4, 0)).to.have.length(0);
      });

      it('refuses a range past the end with an ObjectStoreError giving the size', async () => {
        for (const [offset, length] of [
          [10, 7],
          [16, 1],
          [100, 5],
          [17, 0],
        ]) {
          const error = await rejectionOf(store.getRange('ranged', offset, length));
          expect(error).to.be.instanceOf(ObjectStoreError);
          expect(error).not.to.be.instanceOf(ObjectNotFoundError);
          expect(error.message).to.include('past the end').and.to.include('16 bytes');
        }
      });

      it('refuses a negative or fractional range, and reports a missing object as not found', async () => {
        expect(await rejectionOf(store.getRange('ranged', -1, 2))).to.be.instanceOf(ObjectStoreError);
        expect(await rejectionOf(store.getRange('ranged', 1, 1.5))).to.be.instanceOf(ObjectStoreError);
        expect(await rejectionOf(store.getRange('absent', 0, 1))).to.be.instanceOf(ObjectNotFoundError);
      });
    });

    describe('head', () => {
      it('gives the size of an object, and undefined for a missing one or a folder', async () => {
        await store.put('a/b/c', Buffer.alloc(1234));
        expect(await store.head('a/b/c')).to.deep.equal({ key: 'a/b/c', size: 1234 });
        expect(await store.head('a/b/d')).to.equal(undefined);
        expect(await store.head('a/b')).to.equal(undefined);
      });
    });

    describe('list', () => {
      it('returns the objects under a prefix, sorted by key, with their sizes', async () => {
        const keys = [
          'timelines/tl-b/wal/000000010000000000000002',
          'timelines/tl-a/wal/000000010000000000000001',
          'timelines/tl-abc/wal/000000010000000000000001',
          'timelines/tl-a/layers/x',
          'tenants/tn-1/config',
          'root-object',
        ];
        for (const [index, key] of keys.entries()) await store.put(key, Buffer.alloc(index + 1));
        const all = await store.list('');
        expect(all.map((info) => info.key)).to.deep.equal([...keys].sort());
        expect(all.find((info) => info.key === 'root-object')?.size).to.equal(6);
        expect((await store.list('timelines/tl-a/')).map((info) => info.key)).to.deep.equal([
          'timelines/tl-a/layers/x',
          'timelines/tl-a/wal/000000010000000000000001',
        ]);
        // A prefix is a string prefix, not a folder.
        expect((await store.list('timelines/tl-a')).map((info) => info.key)).to.deep.equal([
          'timelines/tl-a/layers/x',
          'timelines/tl-a/wal/000000010000000000000001',
          'timelines/tl-abc/wal/000000010000000000000001',
        ]);
        expect((await store.list('timelines/tl-b/wal/0000000100000000000000')).map((info) => info.key)).to.deep.equal([
          'timelines/tl-b/wal/000000010000000000000002',
        ]);
        expect(await store.list('timelines/tl-z/')).to.deep.equal([]);
        expect(await store.list('nothing-here')).to.deep.equal([]);
      });

      it('returns a few hundred keys complete and sorted', async function () {
        this.timeout(120_000);
        const keys = Array.from({ length: 300 }, (_, index) => `many/${String((index * 7919) % 300).padStart(4, '0')}-${index % 3}`);
        await inParallel(16, keys.map((key) => () => store.put(key, Buffer.from(key))));
        const listed = await store.list('many/');
        expect(listed.map((info) => info.key)).to.deep.equal([...keys].sort());
        expect(listed.every((info) => info.size === info.key.length)).to.equal(true);
      });

      it('refuses a prefix that could not start a valid key', async () => {
        for (const prefix of ['/abs', 'a/../b', 'a//b', 'a\\b']) {
          expect(await rejectionOf(store.list(prefix))).to.be.instanceOf(ObjectStoreError);
        }
      });
    });

    describe('delete', () => {
      it('removes an object, and a missing one is no error', async () => {
        await store.put('doomed/one', Buffer.from('1'));
        await store.put('doomed/two', Buffer.from('2'));
        await store.delete('doomed/one');
        expect(await store.head('doomed/one')).to.equal(undefined);
        expect((await store.list('')).map((info) => info.key)).to.deep.equal(['doomed/two']);
        await store.delete('doomed/one');
        await store.delete('never/was');
      });

      it('deleteMany removes every key given, present or not', async () => {
        const keys = Array.from({ length: 25 }, (_, index) => `batch/${String(index).padStart(2, '0')}`);
        for (const key of keys) await store.put(key, Buffer.from(key));
        await store.deleteMany([...keys.slice(0, 20), 'batch/absent']);
        expect((await store.list('batch/')).map((info) => info.key)).to.deep.equal(keys.slice(20));
        await store.deleteMany([]);
        await store.deleteMany(keys);
        expect(await store.list('')).to.deep.equal([]);
      });
    });

    describe('files', () => {
      it('putFile uploads a local file and getToFile downloads it, replacing what was there', async () => {
        const body = randomBytes(3 * 1024 * 1024 + 17);
        const upload = local.join('upload.bin');
        fs.writeFileSync(upload, body);
        await store.putFile('files/blob', upload);
        expect(await store.head('files/blob')).to.deep.equal({ key: 'files/blob', size: body.length });
        const download = local.join('nested', 'dir', 'download.bin');
        await store.getToFile('files/blob', download);
        expect(fs.readFileSync(download).equals(body)).to.equal(true);
        await store.put('files/small', Buffer.from('small'));
        await store.getToFile('files/small', download);
        expect(fs.readFileSync(download, 'utf8')).to.equal('small');
        expect(fs.readdirSync(local.join('nested', 'dir'))).to.deep.equal(['download.bin']);
      });

      it('getToFile of a missing object is ObjectNotFoundError and leaves no file', async () => {
        const download = local.join('download.bin');
        const error = await rejectionOf(store.getToFile('files/missing', download));
        expect(error).to.be.instanceOf(ObjectNotFoundError);
        expect(error.message).to.include('files/missing');
        expect(fs.readdirSync(local.path)).to.deep.equal([]);
      });

      it('putFile of a missing local file is an ObjectStoreError naming the file', async () => {
        const missing = local.join('no-such-file');
        const error = await rejectionOf(store.putFile('files/x', missing));
        expect(error).to.be.instanceOf(ObjectStoreError);
        expect(error.message).to.include(missing);
        expect(await store.head('files/x')).to.equal(undefined);
      });
    });

    describe('keys', () => {
      it('are refused, saying what is wrong, by every operation when invalid', async () => {
        const file = local.join('file');
        fs.writeFileSync(file, 'x');
        for (const { key, problem } of BAD_KEYS) {
          const operations: Array<[string, () => Promise<unknown>]> = [
            ['put', () => store.put(key, Buffer.from('x'))],
            ['putFile', () => store.putFile(key, file)],
            ['get', () => store.get(key)],
            ['getRange', () => store.getRange(key, 0, 1)],
            ['getToFile', () => store.getToFile(key, local.join('out'))],
            ['head', () => store.head(key)],
            ['delete', () => store.delete(key)],
            ['deleteMany', () => store.deleteMany(['fine', key])],
          ];
          for (const [operation, run] of operations) {
            const error = await rejectionOf(run());
            expect(error, `${operation}(${JSON.stringify(key)})`).to.be.instanceOf(ObjectStoreError);
            expect(error).not.to.be.instanceOf(ObjectNotFoundError);
            expect(error.message, `${operation}(${JSON.stringify(key)})`).to.include('invalid object key').and.to.include(problem);
          }
        }
        expect(await store.list('')).to.deep.equal([]);
      });
    });
  });
}

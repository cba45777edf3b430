/**
 * The filesystem ObjectStore backend: the shared contract in a new temporary directory per case, then what is
 * particular to files (URL forms, the root created when missing, no temporary files left, folder/object clashes).
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { expect } from 'chai';
import { type ObjectStore, ObjectStoreError, openObjectStore } from '../../src/pageserver/storage/object-store.js';
import { TempDir } from '../harness/process.js';
import { describeObjectStoreContract, rejectionOf } from './object-store-contract.js';

/** Every file under `directory`, relative, sorted. */
function filesUnder(directory: string): string[] {
  return (fs.readdirSync(directory, { recursive: true, withFileTypes: true }) as fs.Dirent[])
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(directory, path.join(entry.parentPath, entry.name)))
    .sort();
}

describe('FsObjectStore', () => {
  const directories: TempDir[] = [];

  function newDirectory(): TempDir {
    const directory = TempDir.create('fs-object-store');
    directories.push(directory);
    return directory;
  }

  after(() => {
    for (const directory of directories.splice(0)) directory.remove();
  });

  describeObjectStoreContract('FsObjectStore', () => openObjectStore(pathToFileURL(newDirectory().join('store')).href));

  describe('opening', () => {
    it('accepts a file:// URL and a plain absolute path, creating the root directory', async () => {
      const directory = newDirectory();
      const byUrl = await openObjectStore(pathToFileURL(directory.join('by-url', 'deeper')).href);
      expect(fs.statSync(directory.join('by-url', 'deeper')).isDirectory()).to.equal(true);
      expect(byUrl.description).to.equal(pathToFileURL(directory.join('by-url', 'deeper')).href);
      const byPath = await openObjectStore(directory.join('by-path'));
      await byPath.put('a/b', Buffer.from('x'));
      expect(fs.readFileSync(directory.join('by-path', 'a', 'b'), 'utf8')).to.equal('x');
      await Promise.all([byUrl.close(), byPath.close()]);
    });

    it('sees what an earlier store on the same directory wrote', async () => {
      const root = newDirectory().join('shared');
      const first = await openObjectStore(root);
      await first.put('kept', Buffer.from('kept'));
      await first.close();
      const second = await openObjectStore(`file://${root}`);
      expect((await second.get('kept')).toString()).to.equal('kept');
      await second.close();
    });

    it('refuses a bad URL, naming it and the accepted forms', async () => {
      for (const url of ['relative/dir', 'http://example.com/x', 'file://otherhost/dir', 's3://', 's3://Bad_Bucket/x', 's3://bucket/x?color=red', '']) {
        const error = await rejectionOf(openObjectStore(url));
        expect(error, url).to.be.instanceOf(ObjectStoreError);
        expect(error.message, url).to.include(JSON.stringify(url)).and.to.include('file:///absolute/dir').and.to.include('s3://bucket');
      }
    });

    it('refuses an S3 URL without credentials, saying where they come from', async () => {
      const saved = { access: process.env.SPG99_S3_ACCESS_KEY, secret: process.env.SPG99_S3_SECRET_KEY };
      delete process.env.SPG99_S3_ACCESS_KEY;
      delete process.env.SPG99_S3_SECRET_KEY;
      try {
        const error = await rejectionOf(openObjectStore('s3://bucket/prefix?endpoint=http://127.0.0.1:1'));
        expect(error).to.be.instanceOf(ObjectStoreError);
        expect(error.message).to.include('SPG99_S3_ACCESS_KEY').and.to.include('SPG99_S3_SECRET_KEY');
      } finally {
        if (saved.access !== undefined) process.env.SPG99_S3_ACCESS_KEY = saved.access;
        if (saved.secret !== undefined) process.env.SPG99_S3_SECRET_KEY = saved.secret;
      }
    });

    it('refuses a root that is a file', async () => {
      const file = newDirectory().join('a-file');
      fs.writeFileSync(file, 'x');
      const error = await rejectionOf(openObjectStore(file));
      expect(error).to.be.instanceOf(ObjectStoreError);
      expect(error.message).to.include('cannot open object store');
    });
  });

  describe('files on disk', () => {
    let root: string;
    let store: ObjectStore;

    beforeEach(async () => {
      root = newDirectory().join('store');
      store = await openObjectStore(root);
    });

    afterEach(async () => {
      await store.close();
    });

    it('are exactly the objects after overwrites and uploads: no temporary file is left', async () => {
      const upload = path.join(path.dirname(root), 'upload');
      fs.writeFileSync(upload, 'uploaded');
      for (let round = 0; round < 5; round += 1) await store.put('wal/segment', Buffer.alloc(1000 + round, round));
      await store.putFile('wal/uploaded', upload);
      await store.putFile('wal/uploaded', upload);
      expect(filesUnder(root)).to.deep.equal([path.join('wal', 'segment'), path.join('wal', 'uploaded')]);
      expect((await store.list('')).map((info) => info.key)).to.deep.equal(['wal/segment', 'wal/uploaded']);
    });

    it('do not list a temporary file left by a crashed write, and a key may not look like one', async () => {
      await store.put('wal/segment', Buffer.from('whole'));
      fs.writeFileSync(path.join(root, 'wal', 'segment.spg99-tmp-0123456789ab'), 'torn');
      expect(await store.list('')).to.deep.equal([{ key: 'wal/segment', size: 5 }]);
      const error = await rejectionOf(store.put('wal/segment.spg99-tmp-x', Buffer.from('x')));
      expect(error).to.be.instanceOf(ObjectStoreError);
      expect(error.message).to.include('reserved');
    });

    it('cannot hold an object where another object is a folder, and says so', async () => {
      await store.put('a', Buffer.from('object'));
      const error = await rejectionOf(store.put('a/b', Buffer.from('below an object')));
      expect(error).to.be.instanceOf(ObjectStoreError);
      expect(error.message).to.include('"a/b"').and.to.include(store.description);
      expect((await store.get('a')).toString()).to.equal('object');
      expect(await store.head('a/b')).to.equal(undefined);
    });
  });
});

/**
 * The S3 ObjectStore backend against a real S3-compatible HTTP server (s3rver, on a free port with its data in a
 * temporary directory): the shared contract, each case under a new prefix of one bucket the backend creates itself,
 * then prefixes kept apart, a 20 MiB object through files, and errors naming the store.
 */
import fs from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import S3rver from 's3rver';
import { type ObjectStore, ObjectNotFoundError, ObjectStoreError, openObjectStore } from '../../src/pageserver/storage/object-store.js';
import { TempDir } from '../harness/process.js';
import { describeObjectStoreContract, rejectionOf } from '../unit/object-store-contract.js';

/** s3rver's fixed credentials. */
const CREDENTIALS = { accessKey: 'S3RVER', secretKey: 'S3RVER' };

async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(fs.createReadStream(file), hash);
  return hash.digest('hex');
}

describe('S3ObjectStore (s3rver)', function () {
  this.timeout(120_000);
  let server: S3rver;
  let serverDirectory: TempDir;
  let endpoint: string;
  const opened: ObjectStore[] = [];

  /** Opens a store on the test server, closed after the test. */
  async function openStore(bucket: string, prefix: string): Promise<ObjectStore> {
    const store = await openObjectStore(`s3://${bucket}/${prefix}?endpoint=${endpoint}&region=us-east-1`, CREDENTIALS);
    opened.push(store);
    return store;
  }

  function newPrefix(): string {
    return `tests/${randomBytes(6).toString('hex')}`;
  }

  before(async () => {
    serverDirectory = TempDir.create('s3rver');
    server = new S3rver({ port: 0, address: '127.0.0.1', directory: serverDirectory.path, silent: true });
    const address: AddressInfo = await server.run();
    endpoint = `http://127.0.0.1:${address.port}`;
  });

  afterEach(async () => {
    for (const store of opened.splice(0)) await store.close();
  });

  after(async () => {
    await server?.close();
    serverDirectory?.remove();
  });

  // The contract closes its own stores. s3rver 3.7 writes objects in place and ignores encoding-type=url.
  describeObjectStoreContract(
    'S3ObjectStore',
    () => openObjectStore(`s3://spg99-contract/${newPrefix()}?endpoint=${endpoint}`, CREDENTIALS),
    { overwritesInPlace: true, ignoresListEncoding: true },
  );

  it('creates its bucket when missing and finds it on the next open', async () => {
    expect(fs.existsSync(serverDirectory.join('spg99-new-bucket'))).to.equal(false);
    const first = await openStore('spg99-new-bucket', '');
    expect(fs.existsSync(serverDirectory.join('spg99-new-bucket'))).to.equal(true);
    await first.put('object', Buffer.from('first'));
    const second = await openStore('spg99-new-bucket', '');
    expect((await second.get('object')).toString()).to.equal('first');
  });

  it('keeps stores with different prefixes in one bucket apart', async () => {
    const left = await openStore('spg99-shared', 'pageserver-1');
    const right = await openStore('spg99-shared', 'pageserver-1-other/nested');
    const whole = await openStore('spg99-shared', '');
    await left.put('timelines/tl-a/x', Buffer.from('left'));
    await right.put('timelines/tl-a/x', Buffer.from('right'));
    await right.put('timelines/tl-b/y', Buffer.from('right only'));
    expect((await left.get('timelines/tl-a/x')).toString()).to.equal('left');
    expect((await right.get('timelines/tl-a/x')).toString()).to.equal('right');
    expect(await left.list('')).to.deep.equal([{ key: 'timelines/tl-a/x', size: 4 }]);
    expect((await right.list('timelines/')).map((info) => info.key)).to.deep.equal(['timelines/tl-a/x', 'timelines/tl-b/y']);
    expect(await left.head('timelines/tl-b/y')).to.equal(undefined);
    expect(await rejectionOf(left.get('timelines/tl-b/y'))).to.be.instanceOf(ObjectNotFoundError);
    // The prefix is a folder of the bucket: "pageserver-1" does not take in "pageserver-1-other".
    expect((await whole.list('')).map((info) => info.key)).to.deep.equal([
      'pageserver-1-other/nested/timelines/tl-a/x',
      'pageserver-1-other/nested/timelines/tl-b/y',
      'pageserver-1/timelines/tl-a/x',
    ]);
    await left.deleteMany(['timelines/tl-a/x', 'timelines/tl-b/y']);
    expect(await left.list('')).to.deep.equal([]);
    expect((await right.get('timelines/tl-b/y')).toString()).to.equal('right only');
  });

  it('moves a 20 MiB object (a multipart upload) through putFile and getToFile intact', async () => {
    const local = TempDir.create('s3-large');
    try {
      const upload = local.join('upload.bin');
      fs.writeFileSync(upload, randomBytes(20 * 1024 * 1024));
      const store = await openStore('spg99-large', newPrefix());
      await store.putFile('layers/large', upload);
      expect(await store.head('layers/large')).to.deep.equal({ key: 'layers/large', size: 20 * 1024 * 1024 });
      const download = local.join('download.bin');
      await store.getToFile('layers/large', download);
      expect(await sha256OfFile(download)).to.equal(await sha256OfFile(upload));
      const tail = await store.getRange('layers/large', 20 * 1024 * 1024 - 10, 10);
      const expected = Buffer.alloc(10);
      const handle = fs.openSync(upload, 'r');
      fs.readSync(handle, expected, 0, 10, 20 * 1024 * 1024 - 10);
      fs.closeSync(handle);
      expect(tail.equals(expected)).to.equal(true);
    } finally {
      local.remove();
    }
  });

  it('puts a buffer larger than a part in parts and reads it back whole', async () => {
    const store = await openStore('spg99-large', newPrefix());
    const body = randomBytes(17 * 1024 * 1024 + 5);
    await store.put('layers/from-buffer', body);
    expect(await store.head('layers/from-buffer')).to.deep.equal({ key: 'layers/from-buffer', size: body.length });
    expect((await store.get('layers/from-buffer')).equals(body)).to.equal(true);
    expect((await store.getRange('layers/from-buffer', 8 * 1024 * 1024 - 3, 6)).equals(body.subarray(8 * 1024 * 1024 - 3, 8 * 1024 * 1024 + 3))).to.equal(true);
  });

  it('describes itself by bucket, prefix and endpoint, and names them in errors', async () => {
    const store = await openStore('spg99-described', 'some/prefix');
    expect(store.description).to.equal(`s3://spg99-described/some/prefix (endpoint ${endpoint})`);
    const error = await rejectionOf(store.get('missing/key'));
    expect(error.message).to.equal(`object "missing/key" not found in ${store.description}`);
  });

  it('fails to open with an ObjectStoreError naming the store when the server refuses the credentials', async () => {
    const error = await rejectionOf(
      openObjectStore(`s3://spg99-denied?endpoint=${endpoint}`, { accessKey: 'WRONG', secretKey: 'WRONG' }),
    );
    expect(error).to.be.instanceOf(ObjectStoreError);
    expect(error.message).to.include('cannot open object store s3://spg99-denied');
  });

  it('takes credentials from the environment when none are given', async () => {
    const saved = { access: process.env.SPG99_S3_ACCESS_KEY, secret: process.env.SPG99_S3_SECRET_KEY };
    process.env.SPG99_S3_ACCESS_KEY = CREDENTIALS.accessKey;
    process.env.SPG99_S3_SECRET_KEY = CREDENTIALS.secretKey;
    try {
      const store = await openObjectStore(`s3://spg99-from-env/${newPrefix()}?endpoint=${endpoint}`);
      opened.push(store);
      await store.put('x', Buffer.from('x'));
      expect(await store.head('x')).to.deep.equal({ key: 'x', size: 1 });
    } finally {
      if (saved.access === undefined) delete process.env.SPG99_S3_ACCESS_KEY;
      else process.env.SPG99_S3_ACCESS_KEY = saved.access;
      if (saved.secret === undefined) delete process.env.SPG99_S3_SECRET_KEY;
      else process.env.SPG99_S3_SECRET_KEY = saved.secret;
    }
  });

  it('fails with an ObjectStoreError, not a hang, when the server is gone', async () => {
    const store = await openStore('spg99-gone', newPrefix());
    const other = new S3rver({ port: 0, address: '127.0.0.1', directory: serverDirectory.path, silent: true });
    const address: AddressInfo = await other.run();
    const doomed = await openObjectStore(`s3://spg99-gone?endpoint=http://127.0.0.1:${address.port}`, CREDENTIALS);
    opened.push(doomed);
    await other.close();
    const error = await rejectionOf(doomed.put('x', Buffer.from('x')));
    expect(error).to.be.instanceOf(ObjectStoreError);
    expect(error.message).to.include(`127.0.0.1:${address.port}`).and.to.include('"x"');
    await store.put('still-works', Buffer.from('y'));
  });
});

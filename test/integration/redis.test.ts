/**
 * A real redis-server with the append-only file on, as the control plane will run it: data written with plain
 * commands and a MULTI/EXEC transaction survives a clean restart and a SIGKILL (with `appendfsync always`), a
 * client rides through a restart, and connecting to nothing fails fast with a message naming the URL.
 */
import fs from 'node:fs';
import { expect } from 'chai';
import { freePort } from '../../src/lib/net.js';
import { connectRedis, parseRedisUrl, startRedisServer, type Redis } from '../../src/lib/redis.js';
import { useHarness } from '../harness/process.js';
import { memoryLogger, RedisNode } from '../harness/redis.js';

/** Writes one of each kind of value the catalog will use, the last ones in one transaction. */
async function writeSample(client: Redis): Promise<void> {
  expect(await client.set('tenant:tn-1:name', 'acme')).to.equal('OK');
  expect(await client.hset('timeline:tl-1', { tenant: 'tn-1', writerTerm: '7', endpoint: 'ep-1' })).to.equal(3);
  for (let index = 0; index < 5; index += 1) await client.incr('timelines:count');
  const results = await client
    .multi()
    .set('lease:tl-1', 'writer-a')
    .hset('timeline:tl-1', 'writerTerm', '8')
    .incrby('timelines:count', 10)
    .exec();
  expect(results).to.deep.equal([
    [null, 'OK'],
    [null, 0],
    [null, 15],
  ]);
}

/** Checks that exactly what {@link writeSample} wrote is there. */
async function expectSample(client: Redis): Promise<void> {
  expect(await client.get('tenant:tn-1:name')).to.equal('acme');
  expect(await client.hgetall('timeline:tl-1')).to.deep.equal({ tenant: 'tn-1', writerTerm: '8', endpoint: 'ep-1' });
  expect(await client.get('timelines:count')).to.equal('15');
  expect(await client.get('lease:tl-1')).to.equal('writer-a');
  expect(await client.dbsize()).to.equal(4);
}

describe('redis (a real redis-server with AOF)', function () {
  this.timeout(60_000);
  const harness = useHarness();

  it('runs with the append-only file on and RDB snapshots off', async () => {
    const node = await RedisNode.start(harness());
    const client = await node.client();
    expect(await client.config('GET', 'appendonly')).to.deep.equal(['appendonly', 'yes']);
    expect(await client.config('GET', 'appendfsync')).to.deep.equal(['appendfsync', 'everysec']);
    expect(await client.config('GET', 'save')).to.deep.equal(['save', '']);
    expect(fs.existsSync(node.process.logFile)).to.equal(true);
  });

  it('keeps strings, hashes, counters and a MULTI/EXEC transaction across a clean restart', async () => {
    const node = await RedisNode.start(harness());
    await writeSample(await node.client());
    await node.restart();
    await expectSample(await node.client());
  });

  it('keeps every acknowledged write across kill -9 with appendfsync always', async () => {
    const node = await RedisNode.start(harness(), { appendfsync: 'always' });
    const client = await node.client();
    expect(await client.config('GET', 'appendfsync')).to.deep.equal(['appendfsync', 'always']);
    await writeSample(client);
    const pid = node.process.pid;
    await node.restart({ crash: true });
    expect(node.process.pid).to.not.equal(pid);
    await expectSample(await node.client());
  });

  it('lets a client ride through a restart: the next command succeeds on the same client', async () => {
    const node = await RedisNode.start(harness());
    const client = await node.client();
    await client.set('before', '1');
    await node.restart();
    expect(await client.get('before')).to.equal('1');
    expect(await client.incr('after')).to.equal(1);
    // One warning for the loss and one line for the recovery, however many reconnect attempts it took.
    const transitions = node.clientLogLines.filter((line) => /lost the connection|reconnected/.test(line.msg));
    expect(transitions.map((line) => `${line.level} ${line.msg}`)).to.deep.equal([
      'warn lost the connection to Redis: reconnecting; commands fail until it is back',
      'info reconnected to Redis',
    ]);
  });

  it('fails commands within seconds, not forever, while Redis is down', async () => {
    const node = await RedisNode.start(harness());
    const client = await node.client();
    await node.process.stop();
    const started = Date.now();
    const error = await client.get('anything').then(
      () => expect.fail('GET succeeded with Redis down'),
      (caught: unknown) => caught as Error,
    );
    expect(Date.now() - started).to.be.below(5_000);
    expect(error.message).to.match(/max retries per request/i);
  });

  it('fails to connect to a port with nothing listening within seconds, naming the URL', async () => {
    const url = `redis://127.0.0.1:${await freePort()}`;
    const { log } = memoryLogger('redis-client');
    const started = Date.now();
    const error = await connectRedis(url, log).then(
      () => expect.fail('connected to nothing'),
      (caught: unknown) => caught as Error,
    );
    expect(Date.now() - started).to.be.below(8_000);
    expect(error.message).to.include(url);
    expect(error.message).to.match(/not reachable.*ECONNREFUSED.*redis-server/s);
  });

  it('explains how to install redis-server when it is not on PATH', async () => {
    const dataDir = harness().tempDir('redis').path;
    const path = process.env.PATH;
    process.env.PATH = dataDir;
    try {
      const error = await startRedisServer({ dataDir, port: await freePort() }).then(
        () => expect.fail('started without redis-server on PATH'),
        (caught: unknown) => caught as Error,
      );
      expect(error.message).to.include('apt-get install redis-server');
    } finally {
      process.env.PATH = path;
    }
  });

  it('parses redis://host:port[/db] and rejects anything else, naming the problem', () => {
    expect(parseRedisUrl('redis://127.0.0.1:6380/2')).to.deep.equal({ host: '127.0.0.1', port: 6380, db: 2 });
    expect(parseRedisUrl('redis://localhost')).to.deep.equal({ host: 'localhost', port: 6379, db: 0 });
    expect(parseRedisUrl('redis://[::1]:7000')).to.deep.equal({ host: '::1', port: 7000, db: 0 });
    expect(() => parseRedisUrl('http://127.0.0.1:6379')).to.throw(/scheme must be redis/);
    expect(() => parseRedisUrl('redis://127.0.0.1:6379/x')).to.throw(/must be a number/);
    expect(() => parseRedisUrl('127.0.0.1:6379')).to.throw(/expected redis:\/\/host:port/);
  });
});

/**
 * `@spg99/sdk` as a service gets it: `npm pack` of sdk/, the tarball installed into an empty package outside the
 * repository (no workspace link), and docs/sdk.md's ten-line example as that package's program, compiled with tsc
 * against the published types and run against a real platform: it creates a project and writes to it, creates a
 * branch at a time after the write, wakes the branch's endpoint and reads the write through the gateway with the
 * connection string it got.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { freePort } from '../../src/lib/net.js';
import { LOCAL_DOMAIN } from '../../src/lib/tls-certs.js';
import { Harness, REPO_ROOT } from '../harness/process.js';
import { ControlPlaneNode, publicApiCertificates } from '../harness/control-plane.js';
import { GatewayNode } from '../harness/gateway.js';
import { PageserverNode } from '../harness/pageserver.js';
import { ProvisionerNode } from '../harness/provisioner.js';
import { RedisNode } from '../harness/redis.js';
import { startSafekeepers } from '../harness/safekeepers.js';

const run = promisify(execFile);

/** The ```ts block under "## Ten lines" in docs/sdk.md. */
export function tenLineExample(): string {
  const doc = fs.readFileSync(path.join(REPO_ROOT, 'docs', 'sdk.md'), 'utf8');
  const section = doc.split('\n## Ten lines\n')[1];
  const code = section ? /```ts\n([\s\S]*?)```/.exec(section)?.[1] : undefined;
  if (!code) throw new Error('docs/sdk.md has no ```ts block under "## Ten lines"');
  return code;
}

describe('@spg99/sdk, packed and installed like a dependency', function () {
  this.timeout(600_000);
  let harness: Harness;

  before(() => {
    harness = new Harness();
  });
  after(async () => {
    await harness.teardown();
  });

  it('runs the ten-line example of docs/sdk.md from an empty package against a real platform', async () => {
    const example = tenLineExample();
    expect(example.trimEnd().split('\n'), 'the example is ten lines').to.have.length(10);
    const consumer = harness.tempDir('sdk-consumer').path;
    expect(path.relative(REPO_ROOT, consumer).startsWith('..'), 'the consumer package lies outside the repository').to.equal(true);

    // Packed and installed first: on a busy machine, tsc and npm beside the platform's start would slow it past its
    // readiness waits.
    await (async () => {
      const { stdout } = await run('npm', ['pack', '--pack-destination', consumer, '--silent'], { cwd: path.join(REPO_ROOT, 'sdk') });
      const tarball = path.join(consumer, stdout.trim().split('\n').pop()!);
      fs.writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
      await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball, 'pg@^8', '@types/pg@^8', '@types/node@^20'], { cwd: consumer });
      fs.writeFileSync(path.join(consumer, 'index.ts'), example);
      fs.writeFileSync(
        path.join(consumer, 'tsconfig.json'),
        JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, types: ['node'] }, files: ['index.ts'] }),
      );
      await run(path.join(REPO_ROOT, 'node_modules', '.bin', 'tsc'), ['-p', consumer]);
    })();
    const tls = await publicApiCertificates();
    const gatewayPort = await freePort();
    // One component after another (startGatewayPlatform starts four at once): on a busy machine their node start-ups
    // side by side outlast the harness' readiness waits. The gateway and the API share the platform's CA, as in make up.
    const redis = await RedisNode.start(harness);
    const safekeepers = await startSafekeepers(harness, 3);
    const pageserver = await PageserverNode.start(harness);
    const provisioner = await ProvisionerNode.start(harness);
    const controlPlane = await ControlPlaneNode.start(harness, {
      redisUrl: redis.url,
      pageserver: pageserver.address,
      safekeepers: safekeepers.map((node) => node.address),
      provisioner: provisioner.address,
      args: ['--domain', LOCAL_DOMAIN, '--public-host', '127.0.0.1', '--public-port', String(gatewayPort), '--public-root-cert', tls.caCertFile],
    });
    await GatewayNode.start(harness, {
      controlPlane: controlPlane.internalAddress,
      allowPlaintext: false,
      args: ['--listen', `127.0.0.1:${gatewayPort}`, '--domain', LOCAL_DOMAIN, '--tls-cert', tls.certFile, '--tls-key', tls.keyFile],
    });

    // A real install: a copy, not a link into the repository, with no platform server code in it.
    const sdkDirectory = path.join(consumer, 'node_modules', '@spg99', 'sdk');
    expect(fs.lstatSync(sdkDirectory).isSymbolicLink()).to.equal(false);
    const shipped = fs.readdirSync(path.join(sdkDirectory, 'dist'), { recursive: true }).map(String);
    expect(shipped.filter((file) => /^(src|cmd)\b/.test(file))).to.deep.equal([]);

    const { stdout } = await run(process.execPath, ['index.js'], {
      cwd: consumer,
      env: { PATH: process.env.PATH, SPG99_API: controlPlane.address, SPG99_API_KEY: (await controlPlane.operator().createTenant({ name: 'ci' })).apiKeySecret, SPG99_API_CA: controlPlane.caFile },
      timeout: 300_000,
    });
    // The branch, as of a moment after the write on its parent, has the table: read on its own Postgres, through the gateway.
    expect(stdout).to.equal('42\n');
  });
});

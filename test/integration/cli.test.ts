/**
 * The `spg99` command line as users run it: `node dist/cmd/spg99.js ...` as a child process against a real control
 * plane on a real Redis (a real pageserver for branches; safekeepers and a provisioner for `endpoints start --wait`). Tables for people, --json for scripts, and every
 * failure one line on stderr with exit 1 (the call failed) or 2 (the command line is wrong).
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { formatLsn } from '../../src/lib/lsn.js';
import { freePort } from '../../src/lib/net.js';
import { ensureLocalCertificates, LOCAL_DOMAIN } from '../../src/lib/tls-certs.js';
import { REPO_ROOT, useHarness } from '../harness/process.js';
import { RedisNode } from '../harness/redis.js';
import { ControlPlaneNode } from '../harness/control-plane.js';
import { PageserverNode } from '../harness/pageserver.js';
import { startSafekeepers } from '../harness/safekeepers.js';
import { ProvisionerNode } from '../harness/provisioner.js';

const CLI = path.join(REPO_ROOT, 'dist', 'cmd', 'spg99.js');
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI with `env` on top of the test runner's (without its SPG99_API / SPG99_API_KEY). */
function runCli(args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> {
  const base = { ...process.env };
  delete base.SPG99_API;
  delete base.SPG99_API_KEY;
  delete base.SPG99_API_CA;
  delete base.SPG99_HOME;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A successful run: exit 0, nothing on stderr. */
function succeeded(result: CliResult): string {
  expect(result.stderr, `stderr of a successful run (stdout: ${result.stdout})`).to.equal('');
  expect(result.code).to.equal(0);
  return result.stdout;
}

/** A successful --json run: its stdout is one JSON document and nothing else. */
function json<T = Record<string, any>>(result: CliResult): T {
  return JSON.parse(succeeded(result)) as T;
}

/** A failed run: `code`, nothing on stdout, one `spg99: ...` line on stderr (no stack trace) containing `phrases`. */
function failedWith(result: CliResult, code: 1 | 2, ...phrases: string[]): string {
  expect(result.stdout, 'stdout of a failed run').to.equal('');
  const lines = result.stderr.split('\n').filter((line) => line.length > 0);
  expect(lines, `stderr: ${result.stderr}`).to.have.length(1);
  const [line] = lines;
  expect(line).to.match(/^spg99: /);
  expect(line).to.not.match(/\n\s+at /);
  for (const phrase of phrases) expect(line).to.contain(phrase);
  expect(result.code, line).to.equal(code);
  return line;
}

/** The table printed: heading cells and rows, checking that every cell starts under its heading. */
function table(output: string): { headings: string[]; rows: Array<Record<string, string>> } {
  const lines = output.trimEnd().split('\n');
  const header = lines[0];
  const starts = [...header.matchAll(/\S+(?: \S+)*/g)].map((match) => ({ heading: match[0], start: match.index! }));
  const rows = lines.slice(1).map((line) => {
    const row: Record<string, string> = {};
    starts.forEach(({ heading, start }, index) => {
      const end = index + 1 < starts.length ? starts[index + 1].start : line.length;
      expect(start === 0 || line[start - 1] === ' ', `"${line}" has a cell under ${heading} that does not start at its column`).to.equal(true);
      row[heading] = line.slice(start, end).trim();
    });
    return row;
  });
  return { headings: starts.map((start) => start.heading), rows };
}

/** `field: value` lines as a record. */
function details(output: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of output.split('\n')) {
    const match = /^([A-Za-z][A-Za-z ]*):\s+(.*)$/.exec(line);
    if (match) fields[match[1]] = match[2];
  }
  return fields;
}

describe('spg99 CLI (real control plane, real Redis)', function () {
  this.timeout(180_000);
  const harness = useHarness();
  let controlPlane: ControlPlaneNode;

  /** Runs the CLI against the control plane under test, with `apiKey` in SPG99_API_KEY. */
  function spg99(args: string[], apiKey?: string, env: Record<string, string> = {}): Promise<CliResult> {
    return runCli(args, { SPG99_API: controlPlane.address, SPG99_API_CA: controlPlane.caFile, ...(apiKey === undefined ? {} : { SPG99_API_KEY: apiKey }), ...env });
  }

  /** A new tenant (through the generated client, as the operator): its admin key's secret. */
  async function newTenant(name: string): Promise<string> {
    return (await controlPlane.operator().createTenant({ name })).apiKeySecret;
  }

  describe('without a pageserver', () => {
    beforeEach(async () => {
      const redis = await RedisNode.start(harness());
      controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url });
    });

    it('creates a tenant with the operator token file, printing the admin key secret once; the key works', async () => {
      const tokenFile = harness().tempDir('cli').join('operator-token');
      fs.writeFileSync(tokenFile, `${controlPlane.operatorToken}\n`, { mode: 0o600 });

      const shown = succeeded(await spg99(['tenants', 'create', 'acme', '--operator-token-file', tokenFile]));
      const secret = /^API key secret:\s+(\S+)$/m.exec(shown)?.[1];
      expect(secret, shown).to.match(/^spg99_[a-z2-7]{52}$/);
      expect(shown).to.contain('shown only this once').and.to.contain(`export SPG99_API_KEY=${secret}`);
      const tenants = table(shown.split('\n\n')[0]);
      expect(tenants.headings).to.deep.equal(['ID', 'NAME', 'CREATED']);
      expect(tenants.rows[0].ID).to.match(/^tn-/);
      expect(tenants.rows[0].NAME).to.equal('acme');
      expect(tenants.rows[0].CREATED).to.match(ISO_TIME);
      expect(table(succeeded(await spg99(['tenants', 'get'], secret))).rows[0]).to.deep.include({ ID: tenants.rows[0].ID, NAME: 'acme' });

      const created = json(await spg99(['tenants', 'create', 'globex', '--operator-token-file', tokenFile, '--json']));
      expect(created.tenant.name).to.equal('globex');
      expect(created.apiKey.scope).to.equal('API_KEY_SCOPE_ADMIN');
      expect(created.apiKeySecret.startsWith(created.apiKey.secretPrefix)).to.equal(true);

      // The wrong token, a missing file, and a missing flag.
      const wrongFile = harness().tempDir('cli').join('wrong-token');
      fs.writeFileSync(wrongFile, 'x'.repeat(64));
      failedWith(await spg99(['tenants', 'create', 'initech', '--operator-token-file', wrongFile]), 1, 'operator token', '--operator-token-file');
      failedWith(await spg99(['tenants', 'create', 'initech', '--operator-token-file', '/nonexistent/token']), 1, 'cannot read', '/nonexistent/token', 'ENOENT');
      failedWith(await spg99(['tenants', 'create', 'initech']), 2, 'missing flag --operator-token-file', 'usage: spg99 tenants create <name>');
      failedWith(await spg99(['tenants', 'create', 'acme', '--operator-token-file', tokenFile]), 1, 'acme', 'exists');
    });

    it('creates, lists and revokes keys; a revoked key then fails in one line pointing at SPG99_API_KEY', async () => {
      const admin = await newTenant('acme');
      const created = json(await spg99(['keys', 'create', 'dashboard', '--scope', 'read', '--json'], admin));
      expect(created.apiKey).to.include({ name: 'dashboard', scope: 'API_KEY_SCOPE_READ' });
      expect(created.apiKey.keyId).to.match(/^ky-/);
      expect(created.apiKey.createdAt).to.match(ISO_TIME);
      const reader: string = created.secret;
      expect(reader.startsWith(created.apiKey.secretPrefix)).to.equal(true);

      const shown = succeeded(await spg99(['keys', 'create', 'ci'], admin));
      expect(shown).to.match(/^Secret:\s+spg99_[a-z2-7]{52}$/m);
      expect(shown).to.contain('shown only this once');
      expect(table(shown.split('\n\n')[0]).rows[0]).to.deep.include({ NAME: 'ci', SCOPE: 'ADMIN', 'LAST USED': '-', REVOKED: '-' });

      const listed = succeeded(await spg99(['keys', 'list'], reader));
      expect(listed).to.not.contain(reader).and.to.not.contain(admin);
      const keys = table(listed);
      expect(keys.headings).to.deep.equal(['ID', 'NAME', 'SCOPE', 'PREFIX', 'CREATED', 'LAST USED', 'REVOKED']);
      expect(keys.rows).to.have.length(3);
      expect(keys.rows.map((row) => row.NAME)).to.include.members(['dashboard', 'ci']);
      expect(keys.rows.find((row) => row.NAME === 'dashboard')).to.deep.include({ ID: created.apiKey.keyId, SCOPE: 'READ' });
      const listedJson = json(await spg99(['keys', 'list', '--json'], admin));
      expect(listedJson.apiKeys.map((key: { keyId: string }) => key.keyId)).to.include(created.apiKey.keyId);

      // A read key may not change anything.
      failedWith(await spg99(['projects', 'create', 'nope'], reader), 1, 'projects create', 'scope read', 'admin key');

      const revoked = json(await spg99(['keys', 'revoke', created.apiKey.keyId, '--json'], admin));
      expect(revoked.apiKey.revokedAt).to.match(ISO_TIME);
      const revokedTable = succeeded(await spg99(['keys', 'revoke', created.apiKey.keyId], admin));
      expect(table(revokedTable.split('\n').slice(0, 2).join('\n')).rows[0].REVOKED).to.equal(revoked.apiKey.revokedAt);
      failedWith(await spg99(['projects', 'list'], reader), 1, 'revoked', created.apiKey.keyId, 'check SPG99_API_KEY');
      failedWith(await spg99(['keys', 'revoke', 'pj-aaaaaaaaaaaaaaaa'], admin), 2, '"pj-aaaaaaaaaaaaaaaa" is not an API key id', 'usage: spg99 keys revoke <key-id>');
      failedWith(await spg99(['keys', 'revoke', 'ky-aaaaaaaaaaaaaaaa'], admin), 1, 'ky-aaaaaaaaaaaaaaaa');
      failedWith(await spg99(['keys', 'create', 'x', '--scope', 'owner'], admin), 2, '--scope "owner" is not a scope', 'admin or read');
      // An unknown key.
      failedWith(await spg99(['keys', 'list'], `spg99_${'a'.repeat(52)}`), 1, 'unknown API key', 'check SPG99_API_KEY');
    });

    it('creates, lists, shows and deletes projects, as tables and as JSON', async () => {
      const admin = await newTenant('acme');
      const shown = succeeded(await spg99(['projects', 'create', 'shop'], admin));
      const fields = details(shown);
      const projectId = /^(pj-[a-z0-9]{16}) /.exec(fields.Project)?.[1];
      expect(projectId, shown).to.be.a('string');
      expect(fields.Project).to.contain('shop').and.to.contain('region local').and.to.contain('PostgreSQL 18');
      expect(fields.Branch).to.match(/^tl-[0-9a-f]{32} \(main\)$/);
      expect(fields.Endpoint).to.match(/^ep-[0-9a-f]{32} \(STOPPED;/);
      expect(fields.Role).to.match(/^owner \(rl-/);
      expect(fields.Password).to.have.length.greaterThanOrEqual(32);
      // The control plane's default domain has one label: endpoints share 127.0.0.1 and are named in options.
      const endpointId = /^(ep-[0-9a-f]{32}) /.exec(fields.Endpoint)?.[1];
      expect(fields['Connection URI']).to.equal(
        `postgresql://owner:${fields.Password}@127.0.0.1/postgres?options=endpoint%3D${endpointId}&sslmode=verify-full&sslrootcert=system`,
      );
      expect(shown).to.contain('shown only this once');

      const created = json(
        await spg99(['projects', 'create', 'analytics', '--suspend-timeout', '90s', '--cpu-millis', '2000', '--pooler-mode', 'transaction', '--json'], admin),
      );
      expect(created.project).to.include({ name: 'analytics', region: 'local', pgMajorVersion: 18 });
      expect(created.project.defaultEndpointSettings).to.deep.include({ suspendTimeout: { seconds: '90' }, poolerMode: 'POOLER_MODE_TRANSACTION' });
      expect(created.project.defaultEndpointSettings.profile).to.deep.equal({ cpuMillis: 2000, memoryMib: 1024 });
      expect(created.defaultBranch).to.include({ name: 'main', isDefault: true, branchId: created.project.defaultBranchId });
      expect(created.defaultEndpoint).to.include({ state: 'ENDPOINT_STATE_STOPPED', branchId: created.defaultBranch.branchId });
      expect(created.defaultEndpoint.createdAt).to.match(ISO_TIME);
      expect(created.defaultRole.name).to.equal('owner');
      expect(created.connectionUri).to.contain(created.defaultRolePassword);

      const listed = table(succeeded(await spg99(['projects', 'list'], admin)));
      expect(listed.headings).to.deep.equal(['ID', 'NAME', 'REGION', 'PG', 'DEFAULT BRANCH', 'CREATED']);
      expect(listed.rows.map((row) => [row.ID, row.NAME, row.REGION, row.PG])).to.deep.equal([
        [projectId, 'shop', 'local', '18'],
        [created.project.projectId, 'analytics', 'local', '18'],
      ]);
      expect(listed.rows[1]['DEFAULT BRANCH']).to.equal(created.project.defaultBranchId);
      expect(listed.rows[0].CREATED).to.match(ISO_TIME);
      const listedJson = json(await spg99(['projects', 'list', '--json'], admin));
      expect(listedJson.projects.map((project: { projectId: string }) => project.projectId)).to.deep.equal([projectId, created.project.projectId]);

      const got = details(succeeded(await spg99(['projects', 'get', created.project.projectId], admin)));
      expect(got).to.deep.include({ Project: created.project.projectId, Name: 'analytics', Region: 'local', PostgreSQL: '18' });
      expect(got).to.deep.include({ Compute: '2000m/1024MiB', 'Suspend after': '1m30s', Pooler: 'TRANSACTION', Autoscale: 'off' });
      expect(json(await spg99(['projects', 'get', created.project.projectId, '--json'], admin)).project).to.deep.equal(created.project);

      expect(json(await spg99(['projects', 'delete', created.project.projectId, '--json'], admin))).to.deep.equal({});
      expect(succeeded(await spg99(['projects', 'delete', projectId!], admin))).to.contain(`Deleted project ${projectId}`);
      failedWith(await spg99(['projects', 'get', projectId!], admin), 1, 'projects get', projectId!, 'does not exist');
      expect(succeeded(await spg99(['projects', 'list'], admin))).to.contain('No projects yet');
      expect(json(await spg99(['projects', 'list', '--json'], admin))).to.deep.equal({ projects: [] });
      failedWith(await spg99(['projects', 'create', 'bad', '--region', 'mars-1'], admin), 1, 'region "mars-1" is unknown');
    });

    it('refuses to call without SPG99_API_KEY, saying how to get one', async () => {
      failedWith(await spg99(['projects', 'list']), 1, 'no API key', 'export SPG99_API_KEY=', 'spg99 keys create');
      failedWith(await spg99(['projects', 'list'], ''), 1, 'no API key');
      // --api-key works too.
      const admin = await newTenant('acme');
      expect(succeeded(await spg99(['projects', 'list', '--api-key', admin]))).to.contain('No projects yet');
    });

    it('answers a wrong command line with exit 2 and the usage line; --help and --version print to stdout', async () => {
      const admin = await newTenant('acme');
      failedWith(await spg99(['frobnicate'], admin), 2, 'unknown command "frobnicate"', 'projects', 'usage: spg99 <command>');
      failedWith(await spg99(['projects', 'frob'], admin), 2, 'unknown command "projects frob"', 'usage: spg99 projects create|list|get|delete');
      failedWith(await spg99(['projects'], admin), 2, 'missing command after "projects"');
      failedWith(await spg99([], admin), 2, 'missing command', 'usage: spg99');
      failedWith(await spg99(['projects', 'get'], admin), 2, 'missing argument <project-id>', 'usage: spg99 projects get <project-id>');
      failedWith(await spg99(['projects', 'list', '--frob'], admin), 2, 'unknown flag --frob', 'usage: spg99 projects list');
      failedWith(await spg99(['projects', 'list', 'extra'], admin), 2, 'unexpected argument "extra"');
      failedWith(await spg99(['branches', 'list'], admin), 2, 'missing flag --project', 'usage: spg99 branches list --project');
      failedWith(await spg99(['projects', 'create', 'x', '--suspend-timeout', 'soon'], admin), 2, '--suspend-timeout "soon" is not a duration');
      failedWith(await spg99(['projects', 'list', '--api', 'nohostport'], admin), 2, '--api "nohostport" is not host:port');

      const help = succeeded(await spg99(['--help']));
      for (const command of ['projects create <name>', 'branches create --project', 'endpoints start <endpoint-id>', 'roles create <name> --branch', 'keys revoke <key-id>', 'connection-string <endpoint-id>', 'tenants create <name>']) {
        expect(help).to.contain(command);
      }
      expect(help).to.contain('SPG99_API_KEY');
      const commandHelp = succeeded(await spg99(['branches', 'create', '--help']));
      expect(commandHelp.split('\n')[0]).to.equal(
        'usage: spg99 branches create --project <pj-…> [--name <name>] [--parent <tl-…>] [--lsn <X/Y>] [--at <ISO time>] [--endpoint]',
      );
      expect(succeeded(await spg99(['help', 'keys']))).to.contain('keys create');
      expect(succeeded(await spg99(['--version']))).to.match(/^spg99 \d+\.\d+\.\d+\n$/);
    });

    it('says in one line when the control plane is not reachable', async () => {
      const port = await freePort();
      const address = `127.0.0.1:${port}`;
      const result = await runCli(['projects', 'list'], { SPG99_API: address, SPG99_API_KEY: `spg99_${'a'.repeat(52)}` });
      failedWith(result, 1, `the control plane at ${address} is not reachable`, 'ECONNREFUSED', 'make up');
      // --api overrides SPG99_API.
      failedWith(await runCli(['projects', 'list', '--api', address], { SPG99_API: controlPlane.address, SPG99_API_KEY: 'x' }), 1, address);
    });

    it('verifies the control plane\'s certificate: another CA, or no TLS at all, fails in one line naming SPG99_API_CA', async () => {
      const admin = await newTenant('tls');
      // The right CA works (every other test here passes it too).
      succeeded(await spg99(['tenants', 'get'], admin));
      const otherCa = await ensureLocalCertificates(path.join(harness().tempDir('other-ca').path, 'tls'), { domain: LOCAL_DOMAIN });
      failedWith(await spg99(['tenants', 'get'], admin, { SPG99_API_CA: otherCa.caCertFile }), 1, 'failed the TLS handshake', otherCa.caCertFile, 'SPG99_API_CA');
      // A client that speaks plaintext to it gets no answer: the public API never serves the key in the clear.
      failedWith(await spg99(['tenants', 'get'], admin, { SPG99_API_CA: 'plaintext' }), 1, controlPlane.address);
      failedWith(await spg99(['tenants', 'get'], admin, { SPG99_API_CA: '/nonexistent/ca.crt' }), 1, 'SPG99_API_CA /nonexistent/ca.crt does not exist');
    });

    it('lists and shows endpoints; starting one on a control plane without a provisioner fails with its message', async () => {
      const admin = await newTenant('acme');
      const created = json(await spg99(['projects', 'create', 'shop', '--json'], admin));
      const endpointId: string = created.defaultEndpoint.endpointId;

      const listed = table(succeeded(await spg99(['endpoints', 'list', '--project', created.project.projectId], admin)));
      expect(listed.headings).to.deep.equal(['ID', 'BRANCH', 'STATE', 'COMPUTE', 'HOST', 'SINCE', 'REASON']);
      expect(listed.rows).to.have.length(1);
      expect(listed.rows[0]).to.deep.include({ ID: endpointId, BRANCH: created.defaultBranch.branchId, STATE: 'STOPPED', COMPUTE: '1000m/1024MiB', HOST: `${endpointId}.localhost` });
      expect(listed.rows[0].SINCE).to.match(ISO_TIME);
      const listedJson = json(await spg99(['endpoints', 'list', '--project', created.project.projectId, '--json'], admin));
      expect(listedJson.endpoints).to.deep.equal([created.defaultEndpoint]);
      const otherBranch = `tl-${'0'.repeat(32)}`;
      expect(json(await spg99(['endpoints', 'list', '--project', created.project.projectId, '--branch', otherBranch, '--json'], admin))).to.deep.equal({ endpoints: [] });

      const got = details(succeeded(await spg99(['endpoints', 'get', endpointId], admin)));
      expect(got).to.deep.include({ Endpoint: endpointId, State: 'STOPPED', 'Suspend after': '5m', Pooler: 'SESSION', 'Current compute': '-' });
      expect(json(await spg99(['endpoints', 'get', endpointId, '--json'], admin)).endpoint.state).to.equal('ENDPOINT_STATE_STOPPED');

      failedWith(await spg99(['endpoints', 'start', endpointId], admin), 1, 'endpoints start', 'StartEndpoint is not available', '--provisioner');
      failedWith(await spg99(['endpoints', 'stop', endpointId, '--wait'], admin), 1, 'endpoints stop', 'StopEndpoint is not available');
      failedWith(await spg99(['endpoints', 'start', created.project.projectId], admin), 2, 'is not an endpoint id', 'ep-');
      failedWith(await spg99(['endpoints', 'get', `ep-${'a'.repeat(32)}`], admin), 1, `ep-${'a'.repeat(32)}`, 'does not exist');
    });
  });

  describe('with a pageserver (branches, roles, connection strings)', () => {
    let admin: string;
    let created: Record<string, any>;

    beforeEach(async () => {
      const redis = await RedisNode.start(harness());
      const pageserver = await PageserverNode.start(harness());
      controlPlane = await ControlPlaneNode.start(harness(), { redisUrl: redis.url, pageserver: pageserver.address });
      admin = await newTenant('acme');
      created = json(await spg99(['projects', 'create', 'shop', '--json'], admin));
    });

    it('creates and lists branches: now, at an LSN, and from another parent', async () => {
      const projectId: string = created.project.projectId;
      const mainId: string = created.defaultBranch.branchId;
      const dev = json(await spg99(['branches', 'create', '--project', projectId, '--name', 'dev', '--json'], admin));
      expect(dev.branch).to.include({ projectId, name: 'dev', parentBranchId: mainId });
      expect(dev.branch.branchId).to.match(/^tl-[0-9a-f]{32}$/);
      expect(BigInt(dev.branch.parentLsn) > 0n, `parentLsn ${dev.branch.parentLsn}`).to.equal(true);
      expect(dev.endpoint).to.equal(undefined);

      // At the same LSN, typed as X/Y, with an endpoint of its own.
      const lsnText = formatLsn(BigInt(dev.branch.parentLsn));
      const shown = succeeded(await spg99(['branches', 'create', '--project', projectId, '--name', 'at-lsn', '--lsn', lsnText, '--endpoint'], admin));
      const [branchTable, endpointTable] = shown.trimEnd().split('\n\n');
      const atLsn = table(branchTable).rows[0];
      expect(atLsn).to.deep.include({ NAME: 'at-lsn', PARENT: mainId, 'PARENT LSN': lsnText, DEFAULT: 'no' });
      expect(table(endpointTable).rows[0]).to.deep.include({ BRANCH: atLsn.ID, STATE: 'STOPPED' });

      // A branch of dev, named by default.
      const child = json(await spg99(['branches', 'create', '--project', projectId, '--parent', dev.branch.branchId, '--json'], admin));
      expect(child.branch.parentBranchId).to.equal(dev.branch.branchId);
      expect(child.branch.name).to.match(/^dev-\d{8}-\d{6}$/);

      const listed = table(succeeded(await spg99(['branches', 'list', '--project', projectId], admin)));
      expect(listed.headings).to.deep.equal(['ID', 'NAME', 'PARENT', 'PARENT LSN', 'DEFAULT', 'SIZE', 'CREATED']);
      expect(listed.rows.map((row) => row.NAME).sort()).to.deep.equal(['at-lsn', 'dev', child.branch.name, 'main'].sort());
      expect(listed.rows.find((row) => row.NAME === 'main')).to.deep.include({ ID: mainId, PARENT: '-', 'PARENT LSN': '-', DEFAULT: 'yes' });
      const listedJson = json(await spg99(['branches', 'list', '--project', projectId, '--json'], admin));
      expect(listedJson.branches.map((branch: { branchId: string }) => branch.branchId)).to.include.members([mainId, dev.branch.branchId, child.branch.branchId]);

      failedWith(await spg99(['branches', 'create', '--project', projectId, '--lsn', '0/1', '--at', '2026-01-01T00:00:00Z'], admin), 2, '--lsn and --at are exclusive');
      failedWith(await spg99(['branches', 'create', '--project', projectId, '--lsn', 'zero'], admin), 2, '"zero" is not an LSN');
      failedWith(await spg99(['branches', 'create', '--project', projectId, '--at', 'yesterday'], admin), 2, '--at "yesterday" is not a time');
      failedWith(await spg99(['branches', 'create', '--project', projectId, '--name', 'dev'], admin), 1, 'branches create', 'dev');

      // Endpoints on a branch without one; deletion child first.
      const endpoint = json(await spg99(['endpoints', 'create', '--branch', dev.branch.branchId, '--suspend-timeout', '10m', '--json'], admin));
      expect(endpoint.endpoint).to.include({ branchId: dev.branch.branchId, state: 'ENDPOINT_STATE_STOPPED' });
      expect(endpoint.endpoint.settings.suspendTimeout.seconds).to.equal('600');
      failedWith(await spg99(['endpoints', 'create', '--branch', dev.branch.branchId], admin), 1, 'endpoints create', 'already has endpoint');
      expect(succeeded(await spg99(['endpoints', 'delete', endpoint.endpoint.endpointId], admin))).to.contain(`Deleted endpoint ${endpoint.endpoint.endpointId}`);
      failedWith(await spg99(['branches', 'delete', dev.branch.branchId], admin), 1, 'branches delete', 'delete that branch first');
      expect(succeeded(await spg99(['branches', 'delete', child.branch.branchId], admin))).to.contain(`Deleted branch ${child.branch.branchId}`);
      succeeded(await spg99(['branches', 'delete', dev.branch.branchId], admin));
      const remaining = json(await spg99(['branches', 'list', '--project', projectId, '--json'], admin));
      expect(remaining.branches.map((branch: { name: string }) => branch.name).sort()).to.deep.equal(['at-lsn', 'main']);
    });

    it('creates and lists roles (the password shown once) and prints connection strings', async () => {
      const branchId: string = created.defaultBranch.branchId;
      const endpointId: string = created.defaultEndpoint.endpointId;
      const role = json(await spg99(['roles', 'create', '--branch', branchId, 'app', '--json'], admin));
      expect(role.role).to.include({ name: 'app', branchId });
      expect(role.role.roleId).to.match(/^rl-/);
      expect(role.password).to.have.length.greaterThanOrEqual(16);
      const shown = succeeded(await spg99(['roles', 'create', '--branch', branchId, 'reporting'], admin));
      expect(shown).to.match(/^Password:\s+\S{16,}$/m);
      expect(shown).to.contain('shown only this once');
      failedWith(await spg99(['roles', 'create', '--branch', branchId, 'app'], admin), 1, 'roles create', 'app');
      failedWith(await spg99(['roles', 'create', 'app'], admin), 2, 'missing flag --branch');

      const roles = table(succeeded(await spg99(['roles', 'list', '--branch', branchId], admin)));
      expect(roles.headings).to.deep.equal(['ID', 'NAME', 'BRANCH', 'CREATED']);
      expect(roles.rows.map((row) => row.NAME).sort()).to.deep.equal(['app', 'owner', 'reporting']);
      const rolesJson = json(await spg99(['roles', 'list', '--branch', branchId, '--json'], admin));
      expect(rolesJson.roles.map((listed: { roleId: string }) => listed.roleId)).to.include(role.role.roleId);

      const direct = `postgresql://owner@127.0.0.1/postgres?options=endpoint%3D${endpointId}&sslmode=verify-full&sslrootcert=system`;
      expect(succeeded(await spg99(['connection-string', endpointId], admin))).to.equal(`${direct}\n`);
      const pooled = json(await spg99(['connection-string', endpointId, '--role', 'app', '--database', 'shop', '--pooled', '--json'], admin));
      expect(pooled).to.deep.equal({
        uri: `postgresql://app@127.0.0.1/shop?options=endpoint%3D${endpointId}-pooler&sslmode=verify-full&sslrootcert=system`,
        format: 'uri',
        connectionString: pooled.uri,
      });
      // The other forms, from the same URI (a public CA: libpq's system store, Java's own trust store for pgjdbc).
      expect(succeeded(await spg99(['connection-string', endpointId, '--format', 'keyword'], admin))).to.equal(
        `host=127.0.0.1 port=5432 user=owner dbname=postgres options=endpoint=${endpointId} sslmode=verify-full sslrootcert=system\n`,
      );
      expect(succeeded(await spg99(['connection-string', endpointId, '--format', 'env'], admin))).to.equal(
        [
          'export PGHOST=127.0.0.1', 'export PGPORT=5432', 'export PGUSER=owner', 'export PGDATABASE=postgres',
          `export PGOPTIONS=endpoint=${endpointId}`, 'export PGSSLMODE=verify-full', 'export PGSSLROOTCERT=system',
          "# and PGPASSWORD: the role's password (see docs/connecting.md)", '',
        ].join('\n'),
      );
      expect(succeeded(await spg99(['connection-string', endpointId, '--pooled', '--format', 'jdbc'], admin))).to.equal(
        `jdbc:postgresql://127.0.0.1:5432/postgres?user=owner&options=endpoint%3D${endpointId}-pooler&sslmode=verify-full&sslfactory=org.postgresql.ssl.DefaultJavaSSLFactory\n`,
      );
      failedWith(await spg99(['connection-string', endpointId, '--format', 'yaml'], admin), 2, '--format must be one of uri, keyword, env, jdbc');
      failedWith(await spg99(['connection-string', endpointId, '--role', 'nobody'], admin), 1, 'connection-string', 'nobody');

      const reset = succeeded(await spg99(['roles', 'reset-password', role.role.roleId], admin));
      expect(reset).to.match(/^Password:\s+\S{16,}$/m);
      expect(reset).to.not.contain(role.password);
      expect(succeeded(await spg99(['roles', 'delete', role.role.roleId], admin))).to.contain(`Deleted role ${role.role.roleId}`);
      failedWith(await spg99(['roles', 'delete', role.role.roleId], admin), 1, 'roles delete', 'does not exist');
      failedWith(await spg99(['roles', 'delete', 'app'], admin), 2, 'rl-');
    });
  });

  describe('with a provisioner (endpoints start and stop --wait)', () => {
    it('starts an endpoint and waits for RUNNING, stops it and waits for STOPPED; a wait that runs out says so', async () => {
      const [redis, safekeepers, pageserver, provisioner] = await Promise.all([
        RedisNode.start(harness()),
        startSafekeepers(harness(), 3),
        PageserverNode.start(harness()),
        ProvisionerNode.start(harness()),
      ]);
      controlPlane = await ControlPlaneNode.start(harness(), {
        redisUrl: redis.url,
        pageserver: pageserver.address,
        safekeepers: safekeepers.map((node) => node.address),
        provisioner: provisioner.address,
      });
      const admin = await newTenant('acme');
      const created = json(await spg99(['projects', 'create', 'shop', '--json'], admin));
      const endpointId: string = created.defaultEndpoint.endpointId;

      // Without --wait the answer comes at once; a wait of no time ends while it is still STARTING.
      const starting = json(await spg99(['endpoints', 'start', endpointId, '--json'], admin));
      expect(starting.endpoint.state).to.equal('ENDPOINT_STATE_STARTING');
      failedWith(await spg99(['endpoints', 'start', endpointId, '--wait', '--wait-timeout', '0s'], admin), 1, `endpoint ${endpointId} is still STARTING`, '--wait-timeout');

      const running = table(succeeded(await spg99(['endpoints', 'start', endpointId, '--wait', '--wait-timeout', '200s'], admin)));
      expect(running.rows[0]).to.deep.include({ ID: endpointId, STATE: 'RUNNING' });
      const runningJson = json(await spg99(['endpoints', 'get', endpointId, '--json'], admin));
      expect(runningJson.endpoint.currentComputeId).to.match(/^cp-/);
      expect(Number(runningJson.endpoint.writerTerm)).to.be.greaterThan(0);

      const stopped = json(await spg99(['endpoints', 'stop', endpointId, '--wait', '--json'], admin));
      expect(stopped.endpoint.state).to.equal('ENDPOINT_STATE_STOPPED');
      expect(stopped.endpoint.currentComputeId).to.equal(undefined);
      expect(provisioner.agentPids()).to.deep.equal([]);
    });
  });
});

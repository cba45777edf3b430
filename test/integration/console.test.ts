/**
 * The console in a real headless Chromium (Debian's `chromium`, driven by playwright-core) against a real platform
 * (harness: Redis, safekeepers, pageserver, provisioner, control plane, TLS gateway) and a real console process. The
 * steps run in order on one signed-in browser, as a user would. Screenshots of each page go to
 * test-artifacts/console/ (git-ignored).
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { freePort } from '../../src/lib/net.js';
import { ensureLocalCertificates, LOCAL_DOMAIN } from '../../src/lib/tls-certs.js';
import { Harness, REPO_ROOT, type ComponentProcess } from '../harness/process.js';
import { startGatewayPlatform } from '../harness/platform.js';
import { ApiKeyScope } from '../../gen/spg99/controlplane/v1/controlplane.js';

// Functions passed to page.evaluate run in the browser; the Node project has no DOM types, so these stand in.
/* eslint-disable @typescript-eslint/no-explicit-any */
declare const document: any, window: any, navigator: any, localStorage: any, sessionStorage: any;

const CHROMIUM = process.env.SPG99_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts', 'console');

/** psql with `uri` and PGPASSWORD, running `sql`; its tuples-only output. */
function psql(uri: string, password: string, sql: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    for (const name of Object.keys(env)) if (/^(SPG99_|PG)/.test(name)) delete env[name];
    const child = spawn('psql', [uri, '-X', '-tA', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
      env: { ...env, PGPASSWORD: password, PSQLRC: '/dev/null', PGCONNECT_TIMEOUT: '120' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(stdout.trim()) : reject(new Error(`psql "${uri}" -c "${sql}" exited ${code}: ${stderr}`))));
  });
}

describe('console in a real browser (chromium, real platform)', function () {
  this.timeout(300_000);
  let harness: Harness;
  let failed = false;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let consoleProcess: ComponentProcess;
  let consoleArgs: string[];
  let consoleUrl: string;
  let platform: Awaited<ReturnType<typeof startGatewayPlatform>>;
  let adminKey: string;
  let readKey: string;
  let otherTenantKey: string;
  /** The PromQL queries the fake Prometheus was asked. */
  const prometheusQueries: string[] = [];
  /** The project the browser creates, with its owner's password. */
  const created = { projectId: '', endpointId: '', password: '', uri: '' };

  async function startConsole(): Promise<void> {
    consoleProcess = harness.spawn('console', consoleArgs, { label: 'console', stopFirst: true });
    const ready = await consoleProcess.waitForLine((line) => line.msg === 'console ready', { what: '"console ready"' });
    consoleUrl = `http://127.0.0.1:${Number(ready.port)}`;
    // A restart listens where this one does, so the browser finds it again.
    consoleArgs[consoleArgs.indexOf('--listen') + 1] = `127.0.0.1:${Number(ready.port)}`;
  }

  async function shot(name: string, target: Page = page): Promise<void> {
    await target.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
  }

  async function signIn(target: Page, key: string): Promise<void> {
    await target.goto(`${consoleUrl}/signin`);
    await target.getByLabel('API key').fill(key);
    await target.getByRole('button', { name: 'Sign in' }).click();
    await target.locator('h1:text-is("Projects"), [role="alert"]').first().waitFor();
    if ((await target.getByRole('alert').count()) > 0) throw new Error(`sign-in failed: ${await target.getByRole('alert').textContent()}`);
  }

  /** The connection string as the endpoint page's Copy button puts it on the clipboard. */
  async function copiedConnectionString(endpointId: string): Promise<string> {
    await page.goto(`${consoleUrl}/endpoints/${endpointId}`);
    await page.getByRole('button', { name: /^Copy Connection string/ }).click();
    return page.evaluate(() => navigator.clipboard.readText());
  }

  before(async function () {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run make system-deps (apt-get install chromium)`);
    harness = new Harness();
    const scratch = harness.tempDir('console').path;
    const certificates = await ensureLocalCertificates(path.join(scratch, 'tls'), { domain: LOCAL_DOMAIN });
    const gatewayPort = await freePort();
    platform = await startGatewayPlatform(harness, {
      allowPlaintext: false,
      gatewayArgs: ['--listen', `127.0.0.1:${gatewayPort}`, '--domain', LOCAL_DOMAIN, '--tls-cert', certificates.certFile, '--tls-key', certificates.keyFile],
      controlPlaneArgs: ['--domain', LOCAL_DOMAIN, '--public-host', '127.0.0.1', '--public-port', String(gatewayPort), '--public-root-cert', certificates.caCertFile],
    });
    adminKey = (await platform.api.createApiKey({ name: 'browser', scope: ApiKeyScope.API_KEY_SCOPE_ADMIN })).secret;
    readKey = (await platform.api.createApiKey({ name: 'viewer', scope: ApiKeyScope.API_KEY_SCOPE_READ })).secret;
    otherTenantKey = (await platform.controlPlane.operator().createTenant({ name: 'stranger' })).apiKeySecret;
    // Prometheus' query_range API, answering every query with a short rising series.
    const prometheus = http.createServer((request, response) => {
      const url = new URL(request.url ?? '/', 'http://prometheus.invalid');
      prometheusQueries.push(url.searchParams.get('query') ?? '');
      const start = Number(url.searchParams.get('start'));
      const step = Number(url.searchParams.get('step'));
      const values = Array.from({ length: 20 }, (_, index) => [start + index * step, String(index + 1)]);
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ status: 'success', data: { resultType: 'matrix', result: [{ metric: {}, values }] } }));
    });
    await new Promise<void>((resolve) => prometheus.listen(0, '127.0.0.1', resolve));
    harness.defer(() => prometheus.close());
    const prometheusUrl = `http://127.0.0.1:${(prometheus.address() as { port: number }).port}`;
    consoleArgs = [
      '--listen', '127.0.0.1:0',
      '--control-plane', platform.controlPlane.address,
      '--control-plane-ca', platform.controlPlane.caFile,
      '--session-key-file', path.join(scratch, 'session.key'),
      '--prometheus-url', prometheusUrl,
    ];
    await startConsole();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: consoleUrl });
    page = await context.newPage();
    page.on('dialog', (dialog) => void dialog.accept());
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(async () => {
    await browser?.close();
    await harness?.teardown({ dumpLogs: failed });
  });

  it('signs in with an API key that stays out of the browser: an HttpOnly, SameSite cookie holds it sealed', async () => {
    await page.goto(`${consoleUrl}/`);
    expect(new URL(page.url()).pathname, 'a visitor without a session is sent to sign in').to.equal('/signin');
    await signIn(page, adminKey);
    const cookie = (await context.cookies()).find((candidate) => candidate.name === 'spg99_console');
    expect(cookie?.httpOnly).to.equal(true);
    expect(cookie?.sameSite).to.equal('Strict');
    expect(cookie?.value).to.not.include(adminKey);
    const visible = await page.evaluate(() => ({ cookies: document.cookie, local: JSON.stringify(localStorage), session: JSON.stringify(sessionStorage) }));
    expect(JSON.stringify(visible)).to.not.include(adminKey);
    expect(visible.cookies).to.equal('');
    expect(await page.getByRole('link', { name: 'shop' }).count()).to.equal(1);
    await shot('01-projects');
  });

  it('creates a project, and its connection string copied from the page runs a query through the gateway', async () => {
    await page.getByLabel('Name', { exact: true }).fill('web');
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.getByRole('heading', { name: 'Project web created' }).waitFor({ timeout: 180_000 });
    created.password = await page.getByLabel('Password', { exact: true }).inputValue();
    expect(created.password).to.have.length.greaterThan(10);
    await shot('02-project-created');
    const projects = (await platform.api.listProjects({})).projects;
    created.projectId = projects.find((project) => project.name === 'web')!.projectId;
    created.endpointId = (await platform.api.listEndpoints({ projectId: created.projectId, branchId: '' })).endpoints[0]!.endpointId;
    await page.goto(`${consoleUrl}/projects/${created.projectId}`);
    await shot('03-project');
    created.uri = await copiedConnectionString(created.endpointId);
    expect(created.uri).to.match(/^postgresql:\/\/owner@/);
    await shot('04-endpoint');
    const answer = await psql(created.uri, created.password, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('first'); SELECT count(*) FROM notes");
    expect(answer.split('\n').at(-1)).to.equal('1');
  });

  it('shows the endpoint STOPPED after Stop, then RUNNING when a client connects, without a reload', async () => {
    await page.goto(`${consoleUrl}/endpoints/${created.endpointId}`);
    await page.getByRole('button', { name: 'Stop' }).click();
    const state = page.locator(`[data-endpoint="${created.endpointId}"][data-field="state"]`);
    await page.waitForFunction((id) => document.querySelector(`[data-endpoint="${id}"][data-field="state"]`)?.textContent === 'STOPPED', created.endpointId, { timeout: 90_000 });
    // A marker a reload would lose.
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
    await psql(created.uri, created.password, 'SELECT 1');
    await page.waitForFunction((id) => document.querySelector(`[data-endpoint="${id}"][data-field="state"]`)?.textContent === 'RUNNING', created.endpointId, { timeout: 90_000 });
    expect(await page.evaluate(() => (window as unknown as { marker?: number }).marker)).to.equal(42);
    expect(await state.textContent()).to.equal('RUNNING');
  });

  it('creates a branch at a time before a write, and its connection string shows the data as it was', async () => {
    await psql(created.uri, created.password, "INSERT INTO notes VALUES ('before')");
    const branchPoint = new Date();
    await psql(created.uri, created.password, "INSERT INTO notes VALUES ('after')");
    await page.goto(`${consoleUrl}/projects/${created.projectId}`);
    await page.getByLabel('Name', { exact: true }).fill('restore');
    await page.getByRole('radio', { name: /At a time/ }).check();
    await page.getByLabel('Time (UTC)').fill(branchPoint.toISOString().slice(0, 23));
    await page.getByRole('button', { name: 'Create branch' }).click();
    await page.getByRole('heading', { name: /^Branch restore/ }).waitFor({ timeout: 120_000 });
    await shot('05-branch');
    const endpointLink = page.locator('a.mono[href^="/endpoints/"]').first();
    const branchEndpoint = (await endpointLink.textContent())!;
    const uri = await copiedConnectionString(branchEndpoint);
    // Started from its page (a cold start on a busy machine can take longer than the gateway's wake timeout).
    await page.getByRole('button', { name: 'Start' }).click();
    await page.waitForFunction((id) => document.querySelector(`[data-endpoint="${id}"][data-field="state"]`)?.textContent === 'RUNNING', branchEndpoint, { timeout: 180_000 });
    const rows = await psql(uri, created.password, 'SELECT string_agg(body, \',\' ORDER BY body) FROM notes');
    expect(rows).to.equal('before,first');
    await page.goto(`${consoleUrl}/projects/${created.projectId}`);
    expect(await page.locator('ul[role="tree"] ul[role="group"] a', { hasText: 'restore' }).count()).to.equal(1);
    await shot('06-branch-tree');
  });

  it('creates an API key, shows its secret once, and revokes it', async () => {
    await page.goto(`${consoleUrl}/keys`);
    await page.getByLabel('Name', { exact: true }).fill('deploy');
    await page.getByRole('button', { name: 'Create key' }).click();
    const secret = await page.locator('#secret').inputValue();
    expect((await platform.controlPlane.client(secret).getTenant({})).tenant?.name).to.equal('acme');
    await shot('07-key-created');
    await page.goto(`${consoleUrl}/keys`);
    const row = page.locator('tr', { hasText: 'deploy' });
    await row.getByRole('button', { name: 'Revoke' }).click();
    await page.locator('tr', { hasText: 'deploy' }).getByText(/^revoked/).waitFor();
    await shot('08-keys');
    const refused = await platform.controlPlane.client(secret).getTenant({}).then(() => 'accepted', (error: Error) => error.message);
    expect(refused).to.match(/UNAUTHENTICATED/);
  });

  it('gives a read-scoped key no controls, and the server refuses its changes', async () => {
    const readContext = await browser.newContext();
    const readPage = await readContext.newPage();
    try {
      await signIn(readPage, readKey);
      expect(await readPage.getByText('read-only').count()).to.equal(1);
      await readPage.goto(`${consoleUrl}/endpoints/${created.endpointId}`);
      expect(await readPage.getByRole('button', { name: 'Stop' }).count()).to.equal(0);
      await shot('09-read-only-endpoint', readPage);
      const stateBefore = (await platform.api.getEndpoint({ endpointId: created.endpointId })).endpoint!.state;
      // A hand-made POST with the session's own CSRF token: the console itself refuses it.
      const status = await readPage.evaluate(async (id) => {
        const csrf = document.querySelector('input[name="csrf"]').value;
        const response = await fetch(`/endpoints/${id}/stop`, { method: 'POST', body: new URLSearchParams({ csrf }) });
        return response.status;
      }, created.endpointId);
      expect(status).to.equal(403);
      expect((await platform.api.getEndpoint({ endpointId: created.endpointId })).endpoint!.state).to.equal(stateBefore);
    } finally {
      await readContext.close();
    }
  });

  it("draws an endpoint's charts from Prometheus, asking only for that endpoint's series", async () => {
    await page.goto(`${consoleUrl}/endpoints/${created.endpointId}/monitoring`);
    await page.waitForFunction(() => document.querySelectorAll('.chart .uplot').length >= 8, undefined, { timeout: 30_000 });
    await page.getByRole('radio', { name: '24h' }).check();
    await page.waitForFunction(() => document.querySelectorAll('.chart .uplot').length >= 8, undefined, { timeout: 30_000 });
    await shot('12-monitoring');
    expect(prometheusQueries.length).to.be.greaterThan(8);
    const branchId = (await platform.api.getEndpoint({ endpointId: created.endpointId })).endpoint!.branchId;
    for (const query of prometheusQueries) expect(query).to.satisfy((text: string) => text.includes(`endpoint="${created.endpointId}"`) || text.includes(`timeline="${branchId}"`), query);
  });

  it("answers another tenant's ids with not found", async () => {
    const strangerContext = await browser.newContext();
    const strangerPage = await strangerContext.newPage();
    try {
      await signIn(strangerPage, otherTenantKey);
      const asked = prometheusQueries.length;
      for (const url of [`/projects/${created.projectId}`, `/endpoints/${created.endpointId}`, `/endpoints/${created.endpointId}/state.json`, `/endpoints/${created.endpointId}/metrics.json?range=1h`]) {
        const response = await strangerPage.goto(`${consoleUrl}${url}`);
        expect(response?.status(), url).to.equal(404);
      }
      expect(prometheusQueries.length, 'Prometheus asked for another tenant').to.equal(asked);
      await shot('10-not-found', strangerPage);
    } finally {
      await strangerContext.close();
    }
  });

  it('refuses a forged cross-site POST', async () => {
    const evilPort = await freePort();
    const evil = http.createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'text/html' });
      response.end(`<form id="f" method="post" action="${consoleUrl}/projects"><input name="name" value="forged"></form><script>document.getElementById('f').submit()</script>`);
    });
    await new Promise<void>((resolve) => evil.listen(evilPort, '127.0.0.1', resolve));
    try {
      // Another origin (localhost, not 127.0.0.1) in the signed-in browser.
      const submitted = page.waitForResponse((response) => response.url() === `${consoleUrl}/projects`);
      await page.goto(`http://localhost:${evilPort}/`);
      expect((await submitted).status()).to.equal(403);
    } finally {
      evil.close();
    }
    const names = (await platform.api.listProjects({})).projects.map((project) => project.name);
    expect(names).to.not.include('forged');
  });

  it('keeps the session across a console restart, and signs out', async () => {
    await consoleProcess.stop();
    await startConsole();
    await page.goto(`${consoleUrl}/`);
    await page.getByRole('heading', { name: 'Projects' }).waitFor();
    expect(await page.getByRole('link', { name: 'web' }).count()).to.equal(1);
    // At a phone's width nothing runs off the side.
    await page.setViewportSize({ width: 390, height: 800 });
    await page.goto(`${consoleUrl}/endpoints/${created.endpointId}`);
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).to.be.at.most(390);
    await shot('11-endpoint-phone');
    await page.setViewportSize({ width: 1200, height: 900 });
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.goto(`${consoleUrl}/`);
    expect(new URL(page.url()).pathname).to.equal('/signin');
  });
});

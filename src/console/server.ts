/**
 * The console's HTTP server: sign-in and sessions, the pages, the live-state JSON the page script polls, the
 * monitoring queries, and the static assets (all served from here: no CDN). Every change is a POST that must carry the
 * session's CSRF token and come from this origin; a read-only session may change nothing.
 */
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { ApiKeyScope, PoolerMode, type EndpointSettings } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { parseLsn } from '../lib/lsn.js';
import type { Logger } from '../lib/log.js';
import { newTraceId } from '../lib/log.js';
import { counter } from '../lib/metrics.js';
import { PlatformApi, PlatformApiError, type BranchPoint, type PlatformSession } from './platform-api.js';
import { SESSION_COOKIE, SessionSealer, type Session } from './session.js';
import * as views from './views.js';
import type { PageContext } from './views.js';
import { MonitoringSource, monitoringPage, RANGES } from './monitoring.js';

const requests = counter('spg99_console_requests_total', 'HTTP requests the console answered, by route and status', ['route', 'status']);

export interface ConsoleOptions {
  api: PlatformApi;
  sealer: SessionSealer;
  log: Logger;
  /** Mark the cookie Secure (the console is served over HTTPS, e.g. behind a TLS proxy). */
  secureCookies: boolean;
  monitoring: MonitoringSource | null;
  /** How often the page script polls endpoint states, in ms. */
  pollIntervalMs?: number;
}

interface Reply {
  status: number;
  body: string | Buffer;
  type?: string;
  headers?: Record<string, string | string[]>;
}

interface Request {
  method: string;
  url: URL;
  form: URLSearchParams;
  cookie: string | undefined;
  session: Session | null;
  /** The API with the session's key (throws for routes that need one without a session). */
  platform: PlatformSession;
  context: PageContext;
  /** An error to render (set when a failed change falls back to a page). */
  error?: string;
}

type Handler = (request: Request, params: string[]) => Promise<Reply>;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const page = (body: string, status = 200): Reply => ({ status, body, type: 'text/html; charset=utf-8' });
const redirect = (location: string, headers: Record<string, string | string[]> = {}): Reply => ({ status: 303, body: '', headers: { location, ...headers } });
const json = (value: unknown, status = 200): Reply => ({ status, body: JSON.stringify(value), type: 'application/json' });

/** HTTP status for an API error code: the caller's mistakes are 4xx, as the API classed them. */
function httpStatus(code: string): number {
  switch (code) {
    case 'NOT_FOUND': return 404;
    case 'PERMISSION_DENIED': return 403;
    case 'UNAUTHENTICATED': return 401;
    case 'INVALID_ARGUMENT': case 'OUT_OF_RANGE': return 400;
    case 'FAILED_PRECONDITION': case 'ALREADY_EXISTS': case 'ABORTED': return 409;
    case 'UNAVAILABLE': return 503;
    case 'DEADLINE_EXCEEDED': return 504;
    default: return 500;
  }
}

function parseCookies(header: string | undefined): Record<string, string> {
  const cookies: Record<string, string> = {};
  for (const part of (header ?? '').split(';')) {
    const index = part.indexOf('=');
    if (index > 0) cookies[part.slice(0, index).trim()] = part.slice(index + 1).trim();
  }
  return cookies;
}

/** The front end's files: the compiled page script and styles, and uPlot from its package. */
function assetTable(): Map<string, { file: string; type: string }> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/src/console/server.js → dist/console-web/
  const web = path.resolve(here, '..', '..', 'console-web');
  const require = createRequire(import.meta.url);
  const uplot = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
  return new Map([
    ['/assets/console.js', { file: path.join(web, 'console.js'), type: 'text/javascript; charset=utf-8' }],
    ['/assets/console.css', { file: path.join(web, 'console.css'), type: 'text/css; charset=utf-8' }],
    ['/assets/uplot.js', { file: path.join(uplot, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' }],
    ['/assets/uplot.css', { file: path.join(uplot, 'uPlot.min.css'), type: 'text/css; charset=utf-8' }],
  ]);
}

/** Reads whole numbers from a form; empty: undefined; anything else: a 400 naming the field. */
function formNumber(form: URLSearchParams, field: string, label: string): number | undefined {
  const text = (form.get(field) ?? '').trim();
  if (text === '') return undefined;
  if (!/^\d+$/.test(text)) throw new HttpError(400, `${label} must be a whole number, not "${text}"`);
  return Number(text);
}

export class ConsoleServer {
  private readonly server: http.Server;
  private readonly routes: { method: string; pattern: RegExp; name: string; handler: Handler; public?: boolean }[] = [];
  private readonly assets = assetTable();

  constructor(private readonly options: ConsoleOptions) {
    this.server = http.createServer((incoming, outgoing) => {
      this.handle(incoming, outgoing).catch((error: Error) => {
        options.log.error({ err: error }, 'console request failed');
        if (!outgoing.headersSent) outgoing.writeHead(500, { 'content-type': 'text/plain' });
        outgoing.end('internal error');
      });
    });
    this.defineRoutes();
  }

  async listen(host: string, port: number): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
    return (this.server.address() as { port: number }).port;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private route(method: string, pattern: string, handler: Handler, isPublic = false): void {
    // `:id` matches one path segment of id characters.
    const regex = new RegExp(`^${pattern.replace(/:\w+/g, '([a-z]{2}-[a-z0-9-]+)')}$`);
    this.routes.push({ method, pattern: regex, name: pattern, handler, public: isPublic });
  }

  private async handle(incoming: http.IncomingMessage, outgoing: http.ServerResponse): Promise<void> {
    const url = new URL(incoming.url ?? '/', 'http://console.invalid');
    const method = incoming.method ?? 'GET';
    const baseHeaders: Record<string, string> = {
      'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'same-origin',
      'x-frame-options': 'DENY',
    };
    const send = (reply: Reply, route: string) => {
      requests.inc({ route, status: String(reply.status) });
      outgoing.writeHead(reply.status, {
        ...baseHeaders,
        'cache-control': route === 'asset' ? 'public, max-age=300' : 'no-store',
        ...(reply.type ? { 'content-type': reply.type } : {}),
        ...(reply.headers ?? {}),
      });
      outgoing.end(reply.body);
    };

    const asset = method === 'GET' ? this.assets.get(url.pathname) : undefined;
    if (asset) {
      try {
        return send({ status: 200, body: await fs.promises.readFile(asset.file), type: asset.type }, 'asset');
      } catch {
        return send({ status: 404, body: `asset ${url.pathname} is missing: run make build`, type: 'text/plain' }, 'asset');
      }
    }
    if (url.pathname === '/healthz') return send({ status: 200, body: 'ok', type: 'text/plain' }, 'healthz');

    const cookie = parseCookies(incoming.headers.cookie)[SESSION_COOKIE];
    const session = this.options.sealer.open(cookie);
    const context: PageContext = {
      user: session ? { tenantName: session.tenantName, tenantId: session.tenantId, readOnly: session.readOnly } : null,
      csrf: session && cookie ? this.options.sealer.csrfToken(cookie) : '',
    };
    const traceId = newTraceId();
    const request: Request = {
      method,
      url,
      form: new URLSearchParams(),
      cookie,
      session,
      context,
      get platform(): PlatformSession {
        throw new HttpError(401, 'sign in first');
      },
    };
    if (session) Object.defineProperty(request, 'platform', { value: this.options.api.as(session.apiKey, traceId) });

    const match = this.routes.map((route) => ({ route, found: route.method === method && route.pattern.exec(url.pathname) })).find((candidate) => candidate.found);
    if (!match || !match.found) {
      const known = this.routes.some((route) => route.pattern.test(url.pathname));
      return send(page(views.messagePage(context, known ? 'Method not allowed' : 'Not found', known ? `${method} is not allowed here.` : `There is no page at ${url.pathname}.`, { href: '/', label: 'Projects' }), known ? 405 : 404), 'unknown');
    }
    const { route, found } = match;

    if (method === 'POST') {
      // Changes only from this console's own pages: a browser names the site a request comes from.
      const site = incoming.headers['sec-fetch-site'];
      const origin = incoming.headers.origin;
      const host = incoming.headers.host;
      if ((site !== undefined && site !== 'same-origin' && site !== 'none') || (origin !== undefined && host !== undefined && origin !== `http://${host}` && origin !== `https://${host}`)) {
        this.options.log.warn({ route: route.name, origin, site }, 'refused a cross-site POST');
        return send({ status: 403, body: 'refused: this change did not come from the console\'s own pages (cross-site request)', type: 'text/plain' }, route.name);
      }
      request.form = new URLSearchParams(await readBody(incoming));
      if (!route.public) {
        if (!session || !cookie) return send(redirect('/signin'), route.name);
        if (!this.options.sealer.checkCsrf(cookie, request.form.get('csrf') ?? undefined)) {
          return send({ status: 403, body: 'refused: the form\'s CSRF token is missing or wrong; reload the page and try again', type: 'text/plain' }, route.name);
        }
        if (session.readOnly && route.name !== '/signout') {
          return send(page(views.messagePage(context, 'Read-only', 'This API key can only read: sign in with an admin key to change anything.', { href: '/', label: 'Projects' }), 403), route.name);
        }
      }
    } else if (!route.public && !session) {
      if (url.pathname.endsWith('.json')) return send(json({ error: 'sign in first' }, 401), route.name);
      return send(redirect('/signin', cookie ? { 'set-cookie': this.clearCookie() } : {}), route.name);
    }

    try {
      send(await route.handler(request, found.slice(1)), route.name);
    } catch (error) {
      send(await this.failure(request, error, route.name), route.name);
    }
  }

  /** A failed request: the API's words on the page the change came from (`back`), or on an error page. */
  private async failure(request: Request, error: unknown, routeName: string): Promise<Reply> {
    let status: number;
    let message: string;
    if (error instanceof PlatformApiError) {
      status = httpStatus(error.code);
      message = error.message;
      if (error.code === 'UNAUTHENTICATED') {
        return { ...page(views.signInPage({ user: null, csrf: '', error: `The control plane refused your API key (${message}): it was revoked or is unknown. Sign in again.` }), 401), headers: { 'set-cookie': this.clearCookie() } };
      }
    } else if (error instanceof HttpError) {
      status = error.status;
      message = error.message;
    } else {
      this.options.log.error({ err: error, route: routeName }, 'console request failed');
      status = 500;
      message = 'the console failed unexpectedly; see its log';
    }
    if (request.url.pathname.endsWith('.json')) return json({ error: message }, status);
    const back = request.method === 'POST' ? localPath(request.form.get('back')) ?? backOf(request.url.pathname) : null;
    if (back && back !== request.url.pathname) {
      const target = this.routes.find((candidate) => candidate.method === 'GET' && candidate.pattern.test(back));
      if (target) {
        try {
          const reply = await target.handler({ ...request, method: 'GET', url: new URL(back, request.url), error: message, context: { ...request.context, error: message } }, target.pattern.exec(back)!.slice(1));
          return { ...reply, status };
        } catch {
          // The page itself failed too (e.g. the thing is gone): fall through to the plain error page.
        }
      }
    }
    const title = status === 404 ? 'Not found' : status === 403 ? 'Not allowed' : 'Error';
    return page(views.messagePage({ ...request.context }, title, message, { href: '/', label: 'Projects' }), status);
  }

  private sessionCookie(value: string): string {
    return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(this.options.sealer.maxAgeMs / 1000)}${this.options.secureCookies ? '; Secure' : ''}`;
  }

  private clearCookie(): string {
    return `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${this.options.secureCookies ? '; Secure' : ''}`;
  }

  private defineRoutes(): void {
    const { api, sealer } = this.options;

    this.route('GET', '/signin', async (request) => (request.session ? redirect('/') : page(views.signInPage(request.context))), true);
    this.route('POST', '/signin', async (request) => {
      const apiKey = (request.form.get('apiKey') ?? '').trim();
      if (!apiKey) return page(views.signInPage({ user: null, csrf: '', error: 'Enter an API key.' }), 400);
      const platform = api.as(apiKey);
      try {
        const tenant = await platform.getTenant();
        // The key's scope, from the tenant's key list (READ keys may list too): its secret starts with the prefix.
        const keys = await platform.listApiKeys();
        const own = keys.find((key) => !key.revokedAt && key.secretPrefix !== '' && apiKey.startsWith(key.secretPrefix));
        const session: Session = {
          apiKey,
          readOnly: own?.scope !== ApiKeyScope.API_KEY_SCOPE_ADMIN,
          tenantId: tenant.tenantId,
          tenantName: tenant.name,
          issuedAt: Date.now(),
        };
        return redirect('/', { 'set-cookie': this.sessionCookie(sealer.seal(session)) });
      } catch (error) {
        if (error instanceof PlatformApiError) {
          const status = httpStatus(error.code);
          return page(views.signInPage({ user: null, csrf: '', error: error.code === 'UNAUTHENTICATED' ? `The control plane refused this key: ${error.message}` : error.message }), status);
        }
        throw error;
      }
    }, true);
    this.route('POST', '/signout', async () => redirect('/signin', { 'set-cookie': this.clearCookie() }));

    this.route('GET', '/', async (request) => page(views.projectsPage(request.context, await request.platform.listProjects())));
    this.route('POST', '/projects', async (request) => {
      const name = (request.form.get('name') ?? '').trim();
      const created = await request.platform.createProject(name);
      return page(views.projectCreatedPage(request.context, created));
    });
    this.route('GET', '/projects/:id', async (request, [projectId]) => {
      const project = await request.platform.getProject(projectId!);
      const [branches, endpoints] = await Promise.all([request.platform.listBranches(projectId!), request.platform.listEndpoints(projectId!)]);
      return page(views.projectPage(request.context, project, branches, endpoints));
    });
    this.route('POST', '/projects/:id/delete', async (request, [projectId]) => {
      const project = await request.platform.getProject(projectId!);
      if ((request.form.get('confirm') ?? '').trim() !== project.name) {
        throw new HttpError(400, `type the project's name "${project.name}" to confirm its deletion`);
      }
      await request.platform.deleteProject(projectId!);
      return page(views.messagePage(request.context, 'Project deleted', `Project ${project.name} (${projectId}) and all its data are deleted.`, { href: '/', label: 'Projects' }));
    });
    this.route('POST', '/projects/:id/branches', async (request, [projectId]) => {
      const form = request.form;
      const point = branchPoint(form);
      const created = await request.platform.createBranch(projectId!, (form.get('name') ?? '').trim(), form.get('parent') ?? '', point, form.get('endpoint') === '1');
      return redirect(`/branches/${created.branch.branchId}`);
    });

    this.route('GET', '/branches/:id', async (request, [branchId]) => {
      const branch = await request.platform.getBranch(branchId!);
      const [project, roles, endpoints, branches] = await Promise.all([
        request.platform.getProject(branch.projectId),
        request.platform.listRoles(branchId!),
        request.platform.listEndpoints(branch.projectId, branchId!),
        request.platform.listBranches(branch.projectId),
      ]);
      return page(views.branchPage(request.context, project, branch, roles, endpoints, branches));
    });
    this.route('POST', '/branches/:id/delete', async (request, [branchId]) => {
      const branch = await request.platform.getBranch(branchId!);
      await request.platform.deleteBranch(branchId!);
      return redirect(`/projects/${branch.projectId}`);
    });
    this.route('POST', '/branches/:id/endpoints', async (request, [branchId]) => {
      const endpoint = await request.platform.createEndpoint(branchId!);
      return redirect(`/endpoints/${endpoint.endpointId}`);
    });
    this.route('POST', '/branches/:id/roles', async (request, [branchId]) => {
      const created = await request.platform.createRole(branchId!, (request.form.get('name') ?? '').trim());
      return page(views.secretPage(request.context, `Role ${created.role.name} created`, `The password of ${created.role.name}`, created.password, { href: `/branches/${branchId}`, label: 'Back to the branch' }));
    });
    this.route('POST', '/roles/:id/reset', async (request, [roleId]) => {
      const reset = await request.platform.resetRolePassword(roleId!);
      return page(views.secretPage(request.context, `New password for ${reset.role.name}`, `The password of ${reset.role.name}`, reset.password, { href: `/branches/${reset.role.branchId}`, label: 'Back to the branch' }));
    });
    this.route('POST', '/roles/:id/delete', async (request, [roleId]) => {
      await request.platform.deleteRole(roleId!);
      return redirect(localPath(`/branches/${request.form.get('branch') ?? ''}`) ?? '/');
    });

    this.route('GET', '/endpoints/:id', async (request, [endpointId]) => {
      const endpoint = await request.platform.getEndpoint(endpointId!);
      const [project, branch, roles] = await Promise.all([
        request.platform.getProject(endpoint.projectId),
        request.platform.getBranch(endpoint.branchId),
        request.platform.listRoles(endpoint.branchId),
      ]);
      const wanted = request.url.searchParams.get('role');
      const roleName = roles.find((role) => role.name === wanted)?.name ?? roles[0]?.name ?? '';
      const pooled = request.url.searchParams.get('pooled') === '1';
      let uri: string | null = null;
      let problem: string | undefined;
      if (roleName) {
        try {
          uri = await request.platform.getConnectionString(endpointId!, roleName, pooled);
        } catch (error) {
          if (!(error instanceof PlatformApiError)) throw error;
          problem = error.message;
        }
      }
      return page(views.endpointPage(request.context, project, branch, endpoint, { roles, roleName, pooled, uri, problem }, this.options.monitoring !== null));
    });
    this.route('GET', '/endpoints/:id/state.json', async (request, [endpointId]) => {
      const endpoint = await request.platform.getEndpoint(endpointId!);
      return json({
        endpointId: endpoint.endpointId,
        state: views.stateName(endpoint.state),
        reason: endpoint.stateReason,
        since: endpoint.stateChangedAt?.toISOString() ?? null,
        compute: endpoint.currentComputeId,
        term: String(endpoint.writerTerm),
      });
    });
    this.route('POST', '/endpoints/:id/start', async (request, [endpointId]) => {
      await request.platform.startEndpoint(endpointId!);
      return redirect(localPath(request.form.get('back')) ?? `/endpoints/${endpointId}`);
    });
    this.route('POST', '/endpoints/:id/stop', async (request, [endpointId]) => {
      await request.platform.stopEndpoint(endpointId!);
      return redirect(localPath(request.form.get('back')) ?? `/endpoints/${endpointId}`);
    });
    this.route('POST', '/endpoints/:id/settings', async (request, [endpointId]) => {
      const { settings, paths } = settingsFrom(request.form);
      await request.platform.updateEndpoint(endpointId!, settings, paths);
      return redirect(`/endpoints/${endpointId}`);
    });
    this.route('GET', '/endpoints/:id/monitoring', async (request, [endpointId]) => {
      const endpoint = await request.platform.getEndpoint(endpointId!);
      return page(monitoringPage(request.context, endpoint, this.options.monitoring));
    });
    this.route('GET', '/endpoints/:id/metrics.json', async (request, [endpointId]) => {
      // The endpoint must be the user's: the API answers NOT_FOUND for another tenant's id before Prometheus is asked.
      const endpoint = await request.platform.getEndpoint(endpointId!);
      if (!this.options.monitoring) throw new HttpError(404, 'monitoring is off: start the console with --prometheus-url');
      const range = request.url.searchParams.get('range') ?? '1h';
      if (!(range in RANGES)) throw new HttpError(400, `range must be one of ${Object.keys(RANGES).join(', ')}, not "${range}"`);
      return json(await this.options.monitoring.query(endpoint, range as keyof typeof RANGES));
    });

    this.route('GET', '/keys', async (request) => page(views.keysPage(request.context, await request.platform.listApiKeys())));
    this.route('POST', '/keys', async (request) => {
      const scope = request.form.get('scope') === 'admin' ? ApiKeyScope.API_KEY_SCOPE_ADMIN : ApiKeyScope.API_KEY_SCOPE_READ;
      const created = await request.platform.createApiKey((request.form.get('name') ?? '').trim(), scope);
      return page(views.secretPage(request.context, `API key ${created.apiKey.name} created`, `The secret of key ${created.apiKey.name}`, created.secret, { href: '/keys', label: 'Back to the keys' }));
    });
    this.route('POST', '/keys/:id/revoke', async (request, [keyId]) => {
      await request.platform.revokeApiKey(keyId!);
      return redirect('/keys');
    });
  }
}

/** A path of this console (never another site's URL: `back` comes from a form). */
function localPath(value: string | null): string | null {
  return value !== null && /^\/[a-z0-9/-]*$/.test(value) && !value.startsWith('//') ? value : null;
}

/** The page a failed change is shown on. */
function backOf(pathname: string): string | null {
  const patterns: [RegExp, (match: RegExpExecArray) => string][] = [
    [/^\/projects$/, () => '/'],
    [/^\/projects\/([^/]+)\/(delete|branches)$/, (match) => `/projects/${match[1]}`],
    [/^\/branches\/([^/]+)\/(delete|endpoints|roles)$/, (match) => `/branches/${match[1]}`],
    [/^\/endpoints\/([^/]+)\/(start|stop|settings)$/, (match) => `/endpoints/${match[1]}`],
    [/^\/keys(\/[^/]+\/revoke)?$/, () => '/keys'],
  ];
  for (const [pattern, target] of patterns) {
    const match = pattern.exec(pathname);
    if (match) return target(match);
  }
  return null;
}

function branchPoint(form: URLSearchParams): BranchPoint {
  const kind = form.get('point') ?? 'now';
  if (kind === 'lsn') {
    const text = (form.get('lsn') ?? '').trim();
    try {
      return { kind: 'lsn', lsn: parseLsn(text) };
    } catch {
      throw new HttpError(400, `the LSN must look like 0/1A2B3C8 (two hex numbers), not "${text}"`);
    }
  }
  if (kind === 'time') {
    const text = (form.get('time') ?? '').trim();
    // datetime-local has no zone: the form says UTC.
    const time = new Date(/[zZ]|[+-]\d\d:\d\d$/.test(text) ? text : `${text}Z`);
    if (!text || Number.isNaN(time.getTime())) throw new HttpError(400, `the time must be a date and time in UTC (2026-12-02T17:30:00), not "${text}"`);
    return { kind: 'time', time };
  }
  return { kind: 'now' };
}

function settingsFrom(form: URLSearchParams): { settings: EndpointSettings; paths: string[] } {
  const settings: EndpointSettings = { poolerMode: PoolerMode.POOLER_MODE_UNSPECIFIED };
  const paths: string[] = [];
  const suspend = formNumber(form, 'suspendSeconds', 'Suspend after idle');
  if (suspend !== undefined) {
    settings.suspendTimeout = { seconds: BigInt(suspend), nanos: 0 };
    paths.push('suspend_timeout');
  }
  const pooler = form.get('poolerMode');
  if (pooler === 'session' || pooler === 'transaction') {
    settings.poolerMode = pooler === 'session' ? PoolerMode.POOLER_MODE_SESSION : PoolerMode.POOLER_MODE_TRANSACTION;
    paths.push('pooler_mode');
  }
  const cpuMillis = formNumber(form, 'cpuMillis', 'CPU');
  const memoryMib = formNumber(form, 'memoryMib', 'Memory');
  if (cpuMillis !== undefined || memoryMib !== undefined) {
    if (cpuMillis === undefined || memoryMib === undefined) throw new HttpError(400, 'give both CPU and memory for the profile');
    settings.profile = { cpuMillis, memoryMib };
    paths.push('profile');
  }
  if (form.get('autoscale') === '1') {
    const bounds = ['minCpu', 'minMemory', 'maxCpu', 'maxMemory'].map((field) => formNumber(form, field, field));
    if (bounds.some((value) => value === undefined)) throw new HttpError(400, 'autoscale needs min and max CPU and memory');
    settings.autoscale = { minProfile: { cpuMillis: bounds[0]!, memoryMib: bounds[1]! }, maxProfile: { cpuMillis: bounds[2]!, memoryMib: bounds[3]! } };
  }
  // Unchecked: autoscale off (the mask names it with no value).
  paths.push('autoscale');
  return { settings, paths };
}

async function readBody(incoming: http.IncomingMessage, limit = 64 * 1024): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of incoming) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, 'the form is too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

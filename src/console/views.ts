/**
 * The console's pages, rendered on the server as plain HTML forms (each works without scripts); the page script
 * (web/console.ts) adds live endpoint states, copy buttons and charts. A read-only session gets the same pages
 * without any control that changes something.
 */
import { formatLsn } from '../lib/lsn.js';
import { ApiKeyScope, EndpointState, PoolerMode } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { ApiKey, Branch, Endpoint, Project, Role } from './platform-api.js';
import { html, raw, type Html } from './html.js';

/** What every page needs about the request. */
export interface PageContext {
  /** Null on the sign-in page. */
  user: { tenantName: string; tenantId: string; readOnly: boolean } | null;
  csrf: string;
  /** An error to show at the top, as the API worded it. */
  error?: string;
  /** A note of what just happened. */
  notice?: string;
}

export function stateName(state: EndpointState): string {
  return (EndpointState[state] ?? 'UNKNOWN').replace('ENDPOINT_STATE_', '');
}

export function poolerName(mode: PoolerMode): string {
  return mode === PoolerMode.POOLER_MODE_TRANSACTION ? 'transaction' : mode === PoolerMode.POOLER_MODE_SESSION ? 'session' : 'default';
}

function when(date: Date | undefined): Html {
  if (!date) return html`<span class="muted">never</span>`;
  const iso = date.toISOString();
  return html`<time datetime="${iso}">${iso.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}</time>`;
}

function bytes(count: bigint | number): string {
  let value = Number(count);
  for (const unit of ['B', 'KiB', 'MiB', 'GiB', 'TiB']) {
    if (value < 1024 || unit === 'TiB') return `${unit === 'B' ? value : value.toFixed(1)} ${unit}`;
    value /= 1024;
  }
  return `${value}`;
}

/** A form that changes something: POST with the session's CSRF token. */
function form(context: PageContext, action: string, body: Html, attributes: Html = raw('')): Html {
  return html`<form method="post" action="${action}" ${attributes}><input type="hidden" name="csrf" value="${context.csrf}">${body}</form>`;
}

/** A value with a button that copies it (the script wires the button; without it, the text is selectable). */
function copyable(label: string, value: string, id: string): Html {
  return html`<div class="copyable"><label for="${id}">${label}</label>
<div class="copy-row"><input id="${id}" class="mono" readonly value="${value}" data-copy-source>
<button type="button" class="copy" data-copy="${id}" aria-label="Copy ${label}">Copy</button></div></div>`;
}

export function layout(context: PageContext, title: string, body: Html): string {
  const user = context.user;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · SPG99 console</title>
<link rel="stylesheet" href="/assets/console.css">
<script type="module" src="/assets/console.js"></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/">SPG99</a>
${
  user
    ? html`<nav aria-label="Main"><a href="/">Projects</a><a href="/keys">API keys</a></nav>
<div class="who"><span>${user.tenantName}</span>${user.readOnly ? html` <span class="badge" title="This API key can only read">read-only</span>` : ''}
${form(context, '/signout', html`<button type="submit" class="link">Sign out</button>`, raw('class="inline"'))}</div>`
    : ''
}
</header>
<main id="main" tabindex="-1">
${context.error ? html`<div class="error" role="alert"><strong>Error:</strong> ${context.error}</div>` : ''}
${context.notice ? html`<div class="notice" role="status">${context.notice}</div>` : ''}
${body}
</main>
</body>
</html>`.text;
}

export function signInPage(context: PageContext): string {
  return layout(
    context,
    'Sign in',
    html`<h1>Sign in</h1>
<p>Sign in with an API key of your tenant. <code>make up</code> prints one (<code>export SPG99_API_KEY=…</code>); an admin
creates more with <code>spg99 keys create</code>. The key stays on the console's server, sealed in an HttpOnly cookie.</p>
<form method="post" action="/signin" class="stack">
<label for="api-key">API key</label>
<input id="api-key" name="apiKey" type="password" autocomplete="off" required autofocus>
<button type="submit">Sign in</button>
</form>`,
  );
}

export function projectsPage(context: PageContext, projects: Project[]): string {
  const readOnly = context.user?.readOnly ?? true;
  return layout(
    context,
    'Projects',
    html`<h1>Projects</h1>
${
  projects.length === 0
    ? html`<p class="empty">No projects yet. ${readOnly ? 'An admin key can create one.' : 'Create one below: it comes with a branch, an endpoint that starts on the first connection, and a role.'}</p>`
    : html`<table><caption class="sr-only">Projects</caption><thead><tr><th scope="col">Name</th><th scope="col">Id</th><th scope="col">Region</th><th scope="col">Postgres</th><th scope="col">Created</th></tr></thead><tbody>
${projects.map((project) => html`<tr><td><a href="/projects/${project.projectId}">${project.name}</a></td><td class="mono">${project.projectId}</td><td>${project.region}</td><td>${project.pgMajorVersion}</td><td>${when(project.createdAt)}</td></tr>`)}
</tbody></table>`
}
${
  readOnly
    ? ''
    : html`<section aria-labelledby="new-project"><h2 id="new-project">New project</h2>
${form(context, '/projects', html`<label for="project-name">Name</label><input id="project-name" name="name" required maxlength="64"><button type="submit">Create project</button>`, raw('class="row"'))}
</section>`
}`,
  );
}

export function projectCreatedPage(context: PageContext, created: { project: Project; roleName: string; password: string; connectionUri: string }): string {
  return layout(
    context,
    created.project.name,
    html`<h1>Project ${created.project.name} created</h1>
<p class="warning" role="note">The password of role <strong>${created.roleName}</strong> is shown only now: copy it. You can reset it later on the branch's page.</p>
${copyable('Password', created.password, 'created-password')}
${copyable('Connection string', created.connectionUri, 'created-uri')}
${copyable('psql', `psql "${created.connectionUri}"`, 'created-psql')}
<p><a href="/projects/${created.project.projectId}">Go to the project</a></p>`,
  );
}

/** The branches as a tree: each under its parent, with the branch point. */
function branchTree(branches: Branch[], endpoints: Endpoint[]): Html {
  const children = new Map<string, Branch[]>();
  for (const branch of branches) {
    const parent = branches.some((other) => other.branchId === branch.parentBranchId) ? branch.parentBranchId : '';
    children.set(parent, [...(children.get(parent) ?? []), branch]);
  }
  const names = new Map(branches.map((branch) => [branch.branchId, branch.name]));
  const level = (parent: string, depth: number): Html => {
    const list = children.get(parent) ?? [];
    if (list.length === 0) return raw('');
    return html`<ul ${depth === 0 ? raw('role="tree" aria-label="Branches"') : raw('role="group"')} class="tree">${list.map((branch) => {
      const endpoint = endpoints.find((candidate) => candidate.branchId === branch.branchId);
      return html`<li role="treeitem" aria-expanded="true"><div class="branch"><a href="/branches/${branch.branchId}">${branch.name}</a>
${branch.isDefault ? html`<span class="badge">default</span>` : ''}
<span class="mono muted">${branch.branchId}</span>
${branch.parentBranchId ? html`<span class="point">from ${names.get(branch.parentBranchId) ?? branch.parentBranchId} at LSN <span class="mono">${formatLsn(branch.parentLsn)}</span></span>` : ''}
<span class="muted">${bytes(branch.logicalSizeBytes)}, created ${when(branch.createdAt)}</span>
${endpoint ? html`<a class="mono" href="/endpoints/${endpoint.endpointId}">${endpoint.endpointId}</a> ${stateBadge(endpoint)}` : html`<span class="muted">no endpoint</span>`}</div>
${level(branch.branchId, depth + 1)}</li>`;
    })}</ul>`;
  };
  return level('', 0);
}

/** An endpoint's state, kept current by the page script (data-endpoint). */
function stateBadge(endpoint: Endpoint): Html {
  const state = stateName(endpoint.state);
  return html`<span class="state state-${state.toLowerCase()}" data-endpoint="${endpoint.endpointId}" data-field="state" role="status" aria-live="polite">${state}</span>`;
}

function endpointsTable(context: PageContext, endpoints: Endpoint[], branches: Branch[], back: string): Html {
  if (endpoints.length === 0) return html`<p class="empty">No endpoints. Open a branch to create one.</p>`;
  const names = new Map(branches.map((branch) => [branch.branchId, branch.name]));
  return html`<table><caption class="sr-only">Endpoints</caption><thead><tr><th scope="col">Endpoint</th><th scope="col">Branch</th><th scope="col">State</th><th scope="col">Why</th>${context.user?.readOnly ? '' : html`<th scope="col">Actions</th>`}</tr></thead><tbody>
${endpoints.map(
  (endpoint) => html`<tr><td><a class="mono" href="/endpoints/${endpoint.endpointId}">${endpoint.endpointId}</a></td><td>${names.get(endpoint.branchId) ?? endpoint.branchId}</td>
<td>${stateBadge(endpoint)}</td><td data-endpoint="${endpoint.endpointId}" data-field="reason">${endpoint.stateReason}</td>
${context.user?.readOnly ? '' : html`<td>${startStop(context, endpoint, back)}</td>`}</tr>`,
)}</tbody></table>`;
}

/** Start and stop; `back` is the page to return to (the endpoint's own by default). */
function startStop(context: PageContext, endpoint: Endpoint, back?: string): Html {
  const backField = back ? html`<input type="hidden" name="back" value="${back}">` : '';
  return html`<div class="actions">${form(context, `/endpoints/${endpoint.endpointId}/start`, html`${backField}<button type="submit">Start</button>`, raw('class="inline"'))}
${form(context, `/endpoints/${endpoint.endpointId}/stop`, html`${backField}<button type="submit">Stop</button>`, raw('class="inline"'))}</div>`;
}

export function projectPage(context: PageContext, project: Project, branches: Branch[], endpoints: Endpoint[]): string {
  const readOnly = context.user?.readOnly ?? true;
  const nowUtc = new Date().toISOString().slice(0, 19);
  return layout(
    context,
    project.name,
    html`<p class="crumbs"><a href="/">Projects</a> /</p>
<h1>${project.name} <span class="mono muted">${project.projectId}</span></h1>
<p>Region ${project.region}, PostgreSQL ${project.pgMajorVersion}, created ${when(project.createdAt)}.</p>
<section aria-labelledby="endpoints"><h2 id="endpoints">Endpoints</h2>${endpointsTable(context, endpoints, branches, `/projects/${project.projectId}`)}</section>
<section aria-labelledby="branches"><h2 id="branches">Branches</h2>${branches.length ? branchTree(branches, endpoints) : html`<p class="empty">No branches.</p>`}</section>
${
  readOnly
    ? ''
    : html`<section aria-labelledby="new-branch"><h2 id="new-branch">New branch</h2>
<p>A branch shares its parent's history up to the branch point; nothing is copied. Branch at a time to see the data as it was then (a restore).</p>
${form(
  context,
  `/projects/${project.projectId}/branches`,
  html`<label for="branch-name">Name</label><input id="branch-name" name="name" required maxlength="64">
<label for="branch-parent">Parent</label><select id="branch-parent" name="parent">${branches.map((branch) => html`<option value="${branch.branchId}" ${branch.isDefault ? raw('selected') : ''}>${branch.name}</option>`)}</select>
<fieldset><legend>Branch point</legend>
<label><input type="radio" name="point" value="now" checked> Now (the parent's latest commit)</label>
<label><input type="radio" name="point" value="time"> At a time: the parent's last commit at or before</label>
<label for="branch-time" class="sub">Time (UTC)</label><input id="branch-time" name="time" type="datetime-local" step="0.001" value="${nowUtc}" aria-describedby="time-help">
<p id="time-help" class="muted">The branch will hold every transaction committed on the parent up to this moment, and none after.</p>
<label><input type="radio" name="point" value="lsn"> At an LSN</label>
<label for="branch-lsn" class="sub">LSN</label><input id="branch-lsn" name="lsn" class="mono" placeholder="0/1A2B3C8" pattern="[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}">
</fieldset>
<label><input type="checkbox" name="endpoint" value="1" checked> Create an endpoint on it</label>
<button type="submit">Create branch</button>`,
  raw('class="stack"'),
)}</section>
<section aria-labelledby="danger"><h2 id="danger">Delete project</h2>
<p>Deletes every endpoint, branch and role of the project, and its data. This cannot be undone.</p>
${form(
  context,
  `/projects/${project.projectId}/delete`,
  html`<label for="confirm-name">Type the project's name (${project.name}) to confirm</label><input id="confirm-name" name="confirm" required autocomplete="off"><button type="submit" class="danger">Delete project</button>`,
  raw('class="row"'),
)}</section>`
}`,
  );
}

export function branchPage(context: PageContext, project: Project, branch: Branch, roles: Role[], endpoints: Endpoint[], branches: Branch[]): string {
  const readOnly = context.user?.readOnly ?? true;
  return layout(
    context,
    branch.name,
    html`<p class="crumbs"><a href="/">Projects</a> / <a href="/projects/${project.projectId}">${project.name}</a> /</p>
<h1>Branch ${branch.name} <span class="mono muted">${branch.branchId}</span></h1>
<p>${branch.parentBranchId ? html`From ${branches.find((other) => other.branchId === branch.parentBranchId)?.name ?? branch.parentBranchId} at LSN <span class="mono">${formatLsn(branch.parentLsn)}</span>.` : 'The project\'s default branch.'} ${bytes(branch.logicalSizeBytes)}, created ${when(branch.createdAt)}.</p>
<section aria-labelledby="endpoint"><h2 id="endpoint">Endpoint</h2>
${endpoints.length ? endpointsTable(context, endpoints, branches, `/branches/${branch.branchId}`) : html`<p class="empty">This branch has no endpoint, so nobody can connect to it.${readOnly ? '' : ' Create one:'}</p>
${readOnly ? '' : form(context, `/branches/${branch.branchId}/endpoints`, html`<button type="submit">Create endpoint</button>`)}`}
</section>
<section aria-labelledby="roles"><h2 id="roles">Roles</h2>
${
  roles.length === 0
    ? html`<p class="empty">No roles: create one to connect.</p>`
    : html`<table><caption class="sr-only">Roles</caption><thead><tr><th scope="col">Role</th><th scope="col">Created</th>${readOnly ? '' : html`<th scope="col">Actions</th>`}</tr></thead><tbody>
${roles.map(
  (role) => html`<tr><td class="mono">${role.name}</td><td>${when(role.createdAt)}</td>${
    readOnly
      ? ''
      : html`<td><div class="actions">${form(context, `/roles/${role.roleId}/reset`, html`<input type="hidden" name="branch" value="${branch.branchId}"><button type="submit">Reset password</button>`, raw('class="inline"'))}
${form(context, `/roles/${role.roleId}/delete`, html`<input type="hidden" name="branch" value="${branch.branchId}"><button type="submit" class="danger" data-confirm="Delete role ${role.name}?">Delete</button>`, raw('class="inline"'))}</div></td>`
  }</tr>`,
)}</tbody></table>`
}
${readOnly ? '' : form(context, `/branches/${branch.branchId}/roles`, html`<label for="role-name">New role</label><input id="role-name" name="name" required pattern="[a-z_][a-z0-9_]*" title="lowercase letters, digits and _"><button type="submit">Create role</button>`, raw('class="row"'))}
</section>
${
  readOnly || branch.isDefault
    ? ''
    : html`<section aria-labelledby="delete-branch"><h2 id="delete-branch">Delete branch</h2>
${form(context, `/branches/${branch.branchId}/delete`, html`<button type="submit" class="danger" data-confirm="Delete branch ${branch.name} with its endpoint and roles?">Delete branch</button>`)}</section>`
}`,
  );
}

/** A secret the API answers once (a role password, an API key). */
export function secretPage(context: PageContext, title: string, what: string, secret: string, back: { href: string; label: string }, extra: Html = raw('')): string {
  return layout(
    context,
    title,
    html`<h1>${title}</h1>
<p class="warning" role="note">${what} is shown only now: copy it and keep it safe. It cannot be shown again.</p>
${copyable(what, secret, 'secret')}
${extra}
<p><a href="${back.href}">${back.label}</a></p>`,
  );
}

export interface ConnectionChoice {
  roles: Role[];
  roleName: string;
  pooled: boolean;
  /** The URI the API answered for the choice, or the reason there is none. */
  uri: string | null;
  problem?: string;
}

export function endpointPage(context: PageContext, project: Project, branch: Branch, endpoint: Endpoint, connection: ConnectionChoice, monitoring: boolean): string {
  const readOnly = context.user?.readOnly ?? true;
  const settings = endpoint.settings;
  const suspendSeconds = settings?.suspendTimeout ? Number(settings.suspendTimeout.seconds) : 0;
  const profile = settings?.profile;
  const autoscale = settings?.autoscale;
  const id = endpoint.endpointId;
  return layout(
    context,
    id,
    html`<p class="crumbs"><a href="/">Projects</a> / <a href="/projects/${project.projectId}">${project.name}</a> / <a href="/branches/${branch.branchId}">${branch.name}</a> /</p>
<h1>Endpoint <span class="mono">${id}</span></h1>
<section aria-labelledby="state"><h2 id="state">State</h2>
<dl class="facts"><dt>State</dt><dd>${stateBadge(endpoint)}</dd>
<dt>Why</dt><dd data-endpoint="${id}" data-field="reason">${endpoint.stateReason || '—'}</dd>
<dt>Since</dt><dd data-endpoint="${id}" data-field="since">${when(endpoint.stateChangedAt)}</dd>
<dt>Compute</dt><dd class="mono" data-endpoint="${id}" data-field="compute">${endpoint.currentComputeId || '—'}</dd>
<dt>Writer term</dt><dd class="mono" data-endpoint="${id}" data-field="term">${String(endpoint.writerTerm)}</dd>
<dt>Host</dt><dd class="mono">${endpoint.host}</dd></dl>
${readOnly ? '' : startStop(context, endpoint)}
<p><a href="/endpoints/${id}/monitoring">Monitoring</a>${monitoring ? '' : html` <span class="muted">(off: no Prometheus)</span>`}</p>
</section>
<section aria-labelledby="connect"><h2 id="connect">Connect</h2>
${
  connection.roles.length === 0
    ? html`<p class="empty">The branch has no role to connect as. ${readOnly ? '' : html`<a href="/branches/${branch.branchId}">Create one</a>.`}</p>`
    : html`<form method="get" action="/endpoints/${id}" class="row">
<label for="conn-role">Role</label><select id="conn-role" name="role">${connection.roles.map((role) => html`<option ${role.name === connection.roleName ? raw('selected') : ''}>${role.name}</option>`)}</select>
<label><input type="checkbox" name="pooled" value="1" ${connection.pooled ? raw('checked') : ''}> Pooled (${poolerName(settings?.poolerMode ?? PoolerMode.POOLER_MODE_UNSPECIFIED)} mode)</label>
<button type="submit">Show</button></form>
${
  connection.uri
    ? html`${copyable(`Connection string (${connection.pooled ? 'pooled' : 'direct'})`, connection.uri, 'connection-uri')}
${copyable('psql', `psql "${connection.uri}"`, 'connection-psql')}
<p class="muted">The string carries no password: the platform keeps none. Give it as PGPASSWORD or when asked; ${readOnly ? 'an admin can reset it' : html`<a href="/branches/${branch.branchId}">reset it</a>`} if it is lost.</p>`
    : html`<p class="error" role="alert">${connection.problem ?? 'No connection string.'}</p>`
}`
}
</section>
<section aria-labelledby="settings"><h2 id="settings">Settings</h2>
${form(
  context,
  `/endpoints/${id}/settings`,
  html`<fieldset ${readOnly ? raw('disabled') : ''}><legend class="sr-only">Endpoint settings</legend>
<label for="suspend">Suspend after idle (seconds, 0: never)</label><input id="suspend" name="suspendSeconds" type="number" min="0" value="${suspendSeconds}">
<label for="pooler">Pooler mode</label><select id="pooler" name="poolerMode">
<option value="session" ${settings?.poolerMode === PoolerMode.POOLER_MODE_SESSION ? raw('selected') : ''}>session</option>
<option value="transaction" ${settings?.poolerMode === PoolerMode.POOLER_MODE_TRANSACTION ? raw('selected') : ''}>transaction</option></select>
<label for="cpu">CPU (millicores)</label><input id="cpu" name="cpuMillis" type="number" min="1" value="${profile?.cpuMillis ?? ''}">
<label for="memory">Memory (MiB)</label><input id="memory" name="memoryMib" type="number" min="1" value="${profile?.memoryMib ?? ''}">
<label><input type="checkbox" name="autoscale" value="1" ${autoscale ? raw('checked') : ''}> Autoscale between</label>
<div class="row"><label for="min-cpu">min CPU</label><input id="min-cpu" name="minCpu" type="number" min="1" value="${autoscale?.minProfile?.cpuMillis ?? ''}">
<label for="min-mem">min MiB</label><input id="min-mem" name="minMemory" type="number" min="1" value="${autoscale?.minProfile?.memoryMib ?? ''}"></div>
<div class="row"><label for="max-cpu">max CPU</label><input id="max-cpu" name="maxCpu" type="number" min="1" value="${autoscale?.maxProfile?.cpuMillis ?? ''}">
<label for="max-mem">max MiB</label><input id="max-mem" name="maxMemory" type="number" min="1" value="${autoscale?.maxProfile?.memoryMib ?? ''}"></div>
${readOnly ? '' : html`<button type="submit">Save settings</button>`}</fieldset>
<p class="muted">A new profile on a running endpoint takes effect by a handoff to a new compute; the other settings apply at once.</p>`,
  raw('class="stack"'),
)}
</section>`,
  );
}

export function keysPage(context: PageContext, keys: ApiKey[]): string {
  const readOnly = context.user?.readOnly ?? true;
  const scope = (key: ApiKey) => (key.scope === ApiKeyScope.API_KEY_SCOPE_READ ? 'read' : key.scope === ApiKeyScope.API_KEY_SCOPE_ADMIN ? 'admin' : 'unknown');
  return layout(
    context,
    'API keys',
    html`<h1>API keys</h1>
${
  keys.length === 0
    ? html`<p class="empty">No keys.</p>`
    : html`<table><caption class="sr-only">API keys</caption><thead><tr><th scope="col">Name</th><th scope="col">Id</th><th scope="col">Scope</th><th scope="col">Starts with</th><th scope="col">Last used</th><th scope="col">Status</th>${readOnly ? '' : html`<th scope="col">Actions</th>`}</tr></thead><tbody>
${keys.map(
  (key) => html`<tr data-key="${key.keyId}"><td>${key.name}</td><td class="mono">${key.keyId}</td><td>${scope(key)}</td><td class="mono">${key.secretPrefix}…</td><td>${when(key.lastUsedAt)}</td>
<td>${key.revokedAt ? html`revoked ${when(key.revokedAt)}` : 'valid'}</td>
${readOnly ? '' : html`<td>${key.revokedAt ? '' : form(context, `/keys/${key.keyId}/revoke`, html`<button type="submit" class="danger" data-confirm="Revoke key ${key.name}? Calls with it fail from now on.">Revoke</button>`, raw('class="inline"'))}</td>`}</tr>`,
)}</tbody></table>`
}
${
  readOnly
    ? ''
    : html`<section aria-labelledby="new-key"><h2 id="new-key">New key</h2>
${form(
  context,
  '/keys',
  html`<label for="key-name">Name</label><input id="key-name" name="name" required maxlength="64">
<label for="key-scope">Scope</label><select id="key-scope" name="scope"><option value="read">read (Get, List, connection strings)</option><option value="admin">admin (everything)</option></select>
<button type="submit">Create key</button>`,
  raw('class="row"'),
)}</section>`
}`,
  );
}

export function messagePage(context: PageContext, title: string, message: string, next?: { href: string; label: string }): string {
  return layout(context, title, html`<h1>${title}</h1><p>${message}</p>${next ? html`<p><a href="${next.href}">${next.label}</a></p>` : ''}`);
}

/**
 * The commands of `spg99`, each one or two calls of the generated ControlPlaneService client: its declaration
 * (arguments, flags, help) next to its handler. Handlers check their input first (usage errors exit 2 before any
 * call), connect, call, and print the response as a table or, with --json, as the message's `toJSON`.
 */
import fs from 'node:fs';
import type { Duration } from '../../gen/google/protobuf/duration.js';
import {
  CreateApiKeyResponse,
  CreateBranchResponse,
  CreateProjectResponse,
  CreateRoleResponse,
  CreateTenantResponse,
  CreateEndpointResponse,
  DeleteBranchResponse,
  DeleteEndpointResponse,
  DeleteProjectResponse,
  DeleteRoleResponse,
  ResetRolePasswordResponse,
  EndpointState,
  GetConnectionStringResponse,
  GetEndpointResponse,
  GetProjectResponse,
  GetTenantResponse,
  ListApiKeysResponse,
  ListBranchesResponse,
  ListEndpointsResponse,
  ListProjectsResponse,
  ListRolesResponse,
  RevokeApiKeyResponse,
  ApiKeyScope,
  type CreateBranchRequest,
  type Endpoint,
  type EndpointSettings,
} from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { ControlPlaneConnection } from './api.js';
import { CONNECTION_FORMATS, formatConnection, type ConnectionFormat } from './connection-formats.js';
import type { CommandInput, CommandSpec } from './command.js';
import { CliError, UsageError } from './errors.js';
import { type Output } from './output.js';
import { parseDuration, parseLsnFlag, parsePoolerMode, parsePositiveInteger, parseScope, parseTime, requireIdPrefix } from './values.js';
import {
  API_KEY_COLUMNS,
  BRANCH_COLUMNS,
  ENDPOINT_COLUMNS,
  endpointFields,
  endpointStateWord,
  PROJECT_COLUMNS,
  projectFields,
  ROLE_COLUMNS,
  scopeWord,
  TENANT_COLUMNS,
} from './views.js';
import { waitForEndpointState } from './wait.js';

/** What every handler gets from main.ts. */
export interface CommandContext {
  output: Output;
  /**
   * Opens the connection, authenticated with the API key (SPG99_API_KEY or --api-key), or with `operatorToken` when
   * given. Throws CliError saying where the credential comes from when there is none.
   */
  connect(credential?: { operatorToken: string }): ControlPlaneConnection;
}

type Command = CommandSpec<CommandContext>;

/** The default of `endpoints start|stop --wait-timeout`. */
const DEFAULT_WAIT_TIMEOUT = '5m';

function text(input: CommandInput, name: string): string | undefined {
  const value = input.flags[name];
  return typeof value === 'string' ? value : undefined;
}

function argument(input: CommandInput, name: string): string {
  const value = input.arguments[name];
  if (value === undefined) throw new UsageError(`missing argument <${name}>`, input.usageLine);
  return value;
}

function durationMessage(ms: number): Duration {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

/** A list response's JSON with its list present even when empty (`{"projects": []}`), which scripts can iterate. */
function listJson(json: unknown, field: string): unknown {
  const object = json as Record<string, unknown>;
  return { [field]: [], ...object };
}

/** Endpoint settings from the flags projects create takes; undefined when none was given (the defaults apply). */
function endpointSettingsFlags(input: CommandInput): EndpointSettings | undefined {
  const suspend = text(input, 'suspend-timeout');
  const cpu = text(input, 'cpu-millis');
  const memory = text(input, 'memory-mib');
  const pooler = text(input, 'pooler-mode');
  if (suspend === undefined && cpu === undefined && memory === undefined && pooler === undefined) return undefined;
  const usage = input.usageLine;
  return {
    profile:
      cpu === undefined && memory === undefined
        ? undefined
        : {
            cpuMillis: cpu === undefined ? 0 : parsePositiveInteger(cpu, '--cpu-millis', usage),
            memoryMib: memory === undefined ? 0 : parsePositiveInteger(memory, '--memory-mib', usage),
          },
    suspendTimeout: suspend === undefined ? undefined : durationMessage(parseDuration(suspend, '--suspend-timeout', usage)),
    poolerMode: pooler === undefined ? 0 : parsePoolerMode(pooler, '--pooler-mode', usage),
  };
}

/** A branch name for `branches create` without --name: `dev-<UTC date>-<time>`. */
function defaultBranchName(now = new Date()): string {
  return `dev-${now.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15)}`;
}

function printEndpoint(output: Output, endpoint: Endpoint | undefined, json: unknown): void {
  output.json(json);
  if (endpoint) output.table(ENDPOINT_COLUMNS, [endpoint], '');
}

const SHOWN_ONCE = 'shown only this once: SPG99 keeps no copy; store it now (e.g. in a secret manager)';

// ---- tenants ----

const tenantsCreate: Command = {
  path: ['tenants', 'create'],
  summary: 'create a tenant and its first admin API key (the operator\'s bootstrap)',
  description: 'Authenticates with the operator token, not an API key. The key\'s secret is printed once.',
  arguments: [{ name: 'name', description: 'the tenant\'s name' }],
  flags: {
    'operator-token-file': { type: 'string', value: 'path', required: true, description: 'file holding the operator token (the control plane\'s --operator-token-file)' },
  },
  credential: 'operator-token',
  examples: ['spg99 tenants create acme --operator-token-file .spg99/operator-token'],
  async run(context, input) {
    const name = argument(input, 'name');
    const file = text(input, 'operator-token-file')!;
    let operatorToken: string;
    try {
      operatorToken = fs.readFileSync(file, 'utf8').trim();
    } catch (error) {
      throw new CliError(`cannot read --operator-token-file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}: check the path and its permissions`);
    }
    const connection = context.connect({ operatorToken });
    const response = await connection.call((client, options) => client.createTenant({ name }, options));
    const { output } = context;
    output.json(CreateTenantResponse.toJSON(response));
    if (response.tenant) output.table(TENANT_COLUMNS, [response.tenant], '');
    output.line();
    if (response.apiKey) output.table(API_KEY_COLUMNS, [response.apiKey], '');
    output.line();
    output.details(null, [['API key secret', response.apiKeySecret]]);
    output.line(`The secret is ${SHOWN_ONCE}. Use it with: export SPG99_API_KEY=${response.apiKeySecret}`);
  },
};

const tenantsGet: Command = {
  path: ['tenants', 'get'],
  summary: 'show the tenant of the API key',
  arguments: [],
  flags: {},
  credential: 'api-key',
  async run(context) {
    const response = await context.connect().call((client, options) => client.getTenant({}, options));
    context.output.json(GetTenantResponse.toJSON(response));
    if (response.tenant) context.output.table(TENANT_COLUMNS, [response.tenant], '');
  },
};

// ---- keys ----

const keysCreate: Command = {
  path: ['keys', 'create'],
  summary: 'create an API key (its secret is shown once)',
  arguments: [{ name: 'name', description: 'a label for the key (e.g. ci, dashboard)' }],
  flags: { scope: { type: 'string', value: 'admin|read', description: 'admin: everything (default); read: get, list and connection-string only' } },
  credential: 'api-key',
  examples: ['spg99 keys create ci', 'spg99 keys create dashboard --scope read --json | jq -r .secret'],
  async run(context, input) {
    const name = argument(input, 'name');
    const scopeText = text(input, 'scope');
    const scope = scopeText === undefined ? ApiKeyScope.API_KEY_SCOPE_ADMIN : parseScope(scopeText, '--scope', input.usageLine);
    const response = await context.connect().call((client, options) => client.createApiKey({ name, scope }, options));
    const { output } = context;
    output.json(CreateApiKeyResponse.toJSON(response));
    if (response.apiKey) output.table(API_KEY_COLUMNS, [response.apiKey], '');
    output.line();
    output.details(null, [['Secret', response.secret]]);
    output.line(`The secret is ${SHOWN_ONCE}.`);
  },
};

const keysList: Command = {
  path: ['keys', 'list'],
  summary: 'list the tenant\'s API keys, revoked ones included (never their secrets)',
  arguments: [],
  flags: {},
  credential: 'api-key',
  async run(context) {
    const response = await context.connect().call((client, options) => client.listApiKeys({}, options));
    context.output.json(listJson(ListApiKeysResponse.toJSON(response), 'apiKeys'));
    context.output.table(API_KEY_COLUMNS, response.apiKeys, 'No API keys.');
  },
};

const keysRevoke: Command = {
  path: ['keys', 'revoke'],
  summary: 'revoke an API key at once',
  arguments: [{ name: 'key-id', description: 'the key (ky-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const keyId = requireIdPrefix(argument(input, 'key-id'), 'ky-', '<key-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.revokeApiKey({ keyId }, options));
    context.output.json(RevokeApiKeyResponse.toJSON(response));
    if (response.apiKey) {
      context.output.table(API_KEY_COLUMNS, [response.apiKey], '');
      context.output.line(`Key ${keyId} (${scopeWord(response.apiKey)}) is revoked: calls with it are refused from now on.`);
    }
  },
};

// ---- projects ----

const projectsCreate: Command = {
  path: ['projects', 'create'],
  summary: 'create a project with its default branch, endpoint and role (the password is shown once)',
  arguments: [{ name: 'name', description: 'the project\'s name' }],
  flags: {
    region: { type: 'string', value: 'region', description: 'where it runs (default: the control plane\'s first region)' },
    'pg-version': { type: 'string', value: 'major', description: 'PostgreSQL major version (default: the newest supported)' },
    'suspend-timeout': { type: 'string', value: 'duration', description: 'suspend endpoints after this long without connections (e.g. 300s, 5m; 0: never)' },
    'cpu-millis': { type: 'string', value: 'millicores', description: 'compute CPU in thousandths of a core (e.g. 250, 1000)' },
    'memory-mib': { type: 'string', value: 'MiB', description: 'compute memory in MiB' },
    'pooler-mode': { type: 'string', value: 'session|transaction', description: 'how the gateway pools connections' },
    'branch-name': { type: 'string', value: 'name', description: 'the default branch\'s name (default main)' },
    'role-name': { type: 'string', value: 'name', description: 'the default role\'s name (default owner)' },
  },
  credential: 'api-key',
  examples: ['spg99 projects create shop', 'spg99 projects create shop --suspend-timeout 5m --json | jq -r .connectionUri'],
  async run(context, input) {
    const name = argument(input, 'name');
    const pgVersion = text(input, 'pg-version');
    const request = {
      name,
      region: text(input, 'region') ?? '',
      pgMajorVersion: pgVersion === undefined ? 0 : parsePositiveInteger(pgVersion, '--pg-version', input.usageLine),
      defaultEndpointSettings: endpointSettingsFlags(input),
      defaultBranchName: text(input, 'branch-name') ?? '',
      defaultRoleName: text(input, 'role-name') ?? '',
    };
    const response = await context.connect().call((client, options) => client.createProject(request, options));
    const { output } = context;
    output.json(CreateProjectResponse.toJSON(response));
    const { project, defaultBranch, defaultEndpoint, defaultRole } = response;
    output.details(null, [
      ['Project', project ? `${project.projectId} (${project.name}, region ${project.region}, PostgreSQL ${project.pgMajorVersion})` : '-'],
      ['Branch', defaultBranch ? `${defaultBranch.branchId} (${defaultBranch.name})` : '-'],
      ['Endpoint', defaultEndpoint ? `${defaultEndpoint.endpointId} (${endpointStateWord(defaultEndpoint)}; the first connection starts it)` : '-'],
      ['Host', defaultEndpoint?.host ?? '-'],
      ['Role', defaultRole ? `${defaultRole.name} (${defaultRole.roleId})` : '-'],
      ['Password', response.defaultRolePassword],
      ['Connection URI', response.connectionUri],
    ]);
    output.line();
    output.line(`The password and the connection URI (which includes it) are ${SHOWN_ONCE}.`);
  },
};

const projectsList: Command = {
  path: ['projects', 'list'],
  summary: 'list the tenant\'s projects',
  arguments: [],
  flags: {},
  credential: 'api-key',
  async run(context) {
    const response = await context.connect().call((client, options) => client.listProjects({}, options));
    context.output.json(listJson(ListProjectsResponse.toJSON(response), 'projects'));
    context.output.table(PROJECT_COLUMNS, response.projects, 'No projects yet: create one with spg99 projects create <name>.');
  },
};

const projectsGet: Command = {
  path: ['projects', 'get'],
  summary: 'show a project and its default endpoint settings',
  arguments: [{ name: 'project-id', description: 'the project (pj-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const projectId = requireIdPrefix(argument(input, 'project-id'), 'pj-', '<project-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.getProject({ projectId }, options));
    context.output.json(GetProjectResponse.toJSON(response));
    if (response.project) context.output.details(null, projectFields(response.project));
  },
};

const projectsDelete: Command = {
  path: ['projects', 'delete'],
  summary: 'delete a project with all its endpoints, branches and roles',
  arguments: [{ name: 'project-id', description: 'the project (pj-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const projectId = requireIdPrefix(argument(input, 'project-id'), 'pj-', '<project-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.deleteProject({ projectId }, options));
    context.output.json(DeleteProjectResponse.toJSON(response));
    context.output.line(`Deleted project ${projectId} with its endpoints, branches and roles.`);
  },
};

// ---- branches ----

const branchesCreate: Command = {
  path: ['branches', 'create'],
  summary: 'create a branch of a parent branch, now or at an LSN or a time',
  description:
    'The new branch starts with copies of the parent\'s roles (same passwords). Without --lsn or --at it branches at the ' +
    'end of the parent\'s committed history.',
  arguments: [],
  flags: {
    project: { type: 'string', value: 'pj-…', required: true, description: 'the project' },
    name: { type: 'string', value: 'name', description: 'the branch\'s name (default dev-<UTC time>)' },
    parent: { type: 'string', value: 'tl-…', description: 'the parent branch (default: the project\'s default branch)' },
    lsn: { type: 'string', value: 'X/Y', description: 'branch at this WAL position of the parent' },
    at: { type: 'string', value: 'ISO time', description: 'branch at the parent\'s last commit at or before this time' },
    endpoint: { type: 'boolean', description: 'also create an endpoint on the new branch' },
  },
  credential: 'api-key',
  examples: [
    'spg99 branches create --project pj-k3q7x2mfa9dtn4vb --name dev',
    'spg99 branches create --project pj-k3q7x2mfa9dtn4vb --name before-migration --at 2026-11-26T10:00:00Z --endpoint',
  ],
  async run(context, input) {
    const usage = input.usageLine;
    const projectId = requireIdPrefix(text(input, 'project')!, 'pj-', '--project', usage);
    const parent = text(input, 'parent');
    const lsnText = text(input, 'lsn');
    const atText = text(input, 'at');
    if (lsnText !== undefined && atText !== undefined) throw new UsageError('--lsn and --at are exclusive: give one branch point', usage);
    const request: CreateBranchRequest = {
      projectId,
      name: text(input, 'name') ?? defaultBranchName(),
      parentBranchId: parent === undefined ? '' : requireIdPrefix(parent, 'tl-', '--parent', usage),
      parentLsn: lsnText === undefined ? undefined : parseLsnFlag(lsnText, '--lsn', usage),
      parentTime: atText === undefined ? undefined : parseTime(atText, '--at', usage),
      createEndpoint: input.flags.endpoint === true,
    };
    const response = await context.connect().call((client, options) => client.createBranch(request, options));
    const { output } = context;
    output.json(CreateBranchResponse.toJSON(response));
    if (response.branch) output.table(BRANCH_COLUMNS, [response.branch], '');
    if (response.endpoint) {
      output.line();
      output.table(ENDPOINT_COLUMNS, [response.endpoint], '');
    }
  },
};

const branchesList: Command = {
  path: ['branches', 'list'],
  summary: 'list a project\'s branches',
  arguments: [],
  flags: { project: { type: 'string', value: 'pj-…', required: true, description: 'the project' } },
  credential: 'api-key',
  async run(context, input) {
    const projectId = requireIdPrefix(text(input, 'project')!, 'pj-', '--project', input.usageLine);
    const response = await context.connect().call((client, options) => client.listBranches({ projectId }, options));
    context.output.json(listJson(ListBranchesResponse.toJSON(response), 'branches'));
    context.output.table(BRANCH_COLUMNS, response.branches, 'No branches.');
  },
};

// ---- endpoints ----

const endpointsList: Command = {
  path: ['endpoints', 'list'],
  summary: 'list a project\'s endpoints and their states',
  arguments: [],
  flags: {
    project: { type: 'string', value: 'pj-…', required: true, description: 'the project' },
    branch: { type: 'string', value: 'tl-…', description: 'only the endpoints of this branch' },
  },
  credential: 'api-key',
  async run(context, input) {
    const projectId = requireIdPrefix(text(input, 'project')!, 'pj-', '--project', input.usageLine);
    const branch = text(input, 'branch');
    const branchId = branch === undefined ? '' : requireIdPrefix(branch, 'tl-', '--branch', input.usageLine);
    const response = await context.connect().call((client, options) => client.listEndpoints({ projectId, branchId }, options));
    context.output.json(listJson(ListEndpointsResponse.toJSON(response), 'endpoints'));
    context.output.table(ENDPOINT_COLUMNS, response.endpoints, 'No endpoints.');
  },
};

const endpointsGet: Command = {
  path: ['endpoints', 'get'],
  summary: 'show an endpoint: state, compute, settings',
  arguments: [{ name: 'endpoint-id', description: 'the endpoint (ep-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const endpointId = requireIdPrefix(argument(input, 'endpoint-id'), 'ep-', '<endpoint-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.getEndpoint({ endpointId }, options));
    context.output.json(GetEndpointResponse.toJSON(response));
    if (response.endpoint) context.output.details(null, endpointFields(response.endpoint));
  },
};

/** endpoints start and stop: one call that answers at once, then with --wait a poll until the state is reached. */
function endpointTransition(verb: 'start' | 'stop'): Command {
  const target = verb === 'start' ? EndpointState.ENDPOINT_STATE_RUNNING : EndpointState.ENDPOINT_STATE_STOPPED;
  const targetWord = verb === 'start' ? 'RUNNING' : 'STOPPED';
  return {
    path: ['endpoints', verb],
    summary:
      verb === 'start'
        ? 'start an endpoint\'s compute (answers at once with STARTING; --wait for RUNNING)'
        : 'stop an endpoint\'s compute gracefully (answers at once with SUSPENDING; --wait for STOPPED)',
    arguments: [{ name: 'endpoint-id', description: 'the endpoint (ep-…)' }],
    flags: {
      wait: { type: 'boolean', description: `wait until the endpoint is ${targetWord} (exit 1 if it FAILED)` },
      'wait-timeout': { type: 'string', value: 'duration', description: `how long --wait waits (default ${DEFAULT_WAIT_TIMEOUT})` },
    },
    credential: 'api-key',
    examples: [`spg99 endpoints ${verb} ep-0123456789abcdef0123456789abcdef --wait`],
    async run(context, input) {
      const endpointId = requireIdPrefix(argument(input, 'endpoint-id'), 'ep-', '<endpoint-id>', input.usageLine);
      const waitMs = parseDuration(text(input, 'wait-timeout') ?? DEFAULT_WAIT_TIMEOUT, '--wait-timeout', input.usageLine);
      const connection = context.connect();
      const response = await connection.call((client, options) =>
        verb === 'start' ? client.startEndpoint({ endpointId }, options) : client.stopEndpoint({ endpointId }, options),
      );
      if (input.flags.wait !== true) {
        printEndpoint(context.output, response.endpoint, GetEndpointResponse.toJSON(response));
        return;
      }
      const endpoint = await waitForEndpointState(connection, endpointId, target, waitMs);
      printEndpoint(context.output, endpoint, GetEndpointResponse.toJSON({ endpoint }));
    },
  };
}

// ---- roles ----

const rolesCreate: Command = {
  path: ['roles', 'create'],
  summary: 'create a Postgres role on a branch (its password is shown once)',
  arguments: [{ name: 'name', description: 'the role name: lowercase letters, digits and _' }],
  flags: { branch: { type: 'string', value: 'tl-…', required: true, description: 'the branch' } },
  credential: 'api-key',
  examples: ['spg99 roles create --branch tl-0123456789abcdef0123456789abcdef app'],
  async run(context, input) {
    const branchId = requireIdPrefix(text(input, 'branch')!, 'tl-', '--branch', input.usageLine);
    const name = argument(input, 'name');
    const response = await context.connect().call((client, options) => client.createRole({ branchId, name }, options));
    const { output } = context;
    output.json(CreateRoleResponse.toJSON(response));
    if (response.role) output.table(ROLE_COLUMNS, [response.role], '');
    output.line();
    output.details(null, [['Password', response.password]]);
    output.line(`The password is ${SHOWN_ONCE}.`);
  },
};

const rolesList: Command = {
  path: ['roles', 'list'],
  summary: 'list a branch\'s roles',
  arguments: [],
  flags: { branch: { type: 'string', value: 'tl-…', required: true, description: 'the branch' } },
  credential: 'api-key',
  async run(context, input) {
    const branchId = requireIdPrefix(text(input, 'branch')!, 'tl-', '--branch', input.usageLine);
    const response = await context.connect().call((client, options) => client.listRoles({ branchId }, options));
    context.output.json(listJson(ListRolesResponse.toJSON(response), 'roles'));
    context.output.table(ROLE_COLUMNS, response.roles, 'No roles.');
  },
};

// ---- connection-string ----

const connectionString: Command = {
  path: ['connection-string'],
  summary: 'print how to connect to an endpoint: a URI, libpq keywords, PG* variables or a JDBC URL',
  description:
    'The string connects as printed, with the gateway\'s certificate verified (sslmode=verify-full). Without ' +
    '--reset-password it carries no password: psql asks for it, drivers read PGPASSWORD. --reset-password gives the ' +
    'role a new password (the previous one stops working) and puts it in; it is shown only this once. ' +
    'docs/connecting.md shows each driver.',
  arguments: [{ name: 'endpoint-id', description: 'the endpoint (ep-…)' }],
  flags: {
    role: { type: 'string', value: 'name', description: 'the role (default owner)' },
    database: { type: 'string', value: 'name', description: 'the database (default postgres)' },
    pooled: { type: 'boolean', description: 'through the endpoint\'s pooler (ep-…-pooler, in its pooler mode), not a dedicated session' },
    format: { type: 'string', value: CONNECTION_FORMATS.join('|'), description: 'uri (default), keyword (host=… port=…), env (export PG…= lines) or jdbc' },
    'reset-password': { type: 'boolean', description: 'give the role a new password and put it in the string (the old one stops working)' },
  },
  credential: 'api-key',
  examples: [
    'psql "$(spg99 connection-string ep-0123456789abcdef0123456789abcdef --role app)"',
    'eval "$(spg99 connection-string ep-0123456789abcdef0123456789abcdef --format env)"; PGPASSWORD=… node app.js',
    'spg99 connection-string ep-0123456789abcdef0123456789abcdef --pooled --format jdbc --reset-password',
  ],
  async run(context, input) {
    const endpointId = requireIdPrefix(argument(input, 'endpoint-id'), 'ep-', '<endpoint-id>', input.usageLine);
    const format = (text(input, 'format') ?? 'uri') as ConnectionFormat;
    if (!CONNECTION_FORMATS.includes(format)) {
      throw new UsageError(`--format must be one of ${CONNECTION_FORMATS.join(', ')}, not ${JSON.stringify(format)}`, input.usageLine);
    }
    const request = {
      endpointId,
      roleName: text(input, 'role') ?? 'owner',
      databaseName: text(input, 'database') ?? '',
      pooled: input.flags.pooled === true,
    };
    const connection = context.connect();
    const response = await connection.call((client, options) => client.getConnectionString(request, options));
    let password: string | undefined;
    if (input.flags['reset-password'] === true) {
      // The role by name on the endpoint's branch: GetConnectionString just found it there.
      const { endpoint } = await connection.call((client, options) => client.getEndpoint({ endpointId }, options));
      const { roles } = await connection.call((client, options) => client.listRoles({ branchId: endpoint!.branchId }, options));
      const role = roles.find((candidate) => candidate.name === request.roleName);
      if (!role) throw new CliError(`role ${JSON.stringify(request.roleName)} is gone from branch ${endpoint!.branchId}: list them with spg99 roles list --branch ${endpoint!.branchId}`);
      password = (await connection.call((client, options) => client.resetRolePassword({ roleId: role.roleId }, options))).password;
    }
    const printed = formatConnection(response.uri, format, password);
    // --json: the API's answer, and what was printed (with the password when one was revealed).
    context.output.json({ ...(GetConnectionStringResponse.toJSON(response) as object), format, connectionString: printed });
    context.output.line(printed);
  },
};

const branchesDelete: Command = {
  path: ['branches', 'delete'],
  summary: 'delete a branch with its (stopped) endpoint, its roles and its history',
  arguments: [{ name: 'branch-id', description: 'the branch (tl-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const branchId = requireIdPrefix(argument(input, 'branch-id'), 'tl-', '<branch-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.deleteBranch({ branchId }, options));
    context.output.json(DeleteBranchResponse.toJSON(response));
    context.output.line(`Deleted branch ${branchId} with its endpoint, roles and history.`);
  },
};

const endpointsCreate: Command = {
  path: ['endpoints', 'create'],
  summary: 'create an endpoint on a branch that has none (STOPPED; the first connection or start starts it)',
  arguments: [],
  flags: {
    branch: { type: 'string', value: 'tl-…', required: true, description: 'the branch' },
    'suspend-timeout': { type: 'string', value: 'duration', description: 'suspend after this long without connections (e.g. 300s, 5m; 0: never)' },
    'cpu-millis': { type: 'string', value: 'millicores', description: 'compute CPU in thousandths of a core (e.g. 250, 1000)' },
    'memory-mib': { type: 'string', value: 'MiB', description: 'compute memory in MiB' },
    'pooler-mode': { type: 'string', value: 'session|transaction', description: 'how the gateway pools connections' },
  },
  credential: 'api-key',
  examples: ['spg99 endpoints create --branch tl-0123456789abcdef0123456789abcdef --suspend-timeout 10m'],
  async run(context, input) {
    const branchId = requireIdPrefix(text(input, 'branch')!, 'tl-', '--branch', input.usageLine);
    const response = await context.connect().call((client, options) => client.createEndpoint({ branchId, settings: endpointSettingsFlags(input) }, options));
    printEndpoint(context.output, response.endpoint, CreateEndpointResponse.toJSON(response));
  },
};

const endpointsDelete: Command = {
  path: ['endpoints', 'delete'],
  summary: 'stop an endpoint if needed and delete it (its branch and data stay)',
  arguments: [{ name: 'endpoint-id', description: 'the endpoint (ep-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const endpointId = requireIdPrefix(argument(input, 'endpoint-id'), 'ep-', '<endpoint-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.deleteEndpoint({ endpointId }, options));
    context.output.json(DeleteEndpointResponse.toJSON(response));
    context.output.line(`Deleted endpoint ${endpointId}; its branch and data stay.`);
  },
};

const rolesResetPassword: Command = {
  path: ['roles', 'reset-password'],
  summary: 'give a role a new generated password (shown once); a running endpoint gets it at once',
  arguments: [{ name: 'role-id', description: 'the role (rl-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const roleId = requireIdPrefix(argument(input, 'role-id'), 'rl-', '<role-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.resetRolePassword({ roleId }, options));
    const { output } = context;
    output.json(ResetRolePasswordResponse.toJSON(response));
    if (response.role) output.table(ROLE_COLUMNS, [response.role], '');
    output.line();
    output.details(null, [['Password', response.password]]);
    output.line(`The password is ${SHOWN_ONCE}.`);
  },
};

const rolesDelete: Command = {
  path: ['roles', 'delete'],
  summary: 'drop a role (refused while it owns objects in the database)',
  arguments: [{ name: 'role-id', description: 'the role (rl-…)' }],
  flags: {},
  credential: 'api-key',
  async run(context, input) {
    const roleId = requireIdPrefix(argument(input, 'role-id'), 'rl-', '<role-id>', input.usageLine);
    const response = await context.connect().call((client, options) => client.deleteRole({ roleId }, options));
    context.output.json(DeleteRoleResponse.toJSON(response));
    context.output.line(`Deleted role ${roleId}.`);
  },
};

/** Every command, in the order --help lists them. */
export const COMMANDS: readonly Command[] = [
  projectsCreate,
  projectsList,
  projectsGet,
  projectsDelete,
  branchesCreate,
  branchesList,
  branchesDelete,
  endpointsList,
  endpointsGet,
  endpointsCreate,
  endpointTransition('start'),
  endpointTransition('stop'),
  endpointsDelete,
  rolesCreate,
  rolesList,
  rolesResetPassword,
  rolesDelete,
  connectionString,
  keysCreate,
  keysList,
  keysRevoke,
  tenantsCreate,
  tenantsGet,
];

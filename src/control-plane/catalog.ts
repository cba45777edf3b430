/**
 * The catalog: tenants, API keys and projects (with their branches, endpoints and roles) in Redis, the control
 * plane's only state. Every state transition is one Lua script, which Redis runs atomically and writes to the
 * append-only file as one MULTI/EXEC, so a crash of the control plane or of Redis at any moment leaves either all of
 * a transition or none of it; the control plane keeps nothing in memory and can be restarted at any time.
 *
 * Schema (every key under the `spg99:` prefix; timestamps are ms since the epoch as decimal strings; ids are the
 * contract's, e.g. `tn-…`, `pj-…`, `tl-…`):
 *
 * | key                                | type   | holds                                                            |
 * |------------------------------------|--------|------------------------------------------------------------------|
 * | `schema-version`                   | string | `1`; a control plane refuses to start on another version          |
 * | `tenant-names`                     | hash   | tenant name → tenant id (tenant names are unique)                 |
 * | `tenant:<tn>`                      | hash   | tenantId, name, createdAt                                        |
 * | `tenant:<tn>:keys`                 | set    | the tenant's API key ids, revoked ones included                  |
 * | `tenant:<tn>:projects`             | zset   | the tenant's project ids, scored by createdAt                    |
 * | `tenant:<tn>:project-names`        | hash   | project name → project id (unique within a tenant)               |
 * | `key:<ky>`                         | hash   | keyId, tenantId, name, scope (admin/read), secretPrefix,         |
 * |                                    |        | secretHash (SHA-256 hex), createdAt, lastUsedAt, revokedAt (0: unset) |
 * | `key-secret:<sha256 hex>`          | string | the key id of the secret with that hash (the lookup on every call) |
 * | `project:<pj>`                     | hash   | projectId, tenantId, name, region, pgMajorVersion,               |
 * |                                    |        | defaultEndpointSettings (JSON), defaultBranchId, createdAt, deleting (0/1) |
 * | `project:<pj>:branches`            | set    | the project's branch (timeline) ids                              |
 * | `project:<pj>:endpoints`           | set    | the project's endpoint ids                                       |
 * | `project:<pj>:branch-names`        | hash   | branch name → branch id (unique within a project)                |
 * | `endpoints`                        | set    | every endpoint id (what the reconciler walks)                    |
 * | `branch:<tl>`                      | hash   | branchId, projectId, name, parentBranchId, parentLsn, isDefault, createdAt, |
 * |                                    |        | deleting (0/1)                                                   |
 * | `branch:<tl>:roles`                | hash   | role name → role id                                              |
 * | `endpoint:<ep>`                    | hash   | endpointId, projectId, branchId, settings (JSON), state, stateReason, |
 * |                                    |        | stateChangedAt, currentComputeId, writerTerm, postgresAddress     |
 * |                                    |        | (set while RUNNING), createdAt, lastActivityAt and               |
 * |                                    |        | activityReportedAt, activeConnections (the current compute's     |
 * |                                    |        | last activity report)                                             |
 * | `role:<rl>`                        | hash   | roleId, branchId, name, scramVerifier, createdAt                 |
 *
 * Writer leases and terms live next to these, owned by leases.ts.
 *
 * The scripts name the keys they take in KEYS; those that walk a project's members (deletion) also touch keys they
 * find, which is fine on one Redis (the platform's) but would need hash tags on a Redis Cluster.
 * A script that fails half-way keeps its earlier writes (Redis does not roll scripts back), so each script checks
 * and decodes everything before its first write.
 */
import type { Redis } from '../lib/redis.js';
import type {
  ApiKeyRecord,
  BranchRecord,
  EndpointRecord,
  EndpointSettingsRecord,
  EndpointStateName,
  ProjectRecord,
  RoleRecord,
  Scope,
  TenantRecord,
} from './model.js';

/** The prefix of every catalog key. */
export const KEY_PREFIX = 'spg99:';
/** The schema this code reads and writes. */
export const SCHEMA_VERSION = '1';

/** How often at most a key's lastUsedAt is written (one write per call would double Redis' load for nothing). */
export const LAST_USED_RESOLUTION_MS = 60_000;

/** The catalog's key names (without {@link KEY_PREFIX}: ioredis adds it). */
const keys = {
  schemaVersion: () => 'schema-version',
  tenantNames: () => 'tenant-names',
  tenant: (tenantId: string) => `tenant:${tenantId}`,
  tenantKeys: (tenantId: string) => `tenant:${tenantId}:keys`,
  tenantProjects: (tenantId: string) => `tenant:${tenantId}:projects`,
  tenantProjectNames: (tenantId: string) => `tenant:${tenantId}:project-names`,
  apiKey: (keyId: string) => `key:${keyId}`,
  apiKeySecret: (secretHash: string) => `key-secret:${secretHash}`,
  project: (projectId: string) => `project:${projectId}`,
  projectBranches: (projectId: string) => `project:${projectId}:branches`,
  projectEndpoints: (projectId: string) => `project:${projectId}:endpoints`,
  branch: (branchId: string) => `branch:${branchId}`,
  branchRoles: (branchId: string) => `branch:${branchId}:roles`,
  projectBranchNames: (projectId: string) => `project:${projectId}:branch-names`,
  endpoints: () => 'endpoints',
  endpoint: (endpointId: string) => `endpoint:${endpointId}`,
  role: (roleId: string) => `role:${roleId}`,
};

/** Lua shared by the scripts: `decode` a JSON object of string fields, `put` it into a hash. */
const LUA_HELPERS = `
local function decode(json) return cjson.decode(json) end
local function put(key, fields)
  local flat = {}
  for name, value in pairs(fields) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  redis.call('HSET', key, unpack(flat))
end
`;

/** The scripts, by command name (registered with `defineCommand`: EVALSHA, falling back to EVAL after a restart). */
const SCRIPTS = {
  // KEYS: tenant-names, tenant, tenant keys, key, key-secret. ARGV: name, tenantId, tenant JSON, keyId, key JSON.
  spg99CreateTenant: {
    keys: 5,
    lua: `${LUA_HELPERS}
local tenant = decode(ARGV[3])
local key = decode(ARGV[5])
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {'exists', existing} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
put(KEYS[2], tenant)
redis.call('SADD', KEYS[3], ARGV[4])
put(KEYS[4], key)
redis.call('SET', KEYS[5], ARGV[4])
return {'created', ARGV[2]}`,
  },
  // KEYS: tenant, tenant keys, key, key-secret. ARGV: keyId, key JSON.
  spg99CreateApiKey: {
    keys: 4,
    lua: `${LUA_HELPERS}
local key = decode(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return 'no-tenant' end
redis.call('SADD', KEYS[2], ARGV[1])
put(KEYS[3], key)
redis.call('SET', KEYS[4], ARGV[1])
return 'created'`,
  },
  // KEYS: key. ARGV: tenantId, now. Answers the key's fields, or nil when it is not the tenant's.
  spg99RevokeApiKey: {
    keys: 1,
    lua: `
if redis.call('HGET', KEYS[1], 'tenantId') ~= ARGV[1] then return nil end
if redis.call('HGET', KEYS[1], 'revokedAt') == '0' then redis.call('HSET', KEYS[1], 'revokedAt', ARGV[2]) end
return redis.call('HGETALL', KEYS[1])`,
  },
  // KEYS: key. ARGV: now, resolution. Never recreates a key that is gone.
  spg99TouchApiKey: {
    keys: 1,
    lua: `
local last = redis.call('HGET', KEYS[1], 'lastUsedAt')
if last and tonumber(last) + tonumber(ARGV[2]) <= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'lastUsedAt', ARGV[1])
end
return 0`,
  },
  // KEYS: tenant, tenant project-names, tenant projects, project, project branches, branch, project endpoints,
  // endpoint, branch roles, role, project branch-names, endpoints. ARGV: name, projectId, createdAt, project JSON,
  // branchId, branch JSON, endpointId, endpoint JSON, role name, roleId, role JSON, branch name.
  spg99CreateProject: {
    keys: 12,
    lua: `${LUA_HELPERS}
local project = decode(ARGV[4])
local branch = decode(ARGV[6])
local endpoint = decode(ARGV[8])
local role = decode(ARGV[11])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'no-tenant'} end
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return {'exists', existing} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
put(KEYS[4], project)
redis.call('SADD', KEYS[5], ARGV[5])
put(KEYS[6], branch)
redis.call('SADD', KEYS[7], ARGV[7])
put(KEYS[8], endpoint)
redis.call('HSET', KEYS[9], ARGV[9], ARGV[10])
put(KEYS[10], role)
redis.call('HSET', KEYS[11], ARGV[12], ARGV[5])
redis.call('SADD', KEYS[12], ARGV[7])
return {'created'}`,
  },
  // KEYS: project, project endpoints. ARGV: tenantId, key prefix.
  // Marks the project deleting unless an endpoint still has a compute. Answers {'ok'}, {'busy', endpointId, state}
  // or nil when the project is not the tenant's.
  spg99BeginDeleteProject: {
    keys: 2,
    lua: `
if redis.call('HGET', KEYS[1], 'tenantId') ~= ARGV[1] then return nil end
for _, endpointId in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local state = redis.call('HGET', ARGV[2] .. 'endpoint:' .. endpointId, 'state')
  if state and state ~= 'stopped' then return {'busy', endpointId, state} end
end
redis.call('HSET', KEYS[1], 'deleting', '1')
return {'ok'}`,
  },
  // KEYS: project, tenant project-names, tenant projects, project branches, project endpoints, project
  // branch-names, endpoints. ARGV: tenantId, projectId, key prefix. Removes a deleting project and everything of it;
  // 0 when it is gone.
  spg99FinishDeleteProject: {
    keys: 7,
    lua: `
if redis.call('HGET', KEYS[1], 'tenantId') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'deleting') ~= '1' then return redis.error_reply('project ' .. ARGV[2] .. ' is not being deleted') end
local prefix = ARGV[3]
for _, branchId in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local roles = prefix .. 'branch:' .. branchId .. ':roles'
  for _, roleId in ipairs(redis.call('HVALS', roles)) do redis.call('DEL', prefix .. 'role:' .. roleId) end
  redis.call('DEL', roles, prefix .. 'branch:' .. branchId)
end
for _, endpointId in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  redis.call('DEL', prefix .. 'endpoint:' .. endpointId)
  redis.call('SREM', KEYS[7], endpointId)
end
local name = redis.call('HGET', KEYS[1], 'name')
if redis.call('HGET', KEYS[2], name) == ARGV[2] then redis.call('HDEL', KEYS[2], name) end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6])
return 1`,
  },
  // KEYS: endpoint. ARGV: allowed states (comma-separated), expected currentComputeId ('' : any), fields JSON.
  // Sets the fields when the endpoint is in an allowed state (and runs the expected compute). Answers
  // {'ok', fields…}, {'refused', fields…} (the endpoint as it is) or {'missing'}.
  spg99TransitionEndpoint: {
    keys: 1,
    lua: `${LUA_HELPERS}
local fields = decode(ARGV[3])
local current = redis.call('HMGET', KEYS[1], 'state', 'currentComputeId')
if not current[1] then return {'missing'} end
local allowed = false
for state in string.gmatch(ARGV[1], '[^,]+') do
  if state == current[1] then allowed = true end
end
if ARGV[2] ~= '' and current[2] ~= ARGV[2] then allowed = false end
if not allowed then
  local all = redis.call('HGETALL', KEYS[1])
  table.insert(all, 1, 'refused')
  return all
end
put(KEYS[1], fields)
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'ok')
return all`,
  },
  // KEYS: project, project branches, project branch-names, branch, parent branch, branch roles, project endpoints,
  // endpoint, endpoints. ARGV: tenantId, branch name, branchId, branch JSON, roles JSON ([{roleId, name, fields}]),
  // endpointId ('' : none), endpoint JSON, key prefix.
  // Answers {'created'}, {'no-project'}, {'no-parent'} or {'exists', id of the branch with that name}.
  spg99CreateBranch: {
    keys: 9,
    lua: `${LUA_HELPERS}
local branch = decode(ARGV[4])
local roles = decode(ARGV[5])
local endpoint = nil
if ARGV[6] ~= '' then endpoint = decode(ARGV[7]) end
local project = redis.call('HMGET', KEYS[1], 'tenantId', 'deleting')
if project[1] ~= ARGV[1] or project[2] == '1' then return {'no-project'} end
local parent = redis.call('HMGET', KEYS[5], 'projectId', 'deleting')
if parent[1] ~= branch.projectId or parent[2] == '1' then return {'no-parent'} end
local existing = redis.call('HGET', KEYS[3], ARGV[2])
if existing then return {'exists', existing} end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[3])
put(KEYS[4], branch)
for _, role in ipairs(roles) do
  redis.call('HSET', KEYS[6], role.name, role.roleId)
  put(ARGV[8] .. 'role:' .. role.roleId, role.fields)
end
if endpoint then
  redis.call('SADD', KEYS[7], ARGV[6])
  put(KEYS[8], endpoint)
  redis.call('SADD', KEYS[9], ARGV[6])
end
return {'created'}`,
  },
  // KEYS: project, project branches, branch, project endpoints. ARGV: tenantId, branchId, key prefix.
  // Marks a branch deleting when nothing stands in the way. Answers {'ok'}, {'default'}, {'children', childId},
  // {'busy', endpointId, state} or {'missing'}.
  spg99BeginDeleteBranch: {
    keys: 4,
    lua: `
local project = redis.call('HMGET', KEYS[1], 'tenantId', 'deleting')
if project[1] ~= ARGV[1] or project[2] == '1' then return {'missing'} end
local branch = redis.call('HMGET', KEYS[3], 'projectId', 'isDefault')
if not branch[1] then return {'missing'} end
if branch[2] == '1' then return {'default'} end
for _, otherId in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local other = ARGV[3] .. 'branch:' .. otherId
  if redis.call('HGET', other, 'parentBranchId') == ARGV[2] and redis.call('HGET', other, 'deleting') ~= '1' then
    return {'children', otherId}
  end
end
for _, endpointId in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local endpoint = redis.call('HMGET', ARGV[3] .. 'endpoint:' .. endpointId, 'branchId', 'state')
  if endpoint[1] == ARGV[2] and endpoint[2] ~= 'stopped' and endpoint[2] ~= 'failed' then return {'busy', endpointId, endpoint[2]} end
end
redis.call('HSET', KEYS[3], 'deleting', '1')
return {'ok'}`,
  },
  // KEYS: branch, project branches, project branch-names, branch roles, project endpoints, endpoints.
  // ARGV: branchId, key prefix. Removes a deleting branch with its roles and endpoints; 0 when it is gone.
  spg99FinishDeleteBranch: {
    keys: 6,
    lua: `
if redis.call('HGET', KEYS[1], 'deleting') ~= '1' then return 0 end
local prefix = ARGV[2]
for _, roleId in ipairs(redis.call('HVALS', KEYS[4])) do redis.call('DEL', prefix .. 'role:' .. roleId) end
for _, endpointId in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local key = prefix .. 'endpoint:' .. endpointId
  if redis.call('HGET', key, 'branchId') == ARGV[1] then
    redis.call('DEL', key)
    redis.call('SREM', KEYS[5], endpointId)
    redis.call('SREM', KEYS[6], endpointId)
  end
end
local name = redis.call('HGET', KEYS[1], 'name')
if redis.call('HGET', KEYS[3], name) == ARGV[1] then redis.call('HDEL', KEYS[3], name) end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[4])
return 1`,
  },
  // KEYS: project, project endpoints, endpoint, endpoints, branch. ARGV: tenantId, endpointId, endpoint JSON,
  // branchId, key prefix. Answers {'created'}, {'no-project'}, {'no-branch'} or {'exists', endpointId}: a branch
  // has at most one endpoint, as a timeline has at most one writer.
  spg99CreateEndpoint: {
    keys: 5,
    lua: `${LUA_HELPERS}
local endpoint = decode(ARGV[3])
local project = redis.call('HMGET', KEYS[1], 'tenantId', 'deleting')
if project[1] ~= ARGV[1] or project[2] == '1' then return {'no-project'} end
local branch = redis.call('HMGET', KEYS[5], 'projectId', 'deleting')
if branch[1] ~= endpoint.projectId or branch[2] == '1' then return {'no-branch'} end
for _, otherId in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('HGET', ARGV[5] .. 'endpoint:' .. otherId, 'branchId') == ARGV[4] then return {'exists', otherId} end
end
redis.call('SADD', KEYS[2], ARGV[2])
put(KEYS[3], endpoint)
redis.call('SADD', KEYS[4], ARGV[2])
return {'created'}`,
  },
  // KEYS: endpoint, project endpoints, endpoints. ARGV: endpointId. Deletes a STOPPED or FAILED endpoint.
  // Answers {'deleted'}, {'missing'} or {'busy', state}.
  spg99DeleteEndpoint: {
    keys: 3,
    lua: `
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'stopped' and state ~= 'failed' then return {'busy', state} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return {'deleted'}`,
  },
  // KEYS: endpoint. ARGV: settings JSON. Answers the endpoint's fields, or nil when it is gone.
  spg99SetEndpointSettings: {
    keys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HSET', KEYS[1], 'settings', ARGV[1])
return redis.call('HGETALL', KEYS[1])`,
  },
  // KEYS: endpoint. ARGV: computeId, lastActivityAt, reportedAt, activeConnections. Records the current compute's
  // activity report.
  // Answers 'ok', 'not-current' (the compute is not the endpoint's) or 'missing'.
  spg99RecordActivity: {
    keys: 1,
    lua: `
local current = redis.call('HMGET', KEYS[1], 'state', 'currentComputeId')
if not current[1] then return 'missing' end
if current[2] ~= ARGV[1] or current[1] == 'stopped' or current[1] == 'failed' then return 'not-current' end
redis.call('HSET', KEYS[1], 'lastActivityAt', ARGV[2], 'activityReportedAt', ARGV[3], 'activeConnections', ARGV[4])
return 'ok'`,
  },
  // KEYS: branch, branch roles, role. ARGV: name, roleId, role JSON. Answers {'created'}, {'no-branch'} or
  // {'exists', roleId}.
  spg99CreateRole: {
    keys: 3,
    lua: `${LUA_HELPERS}
local role = decode(ARGV[3])
local branch = redis.call('HMGET', KEYS[1], 'branchId', 'deleting')
if not branch[1] or branch[2] == '1' then return {'no-branch'} end
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return {'exists', existing} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
put(KEYS[3], role)
return {'created'}`,
  },
  // KEYS: role. ARGV: verifier. Answers 1, or 0 when the role is gone.
  spg99SetRoleVerifier: {
    keys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'scramVerifier', ARGV[1])
return 1`,
  },
  // KEYS: role, branch roles. ARGV: role name, roleId. Answers 1, or 0 when the role was gone.
  spg99DeleteRole: {
    keys: 2,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
redis.call('DEL', KEYS[1])
return 1`,
  },
} as const;

/** The fields of an endpoint a lifecycle transition sets. */
export interface EndpointTransition {
  state: EndpointStateName;
  stateReason: string;
  stateChangedAt: number;
  currentComputeId?: string;
  writerTerm?: bigint;
  postgresAddress?: string;
}

/** What {@link Catalog.transitionEndpoint} answers: whether it applied, and the endpoint after it (or as it is). */
export type TransitionOutcome = { applied: boolean; endpoint: EndpointRecord } | null;

type ScriptName = keyof typeof SCRIPTS;
type ScriptRunner = (...args: string[]) => Promise<unknown>;

/** The outcome of a create that names must keep unique. */
export type CreateOutcome = { created: true } | { created: false; existingId: string };

/** Why a project cannot be deleted now. */
export type BeginDeleteOutcome = { ok: true } | { ok: false; endpointId: string; state: EndpointStateName } | null;

/** Raised when Redis holds a catalog of another schema version. */
export class CatalogSchemaError extends Error {
  override name = 'CatalogSchemaError';
}

/** The catalog on one Redis connection (a client made with `connectRedis` and `keyPrefix` unset). */
export class Catalog {
  private constructor(private readonly redis: Redis) {}

  /**
   * Opens the catalog: registers the scripts and checks (or, on an empty Redis, writes) the schema version.
   * The `redis` client must not have a keyPrefix of its own; the catalog's keys are prefixed here.
   */
  static async open(redis: Redis): Promise<Catalog> {
    for (const [name, script] of Object.entries(SCRIPTS)) {
      redis.defineCommand(name, { numberOfKeys: script.keys, lua: script.lua });
    }
    const versionKey = KEY_PREFIX + keys.schemaVersion();
    await redis.setnx(versionKey, SCHEMA_VERSION);
    const version = await redis.get(versionKey);
    if (version !== SCHEMA_VERSION) {
      throw new CatalogSchemaError(
        `the catalog in Redis has schema version ${version}, this control plane reads version ${SCHEMA_VERSION}: run a control plane of the matching version`,
      );
    }
    return new Catalog(redis);
  }

  private run(name: ScriptName, keyNames: string[], args: Array<string | number>): Promise<unknown> {
    const runner = (this.redis as unknown as Record<ScriptName, ScriptRunner>)[name];
    return runner.call(this.redis, ...keyNames.map((key) => KEY_PREFIX + key), ...args.map(String));
  }

  private async hash(key: string): Promise<Record<string, string> | null> {
    const fields = await this.redis.hgetall(KEY_PREFIX + key);
    return Object.keys(fields).length === 0 ? null : fields;
  }

  private async hashes(keyNames: string[]): Promise<Array<Record<string, string> | null>> {
    if (keyNames.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const key of keyNames) pipeline.hgetall(KEY_PREFIX + key);
    const results = (await pipeline.exec()) ?? [];
    return results.map(([error, fields]) => {
      if (error) throw error;
      const record = fields as Record<string, string>;
      return Object.keys(record).length === 0 ? null : record;
    });
  }

  // ---- Tenants and API keys ----

  /** Creates a tenant with its first key, unless a tenant of that name exists. */
  async createTenant(tenant: TenantRecord, key: ApiKeyRecord): Promise<CreateOutcome> {
    const result = (await this.run(
      'spg99CreateTenant',
      [keys.tenantNames(), keys.tenant(tenant.tenantId), keys.tenantKeys(tenant.tenantId), keys.apiKey(key.keyId), keys.apiKeySecret(key.secretHash)],
      [tenant.name, tenant.tenantId, JSON.stringify(encodeTenant(tenant)), key.keyId, JSON.stringify(encodeApiKey(key))],
    )) as [string, string];
    return result[0] === 'created' ? { created: true } : { created: false, existingId: result[1] };
  }

  async getTenant(tenantId: string): Promise<TenantRecord | null> {
    const fields = await this.hash(keys.tenant(tenantId));
    return fields && decodeTenant(fields);
  }

  /** Adds a key to a tenant; false when the tenant does not exist. */
  async createApiKey(key: ApiKeyRecord): Promise<boolean> {
    const result = await this.run(
      'spg99CreateApiKey',
      [keys.tenant(key.tenantId), keys.tenantKeys(key.tenantId), keys.apiKey(key.keyId), keys.apiKeySecret(key.secretHash)],
      [key.keyId, JSON.stringify(encodeApiKey(key))],
    );
    return result === 'created';
  }

  /** The key whose secret has this SHA-256 (hex), revoked or not, or null. */
  async apiKeyBySecretHash(secretHash: string): Promise<ApiKeyRecord | null> {
    const keyId = await this.redis.get(KEY_PREFIX + keys.apiKeySecret(secretHash));
    if (!keyId) return null;
    const fields = await this.hash(keys.apiKey(keyId));
    return fields && decodeApiKey(fields);
  }

  /** The tenant's keys, oldest first. */
  async listApiKeys(tenantId: string): Promise<ApiKeyRecord[]> {
    const keyIds = await this.redis.smembers(KEY_PREFIX + keys.tenantKeys(tenantId));
    const records = (await this.hashes(keyIds.map(keys.apiKey))).filter((fields) => fields !== null).map(decodeApiKey);
    return records.sort((a, b) => a.createdAt - b.createdAt || a.keyId.localeCompare(b.keyId));
  }

  /** Revokes the tenant's key (a revoked key stays revoked at its first time); null when it is not the tenant's. */
  async revokeApiKey(tenantId: string, keyId: string, now: number): Promise<ApiKeyRecord | null> {
    const flat = (await this.run('spg99RevokeApiKey', [keys.apiKey(keyId)], [tenantId, now])) as string[] | null;
    return flat ? decodeApiKey(pairsToObject(flat)) : null;
  }

  /** Records that a key was used at `now`, at most once per {@link LAST_USED_RESOLUTION_MS}. */
  async touchApiKey(keyId: string, now: number): Promise<void> {
    await this.run('spg99TouchApiKey', [keys.apiKey(keyId)], [now, LAST_USED_RESOLUTION_MS]);
  }

  // ---- Projects ----

  /**
   * Creates a project with its default branch, endpoint and role, unless the tenant has a project of that name
   * (or no longer exists: `existingId` is then empty).
   */
  async createProject(project: ProjectRecord, branch: BranchRecord, endpoint: EndpointRecord, role: RoleRecord): Promise<CreateOutcome> {
    const { tenantId, projectId } = project;
    const result = (await this.run(
      'spg99CreateProject',
      [
        keys.tenant(tenantId),
        keys.tenantProjectNames(tenantId),
        keys.tenantProjects(tenantId),
        keys.project(projectId),
        keys.projectBranches(projectId),
        keys.branch(branch.branchId),
        keys.projectEndpoints(projectId),
        keys.endpoint(endpoint.endpointId),
        keys.branchRoles(branch.branchId),
        keys.role(role.roleId),
        keys.projectBranchNames(projectId),
        keys.endpoints(),
      ],
      [
        project.name,
        projectId,
        project.createdAt,
        JSON.stringify(encodeProject(project)),
        branch.branchId,
        JSON.stringify(encodeBranch(branch)),
        endpoint.endpointId,
        JSON.stringify(encodeEndpoint(endpoint)),
        role.name,
        role.roleId,
        JSON.stringify(encodeRole(role)),
        branch.name,
      ],
    )) as string[];
    if (result[0] === 'created') return { created: true };
    return { created: false, existingId: result[1] ?? '' };
  }

  /** The id of the tenant's project of that name, or null. */
  async projectIdByName(tenantId: string, name: string): Promise<string | null> {
    return this.redis.hget(KEY_PREFIX + keys.tenantProjectNames(tenantId), name);
  }

  /** The tenant's project, deleting or not, or null (also when it is another tenant's). */
  async getProject(tenantId: string, projectId: string): Promise<ProjectRecord | null> {
    const fields = await this.hash(keys.project(projectId));
    if (!fields || fields.tenantId !== tenantId) return null;
    return decodeProject(fields);
  }

  /** The tenant's projects, oldest first, deleting ones included. */
  async listProjects(tenantId: string): Promise<ProjectRecord[]> {
    const projectIds = await this.redis.zrange(KEY_PREFIX + keys.tenantProjects(tenantId), 0, -1);
    return (await this.hashes(projectIds.map(keys.project))).filter((fields) => fields !== null).map(decodeProject);
  }

  /** The project's branches, oldest first. */
  async listBranches(projectId: string): Promise<BranchRecord[]> {
    const branchIds = await this.redis.smembers(KEY_PREFIX + keys.projectBranches(projectId));
    const records = (await this.hashes(branchIds.map(keys.branch))).filter((fields) => fields !== null).map(decodeBranch);
    return records.sort((a, b) => a.createdAt - b.createdAt || a.branchId.localeCompare(b.branchId));
  }

  /** An endpoint by id, whatever its tenant (for the platform's internal calls), or null. */
  async getEndpoint(endpointId: string): Promise<EndpointRecord | null> {
    const [fields] = await this.hashes([keys.endpoint(endpointId)]);
    return fields ? decodeEndpoint(fields) : null;
  }

  /**
   * Moves an endpoint to a new state atomically, only from one of `from` (and, when `computeId` is given, only
   * while that compute is its current one); null when the endpoint does not exist.
   */
  async transitionEndpoint(endpointId: string, from: EndpointStateName[], to: EndpointTransition, computeId = ''): Promise<TransitionOutcome> {
    const fields: Record<string, string> = { state: to.state, stateReason: to.stateReason, stateChangedAt: String(to.stateChangedAt) };
    if (to.currentComputeId !== undefined) fields.currentComputeId = to.currentComputeId;
    if (to.writerTerm !== undefined) fields.writerTerm = to.writerTerm.toString();
    if (to.postgresAddress !== undefined) fields.postgresAddress = to.postgresAddress;
    const result = (await this.run('spg99TransitionEndpoint', [keys.endpoint(endpointId)], [from.join(','), computeId, JSON.stringify(fields)])) as string[];
    if (result[0] === 'missing') return null;
    return { applied: result[0] === 'ok', endpoint: decodeEndpoint(pairsToObject(result.slice(1))) };
  }

  /** The roles of a branch. */
  async listRoles(branchId: string): Promise<RoleRecord[]> {
    const roleIds = await this.redis.hvals(KEY_PREFIX + keys.branchRoles(branchId));
    return (await this.hashes(roleIds.map(keys.role))).filter((fields) => fields !== null).map(decodeRole);
  }

  /** The project's endpoints, oldest first. */
  async listEndpoints(projectId: string): Promise<EndpointRecord[]> {
    const endpointIds = await this.redis.smembers(KEY_PREFIX + keys.projectEndpoints(projectId));
    const records = (await this.hashes(endpointIds.map(keys.endpoint))).filter((fields) => fields !== null).map(decodeEndpoint);
    return records.sort((a, b) => a.createdAt - b.createdAt || a.endpointId.localeCompare(b.endpointId));
  }

  // ---- Branches ----

  /** A branch by id, deleting or not, or null. The caller checks that its project is the tenant's. */
  async getBranch(branchId: string): Promise<BranchRecord | null> {
    const fields = await this.hash(keys.branch(branchId));
    return fields && decodeBranch(fields);
  }

  /**
   * Creates a branch with copies of roles (and, optionally, its endpoint) in one step. `no-project` when the project
   * is not the tenant's or is being deleted; `no-parent` when the parent branch is gone; `exists` when the project
   * has a branch of that name.
   */
  async createBranch(
    tenantId: string,
    branch: BranchRecord,
    roles: RoleRecord[],
    endpoint: EndpointRecord | null,
  ): Promise<{ outcome: 'created' | 'no-project' | 'no-parent' } | { outcome: 'exists'; existingId: string }> {
    const { projectId, branchId } = branch;
    const result = (await this.run(
      'spg99CreateBranch',
      [
        keys.project(projectId),
        keys.projectBranches(projectId),
        keys.projectBranchNames(projectId),
        keys.branch(branchId),
        keys.branch(branch.parentBranchId),
        keys.branchRoles(branchId),
        keys.projectEndpoints(projectId),
        keys.endpoint(endpoint?.endpointId ?? '-'),
        keys.endpoints(),
      ],
      [
        tenantId,
        branch.name,
        branchId,
        JSON.stringify(encodeBranch(branch)),
        JSON.stringify(roles.map((role) => ({ roleId: role.roleId, name: role.name, fields: encodeRole(role) }))),
        endpoint?.endpointId ?? '',
        endpoint ? JSON.stringify(encodeEndpoint(endpoint)) : '',
        KEY_PREFIX,
      ],
    )) as string[];
    if (result[0] === 'exists') return { outcome: 'exists', existingId: result[1] };
    return { outcome: result[0] as 'created' | 'no-project' | 'no-parent' };
  }

  /**
   * Marks a branch deleting (it disappears from the API) unless it is the default branch, has live children or an
   * endpoint with a compute.
   */
  async beginDeleteBranch(
    tenantId: string,
    branch: BranchRecord,
  ): Promise<{ outcome: 'ok' | 'default' | 'missing' } | { outcome: 'children'; childId: string } | { outcome: 'busy'; endpointId: string; state: EndpointStateName }> {
    const result = (await this.run(
      'spg99BeginDeleteBranch',
      [keys.project(branch.projectId), keys.projectBranches(branch.projectId), keys.branch(branch.branchId), keys.projectEndpoints(branch.projectId)],
      [tenantId, branch.branchId, KEY_PREFIX],
    )) as string[];
    if (result[0] === 'children') return { outcome: 'children', childId: result[1] };
    if (result[0] === 'busy') return { outcome: 'busy', endpointId: result[1], state: result[2] as EndpointStateName };
    return { outcome: result[0] as 'ok' | 'default' | 'missing' };
  }

  /** Removes a deleting branch with its roles and endpoints; false when it was gone already. */
  async finishDeleteBranch(branch: BranchRecord): Promise<boolean> {
    const { projectId, branchId } = branch;
    const removed = await this.run(
      'spg99FinishDeleteBranch',
      [keys.branch(branchId), keys.projectBranches(projectId), keys.projectBranchNames(projectId), keys.branchRoles(branchId), keys.projectEndpoints(projectId), keys.endpoints()],
      [branchId, KEY_PREFIX],
    );
    return removed === 1;
  }

  // ---- Endpoints ----

  /** Every endpoint id (for the reconciler). */
  async listAllEndpointIds(): Promise<string[]> {
    return this.redis.smembers(KEY_PREFIX + keys.endpoints());
  }

  /** Creates an endpoint on a branch that has none. */
  async createEndpoint(
    tenantId: string,
    endpoint: EndpointRecord,
  ): Promise<{ outcome: 'created' | 'no-project' | 'no-branch' } | { outcome: 'exists'; existingId: string }> {
    const { projectId, endpointId } = endpoint;
    const result = (await this.run(
      'spg99CreateEndpoint',
      [keys.project(projectId), keys.projectEndpoints(projectId), keys.endpoint(endpointId), keys.endpoints(), keys.branch(endpoint.branchId)],
      [tenantId, endpointId, JSON.stringify(encodeEndpoint(endpoint)), endpoint.branchId, KEY_PREFIX],
    )) as string[];
    if (result[0] === 'exists') return { outcome: 'exists', existingId: result[1] };
    return { outcome: result[0] as 'created' | 'no-project' | 'no-branch' };
  }

  /** Deletes a STOPPED or FAILED endpoint. */
  async deleteEndpoint(endpoint: EndpointRecord): Promise<{ outcome: 'deleted' | 'missing' } | { outcome: 'busy'; state: EndpointStateName }> {
    const result = (await this.run(
      'spg99DeleteEndpoint',
      [keys.endpoint(endpoint.endpointId), keys.projectEndpoints(endpoint.projectId), keys.endpoints()],
      [endpoint.endpointId],
    )) as string[];
    if (result[0] === 'busy') return { outcome: 'busy', state: result[1] as EndpointStateName };
    return { outcome: result[0] as 'deleted' | 'missing' };
  }

  /** Replaces an endpoint's settings; null when it is gone. */
  async setEndpointSettings(endpointId: string, settings: EndpointSettingsRecord): Promise<EndpointRecord | null> {
    const flat = (await this.run('spg99SetEndpointSettings', [keys.endpoint(endpointId)], [JSON.stringify(settings)])) as string[] | null;
    return flat ? decodeEndpoint(pairsToObject(flat)) : null;
  }

  /** Records an activity report of `computeId`, unless it is not (or no longer) the endpoint's compute. */
  async recordActivity(
    endpointId: string,
    computeId: string,
    report: { lastActivityAt: number; reportedAt: number; activeConnections: number },
  ): Promise<'ok' | 'not-current' | 'missing'> {
    const args = [computeId, report.lastActivityAt, report.reportedAt, report.activeConnections];
    return (await this.run('spg99RecordActivity', [keys.endpoint(endpointId)], args)) as 'ok' | 'not-current' | 'missing';
  }

  // ---- Roles ----

  /** A role by id, or null. */
  async getRole(roleId: string): Promise<RoleRecord | null> {
    const fields = await this.hash(keys.role(roleId));
    return fields && decodeRole(fields);
  }

  /** A role of a branch by its Postgres name, or null. */
  async roleByName(branchId: string, name: string): Promise<RoleRecord | null> {
    const roleId = await this.redis.hget(KEY_PREFIX + keys.branchRoles(branchId), name);
    return roleId ? this.getRole(roleId) : null;
  }

  /** Creates a role unless the branch has one of that name (or is gone). */
  async createRole(role: RoleRecord): Promise<{ outcome: 'created' | 'no-branch' } | { outcome: 'exists'; existingId: string }> {
    const result = (await this.run(
      'spg99CreateRole',
      [keys.branch(role.branchId), keys.branchRoles(role.branchId), keys.role(role.roleId)],
      [role.name, role.roleId, JSON.stringify(encodeRole(role))],
    )) as string[];
    if (result[0] === 'exists') return { outcome: 'exists', existingId: result[1] };
    return { outcome: result[0] as 'created' | 'no-branch' };
  }

  /** Replaces a role's verifier; false when the role is gone. */
  async setRoleVerifier(roleId: string, scramVerifier: string): Promise<boolean> {
    return (await this.run('spg99SetRoleVerifier', [keys.role(roleId)], [scramVerifier])) === 1;
  }

  /** Deletes a role; false when it was gone. */
  async deleteRole(role: RoleRecord): Promise<boolean> {
    return (await this.run('spg99DeleteRole', [keys.role(role.roleId), keys.branchRoles(role.branchId)], [role.name, role.roleId])) === 1;
  }

  /** Marks the tenant's project deleting (it disappears from the API) unless one of its endpoints has a compute. */
  async beginDeleteProject(tenantId: string, projectId: string): Promise<BeginDeleteOutcome> {
    const result = (await this.run('spg99BeginDeleteProject', [keys.project(projectId), keys.projectEndpoints(projectId)], [tenantId, KEY_PREFIX])) as
      | string[]
      | null;
    if (!result) return null;
    if (result[0] === 'ok') return { ok: true };
    return { ok: false, endpointId: result[1], state: result[2] as EndpointStateName };
  }

  /** Removes a deleting project with its branches, endpoints and roles; false when it was gone already. */
  async finishDeleteProject(tenantId: string, projectId: string): Promise<boolean> {
    const removed = await this.run(
      'spg99FinishDeleteProject',
      [
        keys.project(projectId),
        keys.tenantProjectNames(tenantId),
        keys.tenantProjects(tenantId),
        keys.projectBranches(projectId),
        keys.projectEndpoints(projectId),
        keys.projectBranchNames(projectId),
        keys.endpoints(),
      ],
      [tenantId, projectId, KEY_PREFIX],
    );
    return removed === 1;
  }
}

// ---- Records ⇄ hash fields (every value a string; JSON for nested settings) ----

function pairsToObject(flat: string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let index = 0; index + 1 < flat.length; index += 2) fields[flat[index]] = flat[index + 1];
  return fields;
}

function encodeTenant(record: TenantRecord): Record<string, string> {
  return { tenantId: record.tenantId, name: record.name, createdAt: String(record.createdAt) };
}

function decodeTenant(fields: Record<string, string>): TenantRecord {
  return { tenantId: fields.tenantId, name: fields.name, createdAt: Number(fields.createdAt) };
}

function encodeApiKey(record: ApiKeyRecord): Record<string, string> {
  return {
    keyId: record.keyId,
    tenantId: record.tenantId,
    name: record.name,
    scope: record.scope,
    secretPrefix: record.secretPrefix,
    secretHash: record.secretHash,
    createdAt: String(record.createdAt),
    lastUsedAt: String(record.lastUsedAt),
    revokedAt: String(record.revokedAt),
  };
}

function decodeApiKey(fields: Record<string, string>): ApiKeyRecord {
  return {
    keyId: fields.keyId,
    tenantId: fields.tenantId,
    name: fields.name,
    scope: fields.scope as Scope,
    secretPrefix: fields.secretPrefix,
    secretHash: fields.secretHash,
    createdAt: Number(fields.createdAt),
    lastUsedAt: Number(fields.lastUsedAt ?? 0),
    revokedAt: Number(fields.revokedAt ?? 0),
  };
}

function encodeProject(record: ProjectRecord): Record<string, string> {
  return {
    projectId: record.projectId,
    tenantId: record.tenantId,
    name: record.name,
    region: record.region,
    pgMajorVersion: String(record.pgMajorVersion),
    defaultEndpointSettings: JSON.stringify(record.defaultEndpointSettings),
    defaultBranchId: record.defaultBranchId,
    createdAt: String(record.createdAt),
    deleting: record.deleting ? '1' : '0',
  };
}

function decodeProject(fields: Record<string, string>): ProjectRecord {
  return {
    projectId: fields.projectId,
    tenantId: fields.tenantId,
    name: fields.name,
    region: fields.region,
    pgMajorVersion: Number(fields.pgMajorVersion),
    defaultEndpointSettings: JSON.parse(fields.defaultEndpointSettings) as EndpointSettingsRecord,
    defaultBranchId: fields.defaultBranchId,
    createdAt: Number(fields.createdAt),
    deleting: fields.deleting === '1',
  };
}

function encodeBranch(record: BranchRecord): Record<string, string> {
  return {
    branchId: record.branchId,
    projectId: record.projectId,
    name: record.name,
    parentBranchId: record.parentBranchId,
    parentLsn: record.parentLsn.toString(),
    isDefault: record.isDefault ? '1' : '0',
    createdAt: String(record.createdAt),
    deleting: record.deleting ? '1' : '0',
  };
}

function decodeBranch(fields: Record<string, string>): BranchRecord {
  return {
    branchId: fields.branchId,
    projectId: fields.projectId,
    name: fields.name,
    parentBranchId: fields.parentBranchId,
    parentLsn: BigInt(fields.parentLsn),
    isDefault: fields.isDefault === '1',
    createdAt: Number(fields.createdAt),
    deleting: fields.deleting === '1',
  };
}

function encodeEndpoint(record: EndpointRecord): Record<string, string> {
  return {
    endpointId: record.endpointId,
    projectId: record.projectId,
    branchId: record.branchId,
    settings: JSON.stringify(record.settings),
    state: record.state,
    stateReason: record.stateReason,
    stateChangedAt: String(record.stateChangedAt),
    currentComputeId: record.currentComputeId,
    writerTerm: record.writerTerm.toString(),
    postgresAddress: record.postgresAddress ?? '',
    createdAt: String(record.createdAt),
  };
}

function decodeEndpoint(fields: Record<string, string>): EndpointRecord {
  return {
    endpointId: fields.endpointId,
    projectId: fields.projectId,
    branchId: fields.branchId,
    settings: JSON.parse(fields.settings) as EndpointSettingsRecord,
    state: fields.state as EndpointStateName,
    stateReason: fields.stateReason,
    stateChangedAt: Number(fields.stateChangedAt),
    currentComputeId: fields.currentComputeId,
    writerTerm: BigInt(fields.writerTerm),
    postgresAddress: fields.postgresAddress ?? '',
    createdAt: Number(fields.createdAt),
    lastActivityAt: Number(fields.lastActivityAt ?? 0),
    activityReportedAt: Number(fields.activityReportedAt ?? 0),
    activeConnections: Number(fields.activeConnections ?? 0),
  };
}

function encodeRole(record: RoleRecord): Record<string, string> {
  return {
    roleId: record.roleId,
    branchId: record.branchId,
    name: record.name,
    scramVerifier: record.scramVerifier,
    createdAt: String(record.createdAt),
  };
}

function decodeRole(fields: Record<string, string>): RoleRecord {
  return {
    roleId: fields.roleId,
    branchId: fields.branchId,
    name: fields.name,
    scramVerifier: fields.scramVerifier,
    createdAt: Number(fields.createdAt),
  };
}

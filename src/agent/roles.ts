/**
 * The users' Postgres roles on a compute and how they authenticate. The compute gets SCRAM-SHA-256 verifiers, never
 * passwords: Postgres stores a verifier given as a role's password as is. Only the agent's superuser `postgres`
 * logs in without a password, and only over the private Unix socket as the agent's OS user (see
 * {@link writeHbaFile}); every role must prove its password with SCRAM over TCP.
 *
 * Users' roles are members of {@link USERS_GROUP_ROLE}, which may create objects in the `public` schema of the
 * database `postgres` (since Postgres 15 only that database's owner may): the project's role can create its tables
 * there. A membership, unlike a privilege granted to the role itself, ends with DROP ROLE, so it never blocks one.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DatabaseError, escapeIdentifier, escapeLiteral, type ClientBase } from 'pg';
import { postgresOsUser } from '../lib/pg/os-user.js';
import { rolesFromJson, type RoleChanges, type RoleVerifier } from './model.js';

/** The group every users' role belongs to (NOLOGIN; a name users cannot take: spg99_ is reserved). */
export const USERS_GROUP_ROLE = 'spg99_users';

/** A role to drop still owns objects or holds privileges (Postgres' 2BP01); nothing of the request was applied. */
export class RoleInUseError extends Error {
  override readonly name = 'RoleInUseError';

  constructor(
    readonly roleName: string,
    /** Postgres' list of what depends on the role ("owner of table t", "privileges for schema s"). */
    readonly dependents: string,
  ) {
    super(
      `role ${roleName} cannot be dropped: it still owns objects or holds privileges (${dependents || 'Postgres named none'}). ` +
        `Reassign or drop them first (REASSIGN OWNED BY ${roleName} TO <role>; DROP OWNED BY ${roleName}; in every database), then drop the role again.`,
    );
  }
}

/** What {@link applyRoles} did. */
export interface AppliedRoles {
  created: string[];
  updated: string[];
  /** Roles that existed and were dropped. */
  dropped: string[];
  /** Roles that lost their login (an exclusive change: the platform no longer has them). */
  disabled: string[];
}

/** Reads the roles file the provisioner wrote (mode 0600); throws an Error naming the file and what is wrong in it. */
export function readRolesFile(file: string): RoleVerifier[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`cannot read the roles file ${file}: ${(error as Error).message}`);
  }
  return rolesFromJson(text, `the roles file ${file}`);
}

/**
 * Creates (LOGIN CREATEDB CREATEROLE, the verifier as password), updates (the verifier only) and drops roles in one
 * transaction: all or nothing. Each statement is a commit that waits for a majority of safekeepers like any other.
 *
 * @throws RoleInUseError when a role to drop owns objects or holds privileges.
 */
export async function applyRoles(client: ClientBase, changes: RoleChanges): Promise<AppliedRoles> {
  const applied: AppliedRoles = { created: [], updated: [], dropped: [], disabled: [] };
  const exists = async (name: string) => ((await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [name])).rowCount ?? 0) > 0;
  await client.query('BEGIN');
  try {
    if (changes.upsert.length > 0) await ensureUsersGroup(client);
    const group = escapeIdentifier(USERS_GROUP_ROLE);
    for (const { roleName, scramVerifier } of changes.upsert) {
      const role = escapeIdentifier(roleName);
      if (await exists(roleName)) {
        // LOGIN again too: a role the platform deleted while no compute ran was left NOLOGIN (see `exclusive`).
        await client.query(`ALTER ROLE ${role} LOGIN PASSWORD ${escapeLiteral(scramVerifier)}`);
        applied.updated.push(roleName);
      } else {
        await client.query(`CREATE ROLE ${role} LOGIN CREATEDB CREATEROLE PASSWORD ${escapeLiteral(scramVerifier)}`);
        applied.created.push(roleName);
      }
      const member = await client.query('SELECT 1 FROM pg_auth_members WHERE roleid = $1::regrole AND member = $2::regrole', [USERS_GROUP_ROLE, role]);
      if ((member.rowCount ?? 0) === 0) await client.query(`GRANT ${group} TO ${role}`);
    }
    if (changes.exclusive) {
      const keep = changes.upsert.map((role) => role.roleName);
      const stale = await client.query<{ rolname: string }>(
        `SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid
          WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1) AND r.rolcanlogin AND NOT r.rolsuper AND NOT (r.rolname = ANY($2))`,
        [USERS_GROUP_ROLE, keep],
      );
      for (const { rolname } of stale.rows) {
        // Not dropped: it may own objects; it just can no longer log in with a password the platform forgot.
        await client.query(`ALTER ROLE ${escapeIdentifier(rolname)} NOLOGIN PASSWORD NULL`);
        applied.disabled.push(rolname);
      }
    }
    for (const roleName of changes.drop) {
      if (!(await exists(roleName))) continue;
      try {
        await client.query(`DROP ROLE ${escapeIdentifier(roleName)}`);
      } catch (error) {
        if (error instanceof DatabaseError && error.code === '2BP01') throw new RoleInUseError(roleName, (error.detail ?? '').replace(/\n/g, '; '));
        throw error;
      }
      applied.dropped.push(roleName);
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
  return applied;
}

/** Creates {@link USERS_GROUP_ROLE} and lets it create in `public` (when that schema exists), unless done already. */
async function ensureUsersGroup(client: ClientBase): Promise<void> {
  const group = escapeIdentifier(USERS_GROUP_ROLE);
  const found = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [USERS_GROUP_ROLE]);
  if ((found.rowCount ?? 0) === 0) await client.query(`CREATE ROLE ${group} NOLOGIN`);
  const schema = await client.query<{ granted: boolean }>(
    `SELECT has_schema_privilege($1, oid, 'CREATE') AS granted FROM pg_namespace WHERE nspname = 'public'`,
    [USERS_GROUP_ROLE],
  );
  // A database whose public schema was dropped or already grants it needs nothing.
  if (schema.rows[0] && !schema.rows[0].granted) await client.query(`GRANT CREATE ON SCHEMA public TO ${group}`);
}

/** The pg_ident.conf map that lets the agent's OS user log in as `postgres` over the Unix socket. */
export const AGENT_IDENT_MAP = 'spg99_agent';

/**
 * Writes the data directory's pg_hba.conf and pg_ident.conf (at every start: a basebackup brings the pageserver's).
 * Nothing is trusted: the superuser `postgres` logs in only over the Unix socket, by peer authentication mapped from
 * the agent's OS user (the socket's directory is 0700 and owned by Postgres' OS user, so no other local user even
 * reaches it); over TCP every role, the superuser included, must prove a password with SCRAM, and `postgres` has
 * none, so a local user who can reach the port gets no superuser (and no shell through COPY ... FROM PROGRAM).
 * Postgres reads both files at start.
 */
export function writeHbaFile(dataDir: string, agentOsUser = os.userInfo().username): void {
  const hba = [
    '# Written by the SPG99 agent at every start: edits here are lost.',
    '# TYPE  DATABASE     USER      ADDRESS        METHOD',
    `local   all          postgres                 peer map=${AGENT_IDENT_MAP}`,
    `local   replication  postgres                 peer map=${AGENT_IDENT_MAP}`,
    'local   all          all                      scram-sha-256',
    '# Replication is the walproposer\'s alone, over the socket.',
    'host    replication  all       all            reject',
    '# Everyone over TCP proves a password with SCRAM; the superuser has no password, so it never logs in here.',
    'host    all          all       all            scram-sha-256',
    '',
  ].join('\n');
  const ident = [
    '# Written by the SPG99 agent at every start: edits here are lost.',
    '# MAPNAME        SYSTEM-USERNAME  PG-USERNAME',
    `${AGENT_IDENT_MAP}    ${agentOsUser}    postgres`,
    '',
  ].join('\n');
  writePrivate(path.join(dataDir, 'pg_hba.conf'), hba);
  writePrivate(path.join(dataDir, 'pg_ident.conf'), ident);
}

/** Replaces `file` with `text`, 0600 and owned by Postgres' OS user. */
function writePrivate(file: string, text: string): void {
  const temporary = `${file}.tmp`;
  fs.writeFileSync(temporary, text, { mode: 0o600 });
  const user = postgresOsUser();
  if (user.uid !== undefined && user.gid !== undefined) fs.chownSync(temporary, user.uid, user.gid);
  fs.renameSync(temporary, file);
}

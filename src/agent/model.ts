/**
 * The agent's edge: ComputeService messages and the roles file turned into validated domain values, so the code that
 * runs SQL never sees a missing field, an unchecked name or a text that is not a verifier (Postgres would take such a
 * text as a plaintext password and hash it: the role's real password would then be that text).
 */
import type { ApplyRolesRequest } from '../../gen/spg99/compute/v1/compute.js';
import { invalidArgument } from '../lib/grpc/errors.js';
import { parseVerifier } from '../lib/scram.js';

/** A role the agent creates or updates, with its SCRAM-SHA-256 verifier in Postgres' format. */
export interface RoleVerifier {
  roleName: string;
  scramVerifier: string;
}

/** What ApplyRoles changes. */
export interface RoleChanges {
  upsert: RoleVerifier[];
  drop: string[];
  /**
   * The upserts are all the platform's roles (the compute's spec at start): any other member of the users' group
   * that can log in lost its place on the platform while no compute ran, and loses its login (and verifier).
   */
  exclusive?: boolean;
}

/** Postgres' NAMEDATALEN - 1. */
const MAX_ROLE_NAME_LENGTH = 63;
/**
 * Names the platform never hands to users: the agent's superuser, the names Postgres reserves in role
 * specifications, and the prefixes of Postgres' predefined roles and of the platform's own.
 */
const RESERVED_ROLE_NAMES = new Set(['postgres', 'public', 'none', 'current_user', 'session_user', 'current_role']);

/** Endpoint ids as the control plane makes them: `ep-` and lowercase letters or digits (a DNS label). */
export const ENDPOINT_ID_PATTERN = /^ep-[a-z0-9]{1,60}$/;

/** Why a role name is not acceptable, or null when it is (the control plane's rule, plus the agent's reserved names). */
export function roleNameProblem(name: unknown): string | null {
  if (typeof name !== 'string' || name === '') return 'is required: a Postgres role name (lowercase letters, digits and _)';
  if (name.length > MAX_ROLE_NAME_LENGTH) return `is ${name.length} characters long: at most ${MAX_ROLE_NAME_LENGTH} are allowed`;
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) return `${JSON.stringify(name)} is not a role name: lowercase letters, digits and '_', not starting with a digit`;
  if (RESERVED_ROLE_NAMES.has(name) || name.startsWith('pg_') || name.startsWith('spg99_')) {
    return `${JSON.stringify(name)} is reserved (postgres, public, none, current_user, session_user, current_role, pg_*, spg99_*): choose another name`;
  }
  return null;
}

/** Why a text is not a SCRAM-SHA-256 verifier in Postgres' format, or null when it is. */
export function verifierProblem(verifier: unknown): string | null {
  if (typeof verifier !== 'string' || verifier === '') {
    return 'is required: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (the compute never takes a password)';
  }
  try {
    parseVerifier(verifier);
    return null;
  } catch (error) {
    return `is not a SCRAM-SHA-256 verifier (${(error as Error).message}); send the verifier (createVerifier), never the password`;
  }
}

/** Checks an ApplyRoles request: INVALID_ARGUMENT naming the field that is wrong. */
export function roleChangesFromRequest(request: ApplyRolesRequest): RoleChanges {
  const seen = new Map<string, string>();
  const claim = (name: string, field: string) => {
    const earlier = seen.get(name);
    if (earlier) throw invalidArgument(`${field} names role ${JSON.stringify(name)} again (also ${earlier}): list each role once`);
    seen.set(name, field);
  };
  const upsert = request.upsert.map((role, index) => {
    const nameProblem = roleNameProblem(role.roleName);
    if (nameProblem) throw invalidArgument(`upsert[${index}].role_name ${nameProblem}`);
    const problem = verifierProblem(role.scramVerifier);
    if (problem) throw invalidArgument(`upsert[${index}].scram_verifier ${problem}`);
    claim(role.roleName, `upsert[${index}].role_name`);
    return { roleName: role.roleName, scramVerifier: role.scramVerifier };
  });
  const drop = request.dropRoleNames.map((name, index) => {
    const problem = roleNameProblem(name);
    if (problem) throw invalidArgument(`drop_role_names[${index}] ${problem}`);
    claim(name, `drop_role_names[${index}]`);
    return name;
  });
  return { upsert, drop };
}

/**
 * Parses the roles file's JSON (`[{"roleName": "...", "scramVerifier": "SCRAM-SHA-256$..."}]`); throws an Error
 * naming the entry and the field that is wrong.
 */
export function rolesFromJson(text: string, source: string): RoleVerifier[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new Error(`${source} is not JSON (${(error as Error).message}): expected [{"roleName": "...", "scramVerifier": "SCRAM-SHA-256$..."}]`);
  }
  if (!Array.isArray(parsed)) throw new Error(`${source} must hold a JSON array of {"roleName", "scramVerifier"} objects`);
  const names = new Set<string>();
  return parsed.map((entry: unknown, index) => {
    const role = (entry ?? {}) as Record<string, unknown>;
    const nameProblem = roleNameProblem(role.roleName);
    if (nameProblem) throw new Error(`${source}: entry ${index}: roleName ${nameProblem}`);
    const problem = verifierProblem(role.scramVerifier);
    if (problem) throw new Error(`${source}: entry ${index}: scramVerifier ${problem}`);
    const roleName = role.roleName as string;
    if (names.has(roleName)) throw new Error(`${source}: entry ${index}: role ${roleName} is listed twice`);
    names.add(roleName);
    return { roleName, scramVerifier: role.scramVerifier as string };
  });
}

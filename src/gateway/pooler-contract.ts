/**
 * What the transaction pooler refuses (docs/pooler.md, "Session state"): statements whose effect outlives the
 * transaction on a server connection the client will not have next time. Refused with a clear error instead of
 * silently misbehaving (a LISTEN that never delivers, a cursor or temporary table "does not exist" later, a session
 * lock held by whichever client gets the connection next).
 */

/** Why a statement is refused in transaction mode, and what to do instead. */
export interface PoolerRefusal {
  message: string;
  hint: string;
}

const SESSION_HINT = 'Connect to the endpoint without -pooler (a session of your own) for this.';

const RULES: Array<{ pattern: RegExp; unless?: RegExp; refusal: PoolerRefusal }> = [
  {
    pattern: /(^|;)\s*listen\b/i,
    refusal: { message: 'LISTEN is not supported in transaction pooling mode: notifications go to a session, and a pooled client has none between its transactions', hint: SESSION_HINT },
  },
  {
    pattern: /(^|;)\s*declare\b[^;]*\bwith\s+hold\b/i,
    refusal: { message: 'cursors WITH HOLD are not supported in transaction pooling mode: the cursor would stay on a server connection the client does not keep', hint: `Use a cursor without HOLD inside one transaction. ${SESSION_HINT}` },
  },
  {
    pattern: /\bpg_(try_)?advisory_lock(_shared)?\s*\(/i,
    refusal: { message: 'session-level advisory locks are not supported in transaction pooling mode: the lock would stay with a server connection other clients get next', hint: `Use pg_advisory_xact_lock (released at the end of the transaction). ${SESSION_HINT}` },
  },
  {
    pattern: /(^|;)\s*create\s+(global\s+|local\s+)?temp(orary)?\s+table\b/i,
    unless: /\bon\s+commit\s+drop\b/i,
    refusal: { message: 'temporary tables that outlive their transaction are not supported in transaction pooling mode: the next transaction may run on another server connection', hint: `Create it with ON COMMIT DROP inside the transaction that uses it. ${SESSION_HINT}` },
  },
];

/** The refusal of `sql` in transaction mode, or null when it may run. */
export function poolerRefusal(sql: string): PoolerRefusal | null {
  for (const rule of RULES) {
    if (rule.pattern.test(sql) && !(rule.unless?.test(sql) ?? false)) return rule.refusal;
  }
  return null;
}

/**
 * A statement that makes Postgres itself raise the refusal (SQLSTATE 0A000, feature_not_supported): the error then
 * takes the place of the statement in every respect (a transaction block is aborted, a pipeline skips to its Sync).
 */
export function refusalStatement(refusal: PoolerRefusal): string {
  const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
  return `DO $spg99_refusal$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = ${literal(refusal.message)}, HINT = ${literal(refusal.hint)}; END $spg99_refusal$`;
}

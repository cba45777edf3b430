/**
 * Postgres refuses to run as root. When this process is root (CI, containers), Postgres runs as an unprivileged
 * OS user: `spg99` when it exists, else `postgres`, else `nobody`; its directories are handed to that user.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

/** The identity a Postgres process runs as (undefined uid/gid: as this process). */
export interface OsUser {
  name: string;
  uid?: number;
  gid?: number;
}

let cached: OsUser | null = null;

/** The user Postgres runs as. */
export function postgresOsUser(): OsUser {
  if (cached) return cached;
  if (process.getuid?.() !== 0) {
    cached = { name: process.env.USER ?? 'current user' };
    return cached;
  }
  for (const name of [process.env.SPG99_POSTGRES_OS_USER, 'spg99', 'postgres', 'nobody']) {
    if (!name) continue;
    try {
      const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      cached = { name, uid, gid };
      return cached;
    } catch {
      // Not on this machine: try the next.
    }
  }
  throw new Error('running as root and no unprivileged user (spg99, postgres, nobody) exists: create one with `useradd spg99`');
}

/**
 * Makes `directory` (created if missing) owned by the Postgres user, and every ancestor traversable by it, so a
 * root-created temporary directory can hold a data directory.
 */
export function prepareDirectoryFor(user: OsUser, directory: string, mode = 0o700): void {
  fs.mkdirSync(directory, { recursive: true, mode });
  if (user.uid === undefined || user.gid === undefined) return;
  chownRecursive(directory, user.uid, user.gid);
  fs.chmodSync(directory, mode);
  let current = path.dirname(path.resolve(directory));
  for (;;) {
    const stat = fs.statSync(current);
    if ((stat.mode & 0o001) === 0) fs.chmodSync(current, stat.mode | 0o011);
    const parent = path.dirname(current);
    if (parent === current) break;
    current = parent;
  }
}

function chownRecursive(target: string, uid: number, gid: number): void {
  fs.lchownSync(target, uid, gid);
  const stat = fs.lstatSync(target);
  if (!stat.isDirectory()) return;
  for (const entry of fs.readdirSync(target)) chownRecursive(path.join(target, entry), uid, gid);
}

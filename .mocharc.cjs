/*
 * The mocha configuration of `make test` and `make test-e2e`. The suite is mostly waiting: real Postgres, safekeepers and timers (lease
 * expiry, idle suspend, backoff). Two workers run test files side by side, which halves the wall time on a 2-core
 * machine. Files are handed out in the order below, the longest first, so the last minutes are not one long file
 * running alone. SPG99_TEST_JOBS=1 runs them one at a time (the order of a plain mocha run).
 *
 * SPG99_TEST_SUITE chooses the files: `core` (make test: unit, simulation and the integration tests of each
 * component and of the platform's paths, under 20 minutes on two cores), `e2e` (make test-e2e: whole-platform runs
 * of several minutes each: make up as a user runs it, chaos, thin computes, handoffs and the autoscaler, the SDK's
 * packed tarball, the console in a browser, Prometheus) or `all` (the default of a bare mocha run).
 */
const fs = require('node:fs');
const path = require('node:path');

/** The slowest files, longest first (measured with SPG99_TEST_JOBS=1; refresh when the suite changes a lot). */
const slowest = [
  'integration/chaos.test.js',
  'integration/thin-compute.test.js',
  'integration/handoff.test.js',
  'integration/sdk-package.test.js',
  'integration/console.test.js',
  'integration/gateway-robustness.test.js',
  'integration/autoscaler.test.js',
  'integration/gateway-compat.test.js',
  'integration/quickstart.test.js',
  'integration/connection-strings.test.js',
  'integration/safekeeper-outage.test.js',
  'integration/local-cluster.test.js',
  'integration/pageserver.test.js',
  'integration/safekeeper.test.js',
  'integration/agent-control-plane.test.js',
  'integration/cli.test.js',
  'integration/writer-leases.test.js',
  'integration/endpoint-lifecycle.test.js',
].map((file) => path.join('dist/test', file));

/** The whole-platform files of `make test-e2e`. */
const e2e = [
  'integration/chaos.test.js',
  'integration/thin-compute.test.js',
  'integration/handoff.test.js',
  'integration/autoscaler.test.js',
  'integration/sdk-package.test.js',
  'integration/console.test.js',
  'integration/observability.test.js',
  'integration/quickstart.test.js',
  'integration/local-cluster.test.js',
].map((file) => path.join('dist/test', file));

function testFiles(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) return testFiles(file);
    return entry.name.endsWith('.test.js') ? [file] : [];
  });
}

const suite = process.env.SPG99_TEST_SUITE ?? 'all';
if (!['core', 'e2e', 'all'].includes(suite)) throw new Error(`SPG99_TEST_SUITE=${suite}: say core, e2e or all`);
const all = testFiles('dist/test')
  .sort()
  .filter((file) => suite === 'all' || (suite === 'e2e') === e2e.includes(file));
const jobs = Number(process.env.SPG99_TEST_JOBS ?? 2);

module.exports = {
  spec: [...slowest.filter((file) => all.includes(file)), ...all.filter((file) => !slowest.includes(file))],
  timeout: 120000,
  reporter: 'spec',
  exit: true,
  parallel: jobs > 1,
  jobs,
};

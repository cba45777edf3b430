/**
 * The README's quickstart as a newcomer types it: `make up`, a project from the CLI, psql through the gateway, a
 * stopped endpoint woken by the next query (a cold start), a branch at a noted time that shows the old rows, and
 * `make down`. The commands are read from the README's fenced block and must be exactly the {@link STEPS} below, so
 * the two cannot drift apart; each runs through bash with only the placeholders filled in, `make up|down` run as
 * `node dist/scripts/local-cluster.js up|down` (make would rebuild dist/), and the platform lives in a temporary
 * `SPG99_HOME` on free ports. The psql lines use the connection strings the platform prints, so nothing in them is
 * rewritten: they name the gateway's port and the CA as they are, and 127.0.0.1 with the endpoint in `options`
 * (this machine's resolver knows no `ep-….spg99.localhost`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { freePort } from '../../src/lib/net.js';
import { isAlive } from '../../src/lib/process.js';
import { REPO_ROOT, TempDir } from '../harness/process.js';

const README = path.join(REPO_ROOT, 'README.md');
const LOCAL_CLUSTER = path.join(REPO_ROOT, 'dist', 'scripts', 'local-cluster.js');

/** The psql command of the README with the string `spg99 connection-string` prints for `endpoint` (a placeholder). */
function psql(endpoint: string, sql: string): string {
  return `psql "$(node dist/cmd/spg99.js connection-string ${endpoint})" -c "${sql}"`;
}

/** The environment of a user's shell: no key, password or psql settings from the test runner's. */
function userEnvironment(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (/^(SPG99_|PG)/.test(name)) delete env[name];
  return { ...env, PSQLRC: '/dev/null', PGCONNECT_TIMEOUT: '120' };
}

/** What the steps learn from the outputs, by the README's placeholder. */
type Values = Map<string, string>;

interface Step {
  /** The command exactly as the README writes it (comments stripped). */
  command: string;
  /** Checks what a user would see, and notes what later steps need. */
  check(output: string, values: Values): void | Promise<void>;
}

/** A psql result table: the rows as `id|name`, checking the row count line. */
function rows(output: string): string[] {
  const lines = output.trimEnd().split('\n');
  const found = lines.filter((line) => /^\s*\d+\s*\|/.test(line)).map((line) => line.split('|').map((cell) => cell.trim()).join('|'));
  expect(lines.at(-1), output).to.equal(`(${found.length} row${found.length === 1 ? '' : 's'})`);
  return found;
}

/** The first row of a CLI table as heading → cell (cells are separated by two or more spaces). */
function tableRow(table: string): Record<string, string> {
  const [header, first] = table.trim().split('\n');
  const headings = header.split(/\s{2,}/);
  const cells = first.split(/\s{2,}/);
  return Object.fromEntries(headings.map((heading, index) => [heading, cells[index] ?? '']));
}

/** A `Field: value` line of a CLI `create` output. */
function field(output: string, name: string): string {
  const match = new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(output);
  expect(match, `no "${name}:" line in:\n${output}`).to.not.equal(null);
  return match![1];
}

const STEPS: Step[] = [
  {
    command: 'make up',
    async check(output, values) {
      expect(output).to.contain('SPG99 is up.');
      const line = output.split('\n').find((text) => text.startsWith('SPG99_UP_JSON '));
      expect(line, output).to.not.equal(undefined);
      const up = JSON.parse(line!.slice('SPG99_UP_JSON '.length)) as { apiKey: string; demo: { connectionUri: string } };
      // The user copies the export line; the machine line carries the same key.
      expect(output).to.contain(`export SPG99_API_KEY=${up.apiKey}`);
      values.set('<API key>', up.apiKey);
      // The psql command it prints works as typed: verified TLS, on a resolver that knows no endpoint names.
      const connect = /^ {2}Connect: +(psql "[^"]+")$/m.exec(output);
      expect(connect, output).to.not.equal(null);
      expect(connect![1]).to.equal(`psql "${up.demo.connectionUri}"`).and.to.contain('sslmode=verify-full');
      const typed = await bash(`${connect![1]} -tAc "SELECT current_user"`, userEnvironment());
      expect(typed.code, `${connect![1]}\n${typed.stdout}${typed.stderr}`).to.equal(0);
      expect(typed.stdout).to.equal('owner\n');
    },
  },
  {
    command: 'make status',
    async check(output) {
      const components = ['redis', 'safekeeper-1', 'safekeeper-2', 'safekeeper-3', 'pageserver', 'provisioner', 'control-plane', 'gateway'];
      for (const name of components) {
        expect(output, `${name} answers its health check`).to.match(new RegExp(`^${name}\\s+\\d+\\s+ok \\((PONG|SERVING)\\)\\s+\\S+`, 'm'));
      }
      expect(output, 'the console answers its health check').to.match(/^console\s+\d+\s+ok \(HTTP 200\)\s+http:\/\/127\.0\.0\.1:\d+\//m);
      // Every component but Redis names its Prometheus endpoint, which answers (the console too).
      const metrics = output.match(/http:\/\/127\.0\.0\.1:\d+\/metrics/g) ?? [];
      expect(metrics, output).to.have.length(components.length);
      for (const url of metrics) {
        const text = await (await fetch(url, { signal: AbortSignal.timeout(10_000) })).text();
        expect(text, url).to.match(/^# TYPE spg99_\w+ /m);
      }
      expect(output).to.match(/^demo endpoint ep-\S+ RUNNING: /m);
    },
  },
  { command: 'export SPG99_API_KEY=<API key>', check() {} },
  {
    command: 'node dist/cmd/spg99.js projects create shop',
    check(output, values) {
      const project = /^(pj-\S+) \(shop, /.exec(field(output, 'Project'));
      expect(project, output).to.not.equal(null);
      const endpoint = /^(ep-\S+) \(STOPPED; /.exec(field(output, 'Endpoint'));
      expect(endpoint, output).to.not.equal(null);
      values.set('<pj-…>', project![1]);
      values.set('<ep-…>', endpoint![1]);
      values.set('<password>', field(output, 'Password'));
      values.set('<connection URI>', field(output, 'Connection URI'));
    },
  },
  {
    command: `psql "<connection URI>" -c "CREATE TABLE items (id int, name text); INSERT INTO items VALUES (1, 'apple'), (2, 'pear')"`,
    check(output) {
      expect(output).to.equal('CREATE TABLE\nINSERT 0 2\n');
    },
  },
  {
    command: 'date -u +%FT%T.%3NZ',
    check(output, values) {
      const time = output.trim();
      expect(time).to.match(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      values.set('<time>', time);
    },
  },
  { command: 'export PGPASSWORD=<password>', check() {} },
  {
    command: psql('<ep-…>', "INSERT INTO items VALUES (3, 'plum')"),
    check(output) {
      expect(output).to.equal('INSERT 0 1\n');
    },
  },
  {
    command: 'node dist/cmd/spg99.js endpoints stop <ep-…> --wait',
    check(output, values) {
      expect(tableRow(output)).to.deep.include({ ID: values.get('<ep-…>'), STATE: 'STOPPED' });
    },
  },
  {
    command: psql('<ep-…>', 'SELECT * FROM items ORDER BY id'),
    check(output) {
      expect(rows(output)).to.deep.equal(['1|apple', '2|pear', '3|plum']);
    },
  },
  {
    command: 'node dist/cmd/spg99.js branches create --project <pj-…> --name before --at <time> --endpoint',
    check(output, values) {
      const [branchTable, endpointTable] = output.trim().split('\n\n');
      const branch = tableRow(branchTable);
      expect(branch).to.include({ NAME: 'before', DEFAULT: 'no' });
      const endpoint = tableRow(endpointTable);
      expect(endpoint).to.include({ BRANCH: branch.ID, STATE: 'STOPPED' });
      expect(endpoint.ID).to.match(/^ep-/);
      values.set('<ep-… of before>', endpoint.ID);
    },
  },
  {
    command: psql('<ep-… of before>', 'SELECT * FROM items ORDER BY id'),
    check(output) {
      expect(rows(output), 'the branch at the noted time').to.deep.equal(['1|apple', '2|pear']);
    },
  },
  {
    command: 'make down',
    check(output) {
      expect(output).to.match(/^stopped gateway \(pid \d+\)$/m);
      expect(output).to.match(/^stopped redis \(pid \d+\)$/m);
    },
  },
];

/** Drops a `# comment` that is not inside quotes. */
function stripComment(line: string): string {
  let quote: string | null = null;
  for (let index = 0; index < line.length; index += 1) {
    const char = line[index];
    if (quote) {
      if (char === quote) quote = null;
    } else if (char === '"' || char === "'") {
      quote = char;
    } else if (char === '#' && (index === 0 || /\s/.test(line[index - 1]))) {
      return line.slice(0, index).trimEnd();
    }
  }
  return line.trimEnd();
}

/** The commands of the fenced `sh` block that follows the README's "**Quickstart**" paragraph. */
function readmeQuickstart(): string[] {
  const text = fs.readFileSync(README, 'utf8');
  const start = text.indexOf('**Quickstart**');
  expect(start, 'README.md has a **Quickstart** paragraph').to.be.greaterThan(-1);
  const block = /```sh\n([\s\S]*?)\n```/.exec(text.slice(start));
  expect(block, 'a ```sh block after **Quickstart** in README.md').to.not.equal(null);
  return block![1].split('\n').map(stripComment).filter((line) => line.length > 0);
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `command` through bash in the repository, as a user's shell would. */
function bash(command: string, env: NodeJS.ProcessEnv): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', command], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - started }));
  });
}


/** Processes whose command line names `directory` (the platform's, and the computes' agents and Postgres). */
function processesUnder(directory: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(directory)) pids.push(Number(entry));
    } catch {
      // It exited meanwhile.
    }
  }
  return pids;
}

/** ERROR and FATAL lines of the JSON logs under `directory`. */
function errorLines(directory: string): string[] {
  const found: string[] = [];
  const visit = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) visit(file);
      else if (entry.name.endsWith('.log')) {
        for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
          if (/^\{.*"level":"(error|fatal)"/.test(line)) found.push(`${path.relative(directory, file)}: ${line}`);
        }
      }
    }
  };
  visit(directory);
  return found;
}

describe('the README quickstart', function () {
  this.timeout(300_000);

  it('is the list of commands this test runs', () => {
    expect(readmeQuickstart()).to.deep.equal(STEPS.map((step) => step.command));
  });

  describe('run as written against a local platform in a temporary SPG99_HOME', () => {
    let home: TempDir;
    let env: NodeJS.ProcessEnv;
    let passed = false;
    /** Every pid any cluster.json named, for the teardown. */
    const recordedPids = new Set<number>();

    const clusterPids = (): number[] => {
      const state = JSON.parse(fs.readFileSync(home.join('cluster.json'), 'utf8')) as { pids: Record<string, number> };
      const pids = Object.values(state.pids);
      for (const pid of pids) recordedPids.add(pid);
      return pids;
    };

    /** A README command with its placeholders filled in, on this test's ports and SPG99_HOME. */
    const localized = (command: string, values: Values): string => {
      let text = command;
      for (const [placeholder, value] of values) text = text.split(placeholder).join(value);
      expect(text, 'every placeholder was filled in').to.not.match(/<[^>]*>/);
      return text.replace(/^make (up|down|status)$/, `node ${LOCAL_CLUSTER} $1`);
    };

    /** Runs one step: an `export` sets the environment of the next ones, anything else runs through bash. */
    const run = async (step: Step, values: Values): Promise<Run> => {
      const command = localized(step.command, values);
      const assignment = /^export ([A-Z_][A-Z0-9_]*)=(\S+)$/.exec(command);
      if (assignment) {
        env[assignment[1]] = assignment[2];
        return { code: 0, stdout: '', stderr: '', ms: 0 };
      }
      const result = await bash(command, env);
      const shown = `$ ${command}\n${result.stdout}${result.stderr}`;
      expect(result.code, `exit code of:\n${shown}`).to.equal(0);
      try {
        await step.check(result.stdout, values);
      } catch (error) {
        process.stderr.write(`\n${shown}\n`);
        throw error;
      }
      return result;
    };

    before(async () => {
      home = TempDir.create('quickstart');
      const [redis, safekeeper1, safekeeper2, safekeeper3, pageserver, controlPlane, provisioner, gateway, gatewayAdmin, controlPlaneInternal] = await Promise.all(
        Array.from({ length: 10 }, () => freePort()),
      );
      // The user's shell, not the test runner's: no key, password or psql settings from outside.
      env = userEnvironment();
      Object.assign(env, {
        SPG99_HOME: home.path,
        SPG99_UP_JSON: '1',
        SPG99_REDIS_PORT: String(redis),
        SPG99_SAFEKEEPER1_PORT: String(safekeeper1),
        SPG99_SAFEKEEPER2_PORT: String(safekeeper2),
        SPG99_SAFEKEEPER3_PORT: String(safekeeper3),
        SPG99_PAGESERVER_PORT: String(pageserver),
        SPG99_CONTROL_PLANE_PORT: String(controlPlane),
        SPG99_CONTROL_PLANE_INTERNAL_PORT: String(controlPlaneInternal),
        SPG99_PROVISIONER_PORT: String(provisioner),
        SPG99_GATEWAY_PORT: String(gateway),
        SPG99_GATEWAY_ADMIN_PORT: String(gatewayAdmin),
        SPG99_CONSOLE_PORT: String(await freePort()),
        // The CLI's one difference from the README: the control plane is not on its default port.
        SPG99_API: `127.0.0.1:${controlPlane}`,
      });
    });

    after(async () => {
      if (!home) return;
      const stopped = await bash(`node ${LOCAL_CLUSTER} down`, env);
      if (stopped.code !== 0) process.stderr.write(`local-cluster down failed:\n${stopped.stdout}${stopped.stderr}\n`);
      for (const pid of [...recordedPids, ...processesUnder(home.path)]) {
        if (isAlive(pid)) {
          process.stderr.write(`killing leftover pid ${pid}\n`);
          process.kill(pid, 'SIGKILL');
        }
      }
      if (!passed) {
        const logs = home.join('logs');
        for (const name of fs.existsSync(logs) ? fs.readdirSync(logs) : []) {
          const tail = fs.readFileSync(path.join(logs, name), 'utf8').trimEnd().split('\n').slice(-30).join('\n');
          process.stderr.write(`\n----- ${name} -----\n${tail}\n`);
        }
      }
      if (process.env.SPG99_KEEP_TEST_DIRS) process.stderr.write(`kept ${home.path}\n`);
      else home.remove();
    });

    it('creates a project, cold-starts it, branches at a past time, and make down stops everything; make up brings the data back', async () => {
      const values: Values = new Map();
      const timings: string[] = [];
      let pidsBeforeDown: number[] = [];
      for (const step of STEPS) {
        if (step.command === 'make down') pidsBeforeDown = clusterPids();
        const result = await run(step, values);
        const label = step.command.replace(/"\$\(node dist\/cmd\/spg99\.js connection-string (.+?)\)"/, '$1');
        if (result.ms > 0) timings.push(`${(result.ms / 1000).toFixed(1).padStart(5)} s  ${label}`);
      }
      console.log(`      ${timings.join('\n      ')}`);

      // make down left nothing running: neither the platform nor a compute.
      expect(pidsBeforeDown).to.have.length(9);
      expect(pidsBeforeDown.filter(isAlive), 'pids of cluster.json alive after make down').to.deep.equal([]);
      expect(processesUnder(home.path), `processes under ${home.path} after make down`).to.deep.equal([]);
      expect(errorLines(home.path), 'ERROR or FATAL log lines').to.deep.equal([]);

      // make up again: the same tenant and key, and the rows are back.
      const step = (command: string): Step => STEPS.find((candidate) => candidate.command === command)!;
      const again = await run(step('make up'), new Map(values));
      expect(again.stdout).to.contain(`export SPG99_API_KEY=${values.get('<API key>')}`);
      clusterPids();
      await run(step(psql('<ep-…>', 'SELECT * FROM items ORDER BY id')), values);
      await run(step(psql('<ep-… of before>', 'SELECT * FROM items ORDER BY id')), values);
      passed = true;
    });
  });
});

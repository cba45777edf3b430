/**
 * Every connection string the platform hands out connects as printed, with the gateway's certificate verified, on a
 * machine whose resolver knows nothing of the endpoint's name (this one: `getent hosts ep-….spg99.localhost` fails,
 * which the first test asserts so that the rest means something).
 *
 * The platform is configured as `make up` configures it: endpoints under spg99.localhost, one shared host
 * (127.0.0.1, the endpoint named in `options`), `sslrootcert` naming the local CA, a gateway that refuses plaintext.
 * Each form `spg99 connection-string` prints (uri, keyword, env, jdbc; direct and pooled; without a password and
 * with one from --reset-password) is taken exactly as printed, the password put in where the form asks for it
 * (PGPASSWORD), and used by the clients that read that form: psql (libpq) for all but jdbc, node-postgres for uri
 * and env (in a child process, as an application reads them), postgres.js for uri (with the CA given as docs/connecting.md
 * shows), pgjdbc for jdbc when a JDK and the driver are here.
 * Then the same strings against a CA that did not sign the gateway's certificate must fail: verification is on.
 * Last, naming the endpoint by SNI where the name does not resolve: psql with hostaddr, node-postgres with
 * `ssl.servername`, both with Node's own hostname check.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promises as dns } from 'node:dns';
import { spawn } from 'node:child_process';
import { expect } from 'chai';
import pg from 'pg';
import { freePort } from '../../src/lib/net.js';
import { ensureLocalCertificates, LOCAL_DOMAIN, type LocalCertificates } from '../../src/lib/tls-certs.js';
import { Harness, REPO_ROOT } from '../harness/process.js';
import { startGatewayPlatform } from '../harness/platform.js';
import { ApiKeyScope } from '../../gen/spg99/controlplane/v1/controlplane.js';

const CLI = path.join(REPO_ROOT, 'dist', 'cmd', 'spg99.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `command args` in the repository with exactly `env` (no PG* or SPG99_* of the test runner's). */
function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The environment of a user's shell: the runner's without its PG* and SPG99_* variables. */
function cleanEnvironment(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (/^(SPG99_|PG|NODE_EXTRA_CA_CERTS$)/.test(name)) delete env[name];
  return { ...env, PSQLRC: '/dev/null', PGCONNECT_TIMEOUT: '120', ...extra };
}

/** `export NAME=value` lines (the env form) as variables, values unquoted as a shell would. */
function exportedVariables(text: string): Record<string, string> {
  const variables: Record<string, string> = {};
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const match = /^export ([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line);
    expect(match, `an export line: ${line}`).to.not.equal(null);
    const value = match![2];
    variables[match![1]] = value.startsWith("'") ? value.slice(1, -1).replaceAll(`'\\''`, "'") : value;
  }
  return variables;
}

/** Node's `pg` as an application uses it, in a child process: from `connectionString`, or from PG* variables alone. */
const NODE_PG_SCRIPT = `
import pg from 'pg';
const connectionString = process.env.TEST_CONNECTION_STRING;
const client = new pg.Client(connectionString ? { connectionString } : {});
try {
  await client.connect();
  const { rows } = await client.query('SELECT current_user AS who');
  console.log(rows[0].who);
} finally {
  await client.end().catch(() => undefined);
}
`;

/**
 * postgres.js as docs/connecting.md shows it: the printed URI with its CA file taken out and given as `ssl` (it reads
 * no CA file, and would send `sslrootcert` to the server as a startup parameter).
 */
const POSTGRES_JS_SCRIPT = `
import fs from 'node:fs';
import postgres from 'postgres';
const url = new URL(process.env.TEST_CONNECTION_STRING);
const ca = fs.readFileSync(url.searchParams.get('sslrootcert'), 'utf8');
url.searchParams.delete('sslrootcert');
const sql = postgres(url.href, { ssl: { ca }, max: 1, onnotice: () => undefined });
try {
  const [row] = await sql\`SELECT current_user AS who\`;
  console.log(row.who);
} finally {
  await sql.end();
}
`;

/** pgjdbc as an application uses it: the URL, and the password (when the URL has none) as a property. */
const JDBC_PROGRAM = `
import java.sql.*;
import java.util.Properties;
public class Connect {
  public static void main(String[] args) throws Exception {
    Properties properties = new Properties();
    String password = System.getenv("PGPASSWORD");
    if (password != null) properties.setProperty("password", password);
    try (Connection connection = DriverManager.getConnection(args[0], properties);
         ResultSet rows = connection.createStatement().executeQuery("SELECT current_user")) {
      rows.next();
      System.out.println(rows.getString(1));
    }
  }
}
`;

/** The pgjdbc jar of the local Maven repository, or null. */
function pgjdbcJar(): string | null {
  const directory = path.join(os.homedir(), '.m2', 'repository', 'org', 'postgresql', 'postgresql');
  if (!fs.existsSync(directory)) return null;
  for (const version of fs.readdirSync(directory).sort().reverse()) {
    const jar = path.join(directory, version, `postgresql-${version}.jar`);
    if (fs.existsSync(jar)) return jar;
  }
  return null;
}

function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(':').some((directory) => fs.existsSync(path.join(directory, command)));
}

/** Compiles the JDBC program once into `directory`; its class path, or null without a JDK or pgjdbc. */
async function compileJdbcProgram(directory: string): Promise<string | null> {
  const jar = pgjdbcJar();
  if (!jar || !onPath('javac') || !onPath('java')) return null;
  fs.writeFileSync(path.join(directory, 'Connect.java'), JDBC_PROGRAM);
  const compiled = await run('javac', ['-d', directory, path.join(directory, 'Connect.java')], process.env);
  expect(compiled.code, `javac: ${compiled.stderr}`).to.equal(0);
  return `${jar}:${directory}`;
}

describe('connection strings, as handed out, with verified TLS and no resolvable endpoint name', function () {
  this.timeout(600_000);
  let harness: Harness;
  let failed = false;
  let certificates: LocalCertificates;
  /** A CA that signed nothing the gateway serves. */
  let strangerCa: string;
  let endpointId: string;
  let apiEnv: NodeJS.ProcessEnv;
  let owner: { user: string; password: string };
  /** Roles the --reset-password test gives new passwords, with their first ones. */
  const roles: Record<string, string> = {};
  let gatewayPort: number;
  let scratch: string;
  /** The class path of the compiled JDBC program (pgjdbc's jar and Connect.class), or null without a JDK or pgjdbc. */
  let jdbcClassPath: string | null = null;

  /** pgjdbc connecting with `url` (as printed) and `env`. */
  function jdbc(url: string, env: NodeJS.ProcessEnv): Promise<Run> {
    return run('java', ['-cp', jdbcClassPath!, 'Connect', url], cleanEnvironment(env));
  }

  /** `spg99 connection-string` with `args`, its stdout (without the final newline); it must succeed. */
  async function printed(args: string[]): Promise<string> {
    const result = await run(process.execPath, [CLI, 'connection-string', endpointId, ...args], apiEnv);
    expect(result.stderr, `spg99 connection-string ${args.join(' ')}`).to.equal('');
    expect(result.code).to.equal(0);
    expect(result.stdout.endsWith('\n')).to.equal(true);
    return result.stdout.slice(0, -1);
  }

  /** psql with `connection` (a URI or keywords; nothing when the environment names it all) and `env`; its output. */
  async function psql(connection: string | null, env: NodeJS.ProcessEnv): Promise<Run> {
    const args = [...(connection === null ? [] : [connection]), '-X', '-tA', '-c', 'SELECT current_user'];
    return run('psql', args, cleanEnvironment(env));
  }

  async function nodePg(connectionString: string | null, env: NodeJS.ProcessEnv): Promise<Run> {
    const extra = connectionString === null ? env : { ...env, TEST_CONNECTION_STRING: connectionString };
    return run(process.execPath, ['--input-type=module', '-e', NODE_PG_SCRIPT], cleanEnvironment(extra));
  }

  async function postgresJs(connectionString: string, env: NodeJS.ProcessEnv): Promise<Run> {
    return run(process.execPath, ['--input-type=module', '-e', POSTGRES_JS_SCRIPT], cleanEnvironment({ ...env, TEST_CONNECTION_STRING: connectionString }));
  }

  function connectedAs(result: Run, user: string, what: string): void {
    expect(result.stderr.trim(), `${what}: stderr`).to.equal('');
    expect(result.code, `${what}: exit code`).to.equal(0);
    expect(result.stdout, what).to.equal(`${user}\n`);
  }

  function refused(result: Run, what: string, pattern: RegExp): void {
    expect(result.code, `${what} connected: ${result.stdout}`).to.not.equal(0);
    expect(result.stderr, what).to.match(pattern);
  }

  before(async function () {
    harness = new Harness();
    scratch = harness.tempDir('connection-strings').path;
    // The gateway's certificate and port are chosen here, so that the control plane can name them.
    certificates = await ensureLocalCertificates(path.join(scratch, 'tls'), { domain: LOCAL_DOMAIN });
    strangerCa = (await ensureLocalCertificates(path.join(scratch, 'stranger'), { domain: LOCAL_DOMAIN })).caCertFile;
    gatewayPort = await freePort();
    const platform = await startGatewayPlatform(harness, {
      allowPlaintext: false,
      gatewayArgs: ['--listen', `127.0.0.1:${gatewayPort}`, '--domain', LOCAL_DOMAIN, '--tls-cert', certificates.certFile, '--tls-key', certificates.keyFile],
      controlPlaneArgs: [
        '--domain', LOCAL_DOMAIN,
        '--public-host', '127.0.0.1',
        '--public-port', String(gatewayPort),
        '--public-root-cert', certificates.caCertFile,
      ],
    });
    expect(platform.gateway.port).to.equal(gatewayPort);
    endpointId = platform.endpointId;
    owner = platform.owner;
    const key = await platform.api.createApiKey({ name: 'connection-strings', scope: ApiKeyScope.API_KEY_SCOPE_ADMIN });
    apiEnv = cleanEnvironment({ SPG99_API: platform.controlPlane.address, SPG99_API_CA: platform.controlPlane.caFile, SPG99_API_KEY: key.secret });
    for (const name of ['app', 'app_keyword', 'app_env', 'app_jdbc']) {
      roles[name] = (await platform.api.createRole({ branchId: platform.project.defaultBranch!.branchId, name })).password;
    }
    jdbcClassPath = await compileJdbcProgram(scratch);
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed') failed = true;
  });

  after(async () => {
    await harness?.teardown({ dumpLogs: failed });
  });

  it('runs where the endpoint\'s name does not resolve', async () => {
    const name = `${endpointId}.${LOCAL_DOMAIN}`;
    const getent = await run('getent', ['hosts', name, `${endpointId}-pooler.${LOCAL_DOMAIN}`], cleanEnvironment());
    expect(getent.code, `getent hosts ${name}: ${getent.stdout}`).to.equal(2);
    const lookup = await dns.lookup(name).then(
      (address) => `resolved to ${address.address}`,
      (error: NodeJS.ErrnoException) => error.code,
    );
    expect(lookup).to.be.oneOf(['ENOTFOUND', 'EAI_AGAIN']);
  });

  it('hands out a URI that names 127.0.0.1, the endpoint in options, verify-full and the CA', async () => {
    const uri = await printed([]);
    expect(uri).to.equal(
      `postgresql://owner@127.0.0.1:${gatewayPort}/postgres?options=endpoint%3D${endpointId}&sslmode=verify-full&sslrootcert=${certificates.caCertFile}`,
    );
    expect(await printed(['--pooled', '--role', 'app', '--database', 'shop'])).to.equal(
      `postgresql://app@127.0.0.1:${gatewayPort}/shop?options=endpoint%3D${endpointId}-pooler&sslmode=verify-full&sslrootcert=${certificates.caCertFile}`,
    );
  });

  for (const pooled of [false, true]) {
    const flags = pooled ? ['--pooled'] : [];
    const mode = pooled ? 'pooled' : 'direct';

    it(`uri (${mode}): psql, node-postgres and postgres.js connect with the password from PGPASSWORD`, async () => {
      const uri = await printed([...flags, '--format', 'uri']);
      connectedAs(await psql(uri, { PGPASSWORD: owner.password }), 'owner', `psql "${uri}"`);
      connectedAs(await nodePg(uri, { PGPASSWORD: owner.password }), 'owner', `node-postgres ${uri}`);
      connectedAs(await postgresJs(uri, { PGPASSWORD: owner.password }), 'owner', `postgres.js ${uri}`);
    });

    it(`keyword (${mode}): psql connects with the password from PGPASSWORD`, async () => {
      const keywords = await printed([...flags, '--format', 'keyword']);
      expect(keywords).to.match(new RegExp(`^host=127\\.0\\.0\\.1 port=${gatewayPort} user=owner dbname=postgres options=endpoint=${endpointId}${pooled ? '-pooler' : ''} sslmode=verify-full sslrootcert=`));
      connectedAs(await psql(keywords, { PGPASSWORD: owner.password }), 'owner', `psql "${keywords}"`);
    });

    it(`env (${mode}): psql and node-postgres connect from the exported variables and PGPASSWORD`, async () => {
      const variables = exportedVariables(await printed([...flags, '--format', 'env']));
      expect(variables).to.include({ PGHOST: '127.0.0.1', PGSSLMODE: 'verify-full', NODE_EXTRA_CA_CERTS: certificates.caCertFile });
      connectedAs(await psql(null, { ...variables, PGPASSWORD: owner.password }), 'owner', 'psql with the env form');
      connectedAs(await nodePg(null, { ...variables, PGPASSWORD: owner.password }), 'owner', 'node-postgres with the env form');
    });
  }

  it('jdbc (direct and pooled): pgjdbc connects with the password as a property', async function () {
    // Pending, not passed, on a machine without a JDK or pgjdbc in ~/.m2.
    if (!jdbcClassPath) this.skip();
    for (const flags of [[], ['--pooled']]) {
      const url = await printed([...flags, '--format', 'jdbc']);
      expect(url).to.match(/^jdbc:postgresql:\/\/127\.0\.0\.1:\d+\/postgres\?user=owner&options=endpoint%3Dep-[0-9a-f]+(-pooler)?&sslmode=verify-full&sslrootcert=\//);
      connectedAs(await jdbc(url, { PGPASSWORD: owner.password }), 'owner', `pgjdbc ${url}`);
    }
  });

  // One role per form: the gateway trusts a role's verifier for up to 10 s, so a password reset within 10 s of a
  // login with the previous password fails its first login (once: a failed login drops the cached verifier).
  it('--reset-password: each form carries a new password that works as printed; the old one stops working', async () => {
    // Four roles, four resets: independent, so asked for at once.
    const [uri, keywords, env, url] = await Promise.all([
      printed(['--role', 'app', '--reset-password']),
      printed(['--role', 'app_keyword', '--pooled', '--format', 'keyword', '--reset-password']),
      printed(['--role', 'app_env', '--format', 'env', '--reset-password']),
      jdbcClassPath ? printed(['--role', 'app_jdbc', '--format', 'jdbc', '--reset-password']) : Promise.resolve(null),
    ]);
    const password = decodeURIComponent(new URL(uri).password);
    expect(password).to.have.length.greaterThan(16).and.not.equal(roles.app);
    refused(await psql(await printed(['--role', 'app']), { PGPASSWORD: roles.app }), 'the password before the reset', /password authentication failed/);
    // Exactly as printed: no PGPASSWORD anywhere.
    connectedAs(await psql(uri, {}), 'app', `psql "${uri}"`);
    connectedAs(await nodePg(uri, {}), 'app', `node-postgres ${uri}`);
    connectedAs(await postgresJs(uri, {}), 'app', `postgres.js ${uri}`);

    expect(keywords).to.match(/ user=app_keyword password=\S+ dbname=postgres /);
    connectedAs(await psql(keywords, {}), 'app_keyword', `psql "${keywords}"`);

    const variables = exportedVariables(env);
    expect(variables.PGPASSWORD).to.have.length.greaterThan(16).and.not.equal(roles.app_env);
    connectedAs(await psql(null, variables), 'app_env', 'psql with the env form and its password');
    connectedAs(await nodePg(null, variables), 'app_env', 'node-postgres with the env form and its password');

    if (url !== null) {
      expect(url).to.match(/\?user=app_jdbc&password=[^&]+&options=/);
      connectedAs(await jdbc(url, {}), 'app_jdbc', `pgjdbc ${url}`);
    }
  });

  it('verifies the certificate: the same strings with a CA that did not sign it are refused by psql, node-postgres and postgres.js', async () => {
    const [uri, env] = await Promise.all([printed([]), printed(['--format', 'env'])]);
    const stranger = uri.replace(certificates.caCertFile, strangerCa);
    const variables = { ...exportedVariables(env), NODE_EXTRA_CA_CERTS: strangerCa, PGPASSWORD: owner.password };
    const untrusted = /certificate verify failed|self[- ]signed|unable to (get|verify)/i;
    const [byPsql, byNodePg, byPostgresJs, byEnv] = await Promise.all([
      psql(stranger, { PGPASSWORD: owner.password }),
      nodePg(stranger, { PGPASSWORD: owner.password }),
      postgresJs(stranger, { PGPASSWORD: owner.password }),
      nodePg(null, variables),
    ]);
    refused(byPsql, 'psql with a stranger CA', untrusted);
    refused(byNodePg, 'node-postgres with a stranger CA', untrusted);
    refused(byPostgresJs, 'postgres.js with a stranger CA', untrusted);
    refused(byEnv, 'node-postgres (env) with a stranger CA', untrusted);
  });

  it('names the endpoint by SNI where the name does not resolve: psql with hostaddr, node-postgres with ssl.servername', async () => {
    for (const label of [endpointId, `${endpointId}-pooler`]) {
      const serverName = `${label}.${LOCAL_DOMAIN}`;
      const keywords = `host=${serverName} hostaddr=127.0.0.1 port=${gatewayPort} user=owner dbname=postgres sslmode=verify-full sslrootcert=${certificates.caCertFile}`;
      connectedAs(await psql(keywords, { PGPASSWORD: owner.password }), 'owner', `psql "${keywords}"`);
      // Node's own hostname check (no checkServerIdentity of ours): *.spg99.localhost is a wildcard it accepts.
      const client = new pg.Client({
        host: '127.0.0.1',
        port: gatewayPort,
        user: owner.user,
        password: owner.password,
        database: 'postgres',
        ssl: { ca: fs.readFileSync(certificates.caCertFile, 'utf8'), servername: serverName },
      });
      await client.connect();
      try {
        expect((await client.query<{ who: string }>('SELECT current_user AS who')).rows[0].who).to.equal('owner');
      } finally {
        await client.end();
      }
    }
  });
});

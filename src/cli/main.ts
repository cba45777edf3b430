/**
 * `spg99`, start to finish: read the command line and the environment, run the command, and turn every failure into
 * one line on stderr with an exit code (0 done, 1 the call or its input failed, 2 the command line is wrong). No
 * stack trace reaches the user.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseHostPort } from '../lib/config.js';
import { quietIpServerNameWarning } from '../lib/tls-certs.js';
import { apiTls, ControlPlaneConnection, requireSecret, type ConnectionOptions } from './api.js';
import { parseCommandLine } from './args.js';
import { commandName } from './command.js';
import { COMMANDS, type CommandContext } from './commands.js';
import { CliError, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, oneLine, UsageError } from './errors.js';
import { TOOL_USAGE } from './help.js';
import { Output, type Writer } from './output.js';
import { parseDuration } from './values.js';

/** Where the control plane is when neither --api nor SPG99_API says. */
export const DEFAULT_API_ADDRESS = '127.0.0.1:7700';
/** A call's deadline when --timeout does not say (CreateProject runs initdb on the pageserver). */
const DEFAULT_TIMEOUT = '2m';

/** The streams the CLI writes to. */
export interface CliStreams {
  stdout: Writer;
  stderr: Writer;
}

/** The version in the repository's package.json (found upward from this file, in src/ or dist/src/). */
export function packageVersion(): string {
  let directory = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(directory, 'package.json');
    if (fs.existsSync(candidate)) {
      const manifest = JSON.parse(fs.readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'spg99' && manifest.version) return manifest.version;
    }
    const parent = path.dirname(directory);
    if (parent === directory) return 'unknown';
    directory = parent;
  }
}

/** Runs `spg99` with `argv` (without node and the script) and answers its exit code. */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv, streams: CliStreams): Promise<number> {
  const connections: ControlPlaneConnection[] = [];
  try {
    const version = packageVersion();
    const parsed = parseCommandLine(argv, COMMANDS, version);
    if (parsed.kind === 'help') {
      streams.stdout.write(`${parsed.text}\n`);
      return EXIT_OK;
    }
    if (parsed.kind === 'version') {
      streams.stdout.write(`spg99 ${version}\n`);
      return EXIT_OK;
    }
    const { command, input, globals } = parsed;
    const address = globals.api ?? (env.SPG99_API || DEFAULT_API_ADDRESS);
    try {
      parseHostPort(address, '--api');
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      const source = globals.api === undefined ? 'SPG99_API' : '--api';
      throw new UsageError(`${source} "${address}" is not host:port: give the control plane's address, e.g. ${DEFAULT_API_ADDRESS}`, TOOL_USAGE);
    }
    const timeoutMs = parseDuration(globals.timeout ?? DEFAULT_TIMEOUT, '--timeout', input.usageLine);
    if (timeoutMs <= 0) throw new UsageError('--timeout must be more than 0', input.usageLine);
    const apiKey = (globals.apiKey ?? env.SPG99_API_KEY ?? '').trim();
    const context: CommandContext = {
      output: new Output(streams.stdout, globals.json),
      connect(credential) {
        const options: ConnectionOptions = {
          address,
          secret: credential ? credential.operatorToken : apiKey || null,
          credential: credential ? 'operator-token' : 'api-key',
          timeoutMs,
          command: commandName(command),
          tls: apiTls(env),
        };
        requireSecret(options);
        const connection = new ControlPlaneConnection(options);
        connections.push(connection);
        return connection;
      },
    };
    await command.run(context, input);
    return EXIT_OK;
  } catch (error) {
    if (error instanceof UsageError) {
      streams.stderr.write(`spg99: ${oneLine(error.message)}: ${error.usageLine}\n`);
      return EXIT_USAGE;
    }
    if (error instanceof CliError) {
      streams.stderr.write(`spg99: ${oneLine(error.message)}\n`);
      return EXIT_FAILURE;
    }
    const message = error instanceof Error ? error.message : String(error);
    streams.stderr.write(`spg99: unexpected error: ${oneLine(message)}: please report it with the command you ran\n`);
    return EXIT_FAILURE;
  } finally {
    for (const connection of connections) connection.close();
  }
}

/** The process around {@link runCli}: real streams, a closed pipe (`spg99 ... | head`) is not an error, exit code set. */
export async function runCliProcess(): Promise<void> {
  quietIpServerNameWarning();
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? EXIT_OK);
  });
  process.exitCode = await runCli(process.argv.slice(2), process.env, { stdout: process.stdout, stderr: process.stderr });
}

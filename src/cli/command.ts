/**
 * What a CLI command declares about itself: its words (`projects create`), arguments, flags and handler. The parser
 * (args.ts), the help (help.ts) and the command table (commands.ts) all work from these declarations, so a flag is
 * described once.
 */

/** A flag of a command, `--name <value>` or a boolean `--name`. */
export interface FlagSpec {
  type: 'string' | 'boolean';
  /** What the value is, for the usage line (e.g. `duration` shows as `--suspend-timeout <duration>`). */
  value?: string;
  description: string;
  /** Refused with a usage error when missing. */
  required?: boolean;
  /** A one-letter alias. */
  short?: string;
}

/** A positional argument. */
export interface ArgumentSpec {
  name: string;
  description: string;
  optional?: boolean;
}

/** What a handler gets from the command line. */
export interface CommandInput {
  /** Positional arguments by name (undefined when an optional one was left out). */
  arguments: Record<string, string | undefined>;
  /** The command's own flags by name (undefined when not given). */
  flags: Record<string, string | boolean | undefined>;
  /** The command's usage line, for usage errors the handler finds (e.g. a malformed duration). */
  usageLine: string;
}

/** One command of the CLI; `Context` is what main.ts hands every handler (the connection, the output). */
export interface CommandSpec<Context> {
  /** Its words: `['projects', 'create']`, or one word for a command without a group (`['connection-string']`). */
  path: string[];
  /** One line, for the command lists. */
  summary: string;
  /** More about it, for its --help (optional). */
  description?: string;
  arguments: ArgumentSpec[];
  flags: Record<string, FlagSpec>;
  /** How it authenticates: with SPG99_API_KEY (most), or the operator token (tenants create). */
  credential: 'api-key' | 'operator-token';
  /** Example invocations for its --help. */
  examples?: string[];
  run(context: Context, input: CommandInput): Promise<void>;
}

/** The words of a command as typed: `projects create`. */
export function commandName(command: { path: string[] }): string {
  return command.path.join(' ');
}

/** Flags every command takes, before or after its words. */
export const GLOBAL_FLAGS = {
  api: { type: 'string', value: 'host:port', description: 'the control plane (env SPG99_API; default 127.0.0.1:7700)' },
  'api-key': {
    type: 'string',
    value: 'secret',
    description: 'the API key (prefer the env SPG99_API_KEY: a flag is visible to other users in `ps` and kept in shell history)',
  },
  json: { type: 'boolean', description: 'print the response as JSON (and nothing else) on stdout' },
  timeout: { type: 'string', value: 'duration', description: 'how long a call may take (default 2m)' },
  help: { type: 'boolean', short: 'h', description: 'show help (for a command too: spg99 projects create --help)' },
  version: { type: 'boolean', description: 'print the version' },
} as const satisfies Record<string, FlagSpec>;

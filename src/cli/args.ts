/**
 * The command line: which command, its arguments and flags, and the global flags (which may stand before or after
 * the command's words). Built on node's `util.parseArgs`. Everything wrong with the command line is a
 * {@link UsageError} that names the culprit and carries the usage line to show.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { commandName, GLOBAL_FLAGS, type CommandInput, type CommandSpec, type FlagSpec } from './command.js';
import { UsageError } from './errors.js';
import { commandHelp, groupHelp, groupUsageLine, TOOL_USAGE, toolHelp, usageLine } from './help.js';

/** The global flags as given (environment variables are applied by the caller). */
export interface GlobalFlags {
  api?: string;
  apiKey?: string;
  json: boolean;
  timeout?: string;
}

/** What the command line asks for. */
export type ParsedCommandLine<Context> =
  | { kind: 'help'; text: string }
  | { kind: 'version' }
  | { kind: 'run'; command: CommandSpec<Context>; input: CommandInput; globals: GlobalFlags };

type ParseOptions = NonNullable<ParseArgsConfig['options']>;

function parseOptions(flags: Record<string, FlagSpec>): ParseOptions {
  const options: ParseOptions = {};
  for (const [name, flag] of Object.entries(flags)) {
    options[name] = flag.short ? { type: flag.type, short: flag.short } : { type: flag.type };
  }
  return options;
}

/** Every flag any command knows, so that a lenient first pass can tell flag values from command words. */
function allOptions(commands: readonly CommandSpec<unknown>[]): ParseOptions {
  const options = parseOptions(GLOBAL_FLAGS);
  for (const command of commands) {
    for (const [name, option] of Object.entries(parseOptions(command.flags))) {
      if (options[name] && options[name].type !== option.type) {
        throw new Error(`flag --${name} is a ${options[name].type} in one command and a ${option.type} in ${commandName(command)}`);
      }
      options[name] = option;
    }
  }
  return options;
}

/** parseArgs' errors, as "what was wrong" in our words. */
function parseArgsProblem(error: unknown, command: string): string {
  const { code, message } = error as { code?: string; message: string };
  const flag = /'(-{1,2}[^' ]+)/.exec(message)?.[1];
  switch (code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown flag ${flag ?? message} for ${command}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return /argument missing/.test(message) ? `flag ${flag} needs a value` : `flag ${flag} takes no value`;
    default:
      return message;
  }
}

/**
 * Reads `argv` (without node and the script). `version` is shown by `--help`. Throws UsageError for an unknown
 * command or flag, a missing argument or required flag, or an extra argument.
 */
export function parseCommandLine<Context>(argv: string[], commands: readonly CommandSpec<Context>[], version: string): ParsedCommandLine<Context> {
  const specs = commands as readonly CommandSpec<unknown>[];
  const lenient = parseArgs({ args: argv, options: allOptions(specs), strict: false, allowPositionals: true });
  const words = lenient.positionals;
  const wantsHelp = lenient.values.help === true;
  if (lenient.values.version === true && words.length === 0) return { kind: 'version' };

  // `spg99 help [command...]` is `spg99 [command...] --help`.
  const helpWord = words[0] === 'help';
  const commandWords = helpWord ? words.slice(1) : words;
  const showHelp = wantsHelp || helpWord;
  const groupWord = commandWords[0];
  if (groupWord === undefined) {
    if (showHelp) return { kind: 'help', text: toolHelp(specs, version) };
    throw new UsageError('missing command', TOOL_USAGE);
  }
  const group = commands.filter((command) => command.path[0] === groupWord);
  if (group.length === 0) {
    const known = [...new Set(commands.map((command) => command.path[0]))].join(', ');
    throw new UsageError(`unknown command "${groupWord}" (commands: ${known})`, TOOL_USAGE);
  }
  let command = group.find((candidate) => candidate.path.length === 1);
  if (!command) {
    const subWord = commandWords[1];
    const subs = group.map((candidate) => candidate.path[1]).join(', ');
    if (subWord === undefined) {
      if (showHelp) return { kind: 'help', text: groupHelp(groupWord, specs) };
      throw new UsageError(`missing command after "${groupWord}": one of ${subs}`, groupUsageLine(groupWord, specs));
    }
    command = group.find((candidate) => candidate.path[1] === subWord);
    if (!command) throw new UsageError(`unknown command "${groupWord} ${subWord}" (${groupWord} has ${subs})`, groupUsageLine(groupWord, specs));
  }
  const usage = usageLine(command as CommandSpec<unknown>);
  if (showHelp) return { kind: 'help', text: commandHelp(command as CommandSpec<unknown>) };

  let parsed: { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...parseOptions(GLOBAL_FLAGS), ...parseOptions(command.flags) },
      strict: true,
      allowPositionals: true,
    });
  } catch (error) {
    throw new UsageError(parseArgsProblem(error, commandName(command)), usage);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const positionals = parsed.positionals.slice(command.path.length);

  const argumentsByName: Record<string, string | undefined> = {};
  command.arguments.forEach((argument, index) => {
    const value = positionals[index];
    if (value === undefined && !argument.optional) throw new UsageError(`missing argument <${argument.name}>`, usage);
    argumentsByName[argument.name] = value;
  });
  if (positionals.length > command.arguments.length) {
    throw new UsageError(`unexpected argument "${positionals[command.arguments.length]}"`, usage);
  }
  const flags: Record<string, string | boolean | undefined> = {};
  for (const [name, flag] of Object.entries(command.flags)) {
    const value = values[name];
    if (flag.required && (value === undefined || value === '')) throw new UsageError(`missing flag --${name} <${flag.value ?? 'value'}>`, usage);
    flags[name] = value;
  }
  const globals: GlobalFlags = {
    api: values.api as string | undefined,
    apiKey: values['api-key'] as string | undefined,
    json: values.json === true,
    timeout: values.timeout as string | undefined,
  };
  return { kind: 'run', command, input: { arguments: argumentsByName, flags, usageLine: usage }, globals };
}

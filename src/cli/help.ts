/**
 * Usage lines and --help text, built from the command declarations: the tool's (the command list), a group's
 * (`spg99 projects --help`) and a command's (its arguments and flags).
 */
import { commandName, GLOBAL_FLAGS, type CommandSpec, type FlagSpec } from './command.js';

/** The tool's usage line. */
export const TOOL_USAGE = 'usage: spg99 <command> [flags] (spg99 --help lists the commands)';

function flagUsage(name: string, flag: FlagSpec): string {
  const text = flag.type === 'boolean' ? `--${name}` : `--${name} <${flag.value ?? 'value'}>`;
  return flag.required ? text : `[${text}]`;
}

/** A command's usage line: `usage: spg99 projects create <name> [--region <region>] ...`. */
export function usageLine(command: CommandSpec<unknown>): string {
  const parts = ['usage: spg99', commandName(command)];
  for (const argument of command.arguments) parts.push(argument.optional ? `[<${argument.name}>]` : `<${argument.name}>`);
  // Required flags first: they are part of what must be typed.
  const flags = Object.entries(command.flags);
  for (const [name, flag] of flags.filter(([, f]) => f.required)) parts.push(flagUsage(name, flag));
  for (const [name, flag] of flags.filter(([, f]) => !f.required)) parts.push(flagUsage(name, flag));
  return parts.join(' ');
}

/** A group's usage line: `usage: spg99 projects create|list|get|delete ...`. */
export function groupUsageLine(group: string, commands: readonly CommandSpec<unknown>[]): string {
  const words = commands.filter((command) => command.path[0] === group && command.path.length > 1).map((command) => command.path[1]);
  return `usage: spg99 ${group} ${words.join('|')} ... (spg99 ${group} --help)`;
}

function columns(rows: Array<[string, string]>, indent = '  '): string[] {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `${indent}${left.padEnd(width)}  ${right}`);
}

function flagRows(flags: Record<string, FlagSpec>): Array<[string, string]> {
  return Object.entries(flags).map(([name, flag]) => {
    const short = flag.short ? `-${flag.short}, ` : '';
    const value = flag.type === 'boolean' ? '' : ` <${flag.value ?? 'value'}>`;
    return [`${short}--${name}${value}`, flag.required ? `${flag.description} (required)` : flag.description];
  });
}

/** `spg99 --help`. */
export function toolHelp(commands: readonly CommandSpec<unknown>[], version: string): string {
  const lines = [
    `spg99 ${version}: the SPG99 command line (projects, branches, endpoints, roles, API keys)`,
    '',
    'usage: spg99 <command> [arguments] [flags]',
    '',
    'commands:',
    ...columns(commands.map((command) => [usageLine(command).replace(/^usage: spg99 /, '').split(' [')[0], command.summary])),
    '',
    'global flags:',
    ...columns(flagRows(GLOBAL_FLAGS)),
    '',
    'environment:',
    ...columns([
      ['SPG99_API_KEY', 'the API key every command but `tenants create` sends (authorization: Bearer <secret>)'],
      ['SPG99_API', 'host:port of the control plane (default 127.0.0.1:7700)'],
      ['SPG99_API_CA', 'CA file its TLS certificate is verified with (default: make up\'s .spg99/tls/ca.crt, else system; plaintext: no TLS)'],
    ]),
    '',
    'Tables are for people; add --json for scripts. Errors are one line on stderr; exit 1 when a call failed, 2 for a',
    'wrong command line. `spg99 <command> --help` shows a command\'s flags.',
  ];
  return lines.join('\n');
}

/** `spg99 projects --help`. */
export function groupHelp(group: string, commands: readonly CommandSpec<unknown>[]): string {
  const members = commands.filter((command) => command.path[0] === group);
  return [
    groupUsageLine(group, commands),
    '',
    'commands:',
    ...columns(members.map((command) => [commandName(command), command.summary])),
    '',
    `spg99 ${group} <command> --help shows a command's flags.`,
  ].join('\n');
}

/** `spg99 projects create --help`. */
export function commandHelp(command: CommandSpec<unknown>): string {
  const lines = [usageLine(command), '', command.summary];
  if (command.description) lines.push('', command.description);
  if (command.arguments.length > 0) {
    lines.push('', 'arguments:', ...columns(command.arguments.map((argument) => [`<${argument.name}>`, argument.description])));
  }
  if (Object.keys(command.flags).length > 0) lines.push('', 'flags:', ...columns(flagRows(command.flags)));
  lines.push('', 'global flags: --api <host:port>, --json, --timeout <duration>, --api-key <secret> (SPG99_API_KEY preferred)');
  if (command.examples?.length) lines.push('', 'examples:', ...command.examples.map((example) => `  ${example}`));
  return lines.join('\n');
}

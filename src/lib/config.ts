/**
 * Typed, validated configuration from command-line flags and environment variables. Each component declares its
 * options once; a wrong value is refused at start with a message naming the flag, its environment variable and
 * what is expected, never discovered later.
 */
import { parseArgs } from 'node:util';

type Kind = 'string' | 'integer' | 'boolean' | 'list';
type ValueOf<K extends Kind> = K extends 'string' ? string : K extends 'integer' ? number : K extends 'boolean' ? boolean : string[];

/** One option: `--flag` on the command line, or `SPG99_FLAG` in the environment. */
export interface OptionSpec<K extends Kind = Kind> {
  kind: K;
  description: string;
  /** Used when neither flag nor environment variable is given; options without one are required. */
  default?: ValueOf<K>;
  /** For integers: the smallest and largest accepted values. */
  min?: number;
  max?: number;
}

/** The typed result of a spec. */
export type ConfigOf<S extends Record<string, OptionSpec>> = { [N in keyof S]: ValueOf<S[N]['kind']> };

/** A configuration problem, with a message that says what to do. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

function flagName(name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

function envName(name: string): string {
  return `SPG99_${flagName(name).replace(/-/g, '_').toUpperCase()}`;
}

/** Describes the options of a spec, one line each, for `--help`. */
export function usage<S extends Record<string, OptionSpec>>(command: string, spec: S): string {
  const lines = Object.entries(spec).map(([name, option]) => {
    const fallback = option.default === undefined ? 'required' : `default ${JSON.stringify(option.default)}`;
    return `  --${flagName(name)} (${envName(name)})  ${option.description} [${option.kind}, ${fallback}]`;
  });
  return `usage: ${command} [options]\n${lines.join('\n')}`;
}

/** Reads and validates a configuration. Throws ConfigError naming the first wrong option. */
export function loadConfig<S extends Record<string, OptionSpec>>(
  spec: S,
  argv: string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): ConfigOf<S> {
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const [name, option] of Object.entries(spec)) {
    options[flagName(name)] = { type: option.kind === 'boolean' ? 'boolean' : 'string' };
  }
  let parsed: Record<string, string | boolean | undefined>;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as Record<
      string,
      string | boolean | undefined
    >;
  } catch (error) {
    throw new ConfigError(`${(error as Error).message}; known flags: ${Object.keys(options).map((f) => `--${f}`).join(' ')}`);
  }
  const result: Record<string, unknown> = {};
  for (const [name, option] of Object.entries(spec)) {
    const flag = flagName(name);
    const raw = parsed[flag] ?? env[envName(name)];
    const where = `--${flag} (or ${envName(name)})`;
    if (raw === undefined || raw === '') {
      if (option.default === undefined) throw new ConfigError(`${where} is required: ${option.description}`);
      result[name] = option.default;
      continue;
    }
    result[name] = convert(option, raw, where);
  }
  return result as ConfigOf<S>;
}

function convert(option: OptionSpec, raw: string | boolean, where: string): unknown {
  switch (option.kind) {
    case 'boolean':
      if (typeof raw === 'boolean') return raw;
      if (/^(1|true|yes|on)$/i.test(raw)) return true;
      if (/^(0|false|no|off)$/i.test(raw)) return false;
      throw new ConfigError(`${where} must be true or false, got "${raw}"`);
    case 'integer': {
      const value = Number(raw);
      if (!Number.isInteger(value)) throw new ConfigError(`${where} must be an integer, got "${raw}"`);
      if (option.min !== undefined && value < option.min) throw new ConfigError(`${where} must be at least ${option.min}, got ${value}`);
      if (option.max !== undefined && value > option.max) throw new ConfigError(`${where} must be at most ${option.max}, got ${value}`);
      return value;
    }
    case 'list':
      return String(raw)
        .split(',')
        .map((item) => item.trim())
        .filter((item) => item.length > 0);
    default:
      return String(raw);
  }
}

/** Splits `host:port` (port 0 allowed: any free port); throws ConfigError naming `what` when malformed. */
export function parseHostPort(address: string, what: string): { host: string; port: number } {
  const index = address.lastIndexOf(':');
  const host = address.slice(0, index);
  const portText = address.slice(index + 1);
  // Digits only: Number('') is 0, which would turn "host:" into "any free port".
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (index <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`${what} must be host:port (e.g. 127.0.0.1:7501), got "${address}"`);
  }
  return { host, port };
}

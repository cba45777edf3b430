/**
 * The CLI's connection to the control plane: an `@spg99/sdk` client (sdk/), which brings TLS verified against the
 * platform's CA, the credential as `authorization: Bearer <secret>`, deadlines, retries of idempotent calls and typed
 * errors. This file only chooses the SDK's options from the command line and turns a failed call into the one-line
 * {@link CliError} the user sees.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient, type ControlPlaneApi, type Spg99, type Spg99CallOptions, type TlsOptions } from '../lib/sdk.js';
import { CliError, describeCallError } from './errors.js';

/** The generated client of the public API (the SDK's). */
export type ControlPlaneClient = ControlPlaneApi;

/** Where and how to call. */
export interface ConnectionOptions {
  /** host:port of the control plane. */
  address: string;
  /** The API key or operator token; null: none was given (refused before any call). */
  secret: string | null;
  /** Which of the two `secret` is, for error messages. */
  credential: 'api-key' | 'operator-token';
  /** Deadline of each call, in ms. */
  timeoutMs: number;
  /** The command, for error messages (`projects create`). */
  command: string;
  /** How the control plane's certificate is verified ({@link apiTls}). */
  tls: ApiTls;
}

/** The TLS the CLI uses and where that choice came from (for error messages). */
export interface ApiTls {
  tls: boolean | TlsOptions;
  /** e.g. `SPG99_API_CA=/x/ca.crt`, `.spg99/tls/ca.crt (make up's CA)`, `the system's CAs`. */
  source: string;
}

/**
 * Retries for a person at a terminal: a restarting control plane is waited for a few seconds, an absent one is
 * reported without a long pause.
 */
const CLI_RETRIES = { maxRetries: 4, baseDelayMs: 200, maxDelayMs: 2000 };

/**
 * How to verify the control plane: SPG99_API_CA names the CA file (or `system` for public CAs, or `plaintext` for a
 * control plane run with --allow-plaintext); without it, the CA of the local platform `make up` runs
 * (`$SPG99_HOME/tls/ca.crt`, else `.spg99/tls/ca.crt` of this repository) when there is one, else the system's CAs.
 */
export function apiTls(env: NodeJS.ProcessEnv): ApiTls {
  const named = env.SPG99_API_CA?.trim();
  if (named === 'plaintext') return { tls: false, source: 'SPG99_API_CA=plaintext' };
  if (named === 'system') return { tls: true, source: 'SPG99_API_CA=system (the system\'s CAs)' };
  if (named) {
    if (!fs.existsSync(named)) throw new CliError(`SPG99_API_CA ${named} does not exist: point it at the platform's CA certificate (make up keeps it in .spg99/tls/ca.crt)`);
    return { tls: { caFile: named }, source: `SPG99_API_CA=${named}` };
  }
  const homes = [env.SPG99_HOME ? path.resolve(env.SPG99_HOME) : null, repositoryHome()];
  for (const home of homes) {
    const caFile = home === null ? null : path.join(home, 'tls', 'ca.crt');
    if (caFile && fs.existsSync(caFile)) return { tls: { caFile }, source: `${caFile} (make up's CA)` };
  }
  return { tls: true, source: 'the system\'s CAs' };
}

/** `.spg99/` of the repository this CLI was built in (found upward from this file, in src/ or dist/src/). */
function repositoryHome(): string | null {
  let directory = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(directory, 'package.json')) && fs.existsSync(path.join(directory, 'Makefile'))) return path.join(directory, '.spg99');
    const parent = path.dirname(directory);
    if (parent === directory) return null;
    directory = parent;
  }
}

/** An open connection; {@link close} it when the command is done. */
export class ControlPlaneConnection {
  private readonly sdk: Spg99;

  constructor(readonly options: ConnectionOptions) {
    try {
      this.sdk = createClient({
        address: options.address,
        apiKey: options.secret ?? undefined,
        tls: options.tls.tls,
        timeoutMs: options.timeoutMs,
        retry: CLI_RETRIES,
      });
    } catch (error) {
      // An unreadable CA file or a malformed address: the SDK's TypeError says which.
      if (error instanceof TypeError) throw new CliError(error.message);
      throw error;
    }
  }

  /** The SDK's client (its helpers: waits, paged lists). */
  get client(): Spg99 {
    return this.sdk;
  }

  /**
   * Runs one call; a failure is rethrown as the CliError to print, e.g.
   * `await connection.call((client, options) => client.listProjects({}, options))`. The SDK already sets the deadline
   * and the credential; `options` is for a call that needs its own.
   */
  async call<T>(invoke: (client: ControlPlaneClient, options: Spg99CallOptions) => Promise<T>): Promise<T> {
    try {
      return await invoke(this.sdk.api, {});
    } catch (error) {
      throw this.describe(error);
    }
  }

  /** The one-line CliError for a failed call (anything but an API error is kept). */
  describe(error: unknown): unknown {
    return describeCallError(error, {
      command: this.options.command,
      address: this.options.address,
      credential: this.options.credential,
      timeoutMs: this.options.timeoutMs,
      tlsSource: this.options.tls.source,
    });
  }

  /** Closes the channel (the process can then exit). */
  close(): void {
    this.sdk.close();
  }
}

/** Refuses to call without a credential, saying where it comes from. */
export function requireSecret(options: Pick<ConnectionOptions, 'secret' | 'credential'>): void {
  if (options.secret !== null && options.secret !== '') return;
  if (options.credential === 'operator-token') {
    throw new CliError('no operator token: pass --operator-token-file <path> (the file the control plane reads with its --operator-token-file)');
  }
  throw new CliError(
    'no API key: export SPG99_API_KEY=<secret> (an admin creates one with `spg99 keys create <name>`; ' +
      'for a new tenant the operator runs `spg99 tenants create <name> --operator-token-file <path>`)',
  );
}

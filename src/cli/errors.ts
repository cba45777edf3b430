/**
 * The CLI's failures and how each becomes the one line it prints: `spg99: <what was wrong>: <what to do>`.
 * A {@link UsageError} (the command line itself is wrong) exits 2; a {@link CliError} (the call or its input
 * failed) exits 1. The SDK's typed errors are turned into CliErrors by {@link describeCallError}, which keeps the
 * server's message and adds the step the user can take.
 */
import { ApiError, Status, toApiError } from '../lib/sdk.js';

/** Exit code: done. */
export const EXIT_OK = 0;
/** Exit code: a call or its input failed (the server's answer, no API key, an unreachable control plane). */
export const EXIT_FAILURE = 1;
/** Exit code: the command line is wrong. */
export const EXIT_USAGE = 2;

/** The command line is wrong (unknown command or flag, missing or malformed argument). Exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';

  /**
   * @param message what was wrong, e.g. `missing argument <name>`.
   * @param usageLine the usage line of the command (or of the tool) to show with it.
   */
  constructor(
    message: string,
    readonly usageLine: string,
  ) {
    super(message);
  }
}

/** A failure the user can act on: an API error, an unreadable file, an endpoint that did not reach a state. Exits 1. */
export class CliError extends Error {
  override name = 'CliError';

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** What {@link describeCallError} needs to know about the call that failed. */
export interface CallDescription {
  /** The command, e.g. `projects create`. */
  command: string;
  /** host:port of the control plane. */
  address: string;
  /** How the call authenticated: an API key, or the operator token (tenants create). */
  credential: 'api-key' | 'operator-token';
  /** The call's deadline in ms, for DEADLINE_EXCEEDED. */
  timeoutMs: number;
  /** Whether the channel gave up connecting (grpc-js' TRANSIENT_FAILURE), when the caller can tell. */
  connectionFailed?: boolean;
  /** Where the CA the control plane is verified with came from, for a failed TLS handshake. */
  tlsSource?: string;
}

/**
 * grpc-js' words for a connection to the control plane that was never made or was dropped before an answer. They
 * open the details: an UNAVAILABLE the control plane itself answered (about the pageserver, say) may quote the
 * same words further on, and is no sign that the control plane is unreachable.
 */
const CONNECTION_FAILURE = /^(?:No connection established|Connection dropped|failed to connect|Name resolution failed|DNS resolution failed|(?:connect|read|write) E[A-Z]+|getaddrinfo)/i;

/** Text on one line: a server message never breaks the one-line rule. */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

/** grpc-js' connection failure without its boilerplate: `connect ECONNREFUSED 127.0.0.1:7700`. */
function connectionProblem(details: string): string {
  const cause = /(connect E[A-Z]+ \S+?|getaddrinfo E[A-Z_]+ \S+?)\.?(\s|$)/.exec(details)?.[1];
  return cause ?? details.replace(/\.?\s*Resolution note:.*$/, '');
}

/** grpc-js' words when the TLS handshake failed: the certificate is not one the CA trusts, or no TLS was spoken. */
const TLS_FAILURE = /certificate|CERT_|SSL|TLS|handshake|wrong version number|packet length too long/i;

/** Turns a failed control-plane call into the one-line error the user sees. Anything but an API error is kept. */
export function describeCallError(failure: unknown, call: CallDescription): unknown {
  const error = toApiError(failure);
  if (!(error instanceof ApiError)) return error;
  const details = oneLine(error.details) || Status[error.code];
  const prefix = call.command;
  switch (error.code) {
    case Status.UNAVAILABLE:
      if ((call.connectionFailed || CONNECTION_FAILURE.test(details)) && TLS_FAILURE.test(details)) {
        return new CliError(
          `the control plane at ${call.address} failed the TLS handshake (${connectionProblem(details)}): its certificate must be signed by the CA ` +
            `the CLI trusts, now ${call.tlsSource ?? 'the system\'s CAs'}; point SPG99_API_CA at the platform's CA file (make up keeps it in .spg99/tls/ca.crt)`,
          { cause: error },
        );
      }
      if (call.connectionFailed || CONNECTION_FAILURE.test(details)) {
        return new CliError(
          `the control plane at ${call.address} is not reachable (${connectionProblem(details)}): is it running (\`make up\`)? ` +
            'Otherwise point --api or SPG99_API at its host:port',
          { cause: error },
        );
      }
      return new CliError(`${prefix}: ${details}: the control plane is temporarily unavailable; retry in a moment`, { cause: error });
    case Status.DEADLINE_EXCEEDED:
      return new CliError(
        `${prefix}: no answer from the control plane at ${call.address} within ${call.timeoutMs / 1000}s: retry, or allow more time with --timeout`,
        { cause: error },
      );
    case Status.UNAUTHENTICATED:
      if (call.credential === 'operator-token') {
        return new CliError(`${prefix}: ${details}: check --operator-token-file (the file the control plane's --operator-token-file names)`, {
          cause: error,
        });
      }
      return new CliError(
        `${prefix}: ${details}: check SPG99_API_KEY (a key from \`spg99 keys create\` or \`spg99 tenants create\`, not revoked)`,
        { cause: error },
      );
    case Status.PERMISSION_DENIED:
      return new CliError(`${prefix}: ${details}: use an admin key in SPG99_API_KEY for changes`, { cause: error });
    case Status.INTERNAL:
    case Status.UNKNOWN:
    case Status.DATA_LOSS:
      return new CliError(`${prefix}: the control plane failed: ${details}: retry; if it persists, its log has the cause`, { cause: error });
    default:
      // INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNIMPLEMENTED...: the server's message
      // names the field or the state and what to do.
      return new CliError(`${prefix}: ${details}`, { cause: error });
  }
}

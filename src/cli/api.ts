/**
 * The CLI's connection to the control plane: one channel, the generated ControlPlaneService client, and the options
 * every call carries (the credential as `authorization: Bearer <secret>` and a deadline). A failed call becomes the
 * one-line {@link CliError} the user sees.
 */
import { Metadata, type CallOptions } from 'nice-grpc';
import type { DeadlineOptions } from 'nice-grpc-client-middleware-deadline';
import { connectivityState } from '@grpc/grpc-js';
import { ControlPlaneServiceDefinition } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { createSpgClient, openChannel, type SpgClient } from '../lib/grpc/client.js';
import { CliError, describeCallError } from './errors.js';

/** The generated client of the public API. */
export type ControlPlaneClient = SpgClient<typeof ControlPlaneServiceDefinition>;

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
}

/** An open connection; {@link close} it when the command is done. */
export class ControlPlaneConnection {
  private readonly channel: ReturnType<typeof openChannel>;
  /** The generated client; pass {@link callOptions} to every call, or use {@link call}. */
  readonly client: ControlPlaneClient;

  constructor(readonly options: ConnectionOptions) {
    this.channel = openChannel(options.address);
    this.client = createSpgClient(ControlPlaneServiceDefinition, this.channel);
  }

  /** The credential and a fresh deadline. */
  callOptions(): CallOptions & DeadlineOptions {
    const metadata = Metadata();
    if (this.options.secret !== null) metadata.set('authorization', `Bearer ${this.options.secret}`);
    return { metadata, deadline: this.options.timeoutMs };
  }

  /**
   * Runs one call with {@link callOptions}; a gRPC failure is rethrown as the CliError to print, e.g.
   * `await connection.call((client, options) => client.listProjects({}, options))`.
   */
  async call<T>(invoke: (client: ControlPlaneClient, options: CallOptions & DeadlineOptions) => Promise<T>): Promise<T> {
    try {
      return await invoke(this.client, this.callOptions());
    } catch (error) {
      throw describeCallError(error, {
        command: this.options.command,
        address: this.options.address,
        credential: this.options.credential,
        timeoutMs: this.options.timeoutMs,
        connectionFailed: this.connectionFailed(),
      });
    }
  }

  /** Closes the channel (the process can then exit). */
  close(): void {
    this.channel.close();
  }

  /** Whether grpc-js gave up connecting: the failure was the network, not the server. */
  private connectionFailed(): boolean {
    try {
      return this.channel.getConnectivityState(false) === connectivityState.TRANSIENT_FAILURE;
    } catch {
      return false;
    }
  }
}

/** Refuses to call without a credential, saying where it comes from. */
export function requireSecret(options: ConnectionOptions): void {
  if (options.secret !== null && options.secret !== '') return;
  if (options.credential === 'operator-token') {
    throw new CliError('no operator token: pass --operator-token-file <path> (the file the control plane reads with its --operator-token-file)');
  }
  throw new CliError(
    'no API key: export SPG99_API_KEY=<secret> (an admin creates one with `spg99 keys create <name>`; ' +
      'for a new tenant the operator runs `spg99 tenants create <name> --operator-token-file <path>`)',
  );
}

/**
 * `--wait` for endpoints start and stop: the SDK's wait (GetEndpoint polled until the endpoint reaches the wanted
 * state, fails, or the time is up), its outcomes worded as the CLI's one-line errors.
 */
import type { EndpointState, Endpoint } from '../../gen/spg99/controlplane/v1/controlplane.js';
import { EndpointFailedError, WaitTimeoutError } from '../lib/sdk.js';
import type { ControlPlaneConnection } from './api.js';
import { CliError } from './errors.js';
import { duration } from './output.js';

/**
 * Waits until the endpoint is `target`. Throws CliError when it is FAILED (with its reason) or still elsewhere after
 * `timeoutMs`.
 */
export async function waitForEndpointState(
  connection: ControlPlaneConnection,
  endpointId: string,
  target: EndpointState.ENDPOINT_STATE_RUNNING | EndpointState.ENDPOINT_STATE_STOPPED,
  timeoutMs: number,
): Promise<Endpoint> {
  try {
    return await connection.client.waitForEndpointState(endpointId, target, { timeoutMs });
  } catch (error) {
    if (error instanceof EndpointFailedError) {
      throw new CliError(
        `endpoint ${endpointId} FAILED: ${error.reason || 'no reason given'}: fix the cause and start it again (spg99 endpoints start ${endpointId})`,
        { cause: error },
      );
    }
    if (error instanceof WaitTimeoutError) {
      const waited = duration({ seconds: BigInt(Math.round(timeoutMs / 1000)), nanos: 0 }, '0s');
      throw new CliError(
        `endpoint ${endpointId} is still ${error.lastState} after ${waited}` +
          `${error.lastReason ? ` (${error.lastReason})` : ''}: check it later with spg99 endpoints get ${endpointId}, or wait longer with --wait-timeout`,
        { cause: error },
      );
    }
    throw connection.describe(error);
  }
}

/**
 * `--wait` for endpoints start and stop: StartEndpoint and StopEndpoint answer at once, so the CLI polls
 * GetEndpoint until the endpoint reaches the wanted state, fails, or the wait's time is up.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EndpointState, type Endpoint } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { ControlPlaneConnection } from './api.js';
import { CliError } from './errors.js';
import { duration } from './output.js';
import { endpointStateWord } from './views.js';

/** Time between two GetEndpoint calls. */
const POLL_INTERVAL_MS = 500;

/**
 * Polls until the endpoint is `target`. Throws CliError when it is FAILED (with its reason) or still elsewhere after
 * `timeoutMs`.
 */
export async function waitForEndpointState(
  connection: ControlPlaneConnection,
  endpointId: string,
  target: EndpointState.ENDPOINT_STATE_RUNNING | EndpointState.ENDPOINT_STATE_STOPPED,
  timeoutMs: number,
): Promise<Endpoint> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { endpoint } = await connection.call((client, options) => client.getEndpoint({ endpointId }, options));
    if (!endpoint) throw new CliError(`endpoints get: the control plane answered no endpoint for ${endpointId}: retry`);
    if (endpoint.state === target) return endpoint;
    if (endpoint.state === EndpointState.ENDPOINT_STATE_FAILED) {
      throw new CliError(
        `endpoint ${endpointId} FAILED: ${endpoint.stateReason || 'no reason given'}: fix the cause and start it again (spg99 endpoints start ${endpointId})`,
      );
    }
    if (Date.now() + POLL_INTERVAL_MS > deadline) {
      const waited = duration({ seconds: BigInt(Math.round(timeoutMs / 1000)), nanos: 0 }, '0s');
      throw new CliError(
        `endpoint ${endpointId} is still ${endpointStateWord(endpoint)} after ${waited}` +
          `${endpoint.stateReason ? ` (${endpoint.stateReason})` : ''}: check it later with spg99 endpoints get ${endpointId}, or wait longer with --wait-timeout`,
      );
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

/**
 * Waiting for endpoints. StartEndpoint and StopEndpoint answer at once (STARTING, SUSPENDING); these helpers poll
 * GetEndpoint (a retried call) until the endpoint is where the caller wants it, it FAILED, or the time is up.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EndpointState, endpointStateToJSON, type Endpoint } from '../../gen/spg99/controlplane/v1/controlplane.js';
import type { ControlPlaneApi } from './client.js';
import { EndpointFailedError, Spg99Error, WaitTimeoutError } from './errors.js';

/** A state to wait for: `running` or `stopped`, or the enum value. */
export type WantedState = 'running' | 'stopped' | EndpointState;

/** Options of the waits. */
export interface WaitOptions {
  /** How long to wait in ms. Default 300000 (a cold start takes seconds; a first start after creation, longer). */
  timeoutMs?: number;
  /** Time between two GetEndpoint calls in ms. Default 500. */
  pollIntervalMs?: number;
  /** Stops the wait (it then throws the signal's reason). */
  signal?: AbortSignal;
}

const DEFAULT_WAIT_MS = 300_000;
const DEFAULT_POLL_MS = 500;

/** The enum value of a {@link WantedState}. */
export function endpointState(state: WantedState): EndpointState {
  if (state === 'running') return EndpointState.ENDPOINT_STATE_RUNNING;
  if (state === 'stopped') return EndpointState.ENDPOINT_STATE_STOPPED;
  return state;
}

/** `RUNNING`, `STOPPED`, … */
export function stateWord(state: EndpointState): string {
  return endpointStateToJSON(state).replace(/^ENDPOINT_STATE_/, '');
}

/**
 * Polls until the endpoint is in `wanted` and answers it. Throws {@link EndpointFailedError} when it is FAILED (unless
 * FAILED is what was asked for), {@link WaitTimeoutError} when the time runs out, and the typed API errors of
 * GetEndpoint (NotFoundError for an unknown id; UnavailableError once its retries are spent).
 */
export async function waitForEndpointState(api: ControlPlaneApi, endpointId: string, wanted: WantedState, options: WaitOptions = {}): Promise<Endpoint> {
  const target = endpointState(wanted);
  const timeoutMs = options.timeoutMs ?? DEFAULT_WAIT_MS;
  const pollMs = options.pollIntervalMs ?? DEFAULT_POLL_MS;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    options.signal?.throwIfAborted();
    // Each poll may take no longer than the wait has left (but long enough for its retries to span a restart).
    const { endpoint } = await getEndpoint(api, endpointId, Math.max(deadline - Date.now(), 5_000), options.signal);
    if (endpoint.state === target) return endpoint;
    if (endpoint.state === EndpointState.ENDPOINT_STATE_FAILED) throw new EndpointFailedError(endpointId, endpoint.stateReason);
    if (Date.now() + pollMs > deadline) {
      throw new WaitTimeoutError(
        `endpoint ${endpointId} is still ${stateWord(endpoint.state)} after ${Math.round(timeoutMs / 1000)}s` +
          `${endpoint.stateReason ? ` (${endpoint.stateReason})` : ''}, not ${stateWord(target)}: check it later, or wait longer`,
        endpointId,
        stateWord(endpoint.state),
        endpoint.stateReason,
      );
    }
    await sleep(pollMs, undefined, { signal: options.signal });
  }
}

async function getEndpoint(api: ControlPlaneApi, endpointId: string, deadlineMs: number, signal?: AbortSignal): Promise<{ endpoint: Endpoint }> {
  const { endpoint } = await api.getEndpoint({ endpointId }, { deadline: deadlineMs, signal });
  if (!endpoint) throw new Spg99Error(`GetEndpoint answered no endpoint for ${endpointId}: the control plane is older than this SDK, or failed; retry`);
  return { endpoint };
}

/**
 * Starts the endpoint if it is not running (StartEndpoint) and answers once it is RUNNING: its Postgres accepts
 * connections, and the gateway routes to it. A RUNNING endpoint is answered after one call.
 */
export async function wakeEndpoint(api: ControlPlaneApi, endpointId: string, options: WaitOptions = {}): Promise<Endpoint> {
  const { endpoint } = await api.startEndpoint({ endpointId }, { signal: options.signal });
  if (endpoint?.state === EndpointState.ENDPOINT_STATE_RUNNING) return endpoint;
  return waitForEndpointState(api, endpointId, 'running', options);
}

/**
 * Typed errors. Every failed call of the public API throws an {@link ApiError} subclass chosen by its gRPC status, so a
 * caller writes `catch (error) { if (error instanceof NotFoundError) ... }` instead of comparing status codes. The
 * message is `<Method>: <the server's words>` (the server says what was wrong and what to do); `details` holds the
 * server's words alone and `cause` the transport's original error.
 */
import { ClientError, Status } from 'nice-grpc-common';

export { Status };

/** The base of every error this SDK throws. */
export class Spg99Error extends Error {
  override name = 'Spg99Error';
}

/** A call the control plane (or the network on the way to it) refused or failed. */
export class ApiError extends Spg99Error {
  override name = 'ApiError';
  /** The gRPC status, e.g. `Status.NOT_FOUND`. */
  readonly code: Status;
  /** The server's message alone (what was wrong and what to do). */
  readonly details: string;
  /** The RPC, e.g. `/spg99.controlplane.v1.ControlPlaneService/GetEndpoint`. */
  readonly method: string;

  constructor(code: Status, details: string, method: string, options?: { cause?: unknown }) {
    super(`${method.split('/').pop() ?? method}: ${details || Status[code]}`, options);
    this.code = code;
    this.details = details;
    this.method = method;
  }
}

/** A field of the request is missing or wrong; the message names it. Not worth retrying. */
export class InvalidArgumentError extends ApiError {
  override name = 'InvalidArgumentError';
}
/** No such resource in the key's tenant (another tenant's ids answer this too). */
export class NotFoundError extends ApiError {
  override name = 'NotFoundError';
}
/** It exists already (e.g. a role of that name on the branch). */
export class AlreadyExistsError extends ApiError {
  override name = 'AlreadyExistsError';
}
/** The API key is missing, unknown or revoked. */
export class UnauthenticatedError extends ApiError {
  override name = 'UnauthenticatedError';
}
/** The key may not do this (a READ key asked for a change). */
export class PermissionDeniedError extends ApiError {
  override name = 'PermissionDeniedError';
}
/** The resource is not in a state that allows it (e.g. deleting a branch that has children). */
export class FailedPreconditionError extends ApiError {
  override name = 'FailedPreconditionError';
}
/** A concurrent change won (a lease or term was lost); read again and retry the whole operation. */
export class AbortedError extends ApiError {
  override name = 'AbortedError';
}
/** A limit was reached. */
export class ResourceExhaustedError extends ApiError {
  override name = 'ResourceExhaustedError';
}
/**
 * The control plane, or something it needs, is not reachable now. Idempotent calls were already retried with backoff
 * before this was thrown; a create was not (it may or may not have happened: list to find out).
 */
export class UnavailableError extends ApiError {
  override name = 'UnavailableError';
}
/** No answer within the call's deadline (the `timeoutMs` of the client, or the call's own `deadline`). */
export class DeadlineExceededError extends ApiError {
  override name = 'DeadlineExceededError';
}
/** The server failed (INTERNAL, UNKNOWN, DATA_LOSS); its log, under the trace id in the message, has the cause. */
export class InternalError extends ApiError {
  override name = 'InternalError';
}
/** The server does not know the call (an older control plane than this SDK). */
export class UnimplementedError extends ApiError {
  override name = 'UnimplementedError';
}
/** The call was cancelled (by the caller's signal, or the server shutting down). */
export class CancelledError extends ApiError {
  override name = 'CancelledError';
}

const CLASSES: Partial<Record<Status, typeof ApiError>> = {
  [Status.INVALID_ARGUMENT]: InvalidArgumentError,
  [Status.OUT_OF_RANGE]: InvalidArgumentError,
  [Status.NOT_FOUND]: NotFoundError,
  [Status.ALREADY_EXISTS]: AlreadyExistsError,
  [Status.UNAUTHENTICATED]: UnauthenticatedError,
  [Status.PERMISSION_DENIED]: PermissionDeniedError,
  [Status.FAILED_PRECONDITION]: FailedPreconditionError,
  [Status.ABORTED]: AbortedError,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Status.UNAVAILABLE]: UnavailableError,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Status.INTERNAL]: InternalError,
  [Status.UNKNOWN]: InternalError,
  [Status.DATA_LOSS]: InternalError,
  [Status.UNIMPLEMENTED]: UnimplementedError,
  [Status.CANCELLED]: CancelledError,
};

/** The typed error for a transport error; anything but a gRPC ClientError is answered as it is. */
export function toApiError(error: unknown): unknown {
  if (!(error instanceof ClientError)) return error;
  const ErrorClass = CLASSES[error.code] ?? ApiError;
  return new ErrorClass(error.code, error.details, error.path, { cause: error });
}

/** An endpoint reached FAILED while a helper waited for another state; `reason` is the control plane's. */
export class EndpointFailedError extends Spg99Error {
  override name = 'EndpointFailedError';
  constructor(
    readonly endpointId: string,
    readonly reason: string,
  ) {
    super(`endpoint ${endpointId} FAILED: ${reason || 'no reason given'}: fix the cause and start it again (StartEndpoint)`);
  }
}

/** A helper's wait ran out of time; `lastState` is the state the endpoint was last seen in. */
export class WaitTimeoutError extends Spg99Error {
  override name = 'WaitTimeoutError';
  constructor(
    message: string,
    readonly endpointId: string,
    readonly lastState: string,
    readonly lastReason: string,
  ) {
    super(message);
  }
}

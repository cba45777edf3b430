/**
 * Errors at gRPC boundaries. Expected outcomes are thrown as `ServerError(Status.X, message)` through the helpers
 * below; the error middleware in server.ts logs anything else once and answers INTERNAL. Messages say what was
 * wrong and what to do, because they reach users.
 */
import { ServerError, Status, ClientError } from 'nice-grpc-common';

export { ServerError, Status, ClientError };

/** The caller sent a wrong value: name the field and what is expected. */
export function invalidArgument(message: string): ServerError {
  return new ServerError(Status.INVALID_ARGUMENT, message);
}

/** The named thing does not exist. */
export function notFound(message: string): ServerError {
  return new ServerError(Status.NOT_FOUND, message);
}

/** The system is not in a state where this call can succeed (e.g. a gap in WAL). */
export function failedPrecondition(message: string): ServerError {
  return new ServerError(Status.FAILED_PRECONDITION, message);
}

/** The caller's term or lease was superseded: it must stop, not retry. */
export function aborted(message: string): ServerError {
  return new ServerError(Status.ABORTED, message);
}

/** A retryable condition: the caller may try again with backoff. */
export function unavailable(message: string): ServerError {
  return new ServerError(Status.UNAVAILABLE, message);
}

/** The thing being created exists already (a retried create). */
export function alreadyExists(message: string): ServerError {
  return new ServerError(Status.ALREADY_EXISTS, message);
}

/** Whether an error from a client call has the given status. */
export function hasStatus(error: unknown, code: Status): boolean {
  return error instanceof ClientError ? error.code === code : error instanceof ServerError ? error.code === code : false;
}

/** Whether a failed client call is worth retrying with backoff. */
export function isRetryable(error: unknown): boolean {
  if (error instanceof ClientError) {
    return error.code === Status.UNAVAILABLE || error.code === Status.DEADLINE_EXCEEDED || error.code === Status.CANCELLED;
  }
  return !(error instanceof ServerError);
}

/**
 * JSON logs. Every line carries the component name and, where there is one, the trace id of the request or
 * operation it belongs to, so that one operation can be followed across components.
 */
import { randomBytes } from 'node:crypto';
import { pino, type Logger as PinoLogger } from 'pino';

/** A structured logger (pino). */
export type Logger = PinoLogger;

/** Creates the root logger of a component. Level from `SPG99_LOG_LEVEL` (default `info`). */
export function createLogger(component: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({
    level: process.env.SPG99_LOG_LEVEL ?? 'info',
    base: { component, pid: process.pid, ...bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}

/** A new W3C-style trace id (32 hex digits). */
export function newTraceId(): string {
  return randomBytes(16).toString('hex');
}

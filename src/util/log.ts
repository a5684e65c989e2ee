/**
 * The pino options of a service process (the API and the worker): the given level, JSON lines on a pipe,
 * pino-pretty on a TTY, and the request headers that carry secrets redacted.
 */
import type { LoggerOptions } from 'pino';

/** Request headers never logged (API keys, idempotency keys). */
export const REDACTED_HEADERS = ['req.headers.authorization', 'req.headers["idempotency-key"]'];

/**
 * pino options for a service process.
 * @param level pino level (`LOG_LEVEL`)
 * @param name the logger's `name` field (e.g. `dpo-worker`), omitted when not given
 * @param tty whether stdout is a terminal (default: `process.stdout.isTTY`)
 */
export function serviceLoggerOptions(level: string, name?: string, tty = process.stdout.isTTY === true): LoggerOptions {
  const base: LoggerOptions = { level, redact: REDACTED_HEADERS, ...(name ? { name } : {}) };
  return tty ? { ...base, transport: { target: 'pino-pretty', options: { translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } } } : base;
}

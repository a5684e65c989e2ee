/**
 * The API's listening entry (`dpo serve`, `make api`): validated env, pino logger (pretty only on a TTY),
 * buildApp, listen on HOST:PORT, graceful shutdown with close-with-grace (stop accepting, drain in-flight
 * requests, close the queue connection).
 */
import closeWithGrace from 'close-with-grace';
import type { FastifyInstance } from 'fastify';
import { pathToFileURL } from 'node:url';
import { loadEnv, type ServiceEnv } from '../config/env.js';
import type { LoggerOptions } from 'pino';
import { serviceLoggerOptions } from '../util/log.js';
import { buildApp } from './app.js';

/** pino options of the API process (src/util/log.ts: pretty on a TTY, JSON lines otherwise, auth headers redacted). */
export function loggerOptions(env: Pick<ServiceEnv, 'LOG_LEVEL'>): LoggerOptions {
  return serviceLoggerOptions(env.LOG_LEVEL);
}

/**
 * Build and start the API; installs signal handlers that close it gracefully.
 * @returns the listening app and its address.
 */
export async function startServer(env: ServiceEnv = loadEnv()): Promise<{ app: FastifyInstance; address: string }> {
  const app = await buildApp({ env, logger: loggerOptions(env) });
  closeWithGrace({ delay: env.SHUTDOWN_GRACE_MS }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing the API after an error');
    else app.log.info({ signal }, 'closing the API');
    await app.close();
  });
  const address = await app.listen({ port: env.PORT, host: env.HOST });
  app.log.info({ address, storage: env.STORAGE_BACKEND, prefix: env.QUEUE_PREFIX }, 'API listening; docs at /docs');
  return { app, address };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  startServer().catch((err: Error & { code?: string }) => {
    process.stderr.write(`dpo serve: ${err.message}\n`);
    process.exit(1);
  });
}

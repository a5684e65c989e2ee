/**
 * The model layer's pino logger. Writes to stderr so that CLI commands printing generated text or scores
 * on stdout stay clean. Callers (worker, trainer) may replace it with their own child logger.
 */
import { pino, type Logger } from 'pino';

let logger: Logger = pino({ name: 'models', level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));

/** The current model-layer logger. */
export function modelLog(): Logger {
  return logger;
}

/** Route model-layer logs (warnings about ignored config fields, load timings) to `l`. */
export function setModelLogger(l: Logger): void {
  logger = l;
}

/** Helpers of the service tests: unique queue prefixes, Redis cleanup, a closed port, sample payloads. */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { loadEnv, type ServiceEnv } from '../../src/config/env.js';

export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A queue prefix no other test file uses. */
export function uniquePrefix(tag: string): string {
  return `test-${tag}-${process.pid}-${randomUUID().slice(0, 8)}`;
}

/** A validated env for tests (quiet logs, own prefix, artifacts under `dir`). */
export function testEnv(prefix: string, extra: Record<string, string> = {}): ServiceEnv {
  // datasets and artifacts of tests go to a temporary directory unless the test names one
  const STORAGE_DIR = join(tmpdir(), `dpo-test-store-${process.pid}`);
  return loadEnv({ REDIS_URL, QUEUE_PREFIX: prefix, LOG_LEVEL: 'silent', RATE_LIMIT_MAX: '0', STORAGE_DIR, ...extra });
}

/** Delete every Redis key under `prefix:` (obliterate plus our own keys: cancel flags, stats). */
export async function dropPrefix(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}

/** A TCP port on 127.0.0.1 where nothing listens. */
export async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

/** Harmless toy rows (never real HH data). */
export function toyRows(n = 2, tag = ''): Array<{ prompt: string; chosen: string; rejected: string }> {
  return Array.from({ length: n }, (_, i) => ({
    prompt: `Tell a short story about a cat number ${i}${tag}.`,
    chosen: ` The cat ${i} found a warm sunny spot and slept happily.`,
    rejected: ` Cat ${i}.`,
  }));
}

/**
 * Redis connections for BullMQ. BullMQ 6 needs ioredis installed by the app; workers need
 * `maxRetriesPerRequest: null`, while the API's producer connection fails fast when Redis is down
 * (`enableOfflineQueue: false`, bullmq docs/gitbook/guide/going-to-production.md). No `enableAutoPipelining`:
 * it cut the trigger's CPU per request by 14-27 % in an A/B, but under load in bench:api ioredis 6.0.0 threw
 * an uncaught `results[i] is not iterable` from its auto-pipeline callback (redis/ioredis#1931), which would
 * take the API down.
 */
import { Redis, type RedisOptions } from 'ioredis';

/**
 * Open an ioredis client for `url`.
 * @param role `producer` (API: fail fast, no offline queue) or `worker` (blocking commands, retry forever).
 * The caller owns the client and must `quit()` it (BullMQ leaves caller-supplied clients open).
 */
export function createRedis(url: string, role: 'producer' | 'worker', extra: RedisOptions = {}): Redis {
  const base: RedisOptions =
    role === 'producer'
      ? {
          enableOfflineQueue: false,
          maxRetriesPerRequest: 1,
          connectTimeout: 2000,
          // keep retrying in the background so the API recovers when Redis comes back
          retryStrategy: (times) => Math.min(times * 200, 2000),
        }
      : { maxRetriesPerRequest: null, retryStrategy: (times) => Math.min(times * 500, 5000) };
  return new Redis(url, { ...base, ...extra, lazyConnect: false });
}

/** Key of the cancellation record of a job (also the tombstone of a removed queued job). */
export function cancelKey(prefix: string, queue: string, jobId: string): string {
  return `${prefix}:${queue}:dpo-cancel:${jobId}`;
}

/** Key of an idempotency record: `{jobId, requestHash}` of a (principal, community, key) triple. */
export function idempotencyKey(prefix: string, queue: string, principalId: string, communityId: string, scope: string): string {
  return `${prefix}:${queue}:dpo-idem:${principalId}:${communityId}:${scope}`;
}

/** Key of the sorted set of a community's live (waiting or active) job ids, scored by enqueue time. */
export function liveJobsKey(prefix: string, queue: string, communityId: string): string {
  return `${prefix}:${queue}:dpo-live:${communityId}`;
}

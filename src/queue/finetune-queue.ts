/**
 * The producer side of the `finetune` queue: enqueue with idempotent job ids, read a job's status,
 * cancel a queued or running job, count jobs by state. Used by the API (and by tests).
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { cancelKey, createRedis } from './connection.js';
import { cancelledStatus, toJobStatus, type CancelRecord } from './status.js';
import { settlesWithin, withTimeout } from '../util/timeout.js';
import type { TrainConfig } from '../config/schema.js';
import { canonicalSha256 } from '../training/data/hash.js';
import type { PreferenceExample } from '../training/types.js';
import { QueueNames, type FinetunePayload, type JobStatus, type QueueJobTypes } from './types.js';

export { canonicalJson } from '../training/data/hash.js';

type FT = QueueJobTypes['finetune'];
export type FinetuneQueue = Queue<FT['data'], FT['result'], FT['name']>;

export interface FinetuneQueueOptions {
  redisUrl: string;
  prefix: string;
  /** Seconds finished jobs stay in Redis (and so stay queryable and block a duplicate id). */
  retentionSeconds: number;
}

/** Redis is not connected (the API answers 503 at once instead of waiting for a reconnect). */
export class QueueUnavailableError extends Error {
  readonly code = 'REDIS_UNAVAILABLE';
  constructor(detail: string) {
    super(`the job queue (Redis) is unavailable: ${detail}`);
    this.name = 'QueueUnavailableError';
  }
}

/** The job is already finished; it cannot be cancelled. */
export class JobFinishedError extends Error {
  readonly code = 'JOB_ALREADY_FINISHED';
  constructor(jobId: string, state: string) {
    super(`job ${jobId} is already ${state}; only queued or active jobs can be cancelled`);
    this.name = 'JobFinishedError';
  }
}

/** sha256 hex of the canonical JSON (src/training/data/hash.ts) of `{dataset, config}`. */
export function datasetHash(dataset: PreferenceExample[], config?: Record<string, unknown>): string {
  return canonicalSha256({ dataset, config: config ?? null });
}

/**
 * The deterministic job id of a request: from the Idempotency-Key when given, else from communityId +
 * dataset hash. `ft-` + 24 hex chars: never contains ':' and is never all digits (BullMQ job-id rules).
 */
export function jobIdFor(communityId: string, hash: string, idempotencyKey?: string): string {
  const basis = idempotencyKey ? `key\0${communityId}\0${idempotencyKey}` : `data\0${communityId}\0${hash}`;
  return `ft-${createHash('sha256').update(basis).digest('hex').slice(0, 24)}`;
}

export interface EnqueueResult {
  jobId: string;
  /** false when an existing (queued, active or completed) job was returned */
  created: boolean;
  status: JobStatus;
}

/** Optional request fields stored with a job (GET /jobs echoes them; the worker acts on them). */
export type JobRequestFields = Partial<Pick<FinetunePayload, 'suffix' | 'method' | 'datasetId' | 'evalDatasetId' | 'callbackUrl'>>;

/** Producer-side service for the `finetune` queue. */
export class FinetuneQueueService {
  readonly queue: FinetuneQueue;
  readonly redis: Redis;
  readonly prefix: string;
  private readonly retentionSeconds: number;

  constructor(opts: FinetuneQueueOptions) {
    this.prefix = opts.prefix;
    this.retentionSeconds = opts.retentionSeconds;
    this.redis = createRedis(opts.redisUrl, 'producer');
    // a connection error must not crash the API: /health reports it
    this.redis.on('error', () => {});
    this.queue = new Queue<FT['data'], FT['result'], FT['name']>(QueueNames.finetune, {
      connection: this.redis,
      prefix: opts.prefix,
      defaultJobOptions: {
        attempts: 1,
        removeOnComplete: { age: opts.retentionSeconds },
        removeOnFail: { age: opts.retentionSeconds },
      },
    });
    this.queue.on('error', () => {});
  }

  /**
   * Wait until the Redis connection is ready: while it is still making its first connection (`wait`,
   * `connecting`, `connect`) for up to `timeoutMs`; not at all when it is reconnecting or closed.
   * @returns whether it is ready.
   */
  async waitUntilConnected(timeoutMs = 2000): Promise<boolean> {
    const initial = (st: string) => st === 'wait' || st === 'connecting' || st === 'connect';
    const deadline = Date.now() + timeoutMs;
    while (initial(this.redis.status) && Date.now() < deadline) await sleep(20);
    return this.redis.status === 'ready';
  }

  /** Run a Redis-backed operation only when connected, bounded in time. */
  private async guarded<T>(what: string, fn: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
    if (!(await this.waitUntilConnected())) throw new QueueUnavailableError(`connection is ${this.redis.status}`);
    return withTimeout(fn(), timeoutMs, () => new QueueUnavailableError(`${what} timed out after ${timeoutMs} ms`));
  }

  private cancelKey(jobId: string): string {
    return cancelKey(this.prefix, QueueNames.finetune, jobId);
  }

  private async cancelRecord(jobId: string): Promise<CancelRecord | null> {
    const raw = await this.redis.get(this.cancelKey(jobId));
    return raw ? (JSON.parse(raw) as CancelRecord) : null;
  }

  /**
   * Add a finetune job, or return the existing one with the same id (Idempotency-Key, else communityId +
   * dataset + config hash). A failed or cancelled job with that id is replaced by a fresh one.
   * @throws the Redis error when Redis is unreachable (the API maps it to 503).
   */
  async enqueue(
    req: { communityId: string; dataset: PreferenceExample[]; config: TrainConfig },
    idempotencyKey?: string,
    extra: JobRequestFields = {},
  ): Promise<EnqueueResult> {
    return this.guarded('enqueue', () => this.enqueueNow(req, idempotencyKey, extra));
  }

  private async enqueueNow(
    req: { communityId: string; dataset: PreferenceExample[]; config: TrainConfig },
    idempotencyKey?: string,
    extra: JobRequestFields = {},
  ): Promise<EnqueueResult> {
    // the request fields are part of the duplicate check (same rows, other callbackUrl = another job)
    const defined = Object.fromEntries(Object.entries(extra).filter(([, v]) => v !== undefined));
    const hash = datasetHash(req.dataset, Object.keys(defined).length > 0 ? { config: req.config, ...defined } : req.config);
    const jobId = jobIdFor(req.communityId, hash, idempotencyKey);
    const existing = await this.statusNow(jobId);
    if (existing && existing.state !== 'failed' && existing.state !== 'cancelled') {
      return { jobId, created: false, status: existing };
    }
    if (existing) {
      const old = await Job.fromId(this.queue, jobId);
      if (old) await old.remove();
    }
    await this.redis.del(this.cancelKey(jobId));
    const payload: FinetunePayload = {
      communityId: req.communityId,
      dataset: req.dataset,
      config: req.config,
      datasetHash: hash,
      requestedAt: new Date().toISOString(),
      ...extra,
    };
    const job = await this.queue.add('finetune', payload, { jobId });
    const status = toJobStatus({ id: jobId, data: payload, progress: 0, returnvalue: null, timestamp: job.timestamp }, 'waiting');
    return { jobId, created: true, status };
  }

  /** The status of a job, or null when the id is unknown (or expired). */
  async getStatus(jobId: string): Promise<JobStatus | null> {
    return this.guarded('status', () => this.statusNow(jobId));
  }

  private async statusNow(jobId: string): Promise<JobStatus | null> {
    // State first, then the job's fields: a job that finishes in between is re-read, so a `completed`
    // state never comes with the fields of its running self (no artifact, no finishedOn).
    let state = await this.queue.getJobState(jobId);
    let job = await Job.fromId<FT['data'], FT['result'], FT['name']>(this.queue, jobId);
    const cancel = await this.cancelRecord(jobId);
    if (!job) return cancel ? cancelledStatus(cancel) : null;
    if ((state === 'completed' || state === 'failed') && !job.finishedOn) {
      job = (await Job.fromId<FT['data'], FT['result'], FT['name']>(this.queue, jobId)) ?? job;
    } else if (state !== 'completed' && state !== 'failed' && job.finishedOn) {
      state = await job.getState();
    }
    return toJobStatus(
      {
        id: jobId,
        data: job.data,
        progress: job.progress,
        returnvalue: job.returnvalue,
        failedReason: job.failedReason,
        timestamp: job.timestamp,
        finishedOn: job.finishedOn,
      },
      state,
      cancel,
    );
  }

  /**
   * Cancel a queued or running job. A queued job is removed from the queue at once (a tombstone keeps
   * GET /jobs answering `cancelled`); a running job is flagged and its worker aborts training within about
   * a second, after which the job ends `cancelled`.
   * @returns the status after the request, or null for an unknown id.
   * Cancelling a cancelled job returns its status again.
   * @throws JobFinishedError when the job already completed or failed.
   */
  async cancel(jobId: string): Promise<JobStatus | null> {
    return this.guarded('cancel', () => this.cancelNow(jobId));
  }

  private async cancelNow(jobId: string): Promise<JobStatus | null> {
    const job = await Job.fromId<FT['data'], FT['result'], FT['name']>(this.queue, jobId);
    if (!job) {
      const rec = await this.cancelRecord(jobId);
      return rec ? cancelledStatus(rec) : null;
    }
    const before = await this.statusNow(jobId);
    if (before?.state === 'cancelled') return before;
    if (before && (before.state === 'completed' || before.state === 'failed')) {
      throw new JobFinishedError(jobId, before.state);
    }
    const rec: CancelRecord = {
      jobId,
      communityId: job.data.communityId,
      createdAt: job.timestamp,
      requestedAt: Date.now(),
      removed: false,
      request: {
        communityId: job.data.communityId,
        suffix: job.data.suffix,
        method: job.data.method,
        datasetId: job.data.datasetId,
        evalDatasetId: job.data.evalDatasetId,
        callbackUrl: job.data.callbackUrl,
      },
    };
    const key = this.cancelKey(jobId);
    await this.redis.set(key, JSON.stringify(rec), 'EX', this.retentionSeconds);
    const state = await job.getState();
    if (state === 'waiting' || state === 'delayed' || state === 'prioritized') {
      try {
        await job.remove();
        rec.removed = true;
        await this.redis.set(key, JSON.stringify(rec), 'EX', this.retentionSeconds);
        return cancelledStatus(rec);
      } catch {
        // it became active meanwhile (locked): the worker sees the flag and aborts
      }
    }
    return this.statusNow(jobId);
  }

  /** Job counts by BullMQ state (queue depth for /metrics). */
  async counts(): Promise<Record<string, number>> {
    return this.guarded('counts', () => this.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed'));
  }

  /** PING Redis with a timeout; true when it answers. */
  async ping(timeoutMs = 1000): Promise<boolean> {
    if (!(await this.waitUntilConnected())) return false;
    try {
      // afterPendingIo: if the event loop was blocked, a reply that already arrived is processed (poll
      // phase) before this declares a timeout (check phase)
      const r = await withTimeout(this.redis.ping(), timeoutMs, () => new Error('ping timeout'), { afterPendingIo: true });
      return r === 'PONG';
    } catch {
      return false;
    }
  }

  /** Close the queue and quit the Redis client (BullMQ leaves caller-supplied clients open). */
  async close(): Promise<void> {
    if (this.redis.status === 'ready') {
      await settlesWithin(
        this.queue.close().catch(() => {}),
        2000,
      );
    }
    this.redis.disconnect();
  }
}

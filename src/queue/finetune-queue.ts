/**
 * The producer side of the `finetune` queue: enqueue with idempotent job ids, read a job's status,
 * cancel a queued or running job, count jobs by state. Used by the API (and by tests).
 */
import { createHash, randomFillSync } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { prepareDataset, sha256Hex, type DatasetRef, type DatasetStore, type PreparedDataset } from '../storage/datasets.js';
import { reserve } from './reserve.js';
import type { JobIndex } from './job-index.js';
import type { JobEventLog, NewJobEvent } from './events.js';
import { cancelKey, createRedis, idempotencyKey as idemRedisKey, liveJobsKey } from './connection.js';
import { cancelledStatus, toJobStatus, type CancelRecord } from './status.js';
import { settlesWithin, withTimeout } from '../util/timeout.js';
import type { TrainConfig } from '../config/schema.js';
import { canonicalJson, canonicalJsonOf, canonicalSha256 } from '../training/data/hash.js';
import type { DatasetRow } from '../training/types.js';
import { QueueNames, type FinetunePayload, type JobStatus, type QueueJobTypes } from './types.js';

export { canonicalJson };

type FT = QueueJobTypes['finetune'];
export type FinetuneQueue = Queue<FT['data'], FT['result'], FT['name']>;

export interface FinetuneQueueOptions {
  redisUrl: string;
  prefix: string;
  /** Seconds finished jobs stay in Redis (and so stay queryable and block a duplicate id). */
  retentionSeconds: number;
  /** Where inline rows go at enqueue (required to enqueue inline rows). */
  datasets?: DatasetStore;
  /** Waiting + active jobs per community (0 = no cap). */
  maxJobsPerCommunity?: number;
  /** Waiting + active jobs of the queue (0 = no cap). */
  maxQueuedJobs?: number;
}

/** Retry-After of a 429 from a job cap, seconds. */
export const JOB_LIMIT_RETRY_AFTER_SECONDS = 30;

const isRef = (d: unknown): d is DatasetRef => typeof d === 'object' && d !== null && !Array.isArray(d) && typeof (d as DatasetRef).datasetId === 'string';

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
export function datasetHash(dataset: unknown, config?: Record<string, unknown>): string {
  return canonicalSha256({ dataset, config: config ?? null });
}

/**
 * The request hash of idempotency: `canonicalSha256({ communityId, config, dataset, fields })` (sha256 hex of
 * the canonical JSON, keys sorted), written out in that key order so that the config's canonical JSON comes
 * from `canonicalJsonOf` (computed once per memoised config, not per request).
 */
export function requestHashOf(communityId: string, datasetSha256: string, config: unknown, fields: Record<string, unknown>): string {
  return sha256Hex(
    `{"communityId":${canonicalJson(communityId)},"config":${canonicalJsonOf(config ?? null)},"dataset":${canonicalJson(datasetSha256)},"fields":${canonicalJson(fields)}}`,
  );
}

// crypto-random bytes drawn 4 KiB at a time (one randomBytes call per id cost ~1.5 us; a slice of the pool ~0.1)
const idPool = Buffer.allocUnsafe(4096);
let idPoolOffset = idPool.length;

/** A fresh job id: `ft-` + 24 hex digits of crypto-random bytes (96 bits, from a pool refilled with
 *  crypto.randomFillSync; never ':' and never all digits, BullMQ's job-id rules). Nothing in it is derived
 *  from the request. */
export function newJobId(): string {
  if (idPoolOffset + 12 > idPool.length) {
    randomFillSync(idPool);
    idPoolOffset = 0;
  }
  const id = `ft-${idPool.toString('hex', idPoolOffset, idPoolOffset + 12)}`;
  idPoolOffset += 12;
  return id;
}

/** 409: the Idempotency-Key was used before with a different request. */
export class IdempotencyKeyReusedError extends Error {
  readonly code = 'IDEMPOTENCY_KEY_REUSED';
  constructor(readonly jobId: string) {
    super(`this Idempotency-Key was already used for job ${jobId} with a different request body; use a new key for a new request`);
    this.name = 'IdempotencyKeyReusedError';
  }
}

/** 429: a job cap (MAX_JOBS_PER_COMMUNITY or MAX_QUEUED_JOBS) is reached. */
export class JobLimitError extends Error {
  readonly code = 'JOB_LIMIT_REACHED';
  constructor(
    message: string,
    readonly retryAfterSeconds: number,
  ) {
    super(message);
    this.name = 'JobLimitError';
  }
}

export interface EnqueueResult {
  jobId: string;
  /** false when an existing (queued, active or completed) job was returned */
  created: boolean;
  status: JobStatus;
}

/** Optional request fields stored with a job (GET /jobs echoes them; the worker acts on them). */
export type JobRequestFields = Partial<Pick<FinetunePayload, 'suffix' | 'method' | 'datasetId' | 'evalDatasetId' | 'callbackUrl'>>;
/** A request to enqueue: inline rows (stored first) or a reference to a stored dataset. */
export interface EnqueueRequest {
  communityId: string;
  /** Inline rows (preference pairs, or prompts for method online_dpo) or a stored dataset. */
  dataset: DatasetRow[] | DatasetRef;
  /** The resolved training config (src/config resolveRequestConfig). */
  config: TrainConfig;
}

export interface EnqueueOptions {
  /** The client's Idempotency-Key; without one, the same request body is the key. */
  idempotencyKey?: string;
  /** Who asks (Principal.id): idempotency records are scoped to (principal, community). */
  principalId?: string;
  /** Optional request fields stored with the job (suffix, method, callbackUrl, ...): part of the request hash. */
  fields?: JobRequestFields;
  /**
   * Record a created job in this job index with this first event, in the reservation's round trip (removed
   * again when the job cannot be added). Nothing is recorded for a duplicate.
   */
  queued?: { index: JobIndex; events: JobEventLog; event: NewJobEvent };
}

/**
 * How long a reservation whose job is not in the queue yet counts as "being created" (ms): its idempotency
 * record answers equal requests with its job id, its live-set entry is not pruned, and its job-list index
 * entry is kept (src/api/routes/jobs-list.ts).
 */
export const RESERVATION_GRACE_MS = 60_000;

function safeParse(raw: string): { jobId: string; requestHash: string; at?: number } | null {
  try {
    const v = JSON.parse(raw) as { jobId?: unknown; requestHash?: unknown; at?: unknown };
    if (typeof v.jobId !== 'string' || typeof v.requestHash !== 'string') return null;
    return { jobId: v.jobId, requestHash: v.requestHash, ...(typeof v.at === 'number' ? { at: v.at } : {}) };
  } catch {
    return null;
  }
}

/** Producer-side service for the `finetune` queue. */
export class FinetuneQueueService {
  readonly queue: FinetuneQueue;
  readonly redis: Redis;
  readonly prefix: string;
  private readonly retentionSeconds: number;
  readonly datasets: DatasetStore | undefined;
  private readonly maxPerCommunity: number;
  private readonly maxQueued: number;

  constructor(opts: FinetuneQueueOptions) {
    this.prefix = opts.prefix;
    this.retentionSeconds = opts.retentionSeconds;
    this.datasets = opts.datasets;
    this.maxPerCommunity = opts.maxJobsPerCommunity ?? 0;
    this.maxQueued = opts.maxQueuedJobs ?? 0;
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
   * Add a finetune job under a fresh random id, or return the job an earlier request with the same
   * Idempotency-Key (else the same body) made, when it is queued, active or completed. Idempotency records
   * live in Redis under (principal, community, key) for JOB_RETENTION_SECONDS. Inline rows are stored in the
   * dataset store first; the job holds only the reference.
   * @throws IdempotencyKeyReusedError when the key was used with a different body; JobLimitError when a cap
   *   is reached; QueueUnavailableError / the Redis error when Redis is unreachable (the API maps it to 503).
   */
  async enqueue(req: EnqueueRequest, opts: EnqueueOptions | string = {}, fields?: JobRequestFields): Promise<EnqueueResult> {
    const o = typeof opts === 'string' ? { idempotencyKey: opts, fields } : { ...opts, fields: opts.fields ?? fields };
    return this.guarded('enqueue', () => this.enqueueNow(req, o));
  }

  private async enqueueNow(req: EnqueueRequest, opts: EnqueueOptions): Promise<EnqueueResult> {
    const q = QueueNames.finetune;
    let prepared: PreparedDataset | null = null;
    let ref: DatasetRef;
    if (isRef(req.dataset)) ref = req.dataset;
    else {
      // canonical JSON and sha256 once: the store writes this text without hashing it again
      prepared = prepareDataset(req.dataset);
      ref = prepared.ref;
    }
    // the request fields are part of the request (same rows, another callbackUrl = another job)
    const fields = Object.fromEntries(Object.entries(opts.fields ?? {}).filter(([, v]) => v !== undefined)) as JobRequestFields;
    const requestHash = requestHashOf(req.communityId, ref.sha256, req.config ?? null, fields);
    const scope = opts.idempotencyKey
      ? `key:${createHash('sha256').update(opts.idempotencyKey).digest('hex').slice(0, 32)}`
      : `body:${requestHash.slice(0, 32)}`;
    const idemKey = idemRedisKey(this.prefix, q, opts.principalId ?? 'open', req.communityId, scope);
    const jobId = newJobId();
    const now = Date.now();
    const record = JSON.stringify({ jobId, requestHash, at: now });
    const queued = opts.queued ? opts.queued.index.queuedRecordArgs(jobId, req.communityId, now, opts.queued.events, opts.queued.event) : undefined;
    const k = this.queue.keys;
    const keys = {
      idem: idemKey,
      live: liveJobsKey(this.prefix, q, req.communityId),
      wait: k.wait!,
      paused: k.paused!,
      active: k.active!,
      delayed: k.delayed!,
      prioritized: k.prioritized!,
    };
    // one round trip (src/queue/reserve.ts); again only when a record must be replaced or the live set pruned
    let expected: string | null = null;
    let pruned = false;
    for (let attempt = 0; ; attempt++) {
      if (attempt >= 4) throw new QueueUnavailableError('the idempotency record kept changing under concurrent requests; retry');
      const r = await reserve(this.redis, keys, {
        record,
        ttlSeconds: this.retentionSeconds,
        expected,
        maxQueued: this.maxQueued,
        maxPerCommunity: this.maxPerCommunity,
        jobId,
        nowMs: now,
        queued,
      });
      if (r.kind === 'ok') break;
      if (r.kind === 'queue') {
        throw new JobLimitError(
          `the queue holds ${r.count} waiting or active jobs (MAX_QUEUED_JOBS=${this.maxQueued}); retry later`,
          JOB_LIMIT_RETRY_AFTER_SECONDS,
        );
      }
      if (r.kind === 'community') {
        if (!pruned) {
          pruned = true;
          await this.pruneLive(req.communityId);
          continue;
        }
        throw new JobLimitError(
          `community ${req.communityId} has ${r.count} waiting or active jobs (MAX_JOBS_PER_COMMUNITY=${this.maxPerCommunity}); wait for one to finish or cancel one`,
          JOB_LIMIT_RETRY_AFTER_SECONDS,
        );
      }
      const rec = safeParse(r.record);
      if (rec && rec.requestHash !== requestHash) throw new IdempotencyKeyReusedError(rec.jobId);
      if (rec) {
        const existing = await this.statusNow(rec.jobId);
        if (existing && existing.state !== 'failed' && existing.state !== 'cancelled') return { jobId: rec.jobId, created: false, status: existing };
        // a concurrent equal request claimed the key a moment ago and is adding its job: that job is the answer
        if (!existing && rec.at !== undefined && now - rec.at < RESERVATION_GRACE_MS) {
          return { jobId: rec.jobId, created: false, status: this.queuedStatus(rec.jobId, req.communityId, rec.at) };
        }
      }
      // the earlier job failed, was cancelled or expired (or the record is unreadable): replace exactly that record
      expected = r.record;
    }
    try {
      if (prepared !== null) {
        if (!this.datasets) throw new Error('no dataset store configured: inline rows cannot be queued');
        await this.datasets.putPrepared(req.communityId, prepared);
      }
      const payload: FinetunePayload = {
        communityId: req.communityId,
        dataset: ref,
        config: req.config,
        requestHash,
        requestedAt: new Date(now).toISOString(),
        ...fields,
      };
      // the job's timestamp is the reservation's, so it equals the index entry's score and the record's `at`
      const job = await this.queue.add('finetune', payload, { jobId, timestamp: now });
      return { jobId, created: true, status: this.queuedStatus(jobId, req.communityId, job.timestamp) };
    } catch (err) {
      const undo = this.redis.multi().zrem(keys.live, jobId).del(idemKey);
      if (queued) undo.zrem(queued.indexAll, jobId).zrem(queued.indexCommunity, jobId).del(queued.stream);
      await undo.exec().catch(() => {});
      throw err;
    }
  }

  private queuedStatus(jobId: string, communityId: string, timestamp: number): JobStatus {
    return toJobStatus({ id: jobId, data: { communityId }, progress: 0, returnvalue: null, timestamp }, 'waiting');
  }

  /** Drop ids of jobs that are no longer waiting or active from a community's live set. */
  private async pruneLive(communityId: string): Promise<void> {
    const key = liveJobsKey(this.prefix, QueueNames.finetune, communityId);
    const flat = await this.redis.zrange(key, '0', '-1', 'WITHSCORES');
    const now = Date.now();
    for (let i = 0; i < flat.length; i += 2) {
      const id = flat[i]!;
      const st = await this.queue.getJobState(id);
      // an id reserved a moment ago may not be added yet (unknown): kept for a minute
      const young = now - Number(flat[i + 1]) < RESERVATION_GRACE_MS;
      if (st === 'completed' || st === 'failed' || (st === 'unknown' && !young)) await this.redis.zrem(key, id);
    }
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
        await this.redis.zrem(liveJobsKey(this.prefix, QueueNames.finetune, job.data.communityId), jobId).catch(() => {});
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

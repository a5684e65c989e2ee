/**
 * Job-outcome webhooks: when a job with a `callbackUrl` ends (`job.succeeded`, `job.failed`,
 * `job.cancelled`), one delivery job goes to the `webhooks` BullMQ queue (separate from `finetune`, so a
 * slow receiver never delays training). A delivery POSTs the event as JSON, signed in the Standard
 * Webhooks scheme (headers `webhook-id`, `webhook-timestamp`, `webhook-signature`; npm `standardwebhooks`)
 * with the community's secret (SIGNING_SECRETS). Any 2xx is success; anything else (other status, timeout,
 * connection error, a redirect, which is never followed) is retried with exponential backoff:
 * WEBHOOK_ATTEMPTS attempts (default 8) with delays WEBHOOK_BACKOFF_MS x 2^(n-1) between them (default
 * 2 s: 2, 4, 8, 16, 32, 64, 128 s, about 4 minutes in all). A target that turns out to be non-public at
 * delivery time fails at once (no retry). Every attempt is an event in the job's log (`webhook.attempt`),
 * then `webhook.delivered` or `webhook.failed`. The `webhook-id` is the same for every attempt of one
 * delivery, so a receiver can de-duplicate.
 */
import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';
import { Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { Webhook } from 'standardwebhooks';
import { JobEventLog } from '../queue/events.js';
import { type CallbackUrlError, resolveCallbackTarget, type CallbackPolicy, type CallbackTarget } from './targets.js';

export const WEBHOOK_QUEUE = 'webhooks';

/** The JSON body a receiver gets. */
export interface WebhookPayload {
  /** `job.succeeded` | `job.failed` | `job.cancelled` */
  type: string;
  /** ISO 8601 time of the outcome. */
  timestamp: string;
  data: {
    jobId: string;
    communityId: string;
    state: 'completed' | 'failed' | 'cancelled';
    error: { code: string; message: string } | null;
    artifact: { uri: string; files: number } | null;
    metrics: { sft: Record<string, number>; dpo: Record<string, number> } | null;
    statusUrl: string;
  };
}

/** Data of one delivery job (Redis: no secret in it; the secret is looked up at delivery time). */
export interface DeliveryData {
  url: string;
  /** The `webhook-id`: one per delivery, equal across its attempts. */
  webhookId: string;
  payload: WebhookPayload;
}

export interface DeliverySettings {
  /** Attempts in all, the first included (WEBHOOK_ATTEMPTS, default 8). */
  attempts: number;
  /** First retry delay, ms; doubles per retry (WEBHOOK_BACKOFF_MS, default 2000). */
  backoffMs: number;
  /** Per-attempt timeout, ms (WEBHOOK_TIMEOUT_MS, default 10000). */
  timeoutMs: number;
}

export const DEFAULT_DELIVERY: DeliverySettings = { attempts: 8, backoffMs: 2000, timeoutMs: 10_000 };

/** Producer of the webhooks queue (the worker and the API both enqueue outcomes). */
export class WebhookQueue {
  readonly queue: Queue<DeliveryData>;
  constructor(
    connection: Redis,
    prefix: string,
    private readonly settings: DeliverySettings = DEFAULT_DELIVERY,
  ) {
    this.queue = new Queue<DeliveryData>(WEBHOOK_QUEUE, { connection, prefix });
    this.queue.on('error', () => {});
  }

  /**
   * Queue one delivery of `payload` to `url`.
   * @returns the webhook id.
   */
  async enqueue(url: string, payload: WebhookPayload): Promise<string> {
    const webhookId = `msg_${randomUUID().replace(/-/g, '')}`;
    await this.queue.add(
      payload.type,
      { url, webhookId, payload },
      {
        jobId: webhookId,
        attempts: this.settings.attempts,
        backoff: { type: 'exponential', delay: this.settings.backoffMs },
        removeOnComplete: { age: 24 * 3600 },
        removeOnFail: { age: 7 * 24 * 3600 },
      },
    );
    return webhookId;
  }

  close(): Promise<void> {
    return this.queue.close();
  }
}

/** Result of one HTTP attempt. */
interface AttemptResult {
  status: number | null;
  error: string | null;
  ms: number;
}

function pinnedLookup(target: CallbackTarget): LookupFunction {
  return (_host, opts, cb) => {
    if ((opts as { all?: boolean }).all)
      (cb as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [{ address: target.address, family: target.family }]);
    else cb(null, target.address, target.family);
  };
}

/** POST `body` to the checked target (connecting to its checked address), never following redirects. */
function post(target: CallbackTarget, body: string, headers: Record<string, string>, timeoutMs: number): Promise<AttemptResult> {
  const t0 = Date.now();
  const send = target.url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve) => {
    const req = send(
      target.url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'dpo-service-webhooks/1', ...headers, 'content-length': String(Buffer.byteLength(body)) },
        lookup: pinnedLookup(target),
        timeout: timeoutMs,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? null, error: null, ms: Date.now() - t0 }));
        res.on('error', (err) => resolve({ status: res.statusCode ?? null, error: err.message, ms: Date.now() - t0 }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => resolve({ status: null, error: err.message, ms: Date.now() - t0 }));
    req.end(body);
  });
}

export interface DeliveryWorkerOptions {
  connection: Redis;
  /** A second connection for the blocking worker. */
  workerConnection: Redis;
  prefix: string;
  policy: CallbackPolicy;
  /** The community's Standard Webhooks secret (`whsec_...`), or undefined when it has none. */
  secretFor: (communityId: string) => string | undefined;
  settings?: Partial<DeliverySettings>;
  logger: Logger;
  /** Event-log TTL, seconds (the job retention). */
  eventTtlSeconds?: number;
  concurrency?: number;
}

/**
 * Start delivering the webhooks queue.
 * @returns the BullMQ worker (close it to stop).
 */
export function startDeliveryWorker(opts: DeliveryWorkerOptions): Worker<DeliveryData> {
  const settings = { ...DEFAULT_DELIVERY, ...opts.settings };
  const events = new JobEventLog(opts.connection, opts.prefix, { ttlSeconds: opts.eventTtlSeconds });
  const record = (jobId: string, e: Parameters<JobEventLog['append']>[1]): Promise<void> =>
    events.append(jobId, e).then(
      () => undefined,
      (err: Error) => opts.logger.warn({ err: err.message }, 'could not record a webhook event'),
    );
  const worker = new Worker<DeliveryData>(
    WEBHOOK_QUEUE,
    async (job: Job<DeliveryData>) => {
      const { url, webhookId, payload } = job.data;
      const jobId = payload.data.jobId;
      const attempt = job.attemptsMade + 1;
      const host = (() => {
        try {
          return new URL(url).host;
        } catch {
          return '';
        }
      })();
      const base = { webhookId, attempt, attempts: settings.attempts, host, event: payload.type };
      const secret = opts.secretFor(payload.data.communityId);
      if (!secret) {
        await record(jobId, {
          type: 'webhook.failed',
          level: 'error',
          message: `no signing secret for community ${payload.data.communityId} (SIGNING_SECRETS)`,
          data: base,
        });
        throw new UnrecoverableError('NO_SIGNING_SECRET');
      }
      let target: CallbackTarget;
      try {
        target = await resolveCallbackTarget(url, opts.policy);
      } catch (err) {
        const e = err as CallbackUrlError;
        const final = e.code === 'UNSAFE_CALLBACK_URL' || attempt >= settings.attempts;
        await record(jobId, {
          type: 'webhook.attempt',
          level: 'warn',
          message: `attempt ${attempt}: ${e.message}`,
          data: { ...base, status: null, error: e.code },
        });
        if (final) await record(jobId, { type: 'webhook.failed', level: 'error', message: `webhook to ${host} failed: ${e.message}`, data: base });
        if (e.code === 'UNSAFE_CALLBACK_URL') throw new UnrecoverableError(e.message);
        throw err;
      }
      const body = JSON.stringify(payload);
      const now = new Date();
      const signature = new Webhook(secret).sign(webhookId, now, body);
      const headers = { 'webhook-id': webhookId, 'webhook-timestamp': String(Math.floor(now.getTime() / 1000)), 'webhook-signature': signature };
      const r = await post(target, body, headers, settings.timeoutMs);
      const ok = r.status !== null && r.status >= 200 && r.status < 300;
      const why = r.error ?? (r.status !== null && r.status >= 300 && r.status < 400 ? `HTTP ${r.status} (redirects are not followed)` : `HTTP ${r.status}`);
      await record(jobId, {
        type: 'webhook.attempt',
        level: ok ? 'info' : 'warn',
        message: `attempt ${attempt}/${settings.attempts} to ${host}: ${ok ? `HTTP ${r.status}` : why}`,
        data: { ...base, status: r.status, error: ok ? null : why, durationMs: r.ms },
      });
      if (ok) {
        await record(jobId, { type: 'webhook.delivered', message: `${payload.type} delivered to ${host}`, data: { ...base, status: r.status } });
        return { status: r.status };
      }
      if (attempt >= settings.attempts) {
        await record(jobId, { type: 'webhook.failed', level: 'error', message: `webhook to ${host} failed after ${attempt} attempts: ${why}`, data: base });
      }
      throw new Error(why);
    },
    { connection: opts.workerConnection, prefix: opts.prefix, concurrency: opts.concurrency ?? 4 },
  );
  worker.on('error', (err) => opts.logger.warn({ err: err.message }, 'webhook worker error'));
  return worker;
}

/** The retry delays (ms) before attempts 2..n, for docs and tests. */
export function retryDelays(settings: Pick<DeliverySettings, 'attempts' | 'backoffMs'>): number[] {
  return Array.from({ length: Math.max(0, settings.attempts - 1) }, (_, i) => settings.backoffMs * 2 ** i);
}

/**
 * The append-only event log of a job, one capped Redis Stream per job
 * (`<prefix>:finetune:dpo-events:<jobId>`). The API appends `job.queued` (and `job.cancelled` for a job
 * removed while queued), the worker appends the rest (start, stages, data, checkpoints, evals, logged
 * metrics, upload, outcome) and the webhook deliverer appends one event per delivery attempt.
 *
 * An event is `{id, createdAt, level, type, message, data}`; `id` is the Redis stream id
 * (`<ms>-<seq>`), so ids are ordered and `after=<id>` / SSE `Last-Event-ID` resume exactly after it.
 * Streams are capped with `XADD MAXLEN ~ EVENT_LOG_MAX_LEN` (approximate trimming: Redis may keep a few
 * more) and expire with the job's retention.
 */
import type { Redis } from 'ioredis';
import { QueueNames } from './types.js';

/** The event types the service writes (the `type` field). */
export const EVENT_TYPES = [
  'job.queued',
  'job.started',
  'model.loading',
  'data.ready',
  'stage.started',
  'metrics',
  'checkpoint.saved',
  'eval.completed',
  'stage.completed',
  'upload.completed',
  'job.succeeded',
  'job.failed',
  'job.cancelled',
  'webhook.attempt',
  'webhook.delivered',
  'webhook.failed',
  'warning',
] as const;
export type JobEventType = (typeof EVENT_TYPES)[number];

/** Events after which a job does not change state any more (webhook events may still follow). */
export const TERMINAL_EVENT_TYPES: readonly JobEventType[] = ['job.succeeded', 'job.failed', 'job.cancelled'];

export type EventLevel = 'info' | 'warn' | 'error';

/** What a writer supplies. `data` must be JSON-serialisable (non-finite numbers become null). */
export interface NewJobEvent {
  type: JobEventType;
  level?: EventLevel;
  message: string;
  data?: Record<string, unknown>;
}

/** One logged event as read back. */
export interface JobEvent {
  /** Redis stream id `<ms>-<seq>`: ordered, the resume cursor. */
  id: string;
  /** ISO 8601 time the event was appended. */
  createdAt: string;
  level: EventLevel;
  type: string;
  message: string;
  data: Record<string, unknown>;
}

/** A stored event failed to parse (someone wrote to the stream by hand): the message names the id. */
export class InvalidEventError extends Error {
  readonly code = 'INVALID_EVENT';
  constructor(id: string, why: string) {
    super(`event ${id} in the job's event log is malformed: ${why}`);
    this.name = 'InvalidEventError';
  }
}

/** Redis key of a job's event stream. */
export function eventsKey(prefix: string, jobId: string): string {
  return `${prefix}:${QueueNames.finetune}:dpo-events:${jobId}`;
}

/** Stream ids: `<ms>-<seq>` (both non-negative integers). */
export const EVENT_ID = /^\d{1,15}-\d{1,10}$/;

const LEVELS = new Set<EventLevel>(['info', 'warn', 'error']);

function parseEntry(id: string, fields: string[]): JobEvent {
  const raw = fields[1];
  if (fields[0] !== 'e' || typeof raw !== 'string') throw new InvalidEventError(id, 'no "e" field');
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (err) {
    throw new InvalidEventError(id, (err as Error).message);
  }
  const o = v as Record<string, unknown>;
  if (!o || typeof o !== 'object' || typeof o.type !== 'string' || typeof o.message !== 'string' || !LEVELS.has(o.level as EventLevel)) {
    throw new InvalidEventError(id, 'type, message and level are required');
  }
  const data = o.data && typeof o.data === 'object' && !Array.isArray(o.data) ? (o.data as Record<string, unknown>) : {};
  const ms = Number(id.split('-')[0]);
  return { id, createdAt: new Date(ms).toISOString(), level: o.level as EventLevel, type: o.type, message: o.message, data };
}

export interface EventLogOptions {
  /** Approximate cap of events per job (XADD MAXLEN ~). Default 10000. */
  maxLen?: number;
  /** Seconds the stream lives after its last append (the job retention). Default 7 days. */
  ttlSeconds?: number;
}

export interface EventPage {
  data: JobEvent[];
  hasMore: boolean;
  /** The id to pass as `after` for the next page (the last id of this page), null when empty. */
  nextCursor: string | null;
}

/** The stored form of an event (the stream entry's `e` field); non-finite numbers become null. */
function encodeEvent(e: NewJobEvent): string {
  return JSON.stringify({ level: e.level ?? 'info', type: e.type, message: e.message, data: e.data ?? {} }, (_k, v) =>
    typeof v === 'number' && !Number.isFinite(v) ? null : v,
  );
}

/** KEYS: stream; ARGV: event body, MAXLEN, stream TTL. */
const APPEND = `
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return id
`;

/** KEYS: marker, stream; ARGV: marker value, marker TTL, event body, MAXLEN, stream TTL. */
const APPEND_ONCE = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  return {1, id}
end
return {0, redis.call('GET', KEYS[1]) or ''}
`;

/** What {@link JobEventLog.appendOnce} did. */
export type AppendOnceResult = { first: true; id: string } | { first: false; existing: string };

/** Read and append job events on one Redis connection. */
export class JobEventLog {
  private readonly maxLen: number;
  private readonly ttl: number;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    opts: EventLogOptions = {},
  ) {
    this.maxLen = opts.maxLen ?? 10_000;
    this.ttl = opts.ttlSeconds ?? 7 * 24 * 3600;
  }

  /**
   * Append an event.
   * @returns its id.
   * @throws the Redis error when Redis is unreachable.
   */
  async append(jobId: string, e: NewJobEvent): Promise<string> {
    // one command (XADD + EXPIRE in a Lua script), not a MULTI: see JobIndex.add for why
    const r = this.redis as unknown as Redis & { dpoAppendEvent?: (...a: Array<string | number>) => Promise<string> };
    if (typeof r.dpoAppendEvent !== 'function') this.redis.defineCommand('dpoAppendEvent', { numberOfKeys: 1, lua: APPEND });
    return r.dpoAppendEvent!(eventsKey(this.prefix, jobId), encodeEvent(e), this.maxLen, this.ttl);
  }

  /**
   * What an append of `e` to `jobId`'s log writes, for a script that appends it together with other writes
   * (the trigger's reservation script, JobIndex.queuedRecordArgs): the stream key, the stored body, the MAXLEN cap and the stream TTL (seconds).
   */
  appendArgs(jobId: string, e: NewJobEvent): { key: string; body: string; maxLen: number; ttlSeconds: number } {
    return { key: eventsKey(this.prefix, jobId), body: encodeEvent(e), maxLen: this.maxLen, ttlSeconds: this.ttl };
  }

  /**
   * Append `e` only if `markerKey` does not exist yet, setting it to `markerValue` (TTL `markerTtlSeconds`) in the
   * same atomic step (a Lua script: SET NX, then XADD): of several writers racing with the same marker, exactly one
   * appends. Used for a job's terminal event with its final-state record (src/queue/final-state.ts).
   * @returns `{first: true, id}` when this call set the marker and appended; `{first: false, existing}` (the
   *   marker's current value, unchecked) when it was already set and nothing was written.
   * @throws the Redis error when Redis is unreachable.
   */
  async appendOnce(jobId: string, markerKey: string, markerValue: string, markerTtlSeconds: number, e: NewJobEvent): Promise<AppendOnceResult> {
    const r = this.redis as unknown as Redis & { dpoAppendOnce?: (...a: Array<string | number>) => Promise<[number, string]> };
    if (typeof r.dpoAppendOnce !== 'function') this.redis.defineCommand('dpoAppendOnce', { numberOfKeys: 2, lua: APPEND_ONCE });
    const [first, value] = await r.dpoAppendOnce!(
      markerKey,
      eventsKey(this.prefix, jobId),
      markerValue,
      markerTtlSeconds,
      encodeEvent(e),
      this.maxLen,
      this.ttl,
    );
    return first === 1 ? { first: true, id: value } : { first: false, existing: value };
  }

  /**
   * Events strictly after `after` (or from the start), oldest first, at most `limit`.
   * @param after a stream id (`<ms>-<seq>`) or undefined.
   * @throws InvalidEventError for a malformed stored entry.
   */
  async list(jobId: string, opts: { after?: string; limit?: number; type?: string } = {}): Promise<EventPage> {
    const limit = Math.max(1, Math.min(1000, opts.limit ?? 100));
    const key = eventsKey(this.prefix, jobId);
    const out: JobEvent[] = [];
    let start = opts.after ? `(${opts.after}` : '-';
    let hasMore = false;
    // with a type filter, keep reading batches until the page is full or the stream ends
    for (;;) {
      const rows = (await this.redis.xrange(key, start, '+', 'COUNT', limit + 1)) as Array<[string, string[]]>;
      for (const [id, fields] of rows.slice(0, limit)) {
        const ev = parseEntry(id, fields);
        if (!opts.type || ev.type === opts.type) out.push(ev);
        start = `(${id}`;
        if (out.length === limit) break;
      }
      if (out.length === limit) {
        hasMore = rows.length > limit || (await this.redis.xrange(key, start, '+', 'COUNT', 1)).length > 0;
        break;
      }
      if (rows.length <= limit) break;
    }
    return { data: out, hasMore, nextCursor: out.at(-1)?.id ?? opts.after ?? null };
  }

  /** Every event of `type` (oldest first), bounded by the stream cap. */
  async ofType(jobId: string, type: JobEventType): Promise<JobEvent[]> {
    const all: JobEvent[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.list(jobId, { after, limit: 1000, type });
      all.push(...page.data);
      if (!page.hasMore) return all;
      after = page.nextCursor ?? undefined;
    }
  }

  /** Whether the job has any event (a stream key exists). */
  async exists(jobId: string): Promise<boolean> {
    return (await this.redis.exists(eventsKey(this.prefix, jobId))) === 1;
  }
}

/**
 * The job list index: sorted sets of job ids scored by creation time (ms), one per community
 * (`<prefix>:finetune:dpo-index:<communityId>`) and one over all (`<prefix>:finetune:dpo-index`), written
 * when a job is created. GET /jobs pages them newest first without loading any job's data; entries
 * older than the job retention are trimmed on write, entries whose job expired are dropped when met.
 *
 * Cursor: base64url of `<score>:<jobId>` of the last job of a page. Order: score descending, then jobId
 * descending (Redis' reverse order for equal scores), so pages never repeat or skip a job.
 */
import type { Redis } from 'ioredis';
import type { JobEventLog, NewJobEvent } from './events.js';
import { QueueNames } from './types.js';
import type { QueuedRecordArgs } from './reserve.js';

/** A `after` cursor that does not decode: the message says to pass back `nextCursor` unchanged. */
export class InvalidCursorError extends Error {
  readonly code = 'INVALID_CURSOR';
  constructor() {
    super('after must be a nextCursor returned by GET /jobs (pass it back unchanged)');
    this.name = 'InvalidCursorError';
  }
}

export function indexKey(prefix: string, communityId?: string): string {
  return `${prefix}:${QueueNames.finetune}:dpo-index${communityId ? `:${communityId}` : ''}`;
}

interface Entry {
  id: string;
  score: number;
}

export function encodeCursor(e: Entry): string {
  return Buffer.from(`${e.score}:${e.id}`).toString('base64url');
}

/** @throws InvalidCursorError */
export function decodeCursor(c: string): Entry {
  const s = Buffer.from(c, 'base64url').toString('utf8');
  const m = /^(\d{1,16}):([A-Za-z0-9_-]{1,128})$/.exec(s);
  if (!m) throw new InvalidCursorError();
  return { score: Number(m[1]), id: m[2]! };
}

/** Descending order: later first, equal scores by id descending. */
function before(a: Entry, b: Entry): boolean {
  return a.score > b.score || (a.score === b.score && a.id > b.id);
}

/** KEYS: the all-jobs index, the community's index; ARGV: score (ms), job id, exclusive cutoff `(<ms>`. */
const INDEX_ADD = `
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
return 1
`;

export class JobIndex {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly retentionSeconds: number,
  ) {}

  /**
   * Record a new job (idempotent) and trim entries older than the retention, atomically in one command (a Lua
   * script sent as EVALSHA). Not a MULTI: ioredis builds a MULTI as a Pipeline that copies every script defined on
   * the connection (BullMQ defines dozens on the API's), which cost more CPU than the commands themselves.
   * @throws the Redis error.
   */
  async add(jobId: string, communityId: string, createdAtMs: number): Promise<void> {
    const cutoff = Date.now() - this.retentionSeconds * 1000;
    const r = this.redis as unknown as Redis & { dpoIndexAdd?: (...a: Array<string | number>) => Promise<number> };
    if (typeof r.dpoIndexAdd !== 'function') this.redis.defineCommand('dpoIndexAdd', { numberOfKeys: 2, lua: INDEX_ADD });
    await r.dpoIndexAdd!(indexKey(this.prefix), indexKey(this.prefix, communityId), createdAtMs, jobId, `(${cutoff}`);
  }

  /**
   * The keys and values with which the trigger's reservation script (src/queue/reserve.ts) records a new job
   * in this index and appends its first event `e` to `log`, in the same round trip as the reservation.
   */
  queuedRecordArgs(jobId: string, communityId: string, createdAtMs: number, log: JobEventLog, e: NewJobEvent): QueuedRecordArgs {
    const ev = log.appendArgs(jobId, e);
    return {
      indexAll: indexKey(this.prefix),
      indexCommunity: indexKey(this.prefix, communityId),
      score: createdAtMs,
      cutoff: `(${Date.now() - this.retentionSeconds * 1000}`,
      stream: ev.key,
      body: ev.body,
      maxLen: ev.maxLen,
      ttlSeconds: ev.ttlSeconds,
    };
  }

  /** Drop a job from the index (its data expired). */
  async remove(jobId: string, communityId: string | null): Promise<void> {
    const m = this.redis.multi().zrem(indexKey(this.prefix), jobId);
    if (communityId) m.zrem(indexKey(this.prefix, communityId), jobId);
    await m.exec();
  }

  /** Up to `n` entries of one set strictly after `cursor` in descending order. */
  private async page(key: string, cursor: Entry | null, n: number): Promise<Entry[]> {
    const max = cursor ? String(cursor.score) : '+inf';
    // equal scores at the cursor: fetch them too, then drop those at or before the cursor
    const raw = await this.redis.zrevrangebyscore(key, max, '-inf', 'WITHSCORES', 'LIMIT', 0, n + 64);
    const out: Entry[] = [];
    for (let i = 0; i < raw.length; i += 2) {
      const e = { id: raw[i]!, score: Number(raw[i + 1]) };
      if (!cursor || before(cursor, e)) out.push(e);
      if (out.length === n) break;
    }
    return out;
  }

  /**
   * Entries newest first, strictly after `cursor`, from the given communities ('*': all), merged.
   * @returns up to `n` entries.
   */
  async list(communities: '*' | string[], cursor: Entry | null, n: number): Promise<Entry[]> {
    const keys = communities === '*' ? [indexKey(this.prefix)] : communities.map((c) => indexKey(this.prefix, c));
    const pages = await Promise.all(keys.map((k) => this.page(k, cursor, n)));
    const merged = pages.flat().sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
    const out: Entry[] = [];
    for (const e of merged) if (!out.some((o) => o.id === e.id)) out.push(e);
    return out.slice(0, n);
  }
}

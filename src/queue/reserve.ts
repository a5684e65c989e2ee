/**
 * The trigger's reservation in one Redis round trip: a Lua script (ioredis defineCommand, sent as EVALSHA)
 * that, atomically,
 *
 * 1. reads the idempotency record of (principal, community, key) and stops when there is one the caller did
 *    not expect (the caller then returns the existing job, or answers 409);
 * 2. counts the queue's waiting + paused + active + delayed + prioritized jobs against MAX_QUEUED_JOBS (the
 *    same lists and sets BullMQ's getJobCounts reads);
 * 3. adds the new job id to the community's live set and counts it against MAX_JOBS_PER_COMMUNITY (removing
 *    it again when over);
 * 4. writes the idempotency record with its TTL;
 * 5. optionally, records the job in the job index (all jobs and the community's, trimmed to the retention) and
 *    appends its first event (`job.queued`) to the job's event stream: what the route did in a round trip of
 *    its own after the job was added. The index and the event therefore exist a moment before the job does
 *    (the job lister keeps young index entries without a job, src/api/routes/jobs-list.ts), and the caller
 *    removes them again when the job cannot be added.
 *
 * Before, these were five to six round trips (GET, SET NX, getJobCounts, MULTI ZADD+ZCARD, and on a race
 * another GET); being one script also closes the window in which two concurrent equal requests could both
 * pass the caps.
 */
import type { Redis } from 'ioredis';

const SCRIPT = `
local prior = redis.call('GET', KEYS[1])
if prior and prior ~= ARGV[3] then return {'prior', prior} end
local maxQ = tonumber(ARGV[4])
if maxQ > 0 then
  local n = redis.call('LLEN', KEYS[3]) + redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5])
    + redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7])
  if n >= maxQ then return {'queue', tostring(n)} end
end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
local maxC = tonumber(ARGV[5])
if maxC > 0 then
  local c = redis.call('ZCARD', KEYS[2])
  if c > maxC then
    redis.call('ZREM', KEYS[2], ARGV[6])
    return {'community', tostring(c - 1)}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[10] ~= '' then
  redis.call('ZADD', KEYS[8], ARGV[8], ARGV[6])
  redis.call('ZADD', KEYS[9], ARGV[8], ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', ARGV[9])
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[11], '*', 'e', ARGV[10])
  redis.call('EXPIRE', KEYS[10], ARGV[12])
end
return {'ok', ''}
`;

/** The outcome of one reservation. */
export type Reservation =
  | { kind: 'ok' }
  /** an idempotency record other than the expected one exists (its raw JSON) */
  | { kind: 'prior'; record: string }
  /** MAX_QUEUED_JOBS reached: jobs counted */
  | { kind: 'queue'; count: number }
  /** MAX_JOBS_PER_COMMUNITY reached: the community's other live jobs */
  | { kind: 'community'; count: number };

export interface ReserveKeys {
  /** the idempotency record */
  idem: string;
  /** the community's live set (sorted set of job ids by reservation time, ms) */
  live: string;
  /** BullMQ's keys of the queue (Queue.keys): wait, paused, active lists; delayed, prioritized sets */
  wait: string;
  paused: string;
  active: string;
  delayed: string;
  prioritized: string;
}

export interface ReserveArgs {
  /** the new record's JSON (`{jobId, requestHash, at}`) */
  record: string;
  ttlSeconds: number;
  /** the record the caller read before and decided to replace (a failed or cancelled job's); null: none */
  expected: string | null;
  /** 0 = no cap */
  maxQueued: number;
  /** 0 = no cap */
  maxPerCommunity: number;
  jobId: string;
  nowMs: number;
  /** Step 5, on success only: the job index entry and the first event (absent: neither is written). */
  queued?: QueuedRecordArgs;
}

/** The keys and values of step 5 (JobIndex.entryArgs + JobEventLog.appendArgs). */
export interface QueuedRecordArgs {
  /** the index of all jobs and the community's (sorted sets scored by creation time, ms) */
  indexAll: string;
  indexCommunity: string;
  /** the index entry's score (ms) */
  score: number;
  /** entries scored before this are trimmed (a ZRANGEBYSCORE bound, e.g. `(1700000000000`) */
  cutoff: string;
  /** the event stream's key, the event's stored body, the stream's approximate MAXLEN and TTL (seconds) */
  stream: string;
  body: string;
  maxLen: number;
  ttlSeconds: number;
}

type ReserveCommand = (...args: Array<string | number>) => Promise<[string, string]>;

/**
 * Run the reservation script (defined on `redis` on first use).
 * @returns what happened (nothing is written unless `kind` is `ok`).
 * @throws the Redis error when Redis is unreachable.
 */
export async function reserve(redis: Redis, k: ReserveKeys, a: ReserveArgs): Promise<Reservation> {
  const r = redis as unknown as Redis & { dpoReserve?: ReserveCommand };
  if (typeof r.dpoReserve !== 'function') redis.defineCommand('dpoReserve', { numberOfKeys: 10, lua: SCRIPT });
  const q = a.queued;
  // without step 5 its keys are the idempotency key again (a script must declare every key it may touch)
  const [kind, value] = await r.dpoReserve!(
    k.idem,
    k.live,
    k.wait,
    k.paused,
    k.active,
    k.delayed,
    k.prioritized,
    q?.indexAll ?? k.idem,
    q?.indexCommunity ?? k.idem,
    q?.stream ?? k.idem,
    a.record,
    a.ttlSeconds,
    a.expected ?? '',
    a.maxQueued,
    a.maxPerCommunity,
    a.jobId,
    a.nowMs,
    q?.score ?? 0,
    q?.cutoff ?? '',
    q?.body ?? '',
    q?.maxLen ?? 0,
    q?.ttlSeconds ?? 0,
  );
  if (kind === 'ok') return { kind };
  if (kind === 'prior') return { kind, record: value };
  if (kind === 'queue' || kind === 'community') return { kind, count: Number(value) };
  throw new Error(`unexpected reply from the reservation script: ${kind}`);
}

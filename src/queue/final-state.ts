/**
 * What survives a lost job lock. BullMQ delivers a job at least once: a worker that stored the artifact and then
 * lost its lock (stalled-job check, Redis hiccup, killed before moveToCompleted) leaves the job to another run.
 * Two Redis records, one key each per job id, let that run finish the job instead of training again:
 *
 * - the **artifact record** `<prefix>:finetune:dpo-artifact:<jobId>`, written right after the artifact is
 *   stored: the sha256 of the stored manifest.json and the result the job completes with. It is validated when
 *   read back (shape, ids, digest) and only used once storage confirms the artifact matches it
 *   (Storage.verifyArtifact): nothing read from Redis is trusted by itself;
 * - the **final-state record** `<prefix>:finetune:dpo-final:<jobId>`, `{outcome, code, message, at}`, set with
 *   the job's terminal event (`job.succeeded`, `job.failed`, `job.cancelled`) in one atomic script
 *   (JobEventLog.appendOnce: SET NX, then XADD): of two runs racing to finish a job, one records the outcome,
 *   the event, the statistics and the completion webhook; the other records nothing.
 *
 * Both live as long as the job is kept (JOB_RETENTION_SECONDS).
 */
import type { Redis } from 'ioredis';
import { STAGES, QueueNames, type FinetuneResult, type Stage, type StageMetrics, type StageSpan } from './types.js';

/** Key of a job's artifact record. */
export function artifactRecordKey(prefix: string, jobId: string): string {
  return `${prefix}:${QueueNames.finetune}:dpo-artifact:${jobId}`;
}

/** Key of a job's final-state record. */
export function finalStateKey(prefix: string, jobId: string): string {
  return `${prefix}:${QueueNames.finetune}:dpo-final:${jobId}`;
}

/** What is recorded when a job's artifact is stored. */
export interface ArtifactRecord {
  v: 1;
  jobId: string;
  communityId: string;
  /** sha256 hex of the stored manifest.json's bytes. */
  manifestSha256: string;
  /** The stored artifact's URI (what Storage.putArtifact returned). */
  uri: string;
  metrics: StageMetrics;
  stages: StageSpan[];
  durations: FinetuneResult['durations'];
  /** Tokens trained, both stages. */
  trainedTokens: number;
  /** ISO 8601 time of the record. */
  recordedAt: string;
}

/** The outcome a job ended with, recorded once. */
export interface FinalState {
  outcome: 'completed' | 'failed' | 'cancelled';
  /** Failure code (null when completed). */
  code: string | null;
  /** Failure message as the job stores it, without the code (null when completed). */
  message: string | null;
  /** ISO 8601 time it was recorded. */
  at: string;
}

/** A record read back: absent, present and well-formed, or present and refused (why). */
export type ReadBack<T> = { kind: 'none' } | { kind: 'ok'; value: T } | { kind: 'invalid'; why: string };

const SHA256_HEX = /^[0-9a-f]{64}$/;
const CODE = /^[A-Z][A-Z0-9_]{2,63}$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;
const METRIC_NAME = /^[A-Za-z0-9_/.:-]{1,128}$/;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function metricsProblem(v: unknown): string | null {
  if (!isObj(v) || Object.keys(v).length !== 2 || !isObj(v.sft) || !isObj(v.dpo)) return 'metrics must be {sft, dpo}';
  for (const stage of [v.sft, v.dpo]) {
    const keys = Object.keys(stage);
    if (keys.length > 500) return 'too many metrics';
    for (const k of keys) {
      const x = stage[k];
      if (!METRIC_NAME.test(k) || !(x === null || (typeof x === 'number' && Number.isFinite(x))))
        return `metric ${JSON.stringify(k.slice(0, 64))} is not a finite number`;
    }
  }
  return null;
}

function stagesProblem(v: unknown): string | null {
  if (!Array.isArray(v) || v.length > 16) return 'stages must be an array of at most 16 spans';
  for (const s of v) {
    if (!isObj(s) || !STAGES.includes(s.stage as Stage) || typeof s.startedAt !== 'string' || !ISO_TIME.test(s.startedAt)) return 'a stage span is malformed';
    if (!(s.finishedAt === null || (typeof s.finishedAt === 'string' && ISO_TIME.test(s.finishedAt)))) return 'a stage span is malformed';
    if (Object.keys(s).length !== 3) return 'a stage span has extra keys';
  }
  return null;
}

function durationsProblem(v: unknown): string | null {
  if (!isObj(v)) return 'durations must be an object';
  for (const [k, x] of Object.entries(v)) {
    if (!STAGES.includes(k as Stage) || typeof x !== 'number' || !Number.isFinite(x) || x < 0) return `duration ${JSON.stringify(k.slice(0, 64))} is malformed`;
  }
  return null;
}

/**
 * Check an artifact record read from Redis for `jobId` / `communityId` (already validated ids).
 * @returns the record, or why it is refused.
 */
export function parseArtifactRecord(raw: string, jobId: string, communityId: string): ReadBack<ArtifactRecord> {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return { kind: 'invalid', why: 'not JSON' };
  }
  if (!isObj(v) || v.v !== 1) return { kind: 'invalid', why: 'not a version 1 record' };
  const keys = ['v', 'jobId', 'communityId', 'manifestSha256', 'uri', 'metrics', 'stages', 'durations', 'trainedTokens', 'recordedAt'];
  if (Object.keys(v).length !== keys.length || !keys.every((k) => Object.hasOwn(v as Obj, k))) return { kind: 'invalid', why: 'unexpected keys' };
  if (v.jobId !== jobId || v.communityId !== communityId) return { kind: 'invalid', why: 'it names another job' };
  if (typeof v.manifestSha256 !== 'string' || !SHA256_HEX.test(v.manifestSha256)) return { kind: 'invalid', why: 'manifestSha256 is not a sha256' };
  if (typeof v.uri !== 'string' || v.uri.length > 2000) return { kind: 'invalid', why: 'uri is malformed' };
  if (!Number.isSafeInteger(v.trainedTokens) || (v.trainedTokens as number) < 0) return { kind: 'invalid', why: 'trainedTokens is malformed' };
  if (typeof v.recordedAt !== 'string' || !ISO_TIME.test(v.recordedAt)) return { kind: 'invalid', why: 'recordedAt is malformed' };
  const why = metricsProblem(v.metrics) ?? stagesProblem(v.stages) ?? durationsProblem(v.durations);
  if (why) return { kind: 'invalid', why };
  return { kind: 'ok', value: v as unknown as ArtifactRecord };
}

/**
 * Record a stored artifact (SET with the job's retention as TTL; a later store of the same job replaces it).
 * @throws the Redis error.
 */
export async function writeArtifactRecord(redis: Redis, prefix: string, record: ArtifactRecord, ttlSeconds: number): Promise<void> {
  await redis.set(artifactRecordKey(prefix, record.jobId), JSON.stringify(record), 'EX', Math.max(1, Math.floor(ttlSeconds)));
}

/**
 * Read and check a job's artifact record. Storage still has to confirm it (Storage.verifyArtifact).
 * @throws the Redis error.
 */
export async function readArtifactRecord(redis: Redis, prefix: string, jobId: string, communityId: string): Promise<ReadBack<ArtifactRecord>> {
  const raw = await redis.get(artifactRecordKey(prefix, jobId));
  return raw === null ? { kind: 'none' } : parseArtifactRecord(raw, jobId, communityId);
}

/** Check a final-state record read from Redis. */
export function parseFinalState(raw: string): ReadBack<FinalState> {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return { kind: 'invalid', why: 'not JSON' };
  }
  if (!isObj(v) || Object.keys(v).length !== 4) return { kind: 'invalid', why: 'unexpected keys' };
  if (typeof v.at !== 'string' || !ISO_TIME.test(v.at)) return { kind: 'invalid', why: 'at is malformed' };
  if (v.outcome === 'completed') {
    return v.code === null && v.message === null
      ? { kind: 'ok', value: v as unknown as FinalState }
      : { kind: 'invalid', why: 'a completed job has no failure' };
  }
  if (v.outcome !== 'failed' && v.outcome !== 'cancelled') return { kind: 'invalid', why: 'unknown outcome' };
  if (typeof v.code !== 'string' || !CODE.test(v.code) || typeof v.message !== 'string' || v.message.length > 4000) {
    return { kind: 'invalid', why: 'the failure is malformed' };
  }
  return { kind: 'ok', value: v as unknown as FinalState };
}

/**
 * Read and check a job's final-state record.
 * @throws the Redis error.
 */
export async function readFinalState(redis: Redis, prefix: string, jobId: string): Promise<ReadBack<FinalState>> {
  const raw = await redis.get(finalStateKey(prefix, jobId));
  return raw === null ? { kind: 'none' } : parseFinalState(raw);
}

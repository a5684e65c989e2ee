/**
 * Job statistics kept in one Redis hash, written by workers and rendered by the API's /metrics, so
 * every API replica reports the same cluster-wide numbers: stage durations (a Prometheus histogram),
 * the latest tokens/s per stage, completed jobs and failures by code.
 */
import type { Redis } from 'ioredis';
import { QueueNames, type Stage } from './types.js';

/** Histogram buckets of stage durations, seconds. */
export const DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600];

export function statsKey(prefix: string): string {
  return `${prefix}:${QueueNames.finetune}:dpo-stats`;
}

/** What a worker records when a job ends. */
export interface JobOutcome {
  /** wall seconds per stage that ran */
  durations: Partial<Record<Stage, number>>;
  /** latest tokens/s per training stage, when the trainer reported it */
  tokensPerSecond: Partial<Record<'sft' | 'dpo', number>>;
  /** failure code (JOB_CANCELLED, TRAINING_FAILED, ...), or null for a completed job */
  failureCode: string | null;
}

/** Add one finished job to the shared statistics (HINCRBY/HINCRBYFLOAT/HSET in one MULTI). */
export async function recordJobOutcome(redis: Redis, prefix: string, o: JobOutcome): Promise<void> {
  const key = statsKey(prefix);
  const m = redis.multi();
  for (const [stage, secs] of Object.entries(o.durations)) {
    if (typeof secs !== 'number' || !Number.isFinite(secs)) continue;
    m.hincrbyfloat(key, `dur:${stage}:sum`, secs);
    m.hincrby(key, `dur:${stage}:count`, 1);
    for (const b of DURATION_BUCKETS) if (secs <= b) m.hincrby(key, `dur:${stage}:le:${b}`, 1);
  }
  for (const [stage, tps] of Object.entries(o.tokensPerSecond)) {
    if (typeof tps === 'number' && Number.isFinite(tps)) m.hset(key, `tps:${stage}`, String(tps));
  }
  if (o.failureCode) m.hincrby(key, `fail:${o.failureCode}`, 1);
  else m.hincrby(key, 'completed', 1);
  await m.exec();
}

/** Prometheus text exposition of the shared statistics (empty families are still declared). */
export async function renderJobStats(redis: Redis, prefix: string): Promise<string> {
  const h = await redis.hgetall(statsKey(prefix));
  const lines: string[] = [];
  lines.push('# HELP dpo_job_stage_duration_seconds Wall time of each job stage (sft, dpo, upload).');
  lines.push('# TYPE dpo_job_stage_duration_seconds histogram');
  for (const stage of ['sft', 'dpo', 'upload']) {
    const count = Number(h[`dur:${stage}:count`] ?? 0);
    if (count === 0) continue;
    for (const b of DURATION_BUCKETS) {
      lines.push(`dpo_job_stage_duration_seconds_bucket{stage="${stage}",le="${b}"} ${Number(h[`dur:${stage}:le:${b}`] ?? 0)}`);
    }
    lines.push(`dpo_job_stage_duration_seconds_bucket{stage="${stage}",le="+Inf"} ${count}`);
    lines.push(`dpo_job_stage_duration_seconds_sum{stage="${stage}"} ${Number(h[`dur:${stage}:sum`] ?? 0)}`);
    lines.push(`dpo_job_stage_duration_seconds_count{stage="${stage}"} ${count}`);
  }
  lines.push('# HELP dpo_training_tokens_per_second Throughput (non-padding tokens/s) of the last finished job, by stage.');
  lines.push('# TYPE dpo_training_tokens_per_second gauge');
  for (const stage of ['sft', 'dpo']) {
    if (h[`tps:${stage}`] !== undefined) lines.push(`dpo_training_tokens_per_second{stage="${stage}"} ${Number(h[`tps:${stage}`])}`);
  }
  lines.push('# HELP dpo_jobs_completed_total Jobs that completed.');
  lines.push('# TYPE dpo_jobs_completed_total counter');
  lines.push(`dpo_jobs_completed_total ${Number(h.completed ?? 0)}`);
  lines.push('# HELP dpo_jobs_failed_total Jobs that failed or were cancelled, by error code.');
  lines.push('# TYPE dpo_jobs_failed_total counter');
  for (const [k, v] of Object.entries(h)) {
    if (k.startsWith('fail:')) lines.push(`dpo_jobs_failed_total{code="${k.slice(5)}"} ${Number(v)}`);
  }
  return lines.join('\n') + '\n';
}

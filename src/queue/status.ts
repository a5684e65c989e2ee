/**
 * Map a BullMQ job (state, progress, returnvalue, failedReason) to the HTTP job status (docs/service.md
 * "GET /jobs/:jobId").
 * Pure functions: the API and tests use them without Redis.
 */
import { decodeFailure, FailureCodes } from './errors.js';
import type { FinetuneProgress, FinetuneResult, JobState, JobStatus, Stage, StageMetrics, TrainingMethod } from './types.js';

/** The fields of a BullMQ Job that the status needs. */
export interface JobSnapshot {
  id: string;
  data: { communityId: string; suffix?: string; method?: TrainingMethod; datasetId?: string; evalDatasetId?: string; callbackUrl?: string };
  progress: unknown;
  returnvalue: unknown;
  failedReason?: string | null;
  /** ms since epoch */
  timestamp: number;
  finishedOn?: number | null;
}

/** What a cancellation record (Redis key, see connection.ts cancelKey) holds. */
export interface CancelRecord {
  jobId: string;
  communityId: string;
  createdAt: number;
  requestedAt: number;
  /** true when the job was still queued and got removed from the queue. */
  removed: boolean;
  /** The request fields of the job (so its tombstone still shows them). */
  request?: JobSnapshot['data'];
}

/** BullMQ state name → contract state (failed is refined to cancelled by the failure code). */
export function mapBullState(bullState: string): JobState {
  switch (bullState) {
    case 'active':
      return 'active';
    case 'completed':
      return 'completed';
    case 'failed':
      return 'failed';
    default:
      // waiting, delayed, prioritized, waiting-children, unknown (just added)
      return 'queued';
  }
}

function iso(ms: number | null | undefined): string | null {
  return typeof ms === 'number' && ms > 0 ? new Date(ms).toISOString() : null;
}

function isProgress(p: unknown): p is FinetuneProgress {
  return typeof p === 'object' && p !== null && 'stage' in p && 'step' in p;
}

function emptyMetrics(): StageMetrics {
  return { sft: {}, dpo: {} };
}

/**
 * Build the GET /jobs/:jobId body.
 * @param job the BullMQ job fields
 * @param bullState `await job.getState()`
 * @param cancel the job's cancellation record, if a DELETE was received
 */
export function toJobStatus(job: JobSnapshot, bullState: string, cancel: CancelRecord | null = null): JobStatus {
  let state = mapBullState(bullState);
  const progress = isProgress(job.progress) ? job.progress : null;
  const result = state === 'completed' && typeof job.returnvalue === 'object' && job.returnvalue !== null ? (job.returnvalue as FinetuneResult) : null;
  let error: JobStatus['error'] = null;
  if (state === 'failed') {
    error = decodeFailure(job.failedReason);
    if (error.code === FailureCodes.cancelled) state = 'cancelled';
  }
  let stage: Stage | null = progress?.stage ?? null;
  if (state === 'queued') stage = null;
  const step = progress?.step ?? 0;
  const totalSteps = progress?.totalSteps ?? 0;
  const fraction = state === 'completed' ? 1 : (progress?.fraction ?? 0);
  return {
    jobId: job.id,
    communityId: job.data.communityId,
    state,
    stage,
    progress: { stage, step, totalSteps, fraction },
    stages: result?.stages ?? progress?.stages ?? [],
    metrics: result?.metrics ?? progress?.metrics ?? emptyMetrics(),
    artifact: result?.artifact ?? null,
    error,
    cancelRequested: cancel !== null && (state === 'queued' || state === 'active'),
    createdAt: iso(job.timestamp) ?? new Date(0).toISOString(),
    finishedAt: state === 'completed' || state === 'failed' || state === 'cancelled' ? iso(job.finishedOn) : null,
    trainedTokens: progress?.trainedTokens ?? 0,
    estimatedFinish: state === 'active' ? (progress?.estimatedFinish ?? null) : null,
    data: progress?.data ?? null,
    ...requestFields(job.data),
  };
}

/** The request fields a status echoes (absent ones as null, the method's default spelled out). */
function requestFields(d: JobSnapshot['data']): Pick<JobStatus, 'suffix' | 'method' | 'datasetId' | 'evalDatasetId'> {
  return { suffix: d.suffix ?? null, method: d.method ?? 'sft+dpo', datasetId: d.datasetId ?? null, evalDatasetId: d.evalDatasetId ?? null };
}

/**
 * A job's progress as Bull Board draws it (its progress bar needs a number): the worker's `percent` (0-100),
 * else 100 x the stage `fraction` of an older progress object, else a number as it is, else 0. BullMQ's
 * `job.progress` keeps the whole object (GET /jobs/:jobId reads it); this is the board's formatter only.
 */
export function progressPercent(progress: unknown): number {
  if (typeof progress === 'number' && Number.isFinite(progress)) return Math.min(100, Math.max(0, progress));
  if (typeof progress !== 'object' || progress === null) return 0;
  const p = progress as { percent?: unknown; fraction?: unknown };
  if (typeof p.percent === 'number' && Number.isFinite(p.percent)) return Math.min(100, Math.max(0, p.percent));
  if (typeof p.fraction === 'number' && Number.isFinite(p.fraction)) return Math.round(100 * Math.min(1, Math.max(0, p.fraction)));
  return 0;
}

/** The status of a job that was cancelled while queued and removed from the queue (its tombstone). */
export function cancelledStatus(rec: CancelRecord): JobStatus {
  return {
    jobId: rec.jobId,
    communityId: rec.communityId,
    state: 'cancelled',
    stage: null,
    progress: { stage: null, step: 0, totalSteps: 0, fraction: 0 },
    stages: [],
    metrics: emptyMetrics(),
    artifact: null,
    error: { code: FailureCodes.cancelled, message: 'cancelled by request before it started' },
    cancelRequested: false,
    createdAt: iso(rec.createdAt) ?? new Date(0).toISOString(),
    finishedAt: iso(rec.requestedAt),
    trainedTokens: 0,
    estimatedFinish: null,
    data: null,
    ...requestFields(rec.request ?? { communityId: rec.communityId }),
  };
}

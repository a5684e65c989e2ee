/**
 * The typed map of queue names to job payloads, results and progress (Infisical's TQueueJobTypes pattern):
 * the API produces with these types, the worker consumes them, GET /jobs maps them to the HTTP shape.
 */
import type { TrainConfig } from '../config/schema.js';
import type { DatasetRef } from '../storage/datasets.js';
import type { StoredFile } from '../storage/storage.js';
import type { PreferenceExample, StageMetrics } from '../training/types.js';

export type { StageMetrics } from '../training/types.js';

/** Queue names. One queue, `finetune`: one job runs the stages sft → dpo → upload. */
export const QueueNames = { finetune: 'finetune' } as const;
export type QueueName = (typeof QueueNames)[keyof typeof QueueNames];

/** Stages of a finetune job, in order. */
export const STAGES = ['sft', 'dpo', 'upload'] as const;
export type Stage = (typeof STAGES)[number];

/**
 * Data of a `finetune` job as stored in Redis (clear text: keep secrets out). The rows are not here: they are in
 * storage (src/storage/datasets.ts) and the job holds the reference. The worker validates all of it again
 * (src/worker/validate-job.ts) before it trusts any field.
 */
export interface FinetunePayload {
  communityId: string;
  /** The stored dataset: `{datasetId, sha256, rows}`. */
  dataset: DatasetRef;
  /** The resolved training config (the API's loadConfig of the request's `config`); the worker re-validates it. */
  config: TrainConfig;
  /** sha256 hex of the canonical JSON of {communityId, dataset sha256, config}: what an idempotency key is bound to. */
  requestHash: string;
  /** ISO 8601 time of the request. */
  requestedAt: string;
  /** 1-64 of [A-Za-z0-9_-], part of the artifact's name (`<suffix>-<jobId>`). */
  suffix?: string;
  /** `sft+dpo` (default), `dpo` (no SFT stage), `sft` (no DPO stage) or `online_dpo` (SFT, then online DPO on prompts). */
  method?: TrainingMethod;
  /** The uploaded dataset the rows came from (POST /datasets), when triggered by id. */
  datasetId?: string;
  /** The uploaded dataset used as the eval set, when given. */
  evalDatasetId?: string;
  /** Where the job's outcome is POSTed (checked at the API; checked again at delivery). */
  callbackUrl?: string;
}

/** The training methods of a job (which stages run). */
export const TRAINING_METHODS = ['sft+dpo', 'dpo', 'sft', 'online_dpo'] as const;
export type TrainingMethod = (typeof TRAINING_METHODS)[number];

/** When a stage ran (ISO 8601). */
export interface StageSpan {
  stage: Stage;
  startedAt: string;
  finishedAt: string | null;
}

/** `job.progress` of a finetune job, written by the worker. */
export interface FinetuneProgress {
  stage: Stage | null;
  step: number;
  totalSteps: number;
  /** step / totalSteps of the current stage, in [0, 1]. */
  fraction: number;
  metrics: StageMetrics;
  stages: StageSpan[];
  /** Tokens trained so far, both stages (TRL's `num_tokens` summed). */
  trainedTokens?: number;
  /** ISO 8601 estimate of when training ends, from the measured tokens/s (null before a step is timed). */
  estimatedFinish?: string | null;
  /** What the data phase kept, dropped and truncated (from its `data.ready` event); absent before it ran. */
  data?: JobDataSummary;
  /** The whole job in percent (0-100: planned stages equally, upload included); what Bull Board draws. */
  percent?: number;
}

/** The data phase's counts of a job (`data.ready`), as GET /jobs/:jobId shows them. */
export interface JobDataSummary {
  /** Rows read (training data, before the eval split). */
  rows: number;
  train: number;
  eval: number;
  /** Rows left out (unparsable, invalid, or the prompt alone fills max_length). */
  dropped: number;
  /** Pairs cut to max_length (both splits) and their share of the tokenized pairs, in [0, 1]. */
  truncated: number;
  truncatedFraction: number;
  maxLength: number;
  /** The data phase's warnings, e.g. more than 10% of the pairs truncated (naming max_length). */
  warnings: string[];
}

/** `job.returnvalue` of a completed finetune job. */
export interface FinetuneResult {
  artifact: { uri: string; files: StoredFile[]; signedUrls?: Record<string, string> };
  metrics: StageMetrics;
  stages: StageSpan[];
  /** Wall seconds per stage. */
  durations: Partial<Record<Stage, number>>;
}

/** The typed map: queue name → job name, payload, result, progress. */
export interface QueueJobTypes {
  finetune: { name: 'finetune'; data: FinetunePayload; result: FinetuneResult; progress: FinetuneProgress };
}

/** Job states of the HTTP contract. */
export type JobState = 'queued' | 'active' | 'completed' | 'failed' | 'cancelled';

/** GET /jobs/:jobId body (schemas/job-status.json). */
export interface JobStatus {
  jobId: string;
  communityId: string;
  state: JobState;
  stage: Stage | null;
  progress: { stage: Stage | null; step: number; totalSteps: number; fraction: number };
  stages: StageSpan[];
  metrics: StageMetrics;
  artifact: FinetuneResult['artifact'] | null;
  error: { code: string; message: string } | null;
  /** A DELETE was received and the worker has not stopped the job yet. */
  cancelRequested: boolean;
  createdAt: string;
  finishedAt: string | null;
  /** Tokens trained so far (both stages). */
  trainedTokens: number;
  /** ISO 8601 estimate of when training ends (active jobs), else null. */
  estimatedFinish: string | null;
  /** The data phase's counts and warnings, null until the worker prepared the data. */
  data: JobDataSummary | null;
  suffix: string | null;
  method: TrainingMethod;
  datasetId: string | null;
  evalDatasetId: string | null;
}

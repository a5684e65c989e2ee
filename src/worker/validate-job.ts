/**
 * The worker trusts nothing it reads from Redis: before a job touches a file, its id, payload shape, config
 * (policy, the trainer's resolution, the compute budget) and rows (fetched from the dataset store by the
 * validated reference, checked against their sha256, then the request's row schema and the data module's
 * row rules) are validated again, with the same rules as the API (src/queue/payload.ts). A job that fails
 * is failed with INVALID_JOB_PAYLOAD and a message naming the fields (never their contents).
 */
import { JobFailure } from '../queue/errors.js';
import { resolveRequestConfig, type TrainConfig } from '../config/index.js';
import {
  budgetProblems,
  COMMUNITY_ID,
  JOB_ID,
  modelRegistry,
  modelSourceRegistry,
  payloadShapeProblems,
  resolvedConfigProblems,
  rowShapeProblems,
  type Problem,
} from '../queue/payload.js';
import type { FinetunePayload } from '../queue/types.js';
import { validatePromptRows } from '../training/online/validate-prompts.js';
import type { DatasetRow, PreferenceExample } from '../training/types.js';
import { DatasetError, type DatasetStore } from '../storage/datasets.js';
import { loadRowValidator } from '../api/row-validator.js';
import type { RowValidator } from '../api/routes/trigger.js';

export const INVALID_JOB_PAYLOAD = 'INVALID_JOB_PAYLOAD';

/** A job after validation: every field safe to build paths and commands from. */
export interface ValidJob {
  jobId: string;
  communityId: string;
  /** The resolved config, checked again here (the one resolution in the worker process). */
  config: TrainConfig;
  rows: DatasetRow[];
  /** The eval set's rows when the job names an uploaded `evalDatasetId` (checked like the training rows). */
  evalRows: PreferenceExample[] | null;
  payload: FinetunePayload;
}

export interface JobValidatorOptions {
  datasets: DatasetStore;
  /** MAX_TRAIN_TOKENS (0 = none). */
  maxTrainTokens: number;
  /** Semantic row rules (default: the data module's validateRows). */
  validateRows?: RowValidator;
}

function fail(problems: Problem[]): never {
  const shown = problems.slice(0, 10).map((p) => `${p.path} ${p.message}`);
  const more = problems.length > 10 ? ` (and ${problems.length - 10} more)` : '';
  throw new JobFailure(INVALID_JOB_PAYLOAD, `the job payload in Redis is invalid: ${shown.join('; ')}${more}`.slice(0, 2000));
}

/**
 * Build the validator (loads the config module, the model registry and the row rules once).
 * @returns `validate(job)` resolving to the {@link ValidJob}; it throws JobFailure INVALID_JOB_PAYLOAD.
 */
export async function createJobValidator(opts: JobValidatorOptions): Promise<(job: { id?: string | null; data: unknown }) => Promise<ValidJob>> {
  const models = await modelRegistry();
  const sources = await modelSourceRegistry();
  // compile the payload and row validators now, not inside the first job (where a slow compile on a loaded
  // machine would delay the BullMQ lock renewal)
  payloadShapeProblems({});
  rowShapeProblems([]);
  const validateRows = opts.validateRows ?? (await loadRowValidator());
  return async (job) => {
    const jobId = job.id;
    if (typeof jobId !== 'string' || !JOB_ID.test(jobId)) fail([{ path: '/id', message: `must match ${JOB_ID.source}` }]);
    const shape = payloadShapeProblems(job.data);
    if (shape.length > 0) fail(shape);
    const data = job.data as FinetunePayload;
    if (!COMMUNITY_ID.test(data.communityId)) fail([{ path: '/data/communityId', message: 'is not a community id' }]);
    // the job's config has the payload's shape but nothing of it is trusted yet: check it as plain data
    const rawConfig: Record<string, unknown> = { ...data.config };
    const policy = resolvedConfigProblems(rawConfig, models, '/data/config', sources);
    if (policy.length > 0) fail(policy);
    const resolved = resolveRequestConfig(rawConfig, '/data/config');
    if (!resolved.config) fail(resolved.problems);
    const budget = budgetProblems(resolved.config, data.dataset.rows, opts.maxTrainTokens);
    if (budget.length > 0) fail(budget);
    let rows: unknown[];
    try {
      rows = await opts.datasets.get(data.communityId, data.dataset);
    } catch (err) {
      if (err instanceof DatasetError) fail([{ path: '/data/dataset', message: `${err.code}: ${err.message}` }]);
      throw err;
    }
    const rowShape = rowShapeProblems(rows);
    if (rowShape.length > 0) fail(rowShape);
    const rowRules = (resolved.config.stage === 'online_dpo' ? validatePromptRows(rows) : validateRows(rows)).map((p) => ({
      path: `/dataset/${p.index}${p.field ? `/${p.field}` : ''}`,
      message: p.message.replace(/^row \d+: /, ''),
    }));
    if (rowRules.length > 0) fail(rowRules);
    let evalRows: unknown[] | null = null;
    if (data.evalDatasetId) {
      try {
        evalRows = await opts.datasets.get(data.communityId, data.evalDatasetId);
      } catch (err) {
        if (err instanceof DatasetError) fail([{ path: '/data/evalDatasetId', message: `${err.code}: ${err.message}` }]);
        throw err;
      }
      const evalShape = rowShapeProblems(evalRows);
      if (evalShape.length > 0) fail(evalShape.map((p) => ({ ...p, path: `/evalDataset${p.path}` })));
    }
    return {
      jobId,
      communityId: data.communityId,
      config: resolved.config,
      rows: rows as DatasetRow[],
      evalRows: evalRows as PreferenceExample[] | null,
      payload: data,
    };
  };
}

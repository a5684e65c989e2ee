/**
 * The request fields of POST /trigger-finetune beyond the rows and config — `suffix`, `method`,
 * `callbackUrl` (checked: scheme, credentials, and every resolved address public unless
 * CALLBACK_ALLOW_PRIVATE) — and what happens right after a job is created: it enters the job list
 * index and its event log starts with `job.queued`.
 */
import type { FinetuneQueueService, JobRequestFields } from '../../queue/finetune-queue.js';
import type { JobEventLog, NewJobEvent } from '../../queue/events.js';
import type { JobIndex } from '../../queue/job-index.js';
import type { TrainingMethod } from '../../queue/types.js';
import type { TrainConfig } from '../../config/index.js';
import type { DatasetRow, PreferenceExample } from '../../training/types.js';
import { preferenceRowsOnly } from '../../training/online/validate-prompts.js';
import type { TriggerRequest } from '../request-schema.js';
import { planJob, type DryRunPlan } from '../plan.js';
import { ValidationError } from '../errors.js';
import type { DatasetStore } from '../../storage/datasets.js';
import { CallbackUrlError, resolveCallbackTarget, type CallbackPolicy } from '../../webhooks/targets.js';
import type { Problem } from '../errors.js';

/** The request fields this module checks (their schema: src/api/request-schema.ts). */
export type TriggerExtrasBody = Pick<TriggerRequest, 'suffix' | 'method' | 'callbackUrl' | 'datasetId' | 'evalDatasetId'>;

export interface TriggerExtrasDeps {
  callbackPolicy: CallbackPolicy;
  /** Redis and prefix of the service statistics (measured tokens/s for dry-run durations). */
  redis: import('ioredis').Redis;
  prefix: string;
  /** The dataset store (uploaded and inline rows; datasetId / evalDatasetId). */
  datasets: DatasetStore;
  /** Whether the community has a webhook signing secret (SIGNING_SECRETS). */
  hasSigningSecret: (communityId: string) => boolean;
}

/**
 * Check the extra fields.
 * @returns problems (JSON pointers into the body) and the fields to store with the job.
 */
export async function checkTriggerExtras(
  communityId: string,
  body: TriggerExtrasBody,
  deps: TriggerExtrasDeps,
): Promise<{ problems: Problem[]; fields: JobRequestFields }> {
  const problems: Problem[] = [];
  const fields: JobRequestFields = {};
  // (datasetId is resolved by the trigger route itself; the eval set here, in the same community's store)
  if (body.evalDatasetId !== undefined && !(await deps.datasets.has(communityId, body.evalDatasetId).catch(() => false))) {
    problems.push({ path: '/evalDatasetId', message: `is not a dataset of community ${communityId} (UNKNOWN_DATASET); upload it with POST /datasets` });
  }
  if (body.suffix !== undefined) fields.suffix = body.suffix;
  if (body.method !== undefined) fields.method = body.method;
  if (body.datasetId !== undefined) fields.datasetId = body.datasetId;
  if (body.evalDatasetId !== undefined) fields.evalDatasetId = body.evalDatasetId;
  if (body.callbackUrl !== undefined) {
    try {
      await resolveCallbackTarget(body.callbackUrl, deps.callbackPolicy);
      if (!deps.hasSigningSecret(communityId)) {
        problems.push({
          path: '/callbackUrl',
          message: `needs a signing secret for community ${communityId} (SIGNING_SECRETS=${communityId}:whsec_...) to sign the callbacks`,
        });
      } else fields.callbackUrl = body.callbackUrl;
    } catch (err) {
      if (!(err instanceof CallbackUrlError)) throw err;
      problems.push({ path: '/callbackUrl', message: `${err.message} (${err.code})` });
    }
  }
  return { problems, fields };
}

/**
 * The first event of a created job (`job.queued`), which the queue's reservation appends together with the
 * job index entry (FinetuneQueueService.enqueue, `queued`).
 */
export function queuedEvent(job: { communityId: string; rows: number | null; fields: JobRequestFields }): NewJobEvent {
  return {
    type: 'job.queued',
    message: 'queued',
    data: {
      communityId: job.communityId,
      rows: job.rows,
      method: job.fields.method ?? 'sft+dpo',
      ...(job.fields.suffix ? { suffix: job.fields.suffix } : {}),
      ...(job.fields.datasetId ? { datasetId: job.fields.datasetId } : {}),
      callback: job.fields.callbackUrl ? new URL(job.fields.callbackUrl).host : null,
    },
  };
}

/**
 * The request's config with the training method applied: `dpo` turns the SFT stage off
 * (`sft.enabled: false`), `sft` turns the preference stage off (`dpo.enabled: false`: the artifact is the SFT
 * model), `sft+dpo` leaves the config as it is, and `online_dpo` sets `stage: online_dpo` (SFT on the rows'
 * chosen, when they have one, then online DPO on the prompts).
 */
export function configForMethod(config: Record<string, unknown> | undefined, method: TrainingMethod | undefined): Record<string, unknown> | undefined {
  const section = (key: 'sft' | 'dpo'): Record<string, unknown> =>
    config?.[key] && typeof config[key] === 'object' ? (config[key] as Record<string, unknown>) : {};
  if (method === 'online_dpo') return { ...config, stage: 'online_dpo' };
  if (method === 'dpo') return { ...config, sft: { ...section('sft'), enabled: false } };
  if (method === 'sft') return { ...config, dpo: { ...section('dpo'), enabled: false } };
  return config;
}

/**
 * The dry-run answer: the plan of the job the request would create (src/api/plan.ts).
 * @throws ValidationError when the data phase rejects the data (nothing fits max_length, unreadable file)
 */
export async function dryRunPlan(
  body: TriggerExtrasBody & { communityId: string; dataset?: DatasetRow[] },
  config: TrainConfig,
  deps: Pick<TriggerExtrasDeps, 'redis' | 'prefix' | 'datasets'>,
): Promise<DryRunPlan> {
  // online DPO plans from the prompt rows as they are (the online data phase reads them); DPO from preference rows
  const online = config.stage === 'online_dpo';
  const stored = body.datasetId ? ((await deps.datasets.get(body.communityId, body.datasetId)) as DatasetRow[]) : null;
  const dataset = stored ?? (online ? (body.dataset ?? []) : (preferenceRowsOnly(body.dataset) ?? []));
  const evalDataset = body.evalDatasetId ? ((await deps.datasets.get(body.communityId, body.evalDatasetId)) as PreferenceExample[]) : undefined;
  try {
    return await planJob({
      communityId: body.communityId,
      method: body.method ?? 'sft+dpo',
      config,
      dataset,
      evalDataset,
      redis: deps.redis,
      prefix: deps.prefix,
    });
  } catch (err) {
    const e = err as { code?: string; key?: string; message: string };
    if (e.code === 'INVALID_CONFIG' || (typeof e.code === 'string' && /^(DATA_|EMPTY_|INVALID_DATA|UNSUPPORTED_)/.test(e.code))) {
      throw new ValidationError([{ path: e.key ? `/config/${e.key}` : '/dataset', message: e.message }]);
    }
    throw err;
  }
}

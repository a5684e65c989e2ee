/**
 * POST /trigger-finetune: validate a community's preference pairs (JSON Schema, then the data rules of
 * src/training/data validateRows), then enqueue one finetune job (SFT → DPO → upload).
 */
import type { FastifyInstance } from 'fastify';
import { ApiError, ConflictError, ServiceUnavailableError, ValidationError, type Problem } from '../errors.js';
import { IdempotencyKeyReusedError, JobLimitError, type FinetuneQueueService } from '../../queue/finetune-queue.js';
import { budgetProblems, configPolicyProblems } from '../../queue/payload.js';
import type { ConfigProblem, TrainConfig } from '../../config/index.js';
import type { TriggerRequest } from '../request-schema.js';
import { canAccess, principalOf } from '../auth/tenant.js';
import type { DatasetRef } from '../../storage/datasets.js';
import { apiSchemas } from '../schemas.js';
import { validatePromptRows } from '../../training/online/validate-prompts.js';
import { errorResponses } from './common.js';
import type { JobEventLog } from '../../queue/events.js';
import type { JobIndex } from '../../queue/job-index.js';
import { checkTriggerExtras, configForMethod, dryRunPlan, queuedEvent, type TriggerExtrasDeps } from './trigger-extras.js';

/** Semantic row checks: `{index, field, code, message}` per problem (the contract of src/training/data/validate-rows.ts). */
export type RowValidator = (rows: unknown[]) => Array<{ index: number; field: string; code?: string; message: string; detail?: string }>;

/** The body, as schemas/trigger-finetune.request.json (generated from the same TypeBox source) describes it. */
type TriggerBody = TriggerRequest;

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;

export interface TriggerRouteOptions {
  queue: FinetuneQueueService;
  validateRows: RowValidator;
  /** The trainer's resolution of the request's config (src/config resolveRequestConfig): the resolved config is queued. */
  resolveConfig: (config: Record<string, unknown> | undefined) => { config: TrainConfig | null; problems: ConfigProblem[] };
  /** suffix / method / callbackUrl checks, the job index and the event log (issue 15). */
  extras: TriggerExtrasDeps & { index: JobIndex; events: JobEventLog };
  /** Registered model names (src/queue/payload.ts modelRegistry). */
  models: Readonly<Record<string, true>>;
  /** MAX_TRAIN_TOKENS (0 = no budget). */
  maxTrainTokens: number;
  /** JOB_CHECKPOINT_EVERY_SECONDS: the service's default checkpoint_every_seconds (0 = none). */
  checkpointEverySeconds?: number;
}

/** 429 with Retry-After: a job cap is reached. */
export class TooManyJobsError extends ApiError {
  constructor(
    message: string,
    readonly retryAfterSeconds: number,
  ) {
    super(429, 'JOB_LIMIT_REACHED', message);
  }
}

/** 404 for a community the caller may not use (the same answer whether or not it has jobs). */
export class UnknownCommunityError extends ApiError {
  constructor(communityId: string) {
    super(404, 'NOT_FOUND', `community ${communityId} is not available to this credential`);
  }
}

export async function triggerRoutes(app: FastifyInstance, opts: TriggerRouteOptions): Promise<void> {
  const s = apiSchemas();
  app.post<{ Body: TriggerBody; Querystring: { dryRun?: boolean } }>(
    '/trigger-finetune',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Queue SFT then DPO on a community preference dataset',
        description:
          'Validates every row (schema, then data rules: chosen != rejected, ...) and queues one job. ' +
          'An Idempotency-Key header, or the same communityId + dataset + config, returns the existing job (200); ' +
          'the same key with a different body is 409 IDEMPOTENCY_KEY_REUSED. 404 for a community the credential may ' +
          'not use; 429 JOB_LIMIT_REACHED (Retry-After) past MAX_JOBS_PER_COMMUNITY / MAX_QUEUED_JOBS; 400 naming ' +
          'MAX_TRAIN_TOKENS for a run over the compute budget.',
        security: [{ bearerAuth: [] }],
        headers: {
          type: 'object',
          properties: { 'idempotency-key': { type: 'string', description: '1-200 visible ASCII characters' } },
        },
        querystring: {
          type: 'object',
          properties: {
            dryRun: { type: 'boolean', description: 'validate everything and answer the plan (stages, steps, tokens, estimated duration); nothing is queued' },
          },
        },
        body: s.triggerRequest,
        response: {
          200: { description: 'an existing job (duplicate) or, with dryRun=true, the plan', anyOf: [s.triggerResponse, { $ref: 'DryRunPlan#' }] },
          202: s.triggerResponse,
          ...errorResponses(400, 401, 404, 409, 413, 415, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const { communityId, config } = request.body;
      const dataset = request.body.dataset ?? [];
      if (!canAccess(request, communityId)) throw new UnknownCommunityError(communityId);
      const idem = request.headers['idempotency-key'];
      const problems: Problem[] = [];
      if (idem !== undefined && (typeof idem !== 'string' || !IDEMPOTENCY_KEY.test(idem))) {
        problems.push({ path: '/headers/idempotency-key', message: 'must be 1-200 visible ASCII characters' });
      }
      const policy = configPolicyProblems(config, opts.models);
      problems.push(...policy);
      // service jobs checkpoint by time unless the request says otherwise (a killed worker's job then resumes)
      const withDefaults =
        opts.checkpointEverySeconds && (config === undefined || !Object.hasOwn(config, 'checkpoint_every_seconds'))
          ? { ...config, checkpoint_every_seconds: opts.checkpointEverySeconds }
          : config;
      const resolved = policy.length === 0 ? opts.resolveConfig(configForMethod(withDefaults, request.body.method)) : null;
      if (resolved) problems.push(...resolved.problems);
      if (request.body.dataset === undefined && request.body.datasetId === undefined) {
        problems.push({ path: '/dataset', message: 'is required (or send datasetId, an uploaded dataset)' });
      }
      if (request.body.dataset !== undefined && request.body.datasetId !== undefined) {
        problems.push({ path: '/datasetId', message: 'cannot be sent together with dataset; send one of them' });
      }
      const extras = await checkTriggerExtras(communityId, request.body, opts.extras);
      problems.push(...extras.problems);
      // by id: an uploaded dataset of this community (its rows were checked at upload, and are again in the worker)
      let stored: DatasetRef | null = null;
      if (request.body.datasetId !== undefined && request.body.dataset === undefined) {
        const info = await opts.queue.datasets?.info(communityId, request.body.datasetId).catch(() => null);
        if (info) stored = { datasetId: info.datasetId, sha256: info.sha256, rows: info.rows };
        else problems.push({ path: '/datasetId', message: `is not a dataset of community ${communityId} (UNKNOWN_DATASET); upload it with POST /datasets` });
      }
      const rowCount = stored ? stored.rows : dataset.length;
      if (resolved?.config) problems.push(...budgetProblems(resolved.config, rowCount, opts.maxTrainTokens));
      const rowProblems = stored ? [] : request.body.method === 'online_dpo' ? validatePromptRows(dataset) : opts.validateRows(dataset);
      for (const p of rowProblems) {
        const path = p.index < 0 ? '/dataset' : `/dataset/${p.index}${p.field ? `/${p.field}` : ''}`;
        problems.push({ path, message: p.detail ?? p.message });
      }
      if (problems.length > 0 || !resolved?.config) throw new ValidationError(problems);
      if (request.query.dryRun === true) {
        return reply.code(200).send(await dryRunPlan(request.body, resolved.config, opts.extras));
      }
      let res;
      try {
        res = await opts.queue.enqueue(
          { communityId, dataset: stored ?? dataset, config: resolved.config },
          {
            idempotencyKey: typeof idem === 'string' ? idem : undefined,
            principalId: principalOf(request).id,
            fields: extras.fields,
            // the list index entry and job.queued, written by the reservation itself (no extra round trip)
            queued: { index: opts.extras.index, events: opts.extras.events, event: queuedEvent({ communityId, rows: rowCount, fields: extras.fields }) },
          },
        );
      } catch (err) {
        if (err instanceof ApiError) throw err;
        if (err instanceof IdempotencyKeyReusedError) throw new ConflictError(err.code, err.message);
        if (err instanceof JobLimitError) {
          reply.header('retry-after', String(err.retryAfterSeconds));
          throw new TooManyJobsError(err.message, err.retryAfterSeconds);
        }
        request.log.warn({ err }, 'enqueue failed');
        throw new ServiceUnavailableError();
      }
      request.log.info({ jobId: res.jobId, communityId, rows: rowCount, created: res.created }, 'finetune job');
      return reply.code(res.created ? 202 : 200).send({
        jobId: res.jobId,
        communityId,
        state: res.status.state,
        statusUrl: `/jobs/${res.jobId}`,
        duplicate: !res.created,
      });
    },
  );
}

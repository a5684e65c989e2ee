/**
 * POST /trigger-finetune: validate a community's preference pairs (JSON Schema, then the data rules of
 * src/training/data validateRows), then enqueue one finetune job (SFT → DPO → upload).
 */
import type { FastifyInstance } from 'fastify';
import { ApiError, ServiceUnavailableError, ValidationError, type Problem } from '../errors.js';
import type { FinetuneQueueService } from '../../queue/finetune-queue.js';
import type { ConfigProblem, TrainConfig } from '../../config/index.js';
import type { TriggerRequest } from '../request-schema.js';
import { apiSchemas } from '../schemas.js';
import { errorResponses } from './common.js';
import type { JobEventLog } from '../../queue/events.js';
import type { JobIndex } from '../../queue/job-index.js';
import { checkTriggerExtras, configForMethod, dryRunPlan, recordQueued, type TriggerExtrasDeps } from './trigger-extras.js';

/** Semantic row checks: `{index, field, code, message}` per problem (the contract of src/training/data/validate-rows.ts). */
export type RowValidator = (rows: unknown[]) => Array<{ index: number; field: string; code?: string; message: string; detail?: string }>;

/** Keys of `config` a webhook caller may not set: they address the worker's file system. */
const FORBIDDEN_CONFIG_KEYS = ['output_dir', 'datasets', 'eval_dataset', 'resume_from_checkpoint', 'progress_bar', 'backend'];

function looksLikePath(v: unknown): boolean {
  return typeof v === 'string' && (/[/\\]/.test(v) || v.startsWith('.') || v.startsWith('~'));
}

/**
 * Problems of the `config` object that the config schema cannot express: file-system keys are the
 * worker's, and the model must be a registered name, not a path on the worker.
 */
export function configPolicyProblems(config: Record<string, unknown> | undefined): Problem[] {
  if (!config) return [];
  const out: Problem[] = [];
  for (const k of FORBIDDEN_CONFIG_KEYS) {
    if (k in config) out.push({ path: `/config/${k}`, message: 'is set by the service and cannot be sent in a request' });
  }
  const model = config.model;
  if (looksLikePath(model)) out.push({ path: '/config/model', message: 'must be a registered model name, not a path' });
  if (model && typeof model === 'object') {
    for (const k of ['name_or_path', 'tokenizer_name_or_path']) {
      if (looksLikePath((model as Record<string, unknown>)[k])) {
        out.push({ path: `/config/model/${k}`, message: 'must be a registered model name, not a path' });
      }
    }
  }
  return out;
}

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
          'An Idempotency-Key header, or the same communityId + dataset + config, returns the existing job (200).',
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
          ...errorResponses(400, 401, 413, 415, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const { communityId, config } = request.body;
      const dataset = request.body.dataset ?? [];
      const idem = request.headers['idempotency-key'];
      const problems: Problem[] = [];
      if (idem !== undefined && (typeof idem !== 'string' || !IDEMPOTENCY_KEY.test(idem))) {
        problems.push({ path: '/headers/idempotency-key', message: 'must be 1-200 visible ASCII characters' });
      }
      const policy = configPolicyProblems(config);
      problems.push(...policy);
      const resolved = policy.length === 0 ? opts.resolveConfig(configForMethod(config, request.body.method)) : null;
      if (resolved) problems.push(...resolved.problems);
      if (request.body.dataset === undefined && request.body.datasetId === undefined) {
        problems.push({ path: '/dataset', message: 'is required (or send datasetId, an uploaded dataset)' });
      }
      if (request.body.dataset !== undefined && request.body.datasetId !== undefined) {
        problems.push({ path: '/datasetId', message: 'cannot be sent together with dataset; send one of them' });
      }
      const extras = await checkTriggerExtras(communityId, request.body, opts.extras);
      problems.push(...extras.problems);
      const rowProblems = opts.validateRows(dataset);
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
        res = await opts.queue.enqueue({ communityId, dataset, config: resolved.config }, typeof idem === 'string' ? idem : undefined, extras.fields);
      } catch (err) {
        if (err instanceof ApiError) throw err;
        request.log.warn({ err }, 'enqueue failed');
        throw new ServiceUnavailableError();
      }
      request.log.info({ jobId: res.jobId, communityId, rows: dataset.length, created: res.created }, 'finetune job');
      if (res.created) {
        await recordQueued(
          { queue: opts.queue, ...opts.extras },
          { jobId: res.jobId, communityId, createdAt: res.status.createdAt, rows: dataset.length, fields: extras.fields },
        ).catch((err: Error) => request.log.warn({ err: err.message }, 'could not record the queued job'));
      }
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

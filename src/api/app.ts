/**
 * The API as a Fastify instance built by `buildApp(options)`, separate from the listening entry
 * (src/api/server.ts), the way fastify/demo splits app.ts and server.ts: tests build it and use
 * `app.inject()`, the entry adds listen + graceful shutdown.
 *
 * Routes: POST /trigger-finetune, GET|DELETE /jobs/:jobId, GET /health, GET /metrics, Swagger UI at /docs
 * (+ /docs/json), Bull Board at /admin/queues (ADMIN_API_KEYS only). Tenant keys or signed requests guard every
 * other route but /health and /docs (src/api/auth/plugin.ts).
 */
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { ServiceEnv } from '../config/env.js';
import { FinetuneQueueService } from '../queue/finetune-queue.js';
import { modelRegistry } from '../queue/payload.js';
import { progressPercent } from '../queue/status.js';
import { createDatasetStore, type DatasetStore } from '../storage/index.js';
import { installAuth, isPublicPath } from './auth/plugin.js';
import { principalOf } from './auth/tenant.js';
import type { JobStatus } from '../queue/types.js';
import { installErrorHandlers } from './errors.js';
import { metricsRoutes } from './metrics.js';
import { healthRoutes } from './routes/health.js';
import { jobsRoutes } from './routes/jobs.js';
import { triggerRoutes, type RowValidator } from './routes/trigger.js';
import { apiSchemas, compileOn, createRequestAjv } from './schemas.js';
import { resolveRequestConfig } from '../config/index.js';
import { memoizeConfigResolution } from './config-memo.js';
import { loadRowValidator } from './row-validator.js';
import { registerJobSurface, surfaceDeps, type SurfaceOptions } from './surface.js';

export interface BuildAppOptions {
  /** The validated environment (src/config/env.ts loadEnv). */
  env: ServiceEnv;
  /** Fastify logger option: pino options, a pino instance (`loggerInstance`) or false (default: false). */
  logger?: FastifyServerOptions['logger'];
  loggerInstance?: FastifyServerOptions['loggerInstance'];
  /** Use this queue service instead of creating one from env (the app then does not close it). */
  queue?: FinetuneQueueService;
  /** Where inline rows are stored (default: createDatasetStore(env), the artifacts' backend). */
  datasets?: DatasetStore;
  /** Override the semantic row checks (default: src/training/data validateRows). */
  validateRows?: RowValidator;
  /** Adds signed URLs to completed artifacts (firebase storage), if configured. */
  signArtifact?: (status: JobStatus) => Promise<JobStatus>;
  /** Job list, events, metrics, files, datasets, UI (src/api/surface.ts): overrides of its defaults. */
  surface?: SurfaceOptions;
}

/**
 * Build the API (not listening). Closing the app closes the queue service it created.
 * @throws when a plugin fails to register (e.g. a schema cannot compile).
 */
export async function buildApp(options: BuildAppOptions): Promise<FastifyInstance> {
  const { env } = options;
  const app = Fastify({
    ...(options.loggerInstance ? { loggerInstance: options.loggerInstance } : { logger: options.logger ?? false }),
    bodyLimit: env.BODY_LIMIT_BYTES,
    connectionTimeout: 60_000,
    requestTimeout: 60_000,
    keepAliveTimeout: 5_000,
    // job ids are ours; the request id only correlates logs
    requestIdHeader: 'x-request-id',
  });

  // Body validation with one ajv that knows the shared schemas (config.schema.json), all errors reported.
  const ajv = createRequestAjv();
  // query strings and path params are text: those (only) are coerced to their schema types, defaults applied
  const queryAjv = createRequestAjv({ coerceTypes: true, useDefaults: true });
  app.setValidatorCompiler(({ schema, httpPart }) =>
    compileOn(httpPart === 'querystring' || httpPart === 'params' || httpPart === 'headers' ? queryAjv : ajv, schema as Record<string, unknown>),
  );
  // so swagger can resolve the request body's $ref
  app.addSchema(apiSchemas().config);

  // Only JSON bodies: text/plain is 415 rather than a string that fails the schema.
  app.removeContentTypeParser('text/plain');

  installErrorHandlers(app, env.BODY_LIMIT_BYTES);

  const ownsQueue = !options.queue;
  const datasets = options.datasets ?? options.queue?.datasets ?? (await createDatasetStore(env));
  const queue =
    options.queue ??
    new FinetuneQueueService({
      redisUrl: env.REDIS_URL,
      prefix: env.QUEUE_PREFIX,
      retentionSeconds: env.JOB_RETENTION_SECONDS,
      datasets,
      maxJobsPerCommunity: env.MAX_JOBS_PER_COMMUNITY,
      maxQueuedJobs: env.MAX_QUEUED_JOBS,
    });
  app.decorate('datasets', datasets);
  app.decorate('queueService', queue);
  if (ownsQueue) app.addHook('onClose', async () => queue.close());
  // start with Redis connected in the usual case (never fails: /health reports a missing Redis)
  app.addHook('onReady', async () => {
    if (!(await queue.waitUntilConnected(3000))) app.log.warn({ redis: env.REDIS_URL.replace(/\/\/[^@]*@/, '//***@') }, 'Redis is not reachable yet');
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'dpo-service',
        description: 'Preference fine-tuning: a webhook queues SFT then DPO on a causal LM (TensorFlow.js).',
        version: '0.1.0',
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      tags: [
        { name: 'jobs', description: 'Fine-tune jobs' },
        { name: 'ops', description: 'Health and metrics' },
        { name: 'files', description: 'Trained files and checkpoints of a job' },
        { name: 'datasets', description: 'Uploaded datasets' },
        { name: 'ui', description: 'The job page' },
      ],
    },
    hideUntagged: true,
    // components named by their title / $id (JobStatus, JobEvent, ...), not def-0
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) => String((json as { title?: string }).title ?? json.$id ?? `def-${i}`),
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  const auth = installAuth(app, { env, redis: queue.redis, prefix: env.QUEUE_PREFIX });
  if (!auth.required) app.log.warn('API_KEYS and SIGNING_SECRETS are empty: every route is open to anyone who reaches it');
  if (auth.bareKeys > 0) app.log.warn({ keys: auth.bareKeys }, 'API_KEYS has keys without communities: they may use every community');

  if (env.RATE_LIMIT_MAX > 0) {
    await app.register(rateLimit, {
      max: env.RATE_LIMIT_MAX,
      timeWindow: env.RATE_LIMIT_WINDOW,
      // per authenticated credential (normalised: the principal's id), else per client address
      keyGenerator: (request) => {
        const p = principalOf(request);
        return p.kind === 'key' || p.kind === 'admin' ? p.id : `ip:${request.ip}`;
      },
      allowList: (request) => isPublicPath(request.url),
      errorResponseBuilder: (_request, ctx) => ({
        statusCode: 429,
        code: 'RATE_LIMITED',
        error: 'Too Many Requests',
        message: `rate limit of ${ctx.max} requests per ${ctx.after} exceeded; retry later (RATE_LIMIT_MAX)`,
      }),
    });
  }

  const validateRows = options.validateRows ?? (await loadRowValidator());
  const surface = surfaceDeps(app, env, queue, datasets, options.surface);
  const models = await modelRegistry();
  await app.register(metricsRoutes, { queue });
  await app.register(triggerRoutes, {
    queue,
    validateRows,
    resolveConfig: memoizeConfigResolution(resolveRequestConfig),
    extras: surface.triggerExtras,
    models,
    maxTrainTokens: env.MAX_TRAIN_TOKENS,
    checkpointEverySeconds: env.JOB_CHECKPOINT_EVERY_SECONDS,
  });
  await app.register(jobsRoutes, { queue, signArtifact: options.signArtifact });
  await app.register(healthRoutes, { queue });
  await registerJobSurface(app, surface);

  // Bull Board: only with ADMIN_API_KEYS (checked by the auth hook), read-only unless BULL_BOARD_READONLY=false.
  // Job data holds no rows (they are in storage), so the board shows references, never datasets.
  if (auth.adminEnabled) {
    const board = new FastifyAdapter();
    // (@bull-board/fastify 9.10.1 carries its own @bull-board/api copy: same shape, distinct declarations)
    type BoardServer = Parameters<typeof createBullBoard>[0]['serverAdapter'];
    const finetuneBoard = new BullMQAdapter(queue.queue, { readOnlyMode: env.BULL_BOARD_READONLY });
    // the board draws a progress bar only for a number: our job.progress is an object (GET /jobs/:id), its percent is shown
    finetuneBoard.setFormatter('progress', progressPercent);
    createBullBoard({
      queues: [finetuneBoard],
      serverAdapter: board as unknown as BoardServer,
    });
    board.setBasePath('/admin/queues');
    await app.register(board.registerPlugin(), { prefix: '/admin/queues' });
  }

  return app;
}

declare module 'fastify' {
  interface FastifyInstance {
    queueService: FinetuneQueueService;
    datasets: DatasetStore;
  }
}

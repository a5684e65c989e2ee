/**
 * The job surface of the API beyond trigger / status / cancel (issue 15): the job list, the event log
 * (paged and SSE), metrics history, checkpoints and files, datasets and the job page. Its shared pieces
 * (event log, list index, artifact access) are built once here from the environment.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ServiceEnv } from '../config/env.js';
import { JobEventLog } from '../queue/events.js';
import type { FinetuneQueueService } from '../queue/finetune-queue.js';
import { JobIndex } from '../queue/job-index.js';
import { webhookSecrets } from '../webhooks/secrets.js';
import { join } from 'node:path';
import { accessibleCommunities, canAccess } from './auth/tenant.js';
import { artifactAccessFor, type ArtifactAccess } from './artifacts.js';
import { apiSchemas } from './schemas.js';
import { eventsRoutes, jobEventPageSchema, jobEventSchema } from './routes/events.js';
import { artifactFileListSchema, checkpointListSchema, filesRoutes } from './routes/files.js';
import { jobMetricsRoutes, metricsHistorySchema } from './routes/job-metrics.js';
import { jobListSchema, jobsListRoutes } from './routes/jobs-list.js';
import type { TriggerExtrasDeps } from './routes/trigger-extras.js';
import { uiRoutes } from './routes/ui.js';
import { dryRunPlanSchema } from './plan.js';
import type { DatasetStore } from '../storage/datasets.js';
import { datasetSchema, datasetsRoutes } from './routes/datasets.js';

export interface SurfaceOptions {
  /** Artifact access (default: the local tree under STORAGE_DIR). */
  artifacts?: ArtifactAccess;
  /** SSE poll interval, ms. */
  eventsPollMs?: number;
}

export interface SurfaceDeps {
  env: ServiceEnv;
  queue: FinetuneQueueService;
  events: JobEventLog;
  index: JobIndex;
  artifacts: ArtifactAccess;
  communitiesOf: (request: FastifyRequest) => '*' | string[];
  triggerExtras: TriggerExtrasDeps & { index: JobIndex; events: JobEventLog };
  eventsPollMs?: number;
}

/** Build the shared pieces and add the named schemas (no routes yet). */
export function surfaceDeps(
  app: FastifyInstance,
  env: ServiceEnv,
  queue: FinetuneQueueService,
  datasets: DatasetStore,
  opts: SurfaceOptions = {},
): SurfaceDeps {
  // named schemas, added before any route is registered (a schema added later made fastify rebuild the
  // validators of earlier routes without the app's ajv)
  // the job status is shared by GET /jobs/:jobId and the list items
  if (!app.getSchema(String(apiSchemas().jobStatus.$id))) app.addSchema(apiSchemas().jobStatus);
  for (const s of [
    datasetSchema,
    dryRunPlanSchema,
    jobEventSchema,
    jobEventPageSchema,
    jobListSchema,
    metricsHistorySchema,
    artifactFileListSchema,
    checkpointListSchema,
  ])
    app.addSchema(s);
  const events = new JobEventLog(queue.redis, env.QUEUE_PREFIX, { maxLen: env.EVENT_LOG_MAX_LEN, ttlSeconds: env.JOB_RETENTION_SECONDS });
  const index = new JobIndex(queue.redis, env.QUEUE_PREFIX, env.JOB_RETENTION_SECONDS);
  const secrets = webhookSecrets(env);
  return {
    env,
    queue,
    events,
    index,
    // the artifacts live where the datasets do (one backend): Firebase answers signed-URL redirects
    artifacts: opts.artifacts ?? artifactAccessFor(datasets.objects, env.STORAGE_DIR),
    // the tenant scope of the request's credential (src/api/auth/tenant.ts)
    communitiesOf: accessibleCommunities,
    triggerExtras: {
      callbackPolicy: { allowHttp: env.ALLOW_HTTP_CALLBACKS, allowPrivate: env.CALLBACK_ALLOW_PRIVATE },
      hasSigningSecret: (c) => secrets.has(c),
      redis: queue.redis,
      prefix: env.QUEUE_PREFIX,
      datasets,
      index,
      events,
    },
    eventsPollMs: opts.eventsPollMs,
  };
}

/** Register the named schemas and the routes. */
export async function registerJobSurface(app: FastifyInstance, d: SurfaceDeps): Promise<void> {
  await app.register(jobsListRoutes, { queue: d.queue, index: d.index, communitiesOf: d.communitiesOf });
  await app.register(eventsRoutes, { queue: d.queue, events: d.events, pollMs: d.eventsPollMs });
  await app.register(jobMetricsRoutes, { queue: d.queue, events: d.events, artifacts: d.artifacts });
  await app.register(filesRoutes, { queue: d.queue, events: d.events, artifacts: d.artifacts });
  await app.register(datasetsRoutes, {
    store: d.triggerExtras.datasets,
    incomingDir: join(d.env.WORK_DIR, '.incoming'),
    maxBytes: d.env.MAX_DATASET_BYTES,
    canAccess,
    communitiesOf: d.communitiesOf,
  });
  await app.register(uiRoutes, {});
}

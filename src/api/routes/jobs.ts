/** GET /jobs/:jobId (status, stage, progress, metrics, artifact) and DELETE /jobs/:jobId (cancel). */
import type { FastifyInstance } from 'fastify';
import { ApiError, ConflictError, NotFoundError, ServiceUnavailableError } from '../errors.js';
import { JobFinishedError, type FinetuneQueueService } from '../../queue/finetune-queue.js';
import type { JobStatus } from '../../queue/types.js';
import { apiSchemas } from '../schemas.js';
import { errorResponses } from './common.js';
import { assertCanAccess } from '../auth/tenant.js';

const params = {
  type: 'object',
  required: ['jobId'],
  properties: { jobId: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,128}$' } },
} as const;

export interface JobsRouteOptions {
  queue: FinetuneQueueService;
  /** Adds signed URLs to a completed job's artifact (firebase), when configured. */
  signArtifact?: (status: JobStatus) => Promise<JobStatus>;
}

async function guard<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if (err instanceof JobFinishedError) throw new ConflictError(err.code, err.message);
    throw new ServiceUnavailableError();
  }
}

export async function jobsRoutes(app: FastifyInstance, opts: JobsRouteOptions): Promise<void> {
  const s = apiSchemas();
  app.get<{ Params: { jobId: string } }>(
    '/jobs/:jobId',
    {
      schema: {
        tags: ['jobs'],
        summary: 'State, stage, progress, metrics and artifact of a job',
        security: [{ bearerAuth: [] }],
        params,
        response: { 200: s.jobStatus, ...errorResponses(400, 401, 404, 429, 503) },
      },
    },
    async (request) => {
      let status = await guard(() => opts.queue.getStatus(request.params.jobId));
      // another community's job answers exactly like a missing one
      assertCanAccess(request, status?.communityId, `job ${request.params.jobId}`);
      if (!status) throw new NotFoundError(`job ${request.params.jobId} does not exist (or has expired)`);
      if (opts.signArtifact && status.state === 'completed') status = await opts.signArtifact(status);
      return status;
    },
  );

  app.delete<{ Params: { jobId: string } }>(
    '/jobs/:jobId',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Cancel a queued or running job',
        description:
          'A queued job is removed at once (state cancelled); a running job stops training within about a second ' +
          'and then ends cancelled (cancelRequested is true meanwhile). 409 when the job already finished.',
        security: [{ bearerAuth: [] }],
        params,
        response: { 202: s.jobStatus, ...errorResponses(400, 401, 404, 409, 429, 503) },
      },
    },
    async (request, reply) => {
      const before = await guard(() => opts.queue.getStatus(request.params.jobId));
      assertCanAccess(request, before?.communityId, `job ${request.params.jobId}`);
      const status = await guard(() => opts.queue.cancel(request.params.jobId));
      if (!status) throw new NotFoundError(`job ${request.params.jobId} does not exist (or has expired)`);
      request.log.info({ jobId: status.jobId, state: status.state }, 'cancel requested');
      return reply.code(202).send(status);
    },
  );
}

/**
 * The one way the job sub-resource routes (events, metrics, checkpoints, files) load a job: its status,
 * or the 404 of a missing job when it does not exist, has expired, or belongs to a community the caller
 * may not use (no existence leak).
 */
import type { FastifyRequest } from 'fastify';
import type { FinetuneQueueService } from '../../queue/finetune-queue.js';
import type { JobStatus } from '../../queue/types.js';
import { ApiError, NotFoundError, ServiceUnavailableError } from '../errors.js';
import { assertCanAccess } from '../auth/tenant.js';

/** Path params of the job routes. */
export const jobParams = {
  type: 'object',
  required: ['jobId'],
  properties: { jobId: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,128}$' } },
} as const;

/**
 * The status of `jobId` for this request.
 * @throws NotFoundError (404) for an unknown, expired or other tenant's job; ServiceUnavailableError (503)
 *   when Redis is unreachable.
 */
export async function jobForRequest(queue: FinetuneQueueService, request: FastifyRequest, jobId: string): Promise<JobStatus> {
  let status: JobStatus | null;
  try {
    status = await queue.getStatus(jobId);
  } catch (err) {
    if (err instanceof ApiError) throw err;
    throw new ServiceUnavailableError();
  }
  // another community's job answers exactly like a missing one
  assertCanAccess(request, status?.communityId, `job ${jobId}`);
  if (!status) throw new NotFoundError(`job ${jobId} does not exist (or has expired)`);
  return status;
}

/** Run a Redis read for a route, mapping connection failures to 503. */
export async function redisRead<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if ((err as { code?: string }).code === 'INVALID_EVENT') throw err;
    throw new ServiceUnavailableError();
  }
}

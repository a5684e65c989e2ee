/**
 * GET /jobs?communityId=&state=&limit=&after=: the caller's jobs, newest first, cursor-paginated
 * (`{data, hasMore, nextCursor}`), from the job index (src/queue/job-index.ts). Each item is the job's
 * status (the same object as GET /jobs/:jobId; never its dataset rows).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { decodeCursor, encodeCursor, InvalidCursorError, type JobIndex } from '../../queue/job-index.js';
import { RESERVATION_GRACE_MS, type FinetuneQueueService } from '../../queue/finetune-queue.js';
import type { JobState, JobStatus } from '../../queue/types.js';
import { ValidationError } from '../errors.js';
import { errorResponses } from './common.js';
import { redisRead } from './job-access.js';

export interface JobsListOptions {
  queue: FinetuneQueueService;
  index: JobIndex;
  /** The communities the request may list ('*' = all). */
  communitiesOf: (request: FastifyRequest) => '*' | string[];
}

interface ListQuery {
  communityId?: string;
  state?: JobState;
  limit?: number;
  after?: string;
}

export const jobListSchema = {
  $id: 'JobList',
  title: 'JobList',
  type: 'object',
  required: ['data', 'hasMore', 'nextCursor'],
  properties: {
    data: { type: 'array', items: { $ref: 'https://dpo-service.local/schemas/job-status.json#' } },
    hasMore: { type: 'boolean' },
    nextCursor: { type: ['string', 'null'], description: 'pass as `after` for the next page; null on the last page' },
  },
} as const;

export async function jobsListRoutes(app: FastifyInstance, opts: JobsListOptions): Promise<void> {
  app.get<{ Querystring: ListQuery }>(
    '/jobs',
    {
      schema: {
        tags: ['jobs'],
        summary: 'List jobs, newest first (cursor-paginated)',
        description:
          'Jobs of the communities the key may use. `after` is the `nextCursor` of the previous page. ' +
          '`state` filters (queued, active, completed, failed, cancelled). Items are job statuses without dataset rows.',
        security: [{ bearerAuth: [] }],
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            communityId: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
            state: { type: 'string', enum: ['queued', 'active', 'completed', 'failed', 'cancelled'] },
            limit: { type: 'integer', minimum: 1, maximum: 100, default: 20 },
            after: { type: 'string', maxLength: 256 },
          },
        },
        response: { 200: { $ref: 'JobList#' }, ...errorResponses(400, 401, 429, 503) },
      },
    },
    async (request) => {
      const { communityId, state, after } = request.query;
      const limit = request.query.limit ?? 20;
      let cursor = null;
      try {
        cursor = after ? decodeCursor(after) : null;
      } catch (err) {
        if (err instanceof InvalidCursorError) throw new ValidationError([{ path: '/querystring/after', message: err.message }]);
        throw err;
      }
      const allowed = opts.communitiesOf(request);
      let communities: '*' | string[] = allowed;
      if (communityId) communities = allowed === '*' || allowed.includes(communityId) ? [communityId] : [];
      const data: JobStatus[] = [];
      let hasMore = false;
      let last = cursor;
      // read index pages until the page is full (a state filter or expired jobs can thin a batch)
      for (let rounds = 0; rounds < 50 && communities.length > 0; rounds++) {
        const batch = await redisRead(() => opts.index.list(communities, last, limit + 1));
        if (batch.length === 0) break;
        const statuses = await redisRead(() => Promise.all(batch.map((e) => opts.queue.getStatus(e.id))));
        let i = 0;
        for (; i < batch.length; i++) {
          const st = statuses[i];
          const e = batch[i]!;
          if (!st) {
            // gone (its data expired), unless young: the trigger's reservation writes the entry a moment
            // before the job is added (src/queue/reserve.ts)
            if (Date.now() - e.score >= RESERVATION_GRACE_MS) void opts.index.remove(e.id, null).catch(() => {});
            last = e;
            continue;
          }
          if (state && st.state !== state) {
            last = e;
            continue;
          }
          if (data.length === limit) {
            hasMore = true;
            break;
          }
          data.push(st);
          last = e;
        }
        if (hasMore || batch.length < limit + 1) break;
      }
      const nextCursor = hasMore && last ? encodeCursor(last) : null;
      return { data, hasMore, nextCursor };
    },
  );
}

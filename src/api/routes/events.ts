/**
 * GET /jobs/:jobId/events: the job's event log (src/queue/events.ts).
 * - JSON (default): `?after=<eventId>&limit=` pages oldest first: `{data, hasMore, nextCursor}`.
 * - `Accept: text/event-stream`: Server-Sent Events, live. Each event is sent as
 *   `id: <eventId>` / `event: <type>` / `data: <the event as JSON>`; the stream starts after `after` or the
 *   `Last-Event-ID` header (what EventSource sends when it reconnects), so a dropped connection resumes
 *   exactly where it stopped. New events are picked up every EVENTS_POLL_MS (250 ms); a `: keep-alive`
 *   comment goes out every 15 s. The stream stays open until the client closes it (after the job's
 *   terminal event only webhook events can follow).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { EVENT_ID, type JobEvent, type JobEventLog } from '../../queue/events.js';
import type { FinetuneQueueService } from '../../queue/finetune-queue.js';
import { ValidationError } from '../errors.js';
import { errorResponses } from './common.js';
import { jobForRequest, jobParams, redisRead } from './job-access.js';

export const jobEventSchema = {
  $id: 'JobEvent',
  title: 'JobEvent',
  type: 'object',
  required: ['id', 'createdAt', 'level', 'type', 'message', 'data'],
  properties: {
    id: { type: 'string', description: 'stream id `<ms>-<seq>`; the `after` / Last-Event-ID cursor' },
    createdAt: { type: 'string', format: 'date-time' },
    level: { type: 'string', enum: ['info', 'warn', 'error'] },
    type: {
      type: 'string',
      description:
        'job.queued, job.started, model.loading, data.ready, stage.started, metrics, checkpoint.saved, eval.completed, ' +
        'stage.completed, upload.completed, job.succeeded, job.failed, job.cancelled, webhook.attempt, webhook.delivered, webhook.failed, warning',
    },
    message: { type: 'string' },
    data: { type: 'object', additionalProperties: true },
  },
} as const;

export const jobEventPageSchema = {
  $id: 'JobEventPage',
  title: 'JobEventPage',
  type: 'object',
  required: ['data', 'hasMore', 'nextCursor'],
  properties: {
    data: { type: 'array', items: { $ref: 'JobEvent#' } },
    hasMore: { type: 'boolean' },
    nextCursor: { type: ['string', 'null'], description: 'pass as `after` for the next page' },
  },
} as const;

export interface EventsRouteOptions {
  queue: FinetuneQueueService;
  events: JobEventLog;
  /** How often an SSE stream looks for new events, ms (default 250). */
  pollMs?: number;
  /** Keep-alive comment interval, ms (default 15000). */
  keepAliveMs?: number;
}

interface EventsQuery {
  after?: string;
  limit?: number;
  type?: string;
}

function wantsStream(request: FastifyRequest): boolean {
  const a = request.headers.accept ?? '';
  return a.split(',').some((t) => t.trim().toLowerCase().startsWith('text/event-stream'));
}

function sseFrame(e: JobEvent): string {
  return `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`;
}

async function stream(request: FastifyRequest, reply: FastifyReply, jobId: string, after: string | undefined, opts: EventsRouteOptions): Promise<void> {
  const raw = reply.raw;
  reply.hijack();
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  // a retry hint for EventSource, and an initial comment so proxies flush headers
  raw.write('retry: 2000\n: stream of job events\n\n');
  let cursor = after;
  let closed = false;
  let lastWrite = Date.now();
  request.raw.on('close', () => {
    closed = true;
  });
  const pollMs = opts.pollMs ?? 250;
  const keepAliveMs = opts.keepAliveMs ?? 15_000;
  while (!closed) {
    try {
      const page = await opts.events.list(jobId, { after: cursor, limit: 500 });
      for (const e of page.data) raw.write(sseFrame(e));
      if (page.data.length > 0) {
        cursor = page.data.at(-1)!.id;
        lastWrite = Date.now();
      }
      if (page.hasMore) continue;
    } catch (err) {
      request.log.warn({ err: (err as Error).message, jobId }, 'event stream read failed; retrying');
    }
    if (Date.now() - lastWrite >= keepAliveMs) {
      raw.write(': keep-alive\n\n');
      lastWrite = Date.now();
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
  raw.end();
}

export async function eventsRoutes(app: FastifyInstance, opts: EventsRouteOptions): Promise<void> {
  app.get<{ Params: { jobId: string }; Querystring: EventsQuery }>(
    '/jobs/:jobId/events',
    {
      schema: {
        tags: ['jobs'],
        summary: "The job's event log, paged (JSON) or live (Server-Sent Events)",
        description:
          'JSON pages oldest first after `after`. With `Accept: text/event-stream` the same route streams events live ' +
          '(SSE: id = event id, event = type, data = the event JSON), resuming after `after` or the Last-Event-ID header.',
        security: [{ bearerAuth: [] }],
        params: jobParams,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            after: { type: 'string', pattern: EVENT_ID.source, description: 'an event id; only later events are returned' },
            limit: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
            type: { type: 'string', maxLength: 64, description: 'only events of this type (JSON pages only)' },
          },
        },
        headers: {
          type: 'object',
          properties: { 'last-event-id': { type: 'string', description: 'SSE resume point (sent by EventSource on reconnect)' } },
        },
        response: {
          200: {
            description: 'a page of events (application/json) or an event stream (text/event-stream)',
            content: {
              'application/json': { schema: { $ref: 'JobEventPage#' } },
              'text/event-stream': { schema: { type: 'string' } },
            },
          },
          ...errorResponses(400, 401, 404, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const { jobId } = request.params;
      await jobForRequest(opts.queue, request, jobId);
      if (wantsStream(request)) {
        const lastId = request.headers['last-event-id'];
        let after = request.query.after;
        if (typeof lastId === 'string' && lastId !== '') {
          if (!EVENT_ID.test(lastId)) throw new ValidationError([{ path: '/headers/last-event-id', message: 'must be an event id such as 1733011200000-0' }]);
          after = lastId;
        }
        await stream(request, reply, jobId, after, opts);
        return reply;
      }
      return redisRead(() => opts.events.list(jobId, { after: request.query.after, limit: request.query.limit, type: request.query.type }));
    },
  );
}

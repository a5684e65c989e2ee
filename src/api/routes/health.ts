/** GET /health: 200 when Redis answers, 503 `{redis: "down"}` otherwise. No auth. */
import type { FastifyInstance } from 'fastify';
import type { FinetuneQueueService } from '../../queue/finetune-queue.js';

const healthBody = {
  type: 'object',
  required: ['status', 'redis'],
  properties: {
    status: { type: 'string', enum: ['ok', 'error'] },
    redis: { type: 'string', enum: ['up', 'down'] },
    queue: { type: 'object', additionalProperties: { type: 'integer' } },
    uptimeSeconds: { type: 'number' },
  },
} as const;

export async function healthRoutes(app: FastifyInstance, opts: { queue: FinetuneQueueService }): Promise<void> {
  app.get(
    '/health',
    {
      config: { rateLimit: false },
      schema: {
        tags: ['ops'],
        summary: 'Liveness and Redis reachability',
        response: { 200: healthBody, 503: healthBody },
      },
    },
    async (_request, reply) => {
      const up = await opts.queue.ping();
      let queue: Record<string, number> | undefined;
      if (up) queue = await opts.queue.counts().catch(() => undefined);
      const body = { status: up ? 'ok' : 'error', redis: up ? 'up' : 'down', queue, uptimeSeconds: process.uptime() };
      return reply.code(up ? 200 : 503).send(body);
    },
  );
}

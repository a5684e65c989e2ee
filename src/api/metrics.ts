/**
 * Prometheus metrics (prom-client): HTTP requests and durations of this API process, default process
 * metrics, queue depth by state (read from Redis at scrape time), and the workers' job statistics
 * (stage durations, tokens/s, completions, failures by code; src/queue/stats.ts).
 */
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { FinetuneQueueService } from '../queue/finetune-queue.js';
import { renderJobStats } from '../queue/stats.js';

/**
 * Register `GET /metrics` and the request hooks that feed it. One Registry per app (tests build many).
 * Not encapsulated (fastify-plugin), and registered before the other routes, so that its onResponse hook
 * counts every route of the app, not only `/metrics`.
 */
export const metricsRoutes = fp(metricsPlugin, { name: 'dpo-metrics' });

async function metricsPlugin(app: FastifyInstance, opts: { queue: FinetuneQueueService }): Promise<void> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'dpo_api_' });
  const requests = new Counter({
    name: 'dpo_http_requests_total',
    help: 'HTTP requests by method, route and status code.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const durations = new Histogram({
    name: 'dpo_http_request_duration_seconds',
    help: 'HTTP request duration by method and route.',
    labelNames: ['method', 'route'] as const,
    buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers: [registry],
  });
  const depth = new Gauge({
    name: 'dpo_queue_jobs',
    help: 'Jobs in the finetune queue by state (waiting = queue depth).',
    labelNames: ['state'] as const,
    registers: [registry],
    async collect() {
      const counts = await opts.queue.counts().catch(() => null);
      if (!counts) return;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  void depth;

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    requests.inc({ method: request.method, route, status: String(reply.statusCode) });
    durations.observe({ method: request.method, route }, reply.elapsedTime / 1000);
  });

  app.get('/metrics', { schema: { tags: ['ops'], summary: 'Prometheus metrics', security: [{ bearerAuth: [] }] } }, async (_request, reply) => {
    const own = await registry.metrics();
    const jobs = await renderJobStats(opts.queue.redis, opts.queue.prefix).catch(() => '');
    return reply.type(registry.contentType).send(own + jobs);
  });
}

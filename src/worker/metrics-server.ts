/**
 * The worker's own Prometheus endpoint (WORKER_METRICS_HOST:WORKER_METRICS_PORT, default 127.0.0.1:9464): process metrics, jobs running
 * now, jobs finished by this process by outcome, and `/health` (200 while the worker is connected to Redis).
 * Cluster-wide job statistics (stage durations, tokens/s, failures) are served by the API's /metrics.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export interface WorkerMetrics {
  registry: Registry;
  finished: Counter<'outcome'>;
  running: Gauge;
}

/** The worker events the metrics listen to (a BullMQ Worker). */
interface WorkerEvents {
  on(event: 'active' | 'completed', listener: (job: { id?: string }) => void): unknown;
  on(event: 'failed', listener: (job: { id?: string } | undefined) => void): unknown;
}

/** Metrics of one worker process, fed by the BullMQ worker's events. */
export function createWorkerMetrics(worker: WorkerEvents): WorkerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'dpo_worker_' });
  const finished = new Counter({
    name: 'dpo_worker_jobs_finished_total',
    help: 'Jobs this worker process finished, by outcome (completed, failed).',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  // ids of the jobs this process runs ('failed' also fires for jobs it never ran, e.g. stalled elsewhere)
  const active = new Set<string>();
  const running = new Gauge({
    name: 'dpo_worker_jobs_running',
    help: 'Jobs this worker process is training now.',
    registers: [registry],
    collect() {
      this.set(active.size);
    },
  });
  worker.on('active', (job) => {
    if (job.id) active.add(job.id);
  });
  const done = (outcome: 'completed' | 'failed') => (job: { id?: string } | undefined) => {
    if (job?.id && active.delete(job.id)) finished.inc({ outcome });
  };
  worker.on('completed', done('completed'));
  worker.on('failed', done('failed'));
  return { registry, finished, running };
}

/**
 * Serve `GET /metrics` and `GET /health` on `host:port` (port 0 = a free port, for tests). The default host is
 * loopback (WORKER_METRICS_HOST): process metrics are for a local scraper unless configured otherwise.
 * @returns the listening server; close it on shutdown.
 */
export async function serveWorkerMetrics(metrics: WorkerMetrics, isHealthy: () => boolean, port: number, host = '127.0.0.1'): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType });
          res.end(text);
        },
        () => {
          res.writeHead(500);
          res.end();
        },
      );
      return;
    }
    if (req.method === 'GET' && path === '/health') {
      const ok = isHealthy();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: ok ? 'ok' : 'error', redis: ok ? 'up' : 'down' }));
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ statusCode: 404, code: 'NOT_FOUND', error: 'Not Found', message: 'GET /metrics or /health' }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

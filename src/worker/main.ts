/**
 * The worker process (`dpo worker`, `make worker`): consumes the `finetune` queue with a BullMQ Worker
 * whose processor forks a training child per job (src/worker/child.ts), stores artifacts with the
 * configured Storage, and shuts down gracefully: on SIGTERM it stops taking jobs and lets the running job
 * finish for WORKER_SHUTDOWN_TIMEOUT_MS; after that it exits and the job's lock expires, so BullMQ's
 * stalled-job check hands it to another worker (at-least-once delivery: docs.bullmq.io "Stalled Jobs").
 */
import { Worker } from 'bullmq';
import closeWithGrace from 'close-with-grace';
import pino, { type Logger } from 'pino';
import { serviceLoggerOptions } from '../util/log.js';
import { settlesWithin } from '../util/timeout.js';
import { pathToFileURL } from 'node:url';
import { loadEnv, type ServiceEnv } from '../config/env.js';
import { createRedis } from '../queue/connection.js';
import { QueueNames, type QueueJobTypes } from '../queue/types.js';
import { createDatasetStore, createStorage, type DatasetStore } from '../storage/index.js';
import type { Storage } from '../storage/storage.js';
import { probeBackend, type trainInChild } from './child-process.js';
import { runGpuCheck } from './gpu-check.js';
import { createFinetuneProcessor } from './processor.js';
import { startDeliveryWorker, WebhookQueue } from '../webhooks/delivery.js';
import { webhookSecrets } from '../webhooks/secrets.js';
import { createJobValidator } from './validate-job.js';
import { createWorkerMetrics, serveWorkerMetrics } from './metrics-server.js';
import type { Server } from 'node:http';

type FT = QueueJobTypes['finetune'];

export interface StartWorkerOptions {
  env: ServiceEnv;
  logger?: Logger;
  /** Use this storage instead of createStorage(env). */
  storage?: Storage;
  /** Where job rows are read from (default: createDatasetStore(env)). */
  datasets?: DatasetStore;
  /** Skip the tfjs backend / GPU start-up probe (tests). */
  skipBackendCheck?: boolean;
  /** Override the training runner (tests of the queue plumbing only). */
  train?: typeof trainInChild;
  /** Cancellation poll interval, ms. */
  cancelPollMs?: number;
}

export interface WorkerHandle {
  worker: Worker<FT['data'], FT['result'], FT['name']>;
  /** Address of the worker's /metrics endpoint, when WORKER_METRICS_PORT > 0. */
  metricsAddress: string | null;
  /**
   * Stop taking jobs and wait up to `timeoutMs` for the running ones; after that, stop their training
   * (with a checkpoint when `save_steps` is set) and hand them back to the queue. Then close connections.
   * `drained` is false when jobs were handed back.
   */
  close(timeoutMs?: number): Promise<{ drained: boolean }>;
}

/** pino logger of a service process (src/util/log.ts options: pretty on a TTY, JSON lines otherwise). */
export function createLogger(env: Pick<ServiceEnv, 'LOG_LEVEL'>, name: string): Logger {
  return pino(serviceLoggerOptions(env.LOG_LEVEL, name));
}

/**
 * Start consuming the finetune queue.
 * @throws GpuCheckError when a GPU worker would train on the CPU (src/worker/gpu-check.ts), or the
 *   backend probe fails; StorageError INVALID_STORAGE_CONFIG for bad storage settings.
 */
export async function startWorker(opts: StartWorkerOptions): Promise<WorkerHandle> {
  const { env } = opts;
  const logger = opts.logger ?? createLogger(env, 'dpo-worker');
  if (!opts.skipBackendCheck && env.WORKER_BACKEND_CHECK) {
    const backend = await probeBackend(env.TFJS_BACKEND);
    await runGpuCheck(backend, logger);
  }
  const storage = opts.storage ?? (await createStorage(env, { logger: logger.child({ module: 'storage' }) }));
  const datasets = opts.datasets ?? (await createDatasetStore(env, { logger: logger.child({ module: 'datasets' }) }));
  const validate = await createJobValidator({ datasets, maxTrainTokens: env.MAX_TRAIN_TOKENS });
  const redis = createRedis(env.REDIS_URL, 'worker');
  redis.on('error', (err) => logger.warn({ err: err.message }, 'redis error'));
  const shutdown = new AbortController();
  const deliverySettings = { attempts: env.WEBHOOK_ATTEMPTS, backoffMs: env.WEBHOOK_BACKOFF_MS, timeoutMs: env.WEBHOOK_TIMEOUT_MS };
  const webhooks = new WebhookQueue(redis, env.QUEUE_PREFIX, deliverySettings);
  const secrets = webhookSecrets(env);
  const deliveryConnection = createRedis(env.REDIS_URL, 'worker');
  const delivery = startDeliveryWorker({
    connection: redis,
    workerConnection: deliveryConnection,
    prefix: env.QUEUE_PREFIX,
    policy: { allowHttp: env.ALLOW_HTTP_CALLBACKS, allowPrivate: env.CALLBACK_ALLOW_PRIVATE },
    secretFor: (c) => secrets.get(c),
    settings: deliverySettings,
    logger: logger.child({ module: 'webhooks' }),
    eventTtlSeconds: env.JOB_RETENTION_SECONDS,
  });
  const processor = createFinetuneProcessor({
    shutdownSignal: shutdown.signal,
    redis,
    prefix: env.QUEUE_PREFIX,
    storage,
    workDir: env.WORK_DIR,
    validate,
    backend: env.TFJS_BACKEND,
    logLevel: env.LOG_LEVEL,
    logger,
    jobTimeoutSeconds: env.JOB_TIMEOUT_SECONDS,
    cancelPollMs: opts.cancelPollMs,
    train: opts.train,
    webhooks,
    eventTtlSeconds: env.JOB_RETENTION_SECONDS,
    // a fault-test hook, off by default: die like a killed process right after an artifact is stored
    afterArtifactStored: process.env.DPO_TEST_KILL_AFTER_UPLOAD === '1' ? () => process.kill(process.pid, 'SIGKILL') : undefined,
  });
  const workerConnection = createRedis(env.REDIS_URL, 'worker');
  const worker = new Worker<FT['data'], FT['result'], FT['name']>(QueueNames.finetune, processor, {
    connection: workerConnection,
    prefix: env.QUEUE_PREFIX,
    concurrency: env.WORKER_CONCURRENCY,
    // training runs in a child process, so the lock is renewed on time; one stall re-run at most
    maxStalledCount: 1,
    lockDuration: env.WORKER_LOCK_DURATION_MS,
    stalledInterval: env.WORKER_STALLED_INTERVAL_MS,
  });
  worker.on('error', (err) => logger.error({ err: err.message }, 'worker error'));
  worker.on('failed', (job, err) => logger.debug({ jobId: job?.id, reason: err.message }, 'job failed'));
  await worker.waitUntilReady();
  let metricsServer: Server | null = null;
  if (env.WORKER_METRICS_PORT > 0) {
    metricsServer = await serveWorkerMetrics(
      createWorkerMetrics(worker),
      () => workerConnection.status === 'ready',
      env.WORKER_METRICS_PORT,
      env.WORKER_METRICS_HOST,
    );
  }
  const addr = metricsServer?.address();
  const metricsAddress = addr && typeof addr === 'object' ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : null;
  logger.info({ queue: QueueNames.finetune, prefix: env.QUEUE_PREFIX, concurrency: env.WORKER_CONCURRENCY, storage: storage.kind }, 'worker ready');
  if (metricsAddress) logger.info({ metrics: `${metricsAddress}/metrics` }, 'worker metrics endpoint');

  return {
    worker,
    metricsAddress,
    async close(timeoutMs = env.WORKER_SHUTDOWN_TIMEOUT_MS) {
      const closing = worker.close();
      const drained = await settlesWithin(closing, timeoutMs);
      if (!drained) {
        // stop training (it checkpoints first when save_steps is set) and hand the jobs back to the queue
        logger.warn({ timeoutMs }, 'running jobs did not finish in time; handing them back to the queue');
        shutdown.abort();
        if (!(await settlesWithin(closing, 30_000))) {
          logger.warn('jobs did not stop; leaving them to the stalled-job check');
          await worker.close(true).catch(() => {});
        }
      }
      metricsServer?.close();
      // pending deliveries stay queued for the next worker
      await delivery.close().catch(() => {});
      await webhooks.close().catch(() => {});
      deliveryConnection.disconnect();
      redis.disconnect();
      workerConnection.disconnect();
      return { drained };
    },
  };
}

/** Entry: validated env, start, graceful shutdown on SIGINT/SIGTERM. */
export async function runWorkerProcess(env: ServiceEnv = loadEnv()): Promise<void> {
  const logger = createLogger(env, 'dpo-worker');
  const handle = await startWorker({ env, logger });
  // the wait for running jobs, then up to 30 s to hand them back, then a margin
  closeWithGrace({ delay: env.WORKER_SHUTDOWN_TIMEOUT_MS + 35_000 }, async ({ signal, err }) => {
    if (err) logger.error({ err }, 'closing the worker after an error');
    else logger.info({ signal }, 'closing the worker');
    const { drained } = await handle.close();
    logger.info({ drained }, 'worker closed');
    // a job left running (not drained) is abandoned: exit so its training child goes away too
    if (!drained) process.exit(0);
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  runWorkerProcess().catch((err: Error) => {
    process.stderr.write(`dpo worker: ${err.message}\n`);
    process.exit(1);
  });
}

/**
 * Environment of the service processes (`dpo serve`, `dpo worker`), validated once at start-up with
 * env-schema (JSON Schema + ajv, all errors, type coercion, defaults). docs/service.md "Configuration
 * (environment)" documents the variables; this file is the single source of their names, defaults and ranges.
 */
import envSchema from 'env-schema';

/** The validated environment. Durations are in the unit their name says. */
export interface ServiceEnv {
  /** HTTP port of the API. */
  PORT: number;
  /** Listen address of the API (0.0.0.0 so container probes reach it). */
  HOST: string;
  /** Redis connection URL used by the queue, the API health check and the worker. */
  REDIS_URL: string;
  /** BullMQ key prefix; tests use their own and obliterate it. */
  QUEUE_PREFIX: string;
  /** Where artifacts go: a local directory tree or a Firebase Storage bucket. */
  STORAGE_BACKEND: 'local' | 'firebase';
  /** Root of the local artifact tree `<STORAGE_DIR>/<communityId>/<jobId>/`. */
  STORAGE_DIR: string;
  /** Scratch directory where the worker trains before storing (default `<STORAGE_DIR>/.work`). */
  WORK_DIR: string;
  /** Firebase Storage bucket (required when STORAGE_BACKEND=firebase; the other FIREBASE_* variables are
   *  read by src/storage/firebase.ts firebaseOptionsFromEnv). */
  FIREBASE_BUCKET: string;
  /** Comma-separated bearer keys; when non-empty every route but /health and /docs requires one. */
  API_KEYS: string;
  /** tfjs backend for training: auto | tensorflow | tensorflow-gpu | wasm | cpu. */
  TFJS_BACKEND: 'auto' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';
  /** pino level. */
  LOG_LEVEL: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Jobs one worker process trains at once (1 per GPU/CPU box is right for training). */
  WORKER_CONCURRENCY: number;
  /** A job still training after this many seconds is aborted and fails with JOB_TIMEOUT (0 = no limit). */
  JOB_TIMEOUT_SECONDS: number;
  /** Maximum request body of the API, bytes (413 above it). */
  BODY_LIMIT_BYTES: number;
  /** Requests per RATE_LIMIT_WINDOW per client (0 disables the rate limit). */
  RATE_LIMIT_MAX: number;
  /** Rate-limit window, e.g. `1 minute`. */
  RATE_LIMIT_WINDOW: string;
  /** Seconds completed/failed jobs stay queryable in Redis. */
  JOB_RETENTION_SECONDS: number;
  /** Probe the tfjs backend and GPUs at worker start (src/worker/gpu-check.ts); false skips it (dev, tests). */
  WORKER_BACKEND_CHECK: boolean;
  /** BullMQ job lock of a worker, ms: a worker that dies loses its job after this long (renewed at half). */
  WORKER_LOCK_DURATION_MS: number;
  /** How often a worker looks for stalled jobs (lock expired) and re-queues them, ms. */
  WORKER_STALLED_INTERVAL_MS: number;
  /** Port of the worker's own Prometheus endpoint `/metrics` (and `/health`) on 0.0.0.0 (0 = none). */
  WORKER_METRICS_PORT: number;
  /** Time the API waits for in-flight requests on SIGTERM, ms. */
  SHUTDOWN_GRACE_MS: number;
  /** Time the worker lets a running job finish on SIGTERM before aborting it, ms. */
  WORKER_SHUTDOWN_TIMEOUT_MS: number;
  /** Standard Webhooks secrets per community, `acme:whsec_...,globex:whsec_...`: sign the job callbacks. */
  SIGNING_SECRETS: string;
  /** Largest dataset upload (POST /datasets), bytes as sent (compressed when gzip). */
  MAX_DATASET_BYTES: number;
  /** Approximate cap of events kept per job (Redis Stream MAXLEN ~). */
  EVENT_LOG_MAX_LEN: number;
  /** Accept http:// callbackUrls (else https only). */
  ALLOW_HTTP_CALLBACKS: boolean;
  /** Accept callbackUrls that resolve to private, loopback or link-local addresses (tests, internal receivers). */
  CALLBACK_ALLOW_PRIVATE: boolean;
  /** Delivery attempts per webhook, the first included. */
  WEBHOOK_ATTEMPTS: number;
  /** First webhook retry delay, ms (doubles per retry). */
  WEBHOOK_BACKOFF_MS: number;
  /** Per-attempt webhook timeout, ms. */
  WEBHOOK_TIMEOUT_MS: number;
}

const schema = {
  type: 'object',
  required: [],
  properties: {
    PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 8000 },
    HOST: { type: 'string', minLength: 1, default: '0.0.0.0' },
    REDIS_URL: { type: 'string', pattern: '^rediss?://', default: 'redis://127.0.0.1:6379' },
    QUEUE_PREFIX: { type: 'string', pattern: '^[A-Za-z0-9_.{}-]{1,64}$', default: 'bull' },
    STORAGE_BACKEND: { type: 'string', enum: ['local', 'firebase'], default: 'local' },
    STORAGE_DIR: { type: 'string', minLength: 1, default: './artifacts' },
    WORK_DIR: { type: 'string', default: '' },
    FIREBASE_BUCKET: { type: 'string', default: '' },
    API_KEYS: { type: 'string', default: '' },
    TFJS_BACKEND: { type: 'string', enum: ['auto', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'], default: 'auto' },
    LOG_LEVEL: {
      type: 'string',
      enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      default: 'info',
    },
    WORKER_CONCURRENCY: { type: 'integer', minimum: 1, maximum: 64, default: 1 },
    JOB_TIMEOUT_SECONDS: { type: 'integer', minimum: 0, default: 86400 },
    BODY_LIMIT_BYTES: { type: 'integer', minimum: 1024, default: 5 * 1024 * 1024 },
    RATE_LIMIT_MAX: { type: 'integer', minimum: 0, default: 600 },
    RATE_LIMIT_WINDOW: { type: 'string', minLength: 1, default: '1 minute' },
    JOB_RETENTION_SECONDS: { type: 'integer', minimum: 60, default: 7 * 24 * 3600 },
    WORKER_BACKEND_CHECK: { type: 'boolean', default: true },
    WORKER_LOCK_DURATION_MS: { type: 'integer', minimum: 1000, default: 30000 },
    WORKER_STALLED_INTERVAL_MS: { type: 'integer', minimum: 500, default: 30000 },
    WORKER_METRICS_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 9464 },
    SHUTDOWN_GRACE_MS: { type: 'integer', minimum: 0, default: 10000 },
    WORKER_SHUTDOWN_TIMEOUT_MS: { type: 'integer', minimum: 0, default: 60000 },
    SIGNING_SECRETS: { type: 'string', default: '' },
    MAX_DATASET_BYTES: { type: 'integer', minimum: 1024, default: 512 * 1024 * 1024 },
    EVENT_LOG_MAX_LEN: { type: 'integer', minimum: 100, default: 10000 },
    ALLOW_HTTP_CALLBACKS: { type: 'boolean', default: false },
    CALLBACK_ALLOW_PRIVATE: { type: 'boolean', default: false },
    WEBHOOK_ATTEMPTS: { type: 'integer', minimum: 1, maximum: 20, default: 8 },
    WEBHOOK_BACKOFF_MS: { type: 'integer', minimum: 10, default: 2000 },
    WEBHOOK_TIMEOUT_MS: { type: 'integer', minimum: 100, default: 10000 },
  },
} as const;

/** A bad environment value; the message names the variable and what it must be. */
export class EnvError extends Error {
  readonly code = 'INVALID_ENV';
  constructor(message: string) {
    super(message);
    this.name = 'EnvError';
  }
}

/**
 * Validate and default the service environment.
 * @param source variables to read (default `process.env`); unknown keys are ignored.
 * @throws EnvError naming each offending variable (e.g. `PORT must be integer`), or
 *   FIREBASE_BUCKET when STORAGE_BACKEND=firebase has no bucket.
 */
export function loadEnv(source: Record<string, string | undefined> = process.env): ServiceEnv {
  // Empty strings mean "unset" (docker-compose passes `VAR=` for blank .env entries).
  const data: Record<string, string> = {};
  for (const [k, v] of Object.entries(source)) if (v !== undefined && v !== '' && k in schema.properties) data[k] = v;
  let env: ServiceEnv;
  try {
    env = envSchema<ServiceEnv>({ schema, data, env: false, dotenv: false });
  } catch (err) {
    const msg = (err as Error).message.replace(/env\//g, '').replace(/^env /, '');
    throw new EnvError(`invalid environment: ${msg}`);
  }
  if (env.STORAGE_BACKEND === 'firebase' && !env.FIREBASE_BUCKET) {
    throw new EnvError('invalid environment: FIREBASE_BUCKET must be set when STORAGE_BACKEND=firebase');
  }
  if (!env.WORK_DIR) env.WORK_DIR = `${env.STORAGE_DIR.replace(/\/+$/, '')}/.work`;
  return env;
}

/** The bearer keys of API_KEYS (trimmed, empties dropped). */
export function apiKeys(env: Pick<ServiceEnv, 'API_KEYS'>): string[] {
  return env.API_KEYS.split(',')
    .map((k) => k.trim())
    .filter((k) => k.length > 0);
}

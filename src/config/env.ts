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
  /**
   * Tenant bearer keys, comma-separated, each optionally scoped to communities: `k1:acme,k2:globex|initech,ops:*`.
   * A bare key (no `:`) may use every community (logged as a warning at start-up). When non-empty every route
   * but /health and /docs needs a key or a signature (see parseApiKeys).
   */
  API_KEYS: string;
  /** Admin bearer keys (comma-separated) for Bull Board at /admin/queues; empty = the board is off (404). */
  ADMIN_API_KEYS: string;
  /** Bull Board in its read-only mode (no add, retry, remove, promote); `false` allows those actions. */
  BULL_BOARD_READONLY: boolean;
  /** Standard Webhooks secrets per community, `acme:whsec_...,globex:whsec_...`: verify signed requests to the API and sign the job callbacks (see parseSigningSecrets). */
  SIGNING_SECRETS: string;
  /** Failed authentications per client IP per AUTH_FAILURE_WINDOW_SECONDS before 429 (0 = no limit). */
  AUTH_FAILURE_LIMIT: number;
  /** Window of AUTH_FAILURE_LIMIT, seconds. */
  AUTH_FAILURE_WINDOW_SECONDS: number;
  /** Waiting + active jobs one community may have; a trigger above it is 429 with Retry-After (0 = no cap). */
  MAX_JOBS_PER_COMMUNITY: number;
  /** Waiting + active jobs of the whole queue; a trigger above it is 429 with Retry-After (0 = no cap). */
  MAX_QUEUED_JOBS: number;
  /** Compute budget of one job: rows x epochs x tokens summed over SFT and DPO (400 above it; 0 = none). */
  MAX_TRAIN_TOKENS: number;
  /** Service jobs checkpoint every this many seconds (and at each stage end) unless the request sets
   *  checkpoint_every_seconds, so a killed worker's job resumes where it was (0 = only what the request asks). */
  JOB_CHECKPOINT_EVERY_SECONDS: number;
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
  /** Port of the worker's own Prometheus endpoint `/metrics` (and `/health`) (0 = none). */
  WORKER_METRICS_PORT: number;
  /** Listen address of the worker's metrics endpoint (default loopback; 0.0.0.0 for a scraper elsewhere). */
  WORKER_METRICS_HOST: string;
  /** Time the API waits for in-flight requests on SIGTERM, ms. */
  SHUTDOWN_GRACE_MS: number;
  /** Time the worker lets a running job finish on SIGTERM before aborting it, ms. */
  WORKER_SHUTDOWN_TIMEOUT_MS: number;
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
    ADMIN_API_KEYS: { type: 'string', default: '' },
    BULL_BOARD_READONLY: { type: 'boolean', default: true },
    SIGNING_SECRETS: { type: 'string', default: '' },
    AUTH_FAILURE_LIMIT: { type: 'integer', minimum: 0, default: 20 },
    AUTH_FAILURE_WINDOW_SECONDS: { type: 'integer', minimum: 1, default: 60 },
    MAX_JOBS_PER_COMMUNITY: { type: 'integer', minimum: 0, default: 10 },
    MAX_QUEUED_JOBS: { type: 'integer', minimum: 0, default: 1000 },
    MAX_TRAIN_TOKENS: { type: 'integer', minimum: 0, default: 1_000_000_000 },
    JOB_CHECKPOINT_EVERY_SECONDS: { type: 'integer', minimum: 0, maximum: 604800, default: 600 },
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
    WORKER_METRICS_HOST: { type: 'string', minLength: 1, default: '127.0.0.1' },
    SHUTDOWN_GRACE_MS: { type: 'integer', minimum: 0, default: 10000 },
    WORKER_SHUTDOWN_TIMEOUT_MS: { type: 'integer', minimum: 0, default: 60000 },
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
  // parse once here so a bad key list or secret stops the process at start-up, naming the variable
  parseApiKeys(env.API_KEYS);
  parseAdminKeys(env.ADMIN_API_KEYS);
  parseSigningSecrets(env.SIGNING_SECRETS);
  if (!env.WORK_DIR) env.WORK_DIR = `${env.STORAGE_DIR.replace(/\/+$/, '')}/.work`;
  return env;
}

/** The bearer keys of API_KEYS (trimmed, empties dropped, scopes removed). */
export function apiKeys(env: Pick<ServiceEnv, 'API_KEYS'>): string[] {
  return [...parseApiKeys(env.API_KEYS).keys()];
}

/** Which communities a credential may use: every one (`'*'`) or a fixed set. */
export type CommunityScope = '*' | ReadonlySet<string>;

/** One tenant key of API_KEYS. */
export interface TenantKey {
  /** The key as sent after `Bearer ` (normalised: see normaliseCredential in src/api/auth). */
  key: string;
  communities: CommunityScope;
  /** true for a key written without `:communities` (all communities, a start-up warning). */
  bare: boolean;
}

const COMMUNITY = /^[A-Za-z0-9_-]{1,64}$/;
/** A key: visible ASCII without `,` `:` `|` or space (they are the list syntax). */
const KEY_TEXT = /^[\x21-\x7e]+$/;

/**
 * Parse `API_KEYS="k1:acme,k2:globex|initech,ops:*,legacy"`: comma-separated entries `key[:scope]`, where scope
 * is `*` or community ids joined by `|`. Whitespace around entries is ignored.
 * @returns key → TenantKey (insertion order kept).
 * @throws EnvError naming API_KEYS and the entry (never the key text) for an empty key, a key with spaces,
 *   an invalid community id, a duplicate key.
 */
export function parseApiKeys(raw: string): Map<string, TenantKey> {
  const out = new Map<string, TenantKey>();
  raw.split(',').forEach((entry, i) => {
    const e = entry.trim();
    if (e === '') return;
    const colon = e.indexOf(':');
    const key = (colon < 0 ? e : e.slice(0, colon)).trim();
    const scope = colon < 0 ? null : e.slice(colon + 1).trim();
    const where = `API_KEYS entry ${i + 1}`;
    if (!KEY_TEXT.test(key) || key.includes('|'))
      throw new EnvError(`invalid environment: ${where}: the key must be visible ASCII without spaces, "|", ":" or ","`);
    if (out.has(key)) throw new EnvError(`invalid environment: ${where}: the same key appears twice`);
    let communities: CommunityScope;
    if (scope === null || scope === '*') communities = '*';
    else {
      const ids = scope.split('|').map((c) => c.trim());
      for (const c of ids) {
        if (!COMMUNITY.test(c)) throw new EnvError(`invalid environment: ${where}: community "${c}" must be 1-64 of A-Z a-z 0-9 _ - (or * for all)`);
      }
      communities = new Set(ids);
    }
    out.set(key, { key, communities, bare: scope === null });
  });
  return out;
}

/** The admin keys of ADMIN_API_KEYS (comma-separated). @throws EnvError for a key with spaces or list syntax. */
export function parseAdminKeys(raw: string): string[] {
  const keys = raw
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '');
  keys.forEach((k, i) => {
    if (!KEY_TEXT.test(k)) throw new EnvError(`invalid environment: ADMIN_API_KEYS entry ${i + 1}: the key must be visible ASCII without spaces or ","`);
  });
  return keys;
}

/**
 * Parse `SIGNING_SECRETS="acme:whsec_...,globex:whsec_..."`: one Standard Webhooks secret (`whsec_` + base64)
 * per community.
 * @returns communityId → secret.
 * @throws EnvError naming SIGNING_SECRETS and the community for a bad community id, a missing or non-base64
 *   secret, or a community listed twice.
 */
export function parseSigningSecrets(raw: string): Map<string, string> {
  const out = new Map<string, string>();
  raw.split(',').forEach((entry, i) => {
    const e = entry.trim();
    if (e === '') return;
    const colon = e.indexOf(':');
    const community = colon < 0 ? '' : e.slice(0, colon).trim();
    const secret = colon < 0 ? '' : e.slice(colon + 1).trim();
    const where = `SIGNING_SECRETS entry ${i + 1}`;
    if (!COMMUNITY.test(community))
      throw new EnvError(`invalid environment: ${where}: write community:whsec_<base64> with a community id of 1-64 of A-Z a-z 0-9 _ -`);
    const b64 = secret.startsWith('whsec_') ? secret.slice(6) : secret;
    if (b64.length < 16 || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) {
      throw new EnvError(`invalid environment: ${where} (${community}): the secret must be whsec_ followed by base64 (at least 12 bytes)`);
    }
    if (out.has(community)) throw new EnvError(`invalid environment: ${where}: community ${community} has two secrets`);
    out.set(community, secret);
  });
  return out;
}

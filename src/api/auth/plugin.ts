/**
 * The authentication of every route (one onRequest hook + one preValidation hook on the root instance):
 *
 * - `/health`, `/docs`, `/ui` (the static job page): public.
 * - `/admin/queues/*` (Bull Board): an ADMIN_API_KEYS key only (tenant keys are refused); without admin keys
 *   the board is not mounted and the path is 404.
 * - everything else, when API_KEYS or SIGNING_SECRETS is set: `Authorization: Bearer <tenant key>` (normalised,
 *   src/api/auth/credentials.ts) or a Standard Webhooks signature (src/api/auth/signatures.ts, checked after
 *   the body is read, the webhook-id recorded in Redis so a replay is refused). With neither set the API is
 *   open (a start-up warning) and the caller may use every community.
 *
 * Failed authentications are counted per client IP; past AUTH_FAILURE_LIMIT in AUTH_FAILURE_WINDOW_SECONDS the
 * address gets 429 with Retry-After before any key is looked at.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { parseAdminKeys, parseApiKeys, parseSigningSecrets, type ServiceEnv } from '../../config/env.js';
import { toErrorBody, ApiError } from '../errors.js';
import { fingerprint, normaliseBearer } from './credentials.js';
import { hasSignatureHeaders, SIGNATURE_TOLERANCE_SECONDS, SignatureError, SignatureVerifier } from './signatures.js';
import type { Principal } from './tenant.js';

/** 401 with a stable code and a message naming the header or the fix. */
export class UnauthorizedError extends ApiError {
  constructor(code: string, message: string) {
    super(401, code, message);
  }
}

/** 429 for an address with too many failed authentications. */
export class AuthFailureLimitError extends ApiError {
  constructor(
    readonly retryAfterSeconds: number,
    limit: number,
  ) {
    super(429, 'RATE_LIMITED', `more than ${limit} failed authentications from this address; retry after ${retryAfterSeconds} s (AUTH_FAILURE_LIMIT)`);
  }
}

// /ui is a static page (its API calls carry the key)
const PUBLIC_PREFIXES = ['/health', '/docs', '/ui'];
export const ADMIN_PREFIX = '/admin/queues';

function under(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(`${prefix}/`);
}

/** Whether a path needs no credential. */
export function isPublicPath(url: string): boolean {
  const path = url.split('?')[0]!;
  return PUBLIC_PREFIXES.some((p) => under(path, p));
}

/** Fixed-window failure counts per client address, in memory (bounded: the oldest windows are dropped). */
class FailureCounter {
  private readonly counts = new Map<string, { n: number; resetAt: number }>();
  constructor(
    readonly limit: number,
    private readonly windowMs: number,
  ) {}

  /** Seconds until `ip` may try again, or 0 when it is under the limit. */
  blockedFor(ip: string, now = Date.now()): number {
    if (this.limit <= 0) return 0;
    const c = this.counts.get(ip);
    if (!c || c.resetAt <= now) return 0;
    return c.n >= this.limit ? Math.ceil((c.resetAt - now) / 1000) : 0;
  }

  record(ip: string, now = Date.now()): void {
    if (this.limit <= 0) return;
    const c = this.counts.get(ip);
    if (!c || c.resetAt <= now) {
      if (this.counts.size >= 50_000) {
        for (const [k, v] of this.counts) if (v.resetAt <= now || this.counts.size >= 50_000) this.counts.delete(k);
      }
      this.counts.set(ip, { n: 1, resetAt: now + this.windowMs });
    } else c.n++;
  }
}

function sha(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

export interface AuthOptions {
  env: ServiceEnv;
  /** Redis for the replay check of webhook-ids (the queue's producer connection). */
  redis: Redis;
  /** Key prefix (QUEUE_PREFIX) of the replay records. */
  prefix: string;
}

export interface AuthState {
  /** Whether tenant routes need a credential. */
  required: boolean;
  /** Whether Bull Board is mounted (ADMIN_API_KEYS set). */
  adminEnabled: boolean;
  /** Keys written without a scope (all communities). */
  bareKeys: number;
}

/**
 * Install the auth hooks on `app` (the root instance, before any route).
 * @returns what was configured (the caller logs warnings about open or unscoped access).
 */
export function installAuth(app: FastifyInstance, opts: AuthOptions): AuthState {
  const { env } = opts;
  const tenants = new Map<string, Principal>();
  let bareKeys = 0;
  for (const t of parseApiKeys(env.API_KEYS).values()) {
    if (t.bare) bareKeys++;
    // looked up by the key's sha256, so the lookup's timing does not depend on how much of a key matches
    tenants.set(sha(t.key).toString('hex'), { kind: 'key', id: `key:${fingerprint(t.key)}`, communities: t.communities });
  }
  const adminKeys = parseAdminKeys(env.ADMIN_API_KEYS).map(sha);
  const verifier = new SignatureVerifier(parseSigningSecrets(env.SIGNING_SECRETS));
  const required = tenants.size > 0 || verifier.size > 0;
  const failures = new FailureCounter(env.AUTH_FAILURE_LIMIT, env.AUTH_FAILURE_WINDOW_SECONDS * 1000);
  const bodyLimit = env.BODY_LIMIT_BYTES;

  const refuse = (request: FastifyRequest, reply: FastifyReply, err: ApiError): FastifyReply => {
    if (err.statusCode === 401) {
      failures.record(request.ip);
      reply.header('www-authenticate', 'Bearer');
    }
    if (err instanceof AuthFailureLimitError) reply.header('retry-after', String(err.retryAfterSeconds));
    request.log.info({ code: err.code, statusCode: err.statusCode }, err.message);
    // answered here (not thrown) so encapsulated plugins (Bull Board) give the same body
    return reply.code(err.statusCode).send(toErrorBody(err, bodyLimit));
  };

  // Keep the raw JSON text: a signature covers the exact bytes sent. Fastify's own parser does the parsing
  // (secure-json-parse: __proto__ and constructor keys are errors).
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (hasSignatureHeaders(request.headers)) request.rawBody = body as string;
    parseJson(request, body as string, done);
  });

  app.addHook('onRequest', async (request, reply) => {
    const path = request.url.split('?')[0]!;
    if (PUBLIC_PREFIXES.some((p) => under(path, p))) return;
    const blocked = failures.blockedFor(request.ip);
    if (under(path, ADMIN_PREFIX)) {
      if (adminKeys.length === 0) return; // not mounted: the 404 handler answers
      if (blocked > 0) return refuse(request, reply, new AuthFailureLimitError(blocked, failures.limit));
      const key = normaliseBearer(request.headers.authorization);
      const h = key === null ? null : sha(key);
      if (h && adminKeys.some((k) => timingSafeEqual(k, h))) {
        request.principal = { kind: 'admin', id: 'admin', communities: '*' };
        return;
      }
      return refuse(request, reply, new UnauthorizedError('UNAUTHORIZED', 'Bull Board needs an admin key: send Authorization: Bearer <key> (ADMIN_API_KEYS)'));
    }
    if (!required) {
      request.principal = { kind: 'open', id: 'open', communities: '*' };
      return;
    }
    if (blocked > 0) return refuse(request, reply, new AuthFailureLimitError(blocked, failures.limit));
    if (request.headers.authorization !== undefined) {
      const key = normaliseBearer(request.headers.authorization);
      const p = key === null ? undefined : tenants.get(sha(key).toString('hex'));
      if (p) {
        request.principal = p;
        return;
      }
      return refuse(request, reply, new UnauthorizedError('UNAUTHORIZED', 'missing or invalid API key: send Authorization: Bearer <key> (API_KEYS)'));
    }
    if (verifier.size > 0 && hasSignatureHeaders(request.headers)) return; // checked once the body is read
    const how =
      verifier.size > 0
        ? 'Authorization: Bearer <key> or the headers webhook-id, webhook-timestamp, webhook-signature'
        : 'Authorization: Bearer <key> (API_KEYS)';
    return refuse(request, reply, new UnauthorizedError('UNAUTHORIZED', `missing credentials: send ${how}`));
  });

  app.addHook('preValidation', async (request, reply) => {
    if (request.principal || !required || verifier.size === 0 || !hasSignatureHeaders(request.headers)) return;
    const path = request.url.split('?')[0]!;
    if (PUBLIC_PREFIXES.some((p) => under(path, p)) || under(path, ADMIN_PREFIX)) return;
    const body = request.body as { communityId?: unknown } | undefined;
    const preferred = body && typeof body === 'object' && typeof body.communityId === 'string' ? body.communityId : undefined;
    let signed: { community: string; webhookId: string };
    try {
      signed = verifier.verify(request.headers, request.rawBody ?? '', preferred);
    } catch (err) {
      if (err instanceof SignatureError) return refuse(request, reply, new UnauthorizedError(err.code, err.message));
      throw err;
    }
    // a webhook-id is accepted once within twice the tolerance (after that the timestamp check refuses it)
    const replayKey = `${opts.prefix}:dpo-webhook-id:${signed.community}:${fingerprint(signed.webhookId)}`;
    let fresh: string | null;
    try {
      fresh = await opts.redis.set(replayKey, '1', 'EX', 2 * SIGNATURE_TOLERANCE_SECONDS, 'NX');
    } catch {
      throw new ApiError(503, 'REDIS_UNAVAILABLE', 'the replay check (Redis) is unreachable; retry later');
    }
    if (fresh !== 'OK') {
      return refuse(
        request,
        reply,
        new UnauthorizedError(
          'REPLAYED_WEBHOOK_ID',
          `webhook-id ${JSON.stringify(signed.webhookId.slice(0, 64))} was already used; send a new webhook-id per request`,
        ),
      );
    }
    request.principal = { kind: 'signature', id: `sig:${signed.community}`, communities: new Set([signed.community]) };
  });

  return { required, adminEnabled: adminKeys.length > 0, bareKeys };
}

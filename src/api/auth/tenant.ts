/**
 * Tenants: who is calling (a Principal set by the auth hook, src/api/auth/plugin.ts) and which communities it
 * may use. Every job route asks `canAccess` / `assertCanAccess` before it reads, lists, cancels or creates a
 * community's job; a job of another community answers the same 404 as a job that does not exist, so a key
 * cannot learn which job ids exist.
 */
import type { FastifyRequest } from 'fastify';
import type { CommunityScope } from '../../config/env.js';
import { NotFoundError } from '../errors.js';

/** The authenticated caller of a request. */
export interface Principal {
  /** `key`: a tenant bearer key; `signature`: a Standard Webhooks signed request; `open`: no auth configured;
   *  `admin`: an ADMIN_API_KEYS key (Bull Board only). */
  kind: 'key' | 'signature' | 'open' | 'admin';
  /** Stable id for scoping (idempotency keys, rate limits): `key:<fingerprint>`, `sig:<community>`, `open`, `admin`. */
  id: string;
  /** Communities it may trigger, read, list and cancel jobs of. */
  communities: CommunityScope;
}

const NOBODY: Principal = { kind: 'open', id: 'none', communities: new Set() };

/** The request's principal (set by the auth hook; a request it never saw may use nothing). */
export function principalOf(request: FastifyRequest): Principal {
  return request.principal ?? NOBODY;
}

/** Whether the request's caller may use `communityId`'s jobs. Own-property lookups only. */
export function canAccess(request: FastifyRequest, communityId: string): boolean {
  const c = principalOf(request).communities;
  return c === '*' || (typeof communityId === 'string' && c.has(communityId));
}

/**
 * Throw the 404 of a missing resource unless the caller may use `communityId`.
 * @param what the resource as the 404 names it, e.g. `job ft-...` (the same text as for a missing one)
 * @throws NotFoundError `${what} does not exist (or has expired)`
 */
export function assertCanAccess(request: FastifyRequest, communityId: string | null | undefined, what: string): void {
  if (communityId == null || !canAccess(request, communityId)) throw new NotFoundError(`${what} does not exist (or has expired)`);
}

/** The communities a list route may show: `'*'` or the caller's ids (sorted). */
export function accessibleCommunities(request: FastifyRequest): '*' | string[] {
  const c = principalOf(request).communities;
  return c === '*' ? '*' : [...c].sort();
}

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
    /** The request body as received (JSON bodies only), for signature verification. */
    rawBody?: string;
  }
}

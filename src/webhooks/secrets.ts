/**
 * The per-community Standard Webhooks secrets that sign outgoing callbacks: the same SIGNING_SECRETS
 * (`acme:whsec_...,globex:whsec_...`) a community uses to sign its requests, so one secret per community
 * authenticates both directions.
 */
import type { ServiceEnv } from '../config/env.js';

/** communityId → `whsec_...` secret, from SIGNING_SECRETS (empty when unset). */
export function webhookSecrets(env: Pick<ServiceEnv, 'SIGNING_SECRETS'>): Map<string, string> {
  const out = new Map<string, string>();
  for (const entry of env.SIGNING_SECRETS.split(',')) {
    const e = entry.trim();
    const colon = e.indexOf(':');
    if (colon > 0) out.set(e.slice(0, colon).trim(), e.slice(colon + 1).trim());
  }
  return out;
}

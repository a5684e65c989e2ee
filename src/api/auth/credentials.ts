/**
 * Credential normalisation: one canonical form of a bearer key before anything looks it up, fingerprints it or
 * keys a rate limit with it (`Bearer  k1`, `bearer k1 ` and `Bearer k1` are the same credential).
 */
import { createHash } from 'node:crypto';

const BEARER = /^\s*bearer\s+([\x21-\x7e]+)\s*$/i;

/**
 * The key of an `Authorization: Bearer <key>` header: the scheme case-insensitively, any run of spaces or tabs
 * around and before the key ignored.
 * @returns the key, or null when the header is absent, another scheme, or holds more than one token.
 */
export function normaliseBearer(header: string | string[] | undefined): string | null {
  if (typeof header !== 'string') return null;
  const m = BEARER.exec(header);
  return m ? m[1]! : null;
}

/** A short stable fingerprint of a credential (sha256, 16 hex) for Redis keys and logs: never the key itself. */
export function fingerprint(secret: string): string {
  return createHash('sha256').update(secret).digest('hex').slice(0, 16);
}

/**
 * Signed requests in the Standard Webhooks scheme (standardwebhooks.com; npm `standardwebhooks`): the caller
 * sends `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
 * "<id>.<timestamp>.<raw body>">`, space-separated for several), signed with its community's secret
 * (SIGNING_SECRETS). The timestamp must be within 5 minutes of the server clock (the library's tolerance); a
 * webhook-id is accepted once (the replay check is the auth hook's, in Redis).
 */
import { Webhook } from 'standardwebhooks';

/** Why a signed request was refused; `code` is stable, `message` names the header or the fix. */
export class SignatureError extends Error {
  constructor(
    readonly code: 'MISSING_SIGNATURE_HEADER' | 'INVALID_SIGNATURE_TIMESTAMP' | 'EXPIRED_SIGNATURE' | 'INVALID_SIGNATURE' | 'REPLAYED_WEBHOOK_ID',
    message: string,
  ) {
    super(message);
    this.name = 'SignatureError';
  }
}

/** Tolerance of webhook-timestamp around the server clock, seconds (fixed by the standardwebhooks library). */
export const SIGNATURE_TOLERANCE_SECONDS = 5 * 60;

export const SIGNATURE_HEADERS = ['webhook-id', 'webhook-timestamp', 'webhook-signature'] as const;

/** Whether a request carries any of the three signature headers. */
export function hasSignatureHeaders(headers: Record<string, unknown>): boolean {
  return SIGNATURE_HEADERS.some((h) => headers[h] !== undefined);
}

/** Verifiers per community, built once from SIGNING_SECRETS. */
export class SignatureVerifier {
  private readonly hooks = new Map<string, Webhook>();

  /** @param secrets communityId → `whsec_...` (src/config/env.ts parseSigningSecrets). */
  constructor(secrets: Map<string, string>) {
    for (const [community, secret] of secrets) this.hooks.set(community, new Webhook(secret));
  }

  get size(): number {
    return this.hooks.size;
  }

  /**
   * Check the headers and the signature of `rawBody`.
   * @param preferred the community the body names (tried first; others are tried after it)
   * @returns the community whose secret signed the request, and the webhook-id.
   * @throws SignatureError MISSING_SIGNATURE_HEADER naming the header, INVALID_SIGNATURE_TIMESTAMP (not unix
   *   seconds), EXPIRED_SIGNATURE (more than 5 minutes off, saying which way), INVALID_SIGNATURE (no secret
   *   verifies it).
   */
  verify(headers: Record<string, unknown>, rawBody: string, preferred?: string): { community: string; webhookId: string } {
    for (const h of SIGNATURE_HEADERS) {
      const v = headers[h];
      if (typeof v !== 'string' || v.trim() === '') {
        throw new SignatureError(
          'MISSING_SIGNATURE_HEADER',
          `signed request without the ${h} header: send webhook-id, webhook-timestamp and webhook-signature`,
        );
      }
    }
    const id = headers['webhook-id'] as string;
    const ts = headers['webhook-timestamp'] as string;
    if (!/^\d{1,12}$/.test(ts))
      throw new SignatureError('INVALID_SIGNATURE_TIMESTAMP', `webhook-timestamp must be unix seconds, got ${JSON.stringify(ts.slice(0, 32))}`);
    const skew = Math.floor(Date.now() / 1000) - Number(ts);
    if (Math.abs(skew) > SIGNATURE_TOLERANCE_SECONDS) {
      throw new SignatureError(
        'EXPIRED_SIGNATURE',
        `webhook-timestamp is ${Math.abs(skew)} s ${skew > 0 ? 'in the past' : 'in the future'}; it must be within ${SIGNATURE_TOLERANCE_SECONDS} s of the server clock`,
      );
    }
    const order = [...this.hooks.keys()].sort((a, b) => Number(b === preferred) - Number(a === preferred));
    const h = { 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': headers['webhook-signature'] as string };
    for (const community of order) {
      try {
        this.hooks.get(community)!.verify(rawBody, h, { jsonParse: false });
        return { community, webhookId: id };
      } catch {
        // try the next secret
      }
    }
    throw new SignatureError(
      'INVALID_SIGNATURE',
      'webhook-signature does not match: sign "<webhook-id>.<webhook-timestamp>.<raw body>" with HMAC-SHA256 and the community secret (v1,<base64>)',
    );
  }
}

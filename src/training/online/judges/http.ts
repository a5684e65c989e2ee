/**
 * The HTTP judge: one POST per training step with every prompt and its completions,
 *   request  `{items: [{prompt, completions: [string, ...]}, ...]}` (application/json)
 *   response `{scores: [[number, ...], ...]}`, one finite number per completion, in order,
 * signed as the Standard Webhooks specification signs a webhook (headers `webhook-id`, `webhook-timestamp`,
 * `webhook-signature`, HMAC-SHA256 of `id.timestamp.body` with the `whsec_` secret read from the environment
 * variable `secret_env`, default DPO_JUDGE_SECRET; unsigned when that variable is unset or `secret_env` is
 * null). Each attempt times out after `timeout_ms` (AbortSignal.timeout); network errors, timeouts, 429 and
 * 5xx answers are retried `retries` times with exponential backoff (p-retry); other answers and a response
 * that does not match the shape fail at once.
 */
import { randomUUID } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import pRetry, { AbortError } from 'p-retry';
import { Webhook } from 'standardwebhooks';
import type { HttpJudgeSettings } from '../schema.js';
import { JudgeError, type Judge, type JudgeItem } from './types.js';

const ResponseSchema = Type.Object({ scores: Type.Array(Type.Array(Type.Number())) });

/** The default environment variable of the signing secret. */
export const DEFAULT_JUDGE_SECRET_ENV = 'DPO_JUDGE_SECRET';

/** Thrown inside an attempt for an answer worth retrying. */
class RetryableError extends Error {}

/**
 * Check a judge's answer against the request.
 * @returns the scores
 * @throws JudgeError INVALID_JUDGE_RESPONSE naming what is wrong
 */
export function validateJudgeResponse(body: unknown, items: JudgeItem[], key = 'online_dpo.judge'): number[][] {
  if (!Value.Check(ResponseSchema, body)) {
    const e = [...Value.Errors(ResponseSchema, body)][0];
    throw new JudgeError('INVALID_JUDGE_RESPONSE', key, `the judge's response must be {scores: number[][]}; at ${e?.path || '/'}: ${e?.message ?? 'invalid'}`);
  }
  const { scores } = body;
  if (scores.length !== items.length) {
    throw new JudgeError('INVALID_JUDGE_RESPONSE', key, `the judge returned ${scores.length} score lists for ${items.length} prompts`);
  }
  scores.forEach((row, i) => {
    const want = items[i]!.completions.length;
    if (row.length !== want) throw new JudgeError('INVALID_JUDGE_RESPONSE', key, `scores[${i}] has ${row.length} scores for ${want} completions`);
    row.forEach((v, j) => {
      if (!Number.isFinite(v)) throw new JudgeError('INVALID_JUDGE_RESPONSE', key, `scores[${i}][${j}] is not a finite number`);
    });
  });
  return scores;
}

/**
 * The HTTP judge of `settings` (see the module doc).
 * @param env where the secret is looked up (default process.env)
 * @throws JudgeError INVALID_JUDGE_CONFIG for a secret that is not a Standard Webhooks secret; from `score`:
 *   JUDGE_REQUEST_FAILED (after the retries) or INVALID_JUDGE_RESPONSE
 */
export function createHttpJudge(settings: HttpJudgeSettings, env: NodeJS.ProcessEnv = process.env): Judge {
  const timeoutMs = settings.timeout_ms ?? 10_000;
  const retries = settings.retries ?? 2;
  const secretEnv = settings.secret_env === undefined ? DEFAULT_JUDGE_SECRET_ENV : settings.secret_env;
  const secret = secretEnv ? env[secretEnv] : undefined;
  let signer: Webhook | null = null;
  if (secret) {
    try {
      signer = new Webhook(secret);
    } catch (e) {
      throw new JudgeError(
        'INVALID_JUDGE_CONFIG',
        'online_dpo.judge.secret_env',
        `${secretEnv} does not hold a Standard Webhooks secret (whsec_<base64>): ${(e as Error).message}`,
      );
    }
  }
  const key = 'online_dpo.judge.url';

  const attempt = async (body: string, items: JudgeItem[]): Promise<number[][]> => {
    const id = `msg_${randomUUID()}`;
    const now = new Date();
    const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'application/json' };
    if (signer) {
      headers['webhook-id'] = id;
      headers['webhook-timestamp'] = String(Math.floor(now.getTime() / 1000));
      headers['webhook-signature'] = signer.sign(id, now, body);
    }
    let res: Response;
    try {
      res = await fetch(settings.url, { method: 'POST', headers, body, signal: AbortSignal.timeout(timeoutMs) });
    } catch (e) {
      const timedOut = (e as Error).name === 'TimeoutError';
      throw new RetryableError(timedOut ? `no answer within ${timeoutMs} ms` : `request failed: ${(e as Error).message}`);
    }
    const text = await res.text().catch(() => '');
    if (res.status === 429 || res.status >= 500) throw new RetryableError(`answered ${res.status}`);
    if (!res.ok) throw new AbortError(new JudgeError('JUDGE_REQUEST_FAILED', key, `the judge answered ${res.status}: ${text.slice(0, 200)}`));
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new AbortError(new JudgeError('INVALID_JUDGE_RESPONSE', key, `the judge's answer is not JSON: ${text.slice(0, 200)}`));
    }
    try {
      return validateJudgeResponse(parsed, items, key);
    } catch (e) {
      throw new AbortError(e as Error);
    }
  };

  return {
    type: 'http',
    async score(items: JudgeItem[]): Promise<number[][]> {
      const body = JSON.stringify({ items });
      try {
        return await pRetry(() => attempt(body, items), { retries, minTimeout: 200, factor: 2, randomize: false });
      } catch (e) {
        if (e instanceof JudgeError) throw e;
        throw new JudgeError('JUDGE_REQUEST_FAILED', key, `${settings.url} ${(e as Error).message} (after ${retries + 1} attempts)`, { cause: e });
      }
    },
    dispose: () => {},
  };
}

/**
 * Signed requests (Standard Webhooks, npm standardwebhooks) against the real Redis with fastify.inject: a valid
 * signature authenticates as its community only, an expired or future timestamp, a replayed webhook-id, a bad
 * signature, a body changed after signing and a missing header are each a 401 saying which and why; a bearer key
 * still works beside signatures.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Webhook } from 'standardwebhooks';
import { buildApp } from '../../src/api/app.js';
import { dropPrefix, testEnv, toyRows, uniquePrefix } from './api-helpers.js';

const prefix = uniquePrefix('sig');
const dir = mkdtempSync(join(tmpdir(), 'dpo-sig-'));
const ACME = `whsec_${randomBytes(24).toString('base64')}`;
const GLOBEX = `whsec_${randomBytes(24).toString('base64')}`;
let app: FastifyInstance;

function signed(secret: string, body: string, opts: { id?: string; ts?: number; tamper?: (b: string) => string; drop?: string } = {}) {
  const id = opts.id ?? `msg_${randomUUID()}`;
  const ts = opts.ts ?? Math.floor(Date.now() / 1000);
  const signature = new Webhook(secret).sign(id, new Date(ts * 1000), body);
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'webhook-id': id,
    'webhook-timestamp': String(ts),
    'webhook-signature': signature,
  };
  if (opts.drop) delete headers[opts.drop];
  return { headers, payload: opts.tamper ? opts.tamper(body) : body, id };
}

const body = (communityId: string, tag: string) => JSON.stringify({ communityId, dataset: toyRows(2, tag) });

before(async () => {
  app = await buildApp({
    env: testEnv(prefix, { API_KEYS: 'k1:acme', SIGNING_SECRETS: `acme:${ACME},globex:${GLOBEX}`, STORAGE_DIR: dir, AUTH_FAILURE_LIMIT: '1000' }),
  });
  await app.ready();
});

after(async () => {
  await app.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

describe('signed requests', () => {
  test('a valid signature queues a job for its community, and only that community can read it', async () => {
    const req = signed(ACME, body('acme', 'valid'));
    const res = await app.inject({ method: 'POST', url: '/trigger-finetune', ...req });
    assert.equal(res.statusCode, 202, res.body);
    const { jobId } = res.json();
    // a signed GET (empty body) by the same community reads it; globex's signature gets 404
    const get = await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: signed(ACME, '').headers });
    assert.equal(get.statusCode, 200, get.body);
    const other = await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: signed(GLOBEX, '').headers });
    assert.equal(other.statusCode, 404);
    // globex's secret cannot trigger for acme
    const cross = await app.inject({ method: 'POST', url: '/trigger-finetune', ...signed(GLOBEX, body('acme', 'cross')) });
    assert.equal(cross.statusCode, 404);
    // the bearer key still works
    assert.equal((await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: { authorization: 'Bearer k1' } })).statusCode, 200);
  });

  const refused: Array<[string, () => ReturnType<typeof signed>, string, RegExp]> = [
    [
      'an expired timestamp (6 minutes old)',
      () => signed(ACME, body('acme', 'old'), { ts: Math.floor(Date.now() / 1000) - 360 }),
      'EXPIRED_SIGNATURE',
      /in the past/,
    ],
    ['a timestamp 6 minutes ahead', () => signed(ACME, body('acme', 'new'), { ts: Math.floor(Date.now() / 1000) + 360 }), 'EXPIRED_SIGNATURE', /in the future/],
    [
      'a bad signature (another secret)',
      () => signed(`whsec_${randomBytes(24).toString('base64')}`, body('acme', 'bad')),
      'INVALID_SIGNATURE',
      /does not match/,
    ],
    [
      'a body changed after signing',
      () => signed(ACME, body('acme', 'tamper'), { tamper: (b) => b.replace('tamper', 'tamp3r') }),
      'INVALID_SIGNATURE',
      /does not match/,
    ],
    ['no webhook-signature header', () => signed(ACME, body('acme', 'nosig'), { drop: 'webhook-signature' }), 'MISSING_SIGNATURE_HEADER', /webhook-signature/],
    ['no webhook-timestamp header', () => signed(ACME, body('acme', 'nots'), { drop: 'webhook-timestamp' }), 'MISSING_SIGNATURE_HEADER', /webhook-timestamp/],
    ['no webhook-id header', () => signed(ACME, body('acme', 'noid'), { drop: 'webhook-id' }), 'MISSING_SIGNATURE_HEADER', /webhook-id/],
  ];
  for (const [name, make, code, why] of refused) {
    test(`${name}: 401 ${code}, nothing queued`, async () => {
      const before = await app.queueService.counts();
      const res = await app.inject({ method: 'POST', url: '/trigger-finetune', ...make() });
      assert.equal(res.statusCode, 401, res.body);
      assert.equal(res.json().code, code);
      assert.match(res.json().message, why);
      assert.deepEqual(await app.queueService.counts(), before);
    });
  }

  test('a replayed webhook-id is refused (401 REPLAYED_WEBHOOK_ID), even with a fresh signature', async () => {
    const first = signed(ACME, body('acme', 'replay'));
    assert.equal((await app.inject({ method: 'POST', url: '/trigger-finetune', ...first })).statusCode, 202);
    const again = await app.inject({ method: 'POST', url: '/trigger-finetune', ...first });
    assert.equal(again.statusCode, 401);
    assert.equal(again.json().code, 'REPLAYED_WEBHOOK_ID');
    const resigned = await app.inject({ method: 'POST', url: '/trigger-finetune', ...signed(ACME, body('acme', 'replay-2'), { id: first.id }) });
    assert.equal(resigned.statusCode, 401);
    assert.equal(resigned.json().code, 'REPLAYED_WEBHOOK_ID');
  });
});

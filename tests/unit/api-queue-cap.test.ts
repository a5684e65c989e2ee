/**
 * MAX_QUEUED_JOBS over real HTTP against the real Redis: with a cap of 2 (and no per-community cap in the way),
 * two triggers from different communities queue, the next answers 429 JOB_LIMIT_REACHED naming the variable
 * with a Retry-After header, and nothing of it is queued: the queue still holds 2 jobs, the job list shows 2,
 * no idempotency record was kept (the same Idempotency-Key queues a job once a slot is free).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { dropPrefix, testEnv, toyRows, uniquePrefix } from './api-helpers.js';

const prefix = uniquePrefix('qcap');
const dir = mkdtempSync(join(tmpdir(), 'dpo-qcap-'));
const AUTH = { authorization: 'Bearer cap-secret', 'content-type': 'application/json' };
let app: FastifyInstance;
let base: string;

before(async () => {
  app = await buildApp({
    env: testEnv(prefix, { API_KEYS: 'cap-secret:*', STORAGE_DIR: dir, MAX_QUEUED_JOBS: '2', MAX_JOBS_PER_COMMUNITY: '100' }),
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
});

after(async () => {
  await app.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

async function trigger(communityId: string, key: string): Promise<Response> {
  return fetch(`${base}/trigger-finetune`, {
    method: 'POST',
    headers: { ...AUTH, 'idempotency-key': key },
    body: JSON.stringify({ communityId, dataset: toyRows(2, key) }),
  });
}

async function queued(): Promise<number> {
  const c = await app.queueService.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
  return Object.values(c).reduce((a, b) => a + b, 0);
}

test('MAX_QUEUED_JOBS=2: the third trigger is 429 JOB_LIMIT_REACHED with Retry-After, and nothing is queued', async () => {
  const first = await trigger('alpha', 'q-1');
  const second = await trigger('beta', 'q-2');
  const firstBody = (await first.json()) as { jobId: string };
  assert.deepEqual([first.status, second.status], [202, 202], JSON.stringify([firstBody, await second.json()]));
  assert.equal(await queued(), 2);

  const refused = await trigger('gamma', 'q-3');
  assert.equal(refused.status, 429);
  const body = (await refused.json()) as { code: string; message: string };
  assert.equal(body.code, 'JOB_LIMIT_REACHED');
  assert.match(body.message, /MAX_QUEUED_JOBS=2/);
  const retryAfter = Number(refused.headers.get('retry-after'));
  assert.ok(Number.isInteger(retryAfter) && retryAfter > 0, `Retry-After: ${refused.headers.get('retry-after')}`);

  // nothing of the refused request is in the queue or the job list
  assert.equal(await queued(), 2);
  const list = await fetch(`${base}/jobs`, { headers: AUTH });
  const jobs = ((await list.json()) as { data: Array<{ communityId: string }> }).data;
  assert.deepEqual(jobs.map((j) => j.communityId).sort(), ['alpha', 'beta']);

  // a freed slot: the same Idempotency-Key now makes a new job (no record of the refused one was kept)
  const cancel = await fetch(`${base}/jobs/${firstBody.jobId}`, { method: 'DELETE', headers: { authorization: AUTH.authorization } });
  assert.ok(cancel.status === 200 || cancel.status === 202, await cancel.text());
  const again = await trigger('gamma', 'q-3');
  const againBody = (await again.json()) as { duplicate: boolean };
  assert.equal(again.status, 202, JSON.stringify(againBody));
  assert.equal(againBody.duplicate, false);
  assert.equal(await queued(), 2);
});

/**
 * API tests against the real Redis (127.0.0.1:6379) with fastify.inject: trigger validation (each bad
 * payload is a 4xx naming the problem and queues nothing), idempotency, job status, cancel, auth,
 * health (also with Redis unreachable), metrics, Swagger, rate limit.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { closedPort, dropPrefix, REDIS_URL, testEnv, toyRows, uniquePrefix } from './api-helpers.js';

const KEY = 'test-key-1';
const ADMIN = 'test-admin-key';
const storeDir = mkdtempSync(join(tmpdir(), 'dpo-api-'));
const AUTH = { authorization: `Bearer ${KEY}` };
const prefix = uniquePrefix('api');
let app: FastifyInstance;

async function jobCount(): Promise<number> {
  const c = await app.queueService.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
  return Object.values(c).reduce((a, b) => a + b, 0);
}

function post(payload: unknown, headers: Record<string, string> = {}) {
  return app.inject({ method: 'POST', url: '/trigger-finetune', payload: payload as object, headers: { ...AUTH, ...headers } });
}

before(async () => {
  app = await buildApp({
    env: testEnv(prefix, { API_KEYS: `${KEY},other-key`, ADMIN_API_KEYS: ADMIN, BODY_LIMIT_BYTES: '4096', STORAGE_DIR: storeDir, MAX_JOBS_PER_COMMUNITY: '0' }),
  });
  await app.ready();
});

after(async () => {
  await app.close();
  await dropPrefix(prefix);
  rmSync(storeDir, { recursive: true, force: true });
});

describe('POST /trigger-finetune', () => {
  test('a valid request gives 202, a job id and a queued job', async () => {
    const n0 = await jobCount();
    const res = await post({ communityId: 'community_1', dataset: toyRows(3, 'valid') });
    assert.equal(res.statusCode, 202);
    const body = res.json();
    assert.match(body.jobId, /^ft-[0-9a-f]{24}$/);
    assert.equal(body.communityId, 'community_1');
    assert.equal(body.state, 'queued');
    assert.equal(body.statusUrl, `/jobs/${body.jobId}`);
    assert.equal(await jobCount(), n0 + 1);
    const job = await app.queueService.queue.getJob(body.jobId);
    // the job holds a reference; the rows are in storage, not in Redis
    assert.equal(job?.data.dataset.rows, 3);
    assert.match(job!.data.dataset.datasetId, /^ds-[0-9a-f]{64}$/);
    assert.deepEqual(await app.datasets.get('community_1', job!.data.dataset), toyRows(3, 'valid'));
    assert.doesNotMatch(JSON.stringify(job!.data), /sunny spot/);
    const status = await app.inject({ method: 'GET', url: body.statusUrl, headers: AUTH });
    assert.equal(status.statusCode, 200);
    const s = status.json();
    assert.equal(s.state, 'queued');
    assert.equal(s.stage, null);
    assert.equal(s.artifact, null);
    assert.equal(s.error, null);
    assert.ok(!Number.isNaN(Date.parse(s.createdAt)));
  });

  test('the same request again returns the existing job (200), an Idempotency-Key makes its own', async () => {
    const payload = { communityId: 'community_2', dataset: toyRows(2, 'idem') };
    const a = await post(payload);
    const n1 = await jobCount();
    const b = await post(payload);
    assert.equal(a.statusCode, 202);
    assert.equal(b.statusCode, 200);
    assert.equal(b.json().jobId, a.json().jobId);
    assert.equal(b.json().duplicate, true);
    assert.equal(await jobCount(), n1);
    const c = await post(payload, { 'idempotency-key': 'order-42' });
    const d = await post(payload, { 'idempotency-key': 'order-42' });
    assert.equal(c.statusCode, 202);
    assert.notEqual(c.json().jobId, a.json().jobId);
    assert.equal(d.statusCode, 200);
    assert.equal(d.json().jobId, c.json().jobId);
  });

  const bad: Array<[string, unknown, number, string, Record<string, string>?]> = [
    ['missing rejected', { communityId: 'c', dataset: [{ prompt: 'p', chosen: 'a' }] }, 400, '/dataset/0/rejected'],
    ['empty dataset', { communityId: 'c', dataset: [] }, 400, '/dataset'],
    ['communityId ../x', { communityId: '../x', dataset: toyRows(1) }, 400, '/communityId'],
    ['missing communityId', { dataset: toyRows(1) }, 400, '/communityId'],
    ['chosen == rejected', { communityId: 'c', dataset: [...toyRows(1), { prompt: 'p', chosen: 'same', rejected: 'same' }] }, 400, '/dataset/1/rejected'],
    [
      "chosen == rejected up to whitespace (the data module's rule)",
      { communityId: 'c', dataset: [{ prompt: 'p', chosen: 'same', rejected: 'same  ' }] },
      400,
      '/dataset/0/rejected',
    ],
    ['blank prompt', { communityId: 'c', dataset: [{ prompt: '   ', chosen: 'a', rejected: 'b' }] }, 400, '/dataset/0/prompt'],
    ['non-string chosen', { communityId: 'c', dataset: [{ prompt: 'p', chosen: 3, rejected: 'b' }] }, 400, '/dataset/0/chosen'],
    ['unknown top-level key', { communityId: 'c', dataset: toyRows(1), comunity: 'x' }, 400, '/comunity'],
    ['config value of the wrong type', { communityId: 'c', dataset: toyRows(1), config: { beta: 'high' } }, 400, '/config/beta'],
    ['config key the caller may not set', { communityId: 'c', dataset: toyRows(1), config: { output_dir: '/etc' } }, 400, '/config/output_dir'],
    ['unknown loss name (trainer config check)', { communityId: 'c', dataset: toyRows(1), config: { loss: 'no_such_loss' } }, 400, '/config/loss'],
    [
      'max_prompt_length >= max_length (trainer config check)',
      { communityId: 'c', dataset: toyRows(1), config: { max_length: 64, max_prompt_length: 64 } },
      400,
      '/config/max_prompt_length',
    ],
    ["config backend is the worker's", { communityId: 'c', dataset: toyRows(1), config: { backend: 'cpu' } }, 400, '/config/backend'],
    ['bad Idempotency-Key', { communityId: 'c', dataset: toyRows(1, 'ik') }, 400, '/headers/idempotency-key', { 'idempotency-key': 'has space' }],
  ];
  for (const [name, payload, status, path, headers] of bad) {
    test(`${name}: ${status} naming ${path}, nothing queued`, async () => {
      const n0 = await jobCount();
      const res = await post(payload, headers);
      assert.equal(res.statusCode, status);
      const body = res.json();
      assert.equal(body.statusCode, status);
      assert.equal(body.code, 'VALIDATION_FAILED');
      assert.ok(
        body.problems.some((p: { path: string }) => p.path === path),
        `expected a problem at ${path}, got ${JSON.stringify(body.problems)}`,
      );
      assert.ok(body.message.includes(path), body.message);
      assert.equal(await jobCount(), n0);
    });
  }

  test('all problems of a payload are reported (ajv allErrors), at most 20', async () => {
    const rows = Array.from({ length: 30 }, () => ({ prompt: 'p', chosen: 'x' }));
    const res = await post({ communityId: 'c', dataset: rows });
    assert.equal(res.statusCode, 400);
    const body = res.json();
    assert.equal(body.problems.length, 20);
    assert.equal(body.problems[19].path, '/dataset/19/rejected');
    assert.match(body.message, /and 10 more/);
  });

  test('a non-JSON body is 415, malformed JSON is 400, nothing queued', async () => {
    const n0 = await jobCount();
    const text = await app.inject({
      method: 'POST',
      url: '/trigger-finetune',
      payload: 'communityId=c',
      headers: { ...AUTH, 'content-type': 'text/plain' },
    });
    assert.equal(text.statusCode, 415);
    assert.equal(text.json().code, 'UNSUPPORTED_MEDIA_TYPE');
    assert.match(text.json().message, /application\/json/);
    const broken = await app.inject({
      method: 'POST',
      url: '/trigger-finetune',
      payload: '{"communityId": "c", "dataset": [',
      headers: { ...AUTH, 'content-type': 'application/json' },
    });
    assert.equal(broken.statusCode, 400);
    assert.equal(broken.json().code, 'INVALID_JSON');
    assert.equal(await jobCount(), n0);
  });

  test('a body over BODY_LIMIT_BYTES is 413, nothing queued', async () => {
    const n0 = await jobCount();
    const big = { communityId: 'c', dataset: [{ prompt: 'p'.repeat(5000), chosen: 'a', rejected: 'b' }] };
    const res = await post(big);
    assert.equal(res.statusCode, 413);
    assert.equal(res.json().code, 'BODY_TOO_LARGE');
    assert.match(res.json().message, /4096 bytes/);
    assert.equal(await jobCount(), n0);
  });
});

describe('GET and DELETE /jobs/:jobId', () => {
  test('unknown job is 404, a malformed id is 400', async () => {
    const res = await app.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: AUTH });
    assert.equal(res.statusCode, 404);
    assert.equal(res.json().code, 'NOT_FOUND');
    const bad = await app.inject({ method: 'GET', url: '/jobs/a:b', headers: AUTH });
    assert.equal(bad.statusCode, 400);
    const del = await app.inject({ method: 'DELETE', url: '/jobs/ft-000000000000000000000000', headers: AUTH });
    assert.equal(del.statusCode, 404);
  });

  test('cancelling a queued job removes it and GET reports cancelled', async () => {
    const { jobId } = (await post({ communityId: 'c3', dataset: toyRows(2, 'cancel') })).json();
    const del = await app.inject({ method: 'DELETE', url: `/jobs/${jobId}`, headers: AUTH });
    assert.equal(del.statusCode, 202);
    assert.equal(del.json().state, 'cancelled');
    assert.equal(await app.queueService.queue.getJob(jobId), undefined);
    const get = await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: AUTH });
    assert.equal(get.statusCode, 200);
    assert.equal(get.json().state, 'cancelled');
    assert.equal(get.json().error.code, 'JOB_CANCELLED');
    assert.ok(get.json().finishedAt);
    // posting the same data again makes a fresh job (under a new random id); the cancelled one stays cancelled
    const again = await post({ communityId: 'c3', dataset: toyRows(2, 'cancel') });
    assert.equal(again.statusCode, 202);
    assert.notEqual(again.json().jobId, jobId);
    assert.equal((await app.inject({ method: 'GET', url: `/jobs/${again.json().jobId}`, headers: AUTH })).json().state, 'queued');
    assert.equal((await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: AUTH })).json().state, 'cancelled');
  });
});

describe('auth, docs, metrics, health', () => {
  test('routes need a valid bearer key; /health and /docs do not', async () => {
    const none = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'c', dataset: toyRows(1) } });
    assert.equal(none.statusCode, 401);
    assert.equal(none.json().code, 'UNAUTHORIZED');
    const wrong = await app.inject({ method: 'GET', url: '/jobs/ft-1', headers: { authorization: 'Bearer nope' } });
    assert.equal(wrong.statusCode, 401);
    const other = await app.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: { authorization: 'Bearer other-key' } });
    assert.equal(other.statusCode, 404);
    assert.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401);
    assert.equal((await app.inject({ method: 'GET', url: '/admin/queues' })).statusCode, 401);
    assert.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200);
    assert.equal((await app.inject({ method: 'GET', url: '/docs/json' })).statusCode, 200);
  });

  test('the OpenAPI document lists the routes and the bearer scheme', async () => {
    const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json();
    assert.ok(doc.paths['/trigger-finetune'].post);
    assert.ok(doc.paths['/jobs/{jobId}'].get);
    assert.ok(doc.paths['/jobs/{jobId}'].delete);
    assert.equal(doc.components.securitySchemes.bearerAuth.scheme, 'bearer');
    const ui = await app.inject({ method: 'GET', url: '/docs' });
    assert.ok(ui.statusCode === 200 || ui.statusCode === 302);
  });

  test('/metrics reports queue depth from Redis', async () => {
    const waiting = (await app.queueService.queue.getJobCounts('waiting')).waiting;
    const res = await app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
    assert.equal(res.statusCode, 200);
    assert.match(res.body, new RegExp(`^dpo_queue_jobs\\{state="waiting"\\} ${waiting}$`, 'm'));
    assert.match(res.body, /^# TYPE dpo_job_stage_duration_seconds histogram$/m);
    assert.match(res.body, /^dpo_http_requests_total\{/m);
  });

  test('/metrics counts the requests of every route, not only its own', async () => {
    await app.inject({ method: 'GET', url: '/health' });
    await app.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: AUTH });
    const res = await app.inject({ method: 'GET', url: '/metrics', headers: AUTH });
    assert.match(res.body, /^dpo_http_requests_total\{method="GET",route="\/health",status="200"\} [1-9]/m);
    assert.match(res.body, /^dpo_http_requests_total\{method="GET",route="\/jobs\/:jobId",status="404"\} [1-9]/m);
  });

  test('Bull Board is served behind the admin key (a tenant key is refused)', async () => {
    assert.equal((await app.inject({ method: 'GET', url: '/admin/queues', headers: AUTH })).statusCode, 401);
    const res = await app.inject({ method: 'GET', url: '/admin/queues', headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(res.statusCode, 200);
    assert.match(res.headers['content-type'] as string, /text\/html/);
  });

  test('/health is 200 with Redis up and 503 redis "down" when Redis is unreachable', async () => {
    const up = await app.inject({ method: 'GET', url: '/health' });
    assert.equal(up.statusCode, 200);
    assert.equal(up.json().redis, 'up');
    const port = await closedPort();
    const downPrefix = uniquePrefix('down');
    const down = await buildApp({ env: testEnv(downPrefix, { REDIS_URL: `redis://127.0.0.1:${port}` }) });
    try {
      await down.ready();
      const res = await down.inject({ method: 'GET', url: '/health' });
      assert.equal(res.statusCode, 503);
      assert.deepEqual({ status: res.json().status, redis: res.json().redis }, { status: 'error', redis: 'down' });
      const trig = await down.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'c', dataset: toyRows(1) } });
      assert.equal(trig.statusCode, 503);
      assert.equal(trig.json().code, 'REDIS_UNAVAILABLE');
    } finally {
      await down.close();
    }
    assert.ok(REDIS_URL);
  });

  test('the rate limit answers 429 with a stable code', async () => {
    const p = uniquePrefix('rl');
    const limited = await buildApp({ env: testEnv(p, { RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW: '1 minute' }) });
    try {
      await limited.ready();
      const codes: number[] = [];
      for (let i = 0; i < 3; i++) codes.push((await limited.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000' })).statusCode);
      assert.deepEqual(codes, [404, 404, 429]);
      const last = await limited.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000' });
      assert.equal(last.json().code, 'RATE_LIMITED');
      // /health is never limited
      assert.equal((await limited.inject({ method: 'GET', url: '/health' })).statusCode, 200);
    } finally {
      await limited.close();
      await dropPrefix(p);
    }
  });
});

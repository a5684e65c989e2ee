/**
 * Tenants against the real Redis with fastify.inject: API_KEYS scopes (k1 → acme, k2 → globex|initech, ops → *),
 * another community's job is a 404 on GET and DELETE exactly like a missing one, triggering for another
 * community is refused, credentials are normalised (`Bearer  k1`), Idempotency-Key is scoped to (key,
 * community) and bound to the body (409 IDEMPOTENCY_KEY_REUSED), job ids are random, the job caps answer 429
 * with Retry-After, the compute budget is a 400 naming MAX_TRAIN_TOKENS, and failed auth is rate-limited per IP.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { EnvError, loadEnv, parseApiKeys } from '../../src/config/env.js';
import { dropPrefix, testEnv, toyRows, uniquePrefix } from './api-helpers.js';

const prefix = uniquePrefix('tenants');
const dir = mkdtempSync(join(tmpdir(), 'dpo-tenants-'));
const K1 = { authorization: 'Bearer k1-secret' };
const K2 = { authorization: 'Bearer k2-secret' };
const OPS = { authorization: 'Bearer ops-secret' };
let app: FastifyInstance;

function trigger(headers: Record<string, string>, communityId: string, tag: string, extra: Record<string, string> = {}, config?: object) {
  return app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    headers: { ...headers, ...extra },
    payload: { communityId, dataset: toyRows(2, tag), ...(config ? { config } : {}) },
  });
}

before(async () => {
  app = await buildApp({
    env: testEnv(prefix, {
      API_KEYS: 'k1-secret:acme,k2-secret:globex|initech,ops-secret:*',
      STORAGE_DIR: dir,
      MAX_JOBS_PER_COMMUNITY: '3',
      RATE_LIMIT_MAX: '1000',
      AUTH_FAILURE_LIMIT: '1000',
    }),
  });
  await app.ready();
});

after(async () => {
  await app.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

describe('API_KEYS parsing', () => {
  test('scopes, bare keys and bad entries', () => {
    const m = parseApiKeys(' k1:acme , k2:globex|initech,ops:*,legacy');
    assert.deepEqual([...m.keys()], ['k1', 'k2', 'ops', 'legacy']);
    assert.deepEqual([...(m.get('k2')!.communities as Set<string>)], ['globex', 'initech']);
    assert.equal(m.get('ops')!.communities, '*');
    assert.equal(m.get('ops')!.bare, false);
    assert.equal(m.get('legacy')!.communities, '*');
    assert.equal(m.get('legacy')!.bare, true);
    assert.throws(
      () => loadEnv({ API_KEYS: 'k1:../etc' }),
      (e: Error) => e instanceof EnvError && /API_KEYS entry 1/.test(e.message) && !e.message.includes('k1'),
    );
    assert.throws(() => loadEnv({ API_KEYS: 'k1:a,k1:b' }), /appears twice/);
    assert.throws(() => loadEnv({ SIGNING_SECRETS: 'acme:nope' }), /SIGNING_SECRETS entry 1 \(acme\)/);
  });
});

describe('tenant isolation', () => {
  test("k2 gets 404 for k1's job on GET and DELETE, the same body as a missing job; k1 and ops see it", async () => {
    const res = await trigger(K1, 'acme', 'iso');
    assert.equal(res.statusCode, 202);
    const { jobId } = res.json();
    const missing = await app.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: K2 });
    const get = await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: K2 });
    assert.equal(get.statusCode, 404);
    assert.equal(get.json().code, missing.json().code);
    assert.equal(get.json().message.replace(jobId, 'ID'), missing.json().message.replace('ft-000000000000000000000000', 'ID'));
    const del = await app.inject({ method: 'DELETE', url: `/jobs/${jobId}`, headers: K2 });
    assert.equal(del.statusCode, 404);
    // the DELETE of k2 changed nothing
    const own = await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: K1 });
    assert.equal(own.statusCode, 200);
    assert.equal(own.json().state, 'queued');
    assert.equal(own.json().cancelRequested, false);
    assert.equal((await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: OPS })).statusCode, 200);
    // lists: k2 never sees it (not even when it asks for acme by name), k1 and ops do
    const ids = async (headers: Record<string, string>, q = '') =>
      ((await app.inject({ method: 'GET', url: `/jobs?limit=100${q}`, headers })).json().data as Array<{ jobId: string }>).map((j) => j.jobId);
    assert.ok(!(await ids(K2)).includes(jobId));
    assert.deepEqual(await ids(K2, '&communityId=acme'), []);
    assert.ok((await ids(K1)).includes(jobId));
    assert.ok((await ids(OPS)).includes(jobId));
    // the job's sub-resources answer 404 to k2 as well
    for (const sub of ['events', 'metrics', 'files', 'checkpoints']) {
      const r = await app.inject({ method: 'GET', url: `/jobs/${jobId}/${sub}`, headers: K2 });
      assert.equal(r.statusCode, 404, `${sub}: ${r.body}`);
    }
    assert.equal((await app.inject({ method: 'DELETE', url: `/jobs/${jobId}`, headers: K1 })).statusCode, 202);
  });

  test('a key cannot trigger for a community outside its scope; nothing is queued', async () => {
    const before = await app.queueService.counts();
    const res = await trigger(K1, 'globex', 'scope');
    assert.equal(res.statusCode, 404);
    assert.deepEqual(await app.queueService.counts(), before);
    assert.equal((await trigger(K2, 'initech', 'scope')).statusCode, 202);
  });

  test('the credential is normalised: "Bearer  k1" and "bearer k1 " are k1', async () => {
    for (const authorization of ['Bearer  k1-secret', 'bearer k1-secret ', 'BEARER\tk1-secret']) {
      const res = await app.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: { authorization } });
      assert.equal(res.statusCode, 404, authorization);
    }
    const two = await app.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: { authorization: 'Bearer k1-secret extra' } });
    assert.equal(two.statusCode, 401);
  });
});

describe('job ids and idempotency', () => {
  test('job ids are random: the same body under two keys, or after a cancel, gets different ids', async () => {
    const a = await trigger(OPS, 'initech', 'rand');
    const b = await trigger(K2, 'initech', 'rand');
    assert.equal(a.statusCode, 202);
    assert.equal(b.statusCode, 202);
    assert.notEqual(a.json().jobId, b.json().jobId);
    assert.match(a.json().jobId, /^ft-[0-9a-f]{24}$/);
  });

  test('an Idempotency-Key replays its job; with a different body it is 409 IDEMPOTENCY_KEY_REUSED; keys are scoped per credential', async () => {
    const key = { 'idempotency-key': 'order-7' };
    const first = await trigger(K1, 'acme', 'idem-a', key);
    assert.equal(first.statusCode, 202);
    const replay = await trigger(K1, 'acme', 'idem-a', key);
    assert.equal(replay.statusCode, 200);
    assert.equal(replay.json().jobId, first.json().jobId);
    const before = await app.queueService.counts();
    const reused = await trigger(K1, 'acme', 'idem-b', key);
    assert.equal(reused.statusCode, 409);
    assert.equal(reused.json().code, 'IDEMPOTENCY_KEY_REUSED');
    assert.deepEqual(await app.queueService.counts(), before);
    // another credential's key of the same name is its own
    const other = await trigger(OPS, 'acme', 'idem-b', key);
    assert.equal(other.statusCode, 202);
    assert.notEqual(other.json().jobId, first.json().jobId);
  });
});

describe('bounds', () => {
  test('MAX_JOBS_PER_COMMUNITY: the 4th live job of a community is 429 with Retry-After; another community is not affected', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) codes.push((await trigger(OPS, 'capped', `cap-${i}`)).statusCode);
    assert.deepEqual(codes, [202, 202, 202, 429]);
    const res = await trigger(OPS, 'capped', 'cap-x');
    assert.equal(res.json().code, 'JOB_LIMIT_REACHED');
    assert.match(res.json().message, /MAX_JOBS_PER_COMMUNITY=3/);
    assert.ok(Number(res.headers['retry-after']) > 0);
    assert.equal((await trigger(OPS, 'uncapped', 'cap-y')).statusCode, 202);
  });

  test('MAX_TRAIN_TOKENS: a run over the budget is a 400 naming it; schema maxima stop 2^53 epochs', async () => {
    const res = await trigger(OPS, 'budget', 'budget', {}, { n_epochs: 1000, max_length: 1_048_576 });
    assert.equal(res.statusCode, 400);
    assert.match(res.json().message, /MAX_TRAIN_TOKENS=1000000000/);
    const huge = await trigger(OPS, 'budget', 'budget', {}, { n_epochs: 2 ** 53 });
    assert.equal(huge.statusCode, 400);
    assert.ok(
      huge.json().problems.some((p: { path: string }) => p.path === '/config/n_epochs'),
      JSON.stringify(huge.json()),
    );
  });

  test('registered names only: a path-free file name, node_modules and prototype keys are 400 listing the models', async () => {
    for (const model of ['README.md', 'node_modules', 'constructor', '__proto__', 'toString']) {
      const res = await trigger(OPS, 'names', `m-${model}`, {}, { model });
      assert.equal(res.statusCode, 400, model);
      const p = res.json().problems.find((x: { path: string }) => x.path === '/config/model');
      assert.ok(p, `${model}: ${JSON.stringify(res.json())}`);
      assert.match(p.message, /stories260K/);
      assert.doesNotMatch(res.json().message, /\/work|\/home|\/tmp/);
    }
    for (const loss of ['constructor', '__proto__', 'hasOwnProperty']) {
      const res = await trigger(OPS, 'names', `l-${loss}`, {}, { loss });
      assert.equal(res.statusCode, 400, loss);
      assert.ok(
        res.json().problems.some((x: { path: string }) => x.path.startsWith('/config/loss')),
        `${loss}: ${JSON.stringify(res.json())}`,
      );
    }
    const key = await trigger(OPS, 'names', 'lk', {}, { loss: { name: 'dpo', constructor: 1 } });
    assert.equal(key.statusCode, 400);
  });
});

describe('failed authentication', () => {
  test('is rate-limited per client IP with 429 and Retry-After, and a good key from that IP waits too', async () => {
    const p = uniquePrefix('authfail');
    const limited = await buildApp({ env: testEnv(p, { API_KEYS: 'good:acme', AUTH_FAILURE_LIMIT: '3', STORAGE_DIR: dir }) });
    try {
      await limited.ready();
      const codes: number[] = [];
      for (let i = 0; i < 5; i++) {
        codes.push(
          (await limited.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: { authorization: `Bearer guess-${i}` } })).statusCode,
        );
      }
      assert.deepEqual(codes, [401, 401, 401, 429, 429]);
      const good = await limited.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: { authorization: 'Bearer good' } });
      assert.equal(good.statusCode, 429);
      assert.ok(Number(good.headers['retry-after']) > 0);
      const other = await limited.inject({
        method: 'GET',
        url: '/jobs/ft-000000000000000000000000',
        headers: { authorization: 'Bearer good' },
        remoteAddress: '10.1.2.3',
      });
      assert.equal(other.statusCode, 404);
    } finally {
      await limited.close();
      await dropPrefix(p);
    }
  });

  test('the request rate limit keys the normalised credential: "Bearer  k" shares the bucket of "Bearer k"', async () => {
    const p = uniquePrefix('rlnorm');
    const limited = await buildApp({ env: testEnv(p, { API_KEYS: 'k:acme', RATE_LIMIT_MAX: '2', STORAGE_DIR: dir }) });
    try {
      await limited.ready();
      const codes: number[] = [];
      for (const authorization of ['Bearer k', 'Bearer  k', 'bearer   k']) {
        codes.push((await limited.inject({ method: 'GET', url: '/jobs/ft-000000000000000000000000', headers: { authorization } })).statusCode);
      }
      assert.deepEqual(codes, [404, 404, 429]);
    } finally {
      await limited.close();
      await dropPrefix(p);
    }
  });
});

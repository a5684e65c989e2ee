/**
 * The worker trusts nothing from Redis, and the admin surface is closed. Against the real Redis and a real
 * BullMQ worker (src/worker/main.ts; training never starts for these jobs):
 *
 * - Bull Board's add-job call is 401 without the admin key (also with a tenant key), 405 read-only with it,
 *   and /admin/queues is 404 when no admin key is configured;
 * - jobs put straight into Redis with BullMQ's own Queue.add (a traversal communityId, a string `dataset`
 *   naming a local file, a path as the model, a service-only config key, a prototype key, a tampered dataset,
 *   a job id the service never makes) all fail INVALID_JOB_PAYLOAD, and nothing outside WORK_DIR/STORAGE_DIR
 *   is touched: a canary file at the traversal target stays, no directory appears there, and the local
 *   file's contents appear nowhere in the job.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { loadConfig } from '../../src/config/index.js';
import { newJobId } from '../../src/queue/finetune-queue.js';
import type { JobStatus } from '../../src/queue/types.js';
import { startWorker, type WorkerHandle } from '../../src/worker/main.js';
import { dropPrefix, REDIS_URL, testEnv, toyRows, uniquePrefix } from '../unit/api-helpers.js';

const prefix = uniquePrefix('untrusted');
const dir = mkdtempSync(join(tmpdir(), 'dpo-untrusted-'));
const storageDir = join(dir, 'store');
const workDir = join(dir, 'work');
// the traversal target: a sibling of the service's directories with a canary in it
const victim = join(dir, 'victim');
const canary = join(victim, 'canary.txt');
const secretFile = join(dir, 'secret.txt');
const SECRET = 'TOP-SECRET-LOCAL-FILE-CONTENT-7f3a';
const ADMIN = 'admin-key-1';
const TENANT = 'tenant-key-1';
let app: FastifyInstance;
let handle: WorkerHandle;
let queue: Queue;
let redis: Redis;

async function settle(jobId: string): Promise<JobStatus> {
  for (let i = 0; i < 1500; i++) {
    const s = await app.queueService.getStatus(jobId);
    if (s && ['completed', 'failed', 'cancelled'].includes(s.state)) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`job ${jobId} did not finish`);
}

before(async () => {
  mkdirSync(victim, { recursive: true });
  writeFileSync(canary, 'canary');
  writeFileSync(secretFile, `${SECRET}\n`);
  const env = testEnv(prefix, {
    STORAGE_DIR: storageDir,
    WORK_DIR: workDir,
    API_KEYS: `${TENANT}:acme`,
    ADMIN_API_KEYS: ADMIN,
    WORKER_METRICS_PORT: '0',
  });
  app = await buildApp({ env });
  await app.ready();
  handle = await startWorker({ env, skipBackendCheck: true, cancelPollMs: 50 });
  redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  queue = new Queue('finetune', { connection: redis, prefix });
});

after(async () => {
  await handle?.close(5000);
  await queue?.close();
  redis?.disconnect();
  await app?.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

describe('Bull Board', () => {
  const add = (headers: Record<string, string>) =>
    app.inject({
      method: 'POST',
      url: '/admin/queues/api/queues/finetune/add',
      headers,
      payload: { name: 'finetune', data: { communityId: 'acme', dataset: '/etc/passwd' }, options: {} },
    });

  test('add-job is 401 without the admin key (a tenant key included) and 405 read-only with it; nothing is queued', async () => {
    const before = await app.queueService.counts();
    const none = await add({});
    assert.equal(none.statusCode, 401);
    const tenant = await add({ authorization: `Bearer ${TENANT}` });
    assert.equal(tenant.statusCode, 401);
    const admin = await add({ authorization: `Bearer ${ADMIN}` });
    assert.equal(admin.statusCode, 405);
    assert.deepEqual(await app.queueService.counts(), before);
    assert.equal((await app.inject({ method: 'GET', url: '/admin/queues', headers: { authorization: `Bearer ${ADMIN}` } })).statusCode, 200);
  });

  test('the board shows no dataset rows: job data is a reference', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/trigger-finetune',
      headers: { authorization: `Bearer ${TENANT}` },
      payload: { communityId: 'acme', dataset: toyRows(2, 'board'), config: { n_epochs: 1 } },
    });
    assert.equal(res.statusCode, 202);
    const list = await app.inject({
      method: 'GET',
      url: '/admin/queues/api/queues?activeQueue=finetune&status=latest&page=1',
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    assert.equal(list.statusCode, 200);
    assert.match(list.body, /ds-[0-9a-f]{64}/);
    assert.doesNotMatch(list.body, /sunny spot/);
    await app.inject({ method: 'DELETE', url: `/jobs/${res.json().jobId}`, headers: { authorization: `Bearer ${TENANT}` } });
  });

  test('with no admin key configured /admin/queues is 404, with or without a tenant key', async () => {
    const p = uniquePrefix('noadmin');
    const open = await buildApp({ env: testEnv(p, { API_KEYS: `${TENANT}:acme`, STORAGE_DIR: storageDir }) });
    try {
      await open.ready();
      assert.equal((await open.inject({ method: 'GET', url: '/admin/queues' })).statusCode, 404);
      assert.equal(
        (await open.inject({ method: 'POST', url: '/admin/queues/api/queues/finetune/add', headers: { authorization: `Bearer ${TENANT}` }, payload: {} }))
          .statusCode,
        404,
      );
    } finally {
      await open.close();
      await dropPrefix(p);
    }
  });
});

describe('jobs put straight into Redis', () => {
  const realRef = async () => {
    const { datasetId, sha256, rows } = await app.datasets.put('acme', toyRows(2, 'direct'));
    return { datasetId, sha256, rows };
  };
  // a payload as the API writes it (resolved config), then one field made hostile
  const good = async (over: Record<string, unknown> = {}, cfg: Record<string, unknown> = {}) => {
    const config = loadConfig() as unknown as Record<string, unknown>;
    return { communityId: 'acme', dataset: await realRef(), config: { ...config, ...cfg }, requestHash: 'a'.repeat(64), requestedAt: 'x', ...over };
  };
  const model = (name_or_path: string) => ({ model: { name: 'x', name_or_path, tokenizer_name_or_path: null } });
  const cases: Array<[string, () => Promise<Record<string, unknown>>, RegExp]> = [
    ['a traversal communityId', () => good({ communityId: '../victim' }), /\/data\/communityId/],
    ['a deep traversal communityId', () => good({ communityId: '../../../../victim' }), /\/data\/communityId/],
    ['a string dataset naming a local file', () => good({ dataset: secretFile }), /\/data\/dataset/],
    ['inline rows (the old payload)', () => good({ dataset: toyRows(2) }), /\/data\/dataset/],
    ['a path as the model', () => good({}, model(secretFile)), /\/config\/model/],
    ['a file name as the model', () => good({}, model('README.md')), /\/config\/model/],
    ['a prototype key as the model', () => good({}, model('constructor')), /\/config\/model/],
    ['a service-only config key', () => good({}, { output_dir: victim }), /\/config\/output_dir/],
    ['an eval dataset path', () => good({}, { eval_dataset: secretFile }), /\/config\/eval_dataset/],
    ['a config the trainer rejects', () => good({}, { n_epochs: 2 ** 53 }), /\/config\/n_epochs/],
    ['a dataset of another community', () => good({ communityId: 'globex' }), /UNKNOWN_DATASET/],
    [
      'a reference whose stored bytes were changed',
      async () => {
        const { datasetId, sha256, rows } = await app.datasets.put('acme', toyRows(3, 'tamper'));
        const ref = { datasetId, sha256, rows };
        writeFileSync(
          join(storageDir, app.datasets.key('acme', ref.datasetId)),
          JSON.stringify([{ prompt: 'p', chosen: readFileSync(secretFile, 'utf8'), rejected: 'r' }]),
        );
        return good({ dataset: ref });
      },
      /CORRUPT_DATASET/,
    ],
  ];
  for (const [name, make, where] of cases) {
    test(`${name}: INVALID_JOB_PAYLOAD, nothing touched outside WORK_DIR/STORAGE_DIR`, async () => {
      const jobId = newJobId();
      await queue.add('finetune', await make(), { jobId });
      const s = await settle(jobId);
      assert.equal(s.state, 'failed');
      assert.equal(s.error?.code, 'INVALID_JOB_PAYLOAD');
      assert.match(s.error!.message, where);
      assert.ok(!JSON.stringify(s).includes(SECRET), 'the local file leaked into the job');
      assert.ok(!JSON.stringify(s).includes(dir), 'a server path leaked into the job');
      assert.equal(readFileSync(canary, 'utf8'), 'canary');
      assert.deepEqual(readdirSync(victim), ['canary.txt']);
      assert.deepEqual(readdirSync(dir).sort(), ['secret.txt', 'store', 'victim'].concat(existsSync(workDir) ? ['work'] : []).sort());
      // nothing was made for this job anywhere, not even inside WORK_DIR
      if (existsSync(workDir)) {
        for (const c of readdirSync(workDir)) assert.ok(!existsSync(join(workDir, c, jobId)), relative(dir, join(workDir, c, jobId)));
      }
    });
  }

  test('control: the same payload unchanged passes validation (the worker starts training it)', async () => {
    const jobId = newJobId();
    await queue.add('finetune', await good(), { jobId });
    let s: JobStatus | null = null;
    for (let i = 0; i < 1500; i++) {
      s = await app.queueService.getStatus(jobId);
      if (s && s.state !== 'queued') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.notEqual(s?.error?.code, 'INVALID_JOB_PAYLOAD', JSON.stringify(s?.error));
    await app.queueService.cancel(jobId);
    const end = await settle(jobId);
    assert.notEqual(end.error?.code, 'INVALID_JOB_PAYLOAD', JSON.stringify(end.error));
  });

  test('a job id the service never makes is refused before anything else', async () => {
    await queue.add('finetune', await good(), { jobId: 'ft-../../victim' });
    const s = await settle('ft-../../victim');
    assert.equal(s.error?.code, 'INVALID_JOB_PAYLOAD');
    assert.match(s.error!.message, /\/id/);
    assert.deepEqual(readdirSync(victim), ['canary.txt']);
  });
});

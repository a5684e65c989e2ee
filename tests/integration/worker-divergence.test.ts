/**
 * Divergence is a failure, never a success with fake numbers: `config: {lr: 1e9}` through the real API, a real
 * worker and its training child ends `failed` with TRAINING_DIVERGED naming the stage and the step; no metric in
 * GET /jobs is a fake 0 standing in for NaN, and metrics.jsonl has the diverged step with null (not 0).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import type { JobStatus } from '../../src/queue/types.js';
import { startWorker, type WorkerHandle } from '../../src/worker/main.js';
import { dropPrefix, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as unknown[];
const prefix = uniquePrefix('diverge');
const dir = mkdtempSync(join(tmpdir(), 'dpo-diverge-'));
let app: FastifyInstance;
let handle: WorkerHandle;

before(async () => {
  const env = testEnv(prefix, { STORAGE_DIR: join(dir, 'store'), WORK_DIR: join(dir, 'work'), TFJS_BACKEND: 'wasm', WORKER_METRICS_PORT: '0' });
  app = await buildApp({ env });
  await app.ready();
  handle = await startWorker({ env, skipBackendCheck: true });
});

after(async () => {
  await handle?.close(5000);
  await app?.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

test('lr: 1e9 ends failed with TRAINING_DIVERGED (stage and step named); no fake 0 in GET /jobs or metrics.jsonl', async () => {
  const config = { lr: 1e9, max_steps: 6, sft: { max_steps: 2 }, batch_size: 2, sample_during_eval: false, tensorboard: false, plot: false };
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'diverge', dataset: toy.slice(0, 8), config } });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  let s: JobStatus | undefined;
  for (let i = 0; i < 6000; i++) {
    s = (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
    if (['completed', 'failed', 'cancelled'].includes(s.state)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(s?.state, 'failed', JSON.stringify(s));
  assert.equal(s?.error?.code, 'TRAINING_DIVERGED', JSON.stringify(s?.error));
  const m = /diverged in (sft|dpo) at step (\d+): (loss|grad_norm) is (NaN|Infinity|-Infinity)/.exec(s!.error!.message);
  assert.ok(m, s!.error!.message);
  // GET /jobs: no loss or grad_norm of 0 (NaN used to be serialised as 0)
  for (const stage of ['sft', 'dpo'] as const) {
    for (const k of ['loss', 'grad_norm']) {
      const v = s!.metrics[stage][k];
      assert.ok(v === undefined || v === null || (Number.isFinite(v) && v !== 0), `${stage} ${k} = ${v}`);
    }
  }
  // metrics.jsonl: the diverged step is there with null, and no loss/grad_norm is a 0
  const lines = readFileSync(join(dir, 'work', 'diverge', jobId, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const bad = lines.find((l) => l.stage === m![1] && l.step === Number(m![2]));
  assert.ok(bad, `no metrics line for ${m![1]} step ${m![2]}`);
  assert.equal(bad[m![3]!], null);
  for (const l of lines) for (const k of ['loss', 'grad_norm']) if (k in l) assert.notEqual(l[k], 0, JSON.stringify(l));
});

/**
 * Done-when of online DPO: POST /trigger-finetune with `method: "online_dpo"`, prompt rows and a rule judge
 * runs SFT -> online DPO in a real worker process (src/worker/main.ts, which forks the training child) against
 * the real Redis, to a completed job with a verified artifact and TRL's OnlineDPOTrainer metrics. Also: the
 * request is refused (400, nothing queued) without a judge, with a prompt-only row for the default method, and
 * with an http judge the operator did not allow (DPO_JUDGE_URLS), and with a judge file given as a path.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import type { JobStatus } from '../../src/queue/types.js';
import { readManifest, verifyManifest } from '../../src/storage/manifest.js';
import { closedPort, dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('online');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-online-e2e-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<{ prompt: string; chosen: string }>;
const JUDGE = { type: 'rule', rules: [{ type: 'keywords', words: ['happy', 'hug', 'smiled', 'played'], weight: 1 }] };
const TINY = {
  max_steps: 2,
  sft: { max_steps: 2 },
  batch_size: 2,
  eval_split_fraction: 0.25,
  n_eval_examples: 2,
  sample_during_eval: false,
  tensorboard: false,
  plot: false,
  online_dpo: { num_samples_per_step: 2, max_new_tokens: 12, judge: JUDGE },
};

let app: FastifyInstance;
let worker: ChildProcess;
let workerLog = '';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir }) });
  await app.ready();
  worker = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: storageDir,
      LOG_LEVEL: 'info',
      TFJS_BACKEND: 'wasm',
      WORKER_METRICS_PORT: String(await closedPort()),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  worker.stdout!.on('data', (d: Buffer) => (workerLog += d.toString()));
  worker.stderr!.on('data', (d: Buffer) => (workerLog += d.toString()));
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) === 0; i++) {
    assert.equal(worker.exitCode, null, `the worker exited:\n${workerLog}`);
    await sleep(100);
  }
});

after(async () => {
  if (worker && worker.exitCode === null) {
    worker.kill('SIGTERM');
    const kill = setTimeout(() => worker.kill('SIGKILL'), 20_000);
    await new Promise((r) => worker.once('exit', r));
    clearTimeout(kill);
  }
  await app?.close();
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

test('POST /trigger-finetune method online_dpo with prompts and a rule judge runs SFT -> online DPO to an artifact', { timeout: 600_000 }, async () => {
  // prompts; half of them carry an SFT target (chosen), the others are bare prompts
  const dataset = toy.slice(0, 8).map((r, i) => (i % 2 === 0 ? { prompt: r.prompt, chosen: r.chosen } : { prompt: r.prompt }));
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'online-c', method: 'online_dpo', dataset, config: TINY } });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json() as { jobId: string };
  let final: JobStatus | null = null;
  for (let i = 0; i < 12000; i++) {
    const s = (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
    if (['completed', 'failed', 'cancelled'].includes(s.state)) {
      final = s;
      break;
    }
    await sleep(50);
  }
  assert.ok(final, `the job did not finish; worker log:\n${workerLog.slice(-3000)}`);
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog.slice(-3000)}`);
  assert.deepEqual(
    final.stages.map((s) => s.stage),
    ['sft', 'dpo', 'upload'],
  );
  assert.equal(typeof final.metrics.sft.loss, 'number', 'SFT trained on the rows with a chosen');
  for (const k of ['loss', 'objective/kl', 'objective/scores', 'objective/rlhf_reward', 'rewards/margins', 'val/contain_eos_token', 'beta']) {
    assert.ok(Number.isFinite(final.metrics.dpo[k]), `metrics.dpo["${k}"] = ${final.metrics.dpo[k]}`);
  }
  assert.ok(final.artifact);
  const dir = join(storageDir, final.artifact.uri);
  assert.deepEqual(await verifyManifest(dir, await readManifest(dir)), []);
  const run = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8')) as { config: { stage: string; online_dpo: { judge: unknown } } };
  assert.equal(run.config.stage, 'online_dpo');
  assert.deepEqual(run.config.online_dpo.judge, JUDGE);
});

test('online_dpo requests that cannot run are refused with the field named, nothing queued', async () => {
  const count = async () => (await app.queueService.queue.getJobCounts('waiting', 'active', 'completed', 'failed', 'delayed')) as Record<string, number>;
  const total = async () => Object.values(await count()).reduce((a, b) => a + b, 0);
  const n0 = await total();
  const cases: Array<[unknown, string]> = [
    [{ communityId: 'c', method: 'online_dpo', dataset: [{ prompt: 'Once' }] }, '/config/online_dpo/judge'],
    [{ communityId: 'c', dataset: [{ prompt: 'Once' }] }, '/dataset/0/chosen'],
    [{ communityId: 'c', method: 'online_dpo', dataset: [{ prompt: '  ' }], config: TINY }, '/dataset/0/prompt'],
    [
      {
        communityId: 'c',
        method: 'online_dpo',
        dataset: [{ prompt: 'Once' }],
        config: { online_dpo: { judge: { type: 'http', url: 'http://127.0.0.1:9/x' } } },
      },
      '/config/online_dpo/judge/url',
    ],
    [
      { communityId: 'c', method: 'online_dpo', dataset: [{ prompt: 'Once' }], config: { online_dpo: { judge: { type: 'rule', file: '/etc/passwd' } } } },
      '/config/online_dpo/judge/file',
    ],
  ];
  for (const [payload, path] of cases) {
    const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: payload as Record<string, unknown> });
    assert.equal(res.statusCode, 400, `${JSON.stringify(payload)}: ${res.body}`);
    const problems = (res.json() as { problems: Array<{ path: string }> }).problems;
    assert.ok(
      problems.some((p) => p.path === path),
      `expected ${path}, got ${JSON.stringify(problems)}`,
    );
  }
  assert.equal(await total(), n0);
});

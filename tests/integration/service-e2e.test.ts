/**
 * The main job end to end against the real Redis and a real worker process (`src/worker/main.ts`,
 * which forks the training child): a toy job runs SFT then DPO to `completed`, GET /jobs/:id shows both
 * stages while it runs, the artifact is complete and its manifest hashes verify; a running job is
 * cancelled and ends `cancelled` without an artifact; SIGTERM lets the running job finish before the
 * worker exits. Training is tiny (a few steps) via `config`. The tests run in order (one worker).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { readManifest, verifyManifest } from '../../src/storage/manifest.js';
import type { JobStatus } from '../../src/queue/types.js';
import { closedPort, dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('e2e');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-e2e-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
/** A few steps of each stage: the test is about the plumbing, not the learning. */
const TINY = { max_steps: 3, sft: { max_steps: 3 }, batch_size: 2, eval_split_fraction: 0.25, sample_during_eval: false, tensorboard: false, plot: false };

let app: FastifyInstance;
let worker: ChildProcess;
let workerLog = '';
let workerMetricsPort = 0;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function status(jobId: string): Promise<JobStatus> {
  const res = await app.inject({ method: 'GET', url: `/jobs/${jobId}` });
  assert.equal(res.statusCode, 200);
  return res.json() as JobStatus;
}

/** Poll until `done(status)`; `seen` collects every status polled. Bounded by a generous iteration cap. */
async function pollUntil(jobId: string, done: (s: JobStatus) => boolean, seen: JobStatus[] = [], maxPolls = 6000): Promise<JobStatus> {
  for (let i = 0; i < maxPolls; i++) {
    const s = await status(jobId);
    seen.push(s);
    if (done(s)) return s;
    await sleep(40);
  }
  throw new Error(`job ${jobId} did not reach the expected state; worker log:\n${workerLog.slice(-3000)}`);
}

const terminal = (s: JobStatus) => ['completed', 'failed', 'cancelled'].includes(s.state);

before(async () => {
  const env = testEnv(prefix, { STORAGE_DIR: storageDir });
  app = await buildApp({ env });
  await app.ready();
  workerMetricsPort = await closedPort();
  worker = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: storageDir,
      LOG_LEVEL: 'info',
      TFJS_BACKEND: 'wasm',
      WORKER_METRICS_PORT: String(workerMetricsPort),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  worker.stdout!.on('data', (d: Buffer) => (workerLog += d.toString()));
  worker.stderr!.on('data', (d: Buffer) => (workerLog += d.toString()));
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) === 0; i++) {
    assert.equal(worker.exitCode, null, `the worker exited:\n${workerLog}`);
    await sleep(100);
  }
  assert.ok((await app.queueService.queue.getWorkersCount()) > 0, `the worker did not connect:\n${workerLog}`);
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

test('a toy job runs SFT then DPO to completed; the artifact is complete and verifies', async () => {
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'e2e-community', dataset: toy.slice(0, 8), config: TINY },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  const seen: JobStatus[] = [];
  const final = await pollUntil(jobId, terminal, seen);
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog.slice(-3000)}`);

  // GET /jobs showed both training stages while the job ran, in order
  const stagesSeen = [...new Set(seen.filter((s) => s.state === 'active' && s.stage).map((s) => s.stage))];
  assert.ok(stagesSeen.includes('sft'), `stages seen while polling: ${stagesSeen.join(',')}`);
  assert.ok(stagesSeen.includes('dpo'), `stages seen while polling: ${stagesSeen.join(',')}`);
  assert.ok(stagesSeen.indexOf('sft') < stagesSeen.indexOf('dpo'));
  const dpoPolls = seen.filter((s) => s.stage === 'dpo' && s.state === 'active');
  assert.ok(dpoPolls.every((s) => s.progress.totalSteps === 0 || s.progress.step <= s.progress.totalSteps));
  // the recorded timeline: sft → dpo → upload, each closed
  assert.deepEqual(
    final.stages.map((s) => s.stage),
    ['sft', 'dpo', 'upload'],
  );
  assert.ok(final.stages.every((s) => s.finishedAt !== null));
  assert.ok(final.finishedAt && Date.parse(final.finishedAt) >= Date.parse(final.createdAt));
  assert.equal(final.progress.fraction, 1);

  // metrics of both stages, TRL's names
  assert.equal(typeof final.metrics.sft.loss, 'number');
  for (const k of ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins']) {
    assert.ok(Number.isFinite(final.metrics.dpo[k]), `metrics.dpo["${k}"] = ${final.metrics.dpo[k]}`);
  }

  // the artifact: a URI relative to STORAGE_DIR (<communityId>/<jobId>: no server path reaches a client), manifest hashes verify
  assert.ok(final.artifact);
  assert.equal(final.artifact.uri, `e2e-community/${jobId}`);
  const dir = join(storageDir, final.artifact.uri);
  assert.equal(dir, join(storageDir, 'e2e-community', jobId));
  const manifest = await readManifest(dir);
  assert.deepEqual(await verifyManifest(dir, manifest), []);
  const paths = manifest.files.map((f) => f.path);
  for (const p of ['model/model.safetensors', 'model/config.json', 'metrics.jsonl', 'run.json']) {
    assert.ok(paths.includes(p), `artifact lacks ${p}: ${paths.join(', ')}`);
  }
  assert.deepEqual(final.artifact.files.map((f) => f.path).sort(), [...paths].sort());
  const metricsLines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.ok(metricsLines.some((l) => l.stage === 'sft'));
  assert.ok(metricsLines.some((l) => l.stage === 'dpo'));
  // the scratch copy is gone once stored
  assert.equal(existsSync(join(storageDir, '.work', 'e2e-community', jobId)), false);

  // the worker's job statistics reach /metrics
  const m = await app.inject({ method: 'GET', url: '/metrics' });
  assert.match(m.body, /^dpo_jobs_completed_total 1$/m);
  assert.match(m.body, /^dpo_job_stage_duration_seconds_count\{stage="dpo"\} 1$/m);
  // and the worker's own endpoint counts it
  const wm = await (await fetch(`http://127.0.0.1:${workerMetricsPort}/metrics`)).text();
  assert.match(wm, /^dpo_worker_jobs_finished_total\{outcome="completed"\} 1$/m);
  assert.equal((await fetch(`http://127.0.0.1:${workerMetricsPort}/health`)).status, 200);
});

test('cancelling a running job stops training; it ends cancelled without an artifact', async () => {
  const long = { ...TINY, n_epochs: 1000, max_steps: 100000, sft: { n_epochs: 1000, max_steps: 100000 } };
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'e2e-cancel', dataset: toy.slice(8, 16), config: long },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  // wait until training is really under way (a step was reported)
  const running = await pollUntil(jobId, (s) => terminal(s) || (s.state === 'active' && s.progress.step >= 1));
  assert.equal(running.state, 'active');
  const del = await app.inject({ method: 'DELETE', url: `/jobs/${jobId}` });
  assert.equal(del.statusCode, 202);
  assert.equal(del.json().cancelRequested, true);
  const final = await pollUntil(jobId, terminal);
  assert.equal(final.state, 'cancelled');
  assert.equal(final.error?.code, 'JOB_CANCELLED');
  assert.equal(final.artifact, null);
  assert.ok(final.progress.step < 100000);
  assert.equal(existsSync(join(storageDir, 'e2e-cancel', jobId)), false);
  assert.equal(existsSync(join(storageDir, '.work', 'e2e-cancel', jobId)), false);
  // a finished job cannot be cancelled again into another state
  const again = await app.inject({ method: 'DELETE', url: `/jobs/${jobId}` });
  assert.equal(again.statusCode, 202);
  assert.equal(again.json().state, 'cancelled');
});

test('SIGTERM while a job trains: the worker lets it finish, then exits 0', async () => {
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'e2e-drain', dataset: toy.slice(16, 24), config: TINY },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  await pollUntil(jobId, (s) => terminal(s) || (s.state === 'active' && s.stage === 'sft'));
  const exited = new Promise<number | null>((r) => worker.once('exit', (code) => r(code)));
  worker.kill('SIGTERM');
  const final = await pollUntil(jobId, terminal);
  assert.equal(final.state, 'completed', JSON.stringify(final.error));
  assert.ok(final.artifact);
  assert.equal(await exited, 0);
});

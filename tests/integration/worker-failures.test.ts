/**
 * The worker's job handling against the real Redis and a real BullMQ Worker, with a stand-in training
 * runner (no tensors: these tests are about what the job reports, not about learning). Covered: stage and
 * progress reporting, failure codes (timeout, storage, training process crash, a trainer config error),
 * the kept artifact after a storage failure, and the job statistics behind /metrics.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { loadConfig } from '../../src/config/index.js';
import type { JobStatus } from '../../src/queue/types.js';
import { StorageError } from '../../src/storage/errors.js';
import { LocalStorage } from '../../src/storage/local.js';
import { writeManifest } from '../../src/storage/manifest.js';
import type { Storage } from '../../src/storage/storage.js';
import { ChildFailure, type RunChildOptions } from '../../src/worker/child-process.js';
import { startWorker, type WorkerHandle } from '../../src/worker/main.js';
import { dropPrefix, testEnv, toyRows, uniquePrefix } from '../unit/api-helpers.js';

const prefix = uniquePrefix('wf');
const dir = mkdtempSync(join(tmpdir(), 'dpo-wf-'));
let app: FastifyInstance;
let handle: WorkerHandle;

/** Behaviour of the stand-in runner, by community (a job's config must be a valid config: the worker checks it). */
const modes = new Map<string, string>();

/** Stand-in for trainInChild: behaviour chosen by `modes` for the job's community. */
async function fakeTrain(opts: RunChildOptions) {
  const mode = modes.get(opts.request.communityId) ?? 'ok';
  if (mode === 'crash') throw new ChildFailure('WORKER_CHILD_EXITED', 'training process exited (signal SIGKILL) without a result');
  if (mode === 'config') throw new ChildFailure('INVALID_CONFIG', 'loss.beta: must be > 0');
  if (mode === 'slow') {
    for (let step = 1; ; step++) {
      if (opts.signal.aborted) throw new ChildFailure('ABORTED', 'training aborted');
      opts.onProgress({ stage: 'sft', step, totalSteps: 1_000_000, metrics: { loss: 1 } });
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  for (const stage of ['sft', 'dpo'] as const) {
    for (let step = 1; step <= 2; step++) {
      opts.onProgress({
        stage,
        step,
        totalSteps: 2,
        metrics: { loss: 1 / step, 'tokens/s': 100 * step, ...(stage === 'dpo' ? { 'rewards/margins': step } : {}) },
      });
    }
  }
  const out = opts.request.outputDir;
  mkdirSync(join(out, 'model'), { recursive: true });
  writeFileSync(join(out, 'model', 'model.safetensors'), Buffer.alloc(64, 1));
  writeFileSync(join(out, 'metrics.jsonl'), '{"stage":"sft","step":1}\n');
  await writeManifest(out);
  return { artifactDir: out, metrics: { sft: { loss: 0.5 }, dpo: { loss: 0.4, 'rewards/margins': 2 } } };
}

const local = new LocalStorage(join(dir, 'store'));
const storage: Storage = {
  kind: 'local',
  async putArtifact(localDir, communityId, jobId) {
    if (communityId === 'fail-storage') {
      throw new StorageError('STORAGE_UPLOAD_FAILED', 'upload of model/model.safetensors failed after 5 attempts');
    }
    return local.putArtifact(localDir, communityId, jobId);
  },
  verifyArtifact: (communityId, jobId, sha) => local.verifyArtifact(communityId, jobId, sha),
};

async function runJob(communityId: string, fake: string): Promise<JobStatus> {
  modes.set(communityId, fake);
  const { jobId } = await app.queueService.enqueue({ communityId, dataset: toyRows(2, communityId), config: loadConfig() });
  for (let i = 0; i < 2000; i++) {
    const s = await app.queueService.getStatus(jobId);
    if (s && ['completed', 'failed', 'cancelled'].includes(s.state)) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`job ${jobId} did not finish`);
}

before(async () => {
  const env = testEnv(prefix, { STORAGE_DIR: join(dir, 'store'), WORK_DIR: join(dir, 'work'), JOB_TIMEOUT_SECONDS: '1', WORKER_METRICS_PORT: '0' });
  app = await buildApp({ env });
  await app.ready();
  handle = await startWorker({ env, storage, skipBackendCheck: true, train: fakeTrain, cancelPollMs: 50 });
});

after(async () => {
  await handle?.close(5000);
  await app?.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

test('a job reports sft → dpo → upload, merges metrics and stores the artifact', async () => {
  const s = await runJob('ok-community', 'ok');
  assert.equal(s.state, 'completed');
  assert.deepEqual(
    s.stages.map((x) => x.stage),
    ['sft', 'dpo', 'upload'],
  );
  assert.equal(s.metrics.dpo['rewards/margins'], 2);
  assert.equal(s.metrics.sft['tokens/s'], 200);
  // relative to STORAGE_DIR: no server path reaches the client
  assert.equal(s.artifact?.uri, `ok-community/${s.jobId}`);
  assert.ok(existsSync(join(dir, 'store', 'ok-community', s.jobId, 'model', 'model.safetensors')));
  assert.equal(existsSync(join(dir, 'work', 'ok-community', s.jobId)), false);
});

test('training longer than JOB_TIMEOUT_SECONDS fails with JOB_TIMEOUT', async () => {
  const s = await runJob('slow-community', 'slow');
  assert.equal(s.state, 'failed');
  assert.equal(s.error?.code, 'JOB_TIMEOUT');
  assert.match(s.error!.message, /JOB_TIMEOUT_SECONDS=1/);
  assert.ok(s.progress.step > 0);
});

test('a storage failure keeps the trained artifact and names where it is', async () => {
  const s = await runJob('fail-storage', 'ok');
  assert.equal(s.state, 'failed');
  assert.equal(s.error?.code, 'STORAGE_UPLOAD_FAILED');
  const kept = join(dir, 'work', 'fail-storage', s.jobId);
  assert.ok(s.error!.message.includes(`WORK_DIR/fail-storage/${s.jobId}`), s.error!.message);
  assert.ok(!s.error!.message.includes(dir), s.error!.message);
  assert.ok(existsSync(join(kept, 'manifest.json')));
});

test('a crashed training process and a trainer config error keep their codes', async () => {
  const crash = await runJob('crash-community', 'crash');
  assert.equal(crash.state, 'failed');
  assert.equal(crash.error?.code, 'WORKER_CHILD_EXITED');
  const cfg = await runJob('config-community', 'config');
  assert.equal(cfg.error?.code, 'INVALID_CONFIG');
  assert.match(cfg.error!.message, /loss\.beta/);
});

test('/metrics counts completions and failures by code from the workers', async () => {
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  assert.match(res.body, /^dpo_jobs_completed_total 1$/m);
  for (const code of ['JOB_TIMEOUT', 'STORAGE_UPLOAD_FAILED', 'WORKER_CHILD_EXITED', 'INVALID_CONFIG']) {
    assert.match(res.body, new RegExp(`^dpo_jobs_failed_total\\{code="${code}"\\} 1$`, 'm'));
  }
  assert.match(res.body, /^dpo_training_tokens_per_second\{stage="dpo"\} 200$/m);
});

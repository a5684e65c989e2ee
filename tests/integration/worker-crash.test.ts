/**
 * At-least-once delivery and shutdown hand-off, with real worker processes and tiny training:
 * - a worker killed with SIGKILL in the middle of training loses its job when the lock expires; a second
 *   worker takes it up (BullMQ's stalled-job check) and runs it again to `completed`, and the artifact
 *   verifies (the orphaned training child of the dead worker stopped and did not write into the re-run);
 * - a worker told to stop (SIGTERM) whose job outlives WORKER_SHUTDOWN_TIMEOUT_MS checkpoints it, hands it
 *   back to the queue and exits 0; the next worker resumes it from the checkpoint to `completed`.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import type { JobStatus } from '../../src/queue/types.js';
import { verifyManifest } from '../../src/storage/manifest.js';
import { dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('crash');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-crash-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as unknown[];
const workers: ChildProcess[] = [];
const logs = new Map<ChildProcess, string>();
let app: FastifyInstance;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function startWorkerProcess(extra: Record<string, string> = {}): ChildProcess {
  const w = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: storageDir,
      LOG_LEVEL: 'warn',
      TFJS_BACKEND: 'wasm',
      WORKER_METRICS_PORT: '0',
      WORKER_LOCK_DURATION_MS: '2000',
      WORKER_STALLED_INTERVAL_MS: '1000',
      // the start-up backend probe is covered by service-e2e.test.ts
      WORKER_BACKEND_CHECK: 'false',
      ...extra,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  workers.push(w);
  logs.set(w, '');
  const append = (d: Buffer) => logs.set(w, logs.get(w) + d.toString());
  w.stdout!.on('data', append);
  w.stderr!.on('data', append);
  return w;
}

async function poll(jobId: string, done: (s: JobStatus) => boolean): Promise<JobStatus> {
  for (let i = 0; i < 6000; i++) {
    const s = (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
    if (done(s)) return s;
    await sleep(50);
  }
  throw new Error(`job ${jobId} did not reach the expected state`);
}

before(async () => {
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir }) });
  await app.ready();
});

/** SIGTERM every worker still running and wait for them to exit. */
async function stopWorkers(): Promise<void> {
  for (const w of workers) {
    if (w.exitCode !== null || w.signalCode !== null) continue;
    const kill = setTimeout(() => w.kill('SIGKILL'), 20_000);
    const exited = new Promise((r) => w.once('exit', r));
    w.kill('SIGTERM');
    await exited;
    clearTimeout(kill);
  }
}

/** Wait until `n` workers are connected to the queue. */
async function workersConnected(n: number): Promise<void> {
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) < n; i++) await sleep(100);
  assert.equal(await app.queueService.queue.getWorkersCount(), n);
}

after(async () => {
  await stopWorkers();
  await app?.close();
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

test('a job whose worker is SIGKILLed mid-training runs again on another worker and completes', async () => {
  const first = startWorkerProcess();
  await workersConnected(1);
  // Long enough (120 SFT steps) that the SIGKILL always lands mid-training, however fast a step is.
  const config = { max_steps: 1, sft: { max_steps: 120, n_epochs: 60 }, batch_size: 2, sample_during_eval: false, tensorboard: false, plot: false };
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'crash', dataset: toy.slice(0, 8), config } });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  const terminal = (s: JobStatus) => ['completed', 'failed', 'cancelled'].includes(s.state);
  const running = await poll(jobId, (s) => terminal(s) || (s.state === 'active' && s.progress.step >= 1));
  assert.equal(running.state, 'active');
  const dead = new Promise((r) => first.once('exit', r));
  first.kill('SIGKILL');
  await dead;

  startWorkerProcess();
  const final = await poll(jobId, terminal);
  assert.equal(final.state, 'completed', JSON.stringify(final.error));
  const job = await app.queueService.queue.getJob(jobId);
  assert.ok((job?.stalledCounter ?? 0) >= 1, `stalledCounter ${job?.stalledCounter}`);
  assert.deepEqual(await verifyManifest(join(storageDir, final.artifact!.uri)), []);
});

test('SIGTERM past WORKER_SHUTDOWN_TIMEOUT_MS: the job is checkpointed, handed back and resumed elsewhere', async () => {
  const terminal = (s: JobStatus) => ['completed', 'failed', 'cancelled'].includes(s.state);
  await stopWorkers();
  const first = startWorkerProcess({ WORKER_SHUTDOWN_TIMEOUT_MS: '100', LOG_LEVEL: 'info' });
  await workersConnected(1);
  // Long enough (240 SFT steps: 8 pairs, batch 2, 60 epochs) that the SIGTERM always lands mid-training,
  // however fast a step is on this machine.
  const config = {
    max_steps: 1,
    sft: { max_steps: 240, n_epochs: 60 },
    save_steps: 2,
    batch_size: 2,
    sample_during_eval: false,
    tensorboard: false,
    plot: false,
  };
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'handoff', dataset: toy.slice(8, 16), config } });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  const running = await poll(jobId, (s) => terminal(s) || (s.state === 'active' && s.progress.step >= 3));
  assert.equal(running.state, 'active');
  const exited = new Promise<number | null>((r) => first.once('exit', (code) => r(code)));
  first.kill('SIGTERM');
  const code = await exited;
  assert.equal(code, 0, `exit ${code} ${first.signalCode}\n${logs.get(first)}`);
  const back = (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
  assert.equal(back.state, 'queued', `after the hand-off: ${JSON.stringify(back)}`);
  assert.match(logs.get(first)!, /handed back to the queue/);

  const second = startWorkerProcess({ LOG_LEVEL: 'info' });
  const final = await poll(jobId, terminal);
  assert.equal(final.state, 'completed', JSON.stringify(final.error));
  assert.match(logs.get(second)!, /resuming from checkpoint/, 'the second worker resumed from the checkpoint');
  const job = await app.queueService.queue.getJob(jobId);
  assert.equal(job?.stalledCounter ?? 0, 0, 'handed back, not stalled');
  assert.deepEqual(await verifyManifest(join(storageDir, final.artifact!.uri)), []);
});

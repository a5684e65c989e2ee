/**
 * Faults with default request settings: a worker SIGKILLed mid-DPO leaves a checkpoint (service jobs checkpoint
 * by time, JOB_CHECKPOINT_EVERY_SECONDS, and at each stage end, without the request asking), and the job
 * resumes from it on another worker — DPO continues from the checkpoint's step, SFT is not trained again — and
 * completes exactly once (one job.succeeded, one artifact that verifies). Real Redis, real worker processes.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import type { JobStatus } from '../../src/queue/types.js';
import { verifyManifest } from '../../src/storage/manifest.js';
import { dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('killdpo');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-killdpo-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as unknown[];
const workers: ChildProcess[] = [];
let app: FastifyInstance;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function startWorkerProcess(): ChildProcess {
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
      WORKER_LOCK_DURATION_MS: '4000',
      WORKER_STALLED_INTERVAL_MS: '1000',
      WORKER_BACKEND_CHECK: 'false',
    },
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  workers.push(w);
  return w;
}

async function status(jobId: string): Promise<JobStatus> {
  return (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
}

before(async () => {
  // the service default, shortened so a mid-DPO checkpoint exists within a few steps
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, JOB_CHECKPOINT_EVERY_SECONDS: '1' }) });
  await app.ready();
});

after(async () => {
  for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
  await app?.close();
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

test('SIGKILL mid-DPO with default settings: the job resumes from its checkpoint and completes once', async () => {
  const first = startWorkerProcess();
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) < 1; i++) await sleep(100);
  // no save_steps, no checkpoint setting: only what a client would send
  // a stage ends at whichever of n_epochs and max_steps comes first: 100 epochs of 4 steps, cut at 400, so DPO
  // lasts far longer than the 1 s checkpoint interval however fast the machine (one epoch, 4 steps, took 81 ms
  // here, and the job then finished before the poll saw a mid-DPO checkpoint)
  const config = { max_steps: 400, n_epochs: 100, sft: { max_steps: 2 }, batch_size: 2, sample_during_eval: false, tensorboard: false, plot: false };
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'killdpo', dataset: toy.slice(0, 8), config } });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  const ckptDir = join(storageDir, '.work', 'killdpo', jobId, 'checkpoints');
  const dpoCheckpoints = () =>
    existsSync(ckptDir) ? readdirSync(ckptDir).filter((d) => d.startsWith('checkpoint-dpo-') && existsSync(join(ckptDir, d, 'state.json'))) : [];
  // wait until DPO runs and has a time-based checkpoint past step 0
  for (let i = 0; i < 6000; i++) {
    const s = await status(jobId);
    assert.ok(!['completed', 'failed', 'cancelled'].includes(s.state), `ended before the kill: ${JSON.stringify(s.error)}`);
    if (s.stage === 'dpo' && dpoCheckpoints().some((d) => Number(d.split('-').pop()) > 0)) break;
    await sleep(50);
  }
  const saved = Math.max(...dpoCheckpoints().map((d) => Number(d.split('-').pop())));
  assert.ok(saved > 0, 'a mid-DPO checkpoint');
  const dead = new Promise((r) => first.once('exit', r));
  first.kill('SIGKILL');
  await dead;

  startWorkerProcess();
  let final: JobStatus | undefined;
  for (let i = 0; i < 12000; i++) {
    final = await status(jobId);
    if (['completed', 'failed', 'cancelled'].includes(final.state)) break;
    await sleep(50);
  }
  assert.equal(final?.state, 'completed', JSON.stringify(final?.error));
  // from the event log (a job's progress in Redis still shows the killed attempt's last report for a moment
  // after the second start, so it cannot say where the second attempt began)
  type Ev = { id: string; type: string; data: Record<string, unknown> };
  const events = async (type: string) => (await app.inject({ method: 'GET', url: `/jobs/${jobId}/events?type=${type}&limit=1000` })).json().data as Ev[];
  const later = (a: string, b: string) => {
    const [am, as] = a.split('-').map(Number) as [number, number];
    const [bm, bs] = b.split('-').map(Number) as [number, number];
    return am > bm || (am === bm && as > bs);
  };
  // once: one job.succeeded, the second start says it resumed, one verified artifact
  assert.equal((await events('job.succeeded')).length, 1);
  const starts = await events('job.started');
  assert.equal(starts.length, 2, JSON.stringify(starts));
  assert.equal(starts[1]!.data.resume, true);
  // The second attempt first replays the run's history from its checkpoint (the metrics records up to the
  // checkpoint's step and the checkpoints it restored), then trains on. So over the whole second attempt each
  // training step appears once, SFT's two and DPO's 400: a restart from scratch would repeat steps, and a
  // resume from an older checkpoint would announce one below the step seen before the kill.
  const trained = (await events('metrics')).filter((e) => later(e.id, starts[1]!.id) && e.data.loss !== undefined);
  const steps = (stage: string) => trained.filter((e) => e.data.stage === stage).map((e) => Number(e.data.step));
  assert.deepEqual(steps('sft'), [1, 2], 'SFT trained once');
  assert.deepEqual(
    steps('dpo'),
    Array.from({ length: 400 }, (_, i) => i + 1),
    'each DPO step once',
  );
  const checkpoints = (await events('checkpoint.saved')).filter((e) => later(e.id, starts[1]!.id) && e.data.stage === 'dpo');
  const below = checkpoints.map((e) => Number(e.data.step)).filter((st) => st < saved);
  assert.deepEqual(below, [], `the second attempt resumed from a checkpoint older than step ${saved}`);
  assert.ok(
    checkpoints.some((e) => Number(e.data.step) > saved),
    'the second attempt trained past the checkpoint',
  );
  assert.deepEqual(await verifyManifest(join(storageDir, final!.artifact!.uri)), []);
});

/**
 * A request's config is resolved once per process: the API (real HTTP inject) resolves it and queues the
 * resolved object, the worker process validates that again once, the training child once (and never a
 * second time inside runTraining). Counted with loadConfig's in-process counter and, across processes, with
 * DPO_CONFIG_TRACE (each loadConfig appends `<pid> <entry>` to the file). Real Redis, a real worker process,
 * a real training child on the toy data (a few steps).
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
import { configResolutions } from '../../src/config/index.js';
import type { JobStatus } from '../../src/queue/types.js';
import { closedPort, dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('once');
const dir = mkdtempSync(join(tmpdir(), 'dpo-once-'));
const trace = join(dir, 'config-trace.txt');
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
const TINY = {
  max_steps: 2,
  sft: { max_steps: 2 },
  batch_size: 2,
  eval_split_fraction: 0.25,
  sample_during_eval: false,
  tensorboard: false,
  plot: false,
  beta: 0.25,
};

let app: FastifyInstance;
let worker: ChildProcess;
let workerLog = '';

before(async () => {
  process.env.DPO_CONFIG_TRACE = trace;
  const env = testEnv(prefix, { STORAGE_DIR: join(dir, 'store') });
  app = await buildApp({ env });
  await app.ready();
  worker = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: join(dir, 'store'),
      LOG_LEVEL: 'warn',
      TFJS_BACKEND: 'wasm',
      WORKER_METRICS_PORT: String(await closedPort()),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  worker.stdout!.on('data', (d: Buffer) => (workerLog += d.toString()));
  worker.stderr!.on('data', (d: Buffer) => (workerLog += d.toString()));
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) === 0; i++) {
    assert.equal(worker.exitCode, null, `the worker exited:\n${workerLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  delete process.env.DPO_CONFIG_TRACE;
  if (worker && worker.exitCode === null) {
    worker.kill('SIGTERM');
    await new Promise((r) => worker.once('exit', r));
  }
  await app?.close();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

test('API, worker and training child each resolve the request config exactly once; the resolved object travels', async () => {
  const before = configResolutions();
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'once', dataset: toy.slice(0, 8), config: TINY } });
  assert.equal(res.statusCode, 202, res.body);
  assert.equal(configResolutions() - before, 1, 'the API resolves the request config once');
  const { jobId } = res.json();
  // the job data holds the resolved config (loss group expanded, shorthand moved into it)
  const job = await app.queueService.queue.getJob(jobId);
  assert.equal(job?.data.config.loss.beta, 0.25);
  assert.deepEqual(job?.data.config.loss.loss_type, ['sigmoid']);
  let s: JobStatus | undefined;
  for (let i = 0; i < 3000; i++) {
    s = (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
    if (['completed', 'failed', 'cancelled'].includes(s.state)) break;
    await new Promise((r) => setTimeout(r, 40));
  }
  assert.equal(s?.state, 'completed', `${JSON.stringify(s?.error)}\n${workerLog.slice(-3000)}`);
  assert.equal(configResolutions() - before, 1, 'nothing else in the API process resolved it');

  const lines = readFileSync(trace, 'utf8').trim().split('\n');
  const byPid = new Map<string, string[]>();
  for (const l of lines) {
    const [pid, entry = ''] = l.split(' ');
    byPid.set(pid!, [...(byPid.get(pid!) ?? []), entry]);
  }
  assert.deepEqual(byPid.get(String(process.pid))?.length, 1, `API process: ${lines.join(' | ')}`);
  const workerEntries = byPid.get(String(worker.pid));
  assert.deepEqual(workerEntries?.length, 1, `worker process: ${lines.join(' | ')}`);
  const children = [...byPid.entries()].filter(([pid]) => pid !== String(process.pid) && pid !== String(worker.pid));
  assert.equal(children.length, 1, `one training child: ${lines.join(' | ')}`);
  assert.equal(children[0]![1].length, 1, 'the training child resolves once');
  assert.match(children[0]![1][0]!, /worker\/child\.(ts|js)$/);

  // what trained is what the API resolved (plus the worker's backend)
  const run = JSON.parse(readFileSync(join(dir, 'store', 'once', jobId, 'run.json'), 'utf8')) as { config: Record<string, unknown> };
  assert.deepEqual({ ...run.config, backend: null }, { ...job!.data.config, backend: null });
  assert.equal(run.config.backend, 'wasm');
});

test('dpo train resolves its file and overrides once, and runTraining does not resolve again', async () => {
  const { runTrainCli } = await import('../../src/cli/commands/train.js');
  const before = configResolutions();
  const out = join(dir, 'cli-run');
  const write = process.stdout.write;
  process.stdout.write = (() => true) as typeof process.stdout.write;
  let code: number;
  try {
    code = await runTrainCli(
      ['max_steps=1', 'sft.max_steps=1', 'batch_size=2', 'sample_during_eval=false', 'tensorboard=false', 'plot=false', 'progress_bar=false'],
      { outputDir: out },
    );
  } finally {
    process.stdout.write = write;
  }
  assert.equal(code, 0);
  assert.equal(configResolutions() - before, 1);
});

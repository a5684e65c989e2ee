/**
 * Training methods and what a job reports about them, against the real Redis, a real worker process and a
 * listening API (real HTTP): a `method: "sft"` job trains SFT only (no DPO step in its metrics, no DPO
 * stage) and completes with the SFT model as its artifact; more than 10% of the pairs truncated reaches the
 * event log and the job status; Bull Board gets a number as the job's progress while GET /jobs/:id keeps the
 * rich progress object; a config that cannot fit in memory is reported by the dry run (200, fits=false),
 * queued by the trigger and failed by the worker with INSUFFICIENT_MEMORY before any step.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { startWorker, type WorkerHandle } from './worker-harness.js';
import { progressPercent } from '../../src/queue/status.js';
import type { JobEvent } from '../../src/queue/events.js';
import type { JobStatus } from '../../src/queue/types.js';
import { dropPrefix, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('api-methods');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-api-methods-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
const TINY = { max_steps: 3, sft: { max_steps: 2 }, batch_size: 2, eval_split_fraction: 0.25, sample_during_eval: false, tensorboard: false, plot: false };

let app: FastifyInstance;
let base = '';
let worker: WorkerHandle | undefined;
const workerLog = (): string => worker?.log() ?? '';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(`${base}${path}`);
  assert.equal(res.status, 200, `${path}: ${await res.clone().text()}`);
  return (await res.json()) as T;
}

async function trigger(payload: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${base}/trigger-finetune`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload) });
  const body = (await res.json()) as { jobId: string };
  assert.equal(res.status, 202, JSON.stringify(body));
  return body.jobId;
}

async function waitTerminal(jobId: string): Promise<JobStatus> {
  for (let i = 0; i < 6000; i++) {
    const s = await getJson<JobStatus>(`/jobs/${jobId}`);
    if (['completed', 'failed', 'cancelled'].includes(s.state)) return s;
    await sleep(50);
  }
  throw new Error(`job ${jobId} did not finish; worker log:\n${workerLog().slice(-3000)}`);
}

async function events(jobId: string): Promise<JobEvent[]> {
  return (await getJson<{ data: JobEvent[] }>(`/jobs/${jobId}/events?limit=1000`)).data;
}

const ADMIN = 'admin-key-methods-0123456789';

before(async () => {
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, ADMIN_API_KEYS: ADMIN }), surface: { eventsPollMs: 50 } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  worker = await startWorker(app.queueService.queue, prefix, storageDir);
});

after(async () => {
  await worker?.stop();
  await app?.close();
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

test('method "sft": the job trains SFT only (no DPO step in its metrics, no DPO stage) and completes with an artifact', async () => {
  const jobId = await trigger({ communityId: 'methods-sft', dataset: toy.slice(0, 8), config: TINY, method: 'sft' });
  const final = await waitTerminal(jobId);
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog().slice(-3000)}`);
  assert.equal(final.method, 'sft');

  const metrics = (await getJson<{ data: Array<Record<string, unknown>> }>(`/jobs/${jobId}/metrics`)).data;
  const stagesLogged = new Set(metrics.map((r) => r.stage));
  assert.ok(stagesLogged.has('sft'), `SFT rows logged: ${JSON.stringify(metrics.slice(0, 3))}`);
  assert.ok(!stagesLogged.has('dpo'), `no DPO row: ${JSON.stringify(metrics.filter((r) => r.stage === 'dpo').slice(0, 2))}`);
  const started = (await events(jobId)).filter((e) => e.type === 'stage.started').map((e) => e.data.stage);
  assert.deepEqual(started, ['sft', 'upload']);

  const files = (await getJson<{ data: Array<{ path: string; size: number }> }>(`/jobs/${jobId}/files`)).data;
  const model = files.find((f) => f.path === 'model/model.safetensors');
  assert.ok(model && model.size > 0, `the artifact has the model: ${files.map((f) => f.path).join(', ')}`);
  assert.ok(final.artifact && final.artifact.files.length === files.length);
});

test('more than 10% of the pairs truncated: data.ready carries the counts, a warning event names max_length, GET /jobs/:id shows data', async () => {
  const config = { ...TINY, max_length: 20, max_prompt_length: 8 };
  const payload = { communityId: 'methods-trunc', dataset: toy.slice(0, 8), config, method: 'sft' };
  // the dry run's data phase is the worker's: its truncated count is what the job must report
  const plan = await fetch(`${base}/trigger-finetune?dryRun=true`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(payload),
  });
  assert.equal(plan.status, 200, await plan.clone().text());
  const planned = ((await plan.json()) as { data: { train: number; eval: number; truncated: number } }).data;
  assert.ok(planned.truncated / (planned.train + planned.eval) > 0.1, `the test's max_length truncates > 10%: ${JSON.stringify(planned)}`);

  const jobId = await trigger(payload);
  const final = await waitTerminal(jobId);
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog().slice(-3000)}`);
  const log = await events(jobId);
  const ready = log.find((e) => e.type === 'data.ready');
  assert.ok(ready, log.map((e) => e.type).join(', '));
  assert.equal(ready.data.truncated, planned.truncated);
  assert.equal(ready.data.truncated_fraction, planned.truncated / (planned.train + planned.eval));
  const warning = log.find((e) => e.type === 'warning' && /max_length=20\b/.test(e.message));
  assert.ok(warning, `a warning naming max_length: ${JSON.stringify(log.filter((e) => e.type === 'warning'))}`);
  assert.equal(warning.level, 'warn');

  assert.ok(final.data, 'the status has data');
  assert.equal(final.data.rows, 8);
  assert.equal(final.data.train, planned.train);
  assert.equal(final.data.eval, planned.eval);
  assert.equal(final.data.truncated, planned.truncated);
  assert.equal(final.data.truncatedFraction, ready.data.truncated_fraction);
  assert.equal(final.data.maxLength, 20);
  assert.ok(
    final.data.warnings.some((w) => /max_length=20\b/.test(w)),
    JSON.stringify(final.data.warnings),
  );
});

test('Bull Board shows the job progress as a number 0-100; BullMQ keeps the rich object GET /jobs/:id reads', async () => {
  const jobId = await trigger({ communityId: 'methods-board', dataset: toy.slice(0, 8), config: TINY });
  const seen: unknown[] = [];
  const boardProgress = async (): Promise<unknown> => {
    const res = await fetch(`${base}/admin/queues/api/queues?activeQueue=finetune&status=latest&page=1`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { queues: Array<{ name: string; jobs: Array<{ id: string; progress: unknown }> }> };
    return body.queues.find((q) => q.name === 'finetune')?.jobs.find((j) => j.id === jobId)?.progress;
  };
  let final: JobStatus | null = null;
  for (let i = 0; i < 6000 && !final; i++) {
    const s = await getJson<JobStatus>(`/jobs/${jobId}`);
    const p = await boardProgress();
    if (p !== undefined) seen.push(p);
    if (['completed', 'failed', 'cancelled'].includes(s.state)) final = s;
    else await sleep(50);
  }
  assert.ok(final, `job ${jobId} did not finish`);
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog().slice(-3000)}`);
  assert.ok(seen.length > 0);
  for (const p of seen) assert.ok(typeof p === 'number' && p >= 0 && p <= 100, `board progress ${JSON.stringify(p)}`);
  const numbers = seen as number[];
  for (let i = 1; i < numbers.length; i++) assert.ok(numbers[i]! >= numbers[i - 1]!, `never goes back: ${numbers.join(',')}`);
  assert.equal(numbers.at(-1), 100, 'a completed job is at 100%');

  // BullMQ's job.progress is still the object, the board's number is derived from it
  const job = await app.queueService.queue.getJob(jobId);
  assert.ok(job && typeof job.progress === 'object', `job.progress ${JSON.stringify(job?.progress)}`);
  const rich = job.progress as unknown as { stage: string; percent: number; stages: unknown[]; metrics: { sft: object; dpo: object } };
  assert.equal(rich.percent, 100);
  assert.equal(progressPercent(job.progress), await boardProgress());
  // and GET /jobs/:id keeps its fields
  assert.equal(final.progress.stage, 'upload');
  assert.equal(final.progress.fraction, 1);
  assert.deepEqual(
    final.stages.map((s) => s.stage),
    ['sft', 'dpo', 'upload'],
  );
  assert.ok(Object.keys(final.metrics.dpo).includes('rewards/accuracies'), JSON.stringify(final.metrics.dpo));
  assert.ok(final.trainedTokens > 0);
});

test('a config that cannot fit: the dry run answers fits=false, the trigger queues it, the worker fails it INSUFFICIENT_MEMORY before any step', async () => {
  // 2 x batch_size x max_length tokens of activations on every layer: terabytes, whatever this host has
  const config = { ...TINY, batch_size: 1_000_000, max_length: 512, max_prompt_length: 256 };
  const payload = { communityId: 'methods-oom', dataset: toy.slice(0, 8), config };
  const plan = await fetch(`${base}/trigger-finetune?dryRun=true`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(payload),
  });
  // the API layer does not refuse it: the dry run reports it, the worker's host decides
  assert.equal(plan.status, 200, await plan.clone().text());
  const planned = (await plan.json()) as { memory: { fits: boolean; totalBytes: number; availableBytes: number }; notes: string[] };
  assert.equal(planned.memory.fits, false);
  assert.ok(planned.memory.totalBytes > planned.memory.availableBytes);
  assert.ok(
    planned.notes.some((n) => n.includes('INSUFFICIENT_MEMORY')),
    JSON.stringify(planned.notes),
  );

  const jobId = await trigger(payload);
  const final = await waitTerminal(jobId);
  assert.equal(final.state, 'failed', JSON.stringify(final));
  assert.equal(final.error?.code, 'INSUFFICIENT_MEMORY', JSON.stringify(final.error));
  assert.match(final.error?.message ?? '', /estimated peak memory [\d.]+ [GT]iB .* exceeds the [\d.]+ GiB available/);
  assert.match(final.error?.message ?? '', /would fit: .*batch_size=\d+/);
  // refused before the data phase and any step: no metrics, no training stage, no data.ready
  const log = await events(jobId);
  const types = log.map((e) => e.type);
  assert.ok(types.includes('model.loading'), types.join(', '));
  for (const t of ['data.ready', 'stage.started', 'metrics']) assert.ok(!types.includes(t as JobEvent['type']), `${t} in ${types.join(', ')}`);
  const failed = log.find((e) => e.type === 'job.failed');
  assert.equal(failed?.data.code, 'INSUFFICIENT_MEMORY');
  assert.equal((await getJson<{ data: unknown[] }>(`/jobs/${jobId}/metrics`)).data.length, 0);
});

test('dry run of method online_dpo: SFT on the rows with a chosen, then online DPO steps over the prompts; nothing queued', async () => {
  const online = { num_samples_per_step: 2, max_new_tokens: 12, judge: { type: 'rule', rules: [{ type: 'keywords', words: ['happy'], weight: 1 }] } };
  const config = { ...TINY, max_length: 64, max_prompt_length: 32, online_dpo: online };
  const before = await app.queueService.queue.getJobCounts();
  const plan = async (dataset: unknown[]) => {
    const res = await fetch(`${base}/trigger-finetune?dryRun=true`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ communityId: 'methods-online', method: 'online_dpo', dataset, config }),
    });
    const body = (await res.json()) as {
      method: string;
      data: { train: number; eval: number; prompts?: { train: number; eval: number } };
      stages: Array<{ stage: string; steps: number; pairsPerStep: number; tokens: number }>;
      notes: string[];
    };
    assert.equal(res.status, 200, JSON.stringify(body));
    return body;
  };
  const withChosen = await plan(toy.slice(0, 8));
  assert.equal(withChosen.method, 'online_dpo');
  assert.ok(withChosen.data.prompts, JSON.stringify(withChosen.data));
  assert.equal(withChosen.data.prompts.train + withChosen.data.prompts.eval, 8);
  // every toy row has a chosen: the SFT pairs are the train prompts
  assert.equal(withChosen.data.train, withChosen.data.prompts.train);
  assert.deepEqual(
    withChosen.stages.map((s) => [s.stage, s.steps, s.pairsPerStep]),
    [
      ['sft', TINY.sft.max_steps, TINY.batch_size],
      ['dpo', TINY.max_steps, TINY.batch_size],
    ],
  );
  const dpo = withChosen.stages[1]!;
  // 2 x (prompt + completion) per prompt, completions at most max_new_tokens: within the max_length bound
  assert.ok(dpo.tokens > 0 && dpo.tokens <= dpo.steps * dpo.pairsPerStep * 2 * 64, `dpo tokens ${dpo.tokens}`);
  assert.ok(
    withChosen.notes.some((n) => n.includes('2 completions of at most 12 new tokens')),
    JSON.stringify(withChosen.notes),
  );

  // bare prompts: no SFT target, SFT is skipped
  const bare = await plan(toy.slice(0, 8).map((r) => ({ prompt: r.prompt })));
  assert.equal(bare.data.train, 0);
  assert.deepEqual(
    bare.stages.map((s) => s.stage),
    ['dpo'],
  );
  assert.equal(bare.stages[0]!.tokens, dpo.tokens, 'the DPO plan depends on the prompts only');
  assert.ok(bare.notes.some((n) => /SFT stage is skipped/.test(n)));
  assert.deepEqual(await app.queueService.queue.getJobCounts(), before, 'a dry run queues nothing');
});

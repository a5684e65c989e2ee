/**
 * The job surface against the real Redis, a real worker process and a listening API: a toy job's event
 * log in order (paged, and over SSE including a resume with Last-Event-ID), metrics history equal to the
 * artifact's metrics.jsonl (JSON and CSV), checkpoints saved and listed (kept in the artifact only with
 * keep_checkpoints), file download of model/model.safetensors equal to the stored bytes and its manifest
 * sha256 (and a Range request), the job list newest first with cursor pagination and filters.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { startWorker, type WorkerHandle } from './worker-harness.js';
import type { JobEvent } from '../../src/queue/events.js';
import type { JobStatus } from '../../src/queue/types.js';
import { dropPrefix, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('api-jobs');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-api-jobs-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
const TINY = {
  max_steps: 4,
  sft: { max_steps: 3 },
  batch_size: 2,
  eval_split_fraction: 0.25,
  eval_every: 4,
  sample_during_eval: false,
  tensorboard: false,
  plot: false,
};

let app: FastifyInstance;
let base = '';
let worker: WorkerHandle | undefined;
const workerLog = (): string => worker?.log() ?? '';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function status(jobId: string): Promise<JobStatus> {
  const res = await app.inject({ method: 'GET', url: `/jobs/${jobId}` });
  assert.equal(res.statusCode, 200, res.body);
  return res.json() as JobStatus;
}

async function waitTerminal(jobId: string): Promise<JobStatus> {
  for (let i = 0; i < 3000; i++) {
    const s = await status(jobId);
    if (['completed', 'failed', 'cancelled'].includes(s.state)) return s;
    await sleep(50);
  }
  throw new Error(`job ${jobId} did not finish; worker log:\n${workerLog().slice(-3000)}`);
}

async function trigger(payload: Record<string, unknown>): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload });
  assert.equal(res.statusCode, 202, res.body);
  return res.json().jobId as string;
}

/** Read an SSE stream until `until(event)` or `max` events; returns the events and their SSE ids. */
async function readSse(
  url: string,
  headers: Record<string, string>,
  until: (e: JobEvent) => boolean,
): Promise<Array<{ sseId: string; sseEvent: string; event: JobEvent }>> {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), 120_000);
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: ctrl.signal });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const out: Array<{ sseId: string; sseEvent: string; event: JobEvent }> = [];
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let sseId = '';
        let sseEvent = '';
        let data = '';
        for (const line of frame.split('\n')) {
          if (line.startsWith('id: ')) sseId = line.slice(4);
          else if (line.startsWith('event: ')) sseEvent = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (!data) continue;
        const event = JSON.parse(data) as JobEvent;
        out.push({ sseId, sseEvent, event });
        if (until(event)) return out;
      }
    }
  } finally {
    clearTimeout(timer);
    ctrl.abort();
  }
  return out;
}

before(async () => {
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir }), surface: { eventsPollMs: 50 } });
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

let doneJob = '';
let doneStatus: JobStatus | null = null;
let doneDataReady: Record<string, unknown> = {};
let doneStageSteps: number[] = [];

test('a toy job: SSE streams its events live in order; paged events, metrics, checkpoints and files agree with the artifact', async () => {
  const jobId = await trigger({ communityId: 'jobs-a', dataset: toy.slice(0, 8), config: { ...TINY, save_steps: 2 }, suffix: 'toy-run' });
  doneJob = jobId;
  // live: from the start until the job's outcome
  const live = await readSse(`${base}/jobs/${jobId}/events`, {}, (e) => e.type === 'job.succeeded' || e.type === 'job.failed');
  const final = await waitTerminal(jobId);
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog().slice(-3000)}`);
  assert.equal(final.suffix, 'toy-run');
  assert.equal(final.method, 'sft+dpo');
  assert.ok(final.trainedTokens > 0, `trainedTokens ${final.trainedTokens}`);

  // SSE frames: id = event id, event = type, strictly increasing ids
  for (const f of live) {
    assert.equal(f.sseId, f.event.id);
    assert.equal(f.sseEvent, f.event.type);
  }
  const types = live.map((f) => f.event.type);
  const order = [
    'job.queued',
    'job.started',
    'model.loading',
    'data.ready',
    'stage.started',
    'checkpoint.saved',
    'stage.completed',
    'upload.completed',
    'job.succeeded',
  ];
  let at = -1;
  for (const t of order) {
    const i = types.indexOf(t, at + 1);
    assert.ok(i > at, `${t} after index ${at} in ${types.join(', ')}`);
    at = i;
  }
  const stages = live.filter((f) => f.event.type === 'stage.started').map((f) => f.event.data.stage);
  assert.deepEqual(stages, ['sft', 'dpo', 'upload']);
  const dataReady = live.find((f) => f.event.type === 'data.ready')!.event.data;
  assert.equal(dataReady.train, 6);
  assert.equal(dataReady.eval, 2);
  assert.ok(types.includes('eval.completed'));
  doneStatus = final;
  doneDataReady = dataReady;
  doneStageSteps = live.filter((f) => f.event.type === 'stage.started' && f.event.data.stage !== 'upload').map((f) => Number(f.event.data.totalSteps));

  // paged: the same events in the same order, across pages of 3
  const paged: JobEvent[] = [];
  let after: string | undefined;
  for (let i = 0; i < 200; i++) {
    const res = await app.inject({ method: 'GET', url: `/jobs/${jobId}/events?limit=3${after ? `&after=${after}` : ''}` });
    assert.equal(res.statusCode, 200);
    const page = res.json() as { data: JobEvent[]; hasMore: boolean; nextCursor: string | null };
    assert.ok(page.data.length <= 3);
    paged.push(...page.data);
    if (!page.hasMore) break;
    after = page.nextCursor!;
  }
  assert.deepEqual(
    paged.slice(0, live.length).map((e) => e.id),
    live.map((f) => f.event.id),
  );
  const ids = paged.map((e) => e.id);
  assert.deepEqual(
    [...ids].sort((a, b) =>
      BigInt(a.split('-')[0]!) === BigInt(b.split('-')[0]!)
        ? Number(a.split('-')[1]) - Number(b.split('-')[1])
        : Number(BigInt(a.split('-')[0]!) - BigInt(b.split('-')[0]!)),
    ),
    ids,
  );
  assert.equal(new Set(ids).size, ids.length);

  // SSE resume with Last-Event-ID: exactly the events after it
  const cut = live[Math.floor(live.length / 2)]!.event.id;
  const resumed = await readSse(`${base}/jobs/${jobId}/events`, { 'last-event-id': cut }, (e) => e.type === 'job.succeeded');
  const expectAfter = paged.slice(paged.findIndex((e) => e.id === cut) + 1);
  assert.deepEqual(
    resumed.map((f) => f.event.id),
    expectAfter.slice(0, resumed.length).map((e) => e.id),
  );
  assert.equal(resumed.at(-1)!.event.type, 'job.succeeded');
  const bad = await app.inject({ method: 'GET', url: `/jobs/${jobId}/events`, headers: { accept: 'text/event-stream', 'last-event-id': 'nope' } });
  assert.equal(bad.statusCode, 400);

  // metrics history = the artifact's metrics.jsonl, and the live `metrics` events carried the same rows
  const dir = join(storageDir, 'jobs-a', jobId);
  const fileRows = readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const hist = await app.inject({ method: 'GET', url: `/jobs/${jobId}/metrics` });
  assert.equal(hist.statusCode, 200);
  assert.equal(hist.json().source, 'artifact');
  assert.deepEqual(hist.json().data, fileRows);
  assert.deepEqual(
    live.filter((f) => f.event.type === 'metrics').map((f) => f.event.data),
    fileRows,
  );
  const dpoAfter1 = await app.inject({ method: 'GET', url: `/jobs/${jobId}/metrics?stage=dpo&after_step=1` });
  assert.deepEqual(
    dpoAfter1.json().data,
    fileRows.filter((r) => r.stage === 'dpo' && Number(r.step) > 1),
  );
  const csv = await app.inject({ method: 'GET', url: `/jobs/${jobId}/metrics`, headers: { accept: 'text/csv' } });
  assert.match(csv.headers['content-type'] as string, /^text\/csv/);
  const lines = csv.body.trim().split('\n');
  assert.equal(lines.length, fileRows.length + 1);
  const header = lines[0]!.split(',');
  const lossCol = header.indexOf('loss');
  assert.ok(lossCol >= 0);
  assert.equal(Number(lines[1]!.split(',')[lossCol]), fileRows[0]!.loss);

  // checkpoints: saved every 2 steps and at each stage end, listed with their metrics, not in the artifact
  const cps = (await app.inject({ method: 'GET', url: `/jobs/${jobId}/checkpoints` })).json().data as Array<Record<string, unknown>>;
  assert.ok(cps.some((c) => c.stage === 'sft') && cps.some((c) => c.stage === 'dpo'), JSON.stringify(cps));
  const lastDpo = cps.filter((c) => c.stage === 'dpo').at(-1)!;
  assert.equal(typeof (lastDpo.metrics as Record<string, unknown>).loss, 'number');
  assert.ok(cps.every((c) => c.inArtifact === false));
  assert.ok(!final.artifact!.files.some((f) => f.path.startsWith('checkpoints/')), 'checkpoints left out of the artifact');

  // files: the manifest's list, and model/model.safetensors byte for byte (sha256 = manifest)
  const files = (await app.inject({ method: 'GET', url: `/jobs/${jobId}/files` })).json() as {
    complete: boolean;
    data: Array<{ path: string; size: number; sha256: string; url: string }>;
  };
  assert.equal(files.complete, true);
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { files: Array<{ path: string; sha256: string; size: number }> };
  assert.deepEqual(
    files.data.map((f) => f.path),
    manifest.files.map((f) => f.path),
  );
  const st = files.data.find((f) => f.path === 'model/model.safetensors')!;
  const dl = await fetch(`${base}${st.url}`);
  assert.equal(dl.status, 200);
  const bytes = Buffer.from(await dl.arrayBuffer());
  assert.deepEqual(bytes, readFileSync(join(dir, 'model/model.safetensors')));
  const sha = createHash('sha256').update(bytes).digest('hex');
  assert.equal(sha, manifest.files.find((f) => f.path === 'model/model.safetensors')!.sha256);
  assert.equal(dl.headers.get('x-checksum-sha256'), sha);
  // a Range request: 206 and exactly those bytes
  const part = await fetch(`${base}${st.url}`, { headers: { range: 'bytes=8-99' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), `bytes 8-99/${bytes.length}`);
  assert.deepEqual(Buffer.from(await part.arrayBuffer()), bytes.subarray(8, 100));
  assert.equal((await fetch(`${base}${st.url}`, { headers: { range: `bytes=${bytes.length}-` } })).status, 416);
  // strict paths: only manifest files; traversal and unknown files are 404
  for (const p of ['../../../etc/passwd', 'model/..%2F..%2Fmanifest.json', 'checkpoints/x/state.json', 'nope.bin', '%2e%2e/x']) {
    const r = await fetch(`${base}/jobs/${jobId}/files/${p}`);
    assert.equal(r.status, 404, p);
  }
});

test('keep_checkpoints: true keeps them in the artifact and the manifest', async () => {
  const jobId = await trigger({ communityId: 'jobs-a', dataset: toy.slice(8, 16), config: { ...TINY, save_steps: 2, keep_checkpoints: true } });
  const final = await waitTerminal(jobId);
  assert.equal(final.state, 'completed', JSON.stringify(final.error));
  const paths = final.artifact!.files.map((f) => f.path);
  assert.ok(
    paths.some((p) => p.startsWith('checkpoints/')),
    paths.join(', '),
  );
  const cps = (await app.inject({ method: 'GET', url: `/jobs/${jobId}/checkpoints` })).json().data as Array<{ name: string; inArtifact: boolean }>;
  // the last save_total_limit (2) survive pruning and are in the artifact
  assert.equal(cps.filter((c) => c.inArtifact).length, 2);
});

test('GET /jobs: newest first, cursor pages without repeats, filters by community and state, no rows', async () => {
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    ids.push(await trigger({ communityId: 'jobs-list', dataset: toy.slice(16 + i, 18 + i), config: { ...TINY, max_steps: 1, sft: { enabled: false } } }));
    await sleep(3);
  }
  const seen: string[] = [];
  let after: string | null = null;
  for (let i = 0; i < 10; i++) {
    const url: string = `/jobs?communityId=jobs-list&limit=2${after ? `&after=${after}` : ''}`;
    const res = await app.inject({ method: 'GET', url });
    assert.equal(res.statusCode, 200, res.body);
    const page = res.json() as { data: JobStatus[]; hasMore: boolean; nextCursor: string | null };
    assert.ok(page.data.length <= 2);
    for (const j of page.data) {
      assert.equal(j.communityId, 'jobs-list');
      assert.equal('dataset' in j, false);
      seen.push(j.jobId);
    }
    if (!page.hasMore) {
      assert.equal(page.nextCursor, null);
      break;
    }
    after = page.nextCursor;
  }
  assert.deepEqual(seen, [...ids].reverse());
  // all communities: the other community's jobs are there too, newest first
  const all = (await app.inject({ method: 'GET', url: '/jobs?limit=100' })).json().data as JobStatus[];
  assert.ok(all.some((j) => j.jobId === doneJob));
  const created = all.map((j) => Date.parse(j.createdAt));
  assert.deepEqual(
    created,
    [...created].sort((a, b) => b - a),
  );
  // state filter
  const completed = (await app.inject({ method: 'GET', url: '/jobs?state=completed&limit=100' })).json().data as JobStatus[];
  assert.ok(completed.length >= 2 && completed.every((j) => j.state === 'completed'));
  assert.ok(completed.some((j) => j.jobId === doneJob));
  assert.equal((await app.inject({ method: 'GET', url: '/jobs?after=garbage' })).statusCode, 400);
  assert.equal((await app.inject({ method: 'GET', url: '/jobs?state=nope' })).statusCode, 400);
  // tenants: a key scoped to jobs-list sees only those jobs; another community's job and its events, metrics,
  // files and checkpoints are 404 for it (as for a missing job)
  const scoped = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, API_KEYS: 'kl:jobs-list,ka:jobs-a' }) });
  try {
    const kl = { authorization: 'Bearer kl' };
    const mine = (await scoped.inject({ method: 'GET', url: '/jobs?limit=100', headers: kl })).json().data as JobStatus[];
    assert.deepEqual(
      mine.map((j) => j.jobId),
      [...ids].reverse(),
    );
    assert.equal((await scoped.inject({ method: 'GET', url: '/jobs?communityId=jobs-a', headers: kl })).json().data.length, 0);
    for (const sub of ['', '/events', '/metrics', '/files', '/checkpoints', '/files/model/model.safetensors']) {
      assert.equal((await scoped.inject({ method: 'GET', url: `/jobs/${doneJob}${sub}`, headers: kl })).statusCode, 404, sub);
      assert.equal((await scoped.inject({ method: 'GET', url: `/jobs/${doneJob}${sub}`, headers: { authorization: 'Bearer ka' } })).statusCode, 200, sub);
    }
  } finally {
    await scoped.close();
  }
  for (const id of ids) await app.inject({ method: 'DELETE', url: `/jobs/${id}` });
});

test('?dryRun=true answers the plan (the same data counts and steps as the real run) and queues nothing', async () => {
  assert.ok(doneStatus, 'runs after the first test');
  const before = await app.queueService.queue.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed');
  const listBefore = (await app.inject({ method: 'GET', url: '/jobs?limit=100' })).json().data.length;
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune?dryRun=true',
    payload: { communityId: 'jobs-a', dataset: toy.slice(0, 8), config: { ...TINY, save_steps: 2 }, suffix: 'toy-run' },
  });
  assert.equal(res.statusCode, 200, res.body);
  const plan = res.json();
  assert.equal(plan.dryRun, true);
  assert.equal(plan.model, 'stories260K');
  // the same counts the real job's data phase reported
  for (const k of ['examples', 'train', 'eval', 'dropped', 'truncated']) assert.equal(plan.data[k], doneDataReady[k], k);
  // steps per stage = what the job ran (its stage.started events)
  const ran = doneStatus!.stages.filter((s) => s.stage !== 'upload').map((s) => s.stage);
  assert.deepEqual(
    plan.stages.map((s: { stage: string }) => s.stage),
    ran,
  );
  assert.deepEqual(
    plan.stages.map((s: { steps: number }) => s.steps),
    doneStageSteps,
  );
  assert.ok(doneStageSteps.every((n) => n > 0));
  // tokens: SFT covers the 6 training pairs exactly once (3 steps x 2), so its count is exact; DPO by the mean
  const sftTokens = doneStatus!.metrics.sft.num_tokens;
  assert.equal(plan.stages[0].tokens, sftTokens, `plan ${plan.stages[0].tokens} vs trained ${sftTokens}`);
  assert.ok(plan.tokens > sftTokens);
  // a job has finished on this service, so durations are estimated from its tokens/s
  assert.ok(plan.estimatedSeconds > 0, JSON.stringify(plan));
  // the engine's memory estimate: parts add up (x1.15 margin + runtime), the toy fits
  assert.ok(plan.memory.totalBytes > 0 && plan.memory.weights > 0, JSON.stringify(plan.memory));
  assert.equal(plan.memory.fits, true);
  assert.ok(plan.memory.totalBytes >= plan.memory.weights + plan.memory.gradients + plan.memory.optimizer);
  // nothing queued, nothing listed
  assert.deepEqual(await app.queueService.queue.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed'), before);
  assert.equal((await app.inject({ method: 'GET', url: '/jobs?limit=100' })).json().data.length, listBefore);
  // an invalid request is still a 400 in a dry run
  const bad = await app.inject({
    method: 'POST',
    url: '/trigger-finetune?dryRun=true',
    payload: { communityId: 'jobs-a', dataset: toy.slice(0, 8), config: { beta: 'x' } },
  });
  assert.equal(bad.statusCode, 400);
  // a data-rule failure too (chosen == rejected), naming the row
  const same = await app.inject({
    method: 'POST',
    url: '/trigger-finetune?dryRun=true',
    payload: { communityId: 'jobs-a', dataset: [{ prompt: 'p', chosen: 'same', rejected: 'same' }] },
  });
  assert.equal(same.statusCode, 400, same.body);
  assert.match(same.body, /\/dataset\/0\/rejected/);
});

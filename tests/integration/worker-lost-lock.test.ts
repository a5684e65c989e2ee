/**
 * A lost job lock must not orphan a finished artifact. A real worker process trains a toy job, stores its
 * artifact and is SIGKILLed right there (the test hook DPO_TEST_KILL_AFTER_UPLOAD=1: after the upload, before
 * BullMQ's moveToCompleted), so the job's lock expires and BullMQ's stalled-job check hands the job to a second
 * worker, as it would after a Redis hiccup or a stalled event loop. The second worker finds the artifact
 * recorded and verified in storage: it neither trains (no second SFT or DPO stage) nor uploads again, and it
 * completes the job with the recorded result; the job has one artifact, one upload, one `job.succeeded` event
 * and one completion webhook. Real Redis, real worker processes, a real HTTP receiver.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import type { JobEvent } from '../../src/queue/events.js';
import type { JobStatus } from '../../src/queue/types.js';
import { sha256File, verifyManifest } from '../../src/storage/manifest.js';
import { WEBHOOK_QUEUE } from '../../src/webhooks/delivery.js';
import { dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';
import { startWorker, type WorkerHandle } from './worker-harness.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('lostlock');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-lostlock-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as unknown[];
const TINY = { max_steps: 2, sft: { max_steps: 2 }, batch_size: 2, eval_split_fraction: 0.25, sample_during_eval: false, tensorboard: false, plot: false };
const secret = `whsec_${randomBytes(24).toString('base64')}`;
const hookEnv = { SIGNING_SECRETS: `lostlock:${secret}`, CALLBACK_ALLOW_PRIVATE: 'true', ALLOW_HTTP_CALLBACKS: 'true' };
const auth = { authorization: 'Bearer ll' };
const lockEnv = { WORKER_LOCK_DURATION_MS: '2000', WORKER_STALLED_INTERVAL_MS: '1000', WEBHOOK_BACKOFF_MS: '200' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let app: FastifyInstance;
let receiver: Server;
let receiverUrl = '';
const received: string[] = [];
const workers: WorkerHandle[] = [];

before(async () => {
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push(body);
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', () => r()));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, API_KEYS: 'll:*', ...hookEnv }) });
  await app.ready();
});

after(async () => {
  for (const w of workers) await w.stop();
  await app?.close();
  await new Promise((r) => receiver?.close(r));
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

async function events(jobId: string): Promise<JobEvent[]> {
  return (await app.inject({ method: 'GET', url: `/jobs/${jobId}/events?limit=1000`, headers: auth })).json().data as JobEvent[];
}

test('a worker killed after storing the artifact: the next run completes the job with it, without training or uploading again', async () => {
  const first = await startWorker(app.queueService.queue, prefix, storageDir, { ...hookEnv, ...lockEnv, DPO_TEST_KILL_AFTER_UPLOAD: '1' });
  workers.push(first);
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    headers: auth,
    payload: { communityId: 'lostlock', dataset: toy.slice(0, 8), config: TINY, callbackUrl: `${receiverUrl}/done` },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json() as { jobId: string };
  // the hook kills the worker right after the upload
  if (first.process.exitCode === null && first.process.signalCode === null) await new Promise((r) => first.process.once('exit', r));
  assert.equal(first.process.signalCode, 'SIGKILL', first.log().slice(-3000));
  const stored = join(storageDir, 'lostlock', jobId);
  assert.deepEqual(await verifyManifest(stored), [], 'the first run stored a complete artifact');
  const manifestSha = await sha256File(join(stored, 'manifest.json'));
  const manifestInode = statSync(join(stored, 'manifest.json')).ino;
  // everything the first run logged; the rest is the second run's
  const firstRun = await events(jobId);
  assert.equal(firstRun.filter((e) => e.type === 'stage.started' && e.data.stage === 'sft').length, 1, 'the first run trained');
  const before = (await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: auth })).json() as JobStatus;
  assert.equal(before.state, 'active', 'BullMQ still has the job active (its worker died before completing it)');

  const second = await startWorker(app.queueService.queue, prefix, storageDir, { ...hookEnv, ...lockEnv });
  workers.push(second);
  let s: JobStatus | undefined;
  for (let i = 0; i < 6000; i++) {
    s = (await app.inject({ method: 'GET', url: `/jobs/${jobId}`, headers: auth })).json() as JobStatus;
    if (['completed', 'failed', 'cancelled'].includes(s.state)) break;
    await sleep(50);
  }
  assert.equal(s?.state, 'completed', `${JSON.stringify(s?.error)}\n${second.log().slice(-3000)}`);
  const job = await app.queueService.queue.getJob(jobId);
  assert.equal(job?.attemptsStarted, 2, 'the job really ran a second time');
  // wait for the completion webhook to be delivered
  let evs: JobEvent[] = [];
  for (let i = 0; i < 1200; i++) {
    evs = await events(jobId);
    if (evs.some((e) => e.type === 'webhook.delivered' || e.type === 'webhook.failed')) break;
    await sleep(50);
  }
  const count = (type: string, stage?: string) => evs.filter((e) => e.type === type && (stage === undefined || e.data.stage === stage)).length;
  // trained once: one SFT and one DPO stage in all, and the second run started no stage and uploaded nothing
  assert.equal(count('stage.started', 'sft'), 1, 'SFT ran once');
  assert.equal(count('stage.started', 'dpo'), 1, 'DPO ran once');
  const secondRun = evs.slice(firstRun.length);
  assert.deepEqual(
    secondRun.filter((e) => ['stage.started', 'metrics', 'upload.completed', 'checkpoint.saved'].includes(e.type)).map((e) => e.type),
    [],
    'the second run neither trained nor uploaded',
  );
  assert.equal(count('job.started'), 2);
  assert.match(second.log(), /artifact of an earlier run/);
  // one artifact, unchanged since the first run stored it, and it is what the job reports
  assert.deepEqual(readdirSync(join(storageDir, 'lostlock')), [jobId]);
  assert.equal(await sha256File(join(stored, 'manifest.json')), manifestSha);
  assert.equal(statSync(join(stored, 'manifest.json')).ino, manifestInode, 'the stored artifact was not written again');
  assert.deepEqual(await verifyManifest(stored), []);
  assert.equal(s?.artifact?.uri, `lostlock/${jobId}`);
  const manifest = JSON.parse(readFileSync(join(stored, 'manifest.json'), 'utf8')) as { files: unknown[] };
  assert.deepEqual(s?.artifact?.files, manifest.files);
  assert.ok(Object.keys(s?.metrics.dpo ?? {}).length > 0, 'the recorded metrics are reported');
  // completed once: one job.succeeded event, one webhook delivery job, one request received
  assert.equal(count('job.succeeded'), 1);
  assert.equal(count('job.failed') + count('job.cancelled'), 0);
  assert.equal(count('webhook.delivered'), 1);
  const hooks = new Queue(WEBHOOK_QUEUE, { connection: { url: REDIS_URL }, prefix });
  try {
    const counts = await hooks.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
    assert.equal(
      Object.values(counts).reduce((a, b) => a + b, 0),
      1,
      JSON.stringify(counts),
    );
  } finally {
    await hooks.close();
  }
  assert.equal(received.length, 1);
  assert.equal((JSON.parse(received[0]!) as { type: string }).type, 'job.succeeded');
});

/**
 * The deployed path end to end with STORAGE_BACKEND=firebase: API (buildApp) → Redis → a real worker
 * process (src/worker/main.ts, training in its child) → firebase-admin → the fake GCS JSON API on 127.0.0.1
 * (FIREBASE_STORAGE_EMULATOR_HOST). A toy job ends `completed` with a gs:// URI and signed URLs, and every
 * manifest file is in the bucket with the manifest's sha256; GET /jobs/:id/files/<path> answers 302 to a fresh
 * signed URL of that object, and the metrics history is read from the bucket; a job whose upload keeps failing ends `failed`
 * with STORAGE_UPLOAD_FAILED naming the file, and its trained artifact is kept locally and still verifies.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { createDatasetStore } from '../../src/storage/index.js';
import { verifyManifest, type Manifest } from '../../src/storage/manifest.js';
import type { JobStatus } from '../../src/queue/types.js';
import { dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';
import { FakeGcs } from './firebase-fake-gcs.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const BUCKET = 'demo-e2e.appspot.com';
const prefix = uniquePrefix('fb-e2e');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-fb-e2e-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
/** A few steps of each stage: this test is about storage, not learning. */
const TINY = { max_steps: 2, sft: { max_steps: 2 }, batch_size: 2, eval_split_fraction: 0.25, sample_during_eval: false, tensorboard: false, plot: false };

const fake = new FakeGcs();
let app: FastifyInstance;
let worker: ChildProcess;
let workerLog = '';
let okJob: Promise<{ jobId: string; final: JobStatus }>;
let failJob: Promise<{ jobId: string; final: JobStatus }>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function status(jobId: string): Promise<JobStatus> {
  const res = await app.inject({ method: 'GET', url: `/jobs/${jobId}` });
  assert.equal(res.statusCode, 200);
  return res.json() as JobStatus;
}

async function runJob(communityId: string, rows: Array<Record<string, string>>): Promise<{ jobId: string; final: JobStatus }> {
  const res = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId, dataset: rows, config: TINY } });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json() as { jobId: string };
  for (let i = 0; i < 6000; i++) {
    const s = await status(jobId);
    if (['completed', 'failed', 'cancelled'].includes(s.state)) return { jobId, final: s };
    await sleep(50);
  }
  throw new Error(`job ${jobId} did not finish; worker log:\n${workerLog.slice(-3000)}`);
}

before(async () => {
  await fake.start();
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyFile = join(storageDir, 'service-account.json');
  writeFileSync(
    keyFile,
    JSON.stringify({
      type: 'service_account',
      project_id: 'demo-e2e',
      private_key_id: 'k',
      private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      client_email: 'dpo@demo-e2e.iam.gserviceaccount.com',
      client_id: '1',
      token_uri: 'http://127.0.0.1:9/token',
    }),
  );
  // The second job's metrics.jsonl never uploads.
  fake.failUploads(/^fb-fail\/.+\/metrics\.jsonl$/, 503, Infinity);
  // the API stores the rows in the same backend the worker reads them from (the bucket)
  process.env.FIREBASE_STORAGE_EMULATOR_HOST = fake.host;
  delete process.env.STORAGE_EMULATOR_HOST;
  process.env.GOOGLE_APPLICATION_CREDENTIALS = keyFile;
  const apiEnv = testEnv(prefix, { STORAGE_DIR: storageDir, STORAGE_BACKEND: 'firebase', FIREBASE_BUCKET: BUCKET });
  app = await buildApp({ env: apiEnv, datasets: await createDatasetStore(apiEnv, { rawEnv: { ...process.env, FIREBASE_BUCKET: BUCKET } }) });
  await app.ready();
  const env: Record<string, string | undefined> = {
    ...process.env,
    REDIS_URL,
    QUEUE_PREFIX: prefix,
    STORAGE_DIR: storageDir,
    LOG_LEVEL: 'info',
    TFJS_BACKEND: 'wasm',
    WORKER_METRICS_PORT: '0',
    // both jobs train at once (one forked child each), so the file costs one training run of wall time
    WORKER_CONCURRENCY: '2',
    STORAGE_BACKEND: 'firebase',
    FIREBASE_BUCKET: BUCKET,
    FIREBASE_STORAGE_EMULATOR_HOST: fake.host,
    STORAGE_EMULATOR_HOST: undefined,
    GOOGLE_APPLICATION_CREDENTIALS: keyFile,
    FIREBASE_SIGNED_URLS: 'true',
    FIREBASE_UPLOAD_MAX_ATTEMPTS: '2',
    FIREBASE_UPLOAD_BACKOFF_MS: '10',
  };
  worker = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  worker.stdout!.on('data', (d: Buffer) => (workerLog += d.toString()));
  worker.stderr!.on('data', (d: Buffer) => (workerLog += d.toString()));
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) === 0; i++) {
    assert.equal(worker.exitCode, null, `the worker exited:\n${workerLog}`);
    await sleep(100);
  }
  assert.ok((await app.queueService.queue.getWorkersCount()) > 0, `the worker did not connect:\n${workerLog}`);
  // "worker ready" names the storage backend; it may be logged just after the worker registers.
  for (let i = 0; i < 200 && !workerLog.includes('"storage":"firebase"'); i++) await sleep(50);
  assert.match(workerLog, /"storage":"firebase"/);
  okJob = runJob('fb-ok', toy.slice(0, 6));
  failJob = runJob('fb-fail', toy.slice(6, 12));
  // settle both before the tests read them (a rejection is reported by the test that awaits it)
  await Promise.allSettled([okJob, failJob]);
});

after(async () => {
  if (worker && worker.exitCode === null) {
    worker.kill('SIGTERM');
    await Promise.race([new Promise((r) => worker.once('exit', r)), sleep(20_000)]);
    if (worker.exitCode === null) worker.kill('SIGKILL');
  }
  await app?.close();
  await dropPrefix(prefix);
  await fake.stop();
  rmSync(storageDir, { recursive: true, force: true });
});

test('a job trains and its model lands in the Firebase bucket, verified, with signed URLs', async () => {
  const { jobId, final } = await okJob;
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog.slice(-3000)}`);
  assert.ok(final.artifact);
  assert.equal(final.artifact.uri, `gs://${BUCKET}/fb-ok/${jobId}`);

  const stored = fake.objects.get(`${BUCKET}/fb-ok/${jobId}/manifest.json`);
  assert.ok(stored, 'manifest.json is in the bucket');
  const manifest = JSON.parse(stored.data.toString('utf8')) as Manifest;
  const paths = manifest.files.map((f) => f.path);
  for (const p of ['model/model.safetensors', 'model/config.json', 'metrics.jsonl', 'run.json']) assert.ok(paths.includes(p), `bucket lacks ${p}`);
  for (const f of manifest.files) {
    const o = fake.objects.get(`${BUCKET}/fb-ok/${jobId}/${f.path}`);
    assert.ok(o, `${f.path} uploaded`);
    assert.equal(o.data.length, f.size, `${f.path} size`);
    assert.equal(createHash('sha256').update(o.data).digest('hex'), f.sha256, `${f.path} sha256`);
  }
  assert.equal(JSON.parse(fake.objects.get(`${BUCKET}/fb-ok/${jobId}/model/config.json`)!.data.toString()).model_type, 'llama');
  assert.deepEqual(final.artifact.files.map((f) => f.path).sort(), [...paths].sort());
  const signed = final.artifact.signedUrls ?? {};
  assert.match(signed['model/model.safetensors'] ?? '', /X-Goog-Signature=[0-9a-f]+/);
});

test('GET /jobs/:id/files/<path> redirects (302) to a fresh signed URL of that object; metrics come from the bucket', async () => {
  const { jobId, final } = await okJob;
  assert.equal(final.state, 'completed', `${JSON.stringify(final.error)}\n${workerLog.slice(-3000)}`);
  for (const path of ['model/model.safetensors', 'manifest.json']) {
    const res = await app.inject({ method: 'GET', url: `/jobs/${jobId}/files/${path}` });
    assert.equal(res.statusCode, 302, res.body);
    assert.equal(res.headers['cache-control'], 'no-store');
    const u = new URL(String(res.headers.location));
    // signed for the emulator's host here (storage.googleapis.com over https without FIREBASE_STORAGE_EMULATOR_HOST)
    assert.equal(u.host, fake.host);
    assert.ok(decodeURIComponent(u.pathname).endsWith(`/fb-ok/${jobId}/${path}`), `${u.pathname} names the object of ${path}`);
    assert.ok(decodeURIComponent(`${u.host}${u.pathname}`).includes(BUCKET), `${u.host}${u.pathname} names the bucket`);
    assert.equal(u.searchParams.get('X-Goog-Algorithm'), 'GOOG4-RSA-SHA256');
    assert.equal(u.searchParams.get('X-Goog-Expires'), '3600');
    assert.ok(u.searchParams.get('X-Goog-Credential')?.startsWith('dpo@demo-e2e.iam.gserviceaccount.com/'));
    assert.match(u.searchParams.get('X-Goog-Signature') ?? '', /^[0-9a-f]{512}$/);
  }
  // a path the manifest does not list is never signed
  const missing = await app.inject({ method: 'GET', url: `/jobs/${jobId}/files/model/other.bin` });
  assert.equal(missing.statusCode, 404);
  // the metrics history of a job stored in the bucket: its metrics.jsonl as stored
  const stored = fake.objects.get(`${BUCKET}/fb-ok/${jobId}/metrics.jsonl`)!.data.toString('utf8').trim().split('\n');
  const history = await app.inject({ method: 'GET', url: `/jobs/${jobId}/metrics` });
  assert.equal(history.statusCode, 200, history.body);
  assert.deepEqual(
    (history.json() as { data: unknown[] }).data,
    stored.map((l) => JSON.parse(l)),
  );
});

test('an upload that keeps failing fails the job with STORAGE_UPLOAD_FAILED and keeps the trained artifact', async () => {
  const { jobId, final } = await failJob;
  assert.equal(final.state, 'failed', workerLog.slice(-2000));
  assert.equal(final.error?.code, 'STORAGE_UPLOAD_FAILED');
  assert.match(final.error!.message, /"metrics\.jsonl"/);
  assert.match(final.error!.message, /after 2 attempt/);
  assert.equal(fake.requestsFor(`fb-fail/${jobId}/metrics.jsonl`, 'multipart').length, 2);
  assert.equal(fake.objects.get(`${BUCKET}/fb-fail/${jobId}/manifest.json`), undefined);
  // the message names the place relative to WORK_DIR (no server path reaches a client)
  const kept = /kept at (WORK_DIR\/\S+?);/.exec(final.error!.message)?.[1];
  assert.ok(kept, final.error!.message);
  assert.ok(!final.error!.message.includes(storageDir), final.error!.message);
  assert.deepEqual(await verifyManifest(kept.replace(/^WORK_DIR/, join(storageDir, '.work'))), [], 'the kept artifact is intact');
});

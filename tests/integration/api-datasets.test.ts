/**
 * Datasets against the real Redis, a real worker process and a listening API: a 50 MB gzip JSONL built
 * here (rows carry a 2 KB random `meta` field, as exports carry ids and scores, so gzip cannot shrink it)
 * is uploaded as a streamed raw body with the API's RSS growth under 100 MB, answered 201 with its
 * format, rows and token stats; the same bytes again answer 200 with the same id; a multipart upload works;
 * bad data is a 400 naming the line; GET/DELETE; a too-large upload is 413; then a job trains on it by
 * `datasetId` (and `evalDatasetId`) and its data.ready event counts those rows.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createGzip } from 'node:zlib';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import type { JobEvent } from '../../src/queue/events.js';
import type { JobStatus } from '../../src/queue/types.js';
import { closedPort, dropPrefix, REDIS_URL, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('api-ds');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-api-ds-'));
const work = mkdtempSync(join(tmpdir(), 'dpo-api-ds-src-'));
const TARGET = 50 * 1024 * 1024;

/** The API under test runs in its own process so that its RSS is its own (the test's client and file
 *  generation do not count); `app` (in-process, same Redis and storage) serves the inspections. */
let app: FastifyInstance;
let api: ChildProcess;
let apiLog = '';
let base = '';
let worker: ChildProcess;
let workerLog = '';
let bigFile = '';
let bigRows = 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Write a gzip JSONL of at least TARGET compressed bytes; returns the row count. */
async function buildBig(path: string): Promise<number> {
  let rows = 0;
  let produced = 0;
  const out = createWriteStream(path);
  const gz = createGzip({ level: 1 });
  gz.on('data', (c: Buffer) => (produced += c.length));
  const src = Readable.from(
    (function* () {
      while (produced < TARGET) {
        let chunk = '';
        for (let k = 0; k < 200; k++, rows++) {
          const meta = randomBytes(1536).toString('base64');
          chunk += `${JSON.stringify({ prompt: `Tell a story about cat ${rows}.`, chosen: ` The cat ${rows} slept in the sun.`, rejected: ` Cat ${rows}.`, meta })}\n`;
        }
        yield chunk;
      }
    })(),
  );
  await pipeline(src, gz, out);
  return rows;
}

before(async () => {
  bigFile = join(work, 'big.jsonl.gz');
  bigRows = await buildBig(bigFile);
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, MAX_DATASET_BYTES: String(60 * 1024 * 1024) }) });
  await app.ready();
  const port = await closedPort();
  api = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/api/server.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: storageDir,
      LOG_LEVEL: 'warn',
      PORT: String(port),
      HOST: '127.0.0.1',
      RATE_LIMIT_MAX: '0',
      MAX_DATASET_BYTES: String(60 * 1024 * 1024),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  api.stdout!.on('data', (d: Buffer) => (apiLog += d.toString()));
  api.stderr!.on('data', (d: Buffer) => (apiLog += d.toString()));
  base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    assert.equal(api.exitCode, null, `the API exited:\n${apiLog}`);
    if (
      await fetch(`${base}/health`).then(
        (r) => r.ok,
        () => false,
      )
    )
      break;
    await sleep(100);
  }
  worker = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/worker/main.ts')], {
    cwd: root,
    env: {
      ...process.env,
      REDIS_URL,
      QUEUE_PREFIX: prefix,
      STORAGE_DIR: storageDir,
      LOG_LEVEL: 'info',
      TFJS_BACKEND: 'wasm',
      WORKER_BACKEND_CHECK: 'false',
      WORKER_METRICS_PORT: String(await closedPort()),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  worker.stdout!.on('data', (d: Buffer) => (workerLog += d.toString()));
  worker.stderr!.on('data', (d: Buffer) => (workerLog += d.toString()));
  for (let i = 0; i < 600 && (await app.queueService.queue.getWorkersCount()) === 0; i++) await sleep(100);
});

after(async () => {
  if (worker && worker.exitCode === null) {
    worker.kill('SIGTERM');
    const kill = setTimeout(() => worker.kill('SIGKILL'), 20_000);
    await new Promise((r) => worker.once('exit', r));
    clearTimeout(kill);
  }
  if (api && api.exitCode === null) {
    api.kill('SIGTERM');
    await new Promise((r) => api.once('exit', r));
  }
  await app?.close();
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

async function upload(body: BodyInit, query: string, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${base}/datasets?${query}`, { method: 'POST', body, headers, duplex: 'half' } as RequestInit);
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

let bigId = '';

test('a 50 MB gzip JSONL streams in with RSS growth under 100 MB; 201 with format, rows and token stats; the same bytes again: 200, same id', {
  timeout: 300_000,
}, async () => {
  const size = statSync(bigFile).size;
  assert.ok(size >= TARGET, `${size} bytes`);
  // the API process's resident set, from /proc (Linux)
  const rssOf = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${api.pid}/status`, 'utf8'))![1]) * 1024;
  // warm: one small upload so route, parser and tokenizer are loaded before the baseline
  const warm = await upload(`${JSON.stringify({ prompt: 'p', chosen: ' a', rejected: ' b' })}\n`, 'communityId=ds-warm', {
    'content-type': 'application/jsonl',
  });
  assert.equal(warm.status, 201, JSON.stringify(warm.json));
  const rss0 = rssOf();
  let peak = rss0;
  const sampler = setInterval(() => (peak = Math.max(peak, rssOf())), 20);
  let res: Awaited<ReturnType<typeof upload>>;
  try {
    res = await upload(Readable.toWeb(createReadStream(bigFile)) as unknown as BodyInit, 'communityId=ds-a&name=big', { 'content-type': 'application/gzip' });
  } finally {
    clearInterval(sampler);
  }
  const growth = (peak - rss0) / 1024 / 1024;
  assert.equal(res.status, 201, JSON.stringify(res.json));
  assert.ok(growth < 100, `RSS grew ${growth.toFixed(1)} MB during the upload`);
  console.log(`# upload of ${(size / 1024 / 1024).toFixed(1)} MB gzip (${bigRows} rows): RSS growth ${growth.toFixed(1)} MB`);
  const d = res.json as {
    datasetId: string;
    format: string;
    rows: number;
    gzip: boolean;
    bytes: number;
    problems: unknown[];
    stats: { tokens: number; tokensExact: boolean; truncated: number; duplicates: number };
  };
  assert.match(d.datasetId, /^ds-[a-f0-9]{64}$/);
  assert.equal(d.format, 'explicit');
  assert.equal(d.gzip, true);
  assert.equal(d.rows, bigRows);
  assert.equal(d.bytes, size);
  assert.equal(d.stats.duplicates, 0);
  assert.equal(d.stats.truncated, 0);
  assert.ok(d.stats.tokens > bigRows * 10, `tokens ${d.stats.tokens}`);
  bigId = d.datasetId;
  // stored in the dataset store as canonical JSON rows (not in Redis), named by their sha256
  const stored = join(storageDir, '.datasets', 'ds-a', `${bigId.slice(3)}.json`);
  const storedRows = JSON.parse(readFileSync(stored, 'utf8')) as Array<Record<string, string>>;
  assert.equal(storedRows.length, bigRows);
  assert.deepEqual(Object.keys(storedRows[0]!).sort(), ['chosen', 'prompt', 'rejected']);
  assert.equal(createHash('sha256').update(readFileSync(stored)).digest('hex'), bigId.slice(3));
  // GET answers the same record
  const got = await app.inject({ method: 'GET', url: `/datasets/${bigId}?communityId=ds-a` });
  assert.equal(got.statusCode, 200);
  assert.equal(got.json().rows, bigRows);
  // the same bytes again: the same dataset (content-addressed), 200
  const again = await upload(readFileSync(bigFile), 'communityId=ds-a', { 'content-type': 'application/octet-stream' });
  assert.equal(again.status, 200);
  assert.equal(again.json.datasetId, bigId);
});

test('multipart upload, JSON array and JSONL; bad rows are a 400 naming the line, nothing stored; 413 past MAX_DATASET_BYTES; DELETE', async () => {
  const rows = Array.from({ length: 12 }, (_, i) => ({ prompt: `Story ${i}:`, chosen: ` a kind end ${i}.`, rejected: ` a mean end ${i}.` }));
  const form = new FormData();
  form.set('communityId', 'ds-b');
  form.set('file', new Blob([rows.map((r) => JSON.stringify(r)).join('\n')]), 'rows.jsonl');
  const mp = await fetch(`${base}/datasets`, { method: 'POST', body: form });
  const mj = (await mp.json()) as { datasetId: string; rows: number; format: string };
  assert.equal(mp.status, 201, JSON.stringify(mj));
  assert.equal(mj.rows, 12);
  const arr = await upload(JSON.stringify(rows.slice(0, 6)), 'communityId=ds-b', { 'content-type': 'application/json' });
  assert.equal(arr.status, 201, JSON.stringify(arr.json));
  assert.equal(arr.json.rows, 6);
  assert.equal(arr.json.container, 'json');
  // a broken line and a chosen == rejected row
  const bad = `${JSON.stringify(rows[0])}\n${JSON.stringify({ prompt: 'p', chosen: 'same', rejected: 'same' })}\n{not json\n`;
  const b = await upload(bad, 'communityId=ds-b', { 'content-type': 'application/jsonl' });
  assert.equal(b.status, 400, JSON.stringify(b.json));
  const problems = b.json.problems as Array<{ path: string; message: string }>;
  assert.ok(
    problems.some((p) => /line 2/.test(p.path) && /CHOSEN_EQUALS_REJECTED/.test(p.message)),
    JSON.stringify(problems),
  );
  assert.ok(!JSON.stringify(b.json).includes(storageDir), 'no server path in the answer');
  // too large: 413 (limit 60 MB here; 61 MB of zeros)
  const big = await upload(
    Readable.toWeb(
      Readable.from(
        (function* () {
          for (let i = 0; i < 61; i++) yield Buffer.alloc(1024 * 1024);
        })(),
      ),
    ) as unknown as BodyInit,
    'communityId=ds-b',
    {
      'content-type': 'application/octet-stream',
    },
  );
  assert.equal(big.status, 413);
  assert.equal(big.json.code, 'DATASET_TOO_LARGE');
  // nothing left behind by the failed uploads
  const { readdirSync } = await import('node:fs');
  assert.deepEqual(readdirSync(join(storageDir, '.work', '.incoming')), []);
  // DELETE, then 404; another community's id space is separate
  assert.equal((await app.inject({ method: 'GET', url: `/datasets/${arr.json.datasetId}?communityId=ds-a` })).statusCode, 404);
  assert.equal((await app.inject({ method: 'DELETE', url: `/datasets/${arr.json.datasetId}?communityId=ds-b` })).statusCode, 204);
  assert.equal((await app.inject({ method: 'GET', url: `/datasets/${arr.json.datasetId}?communityId=ds-b` })).statusCode, 404);
  assert.equal((await app.inject({ method: 'GET', url: '/datasets/ds-nope?communityId=ds-b' })).statusCode, 400);
  // a job of another community cannot use it
  const other = await app.inject({ method: 'POST', url: '/trigger-finetune', payload: { communityId: 'ds-other', datasetId: mj.datasetId } });
  assert.equal(other.statusCode, 400);
  assert.match(other.body, /UNKNOWN_DATASET/);
});

test('a job trains on the uploaded dataset by datasetId (with evalDatasetId); data.ready counts its rows', { timeout: 300_000 }, async () => {
  assert.ok(bigId, 'runs after the upload test');
  const evalRows = Array.from({ length: 5 }, (_, i) => ({ prompt: `Eval story ${i}:`, chosen: ` kind ${i}.`, rejected: ` mean ${i}.` }));
  const ev = await upload(evalRows.map((r) => JSON.stringify(r)).join('\n'), 'communityId=ds-a', { 'content-type': 'application/jsonl' });
  assert.equal(ev.status, 201);
  const config = { max_steps: 2, sft: { max_steps: 2 }, batch_size: 2, sample_during_eval: false, tensorboard: false, plot: false };
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'ds-a', datasetId: bigId, evalDatasetId: ev.json.datasetId, config },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  let st: JobStatus | null = null;
  for (let i = 0; i < 4000; i++) {
    st = (await app.inject({ method: 'GET', url: `/jobs/${jobId}` })).json() as JobStatus;
    if (['completed', 'failed', 'cancelled'].includes(st.state)) break;
    await sleep(100);
  }
  assert.equal(st!.state, 'completed', `${JSON.stringify(st!.error)}\n${workerLog.slice(-3000)}`);
  assert.equal(st!.datasetId, bigId);
  assert.equal(st!.evalDatasetId, ev.json.datasetId);
  const evs = (await app.inject({ method: 'GET', url: `/jobs/${jobId}/events?type=data.ready` })).json().data as JobEvent[];
  assert.equal(evs.length, 1);
  assert.equal(evs[0]!.data.examples, bigRows);
  assert.equal(evs[0]!.data.train, bigRows);
  assert.equal(evs[0]!.data.eval, 5);
  const queued = (await app.inject({ method: 'GET', url: `/jobs/${jobId}/events?type=job.queued` })).json().data as JobEvent[];
  assert.equal(queued[0]!.data.rows, bigRows);
});

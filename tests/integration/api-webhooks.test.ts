/**
 * Job-outcome webhooks against the real Redis and a real worker process, with a receiver started here on
 * 127.0.0.1 (CALLBACK_ALLOW_PRIVATE=true, ALLOW_HTTP_CALLBACKS=true for it): a toy job's `job.succeeded`
 * arrives signed in the Standard Webhooks scheme and verifies with `standardwebhooks`; a 302 (never
 * followed) and a 500 from the receiver are retried with backoff, every attempt is an event and the
 * webhook-id stays the same; without CALLBACK_ALLOW_PRIVATE a loopback, private or link-local target is
 * refused at the API (400 UNSAFE_CALLBACK_URL), including a name that resolves to loopback.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { Webhook } from 'standardwebhooks';
import { buildApp } from '../../src/api/app.js';
import { startWorker, type WorkerHandle } from './worker-harness.js';
import type { JobEvent } from '../../src/queue/events.js';
import { isNonPublicAddress } from '../../src/webhooks/targets.js';
import { retryDelays } from '../../src/webhooks/delivery.js';
import { dropPrefix, testEnv, uniquePrefix } from '../unit/api-helpers.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const prefix = uniquePrefix('api-hooks');
const storageDir = mkdtempSync(join(tmpdir(), 'dpo-api-hooks-'));
const toy = JSON.parse(readFileSync(join(root, 'config/datasets/toy.json'), 'utf8')) as Array<Record<string, string>>;
const TINY = { max_steps: 2, sft: { max_steps: 2 }, batch_size: 2, eval_split_fraction: 0.25, sample_during_eval: false, tensorboard: false, plot: false };
const secret = `whsec_${randomBytes(24).toString('base64')}`;
const hookEnv = { SIGNING_SECRETS: `hooks:${secret}`, CALLBACK_ALLOW_PRIVATE: 'true', ALLOW_HTTP_CALLBACKS: 'true' };
/** SIGNING_SECRETS turns authentication on: the test's requests carry an all-communities key. */
const KEYS = { API_KEYS: 'hk:*' };
const auth = { authorization: 'Bearer hk' };

let app: FastifyInstance;
let worker: WorkerHandle | undefined;
const workerLog = (): string => worker?.log() ?? '';
let receiver: Server;
let receiverUrl = '';
const received: Array<{ path: string; headers: IncomingHttpHeaders; body: string; at: number }> = [];
/** Answers per request, in order; then 200. */
const script: Array<{ status: number; location?: string }> = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push({ path: req.url ?? '', headers: req.headers, body, at: Date.now() });
      const a = script.shift() ?? { status: 200 };
      res.writeHead(a.status, a.location ? { location: a.location } : {});
      res.end('ok');
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', () => r()));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
  app = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, ...hookEnv, ...KEYS }) });
  await app.ready();
  worker = await startWorker(app.queueService.queue, prefix, storageDir, { WEBHOOK_BACKOFF_MS: '300', WEBHOOK_ATTEMPTS: '5', ...hookEnv });
});

after(async () => {
  await worker?.stop();
  await app?.close();
  await new Promise((r) => receiver?.close(r));
  await dropPrefix(prefix);
  rmSync(storageDir, { recursive: true, force: true });
});

async function events(jobId: string): Promise<JobEvent[]> {
  const res = await app.inject({ method: 'GET', url: `/jobs/${jobId}/events?limit=1000`, headers: auth });
  return res.json().data as JobEvent[];
}

test('job.succeeded reaches the receiver signed (standardwebhooks verifies it); a 302 and a 500 are retried, each attempt an event', async () => {
  // attempt 1: a redirect to another path (must not be followed), attempt 2: 500, attempt 3: 200
  script.push({ status: 302, location: `${receiverUrl}/redirected` }, { status: 500 });
  const res = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    headers: auth,
    payload: { communityId: 'hooks', dataset: toy.slice(0, 8), config: TINY, callbackUrl: `${receiverUrl}/hooks/dpo` },
  });
  assert.equal(res.statusCode, 202, res.body);
  const { jobId } = res.json();
  let evs: JobEvent[] = [];
  for (let i = 0; i < 1200; i++) {
    evs = await events(jobId);
    if (evs.some((e) => e.type === 'webhook.delivered' || e.type === 'webhook.failed')) break;
    await sleep(50);
  }
  assert.ok(
    evs.some((e) => e.type === 'webhook.delivered'),
    `${evs.map((e) => `${e.type}: ${e.message}`).join('\n')}\n${workerLog().slice(-2000)}`,
  );
  // three requests, all to the callback path (the redirect was not followed), one webhook-id
  assert.deepEqual(
    received.map((r) => r.path),
    ['/hooks/dpo', '/hooks/dpo', '/hooks/dpo'],
  );
  const ids = new Set(received.map((r) => r.headers['webhook-id']));
  assert.equal(ids.size, 1);
  // the delivered one verifies with the community's secret; a wrong secret does not
  const last = received.at(-1)!;
  const headers = {
    'webhook-id': String(last.headers['webhook-id']),
    'webhook-timestamp': String(last.headers['webhook-timestamp']),
    'webhook-signature': String(last.headers['webhook-signature']),
  };
  const payload = new Webhook(secret).verify(last.body, headers) as { type: string; data: Record<string, unknown> };
  assert.equal(payload.type, 'job.succeeded');
  assert.equal(payload.data.jobId, jobId);
  assert.equal(payload.data.communityId, 'hooks');
  assert.equal(payload.data.state, 'completed');
  assert.ok((payload.data.artifact as { files: number }).files > 0);
  assert.throws(() => new Webhook(`whsec_${randomBytes(24).toString('base64')}`).verify(last.body, headers));
  assert.throws(() => new Webhook(secret).verify(last.body.replace('completed', 'failed'), headers));
  // backoff: the retries waited (300 ms, then 600 ms, exponential)
  assert.ok(received[1]!.at - received[0]!.at >= 250, `${received[1]!.at - received[0]!.at} ms`);
  assert.ok(received[2]!.at - received[1]!.at >= 550, `${received[2]!.at - received[1]!.at} ms`);
  // every attempt is an event, after the job's outcome
  const attempts = evs.filter((e) => e.type === 'webhook.attempt');
  assert.deepEqual(
    attempts.map((e) => e.data.status),
    [302, 500, 200],
  );
  assert.match(attempts[0]!.message, /redirects are not followed/);
  assert.deepEqual(
    attempts.map((e) => e.data.attempt),
    [1, 2, 3],
  );
  const succeededAt = evs.findIndex((e) => e.type === 'job.succeeded');
  assert.ok(succeededAt >= 0 && succeededAt < evs.indexOf(attempts[0]!));
});

test('the documented schedule: WEBHOOK_BACKOFF_MS doubling over WEBHOOK_ATTEMPTS', () => {
  assert.deepEqual(retryDelays({ attempts: 8, backoffMs: 2000 }), [2000, 4000, 8000, 16000, 32000, 64000, 128000]);
});

test('non-public targets are refused without CALLBACK_ALLOW_PRIVATE (400 UNSAFE_CALLBACK_URL); http without ALLOW_HTTP_CALLBACKS', async () => {
  const strict = await buildApp({
    env: testEnv(prefix, { STORAGE_DIR: storageDir, SIGNING_SECRETS: `hooks:${secret}`, ALLOW_HTTP_CALLBACKS: 'true', ...KEYS }),
  });
  const https = await buildApp({ env: testEnv(prefix, { STORAGE_DIR: storageDir, SIGNING_SECRETS: `hooks:${secret}`, ...KEYS }) });
  try {
    const before = await strict.queueService.queue.getJobCounts('waiting', 'active', 'completed');
    for (const url of [
      receiverUrl,
      'http://localhost:9/x',
      'http://10.1.2.3/x',
      'http://169.254.169.254/latest/meta-data',
      'http://[::1]/x',
      'http://[fd00::1]/x',
      'http://[::ffff:127.0.0.1]/x',
      'http://100.64.0.1/x',
      'http://0.0.0.0/x',
    ]) {
      const r = await strict.inject({
        method: 'POST',
        url: '/trigger-finetune',
        headers: auth,
        payload: { communityId: 'hooks', dataset: toy.slice(0, 4), callbackUrl: url },
      });
      assert.equal(r.statusCode, 400, `${url}: ${r.body}`);
      assert.equal(r.json().problems[0].path, '/callbackUrl');
      assert.match(r.json().problems[0].message, /UNSAFE_CALLBACK_URL/, url);
    }
    assert.deepEqual(await strict.queueService.queue.getJobCounts('waiting', 'active', 'completed'), before);
    const plain = await https.inject({
      method: 'POST',
      url: '/trigger-finetune',
      headers: auth,
      payload: { communityId: 'hooks', dataset: toy.slice(0, 4), callbackUrl: 'http://93.184.216.34/x' },
    });
    assert.equal(plain.statusCode, 400);
    assert.match(plain.body, /must use https/);
    const creds = await https.inject({
      method: 'POST',
      url: '/trigger-finetune',
      headers: auth,
      payload: { communityId: 'hooks', dataset: toy.slice(0, 4), callbackUrl: 'https://u:p@93.184.216.34/x' },
    });
    assert.equal(creds.statusCode, 400);
    // no signing secret for the community: the callback cannot be signed
    const nosecret = await app.inject({
      method: 'POST',
      url: '/trigger-finetune',
      headers: auth,
      payload: { communityId: 'other', dataset: toy.slice(0, 4), callbackUrl: `${receiverUrl}/x` },
    });
    assert.equal(nosecret.statusCode, 400);
    assert.match(nosecret.body, /SIGNING_SECRETS/);
  } finally {
    await strict.close();
    await https.close();
  }
  // the address classes themselves (public ones pass)
  for (const a of [
    '127.0.0.1',
    '10.0.0.1',
    '172.16.5.4',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.1.1',
    '::1',
    'fe80::1',
    'fc00::1',
    '::ffff:10.0.0.1',
    '224.0.0.1',
    '0.0.0.0',
  ]) {
    assert.equal(isNonPublicAddress(a), true, a);
  }
  for (const a of ['93.184.216.34', '8.8.8.8', '2606:4700:4700::1111', '::ffff:8.8.8.8']) assert.equal(isNonPublicAddress(a), false, a);
});

/**
 * The trigger records a new job (the list index entry and its first event, `job.queued`) inside the
 * reservation's Redis script, before the job is added (src/queue/reserve.ts). Real HTTP, the real Redis:
 *
 * - a created job has its index entries and `job.queued`, with the job's own creation time as the score;
 * - when the job cannot be added after the reservation (the dataset store fails), the index entries, the
 *   event stream, the idempotency record and the live-set entry are all gone again, and the same
 *   Idempotency-Key works once the store does;
 * - the job list keeps a young index entry without a job (a trigger between its reservation and its add) and
 *   drops an old one.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { buildApp } from '../../src/api/app.js';
import { eventsKey } from '../../src/queue/events.js';
import { indexKey } from '../../src/queue/job-index.js';
import { RESERVATION_GRACE_MS } from '../../src/queue/finetune-queue.js';
import { dropPrefix, REDIS_URL, testEnv, toyRows, uniquePrefix } from './api-helpers.js';

const prefix = uniquePrefix('trec');
const dir = mkdtempSync(join(tmpdir(), 'dpo-trec-'));
const AUTH = { authorization: 'Bearer rec-secret', 'content-type': 'application/json' };
let app: FastifyInstance;
let base: string;
let redis: Redis;

before(async () => {
  app = await buildApp({ env: testEnv(prefix, { API_KEYS: 'rec-secret:*', STORAGE_DIR: dir }) });
  await app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  redis = new Redis(REDIS_URL);
});

after(async () => {
  await app.close();
  await redis.quit();
  await dropPrefix(prefix);
  rmSync(dir, { recursive: true, force: true });
});

async function trigger(communityId: string, key: string, tag: string): Promise<Response> {
  return fetch(`${base}/trigger-finetune`, {
    method: 'POST',
    headers: { ...AUTH, 'idempotency-key': key },
    body: JSON.stringify({ communityId, dataset: toyRows(2, tag) }),
  });
}

async function keysOf(pattern: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    out.push(...keys);
  } while (cursor !== '0');
  return out;
}

test('a created job is in both indexes with its creation time and its first event is job.queued', async () => {
  const res = await trigger('rec-ok', 'ok-1', 'ok');
  assert.equal(res.status, 202);
  const { jobId } = (await res.json()) as { jobId: string };
  const job = await app.queueService.queue.getJob(jobId);
  assert.ok(job, 'the job was added');
  assert.equal(Number(await redis.zscore(indexKey(prefix), jobId)), job.timestamp);
  assert.equal(Number(await redis.zscore(indexKey(prefix, 'rec-ok'), jobId)), job.timestamp);
  const events = await redis.xrange(eventsKey(prefix, jobId), '-', '+');
  assert.equal(events.length, 1);
  const body = JSON.parse(events[0]![1][1]!) as { type: string; data: { communityId: string; rows: number } };
  assert.equal(body.type, 'job.queued');
  assert.deepEqual([body.data.communityId, body.data.rows], ['rec-ok', 2]);
  assert.ok((await redis.ttl(eventsKey(prefix, jobId))) > 0, 'the event stream expires');
});

test('a job that cannot be added leaves no index entry, no event, no idempotency record; the key works afterwards', async () => {
  // the community's dataset directory is a file: the store's write fails after the reservation
  mkdirSync(join(dir, '.datasets'), { recursive: true });
  writeFileSync(join(dir, '.datasets', 'rec-broken'), 'not a directory');
  const res = await trigger('rec-broken', 'broken-1', 'broken');
  assert.equal(res.status, 503, await res.text());
  assert.equal(await redis.zcard(indexKey(prefix, 'rec-broken')), 0, 'no community index entry');
  const all = await redis.zrange(indexKey(prefix), '0', '-1');
  const streams = await keysOf(`${prefix}:*dpo-events:*`);
  for (const id of all) assert.ok((await app.queueService.queue.getJob(id)) !== undefined, `index entry ${id} has a job`);
  assert.equal(streams.length, all.length, `one event stream per indexed job: ${streams.join(', ')}`);
  assert.equal((await keysOf(`${prefix}:*rec-broken*`)).length, 0, 'nothing of the community is left in Redis');

  // the store works again: the same key creates the job
  rmSync(join(dir, '.datasets', 'rec-broken'));
  const again = await trigger('rec-broken', 'broken-1', 'broken');
  const text = await again.text();
  assert.equal(again.status, 202, text);
  const { jobId } = JSON.parse(text) as { jobId: string };
  assert.equal(await redis.zcard(indexKey(prefix, 'rec-broken')), 1);
  assert.equal((await redis.xrange(eventsKey(prefix, jobId), '-', '+')).length, 1);
});

test('the job list keeps a young index entry without a job and drops an old one', async () => {
  const now = Date.now();
  const young = 'ft-000000000000000000young';
  const old = 'ft-0000000000000000000old';
  for (const k of [indexKey(prefix), indexKey(prefix, 'rec-pending')]) {
    await redis.zadd(k, now - 1000, young);
    await redis.zadd(k, now - RESERVATION_GRACE_MS - 5000, old);
  }
  const res = await fetch(`${base}/jobs?communityId=rec-pending`, { headers: AUTH });
  assert.equal(res.status, 200);
  const list = (await res.json()) as { data: Array<{ jobId: string }> };
  assert.deepEqual(list.data, [], 'neither entry is shown: neither has a job');
  // the old entry is removed in the background
  for (let i = 0; i < 50 && (await redis.zscore(indexKey(prefix), old)) !== null; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await redis.zscore(indexKey(prefix), old), null, 'the old entry is dropped');
  assert.notEqual(await redis.zscore(indexKey(prefix), young), null, 'the young entry is kept');
  assert.notEqual(await redis.zscore(indexKey(prefix, 'rec-pending'), young), null);
});

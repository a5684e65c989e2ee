/** Pure parts of the job layer: BullMQ state → contract state, failure codes, idempotent job ids, env. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeFailure, JobFailure } from '../../src/queue/errors.js';
import { canonicalJson, datasetHash, newJobId } from '../../src/queue/finetune-queue.js';
import { mapBullState, toJobStatus } from '../../src/queue/status.js';
import { EnvError, loadEnv } from '../../src/config/env.js';

const base = { id: 'ft-1', data: { communityId: 'c' }, progress: 0, returnvalue: null, timestamp: Date.UTC(2026, 0, 1) };

test('BullMQ states map to queued | active | completed | failed', () => {
  for (const s of ['waiting', 'delayed', 'prioritized', 'waiting-children', 'unknown']) assert.equal(mapBullState(s), 'queued');
  assert.equal(mapBullState('active'), 'active');
  assert.equal(mapBullState('completed'), 'completed');
  assert.equal(mapBullState('failed'), 'failed');
});

test('failedReason CODE: message round-trips; a cancelled failure is state cancelled', () => {
  const f = new JobFailure('JOB_CANCELLED', 'cancelled by request');
  assert.deepEqual(decodeFailure(f.message), { code: 'JOB_CANCELLED', message: 'cancelled by request' });
  assert.deepEqual(decodeFailure('boom'), { code: 'JOB_FAILED', message: 'boom' });
  const s = toJobStatus({ ...base, failedReason: f.message, finishedOn: base.timestamp + 1000 }, 'failed');
  assert.equal(s.state, 'cancelled');
  assert.equal(s.finishedAt, new Date(base.timestamp + 1000).toISOString());
  const t = toJobStatus({ ...base, failedReason: 'INVALID_CONFIG: loss.beta must be > 0' }, 'failed');
  assert.equal(t.state, 'failed');
  assert.deepEqual(t.error, { code: 'INVALID_CONFIG', message: 'loss.beta must be > 0' });
});

test('an active job reports the stage and progress of the worker', () => {
  const progress = {
    stage: 'dpo',
    step: 3,
    totalSteps: 4,
    fraction: 0.75,
    metrics: { sft: { loss: 2 }, dpo: { 'rewards/margins': 0.1 } },
    stages: [
      { stage: 'sft', startedAt: 'a', finishedAt: 'b' },
      { stage: 'dpo', startedAt: 'b', finishedAt: null },
    ],
  };
  const s = toJobStatus({ ...base, progress }, 'active');
  assert.equal(s.state, 'active');
  assert.equal(s.stage, 'dpo');
  assert.deepEqual(s.progress, { stage: 'dpo', step: 3, totalSteps: 4, fraction: 0.75 });
  assert.equal(s.metrics.dpo['rewards/margins'], 0.1);
  assert.equal(s.finishedAt, null);
});

test('job ids are random (crypto), never contain ":" and are never all digits; request hashes ignore key order', () => {
  const rows = [{ prompt: 'p', chosen: 'a', rejected: 'b' }];
  const h = datasetHash(rows, { beta: 0.1, n_epochs: 1 });
  assert.equal(h, datasetHash(rows, { n_epochs: 1, beta: 0.1 }), 'key order does not matter');
  assert.notEqual(h, datasetHash(rows, { beta: 0.2, n_epochs: 1 }));
  const ids = new Set(Array.from({ length: 1000 }, () => newJobId()));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, /^ft-[0-9a-f]{24}$/);
  assert.equal(canonicalJson({ b: 1, a: [1, { d: 2, c: 3 }] }), '{"a":[1,{"c":3,"d":2}],"b":1}');
});

test('a bad environment value names the variable', () => {
  assert.throws(
    () => loadEnv({ PORT: 'eighty' }),
    (e: unknown) => e instanceof EnvError && /PORT/.test(e.message),
  );
  assert.throws(() => loadEnv({ STORAGE_BACKEND: 's3' }), /STORAGE_BACKEND/);
  assert.throws(() => loadEnv({ STORAGE_BACKEND: 'firebase' }), /FIREBASE_BUCKET/);
  assert.throws(() => loadEnv({ REDIS_URL: 'localhost:6379' }), /REDIS_URL/);
  const env = loadEnv({ PORT: '9000', STORAGE_DIR: '/tmp/a/' });
  assert.equal(env.PORT, 9000);
  assert.equal(env.HOST, '0.0.0.0');
  assert.equal(env.WORK_DIR, '/tmp/a/.work');
});

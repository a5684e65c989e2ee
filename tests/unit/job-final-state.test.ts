/**
 * The records a lost job lock relies on (src/queue/final-state.ts), against the real Redis and real files:
 * - the final state is recorded once: of 8 concurrent writers with the same marker, one appends its terminal
 *   event, the others write nothing and read the winner's record back;
 * - an artifact record from Redis is only used when it is well-formed, names the job and matches what storage
 *   holds (LocalStorage.verifyArtifact): a tampered record, a tampered stored file or a missing artifact is refused.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { JobEventLog } from '../../src/queue/events.js';
import {
  finalStateKey,
  parseArtifactRecord,
  parseFinalState,
  readArtifactRecord,
  readFinalState,
  writeArtifactRecord,
  type ArtifactRecord,
} from '../../src/queue/final-state.js';
import { LocalStorage } from '../../src/storage/local.js';
import { sha256File, writeManifest } from '../../src/storage/manifest.js';
import { dropPrefix, REDIS_URL, uniquePrefix } from './api-helpers.js';

const prefix = uniquePrefix('final');
const redis = new Redis(REDIS_URL);
const dir = mkdtempSync(join(tmpdir(), 'dpo-final-'));

after(async () => {
  await dropPrefix(prefix);
  redis.disconnect();
  rmSync(dir, { recursive: true, force: true });
});

const jobId = 'ft-0123456789abcdef01234567';

test('the final state is recorded once: one of 8 racing writers appends the terminal event', async () => {
  const log = new JobEventLog(redis, prefix);
  const key = finalStateKey(prefix, jobId);
  const results = await Promise.all(
    Array.from({ length: 8 }, (_, i) => {
      const value = JSON.stringify({ outcome: 'completed', code: null, message: null, at: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString() });
      // each writer on its own connection, as separate workers would be
      const own = new Redis(REDIS_URL);
      return new JobEventLog(own, prefix)
        .appendOnce(jobId, key, value, 60, { type: 'job.succeeded', message: `writer ${i}`, data: { i } })
        .finally(() => own.disconnect());
    }),
  );
  const winners = results.filter((r) => r.first);
  assert.equal(winners.length, 1);
  const succeeded = await log.ofType(jobId, 'job.succeeded');
  assert.equal(succeeded.length, 1);
  // the losers read the winner's record back
  const stored = await redis.get(key);
  for (const r of results) if (!r.first) assert.equal(r.existing, stored);
  const read = await readFinalState(redis, prefix, jobId);
  assert.equal(read.kind, 'ok');
  assert.equal(read.kind === 'ok' && read.value.outcome, 'completed');
  assert.ok((await redis.ttl(key)) > 0, 'the record expires with the job');
  // malformed records are refused, not trusted
  for (const bad of ['nope', '{}', JSON.stringify({ outcome: 'failed', code: 'lower', message: 'x', at: '2026-01-01T00:00:00Z' })]) {
    assert.equal(parseFinalState(bad).kind, 'invalid', bad);
  }
});

async function artifact(name: string): Promise<string> {
  const out = join(dir, name);
  mkdirSync(join(out, 'model'), { recursive: true });
  writeFileSync(join(out, 'model', 'model.safetensors'), Buffer.alloc(128, 7));
  writeFileSync(join(out, 'metrics.jsonl'), '{"stage":"sft","step":1,"loss":0.5}\n');
  await writeManifest(out);
  return out;
}

test('an artifact record is used only when well-formed, for this job, and matching storage', async () => {
  const storage = new LocalStorage(join(dir, 'store'));
  const src = await artifact('trained');
  const sha = await sha256File(join(src, 'manifest.json'));
  const uploaded = await storage.putArtifact(src, 'acme', jobId);
  const record: ArtifactRecord = {
    v: 1,
    jobId,
    communityId: 'acme',
    manifestSha256: sha,
    uri: uploaded.uri,
    metrics: { sft: { loss: 0.5 }, dpo: { loss: 0.4, 'rewards/margins': 1.5 } },
    stages: [{ stage: 'sft', startedAt: '2026-01-01T00:00:00.000Z', finishedAt: '2026-01-01T00:00:01.000Z' }],
    durations: { sft: 1 },
    trainedTokens: 42,
    recordedAt: '2026-01-01T00:00:02.000Z',
  };
  await writeArtifactRecord(redis, prefix, record, 60);
  const read = await readArtifactRecord(redis, prefix, jobId, 'acme');
  assert.equal(read.kind, 'ok');
  assert.deepEqual(read.kind === 'ok' && read.value, record);
  assert.deepEqual(await storage.verifyArtifact('acme', jobId, sha), uploaded);
  // the record names another community, another job, or carries a bad digest / metric: refused
  assert.equal((await readArtifactRecord(redis, prefix, jobId, 'globex')).kind, 'invalid');
  assert.equal(parseArtifactRecord(JSON.stringify(record), 'ft-ffffffffffffffffffffffff', 'acme').kind, 'invalid');
  assert.equal(parseArtifactRecord(JSON.stringify({ ...record, manifestSha256: '../x' }), jobId, 'acme').kind, 'invalid');
  assert.equal(parseArtifactRecord(JSON.stringify({ ...record, metrics: { sft: { loss: '1' }, dpo: {} } }), jobId, 'acme').kind, 'invalid');
  assert.equal(parseArtifactRecord(JSON.stringify({ ...record, extra: 1 }), jobId, 'acme').kind, 'invalid');
  assert.equal(parseArtifactRecord('{"v":1', jobId, 'acme').kind, 'invalid');
  // storage decides: another digest, a tampered stored file, a missing artifact
  assert.equal(await storage.verifyArtifact('acme', jobId, 'f'.repeat(64)), null);
  assert.equal(await storage.verifyArtifact('acme', 'ft-ffffffffffffffffffffffff', sha), null);
  writeFileSync(join(dir, 'store', 'acme', jobId, 'model', 'model.safetensors'), Buffer.alloc(128, 8));
  assert.equal(await storage.verifyArtifact('acme', jobId, sha), null);
  // an identical re-upload repairs it and is otherwise a no-op (same names, same bytes)
  assert.deepEqual(await storage.putArtifact(src, 'acme', jobId), uploaded);
  assert.deepEqual(await storage.verifyArtifact('acme', jobId, sha), uploaded);
  await assert.rejects(storage.verifyArtifact('..', jobId, sha), /not a safe path segment/);
});

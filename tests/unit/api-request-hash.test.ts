/**
 * The trigger's cheap paths keep their contracts:
 * - requestHashOf (the idempotency hash, written out key by key) equals canonicalSha256 of the object it
 *   stands for, for any config (fast-check, fixed seed), frozen by freezeCanonical or not;
 * - memoizeConfigResolution returns one deep-frozen result per input within its TTL (a write throws), resolves
 *   again after the TTL and drops the oldest input past `max`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { requestHashOf } from '../../src/queue/finetune-queue.js';
import { canonicalJson, canonicalJsonOf, canonicalSha256, freezeCanonical } from '../../src/training/data/hash.js';
import { memoizeConfigResolution } from '../../src/api/config-memo.js';
import type { TrainConfig } from '../../src/config/index.js';

test('requestHashOf equals canonicalSha256 of {communityId, config, dataset, fields}, frozen config or not', () => {
  const community = fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/);
  const sha = fc.stringMatching(/^[0-9a-f]{64}$/);
  const config = fc.oneof(fc.constant(null), fc.dictionary(fc.string({ unit: 'binary', maxLength: 12 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 8 }));
  const fields = fc.dictionary(fc.constantFrom('suffix', 'method', 'callbackUrl', 'datasetId', 'evalDatasetId'), fc.string({ unit: 'binary', maxLength: 20 }));
  fc.assert(
    fc.property(community, sha, config, fields, (c, d, cfg, f) => {
      const expected = canonicalSha256({ communityId: c, dataset: d, config: cfg, fields: f });
      assert.equal(requestHashOf(c, d, cfg, f), expected);
      if (cfg !== null) {
        const frozen = freezeCanonical(structuredClone(cfg));
        assert.equal(canonicalJsonOf(frozen), canonicalJson(cfg));
        assert.equal(requestHashOf(c, d, frozen, f), expected);
      }
    }),
    { seed: 1717, numRuns: 300 },
  );
  // undefined members are dropped, as canonicalJson drops them
  const withUndefined = { beta: 0.1, loss: undefined };
  assert.equal(
    requestHashOf('a', '0'.repeat(64), withUndefined, {}),
    canonicalSha256({ communityId: 'a', dataset: '0'.repeat(64), config: { beta: 0.1 }, fields: {} }),
  );
});

test('memoizeConfigResolution: one deep-frozen result per input within the TTL, resolved again after it', async () => {
  let calls = 0;
  const resolve = (config: Record<string, unknown> | undefined) => {
    calls++;
    return { config: { beta: (config?.beta as number) ?? 0.1, sft: { lr: 1e-5 }, n: calls } as unknown as TrainConfig, problems: [] };
  };
  const memo = memoizeConfigResolution(resolve, { ttlMs: 40, max: 2 });
  const a = memo({ beta: 0.2 });
  const b = memo({ beta: 0.2 });
  assert.equal(calls, 1);
  assert.equal(a, b, 'the same shared result');
  assert.ok(Object.isFrozen(a) && Object.isFrozen(a.config) && Object.isFrozen((a.config as unknown as { sft: object }).sft));
  assert.throws(() => {
    (a.config as unknown as { beta: number }).beta = 9;
  }, TypeError);
  assert.equal(canonicalJsonOf(a.config), canonicalJson(a.config));
  // another input, then a third: the oldest is dropped (max 2)
  memo({ beta: 0.3 });
  memo({ beta: 0.4 });
  assert.equal(calls, 3);
  memo({ beta: 0.2 });
  assert.equal(calls, 4, 'beta 0.2 was evicted');
  await new Promise((r) => setTimeout(r, 60));
  const c = memo({ beta: 0.4 });
  assert.equal(calls, 5, 'resolved again after the TTL');
  assert.equal((c.config as unknown as { n: number }).n, 5);
});

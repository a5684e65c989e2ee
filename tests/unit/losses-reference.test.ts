/**
 * Reference-model sync (TR-DPO soft update, PaddleNLP hard copy) and the metric helpers
 * (strict reward accuracy, micro-batch averaging, eval_ prefix, [chosen; rejected] stats split).
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import {
  ReferenceSyncError,
  averageMetrics,
  hardSyncReference,
  preferenceMetrics,
  referenceSyncDue,
  softSyncReference,
  splitStats,
  withEvalPrefix,
} from '../../src/training/losses/index.js';

before(async () => {
  await initBackend('auto');
});

function params(values: Record<string, number[]>, trainable: boolean): Map<string, tf.Variable> {
  return new Map(Object.entries(values).map(([k, v]) => [k, tf.variable(tf.tensor1d(v), trainable)]));
}

test('soft sync: ref = alpha * policy + (1 - alpha) * ref, element by element; policy untouched', () => {
  const policy = params({ a: [1, 2, 3], b: [-4, 0.5] }, true);
  const ref = params({ a: [0, 0, 1], b: [4, 0.5] }, false);
  softSyncReference(policy, ref, 0.6);
  const expectA = [0.6 * 1 + 0.4 * 0, 0.6 * 2 + 0.4 * 0, 0.6 * 3 + 0.4 * 1];
  const expectB = [0.6 * -4 + 0.4 * 4, 0.6 * 0.5 + 0.4 * 0.5];
  Array.from(ref.get('a')!.dataSync()).forEach((v, i) => assert.ok(Math.abs(v - expectA[i]!) < 1e-6));
  Array.from(ref.get('b')!.dataSync()).forEach((v, i) => assert.ok(Math.abs(v - expectB[i]!) < 1e-6));
  assert.deepEqual(Array.from(policy.get('a')!.dataSync()), [1, 2, 3]);
  assert.equal(ref.get('a')!.trainable, false, 'the reference stays frozen');
  assert.throws(() => softSyncReference(policy, ref, 1.5), RangeError);
});

test('hard sync copies the policy; a later policy update does not leak into the reference', () => {
  const policy = params({ a: [1, 2, 3] }, true);
  const ref = params({ a: [9, 9, 9] }, false);
  hardSyncReference(policy, ref);
  assert.deepEqual(Array.from(ref.get('a')!.dataSync()), [1, 2, 3]);
  policy.get('a')!.assign(tf.tensor1d([7, 7, 7]));
  assert.deepEqual(Array.from(ref.get('a')!.dataSync()), [1, 2, 3]);
});

test('sync refuses mismatched parameter maps with REFERENCE_SYNC_MISMATCH', () => {
  const policy = params({ a: [1, 2, 3] }, true);
  assert.throws(
    () => hardSyncReference(policy, params({ a: [1, 2] }, false)),
    (e: unknown) => e instanceof ReferenceSyncError && e.code === 'REFERENCE_SYNC_MISMATCH',
  );
  assert.throws(() => softSyncReference(policy, params({ z: [1, 2, 3] }, false), 0.5), ReferenceSyncError);
});

test('referenceSyncDue: soft every ref_model_sync_steps when sync_ref_model, hard every ref_model_update_steps', () => {
  const soft = { syncRefModel: true, refModelSyncSteps: 4 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 8].map((s) => referenceSyncDue(s, soft)),
    [null, null, null, 'soft', null, 'soft'],
  );
  assert.equal(referenceSyncDue(4, { syncRefModel: false, refModelSyncSteps: 4 }), null);
  assert.equal(referenceSyncDue(6, { refModelUpdateSteps: 3 }), 'hard');
  assert.equal(referenceSyncDue(5, { refModelUpdateSteps: 3 }), null);
});

test('preferenceMetrics: accuracies use strict >, logit metrics are token-weighted, num_tokens and loss pass through', () => {
  const m = preferenceMetrics({
    chosenRewards: [0.2, 0.1, -0.3, 0.05],
    rejectedRewards: [0.1, 0.1, -0.5, 0.2],
    policyChosenLogps: [-10, -20, -30, -40],
    policyRejectedLogps: [-1, -2, -3, -4],
    chosenStats: { logitSum: [2, 4], entropySum: [3, 1], correct: [1, 2], tokens: [2, 4] },
    rejectedStats: { logitSum: [1, 0], entropySum: [2, 2], correct: [0, 0], tokens: [1, 3] },
    numTokens: 1234,
    loss: 0.5,
  });
  assert.equal(m['rewards/accuracies'], 0.5); // 0.2>0.1 yes, 0.1>0.1 no (tie), -0.3>-0.5 yes, 0.05>0.2 no
  assert.ok(Math.abs(m['rewards/margins']! - (0.1 + 0 + 0.2 - 0.15) / 4) < 1e-12);
  assert.equal(m['logps/chosen'], -25);
  assert.equal(m['logps/rejected'], -2.5);
  assert.equal(m['logits/chosen'], 6 / 6);
  assert.equal(m['logits/rejected'], 1 / 4);
  assert.equal(m.entropy, 8 / 10);
  assert.equal(m.mean_token_accuracy, 3 / 6);
  assert.equal(m.num_tokens, 1234);
  assert.equal(m.loss, 0.5);
});

test('averageMetrics (simple mean per key, num_tokens keeps the running total), eval_ prefix, splitStats', () => {
  const avg = averageMetrics([
    { loss: 1, 'rewards/accuracies': 0.5, num_tokens: 100 },
    { loss: 3, 'rewards/accuracies': 1, num_tokens: 250 },
  ]);
  assert.deepEqual(avg, { loss: 2, 'rewards/accuracies': 0.75, num_tokens: 250 });
  assert.deepEqual(withEvalPrefix({ loss: 2, 'rewards/margins': 0.1, eval_loss: 3 }), { eval_loss: 3, 'eval_rewards/margins': 0.1 });
  const s = splitStats({ logitSum: [1, 2, 3, 4], entropySum: [5, 6, 7, 8], correct: [0, 1, 1, 0], tokens: [2, 3, 4, 5] });
  assert.deepEqual(s.chosen.tokens, [2, 3]);
  assert.deepEqual(s.rejected.logitSum, [3, 4]);
  assert.throws(() => splitStats({ logitSum: [1], entropySum: [1], correct: [1], tokens: [1] }), RangeError);
});

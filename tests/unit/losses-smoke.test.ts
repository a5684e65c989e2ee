/**
 * Training smoke test per loss type on stories260K (TRL's test_train_loss_types pattern): an SGD step at
 * lr 0.1 with completionLogps + preferenceLoss; the loss is finite, every trainable weight changed, the frozen
 * reference did not change. A plain SGD loop here (the trainer has its own tests).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { loadPretrained, cloneModel } from '../../src/training/models/index.js';
import { tokenizePreference, collatePreference, resolvePadId } from '../../src/training/data/index.js';
import { LOSS_TYPES, completionLogps, needsReference, normalizeLossOptions, preferenceLoss, type LossType } from '../../src/training/losses/index.js';
import type { CausalLM } from '../../src/training/types.js';

let base: CausalLM;
let reference: CausalLM;
let ids: tf.Tensor2D;
let mask: tf.Tensor2D;
let B = 0;

before(async () => {
  await initBackend('auto');
  const { model, tokenizer } = await loadPretrained('stories260K');
  base = model;
  reference = cloneModel(model, { trainable: false });
  const examples = [
    { prompt: 'Once upon a time, there was a little girl', chosen: ' who loved to play in the park.', rejected: ' who hated everything.' },
    { prompt: 'The dog saw a big ball', chosen: ' and ran to get it. He was happy.', rejected: ' and sat.' },
  ];
  const pairs = examples.map((ex) => tokenizePreference(ex, tokenizer, { maxLength: 32, maxPromptLength: 16, truncationMode: 'keep_end' })!);
  const batch = collatePreference(pairs, resolvePadId(tokenizer));
  B = pairs.length;
  ids = tf.tensor2d(batch.inputIds, [batch.rows, batch.seqLen], 'int32');
  mask = tf.tensor2d(batch.completionMask, [batch.rows, batch.seqLen]);
});

after(() => {
  base?.dispose();
  reference?.dispose();
});

function snapshot(m: CausalLM): Map<string, Float32Array> {
  return new Map([...m.params].map(([k, v]) => [k, v.dataSync().slice() as Float32Array]));
}

test('every loss type trains stories260K: loss logged, every trainable weight changed, reference unchanged', () => {
  const refBefore = snapshot(reference);
  assert.ok(needsReference(normalizeLossOptions({ lossType: 'sigmoid', beta: 0.1 })));
  const rl = completionLogps(reference, ids, mask).logps;
  const refChosen = tf.slice(rl, [0], [B]);
  const refRejected = tf.slice(rl, [B], [B]);
  const numTensorsAtStart = tf.memory().numTensors;
  for (const lossType of LOSS_TYPES as readonly LossType[]) {
    const policy = cloneModel(base, { trainable: true });
    const before = snapshot(policy);
    const opts = normalizeLossOptions({ lossType, beta: 0.1, labelSmoothing: lossType === 'exo_pair' || lossType === 'robust' ? 0.1 : 0 });
    const vars = [...policy.params.values()].filter((v) => v.trainable);
    const losses: number[] = [];
    for (let step = 0; step < 1; step++) {
      const { value, grads } = tf.variableGrads(() => {
        const { logps, tokenCounts } = completionLogps(policy, ids, mask);
        const out = preferenceLoss(
          {
            policyChosenLogps: tf.slice(logps, [0], [B]),
            policyRejectedLogps: tf.slice(logps, [B], [B]),
            referenceChosenLogps: refChosen,
            referenceRejectedLogps: refRejected,
            chosenTokens: tf.slice(tokenCounts, [0], [B]),
            rejectedTokens: tf.slice(tokenCounts, [B], [B]),
          },
          opts,
        );
        return tf.mean(out.losses) as tf.Scalar;
      }, vars);
      losses.push(value.dataSync()[0]!);
      tf.tidy(() => {
        for (const v of vars) v.assign(tf.sub(v, tf.mul(0.1, grads[v.name]!)));
      });
      tf.dispose([value, ...Object.values(grads)]);
    }
    assert.ok(losses.every(Number.isFinite), `${lossType}: losses ${losses}`);
    if (lossType === 'sigmoid') assert.ok(Math.abs(losses[0]! - Math.LN2) < 1e-5, `sigmoid step 1 with policy == reference: ${losses[0]} != ln 2`);
    for (const [name, v] of policy.params) {
      const b = before.get(name)!;
      const a = v.dataSync();
      assert.ok(
        a.some((x, i) => x !== b[i]),
        `${lossType}: parameter ${name} did not change`,
      );
    }
    policy.dispose();
  }
  for (const [name, v] of reference.params) {
    assert.deepEqual(v.dataSync(), refBefore.get(name), `reference parameter ${name} changed`);
  }
  assert.ok(tf.memory().numTensors <= numTensorsAtStart + 2, `tensors leaked: ${numTensorsAtStart} → ${tf.memory().numTensors}`);
});

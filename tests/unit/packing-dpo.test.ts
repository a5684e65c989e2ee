/**
 * Packed DPO/SFT micro-batches (padding_free, shared_prompt; data/packing.ts) against the padded layout: the
 * same per-pair log-probs, losses, metrics and gradients (1e-5 relative) on pairs of very different lengths
 * (1-token answers, a prompt longer than both answers), for sigmoid, ipo and the reference-free simpo, on a
 * Llama (GQA, RoPE) and a GPT-2 (learned positions); the first DPO step against a copy of the policy is ln 2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { cloneModel, createModel } from '../../src/training/models/index.js';
import { collatePreference, packPreference, type TokenizedPair } from '../../src/training/data/index.js';
import { completionLogps, packedCompletionLogps, resolveLossOptions } from '../../src/training/losses/index.js';
import { dpoTask, sftTask } from '../../src/training/trainer/tasks.js';
import type { ModelConfig } from '../../src/training/types.js';
import { Rng } from '../../src/util/rng.js';

await initBackend('auto');

function llamaConfig(): ModelConfig {
  return {
    architecture: 'llama',
    modelType: 'llama',
    vocabSize: 61,
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    maxPositionEmbeddings: 128,
    normEps: 1e-6,
    ropeTheta: 10000,
    ropeScaling: null,
    tieWordEmbeddings: false,
    attentionBias: false,
    qkNorm: false,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: null,
  };
}
const gpt2Config = (): ModelConfig => ({ ...llamaConfig(), architecture: 'gpt2', modelType: 'gpt2', numKvHeads: 4, tieWordEmbeddings: true, normEps: 1e-5 });

let s = 7;
const rnd = (): number => {
  s = (s * 1103515245 + 12345) % 2147483648;
  return s / 2147483648;
};
const ids = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(rnd() * 55));
/** Very different lengths: 1-token answers, a long prompt with short answers, long answers on a short prompt. */
const PAIRS: TokenizedPair[] = [
  [5, 1, 1],
  [40, 3, 2],
  [2, 30, 9],
  [1, 1, 25],
  [12, 7, 7],
].map(([P, C, R]) => {
  const chosen = ids(C!);
  return { promptIds: ids(P!), chosenIds: chosen, rejectedIds: ids(R!), sftIds: chosen };
});

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / Math.max(m, 1e-30);
}

const models: Array<[string, () => ModelConfig]> = [
  ['llama', llamaConfig],
  ['gpt2', gpt2Config],
];

for (const [arch, cfg] of models) {
  test(`${arch}: packed per-sequence log-probs equal the padded ones`, () => {
    const model = createModel(cfg(), { seed: 11 });
    const padded = tf.tidy(() => {
      const b = collatePreference(PAIRS, 0);
      const r = completionLogps(model, tf.tensor2d(b.inputIds, [b.rows, b.seqLen], 'int32'), tf.tensor2d(b.completionMask, [b.rows, b.seqLen]));
      return [r.logps.dataSync().slice(), r.tokenCounts.dataSync().slice()] as const;
    });
    for (const layout of ['padding_free', 'shared_prompt'] as const) {
      const r = tf.tidy(() => {
        const out = packedCompletionLogps(model, packPreference(PAIRS, layout));
        return [out.logps.dataSync().slice(), out.tokenCounts.dataSync().slice()] as const;
      });
      assert.deepEqual(Array.from(r[1]), Array.from(padded[1]), `${layout}: token counts`);
      const e = maxRel(r[0], padded[0]);
      assert.ok(e < 1e-5, `${layout}: logps relative error ${e}`);
    }
    model.dispose();
  });

  for (const lossName of ['sigmoid', 'ipo', 'simpo'] as const) {
    test(`${arch} ${lossName}: packed micro-batch loss, metrics and gradients equal the padded ones; first step ln 2`, () => {
      const policy = createModel(cfg(), { seed: 5 });
      const reference = cloneModel(policy, { trainable: false });
      const loss = resolveLossOptions(
        lossName === 'sigmoid' ? { name: 'dpo', beta: 0.1 } : lossName === 'ipo' ? { name: 'ipo', beta: 0.1 } : { name: 'simpo', beta: 2 },
      );
      const run = (layout: 'padded' | 'padding_free' | 'shared_prompt') => {
        const task = dpoTask({
          policy,
          reference: lossName === 'simpo' ? { kind: 'none' } : { kind: 'model', model: reference },
          train: PAIRS,
          eval: [],
          padId: 0,
          loss,
          params: policy.params,
          evalBatchSize: 4,
          logitStats: true,
          layout,
        });
        const r = task.micro([0, 1, 2, 3, 4], 1, new Rng(1));
        const grads = new Map([...r.grads].map(([k, g]) => [k, g.dataSync().slice() as Float32Array]));
        for (const g of r.grads.values()) g.dispose();
        return { loss: r.loss, metrics: r.metrics, grads, tokens: r.tokens };
      };
      const padded = run('padded');
      if (lossName === 'sigmoid') assert.equal(Math.fround(padded.loss), Math.fround(Math.LN2), 'padded first step');
      for (const layout of ['padding_free', 'shared_prompt'] as const) {
        const p = run(layout);
        if (lossName === 'sigmoid') assert.equal(Math.fround(p.loss), Math.fround(Math.LN2), `${layout}: first step is ln 2, got ${p.loss}`);
        assert.ok(Math.abs(p.loss - padded.loss) <= 1e-5 * Math.abs(padded.loss), `${layout}: loss ${p.loss} vs ${padded.loss}`);
        for (const [k, v] of Object.entries(padded.metrics)) {
          const e = Math.abs(p.metrics[k]! - v) / Math.max(Math.abs(v), 1e-3);
          assert.ok(e < 1e-4, `${layout}: metric ${k} ${p.metrics[k]} vs ${v}`);
        }
        assert.equal(p.grads.size, padded.grads.size);
        let nonzero = 0;
        for (const [k, g] of padded.grads) {
          const e = maxRel(p.grads.get(k)!, g);
          assert.ok(e < 1e-5, `${layout}: gradient of ${k} relative error ${e}`);
          if (g.some((x) => x !== 0)) nonzero++;
        }
        assert.ok(nonzero > padded.grads.size / 2, 'gradients are not vacuous');
      }
      policy.dispose();
      reference.dispose();
    });
  }
}

test('SFT padding_free: loss and gradients equal the padded SFT micro-batch', () => {
  const model = createModel(llamaConfig(), { seed: 9 });
  const run = (layout: 'padded' | 'padding_free') => {
    const task = sftTask({ model, train: PAIRS, eval: [], padId: 0, params: model.params, evalBatchSize: 4, layout });
    const r = task.micro([0, 1, 2, 3, 4], 1, new Rng(1));
    const grads = new Map([...r.grads].map(([k, g]) => [k, g.dataSync().slice() as Float32Array]));
    for (const g of r.grads.values()) g.dispose();
    return { loss: r.loss, grads };
  };
  const a = run('padded');
  const b = run('padding_free');
  assert.ok(Math.abs(a.loss - b.loss) <= 1e-5 * a.loss, `loss ${b.loss} vs ${a.loss}`);
  for (const [k, g] of a.grads) assert.ok(maxRel(b.grads.get(k)!, g) < 1e-5, `gradient of ${k}`);
  model.dispose();
});

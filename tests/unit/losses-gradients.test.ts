/**
 * Gradients: tfjs gradients of the batch loss w.r.t. the log-probs match central finite differences; the
 * completion log-probs of a tiny CausalLM (built here from tf variables: the CausalLM interface, not a mock
 * of a service) match the logits path, are differentiable, and a fully truncated completion gives no NaN.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { embedding } from '../../src/training/engine/ops.js';
import { LOSS_TYPES, completionLogps, logpsFromLogits, preferenceLoss, sftLoss, type LossOptions } from '../../src/training/losses/index.js';
import type { CausalLM, ModelConfig } from '../../src/training/types.js';

before(async () => {
  await initBackend('auto');
});

const PC = [-3.1, -2.4, -4.2, -1.7];
const PR = [-5.3, -2.2, -6.1, -2.6];
const RC = [-2.8, -2.9, -3.7, -1.3];
const RR = [-3.4, -2.6, -4.8, -1.9];
const NC = [3, 2, 4, 1];
const NR = [5, 3, 6, 2];

function lossAt(pc: number[], pr: number[], o: LossOptions): number {
  return tf.tidy(() => {
    const out = preferenceLoss(
      {
        policyChosenLogps: tf.tensor1d(pc),
        policyRejectedLogps: tf.tensor1d(pr),
        referenceChosenLogps: tf.tensor1d(RC),
        referenceRejectedLogps: tf.tensor1d(RR),
        chosenTokens: tf.tensor1d(NC),
        rejectedTokens: tf.tensor1d(NR),
      },
      o,
    );
    return tf.mean(out.losses).dataSync()[0]!;
  });
}

function checkGrad(o: LossOptions): void {
  const f = (pc: tf.Tensor, pr: tf.Tensor): tf.Scalar =>
    tf.mean(
      preferenceLoss(
        {
          policyChosenLogps: pc as tf.Tensor1D,
          policyRejectedLogps: pr as tf.Tensor1D,
          referenceChosenLogps: tf.tensor1d(RC),
          referenceRejectedLogps: tf.tensor1d(RR),
          chosenTokens: tf.tensor1d(NC),
          rejectedTokens: tf.tensor1d(NR),
        },
        o,
      ).losses,
    ) as tf.Scalar;
  const [gc, gr] = tf.grads(f)([tf.tensor1d(PC), tf.tensor1d(PR)]);
  const analytic = [Array.from(gc!.dataSync()), Array.from(gr!.dataSync())];
  const h = 1e-2;
  for (const side of [0, 1]) {
    for (let i = 0; i < PC.length; i++) {
      const plus = [PC.slice(), PR.slice()];
      const minus = [PC.slice(), PR.slice()];
      plus[side]![i]! += h;
      minus[side]![i]! -= h;
      const fd = (lossAt(plus[0]!, plus[1]!, o) - lossAt(minus[0]!, minus[1]!, o)) / (2 * h);
      const g = analytic[side]![i]!;
      assert.ok(
        Math.abs(g - fd) <= 2e-3 * Math.max(Math.abs(fd), Math.abs(g)) + 2e-4,
        `${JSON.stringify(o.lossType)} d/d${side === 0 ? 'policyChosen' : 'policyRejected'}[${i}]: tfjs ${g}, finite difference ${fd}`,
      );
    }
  }
  assert.ok(
    analytic.flat().some((v) => v !== 0),
    'gradient must not be all zero',
  );
}

test('tfjs gradients w.r.t. the log-probs match finite differences', () => {
  const cases: LossOptions[] = [
    { lossType: 'sigmoid', beta: 0.5 },
    { lossType: 'sigmoid', beta: 0.3, labelSmoothing: 0.2 },
    { lossType: 'ipo', beta: 0.5 },
    { lossType: 'robust', beta: 0.4, labelSmoothing: 0.1 },
    { lossType: 'exo_pair', beta: 0.4, labelSmoothing: 0.05 },
    { lossType: 'nca_pair', beta: 0.7 },
    { lossType: 'discopop', beta: 0.5, discopopTau: 0.5 },
    { lossType: 'aot', beta: 0.5 },
    { lossType: 'simpo', beta: 2, simpoGamma: 0.5 },
    { lossType: 'orpo', beta: 0.5 },
    { lossType: 'kto_pair', beta: 0.5 },
    { lossType: 'dpop', beta: 0.5, dpopLambda: 5 },
    { lossType: ['sigmoid', 'bco_pair', 'sft'], lossWeights: [0.8, 0.2, 1.0], beta: 0.5 },
  ];
  for (const o of cases) checkGrad(o);
});

/** A tiny llama-shaped CausalLM: hidden = tanh(embedding(ids) + position bias), output projection [D, V]. */
function tinyModel(V: number, D: number, T: number, seed: number): CausalLM {
  const emb = tf.variable(tf.randomNormal([V, D], 0, 1, 'float32', seed) as tf.Tensor2D, true, `emb${seed}`);
  const pos = tf.variable(tf.randomNormal([T, D], 0, 0.5, 'float32', seed + 1) as tf.Tensor2D, true, `pos${seed}`);
  const head = tf.variable(tf.randomNormal([D, V], 0, 1, 'float32', seed + 2) as tf.Tensor2D, true, `head${seed}`);
  const hidden = (ids: tf.Tensor2D): tf.Tensor2D =>
    tf.tidy(() => {
      const [B, TT] = ids.shape;
      const e = embedding(tf.reshape(ids, [B * TT]) as tf.Tensor1D, emb);
      const p = tf.tile(tf.slice(pos, [0, 0], [TT, D]), [B, 1]);
      return tf.tanh(tf.add(e, p)) as tf.Tensor2D;
    });
  return {
    config: { architecture: 'llama', vocabSize: V, hiddenSize: D } as unknown as ModelConfig,
    params: new Map<string, tf.Variable>([
      ['model.embed_tokens.weight', emb],
      ['model.pos', pos],
      ['lm_head.weight', head],
    ]),
    hidden,
    outputProjection: () => ({ weight: head as unknown as tf.Tensor2D, layout: 'DV' as const }),
    logits: (ids: tf.Tensor2D) => tf.tidy(() => tf.reshape(tf.matMul(hidden(ids), head), [ids.shape[0], ids.shape[1], V]) as tf.Tensor3D),
    dispose: () => {
      emb.dispose();
      pos.dispose();
      head.dispose();
    },
  };
}

const IDS = [
  [1, 5, 7, 3, 2, 0],
  [1, 4, 6, 6, 0, 0],
  [1, 5, 7, 9, 8, 2],
  [1, 4, 6, 3, 0, 0],
];
const MASK = [
  [0, 0, 0, 1, 1, 0],
  [0, 0, 0, 0, 0, 0], // a fully truncated completion (no completion token)
  [0, 0, 0, 1, 1, 1],
  [0, 0, 1, 1, 0, 0],
];

test('completionLogps of a CausalLM equals the logits path; a fully truncated completion gives 0, not NaN', () => {
  const model = tinyModel(11, 8, 6, 3);
  const ids = tf.tensor2d(IDS, undefined, 'int32');
  const mask = tf.tensor2d(MASK);
  const a = completionLogps(model, ids, mask);
  const b = logpsFromLogits(model.logits(ids), ids, mask);
  const la = a.logps.dataSync();
  const lb = b.logps.dataSync();
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(la[i]! - lb[i]!) < 1e-5, `row ${i}: ${la[i]} vs ${lb[i]}`);
  assert.deepEqual(Array.from(a.tokenCounts.dataSync()), [2, 0, 3, 2]);
  assert.equal(la[1], 0);
  for (const i of [0, 2, 3]) assert.ok(la[i]! < 0);
  model.dispose();
});

test('every loss type is finite (value and gradient) when a completion is fully truncated', () => {
  const model = tinyModel(11, 8, 6, 5);
  const ref = tinyModel(11, 8, 6, 7);
  const ids = tf.tensor2d(IDS, undefined, 'int32');
  const mask = tf.tensor2d(MASK);
  const refOut = completionLogps(ref, ids, mask);
  const rl = refOut.logps.dataSync();
  for (const lossType of LOSS_TYPES) {
    const vars = [...model.params.values()];
    const { value, grads } = tf.variableGrads(() => {
      const { logps, tokenCounts } = completionLogps(model, ids, mask);
      const out = preferenceLoss(
        {
          policyChosenLogps: tf.slice(logps, [0], [2]),
          policyRejectedLogps: tf.slice(logps, [2], [2]),
          referenceChosenLogps: tf.tensor1d([rl[0]!, rl[1]!]),
          referenceRejectedLogps: tf.tensor1d([rl[2]!, rl[3]!]),
          chosenTokens: tf.slice(tokenCounts, [0], [2]),
          rejectedTokens: tf.slice(tokenCounts, [2], [2]),
        },
        { lossType, beta: 0.1, labelSmoothing: lossType === 'exo_pair' ? 0.01 : 0 },
      );
      return tf.mean(out.losses) as tf.Scalar;
    }, vars);
    const v = value.dataSync()[0]!;
    assert.ok(Number.isFinite(v), `${lossType}: loss ${v}`);
    for (const [name, g] of Object.entries(grads)) {
      const gd = g.dataSync();
      assert.ok(gd.every(Number.isFinite), `${lossType}: gradient of ${name} has NaN/Inf`);
    }
    tf.dispose([value, ...Object.values(grads)]);
  }
  model.dispose();
  ref.dispose();
});

test('sftLoss is the token-mean NLL and its gradient matches a finite difference on one weight', () => {
  const model = tinyModel(11, 8, 6, 9);
  const ids = tf.tensor2d(IDS, undefined, 'int32');
  const mask = tf.tensor2d(MASK);
  const { logps, tokenCounts } = completionLogps(model, ids, mask);
  const expected = -tf.sum(logps).dataSync()[0]! / tf.sum(tokenCounts).dataSync()[0]!;
  const got = sftLoss(model, ids, mask).dataSync()[0]!;
  assert.ok(Math.abs(got - expected) < 1e-6);
  const head = model.params.get('lm_head.weight')!;
  const { grads } = tf.variableGrads(() => sftLoss(model, ids, mask), [head]);
  const g = grads[head.name]!.dataSync();
  const idx = 3 * 11 + 7; // head[3, 7]
  const orig = head.dataSync().slice();
  const h = 1e-2;
  const at = (delta: number): number => {
    const w = orig.slice();
    w[idx]! += delta;
    head.assign(tf.tensor2d(w, head.shape as [number, number]));
    return sftLoss(model, ids, mask).dataSync()[0]!;
  };
  const fd = (at(h) - at(-h)) / (2 * h);
  head.assign(tf.tensor2d(orig, head.shape as [number, number]));
  assert.ok(Math.abs(fd - g[idx]!) < 2e-3 * Math.abs(fd) + 2e-4, `tfjs ${g[idx]}, finite difference ${fd}`);
  model.dispose();
});

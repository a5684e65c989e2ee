/**
 * Closed-form loss vectors of dpo-anchors §3.4 (LLaMA-Factory's precision-test inputs, ms-swift#10167,
 * SimPO and ORPO vectors) and the policy == reference identity.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { preferenceLoss, preferenceMetrics, orpoLogOdds, type LossOptions } from '../../src/training/losses/index.js';

before(async () => {
  await initBackend('auto');
});

// LLaMA-Factory tests_v1/trainers/test_dpo_loss_precision.py inputs
const LF = {
  pc: [-3.0, -2.5, -4.0, -1.5],
  pr: [-5.0, -3.5, -6.0, -2.5],
  rc: [-2.8, -2.3, -3.8, -1.4],
  rr: [-3.2, -2.7, -4.2, -1.8],
};

function lfLoss(opts: Omit<LossOptions, 'beta'> & { beta?: number }): { losses: number[]; mean: number; metrics: Record<string, number> } {
  const inp = {
    policyChosenLogps: tf.tensor1d(LF.pc),
    policyRejectedLogps: tf.tensor1d(LF.pr),
    referenceChosenLogps: tf.tensor1d(LF.rc),
    referenceRejectedLogps: tf.tensor1d(LF.rr),
    chosenTokens: tf.tensor1d([1, 1, 1, 1]),
    rejectedTokens: tf.tensor1d([1, 1, 1, 1]),
  };
  const out = preferenceLoss(inp, { beta: 0.1, ...opts });
  const losses = Array.from(out.losses.dataSync());
  const metrics = preferenceMetrics({
    chosenRewards: out.chosenRewards,
    rejectedRewards: out.rejectedRewards,
    policyChosenLogps: inp.policyChosenLogps,
    policyRejectedLogps: inp.policyRejectedLogps,
  });
  return { losses, mean: losses.reduce((a, b) => a + b, 0) / losses.length, metrics };
}

/** The table gives 6 decimals: compare to 2e-6 absolute plus 1e-5 relative. */
function near(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= 2e-6 + 1e-5 * Math.abs(expected), `${what}: got ${actual}, expected ${expected}`);
}
function nearAll(actual: number[], expected: number[], what: string): void {
  assert.equal(actual.length, expected.length);
  expected.forEach((e, i) => near(actual[i]!, e, `${what}[${i}]`));
}

test('§3.4 LLaMA-Factory inputs: per-pair losses of every formula in the table', () => {
  nearAll(lfLoss({ lossType: 'sigmoid' }).losses, [0.616344, 0.663597, 0.616344, 0.663597], 'sigmoid');
  nearAll(lfLoss({ lossType: 'dpo', labelSmoothing: 0.1 }).losses.slice(0, 2), [0.632344, 0.669597], 'cDPO eps=0.1');
  nearAll(lfLoss({ lossType: 'robust', labelSmoothing: 0.1 }).losses.slice(0, 2), [0.596344, 0.656097], 'robust');
  nearAll(lfLoss({ lossType: 'hinge' }).losses, [0.84, 0.94, 0.84, 0.94], 'hinge');
  nearAll(lfLoss({ lossType: 'ipo', ipoNormalize: false }).losses, [11.56, 19.36, 11.56, 19.36], 'ipo summed');
  nearAll(lfLoss({ lossType: 'exo_pair', labelSmoothing: 1e-3 }).losses.slice(0, 2), [2.488738, 2.65811], 'exo_pair');
  nearAll(lfLoss({ lossType: 'nca_pair' }).losses, [1.348392, 1.371769, 1.348392, 1.371619], 'nca_pair');
  nearAll(lfLoss({ lossType: 'bco_pair' }).losses, [1.310389, 1.357144, 1.310389, 1.356919], 'bco_pair');
  nearAll(lfLoss({ lossType: 'sppo_hard' }).losses, [37.28, 44.68, 37.28, 44.5], 'sppo_hard');
  nearAll(lfLoss({ lossType: 'apo_zero' }).losses, [0.960121, 0.98501, 0.960121, 0.985007], 'apo_zero');
  nearAll(lfLoss({ lossType: 'apo_down' }).losses, [0.955085, 0.980005, 0.955085, 0.982505], 'apo_down');
  nearAll(lfLoss({ lossType: 'discopop', discopopTau: 0.05 }).losses.slice(0, 2), [0.842909, 0.877376], 'discopop');
});

test('§3.4 LLaMA-Factory inputs: batch means, aot, and the metrics', () => {
  near(lfLoss({ lossType: 'sigmoid' }).mean, 0.63997, 'sigmoid mean');
  near(lfLoss({ lossType: 'sigmoid', labelSmoothing: 0.1 }).mean, 0.65097, 'cDPO mean');
  near(lfLoss({ lossType: 'robust', labelSmoothing: 0.1 }).mean, 0.62622, 'robust mean');
  near(lfLoss({ lossType: 'hinge' }).mean, 0.89, 'hinge mean');
  near(lfLoss({ lossType: 'ipo', ipoNormalize: false }).mean, 15.46, 'ipo mean');
  near(lfLoss({ lossType: 'exo_pair', labelSmoothing: 1e-3 }).mean, 2.573424, 'exo mean');
  near(lfLoss({ lossType: 'nca_pair' }).mean, 1.360043, 'nca mean');
  near(lfLoss({ lossType: 'bco_pair' }).mean, 1.33371, 'bco mean');
  near(lfLoss({ lossType: 'sppo_hard' }).mean, 40.935, 'sppo mean');
  near(lfLoss({ lossType: 'apo_zero' }).mean, 0.972565, 'apo_zero mean');
  near(lfLoss({ lossType: 'apo_down' }).mean, 0.96817, 'apo_down mean');
  near(lfLoss({ lossType: 'discopop' }).mean, 0.860142, 'discopop mean');
  near(lfLoss({ lossType: 'aot' }).mean, 0.63997, 'aot mean');
  near(lfLoss({ lossType: 'aot_unpaired' }).mean, 0.63997, 'aot_unpaired mean');
  const m = lfLoss({ lossType: 'sigmoid' }).metrics;
  near(m['rewards/chosen']!, -0.0175, 'rewards/chosen');
  near(m['rewards/rejected']!, -0.1275, 'rewards/rejected');
  near(m['rewards/margins']!, 0.11, 'rewards/margins');
  near(m['rewards/accuracies']!, 1.0, 'rewards/accuracies');
});

test('ms-swift#10167: beta 0.1, margin 6 gives sigmoid 0.437488, hinge 0.4, ipo (one token) 1.0', () => {
  const run = (lossType: string): number => {
    const out = preferenceLoss(
      {
        policyChosenLogps: tf.tensor1d([-1]),
        policyRejectedLogps: tf.tensor1d([-7]),
        referenceChosenLogps: tf.tensor1d([0]),
        referenceRejectedLogps: tf.tensor1d([0]),
        chosenTokens: tf.tensor1d([1]),
        rejectedTokens: tf.tensor1d([1]),
      },
      { lossType, beta: 0.1 },
    );
    return out.losses.dataSync()[0]!;
  };
  near(run('sigmoid'), 0.437488, 'sigmoid');
  near(run('hinge'), 0.4, 'hinge');
  near(run('ipo'), 1.0, 'ipo');
});

test('§3.4 SimPO (beta 2, gamma 0.5) and the ORPO odds-ratio term on average log-probs', () => {
  const c = [-0.5, -0.25];
  const r = [-0.9, -0.3];
  const ones = tf.tensor1d([1, 1]);
  const simpo = preferenceLoss(
    { policyChosenLogps: tf.tensor1d(c), policyRejectedLogps: tf.tensor1d(r), chosenTokens: ones, rejectedTokens: ones },
    { lossType: 'simpo', beta: 2, simpoGamma: 0.5 },
  );
  nearAll(Array.from(simpo.losses.dataSync()), [0.554355, 0.913015], 'simpo');
  // the same average log-probs given as sums over 4 and 2 tokens: only averages matter
  const simpoLong = preferenceLoss(
    {
      policyChosenLogps: tf.tensor1d([-2.0, -0.5]),
      policyRejectedLogps: tf.tensor1d([-3.6, -0.6]),
      chosenTokens: tf.tensor1d([4, 2]),
      rejectedTokens: tf.tensor1d([4, 2]),
    },
    { lossType: 'simpo', beta: 2, simpoGamma: 0.5 },
  );
  nearAll(Array.from(simpoLong.losses.dataSync()), [0.554355, 0.913015], 'simpo from sums');
  const lo = orpoLogOdds(tf.tensor1d(c), tf.tensor1d(r));
  nearAll(Array.from(tf.neg(tf.logSigmoid(lo)).dataSync()), [0.367729, 0.594337], 'orpo -log sigmoid(log odds)');
  // ORPO loss = beta * odds-ratio term + token-mean NLL of the chosen completions (here (0.5 + 0.25) / 2)
  const orpo = preferenceLoss(
    { policyChosenLogps: tf.tensor1d(c), policyRejectedLogps: tf.tensor1d(r), chosenTokens: ones, rejectedTokens: ones },
    { lossType: 'or', beta: 1 },
  );
  nearAll(Array.from(orpo.losses.dataSync()), [0.367729 + 0.375, 0.594337 + 0.375], 'orpo total');
});

test('policy == reference: sigmoid loss is ln 2, rewards 0, accuracies 0 (strict >)', () => {
  const lp = tf.tensor1d([-12.5, -3.25, -40]);
  const lr = tf.tensor1d([-9, -7.5, -33]);
  const out = preferenceLoss(
    { policyChosenLogps: lp, policyRejectedLogps: lr, referenceChosenLogps: lp, referenceRejectedLogps: lr },
    { lossType: 'dpo', beta: 0.1 },
  );
  for (const v of out.losses.dataSync()) assert.ok(Math.abs(v - Math.LN2) < 1e-6, `loss ${v} != ln 2`);
  const m = preferenceMetrics({ chosenRewards: out.chosenRewards, rejectedRewards: out.rejectedRewards, policyChosenLogps: lp, policyRejectedLogps: lr });
  assert.equal(m['rewards/accuracies'], 0);
  assert.equal(m['rewards/margins'], 0);
  assert.equal(m['rewards/chosen'], 0);
});

/**
 * Golden numbers from the peers' own code (../shared/golden/preference_losses.json): TRL's
 * DPOTrainer._compute_loss (loss + logged metrics) and the reference implementation's preference_loss
 * (per-pair losses and rewards), reproduced from the summed log-probs AND from the raw logits.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import {
  preferenceLoss,
  preferenceMetrics,
  logpsFromLogits,
  statsFromLogits,
  completionLogps,
  completionStats,
  splitStats,
  type CompletionLogps,
} from '../../src/training/losses/index.js';
import type { CausalLM, ModelConfig } from '../../src/training/types.js';
import { shared } from '../shared.js';

const GOLDEN = shared('golden/preference_losses.json');
const REL = 1e-4;

interface TrlEntry {
  loss_type: string;
  beta: number;
  label_smoothing: number;
  discopop_tau?: number;
  loss: number;
  metrics: Record<string, number>;
}
interface RefEntry {
  beta: number;
  label_smoothing: number;
  ipo: boolean;
  reference_free: boolean;
  losses: number[];
  chosen_rewards: number[];
  rejected_rewards: number[];
}
interface Case {
  input_ids: number[][];
  completion_mask: number[][];
  policy_logits: number[][][];
  reference_logits: number[][][];
  policy_chosen_logps: number[];
  policy_rejected_logps: number[];
  reference_chosen_logps: number[];
  reference_rejected_logps: number[];
  chosen_completion_tokens: number[];
  rejected_completion_tokens: number[];
  trl: TrlEntry[];
  reference_implementation: RefEntry[];
}

const golden = JSON.parse(readFileSync(GOLDEN, 'utf8')) as { cases: Case[] };

/** max relative error per loss type, for the report table */
const maxRel = new Map<string, number>();
function relErr(actual: number, expected: number): number {
  return Math.abs(actual - expected) / Math.max(Math.abs(expected), 1e-6);
}
function close(actual: number, expected: number, what: string, key?: string): void {
  const r = relErr(actual, expected);
  if (key) maxRel.set(key, Math.max(maxRel.get(key) ?? 0, r));
  assert.ok(
    Math.abs(actual - expected) <= REL * Math.abs(expected) + 1e-6,
    `${what}: got ${actual}, expected ${expected} (relative error ${r.toExponential(2)})`,
  );
}

before(async () => {
  await initBackend('auto');
});

interface Logps {
  pc: tf.Tensor1D;
  pr: tf.Tensor1D;
  rc: tf.Tensor1D;
  rr: tf.Tensor1D;
  nc: tf.Tensor1D;
  nr: tf.Tensor1D;
}

function fromGoldenLogps(c: Case): Logps {
  return {
    pc: tf.tensor1d(c.policy_chosen_logps),
    pr: tf.tensor1d(c.policy_rejected_logps),
    rc: tf.tensor1d(c.reference_chosen_logps),
    rr: tf.tensor1d(c.reference_rejected_logps),
    nc: tf.tensor1d(c.chosen_completion_tokens),
    nr: tf.tensor1d(c.rejected_completion_tokens),
  };
}

function halves(x: CompletionLogps): [tf.Tensor1D, tf.Tensor1D, tf.Tensor1D, tf.Tensor1D] {
  const B = x.logps.shape[0] / 2;
  return [tf.slice(x.logps, [0], [B]), tf.slice(x.logps, [B], [B]), tf.slice(x.tokenCounts, [0], [B]), tf.slice(x.tokenCounts, [B], [B])];
}

function fromLogits(c: Case): Logps {
  const ids = tf.tensor2d(c.input_ids, undefined, 'int32');
  const mask = tf.tensor2d(c.completion_mask);
  const pol = logpsFromLogits(tf.tensor3d(c.policy_logits), ids, mask);
  const ref = logpsFromLogits(tf.tensor3d(c.reference_logits), ids, mask);
  const [pc, pr, nc, nr] = halves(pol);
  const [rc, rr] = halves(ref);
  return { pc, pr, rc, rr, nc, nr };
}

/** A CausalLM whose hidden states are the golden logits and whose output projection is the identity. */
function logitsModel(logits: number[][][]): CausalLM {
  const B = logits.length;
  const T = logits[0]!.length;
  const V = logits[0]![0]!.length;
  const table = tf.variable(tf.tensor2d(logits.flat(), [B * T, V]), false);
  const eye = tf.variable(tf.eye(V) as tf.Tensor2D, false);
  const config = { architecture: 'llama', vocabSize: V, hiddenSize: V } as unknown as ModelConfig;
  return {
    config,
    params: new Map([
      ['table', table],
      ['lm_head.weight', eye],
    ]),
    hidden: () => tf.clone(table) as tf.Tensor2D,
    outputProjection: () => ({ weight: eye as unknown as tf.Tensor2D, layout: 'DV' as const }),
    logits: () => tf.reshape(table, [B, T, V]) as tf.Tensor3D,
    dispose: () => {
      table.dispose();
      eye.dispose();
    },
  };
}

function fromModel(c: Case): Logps {
  const ids = tf.tensor2d(c.input_ids, undefined, 'int32');
  const mask = tf.tensor2d(c.completion_mask);
  const pm = logitsModel(c.policy_logits);
  const rm = logitsModel(c.reference_logits);
  const [pc, pr, nc, nr] = halves(completionLogps(pm, ids, mask));
  const [rc, rr] = halves(completionLogps(rm, ids, mask));
  pm.dispose();
  rm.dispose();
  return { pc, pr, rc, rr, nc, nr };
}

function trlOptions(e: TrlEntry) {
  return {
    lossType: e.loss_type,
    beta: e.beta,
    labelSmoothing: e.label_smoothing,
    ...(e.discopop_tau !== undefined ? { discopopTau: e.discopop_tau } : {}),
  };
}

function checkTrl(c: Case, lp: Logps, path: string): void {
  for (const e of c.trl) {
    const out = preferenceLoss(
      {
        policyChosenLogps: lp.pc,
        policyRejectedLogps: lp.pr,
        referenceChosenLogps: lp.rc,
        referenceRejectedLogps: lp.rr,
        chosenTokens: lp.nc,
        rejectedTokens: lp.nr,
      },
      trlOptions(e),
    );
    const loss = tf.mean(out.losses).dataSync()[0]!;
    const what = `${path} trl ${e.loss_type} beta=${e.beta}`;
    close(loss, e.loss, `${what} loss`, `trl:${e.loss_type}`);
    const m = preferenceMetrics({
      chosenRewards: out.chosenRewards,
      rejectedRewards: out.rejectedRewards,
      policyChosenLogps: lp.pc,
      policyRejectedLogps: lp.pr,
    });
    for (const k of ['rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected']) {
      close(m[k]!, e.metrics[k]!, `${what} ${k}`, 'trl:metrics');
    }
    tf.dispose([out.losses, out.chosenRewards, out.rejectedRewards]);
  }
}

function checkReference(c: Case, lp: Logps, path: string): void {
  for (const e of c.reference_implementation) {
    const out = preferenceLoss(
      {
        policyChosenLogps: lp.pc,
        policyRejectedLogps: lp.pr,
        referenceChosenLogps: lp.rc,
        referenceRejectedLogps: lp.rr,
        chosenTokens: lp.nc,
        rejectedTokens: lp.nr,
      },
      { lossType: e.ipo ? 'ipo' : 'dpo', ipoNormalize: false, beta: e.beta, labelSmoothing: e.label_smoothing, referenceFree: e.reference_free },
    );
    const key = `reference:${e.ipo ? 'ipo (summed)' : e.reference_free ? 'dpo reference_free' : e.label_smoothing > 0 ? 'cdpo' : 'dpo'}`;
    const what = `${path} ${key} beta=${e.beta} eps=${e.label_smoothing}`;
    const losses = out.losses.dataSync();
    const cr = out.chosenRewards.dataSync();
    const rr = out.rejectedRewards.dataSync();
    e.losses.forEach((v, i) => close(losses[i]!, v, `${what} losses[${i}]`, key));
    e.chosen_rewards.forEach((v, i) => close(cr[i]!, v, `${what} chosen_rewards[${i}]`, key));
    e.rejected_rewards.forEach((v, i) => close(rr[i]!, v, `${what} rejected_rewards[${i}]`, key));
    tf.dispose([out.losses, out.chosenRewards, out.rejectedRewards]);
  }
}

test('golden: log-probs summed from the logits equal the golden log-probs', () => {
  golden.cases.forEach((c, ci) => {
    for (const [name, lp] of [
      ['logits', fromLogits(c)],
      ['model', fromModel(c)],
    ] as const) {
      const pairs: Array<[tf.Tensor1D, number[], string]> = [
        [lp.pc, c.policy_chosen_logps, 'policy_chosen_logps'],
        [lp.pr, c.policy_rejected_logps, 'policy_rejected_logps'],
        [lp.rc, c.reference_chosen_logps, 'reference_chosen_logps'],
        [lp.rr, c.reference_rejected_logps, 'reference_rejected_logps'],
        [lp.nc, c.chosen_completion_tokens, 'chosen_completion_tokens'],
        [lp.nr, c.rejected_completion_tokens, 'rejected_completion_tokens'],
      ];
      for (const [t, exp, what] of pairs) {
        const got = t.dataSync();
        exp.forEach((v, i) => close(got[i]!, v, `case ${ci} ${name} ${what}[${i}]`, 'logps from logits'));
      }
    }
  });
});

test('golden: every TRL entry from the log-probs', () => {
  golden.cases.forEach((c, ci) => checkTrl(c, fromGoldenLogps(c), `case ${ci} logps`));
});

test('golden: every TRL entry end to end from the logits (log-softmax, completion mask, shift by one)', () => {
  golden.cases.forEach((c, ci) => {
    checkTrl(c, fromLogits(c), `case ${ci} logits`);
    checkTrl(c, fromModel(c), `case ${ci} model`);
  });
});

test('golden: TRL logit metrics (logits/*, entropy, mean_token_accuracy) from the logits and from a model', () => {
  golden.cases.forEach((c, ci) => {
    const ids = tf.tensor2d(c.input_ids, undefined, 'int32');
    const mask = tf.tensor2d(c.completion_mask);
    const viaLogits = splitStats(statsFromLogits(tf.tensor3d(c.policy_logits), ids, mask));
    const model = logitsModel(c.policy_logits);
    const viaModel = splitStats(completionStats(model, ids, mask, { chunkRows: 5 }));
    model.dispose();
    const e = c.trl[0]!;
    const lp = fromGoldenLogps(c);
    const out = preferenceLoss(
      { policyChosenLogps: lp.pc, policyRejectedLogps: lp.pr, referenceChosenLogps: lp.rc, referenceRejectedLogps: lp.rr },
      trlOptions(e),
    );
    for (const [name, s] of [
      ['logits', viaLogits],
      ['model', viaModel],
    ] as const) {
      const m = preferenceMetrics({
        chosenRewards: out.chosenRewards,
        rejectedRewards: out.rejectedRewards,
        policyChosenLogps: lp.pc,
        policyRejectedLogps: lp.pr,
        chosenStats: s.chosen,
        rejectedStats: s.rejected,
      });
      for (const k of ['logits/chosen', 'logits/rejected', 'entropy', 'mean_token_accuracy']) {
        close(m[k]!, e.metrics[k]!, `case ${ci} ${name} ${k}`, 'trl:metrics');
      }
    }
  });
});

test('golden: every reference_implementation entry (dpo, cDPO, summed ipo, reference_free) from log-probs and logits', (t) => {
  golden.cases.forEach((c, ci) => {
    checkReference(c, fromGoldenLogps(c), `case ${ci} logps`);
    checkReference(c, fromLogits(c), `case ${ci} logits`);
  });
  const rows = [...maxRel.entries()].sort(([a], [b]) => a.localeCompare(b));
  for (const [k, v] of rows) t.diagnostic(`max relative error vs golden | ${k} | ${v.toExponential(2)}`);
});

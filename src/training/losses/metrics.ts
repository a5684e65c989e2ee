/**
 * The metrics TRL's DPOTrainer logs for one micro-batch, with TRL's names and definitions
 * (TRL HEAD `trl/trainer/dpo_trainer.py:_compute_loss` tail).
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { CompletionStats } from './logps.js';

type Vec = tf.Tensor1D | ArrayLike<number>;

function values(v: Vec): number[] {
  const maybe = v as { dataSync?: () => ArrayLike<number> };
  return Array.from(typeof maybe.dataSync === 'function' ? maybe.dataSync() : (v as ArrayLike<number>));
}

const mean = (xs: number[]): number => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

/** Inputs of {@link preferenceMetrics}. Vectors are `[B]` tensors or plain arrays. */
export interface PreferenceMetricsInputs {
  /** From {@link preferenceLoss}: per-pair implicit rewards β·(logπ − logR). */
  chosenRewards: Vec;
  rejectedRewards: Vec;
  /** Summed policy log-probs of the completions. */
  policyChosenLogps: Vec;
  policyRejectedLogps: Vec;
  /** Logit statistics of the policy on the chosen rows and on the rejected rows (optional; see completionStats). */
  chosenStats?: CompletionStats;
  rejectedStats?: CompletionStats;
  /** Running total of non-padding tokens seen in training so far (TRL `num_tokens`); logged when given. */
  numTokens?: number;
  /** The batch loss, logged as `loss` when given. */
  loss?: number;
}

/**
 * TRL's logged DPO metrics for one micro-batch:
 * - `rewards/chosen`, `rewards/rejected`: mean implicit rewards;
 * - `rewards/accuracies`: fraction of pairs with chosen reward strictly greater than rejected reward;
 * - `rewards/margins`: mean(chosen − rejected reward);
 * - `logps/chosen`, `logps/rejected`: mean summed policy log-probs;
 * - `logits/chosen`, `logits/rejected`: Σ over completion tokens of the mean-over-vocabulary logit / number of
 *   completion tokens (token-weighted, 0 without tokens);
 * - `entropy`: token-weighted mean entropy over chosen and rejected completion tokens;
 * - `mean_token_accuracy`: argmax == label over the chosen completion tokens;
 * - `num_tokens`, `loss` when given.
 * The logit metrics are present only when the stats are given. Micro-batch values are averaged per logging
 * step by {@link averageMetrics} (TRL averages the appended values in `log()`).
 * @returns metric name → value
 */
export function preferenceMetrics(inp: PreferenceMetricsInputs): Record<string, number> {
  const rc = values(inp.chosenRewards);
  const rr = values(inp.rejectedRewards);
  const m: Record<string, number> = {};
  if (inp.loss !== undefined) m.loss = inp.loss;
  m['rewards/chosen'] = mean(rc);
  m['rewards/rejected'] = mean(rr);
  m['rewards/accuracies'] = mean(rc.map((c, i) => (c > rr[i]! ? 1 : 0)));
  m['rewards/margins'] = mean(rc.map((c, i) => c - rr[i]!));
  m['logps/chosen'] = mean(values(inp.policyChosenLogps));
  m['logps/rejected'] = mean(values(inp.policyRejectedLogps));
  const c = inp.chosenStats;
  const r = inp.rejectedStats;
  if (c && r) {
    const ct = sum(c.tokens);
    const rt = sum(r.tokens);
    m['logits/chosen'] = ct > 0 ? sum(c.logitSum) / ct : 0;
    m['logits/rejected'] = rt > 0 ? sum(r.logitSum) / rt : 0;
    m.entropy = ct + rt > 0 ? (sum(c.entropySum) + sum(r.entropySum)) / (ct + rt) : 0;
    m.mean_token_accuracy = ct > 0 ? sum(c.correct) / ct : 0;
  }
  if (inp.numTokens !== undefined) m.num_tokens = inp.numTokens;
  return m;
}

/**
 * Split stats of a concatenated `[chosen; rejected]` batch (rows 0..B-1 chosen, B..2B-1 rejected, as
 * collatePreference lays them out) into the chosen and rejected halves.
 */
export function splitStats(stats: CompletionStats): { chosen: CompletionStats; rejected: CompletionStats } {
  const half = stats.tokens.length / 2;
  if (!Number.isInteger(half)) throw new RangeError(`stats have ${stats.tokens.length} rows; a [chosen; rejected] batch has an even number`);
  const part = (a: number, b: number): CompletionStats => ({
    logitSum: stats.logitSum.slice(a, b),
    entropySum: stats.entropySum.slice(a, b),
    correct: stats.correct.slice(a, b),
    tokens: stats.tokens.slice(a, b),
  });
  return { chosen: part(0, half), rejected: part(half, 2 * half) };
}

/**
 * Average a list of per-micro-batch metric dicts key by key (TRL `log()`: simple mean of the appended values).
 * `num_tokens` is a running total, so its last value is kept.
 */
export function averageMetrics(list: Array<Record<string, number>>): Record<string, number> {
  const acc: Record<string, { s: number; n: number; last: number }> = {};
  for (const m of list) {
    for (const [k, v] of Object.entries(m)) {
      const a = (acc[k] ??= { s: 0, n: 0, last: 0 });
      a.s += v;
      a.n += 1;
      a.last = v;
    }
  }
  const out: Record<string, number> = {};
  for (const [k, a] of Object.entries(acc)) out[k] = k === 'num_tokens' ? a.last : a.s / a.n;
  return out;
}

/** Prefix every metric name with `eval_` (TRL's evaluation naming: `eval_rewards/accuracies`, `eval_loss`). */
export function withEvalPrefix(metrics: Record<string, number>, prefix = 'eval_'): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(metrics)) out[k.startsWith(prefix) ? k : `${prefix}${k}`] = v;
  return out;
}

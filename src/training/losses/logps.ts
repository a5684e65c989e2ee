/**
 * Sequence log-probs of completions, the SFT loss, and the logit statistics TRL logs.
 *
 * Convention (TRL `_compute_loss`, reference `trainers.py:_get_batch_logps`): the label at position t+1 is
 * scored by the logits at position t; `completionMask[b, t+1]` selects which labels count; log-probs are
 * summed over the selected tokens (nats). Log-softmax is taken in float32.
 */
import * as tf from '@tensorflow/tfjs-core';
import { gatherRows, tokenLogps } from '../engine/ops.js';
import type { PackedBatch } from '../data/packing.js';
import type { CausalLM } from '../types.js';
import { ensureGradients } from '../engine/gradients.js';

// tfjs-core alone registers no gradient functions under Node: make sure they are there (see engine/gradients.ts).
await ensureGradients();

/** Summed completion log-probs `[B]` and completion token counts `[B]` (float32). */
export interface CompletionLogps {
  logps: tf.Tensor1D;
  tokenCounts: tf.Tensor1D;
  /** `[B*T, D]` final hidden states, only with `keepHidden`. */
  hidden?: tf.Tensor2D;
}

/**
 * Per-row sums over the scored completion tokens, for the logit metrics (TRL HEAD `_compute_loss` tail):
 * `logitSum` Σ_t mean_v logits[t, v]; `entropySum` Σ_t H(softmax(logits[t])); `correct` Σ_t [argmax = label];
 * `tokens` the number of scored tokens. All length B (rows of the batch), plain numbers.
 */
export interface CompletionStats {
  logitSum: number[];
  entropySum: number[];
  correct: number[];
  tokens: number[];
}

/** Labels shifted left by one (`[B, T]`, last column 0) and the mask of the labels, shifted alike. */
function shiftLabels(inputIds: tf.Tensor2D, completionMask: tf.Tensor2D): { labels: tf.Tensor2D; mask: tf.Tensor2D } {
  const [B, T] = inputIds.shape;
  if (completionMask.shape[0] !== B || completionMask.shape[1] !== T) {
    throw new RangeError(`completionMask shape [${completionMask.shape}] must equal inputIds shape [${inputIds.shape}]`);
  }
  if (T < 2) {
    return { labels: tf.zeros([B, T], 'int32') as tf.Tensor2D, mask: tf.zeros([B, T]) as tf.Tensor2D };
  }
  const ids = inputIds.dtype === 'int32' ? inputIds : tf.cast(inputIds, 'int32');
  const m = completionMask.dtype === 'float32' ? completionMask : tf.cast(completionMask, 'float32');
  const labels = tf.concat([tf.slice(ids, [0, 1], [B, T - 1]), tf.zeros([B, 1], 'int32')], 1) as tf.Tensor2D;
  const mask = tf.concat([tf.slice(m, [0, 1], [B, T - 1]), tf.zeros([B, 1])], 1) as tf.Tensor2D;
  return { labels, mask };
}

/**
 * Summed log-probs of the completion tokens of each row under a causal LM. Differentiable w.r.t. the model's
 * variables (call it inside `tf.variableGrads`).
 * Uses `model.hidden(inputIds)` `[B*T, D]`, `model.outputProjection()` and {@link tokenLogps} (chunked
 * log-softmax + gather, only on rows whose label is a completion token), so the `[B, T, V]` logits tensor is
 * never materialised by this function.
 * @param model causal LM
 * @param inputIds `[B, T]` int32 (prompt + completion, right padded)
 * @param completionMask `[B, T]` float32, 1 on completion tokens (0 on prompt and padding)
 * @param opts.keepHidden also return the final hidden states `[B*T, D]` (the caller disposes them), so
 *   logit statistics can reuse this forward pass ({@link completionStats} `hidden`)
 * @returns `logps` `[B]` (nats, ≤ 0) and `tokenCounts` `[B]` = Σ_{t≥1} completionMask[b, t]
 *   (a row with no completion token gives logps 0 and count 0, never NaN).
 */
export function completionLogps(model: CausalLM, inputIds: tf.Tensor2D, completionMask: tf.Tensor2D, opts: { keepHidden?: boolean } = {}): CompletionLogps {
  return tf.tidy(() => {
    const [B, T] = inputIds.shape;
    const { labels, mask } = shiftLabels(inputIds, completionMask);
    const hidden = model.hidden(inputIds);
    const { weight, layout } = model.outputProjection();
    // prompt and padding rows are skipped by the vocabulary projection (their log-prob is 0, no gradient)
    const rowMask = mask.dataSync();
    const tl = tokenLogps(hidden, weight, tf.reshape(labels, [B * T]) as tf.Tensor1D, layout, { rowMask });
    const logps = tf.sum(tf.mul(tf.reshape(tl, [B, T]), mask), 1) as tf.Tensor1D;
    const tokenCounts = tf.sum(mask, 1) as tf.Tensor1D;
    return opts.keepHidden ? { logps, tokenCounts, hidden } : { logps, tokenCounts };
  });
}

/**
 * {@link completionLogps} of a packed batch (data/packing.ts: padding_free or shared_prompt): one forward pass
 * over the packed rows with their position ids and attention segments, then the log-probs of exactly the
 * labels the padded layout scores (`predRows`, `labels`), summed per sequence. Same values as the padded
 * path up to float summation order. Differentiable w.r.t. the model's variables.
 * @param model causal LM taking packed positions (`hidden(ids, packing)`)
 * @param batch the packed batch
 * @param opts.keepHidden also return the final hidden states `[rows*seqLen, D]` (the caller disposes them)
 * @returns `logps` `[nSeq]` (nats) and `tokenCounts` `[nSeq]`, in the batch's sequence order
 */
export function packedCompletionLogps(model: CausalLM, batch: PackedBatch, opts: { keepHidden?: boolean } = {}): CompletionLogps {
  return tf.tidy(() => {
    const ids = tf.tensor2d(batch.inputIds, [batch.rows, batch.seqLen], 'int32');
    const hidden = model.hidden(ids, { positionIds: batch.positionIds, segments: batch.segments });
    const tokenCounts = tf.tensor1d(batch.tokenCounts);
    const M = batch.labels.length;
    if (M === 0) {
      const z = tf.add(tf.mul(tf.sum(hidden), 0), tf.zeros([batch.nSeq])) as tf.Tensor1D;
      return opts.keepHidden ? { logps: z, tokenCounts, hidden } : { logps: z, tokenCounts };
    }
    const { weight, layout } = model.outputProjection();
    const tl = tokenLogps(gatherRows(hidden, batch.predRows), weight, tf.tensor1d(batch.labels, 'int32'), layout); // [M]
    // per-sequence sums as a product with the [nSeq, M] membership matrix
    const member = new Float32Array(batch.nSeq * M);
    for (let m = 0; m < M; m++) member[batch.seqOf[m]! * M + m] = 1;
    const logps = tf.reshape(tf.matMul(tf.tensor2d(member, [batch.nSeq, M]), tf.reshape(tl, [M, 1])), [batch.nSeq]) as tf.Tensor1D;
    return opts.keepHidden ? { logps, tokenCounts, hidden } : { logps, tokenCounts };
  });
}

/**
 * Summed completion log-probs from full logits (tests, and models that only expose logits).
 * @param logits `[B, T, V]` float32 (position t predicts token t+1)
 * @param inputIds `[B, T]` int32
 * @param completionMask `[B, T]` float32
 * @returns `logps` `[B]`, `tokenCounts` `[B]` (same convention as {@link completionLogps})
 */
export function logpsFromLogits(logits: tf.Tensor3D, inputIds: tf.Tensor2D, completionMask: tf.Tensor2D): CompletionLogps {
  return tf.tidy(() => {
    const [B, T, V] = logits.shape;
    const { labels, mask } = shiftLabels(inputIds, completionMask);
    const lsm = tf.logSoftmax(tf.reshape(tf.cast(logits, 'float32'), [B * T, V]), -1);
    const picked = tf.sum(tf.mul(lsm, tf.oneHot(tf.reshape(labels, [B * T]) as tf.Tensor1D, V)), -1);
    const logps = tf.sum(tf.mul(tf.reshape(picked, [B, T]), mask), 1) as tf.Tensor1D;
    return { logps, tokenCounts: tf.sum(mask, 1) as tf.Tensor1D };
  });
}

/**
 * Stats of `[n, V]` logits rows; logits row i is batch row `rows[i]` (a global index b*T + t) of the
 * shifted labels/mask. Accumulated into per-sequence sums.
 */
function accumulateStats(logits2d: tf.Tensor2D, rows: ArrayLike<number>, labels: Int32Array, mask: Float32Array, T: number, out: CompletionStats): void {
  const [meanLogit, entropy, argmax] = tf.tidy(() => {
    const lsm = tf.logSoftmax(logits2d, -1);
    const ent = tf.neg(tf.sum(tf.mul(tf.exp(lsm), lsm), -1));
    return [tf.mean(logits2d, -1), ent, tf.argMax(logits2d, -1)];
  });
  const ml = meanLogit!.dataSync();
  const en = entropy!.dataSync();
  const am = argmax!.dataSync();
  tf.dispose([meanLogit!, entropy!, argmax!]);
  for (let i = 0; i < rows.length; i++) {
    const g = rows[i]!;
    if (mask[g] === 0) continue;
    const b = Math.floor(g / T);
    out.logitSum[b]! += ml[i]!;
    out.entropySum[b]! += en[i]!;
    if (am[i] === labels[g]) out.correct[b]! += 1;
    out.tokens[b]! += mask[g]!;
  }
}

function emptyStats(B: number): CompletionStats {
  return { logitSum: new Array(B).fill(0), entropySum: new Array(B).fill(0), correct: new Array(B).fill(0), tokens: new Array(B).fill(0) };
}

/**
 * Logit statistics over the scored completion tokens from full logits (no gradient).
 * @param logits `[B, T, V]`; `inputIds` `[B, T]` int32; `completionMask` `[B, T]`
 */
export function statsFromLogits(logits: tf.Tensor3D, inputIds: tf.Tensor2D, completionMask: tf.Tensor2D): CompletionStats {
  const [B, T, V] = logits.shape;
  const { labels, mask } = shiftLabels(inputIds, completionMask);
  const lab = labels.dataSync() as Int32Array;
  const msk = mask.dataSync() as Float32Array;
  tf.dispose([labels, mask]);
  const out = emptyStats(B);
  const l2 = tf.tidy(() => tf.reshape(tf.cast(logits, 'float32'), [B * T, V]) as tf.Tensor2D);
  accumulateStats(
    l2,
    Array.from({ length: B * T }, (_, i) => i),
    lab,
    msk,
    T,
    out,
  );
  l2.dispose();
  return out;
}

/**
 * Logit statistics of a causal LM over the completion tokens (no gradient): the inputs of
 * logits/chosen|rejected, entropy and mean_token_accuracy. Logits are computed from the hidden states in
 * chunks of `chunkRows` rows so that `[B*T, V]` is never held at once. The hidden states are those of a
 * forward pass already made (`opts.hidden`, from {@link completionLogps} with keepHidden: TRL takes these
 * metrics from the training forward too) or of one extra forward pass.
 * @param model causal LM; `inputIds` `[B, T]` int32; `completionMask` `[B, T]` float32
 * @param opts.hidden `[B*T, D]` final hidden states of `inputIds` (not disposed here)
 * @returns per-row sums (see {@link CompletionStats})
 */
export function completionStats(
  model: CausalLM,
  inputIds: tf.Tensor2D,
  completionMask: tf.Tensor2D,
  opts: { chunkRows?: number; hidden?: tf.Tensor2D } = {},
): CompletionStats {
  const [B, T] = inputIds.shape;
  const { labels, mask } = shiftLabels(inputIds, completionMask);
  const lab = labels.dataSync() as Int32Array;
  const msk = mask.dataSync() as Float32Array;
  tf.dispose([labels, mask]);
  const out = emptyStats(B);
  const rows: number[] = [];
  for (let i = 0; i < B * T; i++) if (msk[i] !== 0) rows.push(i);
  if (rows.length === 0) return out;
  const hidden = opts.hidden ?? tf.tidy(() => model.hidden(inputIds));
  const { weight, layout } = model.outputProjection();
  // only completion rows, and a plain (non-transposed) [D, V] product: the fast matMul form on wasm
  const selected = tf.tidy(() => tf.gather(hidden, tf.tensor1d(rows, 'int32')) as tf.Tensor2D);
  if (hidden !== opts.hidden) hidden.dispose();
  const wDV = layout === 'VD' ? tf.transpose(weight) : weight;
  const D = selected.shape[1];
  const chunk = Math.max(1, opts.chunkRows ?? 256);
  for (let start = 0; start < rows.length; start += chunk) {
    const n = Math.min(chunk, rows.length - start);
    const logits = tf.tidy(() => tf.matMul(tf.slice(selected, [start, 0], [n, D]), wDV)) as tf.Tensor2D;
    accumulateStats(logits, rows.slice(start, start + n), lab, msk, T, out);
    logits.dispose();
  }
  if (wDV !== weight) wDV.dispose();
  selected.dispose();
  return out;
}

/**
 * {@link completionStats} of a packed batch from its forward's hidden states (no gradient): the same per-
 * sequence sums over the same scored labels as the padded layout.
 * @param hidden `[rows*seqLen, D]` from {@link packedCompletionLogps} with keepHidden (not disposed here)
 * @returns per-sequence sums, length `batch.nSeq`
 */
export function packedCompletionStats(model: CausalLM, batch: PackedBatch, hidden: tf.Tensor2D, opts: { chunkRows?: number } = {}): CompletionStats {
  const out = emptyStats(batch.nSeq);
  const M = batch.labels.length;
  if (M === 0) return out;
  const { weight, layout } = model.outputProjection();
  const wDV = layout === 'VD' ? tf.transpose(weight) : weight;
  const chunk = Math.max(1, opts.chunkRows ?? 256);
  const ones = new Float32Array(M).fill(1);
  for (let start = 0; start < M; start += chunk) {
    const n = Math.min(chunk, M - start);
    const logits = tf.tidy(() => tf.matMul(tf.gather(hidden, tf.tensor1d(batch.predRows.subarray(start, start + n), 'int32')), wDV)) as tf.Tensor2D;
    // accumulateStats' row index g maps to sequence floor(g / T): with T = 1 pass each label's sequence id
    const sub: CompletionStats = emptyStats(n);
    accumulateStats(
      logits,
      Array.from({ length: n }, (_, i) => i),
      batch.labels.subarray(start, start + n),
      ones.subarray(0, n),
      1,
      sub,
    );
    for (let i = 0; i < n; i++) {
      const q = batch.seqOf[start + i]!;
      out.logitSum[q]! += sub.logitSum[i]!;
      out.entropySum[q]! += sub.entropySum[i]!;
      out.correct[q]! += sub.correct[i]!;
      out.tokens[q]! += sub.tokens[i]!;
    }
    logits.dispose();
  }
  if (wDV !== weight) wDV.dispose();
  return out;
}

/**
 * The negative log-likelihood of a batch of completions as its two totals: `sum` = −Σ_b logps_b (nats) and
 * `count` = Σ_b n_b (scored tokens), so that callers can average over one batch ({@link tokenMeanNll}) or
 * accumulate over several (evaluation). Differentiable; call inside a tidy / gradient scope.
 * @param logps `[B]` summed completion log-probs; `tokenCounts` `[B]` completion token counts
 */
export function nllTotals(logps: tf.Tensor, tokenCounts: tf.Tensor): { sum: tf.Scalar; count: tf.Scalar } {
  return { sum: tf.neg(tf.sum(logps)) as tf.Scalar, count: tf.sum(tokenCounts) as tf.Scalar };
}

/**
 * Token-mean NLL −Σ_b logps_b / max(Σ_b n_b, 1) (token-weighted, as `F.cross_entropy` over the masked tokens
 * in TRL's SFT / `sft` loss, PaddleNLP `sft_loss`); 0 when no token is scored. The one NLL of the project:
 * the SFT stage and the preference losses' NLL terms use it. Differentiable.
 * @param logps `[B]` summed completion log-probs; `tokenCounts` `[B]` completion token counts
 * @returns scalar, nats per token
 */
export function tokenMeanNll(logps: tf.Tensor, tokenCounts: tf.Tensor): tf.Scalar {
  const { sum, count } = nllTotals(logps, tokenCounts);
  return tf.div(sum, tf.maximum(count, 1)) as tf.Scalar;
}

/**
 * SFT loss: {@link tokenMeanNll} of the model's completion log-probs. Differentiable.
 * @param model causal LM; `inputIds` `[B, T]` int32; `completionMask` `[B, T]` float32 (1 on target tokens)
 * @returns scalar, nats per token
 */
export function sftLoss(model: CausalLM, inputIds: tf.Tensor2D, completionMask: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => {
    const { logps, tokenCounts } = completionLogps(model, inputIds, completionMask);
    return tokenMeanNll(logps, tokenCounts);
  });
}

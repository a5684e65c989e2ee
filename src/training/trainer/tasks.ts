/**
 * The SFT and DPO stage tasks for {@link runStage}: collate a micro-batch, forward + backward with the
 * scaled loss, the logged metrics, evaluation on the held-out split, reference log-probs (a frozen model,
 * the adapter-disabled policy under LoRA, precomputed once, or none for reference-free losses).
 *
 * DPO: chosen and rejected are scored in one concatenated batch (collatePreference: rows 0..B-1 chosen,
 * B..2B-1 rejected), as the reference implementation's `concatenated_forward` and TRL do; the loss is
 * the loss module's `preferenceLoss` (Rafailov et al. 2023, Eq. 7 for sigmoid) and the metrics
 * `preferenceMetrics` (TRL's names and definitions: rewards/chosen, rewards/margins, logps/chosen, ...).
 */
import * as tf from '@tensorflow/tfjs-core';
import {
  collatePreference,
  collateSft,
  packPreference,
  packSft,
  type BatchLayout,
  type PackedBatch,
  type TokenBatch,
  type TokenizedPair,
} from '../data/index.js';
import {
  completionLogps,
  completionStats,
  packedCompletionLogps,
  packedCompletionStats,
  nllTotals,
  preferenceLoss,
  preferenceMetrics,
  averageMetrics,
  splitStats,
  withEvalPrefix,
  type ResolvedLossOptions,
} from '../losses/index.js';
import { withAdaptersDisabled } from '../models/index.js';
import type { CausalLM } from '../types.js';
import type { MicroResult, StageTask } from './stage.js';

/** Per-pair reference log-probs (host). */
export interface RefLogps {
  chosen: Float32Array;
  rejected: Float32Array;
}

/** How the DPO reference log-probs are obtained. */
export type ReferenceSource =
  | { kind: 'model'; model: CausalLM }
  | { kind: 'lora' }
  | { kind: 'precomputed'; train: RefLogps; eval: RefLogps }
  | { kind: 'none' };

/** Switch a model with a `training` flag (LoRA dropout) on or off; other models are left alone. */
function setTraining(model: CausalLM, on: boolean): void {
  if ('training' in model && typeof model.training === 'boolean') model.training = on;
}

function batchTensors(b: TokenBatch): { ids: tf.Tensor2D; mask: tf.Tensor2D } {
  return {
    ids: tf.tensor2d(b.inputIds, [b.rows, b.seqLen], 'int32'),
    mask: tf.tensor2d(b.completionMask, [b.rows, b.seqLen], 'float32'),
  };
}

/** Host copy of a tensor, disposing it. */
function hostOf(t: tf.Tensor): Float32Array {
  const d = (t.dataSync() as Float32Array).slice();
  t.dispose();
  return d;
}

function sumMask(a: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]!;
  return s;
}

/** Completion tokens that are scored (labels at t ≥ 1, as completionLogps shifts by one). */
function scoredTokens(b: TokenBatch): number {
  let s = 0;
  for (let r = 0; r < b.rows; r++) for (let t = 1; t < b.seqLen; t++) s += b.completionMask[r * b.seqLen + t]!;
  return s;
}

/** Map tf variable names (keys of variableGrads' result) back to parameter names. */
function gradsByParam(grads: tf.NamedTensorMap, byVarName: Map<string, string>): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  for (const [vn, g] of Object.entries(grads)) {
    const p = byVarName.get(vn);
    if (p === undefined) g.dispose();
    else out.set(p, g);
  }
  return out;
}

/**
 * Summed completion log-probs of chosen and rejected for `pairs` under `model` (no gradient), in batches.
 * Used to precompute reference log-probs (TRL `precompute_ref_log_probs`) and for evaluation.
 * @returns `{chosen, rejected}` `[N]` nats
 */
export function scorePairs(model: CausalLM, pairs: TokenizedPair[], padId: number, batchSize: number, opts: { adaptersDisabled?: boolean } = {}): RefLogps {
  const chosen = new Float32Array(pairs.length);
  const rejected = new Float32Array(pairs.length);
  for (let i = 0; i < pairs.length; i += batchSize) {
    const part = pairs.slice(i, i + batchSize);
    const B = part.length;
    const b = collatePreference(part, padId);
    const run = (): Float32Array =>
      hostOf(
        tf.tidy(() => {
          const { ids, mask } = batchTensors(b);
          return completionLogps(model, ids, mask).logps;
        }),
      );
    const lp = opts.adaptersDisabled ? withAdaptersDisabled(model, run) : run();
    chosen.set(lp.subarray(0, B), i);
    rejected.set(lp.subarray(B, 2 * B), i);
  }
  return { chosen, rejected };
}

export interface DpoTaskOptions {
  policy: CausalLM;
  reference: ReferenceSource;
  train: TokenizedPair[];
  eval: TokenizedPair[];
  padId: number;
  loss: ResolvedLossOptions;
  /** Trainable parameters by name. */
  params: Map<string, tf.Variable>;
  evalBatchSize: number;
  /** Log logits/*, entropy, mean_token_accuracy (from the policy forward's hidden states: one more LM-head product). */
  logitStats: boolean;
  /** Reference sync after an optimizer step (TR-DPO / hard updates). */
  afterStep?: (step: number) => void;
  /** Called after each evaluation (samples). */
  onEval?: (ctx: { step: number }) => Promise<void>;
  /**
   * How micro-batches are laid out for the policy and reference forwards: 'padded' (collatePreference),
   * 'padding_free' or 'shared_prompt' (data/packing.ts; same scored tokens, no padding). Default 'padded'.
   */
  layout?: BatchLayout;
}

/** Non-padding tokens of the padded layout of these pairs (prompt+chosen and prompt+rejected): the tokens/s basis of every layout. */
function pairTokens(pairs: TokenizedPair[]): number {
  let n = 0;
  for (const p of pairs) n += 2 * p.promptIds.length + p.chosenIds.length + p.rejectedIds.length;
  return n;
}

/** Tokens one pair occupies in a micro-batch of `layout` (padded: its non-padding tokens; shared_prompt: the prompt once). */
function pairTokensIn(p: TokenizedPair, layout: BatchLayout): number {
  const n = p.promptIds.length + p.chosenIds.length + p.rejectedIds.length;
  return layout === 'shared_prompt' ? n : n + p.promptIds.length;
}

/** A micro-batch in the task's layout: the padded batch, or a packed one. */
type AnyBatch = { kind: 'padded'; batch: TokenBatch } | { kind: 'packed'; batch: PackedBatch };

type PairOut = {
  losses: tf.Tensor1D;
  chosenRewards: tf.Tensor1D;
  rejectedRewards: tf.Tensor1D;
  pc: tf.Tensor1D;
  pr: tf.Tensor1D;
  /** the policy's final hidden states, kept for the logit metrics when logitStats is on */
  hidden?: tf.Tensor2D;
};

/**
 * The DPO stage task.
 * Micro-batch loss = mean over its pairs of the per-pair preference loss, scaled by (pairs / step pairs).
 */
export function dpoTask(o: DpoTaskOptions): StageTask {
  const varList = [...o.params.values()];
  const byVarName = new Map([...o.params].map(([k, v]) => [v.name, k]));

  const layout = o.layout ?? 'padded';
  const collate = (pairs: TokenizedPair[]): AnyBatch =>
    layout === 'padded' ? { kind: 'padded', batch: collatePreference(pairs, o.padId) } : { kind: 'packed', batch: packPreference(pairs, layout) };
  /** Summed completion log-probs and token counts `[2B]` of a batch in either layout (inside a tidy/gradient scope). */
  const logpsOf = (model: CausalLM, ab: AnyBatch, keepHidden: boolean): ReturnType<typeof completionLogps> => {
    if (ab.kind === 'packed') return packedCompletionLogps(model, ab.batch, { keepHidden });
    const { ids, mask } = batchTensors(ab.batch);
    return completionLogps(model, ids, mask, { keepHidden });
  };

  const refFor = (split: 'train' | 'eval', indices: number[], batch: AnyBatch): RefLogps | null => {
    const r = o.reference;
    if (r.kind === 'none') return null;
    if (r.kind === 'precomputed') {
      const src = split === 'train' ? r.train : r.eval;
      return { chosen: Float32Array.from(indices, (i) => src.chosen[i]!), rejected: Float32Array.from(indices, (i) => src.rejected[i]!) };
    }
    const B = indices.length;
    const run = (model: CausalLM): Float32Array => hostOf(tf.tidy(() => logpsOf(model, batch, false).logps));
    const lp = r.kind === 'model' ? run(r.model) : withAdaptersDisabled(o.policy, () => run(o.policy));
    return { chosen: lp.slice(0, B), rejected: lp.slice(B, 2 * B) };
  };

  /** Policy forward + loss on one collated batch (call inside a gradient or tidy scope). */
  const pairLoss = (batch: AnyBatch, B: number, ref: RefLogps | null): PairOut => {
    const { logps, tokenCounts, hidden } = logpsOf(o.policy, batch, o.logitStats);
    const pc = tf.slice(logps, [0], [B]) as tf.Tensor1D;
    const pr = tf.slice(logps, [B], [B]) as tf.Tensor1D;
    const out = preferenceLoss(
      {
        policyChosenLogps: pc,
        policyRejectedLogps: pr,
        referenceChosenLogps: ref ? tf.tensor1d(ref.chosen) : undefined,
        referenceRejectedLogps: ref ? tf.tensor1d(ref.rejected) : undefined,
        chosenTokens: tf.slice(tokenCounts, [0], [B]) as tf.Tensor1D,
        rejectedTokens: tf.slice(tokenCounts, [B], [B]) as tf.Tensor1D,
      },
      o.loss,
    );
    void batch;
    return hidden ? { ...out, pc, pr, hidden } : { ...out, pc, pr };
  };

  const metricsOf = (kept: PairOut, batch: AnyBatch): Record<string, number> => {
    // inside tidy: completionStats leaves its label-shift intermediates to the caller's scope
    const stats: ReturnType<typeof splitStats> | null = o.logitStats
      ? (() => {
          let s: ReturnType<typeof splitStats> | null = null;
          tf.tidy(() => {
            if (batch.kind === 'packed') s = splitStats(packedCompletionStats(o.policy, batch.batch, kept.hidden!));
            else {
              const { ids, mask } = batchTensors(batch.batch);
              s = splitStats(completionStats(o.policy, ids, mask, { hidden: kept.hidden }));
            }
          });
          return s as ReturnType<typeof splitStats> | null;
        })()
      : null;
    return preferenceMetrics({
      chosenRewards: kept.chosenRewards,
      rejectedRewards: kept.rejectedRewards,
      policyChosenLogps: kept.pc,
      policyRejectedLogps: kept.pr,
      chosenStats: stats?.chosen,
      rejectedStats: stats?.rejected,
    });
  };

  const micro = (indices: number[], scale: number): MicroResult => {
    const pairs = indices.map((i) => o.train[i]!);
    const B = pairs.length;
    const batch = collate(pairs);
    const ref = refFor('train', indices, batch);
    const held: { out?: PairOut } = {};
    setTraining(o.policy, true);
    let value: tf.Scalar;
    let grads: tf.NamedTensorMap;
    try {
      ({ value, grads } = tf.variableGrads(() => {
        const out = pairLoss(batch, B, ref);
        for (const t of Object.values(out)) tf.keep(t);
        held.out = out;
        return tf.mul(tf.mean(out.losses), scale) as tf.Scalar;
      }, varList));
    } finally {
      setTraining(o.policy, false);
    }
    const k = held.out;
    if (!k) throw new Error('dpoTask: the loss closure did not run');
    const lossT = tf.tidy(() => tf.mean(k.losses));
    const loss = lossT.dataSync()[0]!;
    lossT.dispose();
    const metrics = metricsOf(k, batch);
    delete metrics.loss;
    tf.dispose([value, ...Object.values(k)]);
    return { grads: gradsByParam(grads, byVarName), loss, metrics, tokens: batch.kind === 'padded' ? sumMask(batch.batch.attentionMask) : pairTokens(pairs) };
  };

  const evaluate = async (ctx: { step: number }): Promise<Record<string, number>> => {
    if (o.eval.length === 0) return {};
    const list: Array<Record<string, number>> = [];
    for (let i = 0; i < o.eval.length; i += o.evalBatchSize) {
      const indices = Array.from({ length: Math.min(o.evalBatchSize, o.eval.length - i) }, (_, j) => i + j);
      const pairs = indices.map((j) => o.eval[j]!);
      const batch = collate(pairs);
      const ref = refFor('eval', indices, batch);
      const out = tf.tidy(() => pairLoss(batch, pairs.length, ref));
      const m = metricsOf(out, batch);
      const lossT = tf.tidy(() => tf.mean(out.losses));
      m.loss = (await lossT.data())[0]!;
      lossT.dispose();
      tf.dispose(Object.values(out));
      list.push(m);
    }
    const res = withEvalPrefix(averageMetrics(list));
    await o.onEval?.(ctx);
    return res;
  };

  return {
    stage: 'dpo',
    nTrain: o.train.length,
    units: (indices) => indices.length,
    tokensOf: (i) => pairTokensIn(o.train[i]!, layout),
    micro,
    evaluate,
    afterStep: o.afterStep,
  };
}

export interface SftTaskOptions {
  model: CausalLM;
  train: TokenizedPair[];
  eval: TokenizedPair[];
  padId: number;
  params: Map<string, tf.Variable>;
  evalBatchSize: number;
  onEval?: (ctx: { step: number }) => Promise<void>;
  /** 'padding_free' packs each micro-batch's prompt+target sequences into one row (data/packing.ts); default 'padded'. */
  layout?: BatchLayout;
}

/**
 * The SFT stage task: NLL of the SFT target (prompt masked), a token-weighted mean — the same quantity as the
 * loss module's `sftLoss`, computed here as its two totals (`nllTotals`: a sum and a token count) so that micro-batches of gradient
 * accumulation combine into the token mean of the whole step.
 * A micro-batch's weight is its number of scored completion tokens, so accumulation gives the token mean over
 * the whole effective batch.
 */
export function sftTask(o: SftTaskOptions): StageTask {
  const varList = [...o.params.values()];
  const byVarName = new Map([...o.params].map(([k, v]) => [v.name, k]));
  let cacheKey = '';
  let cacheBatch: TokenBatch | null = null;
  const collate = (indices: number[]): TokenBatch => {
    const key = indices.join(',');
    if (key !== cacheKey || !cacheBatch) {
      cacheBatch = collateSft(
        indices.map((i) => o.train[i]!),
        o.padId,
      );
      cacheKey = key;
    }
    return cacheBatch;
  };
  /** −Σ logps and the scored token count of a batch (the losses' nllTotals); inside a tidy/gradient scope. */
  const nll = (ids: tf.Tensor2D, mask: tf.Tensor2D): { sum: tf.Scalar; count: tf.Scalar } => {
    const { logps, tokenCounts } = completionLogps(o.model, ids, mask);
    return nllTotals(logps, tokenCounts);
  };
  const packed = o.layout !== undefined && o.layout !== 'padded';
  /** nll of the micro-batch `indices` in the task's layout (inside a tidy/gradient scope). */
  const nllOf = (indices: number[], batch: TokenBatch): { sum: tf.Scalar; count: tf.Scalar } => {
    if (packed) {
      const { logps, tokenCounts } = packedCompletionLogps(o.model, packSft(indices.map((i) => o.train[i]!)));
      return nllTotals(logps, tokenCounts);
    }
    const { ids, mask } = batchTensors(batch);
    return nll(ids, mask);
  };

  const micro = (indices: number[], scale: number): MicroResult => {
    const batch = collate(indices);
    const count = scoredTokens(batch);
    const held: { loss?: tf.Scalar } = {};
    setTraining(o.model, true);
    let value: tf.Scalar;
    let grads: tf.NamedTensorMap;
    try {
      ({ value, grads } = tf.variableGrads(() => {
        const r = nllOf(indices, batch);
        const mean = tf.div(r.sum, Math.max(count, 1)) as tf.Scalar;
        held.loss = tf.keep(mean);
        return tf.mul(mean, scale) as tf.Scalar;
      }, varList));
    } finally {
      setTraining(o.model, false);
    }
    const lossT = held.loss;
    if (!lossT) throw new Error('sftTask: the loss closure did not run');
    const loss = lossT.dataSync()[0]!;
    tf.dispose([value, lossT]);
    return { grads: gradsByParam(grads, byVarName), loss, metrics: {}, tokens: sumMask(batch.attentionMask) };
  };

  const evaluate = async (ctx: { step: number }): Promise<Record<string, number>> => {
    if (o.eval.length === 0) return {};
    let s = 0;
    let n = 0;
    for (let i = 0; i < o.eval.length; i += o.evalBatchSize) {
      const b = collateSft(o.eval.slice(i, i + o.evalBatchSize), o.padId);
      const { ids, mask } = batchTensors(b);
      const r = tf.tidy(() => {
        const x = nll(ids, mask);
        return tf.stack([x.sum, x.count]);
      });
      const d = await r.data();
      s += d[0]!;
      n += d[1]!;
      tf.dispose([r, ids, mask]);
    }
    await o.onEval?.(ctx);
    return { eval_loss: n > 0 ? s / n : 0 };
  };

  return {
    stage: 'sft',
    nTrain: o.train.length,
    units: (indices) => scoredTokens(collate(indices)),
    tokensOf: (i) => o.train[i]!.promptIds.length + o.train[i]!.sftIds.length,
    micro,
    evaluate,
  };
}

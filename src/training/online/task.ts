/**
 * The online DPO stage task for {@link runStage} (TRL OnlineDPOTrainer; MindSpeed-LLM Ray Online DPO). Per
 * optimizer step, before the micro-batches run (`prepareStep`):
 *   1. the policy samples `num_samples_per_step` completions of each prompt of the step (sampler.ts);
 *   2. the judge scores them; `missing_eos_penalty` is subtracted from completions that did not stop;
 *   3. the highest-scored completion is chosen, the lowest rejected (first index on ties);
 *   4. policy and reference sequence log-probs of every sample are computed (no gradient) for TRL's
 *      objective/* metrics.
 * Then each micro-batch is exactly an offline DPO micro-batch on its chosen/rejected pairs: the DPO task of
 * ../trainer/tasks.ts with the reference log-probs of step 4, so the loss and gradient are `preferenceLoss`'s
 * (sigmoid: Rafailov et al. 2023 Eq. 7; ipo: Azar et al. 2023 Eq. 17) — the parity MindSpeed tests.
 *
 * Metrics (TRL OnlineDPOTrainer.training_step, per sample i over all samples of the micro-batch, with
 * kl_i = logπ(y_i) − logπ_ref(y_i) summed over the completion and s_i the score after the penalty):
 * objective/kl = mean kl_i; objective/entropy = mean −logπ(y_i); objective/non_score_reward = mean −β·kl_i;
 * objective/rlhf_reward = mean (s_i − β·kl_i); objective/scores = mean s_i; val/contain_eos_token = the
 * fraction of samples that stopped; beta; rewards/*, logps/* of the pairs as DPO logs them; plus
 * generation/tokens_per_s and generation/seconds. Unlike TRL, log-probs are of the untempered policy (TRL
 * divides the logits by the sampling temperature), so the loss equals offline DPO's on the same pairs.
 */
import * as tf from '@tensorflow/tfjs-core';
import { collateSft, type TokenizedPair } from '../data/index.js';
import { averageMetrics, completionLogps, type ResolvedLossOptions } from '../losses/index.js';
import { withAdaptersDisabled, type GenerativeLM } from '../models/index.js';
import type { Rng } from '../trainer/rng.js';
import type { MicroResult, StageTask } from '../trainer/stage.js';
import { dpoTask, type ReferenceSource } from '../trainer/tasks.js';
import type { Tokenizer } from '../types.js';
import type { Judge, JudgeItem } from './judges/types.js';
import type { TokenizedPrompt } from './prompts.js';
import { sampleCompletions, type SampledCompletion } from './sampler.js';
import { betaForEpoch, type OnlineDpoSettings } from './schema.js';

/** Completions of one prompt: the sampler, or fixed completions (tests, parity). */
export type CompletionSource = (prompt: TokenizedPrompt, ctx: { seed: number; n: number; maxNewTokens: number }) => SampledCompletion[];

export interface OnlineDpoTaskOptions {
  policy: GenerativeLM;
  /** `model` (frozen copy) or `lora` (adapters disabled). */
  reference: Extract<ReferenceSource, { kind: 'model' } | { kind: 'lora' }>;
  prompts: TokenizedPrompt[];
  evalPrompts: TokenizedPrompt[];
  judge: Judge;
  tokenizer: Tokenizer;
  padId: number;
  /** The preference loss (sigmoid or ipo); its beta is replaced by the epoch's `settings.beta`. */
  loss: ResolvedLossOptions;
  settings: OnlineDpoSettings;
  params: Map<string, tf.Variable>;
  seed: number;
  /** Ids that end a completion (EOS ids, and BOS for llama2.c-style models). */
  stopIds: number[];
  /** prompt + completion tokens at most (`max_length`). */
  maxLength: number;
  /** Samples scored per no-gradient forward. */
  evalBatchSize: number;
  /** Default: {@link sampleCompletions} on the policy. */
  completions?: CompletionSource;
  afterStep?: (step: number) => void;
  onEval?: (ctx: { step: number }) => Promise<void>;
}

/** Everything the micro-batch needs from the step's generation and judging. */
interface PreparedMicro {
  pairs: TokenizedPair[];
  refChosen: Float32Array;
  refRejected: Float32Array;
  beta: number;
  metrics: Record<string, number>;
}

/** A 32-bit seed mixing the run seed, the step and the prompt's place in it. */
export function sampleSeed(seed: number, step: number, k: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (step + 0x632be59b), 0xc2b2ae35) >>> 0;
  h = Math.imul(h ^ (k + 0x27d4eb2f), 0x165667b1) >>> 0;
  return (h ^ (h >>> 15)) >>> 0;
}

/**
 * Chosen / rejected indices of one prompt's scores: argmax and argmin (first on ties); when every score
 * is equal, the first and the second sample.
 * @param scores length >= 2
 */
export function pickPair(scores: number[]): { chosen: number; rejected: number } {
  let hi = 0;
  let lo = 0;
  for (let i = 1; i < scores.length; i++) {
    if (scores[i]! > scores[hi]!) hi = i;
    if (scores[i]! < scores[lo]!) lo = i;
  }
  if (hi === lo) lo = hi === 0 ? 1 : 0;
  return { chosen: hi, rejected: lo };
}

/** Scores after TRL's `missing_eos_penalty`: subtracted from every completion that did not stop. */
export function applyMissingEosPenalty(scores: number[], completions: SampledCompletion[], penalty: number | null): number[] {
  if (penalty === null || penalty === 0) return scores.slice();
  return scores.map((s, i) => (completions[i]!.stopped ? s : s - penalty));
}

/**
 * The text of a completion as it continues the prompt (stop tokens dropped): decoded together with the prompt
 * so that a leading space survives SentencePiece decoding, as generate() does.
 */
export function completionText(tok: Tokenizer, promptIds: number[], ids: number[], stopIds: number[]): string {
  const body = ids.filter((id) => !stopIds.includes(id));
  const pre = promptIds[0] === tok.bosTokenId ? promptIds.slice(1) : promptIds;
  const a = tok.decode(pre);
  const full = tok.decode([...pre, ...body]);
  return full.startsWith(a) ? full.slice(a.length) : tok.decode(body);
}

const mean = (xs: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i]!;
  return xs.length > 0 ? s / xs.length : 0;
};

/** Create the online DPO stage task (see the module doc). */
export function onlineDpoTask(o: OnlineDpoTaskOptions): StageTask & { generation: { tokens: number; seconds: number } } {
  const s = o.settings;
  const n = s.num_samples_per_step;
  const generation = { tokens: 0, seconds: 0 };
  const prepared = new Map<string, PreparedMicro>();
  const sample: CompletionSource =
    o.completions ??
    ((prompt, ctx) =>
      sampleCompletions(o.policy, prompt.ids, o.stopIds, {
        n: ctx.n,
        maxNewTokens: ctx.maxNewTokens,
        doSample: s.do_sample,
        temperature: s.temperature,
        topP: s.top_p,
        topK: s.top_k,
        seed: ctx.seed,
      }).completions);

  /** Summed completion log-probs `[N]` of prompt + each completion under `model` (no gradient). */
  const seqLogps = (prompt: TokenizedPrompt, comps: SampledCompletion[], useReference: boolean): Float32Array => {
    const pairs: TokenizedPair[] = comps.map((c) => ({ promptIds: prompt.ids, chosenIds: [], rejectedIds: [], sftIds: c.ids }));
    const out = new Float32Array(comps.length);
    const r = o.reference;
    for (let i = 0; i < pairs.length; i += o.evalBatchSize) {
      const b = collateSft(pairs.slice(i, i + o.evalBatchSize), o.padId);
      const run = (model: GenerativeLM): Float32Array =>
        tf.tidy(() => {
          const ids = tf.tensor2d(b.inputIds, [b.rows, b.seqLen], 'int32');
          const mask = tf.tensor2d(b.completionMask, [b.rows, b.seqLen], 'float32');
          return completionLogps(model, ids, mask).logps.dataSync() as Float32Array;
        });
      let lp: Float32Array;
      if (!useReference) lp = run(o.policy);
      else if (r.kind === 'model') lp = run(r.model as GenerativeLM);
      else lp = withAdaptersDisabled(o.policy, () => run(o.policy));
      out.set(lp, i);
    }
    return out;
  };

  /**
   * Sample every prompt of every group (a group: one micro-batch, or one eval batch), then score all the
   * completions with one judge call; scores come back with `missing_eos_penalty` applied.
   */
  const generateAndJudge = async (
    groups: Array<{ prompts: TokenizedPrompt[] }>,
    seedOf: (g: number, k: number) => number,
  ): Promise<Array<{ prompts: TokenizedPrompt[]; comps: SampledCompletion[][]; scores: number[][]; seconds: number; tokens: number }>> => {
    const sampled = groups.map((g, gi) => {
      const t0 = performance.now();
      const comps = g.prompts.map((p, k) =>
        sample(p, { seed: seedOf(gi, k), n, maxNewTokens: Math.max(1, Math.min(s.max_new_tokens, o.maxLength - p.ids.length)) }),
      );
      const tokens = comps.flat().reduce((a, c) => a + c.ids.length, 0);
      return { prompts: g.prompts, comps, seconds: (performance.now() - t0) / 1000, tokens };
    });
    const items: JudgeItem[] = sampled.flatMap((g) =>
      g.prompts.map((p, k) => ({ prompt: p.text, completions: g.comps[k]!.map((c) => completionText(o.tokenizer, p.ids, c.ids, o.stopIds)) })),
    );
    const flat = await o.judge.score(items);
    let q = 0;
    return sampled.map((g) => ({
      ...g,
      scores: g.prompts.map((_, k) => applyMissingEosPenalty(flat[q++]!, g.comps[k]!, s.missing_eos_penalty)),
    }));
  };

  const prepareStep = async (micros: number[][], ctx: { step: number; epoch: number }): Promise<void> => {
    prepared.clear();
    const beta = betaForEpoch(s.beta, ctx.epoch, o.loss.beta);
    let k = 0;
    const offsets = micros.map((m) => {
      const start = k;
      k += m.length;
      return start;
    });
    const judged = await generateAndJudge(
      micros.map((m) => ({ prompts: m.map((i) => o.prompts[i]!) })),
      (g, j) => sampleSeed(o.seed, ctx.step, offsets[g]! + j),
    );
    judged.forEach((g, gi) => {
      generation.tokens += g.tokens;
      generation.seconds += g.seconds;
      const pairs: TokenizedPair[] = [];
      const refC: number[] = [];
      const refR: number[] = [];
      const kl: number[] = [];
      const ent: number[] = [];
      const sc: number[] = [];
      const eos: number[] = [];
      g.prompts.forEach((p, j) => {
        const comps = g.comps[j]!;
        const scores = g.scores[j]!;
        const pol = seqLogps(p, comps, false);
        const ref = seqLogps(p, comps, true);
        const { chosen, rejected } = pickPair(scores);
        pairs.push({ promptIds: p.ids, chosenIds: comps[chosen]!.ids, rejectedIds: comps[rejected]!.ids, sftIds: comps[chosen]!.ids });
        refC.push(ref[chosen]!);
        refR.push(ref[rejected]!);
        comps.forEach((c, i) => {
          kl.push(pol[i]! - ref[i]!);
          ent.push(-pol[i]!);
          sc.push(scores[i]!);
          eos.push(c.stopped ? 1 : 0);
        });
      });
      const meanKl = mean(kl);
      const metrics: Record<string, number> = {
        'objective/kl': meanKl,
        'objective/entropy': mean(ent),
        'objective/non_score_reward': -beta * meanKl,
        'objective/rlhf_reward': mean(sc.map((x, i) => x - beta * kl[i]!)),
        'objective/scores': mean(sc),
        'val/contain_eos_token': mean(eos),
        beta,
        'generation/tokens_per_s': g.seconds > 0 ? g.tokens / g.seconds : 0,
        'generation/seconds': g.seconds,
      };
      prepared.set(micros[gi]!.join(','), { pairs, refChosen: Float32Array.from(refC), refRejected: Float32Array.from(refR), beta, metrics });
    });
  };

  const micro = (indices: number[], scale: number, rng: Rng): MicroResult => {
    const p = prepared.get(indices.join(','));
    if (!p) throw new Error(`onlineDpoTask: micro-batch [${indices.join(',')}] was not prepared (prepareStep runs first)`);
    const task = dpoTask({
      policy: o.policy,
      reference: {
        kind: 'precomputed',
        train: { chosen: p.refChosen, rejected: p.refRejected },
        eval: { chosen: new Float32Array(0), rejected: new Float32Array(0) },
      },
      train: p.pairs,
      eval: [],
      padId: o.padId,
      loss: { ...o.loss, beta: p.beta },
      params: o.params,
      evalBatchSize: o.evalBatchSize,
      logitStats: false,
    });
    const r = task.micro(
      p.pairs.map((_, i) => i),
      scale,
      rng,
    );
    return { ...r, metrics: { ...r.metrics, ...p.metrics } };
  };

  /** Mean judge score of samples on the eval prompts (the same seeds at every evaluation). */
  const evaluate = async (ctx: { step: number }): Promise<Record<string, number>> => {
    if (o.evalPrompts.length === 0) return {};
    const groups: Array<{ prompts: TokenizedPrompt[] }> = [];
    for (let i = 0; i < o.evalPrompts.length; i += o.evalBatchSize) groups.push({ prompts: o.evalPrompts.slice(i, i + o.evalBatchSize) });
    const judged = await generateAndJudge(groups, (g, j) => sampleSeed(o.seed ^ 0x5bd1e995, 0, g * o.evalBatchSize + j));
    const list = judged.map((g) => ({
      'objective/scores': mean(g.scores.flat()),
      'val/contain_eos_token': mean(g.comps.flat().map((c) => (c.stopped ? 1 : 0))),
      'generation/tokens_per_s': g.seconds > 0 ? g.tokens / g.seconds : 0,
    }));
    const m = averageMetrics(list);
    await o.onEval?.(ctx);
    return Object.fromEntries(Object.entries(m).map(([k, v]) => [`eval_${k}`, v]));
  };

  return {
    stage: 'dpo',
    nTrain: o.prompts.length,
    units: (indices) => indices.length,
    prepareStep,
    micro,
    evaluate,
    afterStep: o.afterStep,
    generation,
  };
}

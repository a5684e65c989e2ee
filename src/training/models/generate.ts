/**
 * Text generation with a KV cache: the prompt is run once (prefill), then one token per step, each step
 * attending to the cached keys/values (cost linear in the current length, not quadratic).
 *
 * Decoding: greedy (temperature 0), or sampling from softmax(logits / T) restricted to the top-k tokens
 * and/or the smallest set whose probability mass reaches top-p (nucleus sampling, Holtzman et al. 2020),
 * with a seeded RNG so runs are reproducible. Stops at EOS, and at BOS as llama2.c's run.c does (its
 * stories end with the next story's BOS).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM, Tokenizer } from '../types.js';
import type { GenerativeLM } from './base.js';
import { tokenizerAddsBos } from '../tokenizers/index.js';
import { eosIds } from './config.js';
import { Rng } from '../../util/rng.js';

export interface GenerateOptions {
  /** tokens to generate at most (default 256; also capped by max_position_embeddings) */
  maxNewTokens?: number;
  /** 0 = greedy argmax (default 0) */
  temperature?: number;
  /** keep only the k most likely tokens (0/undefined = all) */
  topK?: number;
  /** nucleus: keep the most likely tokens whose cumulative probability reaches p (1/undefined = all) */
  topP?: number;
  /** RNG seed for sampling (default 0) */
  seed?: number;
  /** stop at BOS too (default true, as llama2.c run.c) */
  stopAtBos?: boolean;
  /** extra stop ids */
  stopTokenIds?: number[];
}

/** A seeded uniform [0, 1) source for sampling: the project's one PRNG (src/util/rng.ts, also the data order). */
export function seededRandom(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.next();
}

/**
 * Pick the next token from one row of logits.
 * @param logits `[V]` float32 (unnormalised)
 * @returns a token id: argmax when temperature <= 0, else a sample after temperature, top-k and top-p
 *   filtering (HF `TopKLogitsWarper`/`TopPLogitsWarper` semantics: at least one token is always kept)
 */
export function sampleNext(logits: Float32Array, opts: { temperature?: number; topK?: number; topP?: number }, rand: () => number): number {
  const T = opts.temperature ?? 0;
  if (!(T > 0)) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!);
  if (opts.topK && opts.topK > 0 && opts.topK < order.length) order = order.slice(0, opts.topK);
  const max = logits[order[0]!]! / T;
  let probs = order.map((i) => Math.exp(logits[i]! / T - max));
  let sum = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / sum);
  if (opts.topP !== undefined && opts.topP < 1) {
    let cum = 0;
    let keep = 0;
    while (keep < probs.length) {
      cum += probs[keep]!;
      keep++;
      if (cum >= opts.topP) break;
    }
    order = order.slice(0, keep);
    probs = probs.slice(0, keep);
    sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / sum);
  }
  const r = rand();
  let cum = 0;
  for (let i = 0; i < probs.length; i++) {
    cum += probs[i]!;
    if (r < cum) return order[i]!;
  }
  return order[order.length - 1]!;
}

/**
 * Continue `prompt` with `model`.
 * @param prompt text; encoded without special tokens, BOS prepended when the tokenizer uses one
 *   (llama2.c and Llama tokenizers; not GPT-2)
 * @returns `ids`: the generated token ids (the stop token excluded); `text`: their decoded text, as it
 *   continues the prompt (leading spaces kept)
 * @throws RangeError when the model has no KV-cache path (not built by this layer)
 */
export function generate(model: CausalLM, tokenizer: Tokenizer, prompt: string, opts: GenerateOptions = {}): { ids: number[]; text: string } {
  const lm = model as GenerativeLM;
  if (typeof lm.createCache !== 'function' || typeof lm.logitsCached !== 'function') {
    throw new RangeError('generate: the model has no KV-cache path; load it with loadModel/createModel');
  }
  const promptIds = tokenizer.encode(prompt);
  const bos = tokenizer.bosTokenId ?? model.config.bosTokenId;
  const prefix: number[] = [];
  if (bos !== null && (tokenizerAddsBos(tokenizer) || promptIds.length === 0)) prefix.push(bos);
  else if (promptIds.length === 0) {
    const eos = tokenizer.eosTokenId ?? model.config.eosTokenId;
    if (eos === null) throw new RangeError('generate: empty prompt and the tokenizer has neither BOS nor EOS');
    prefix.push(eos);
  }
  const input = [...prefix, ...promptIds];
  const stop = new Set<number>(opts.stopTokenIds ?? []);
  for (const id of [tokenizer.eosTokenId, ...eosIds(model.config)]) if (id !== null) stop.add(id);
  if (opts.stopAtBos ?? true) for (const id of [tokenizer.bosTokenId, model.config.bosTokenId]) if (id !== null) stop.add(id);
  const maxNew = Math.max(0, Math.min(opts.maxNewTokens ?? 256, model.config.maxPositionEmbeddings - input.length));
  const rand = seededRandom(opts.seed ?? 0);
  const V = model.config.vocabSize;
  const out: number[] = [];
  const cache = lm.createCache();
  try {
    let step = input;
    while (out.length < maxNew) {
      const ids = step;
      const row = tf.tidy(() => {
        const lg = lm.logitsCached(tf.tensor2d([ids], [1, ids.length], 'int32'), cache);
        return tf.slice(lg, [0, ids.length - 1, 0], [1, 1, V]).dataSync() as Float32Array;
      });
      const next = sampleNext(row, opts, rand);
      if (stop.has(next)) break;
      out.push(next);
      step = [next];
    }
  } finally {
    cache.dispose();
  }
  // Decode prompt + continuation together so the continuation keeps its leading space (SentencePiece
  // drops the leading space of the first decoded piece).
  const pre = tokenizer.decode(promptIds);
  const full = tokenizer.decode([...promptIds, ...out]);
  const text = full.startsWith(pre) ? full.slice(pre.length) : tokenizer.decode(out);
  return { ids: out, text };
}

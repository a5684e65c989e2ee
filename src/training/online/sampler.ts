/**
 * Batched sampling of several completions of one prompt with the model's KV cache, the generation side of
 * online DPO (TRL OnlineDPOTrainer: `num_generations` completions per prompt; MindSpeed-LLM Ray Online DPO:
 * `n_samples_per_prompt`). The `n` rows share the prompt, so they need no padding or attention mask: the
 * prompt is prefilled once as an `[n, T]` batch and then each step decodes `[n, 1]` against the cache.
 * Rows that have stopped keep decoding (their tokens are discarded) until every row stops or
 * `maxNewTokens` is reached: one batched matmul per step instead of `n`.
 *
 * Decoding per row is {@link sampleNext} (temperature, top-k, top-p as HF's logits warpers; greedy when
 * `doSample` is false), with one seeded stream per row so the result depends only on the seed.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { GenerativeLM } from '../models/base.js';
import { sampleNext, seededRandom } from '../models/generate.js';

/** Sampling settings (TRL / transformers GenerationConfig names, camelCase). */
export interface SampleSettings {
  /** Completions per prompt (>= 1). */
  n: number;
  /** Tokens generated at most per completion (the stop token included). */
  maxNewTokens: number;
  /** false: greedy argmax (every row equal). */
  doSample: boolean;
  /** Softmax temperature (> 0 when sampling). */
  temperature: number;
  /** Nucleus mass in (0, 1]. */
  topP: number;
  /** Keep the k most likely tokens (0: all). */
  topK?: number;
  /** Seed of the row streams (row r uses seed · 1000003 + r). */
  seed: number;
}

/** One sampled completion. */
export interface SampledCompletion {
  /** Generated ids; when the row stopped, the stop token is the last id. */
  ids: number[];
  /** True when the row ended with a stop token (TRL `contain_eos_token`). */
  stopped: boolean;
}

/** What one call produced. */
export interface SampleResult {
  completions: SampledCompletion[];
  /** Generated tokens kept (sum of completion lengths). */
  tokens: number;
  /** Wall seconds of the call. */
  seconds: number;
}

/**
 * Sample `s.n` completions of `promptIds` from `model` (no gradient; the cache is freed before returning).
 * @param promptIds the prompt's token ids, BOS included when the tokenizer uses one (length >= 1)
 * @param stopIds ids that end a completion (EOS ids; BOS too for llama2.c stories models)
 * @returns `n` completions, each at most `min(maxNewTokens, max_position_embeddings - prompt)` ids
 * @throws RangeError for an empty prompt, `n < 1`, or a prompt that fills the model's context
 */
export function sampleCompletions(model: GenerativeLM, promptIds: number[], stopIds: Iterable<number>, s: SampleSettings): SampleResult {
  if (promptIds.length === 0) throw new RangeError('sampleCompletions: empty prompt (at least BOS is needed)');
  if (!(Number.isInteger(s.n) && s.n >= 1)) throw new RangeError(`sampleCompletions: n must be an integer >= 1, got ${s.n}`);
  const room = model.config.maxPositionEmbeddings - promptIds.length;
  if (room <= 0) throw new RangeError(`sampleCompletions: the prompt (${promptIds.length} tokens) fills max_position_embeddings`);
  const t0 = performance.now();
  const n = s.n;
  const V = model.config.vocabSize;
  const maxNew = Math.min(s.maxNewTokens, room);
  const stop = new Set(stopIds);
  const warp = s.doSample ? { temperature: s.temperature, topK: s.topK ?? 0, topP: s.topP } : { temperature: 0 };
  const rands = Array.from({ length: n }, (_, r) => seededRandom((Math.imul(s.seed >>> 0, 1000003) + r) >>> 0));
  const out: SampledCompletion[] = Array.from({ length: n }, () => ({ ids: [], stopped: false }));
  const cache = model.createCache();
  try {
    let step: number[][] = Array.from({ length: n }, () => promptIds);
    for (let t = 0; t < maxNew; t++) {
      const width = step[0]!.length;
      const flat = step.flat();
      const last = tf.tidy(() => {
        const lg = model.logitsCached(tf.tensor2d(flat, [n, width], 'int32'), cache);
        return tf.slice(lg, [0, width - 1, 0], [n, 1, V]).dataSync() as Float32Array;
      });
      const next: number[][] = [];
      let live = 0;
      for (let r = 0; r < n; r++) {
        const row = out[r]!;
        const tok = row.stopped || row.ids.length >= maxNew ? 0 : sampleNext(last.subarray(r * V, (r + 1) * V), warp, rands[r]!);
        if (!row.stopped && row.ids.length < maxNew) {
          row.ids.push(tok);
          if (stop.has(tok)) row.stopped = true;
          else live++;
        }
        next.push([tok]);
      }
      if (live === 0) break;
      step = next;
    }
  } finally {
    cache.dispose();
  }
  const tokens = out.reduce((a, c) => a + c.ids.length, 0);
  return { completions: out, tokens, seconds: (performance.now() - t0) / 1000 };
}

/**
 * Per-row summed log-probs of the chosen and rejected completions given the prompt: the numbers DPO uses.
 * Rows are tokenised by the data pipeline's tokenizePreference (same truncation; completions end with EOS)
 * and scored by the losses' completionLogps (the label at t+1 is scored by the logits at t; log-probs summed
 * over completion tokens) — so `chosen_logps - rejected_logps` is exactly the policy term of the DPO logits
 * (Rafailov et al. 2023, eq. 7).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM, PreferenceExample, Tokenizer } from '../types.js';
import { collatePreference, resolvePadId, tokenizePreference } from '../data/index.js';
import { completionLogps } from '../losses/index.js';

/** One scored row. */
export interface ScoreRow {
  index: number;
  /** summed log p(chosen | prompt), nats; null when dropped */
  chosen_logps: number | null;
  rejected_logps: number | null;
  /** completion tokens scored (EOS included) */
  chosen_tokens: number;
  rejected_tokens: number;
  /** true when the prompt alone fills max_length (the pair is dropped, as in training) */
  dropped?: boolean;
}

/**
 * Score preference examples one pair at a time (chosen and rejected in one 2-row batch).
 * @param opts the tokenisation settings of training (max_length, max_prompt_length, truncation_mode)
 * @returns one row per example, in order
 */
export function scoreCompletions(
  model: CausalLM,
  tokenizer: Tokenizer,
  examples: PreferenceExample[],
  opts: { maxLength: number; maxPromptLength: number; truncationMode: 'keep_start' | 'keep_end' },
): ScoreRow[] {
  const padId = resolvePadId(tokenizer);
  return examples.map((ex, index) => {
    const pair = tokenizePreference(ex, tokenizer, opts);
    if (!pair) return { index, chosen_logps: null, rejected_logps: null, chosen_tokens: 0, rejected_tokens: 0, dropped: true };
    const b = collatePreference([pair], padId);
    const [logps, counts] = tf.tidy(() => {
      const ids = tf.tensor2d(b.inputIds, [b.rows, b.seqLen], 'int32');
      const mask = tf.tensor2d(b.completionMask, [b.rows, b.seqLen], 'float32');
      const r = completionLogps(model, ids, mask);
      return [r.logps.dataSync(), r.tokenCounts.dataSync()];
    });
    return { index, chosen_logps: logps[0]!, rejected_logps: logps[1]!, chosen_tokens: counts[0]!, rejected_tokens: counts[1]! };
  });
}

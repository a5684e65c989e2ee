/**
 * Tokenisation of preference pairs as TRL's DPOTrainer does it (docs/data.md "Tokenisation"; TRL `_prepare_dataset`,
 * `tokenize_row`) with the DPO reference's truncation (eric-mitchell `preference_datasets.tokenize_batch_element`,
 * TRL ≤0.28 `max_prompt_length` + `truncation_mode`):
 *
 * 1. prompt ids = encode(prompt); completion ids = encode(prompt + completion) minus the first
 *    len(prompt ids) tokens (TRL: tokenise together and slice, so merges at the boundary match what the
 *    model sees at generation; a boundary whose tokens differ is counted in `prefixMismatch`).
 * 2. BOS once: prepended when the tokenizer adds BOS (llama2.c, Llama) and the prompt does not already
 *    start with it (a chat template that renders `<s>` is not doubled).
 * 3. EOS once: appended to each completion unless it already ends with EOS (or EOS + whitespace tokens,
 *    as chat templates end a turn with "<|im_end|>\n").
 * 4. If prompt + the longest completion > max_length: the prompt is cut to max_prompt_length
 *    (`keep_end`: its last tokens, keeping BOS first; `keep_start`: its first tokens); if the prompt alone
 *    still fills max_length the pair is dropped (null); then completions are cut to max_length − prompt.
 */
import { tokenizerAddsBos } from '../tokenizers/index.js';
import type { PreferenceExample, Tokenizer } from '../types.js';

/** Token ids of one pair. chosen/rejected/sft ids end with EOS unless truncated. */
export interface TokenizedPair {
  promptIds: number[];
  chosenIds: number[];
  rejectedIds: number[];
  /** SFT target completion (the example's sftTarget, default chosen). */
  sftIds: number[];
}

export type TruncationMode = 'keep_start' | 'keep_end';

export interface TokenizeOptions {
  /** Max tokens of prompt + completion (per sequence). */
  maxLength: number;
  /** Max prompt tokens once a pair is too long (the reference's max_prompt_length). */
  maxPromptLength: number;
  truncationMode: TruncationMode;
  /** Counters, incremented in place. */
  stats?: TokenizeStats;
}

export interface TokenizeStats {
  pairs: number;
  dropped: number;
  truncated: number;
  prefixMismatch: number;
}

export function newTokenizeStats(): TokenizeStats {
  return { pairs: 0, dropped: 0, truncated: 0, prefixMismatch: 0 };
}

function endsWithEos(ids: number[], eos: number, tok: Tokenizer): boolean {
  const n = ids.length;
  if (n === 0) return false;
  if (ids[n - 1] === eos) return true;
  let k = n - 1;
  while (k >= 0 && ids[k] !== eos && tok.decode([ids[k]!]).trim() === '') k--;
  return k >= 0 && k < n - 1 && ids[k] === eos;
}

/**
 * Tokenise one preference pair (see the module doc for the exact rules).
 * @returns the pair's ids, or null when its prompt alone fills `maxLength` (dropped; counted in stats)
 * @throws RangeError when maxLength < 2 or maxPromptLength < 1
 */
export function tokenizePreference(ex: PreferenceExample, tok: Tokenizer, opts: TokenizeOptions): TokenizedPair | null {
  const { maxLength, maxPromptLength, truncationMode } = opts;
  if (!(maxLength >= 2)) throw new RangeError(`max_length must be ≥ 2, got ${maxLength}`);
  if (!(maxPromptLength >= 1)) throw new RangeError(`max_prompt_length must be ≥ 1, got ${maxPromptLength}`);
  const stats = opts.stats;
  if (stats) stats.pairs++;
  const rawPrompt = tok.encode(ex.prompt);
  const eos = tok.eosTokenId;
  let mismatch = false;
  const completion = (text: string): number[] => {
    const full = tok.encode(ex.prompt + text);
    for (let i = 0; i < rawPrompt.length && !mismatch; i++) if (full[i] !== rawPrompt[i]) mismatch = true;
    const ids = full.slice(rawPrompt.length);
    if (eos != null && !endsWithEos(ids, eos, tok)) ids.push(eos);
    return ids;
  };
  let chosenIds = completion(ex.chosen);
  let rejectedIds = completion(ex.rejected);
  let sftIds = ex.sftTarget === undefined || ex.sftTarget === ex.chosen ? chosenIds.slice() : completion(ex.sftTarget);
  if (mismatch && stats) stats.prefixMismatch++;

  const bos = tok.bosTokenId;
  const addBos = bos != null && tokenizerAddsBos(tok);
  let promptIds = addBos && rawPrompt[0] !== bos ? [bos, ...rawPrompt] : rawPrompt;

  const longest = Math.max(chosenIds.length, rejectedIds.length, sftIds.length);
  let truncated = false;
  if (promptIds.length + longest > maxLength && promptIds.length > maxPromptLength) {
    truncated = true;
    if (truncationMode === 'keep_start') promptIds = promptIds.slice(0, maxPromptLength);
    else if (truncationMode === 'keep_end') {
      const hasBos = addBos && promptIds[0] === bos;
      promptIds = hasBos ? [bos!, ...promptIds.slice(promptIds.length - (maxPromptLength - 1))] : promptIds.slice(promptIds.length - maxPromptLength);
      if (hasBos && maxPromptLength === 1) promptIds = [bos!];
    } else throw new RangeError(`truncation_mode must be keep_start or keep_end, got ${String(truncationMode)}`);
  }
  if (promptIds.length >= maxLength) {
    if (stats) stats.dropped++;
    return null;
  }
  const room = maxLength - promptIds.length;
  if (longest > room) {
    truncated = true;
    chosenIds = chosenIds.slice(0, room);
    rejectedIds = rejectedIds.slice(0, room);
    sftIds = sftIds.slice(0, room);
  }
  if (truncated && stats) stats.truncated++;
  return { promptIds, chosenIds, rejectedIds, sftIds };
}

/**
 * Tokenise many pairs; dropped pairs are left out and counted.
 * @returns the kept pairs, in order, and the counters.
 */
export function tokenizeDataset(
  examples: PreferenceExample[],
  tok: Tokenizer,
  opts: Omit<TokenizeOptions, 'stats'>,
): { pairs: TokenizedPair[]; stats: TokenizeStats } {
  const stats = newTokenizeStats();
  const pairs: TokenizedPair[] = [];
  for (const ex of examples) {
    const p = tokenizePreference(ex, tok, { ...opts, stats });
    if (p) pairs.push(p);
  }
  return { pairs, stats };
}

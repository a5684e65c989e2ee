/**
 * Batch collation for DPO and SFT, as TRL's `DataCollatorForPreference` (tests/test_dpo_trainer.py
 * `TestDataCollatorForPreference`): rows 0..B−1 are prompt+chosen, rows B..2B−1
 * prompt+rejected (chosen half first), right-padded with `padId`; attention_mask 1 on real tokens;
 * completion_mask 1 on completion tokens only.
 */
import type { TokenizedPair } from './tokenize.js';

/** A padded batch, row-major. */
export interface TokenBatch {
  /** `[rows, seqLen]` int32 token ids, padded with padId. */
  inputIds: Int32Array;
  /** `[rows, seqLen]` 1 on completion tokens, else 0. */
  completionMask: Float32Array;
  /** `[rows, seqLen]` 1 on real (prompt or completion) tokens, 0 on padding. */
  attentionMask: Float32Array;
  rows: number;
  seqLen: number;
}

export interface CollateOptions {
  /** Round seqLen up to a multiple of this (TRL `pad_to_multiple_of`). */
  padToMultipleOf?: number;
}

function pack(seqs: { prompt: number[]; completion: number[] }[], padId: number, opts: CollateOptions): TokenBatch {
  if (seqs.length === 0) throw new RangeError('collate: empty batch');
  let seqLen = 0;
  for (const s of seqs) seqLen = Math.max(seqLen, s.prompt.length + s.completion.length);
  const m = opts.padToMultipleOf ?? 1;
  if (m > 1) seqLen = Math.ceil(seqLen / m) * m;
  const rows = seqs.length;
  const inputIds = new Int32Array(rows * seqLen).fill(padId);
  const completionMask = new Float32Array(rows * seqLen);
  const attentionMask = new Float32Array(rows * seqLen);
  seqs.forEach((s, r) => {
    const o = r * seqLen;
    inputIds.set(s.prompt, o);
    inputIds.set(s.completion, o + s.prompt.length);
    attentionMask.fill(1, o, o + s.prompt.length + s.completion.length);
    completionMask.fill(1, o + s.prompt.length, o + s.prompt.length + s.completion.length);
  });
  return { inputIds, completionMask, attentionMask, rows, seqLen };
}

/**
 * DPO batch of 2B rows: `[prompt+chosen × B ; prompt+rejected × B]`.
 * @throws RangeError on an empty batch
 */
export function collatePreference(pairs: TokenizedPair[], padId: number, opts: CollateOptions = {}): TokenBatch {
  return pack(
    [...pairs.map((p) => ({ prompt: p.promptIds, completion: p.chosenIds })), ...pairs.map((p) => ({ prompt: p.promptIds, completion: p.rejectedIds }))],
    padId,
    opts,
  );
}

/**
 * SFT batch of B rows: prompt + SFT target, completion mask on the target (loss on the answer only).
 * @throws RangeError on an empty batch
 */
export function collateSft(pairs: TokenizedPair[], padId: number, opts: CollateOptions = {}): TokenBatch {
  return pack(
    pairs.map((p) => ({ prompt: p.promptIds, completion: p.sftIds })),
    padId,
    opts,
  );
}

/** The pad id to use: the tokenizer's pad, else EOS (TRL's fallback), else 0. */
export function resolvePadId(tok: { padTokenId: number | null; eosTokenId: number | null }): number {
  return tok.padTokenId ?? tok.eosTokenId ?? 0;
}

/**
 * Packed batches without padding, for the policy and reference forwards of DPO and for SFT (docs/packing.md):
 *
 * - `padding_free` (TRL's name): the micro-batch's sequences (DPO: prompt+chosen x B, then prompt+rejected x B,
 *   the padded batch's order) are laid end to end in one row; position ids restart at 0 per sequence and each
 *   token attends causally within its own sequence only (block-diagonal causal).
 * - `shared_prompt` (PaddleNLP's layout): one block per pair, `[prompt | chosen | rejected]`; prompt and chosen
 *   tokens attend causally within the block, rejected tokens to the prompt and the rejected tokens before them
 *   (never to chosen); rejected positions continue from the prompt's end. The prompt is encoded once per pair.
 *
 * Both keep exactly the scored tokens of the padded layout (data/collate.ts): label t of a sequence
 * (t >= 1, t in the completion) is scored by the hidden state of the token before it in the same sequence;
 * for shared_prompt, the first rejected token's predecessor is the prompt's last token (shared with chosen).
 */
import type { TokenizedPair } from './tokenize.js';

/** How a micro-batch is laid out for the forward pass. */
export type BatchLayout = 'padded' | 'padding_free' | 'shared_prompt';

/** A packed batch: rows of tokens with their positions and attention ranges, and where each scored label is. */
export interface PackedBatch {
  rows: number;
  seqLen: number;
  /** `[rows*seqLen]` int32 token ids (no padding). */
  inputIds: Int32Array;
  /** `[rows*seqLen]` each token's position within its sequence. */
  positionIds: Int32Array;
  /**
   * `[3, rows*seqLen]` attention ranges a, b, c (row-local indices): key j visible from token i iff
   * c <= j <= i or a <= j < b (engine/ops.ts AttentionSegments).
   */
  segments: Int32Array;
  /** Number of scored sequences (DPO: 2B, chosen 0..B-1 then rejected B..2B-1; SFT: B). */
  nSeq: number;
  /** `[M]` flat hidden-state row (r*seqLen + t) that scores each label. */
  predRows: Int32Array;
  /** `[M]` the label ids. */
  labels: Int32Array;
  /** `[M]` the sequence each label belongs to. */
  seqOf: Int32Array;
  /** `[nSeq]` scored labels per sequence (the padded layout's token counts). */
  tokenCounts: Float32Array;
  /** Tokens in the rows (all real: this layout has no padding). */
  tokens: number;
}

interface Seq {
  prompt: number[];
  completion: number[];
}

/** Scored labels of one sequence laid at `start` (padded convention: completion labels at t >= 1). */
function scoreSeq(s: Seq, start: number, seq: number, pred: number[], labels: number[], seqOf: number[]): number {
  const P = s.prompt.length;
  const n = P + s.completion.length;
  let k = 0;
  for (let t = Math.max(P, 1); t < n; t++) {
    pred.push(start + t - 1);
    labels.push(s.completion[t - P]!);
    seqOf.push(seq);
    k++;
  }
  return k;
}

function finish(
  inputIds: number[],
  positionIds: number[],
  a: number[],
  b: number[],
  c: number[],
  nSeq: number,
  pred: number[],
  labels: number[],
  seqOf: number[],
  counts: number[],
): PackedBatch {
  const N = inputIds.length;
  if (N === 0) throw new RangeError('packing: empty batch');
  const segments = new Int32Array(3 * N);
  segments.set(a, 0);
  segments.set(b, N);
  segments.set(c, 2 * N);
  return {
    rows: 1,
    seqLen: N,
    inputIds: Int32Array.from(inputIds),
    positionIds: Int32Array.from(positionIds),
    segments,
    nSeq,
    predRows: Int32Array.from(pred),
    labels: Int32Array.from(labels),
    seqOf: Int32Array.from(seqOf),
    tokenCounts: Float32Array.from(counts),
    tokens: N,
  };
}

/**
 * Sequences end to end in one row (padding_free): positions restart per sequence, attention block-diagonal causal.
 * @throws RangeError on an empty batch
 */
export function packSequences(seqs: Seq[]): PackedBatch {
  if (seqs.length === 0) throw new RangeError('packing: empty batch');
  const ids: number[] = [];
  const pos: number[] = [];
  const a: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  const pred: number[] = [];
  const labels: number[] = [];
  const seqOf: number[] = [];
  const counts: number[] = [];
  seqs.forEach((s, i) => {
    const start = ids.length;
    const toks = [...s.prompt, ...s.completion];
    toks.forEach((t, k) => {
      ids.push(t);
      pos.push(k);
      a.push(start);
      b.push(start);
      c.push(start);
    });
    counts.push(scoreSeq(s, start, i, pred, labels, seqOf));
  });
  return finish(ids, pos, a, b, c, seqs.length, pred, labels, seqOf, counts);
}

/**
 * DPO pairs as `[prompt | chosen | rejected]` blocks in one row (shared_prompt). Sequence i < B is pair i's
 * chosen, B + i its rejected (the padded batch's order).
 * @throws RangeError on an empty batch
 */
export function packSharedPrompt(pairs: TokenizedPair[]): PackedBatch {
  if (pairs.length === 0) throw new RangeError('packing: empty batch');
  const B = pairs.length;
  const ids: number[] = [];
  const pos: number[] = [];
  const a: number[] = [];
  const b: number[] = [];
  const c: number[] = [];
  const pred: number[] = [];
  const labels: number[] = [];
  const seqOf: number[] = [];
  const counts = new Array<number>(2 * B).fill(0);
  const push = (tok: number, p: number, ka: number, kb: number, kc: number): void => {
    ids.push(tok);
    pos.push(p);
    a.push(ka);
    b.push(kb);
    c.push(kc);
  };
  pairs.forEach((pair, i) => {
    const o = ids.length;
    const P = pair.promptIds.length;
    const C = pair.chosenIds.length;
    pair.promptIds.forEach((t, k) => push(t, k, o, o, o));
    pair.chosenIds.forEach((t, k) => push(t, P + k, o, o, o));
    const r0 = o + P + C;
    pair.rejectedIds.forEach((t, k) => push(t, P + k, o, o + P, r0));
    // chosen: label P+k scored by the token before it (the prompt's last for k = 0)
    for (let k = 0; k < C; k++) {
      if (P + k < 1) continue;
      pred.push(o + P + k - 1);
      labels.push(pair.chosenIds[k]!);
      seqOf.push(i);
      counts[i]! += 1;
    }
    // rejected: its first label is scored by the prompt's last token, the others by the rejected token before
    for (let k = 0; k < pair.rejectedIds.length; k++) {
      if (P + k < 1) continue;
      pred.push(k === 0 ? o + P - 1 : r0 + k - 1);
      labels.push(pair.rejectedIds[k]!);
      seqOf.push(B + i);
      counts[B + i]! += 1;
    }
  });
  return finish(ids, pos, a, b, c, 2 * B, pred, labels, seqOf, counts);
}

/**
 * The DPO micro-batch in a packed layout.
 * @throws RangeError on an empty batch or the 'padded' layout (use collatePreference)
 */
export function packPreference(pairs: TokenizedPair[], layout: Exclude<BatchLayout, 'padded'>): PackedBatch {
  if (layout === 'shared_prompt') return packSharedPrompt(pairs);
  return packSequences([
    ...pairs.map((p) => ({ prompt: p.promptIds, completion: p.chosenIds })),
    ...pairs.map((p) => ({ prompt: p.promptIds, completion: p.rejectedIds })),
  ]);
}

/** SFT sequences (prompt + SFT target, loss on the target) packed padding-free. */
export function packSft(pairs: TokenizedPair[]): PackedBatch {
  return packSequences(pairs.map((p) => ({ prompt: p.promptIds, completion: p.sftIds })));
}

/** Tokens the padded layout of these pairs holds (2B rows x the longest prompt+completion): the padding baseline. */
export function paddedPreferenceTokens(pairs: TokenizedPair[]): number {
  let L = 0;
  for (const p of pairs) L = Math.max(L, p.promptIds.length + p.chosenIds.length, p.promptIds.length + p.rejectedIds.length);
  return 2 * pairs.length * L;
}

/**
 * The layout a stage trains in from the config: DPO `shared_prompt` wins over `padding_free`; SFT packs
 * (padding_free) only with `padding_free` (shared_prompt is a DPO layout: SFT has one sequence per example).
 */
export function batchLayout(cfg: { padding_free: boolean; shared_prompt: boolean }, stage: 'sft' | 'dpo'): BatchLayout {
  if (stage === 'dpo') return cfg.shared_prompt ? 'shared_prompt' : cfg.padding_free ? 'padding_free' : 'padded';
  return cfg.padding_free ? 'padding_free' : 'padded';
}

/**
 * bench/dpo-flops.ts against a count done token by token (every query of every sequence, every projected
 * position), on pairs of very different lengths and a partial last batch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dpoEpochFlops, type FlopShape, type PairLengths } from '../../bench/dpo-flops.js';

const shape: FlopShape = { hiddenSize: 8, intermediateSize: 20, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 2, vocabSize: 50 };
const pairs: PairLengths[] = [
  { prompt: 5, chosen: 1, rejected: 7 },
  { prompt: 1, chosen: 9, rejected: 2 },
  { prompt: 12, chosen: 3, rejected: 3 },
];

/** forward FLOPs of one token at position t (1-based) of a sequence, seeing `keys` keys, projected or not */
function tokenFlops(s: FlopShape, keys: number, projected: boolean): number {
  const { hiddenSize: d, intermediateSize: ff, numHeads: H, numKvHeads: KV, headDim: hd, numLayers: L, vocabSize: V } = s;
  let f = 0;
  for (let l = 0; l < L; l++) {
    f += 2 * d * (H * hd) * 2; // q, o
    f += 2 * d * (KV * hd) * 2; // k, v
    f += 2 * d * ff * 3; // gate, up, down
    f += 2 * keys * hd * H * 2; // q k^T, p v
  }
  return f + (projected ? 2 * d * V : 0);
}

test('the closed forms equal a token-by-token count for every layout, with a partial last batch', () => {
  const batch = 2;
  let full = 0;
  let padded = 0;
  let free = 0;
  let shared = 0;
  for (let i = 0; i < pairs.length; i += batch) {
    const b = pairs.slice(i, i + batch);
    const longest = Math.max(...b.map((p) => p.prompt + Math.max(p.chosen, p.rejected)));
    for (const p of b) {
      // ours padded: each answer's row padded to the batch's longest; its completion positions projected
      for (const answer of [p.chosen, p.rejected])
        for (let t = 1; t <= longest; t++) {
          full += 4 * tokenFlops(shape, t, true);
          padded += 4 * tokenFlops(shape, t, t > p.prompt && t <= p.prompt + answer);
        }
      for (const answer of [p.chosen, p.rejected]) for (let t = 1; t <= p.prompt + answer; t++) free += 4 * tokenFlops(shape, t, t > p.prompt);
      for (let t = 1; t <= p.prompt + p.chosen; t++) shared += 4 * tokenFlops(shape, t, t > p.prompt);
      for (let t = p.prompt + 1; t <= p.prompt + p.rejected; t++) shared += 4 * tokenFlops(shape, t, true);
    }
  }
  const got = dpoEpochFlops(shape, pairs, batch);
  assert.deepEqual(got, { padded, padding_free: free, shared_prompt: shared, padded_full_vocab: full });
  assert.ok(got.shared_prompt < got.padding_free && got.padding_free < got.padded && got.padded < got.padded_full_vocab);
  assert.throws(() => dpoEpochFlops(shape, pairs, 0), /batch must be a positive integer/);
});

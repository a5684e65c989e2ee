/**
 * A FLOP model of one DPO epoch (policy forward + backward, reference forward) for the layouts of
 * `npm run bench:real` and for a padded trainer that projects every position onto the vocabulary (TRL's
 * DPOTrainer: per batch, 2 x pairs rows padded to the batch's longest prompt + answer, full-vocabulary logits).
 *
 * Units: the forward pass of a product of an [n, k] by a [k, m] matrix is 2 n k m FLOPs; backward = 2 x
 * forward; a DPO step is policy forward (1) + backward (2) + reference forward (1) = 4 forward units. Per
 * token a Llama layer's products are q, o (d x H hd), k, v (d x KV hd) and the SwiGLU MLP (3 d ff); causal
 * attention of a query that sees `c` keys costs 4 c H hd (q k^T and P v). Norms, RoPE, softmax and the
 * optimizer are left out (memory-bound, small next to the products at these shapes). Ours projects only the
 * completion positions onto the vocabulary (prompt positions are not scored); `padding_free` encodes each
 * prompt twice (with chosen and with rejected) and `shared_prompt` once, rejected tokens attending to the
 * prompt and themselves. The ratio ours / padded is then what the epoch times would be at equal FLOP rates:
 * below it, an engine runs its FLOPs faster than the other.
 */
import type { ModelConfig } from '../src/training/types.js';

/** The shape the model has: the ModelConfig fields the count reads. */
export type FlopShape = Pick<ModelConfig, 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' | 'numKvHeads' | 'headDim' | 'vocabSize'>;

/** Token counts of one pair after tokenization and truncation. */
export interface PairLengths {
  prompt: number;
  chosen: number;
  rejected: number;
}

/** FLOPs of one epoch (units: FLOP) per layout of ours, and the padded full-vocabulary trainer's (TRL). */
export interface EpochFlops {
  /** ours, padded: every slot through the decoder, only completion positions projected */
  padded: number;
  padding_free: number;
  shared_prompt: number;
  /** the peer: every slot through the decoder and projected onto the vocabulary */
  padded_full_vocab: number;
}

/**
 * The FLOPs of one DPO epoch over `pairs` in batches of `batch` (see the module comment for the model).
 * `padded_full_vocab` is the peer's padded trainer (every slot projected); `padded` is ours.
 * @throws Error when `batch` is not a positive integer.
 */
export function dpoEpochFlops(shape: FlopShape, pairs: readonly PairLengths[], batch: number): EpochFlops {
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`batch must be a positive integer, not ${batch}`);
  const { hiddenSize: d, intermediateSize: ff, numLayers: L, numHeads: H, numKvHeads: KV, headDim: hd, vocabSize: V } = shape;
  const linear = 2 * L * (2 * d * H * hd + 2 * d * KV * hd + 3 * d * ff); // per token, forward
  const head = 2 * d * V; // per projected position, forward
  // causal attention of queries 1..n over keys 1..t each: sum_t 4 t H hd L = 2 n (n + 1) H hd L
  const causal = (n: number) => 2 * n * (n + 1) * H * hd * L;
  // queries a+1..a+n, each over a + its own position keys
  const continued = (a: number, n: number) => causal(a + n) - causal(a);
  const out: EpochFlops = { padded: 0, padding_free: 0, shared_prompt: 0, padded_full_vocab: 0 };
  for (let i = 0; i < pairs.length; i += batch) {
    const b = pairs.slice(i, i + batch);
    const longest = Math.max(...b.map((p) => p.prompt + Math.max(p.chosen, p.rejected)));
    out.padded_full_vocab += 4 * 2 * b.length * (longest * (linear + head) + causal(longest));
    out.padded += 4 * 2 * b.length * (longest * linear + causal(longest));
    for (const p of b) {
      const answers = p.chosen + p.rejected;
      out.padded += 4 * answers * head;
      out.padding_free += 4 * ((2 * p.prompt + answers) * linear + answers * head + causal(p.prompt + p.chosen) + causal(p.prompt + p.rejected));
      // rejected continues from the prompt's end: its queries see the prompt and the rejected tokens before them
      out.shared_prompt += 4 * ((p.prompt + answers) * linear + answers * head + causal(p.prompt + p.chosen) + continued(p.prompt, p.rejected));
    }
  }
  return out;
}

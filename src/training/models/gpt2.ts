/**
 * GPT-2 in one file (the way nanoGPT's model.py reads):
 *
 *   x = wte[ids] + wpe[positions]
 *   for each block:
 *     x = x + c_proj(attn(c_attn(LayerNorm_1(x))))      # c_attn: [D, 3D] -> q | k | v, causal MHA
 *     x = x + mlp.c_proj(gelu_tanh(mlp.c_fc(LayerNorm_2(x))))
 *   logits = LayerNorm_f(x) wte^T                       # lm_head tied to wte
 *
 * Conv1D weights are stored `[in, out]` by transformers (GPT2 `Conv1D`), which is our internal layout, so
 * they are not transposed at load or save. Tensor names follow `GPT2LMHeadModel.state_dict()`
 * (`transformer.` prefix); checkpoints without the prefix (the hub's gpt2 files) are accepted.
 * Sources: transformers `modeling_gpt2.py`, karpathy/nanoGPT `model.py`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig, PackedPositions } from '../types.js';
import { causalAttention, embedding, geluTanh, layerNorm, selfAttention } from '../engine/ops.js';
import { BaseLM, type KVCache, type ShapeSpec } from './base.js';

/** GPT-2 has no tensors stored `[out, in]`: Conv1D is `[in, out]`. */
export function isGpt2Linear(_name: string): boolean {
  return false;
}

/**
 * Map a checkpoint tensor name to our canonical name (`transformer.` prefix), or null for tensors we do not
 * load: the causal-mask buffers `attn.bias`/`attn.masked_bias` and the tied `lm_head.weight`.
 */
export function canonicalGpt2Name(name: string): string | null {
  if (name === 'lm_head.weight' || /\.attn\.(masked_)?bias$/.test(name)) return null;
  if (name.startsWith('transformer.')) return name;
  if (/^(wte|wpe|ln_f|h\.)/.test(name)) return 'transformer.' + name;
  return name;
}

/** Every GPT-2 tensor with its shape (Conv1D `[in, out]`, as stored by transformers). */
export function gpt2Shapes(c: ModelConfig): ShapeSpec {
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const spec: ShapeSpec = [
    ['transformer.wte.weight', [c.vocabSize, D]],
    ['transformer.wpe.weight', [c.maxPositionEmbeddings, D]],
  ];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `transformer.h.${l}.`;
    spec.push([p + 'ln_1.weight', [D]], [p + 'ln_1.bias', [D]]);
    spec.push([p + 'attn.c_attn.weight', [D, 3 * D]], [p + 'attn.c_attn.bias', [3 * D]]);
    spec.push([p + 'attn.c_proj.weight', [D, D]], [p + 'attn.c_proj.bias', [D]]);
    spec.push([p + 'ln_2.weight', [D]], [p + 'ln_2.bias', [D]]);
    spec.push([p + 'mlp.c_fc.weight', [D, F]], [p + 'mlp.c_fc.bias', [F]]);
    spec.push([p + 'mlp.c_proj.weight', [F, D]], [p + 'mlp.c_proj.bias', [D]]);
  }
  spec.push(['transformer.ln_f.weight', [D]], ['transformer.ln_f.bias', [D]]);
  return spec;
}

/** A GPT-2 causal LM (see the file comment). */
export class Gpt2Model extends BaseLM {
  protected forward(inputIds: tf.Tensor2D, cache: KVCache | null, packing?: PackedPositions): tf.Tensor2D {
    const c = this.config;
    const [B, T] = inputIds.shape;
    const D = c.hiddenSize;
    const H = c.numHeads;
    const hd = c.headDim;
    const eps = c.normEps;
    const offset = cache?.length ?? 0;
    const longest = packing ? packing.positionIds.reduce((m, p) => Math.max(m, p + 1), 0) : offset + T;
    if (longest > c.maxPositionEmbeddings) {
      throw new RangeError(`gpt2: sequence of ${longest} tokens exceeds n_positions ${c.maxPositionEmbeddings}`);
    }
    const out = tf.tidy(() => {
      const ids = tf.reshape(inputIds.dtype === 'int32' ? inputIds : tf.cast(inputIds, 'int32'), [B * T]) as tf.Tensor1D;
      if (packing && (cache || packing.positionIds.length !== B * T)) throw new RangeError(`gpt2: packed positions need B*T = ${B * T} ids and no KV cache`);
      const pos = new Int32Array(B * T);
      if (packing) pos.set(packing.positionIds);
      else for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) pos[b * T + t] = offset + t;
      const segments = packing ? { mask: packing.segments } : undefined;
      let x = tf.add(
        embedding(ids, this.p<tf.Tensor2D>('transformer.wte.weight')),
        embedding(tf.tensor1d(pos, 'int32'), this.p<tf.Tensor2D>('transformer.wpe.weight')),
      ) as tf.Tensor2D;
      const heads = (m: tf.Tensor2D): tf.Tensor4D => tf.transpose(tf.reshape(m, [B, T, H, hd]), [0, 2, 1, 3]) as tf.Tensor4D; // [B, H, T, hd]
      for (let l = 0; l < c.numLayers; l++) {
        const pre = `transformer.h.${l}.`;
        const layer = (xl: tf.Tensor2D): tf.Tensor2D => {
          const h = layerNorm(xl, this.p(pre + 'ln_1.weight'), this.p(pre + 'ln_1.bias'), eps);
          const qkv = this.proj(h, pre + 'attn.c_attn'); // [N, 3D]
          const [q, k, v] = tf.split(qkv, [D, D, D], 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
          let o: tf.Tensor2D;
          if (!cache) {
            // whole sequences (training, scoring): one fused op (a native kernel when available)
            o = segments ? selfAttention(q, k, v, { B, T, H, KV: H, hd }, undefined, undefined, segments) : selfAttention(q, k, v, { B, T, H, KV: H, hd });
          } else {
            const kv = cache.append(l, heads(k), heads(v));
            const att = causalAttention(heads(q), kv.k, kv.v, { queryOffset: offset });
            o = tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [B * T, D]) as tf.Tensor2D;
          }
          const x1 = tf.add(xl, this.proj(o, pre + 'attn.c_proj')) as tf.Tensor2D;
          const h2 = layerNorm(x1, this.p(pre + 'ln_2.weight'), this.p(pre + 'ln_2.bias'), eps);
          const m = geluTanh(this.proj(h2, pre + 'mlp.c_fc')) as tf.Tensor2D;
          return tf.add(x1, this.proj(m, pre + 'mlp.c_proj')) as tf.Tensor2D;
        };
        x = this.gradientCheckpointing && !cache ? this.checkpointed(l, x, layer) : layer(x);
      }
      return layerNorm(x, this.p('transformer.ln_f.weight'), this.p('transformer.ln_f.bias'), eps);
    });
    if (cache) cache.length += T;
    return out;
  }

  protected override layerPrefix(l: number): string {
    return `transformer.h.${l}.`;
  }

  /** lm_head is tied to wte `[V, D]`. */
  outputProjection(): { weight: tf.Tensor2D; layout: 'DV' | 'VD' } {
    return { weight: this.p<tf.Tensor2D>('transformer.wte.weight'), layout: 'VD' };
  }
}

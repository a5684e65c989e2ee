/**
 * The Llama family in one file: Llama 1/2/3.x, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k RMSNorm),
 * SmolLM, TinyLlama and the llama2.c stories models.
 *
 *   x = embed_tokens[ids]
 *   for each layer:
 *     h = RMSNorm(x)
 *     q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)        # [N, H*hd], [N, KV*hd], [N, KV*hd]
 *     (qwen3) q, k = RMSNorm_hd(q), RMSNorm_hd(k)         # per head, before RoPE
 *     q, k = RoPE(q), RoPE(k)                             # rotate_half convention, theta, llama3 scaling
 *     x = x + softmax(q k^T / sqrt(hd) + causal) v Wo     # grouped-query: head h reads kv head h / (H/KV)
 *     h = RMSNorm(x)
 *     x = x + (silu(h Wgate) * (h Wup)) Wdown             # SwiGLU
 *   logits = RMSNorm(x) Wout                              # Wout = embed_tokens^T when tied
 *
 * Sources: transformers `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`,
 * `modeling_rope_utils.py` (`_compute_llama3_parameters`); karpathy/llama2.c `model.py`.
 * All heavy work goes through src/training/engine/ops.ts. Linear weights are held `[in, out]`.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig, PackedPositions } from '../types.js';
import { applyRope, causalAttention, embedding, rmsNorm, selfAttention, swiglu } from '../engine/ops.js';
import { BaseLM, type KVCache, type ShapeSpec } from './base.js';

/** HF names of the Llama-family tensors stored `[out, in]` on disk (held `[in, out]` here). */
export function isLlamaLinear(name: string): boolean {
  return name.endsWith('_proj.weight') || name === 'lm_head.weight';
}

/** Every tensor of a Llama-family checkpoint with its HF-layout shape. */
export function llamaShapes(c: ModelConfig): ShapeSpec {
  const D = c.hiddenSize;
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const F = c.intermediateSize;
  const spec: ShapeSpec = [['model.embed_tokens.weight', [c.vocabSize, D]]];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    spec.push([p + 'input_layernorm.weight', [D]]);
    spec.push([p + 'self_attn.q_proj.weight', [qDim, D]]);
    spec.push([p + 'self_attn.k_proj.weight', [kvDim, D]]);
    spec.push([p + 'self_attn.v_proj.weight', [kvDim, D]]);
    if (c.attentionBias) {
      spec.push([p + 'self_attn.q_proj.bias', [qDim]]);
      spec.push([p + 'self_attn.k_proj.bias', [kvDim]]);
      spec.push([p + 'self_attn.v_proj.bias', [kvDim]]);
    }
    spec.push([p + 'self_attn.o_proj.weight', [D, qDim]]);
    // Llama/Qwen3 `attention_bias` also gives o_proj a bias; Qwen2's o_proj never has one.
    if (c.attentionBias && c.modelType !== 'qwen2') spec.push([p + 'self_attn.o_proj.bias', [D]]);
    if (c.qkNorm) {
      spec.push([p + 'self_attn.q_norm.weight', [c.headDim]]);
      spec.push([p + 'self_attn.k_norm.weight', [c.headDim]]);
    }
    spec.push([p + 'post_attention_layernorm.weight', [D]]);
    spec.push([p + 'mlp.gate_proj.weight', [F, D]]);
    spec.push([p + 'mlp.up_proj.weight', [F, D]]);
    spec.push([p + 'mlp.down_proj.weight', [D, F]]);
  }
  spec.push(['model.norm.weight', [D]]);
  if (!c.tieWordEmbeddings) spec.push(['lm_head.weight', [c.vocabSize, D]]);
  return spec;
}

/**
 * RoPE inverse frequencies `theta^(-2i/hd)`, i < hd/2, with `rope_scaling` applied (`linear`: divided by
 * factor; `llama3`: transformers' `_compute_llama3_parameters`, low frequencies divided by factor, high kept,
 * a smooth blend between).
 */
export function ropeInvFreq(c: ModelConfig): Float64Array {
  const hd = c.headDim;
  const inv = new Float64Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) inv[i] = Math.fround(1 / c.ropeTheta ** ((2 * i) / hd));
  const s = c.ropeScaling;
  const type = s ? String(s.rope_type ?? s.type ?? 'default') : 'default';
  if (type === 'linear') {
    const factor = Number(s!.factor);
    for (let i = 0; i < inv.length; i++) inv[i] = inv[i]! / factor;
  } else if (type === 'llama3') {
    const factor = Number(s!.factor);
    const low = Number(s!.low_freq_factor ?? 1);
    const high = Number(s!.high_freq_factor ?? 4);
    const oldLen = Number(s!.original_max_position_embeddings ?? 8192);
    const lowWavelen = oldLen / low;
    const highWavelen = oldLen / high;
    for (let i = 0; i < inv.length; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowWavelen) inv[i] = f / factor;
      else if (wavelen < highWavelen) inv[i] = f;
      else {
        const smooth = (oldLen / wavelen - low) / (high - low);
        inv[i] = ((1 - smooth) * f) / factor + smooth * f;
      }
    }
  }
  return inv;
}

/** A Llama-family causal LM (see the file comment for the computation). */
export class LlamaModel extends BaseLM {
  private readonly invFreq: Float64Array;
  private cosTable = new Float32Array(0);
  private sinTable = new Float32Array(0);
  private tablePositions = 0;

  constructor(config: ModelConfig, params: Map<string, tf.Variable>) {
    super(config, params);
    this.invFreq = ropeInvFreq(config);
  }

  /** cos/sin `[T, hd]` (halves duplicated, HF `emb = cat(freqs, freqs)`) for positions offset..offset+T-1. */
  private rope(offset: number, T: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    const hd = this.config.headDim;
    const need = offset + T;
    this.growRope(need);
    return {
      cos: tf.tensor2d(this.cosTable.subarray(offset * hd, need * hd), [T, hd]),
      sin: tf.tensor2d(this.sinTable.subarray(offset * hd, need * hd), [T, hd]),
    };
  }

  /** Per-token cos/sin `[N, hd]` for the position ids of packed rows (the same table rows as {@link rope}). */
  private ropeAt(positions: Int32Array): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    const hd = this.config.headDim;
    let max = 0;
    for (let i = 0; i < positions.length; i++) max = Math.max(max, positions[i]!);
    this.growRope(max + 1);
    const cos = new Float32Array(positions.length * hd);
    const sin = new Float32Array(positions.length * hd);
    for (let i = 0; i < positions.length; i++) {
      const p = positions[i]! * hd;
      cos.set(this.cosTable.subarray(p, p + hd), i * hd);
      sin.set(this.sinTable.subarray(p, p + hd), i * hd);
    }
    return { cos: tf.tensor2d(cos, [positions.length, hd]), sin: tf.tensor2d(sin, [positions.length, hd]) };
  }

  /** Extend the cos/sin tables to at least `need` positions. */
  private growRope(need: number): void {
    const hd = this.config.headDim;
    if (need > this.tablePositions) {
      const n = Math.max(need, 2 * this.tablePositions, 64);
      const cos = new Float32Array(n * hd);
      const sin = new Float32Array(n * hd);
      const half = hd / 2;
      for (let t = 0; t < n; t++) {
        for (let i = 0; i < half; i++) {
          const a = Math.fround(t * this.invFreq[i]!);
          const c = Math.cos(a);
          const s = Math.sin(a);
          cos[t * hd + i] = c;
          cos[t * hd + half + i] = c;
          sin[t * hd + i] = s;
          sin[t * hd + half + i] = s;
        }
      }
      this.cosTable = cos;
      this.sinTable = sin;
      this.tablePositions = n;
    }
  }

  protected forward(inputIds: tf.Tensor2D, cache: KVCache | null, packing?: PackedPositions): tf.Tensor2D {
    const c = this.config;
    const [B, T] = inputIds.shape;
    const offset = cache?.length ?? 0;
    const out = tf.tidy(() => {
      const ids = tf.reshape(inputIds.dtype === 'int32' ? inputIds : tf.cast(inputIds, 'int32'), [B * T]) as tf.Tensor1D;
      let x = embedding(ids, this.p<tf.Tensor2D>('model.embed_tokens.weight'));
      if (packing && (cache || packing.positionIds.length !== B * T)) throw new RangeError(`llama: packed positions need B*T = ${B * T} ids and no KV cache`);
      const makeRope = (): { cos: tf.Tensor2D; sin: tf.Tensor2D } => (packing ? this.ropeAt(packing.positionIds) : this.rope(0, T));
      const rope = packing ? makeRope() : this.rope(offset, T);
      const segments = packing ? { mask: packing.segments } : undefined;
      for (let l = 0; l < c.numLayers; l++) {
        // a checkpointed layer is run again in the backward pass, after this scope has freed `rope`: it makes its own
        x =
          this.gradientCheckpointing && !cache
            ? this.checkpointed(l, x, (xi) => this.layer(l, xi, B, T, makeRope(), null, 0, segments))
            : this.layer(l, x, B, T, rope, cache, offset, segments);
      }
      return rmsNorm(x, this.p<tf.Tensor1D>('model.norm.weight'), c.normEps);
    });
    if (cache) cache.length += T;
    return out;
  }

  /**
   * Decoder layer `l`: x `[B*T, D]` -> x `[B*T, D]` (attention then SwiGLU MLP, each with a residual).
   * With a KV cache the keys/values are appended and queries start at position `offset`.
   */
  private layer(
    l: number,
    x: tf.Tensor2D,
    B: number,
    T: number,
    rope: { cos: tf.Tensor2D; sin: tf.Tensor2D },
    cache: KVCache | null,
    offset: number,
    segments?: { mask: Int32Array },
  ): tf.Tensor2D {
    const c = this.config;
    const H = c.numHeads;
    const KV = c.numKvHeads;
    const hd = c.headDim;
    const eps = c.normEps;
    const { cos, sin } = rope;
    const pre = `model.layers.${l}.`;
    // --- attention ---
    const h = rmsNorm(x, this.p<tf.Tensor1D>(pre + 'input_layernorm.weight'), eps);
    let q = this.proj(h, pre + 'self_attn.q_proj'); // [B*T, H*hd]
    let k = this.proj(h, pre + 'self_attn.k_proj'); // [B*T, KV*hd]
    const v = this.proj(h, pre + 'self_attn.v_proj');
    if (c.qkNorm) {
      q = tf.reshape(rmsNorm(tf.reshape(q, [B * T * H, hd]) as tf.Tensor2D, this.p(pre + 'self_attn.q_norm.weight'), eps), [B * T, H * hd]) as tf.Tensor2D;
      k = tf.reshape(rmsNorm(tf.reshape(k, [B * T * KV, hd]) as tf.Tensor2D, this.p(pre + 'self_attn.k_norm.weight'), eps), [B * T, KV * hd]) as tf.Tensor2D;
    }
    let o: tf.Tensor2D;
    if (!cache) {
      // whole sequences (training, scoring): one fused op (a native kernel when available)
      o = segments ? selfAttention(q, k, v, { B, T, H, KV, hd }, { cos, sin }, undefined, segments) : selfAttention(q, k, v, { B, T, H, KV, hd }, { cos, sin });
    } else {
      const q4 = applyRope(tf.reshape(q, [B, T, H, hd]) as tf.Tensor4D, cos, sin);
      const k4 = applyRope(tf.reshape(k, [B, T, KV, hd]) as tf.Tensor4D, cos, sin);
      const heads = (x: tf.Tensor4D): tf.Tensor4D => tf.transpose(x, [0, 2, 1, 3]) as tf.Tensor4D; // [B, heads, T, hd]
      const kv = cache.append(l, heads(k4), heads(tf.reshape(v, [B, T, KV, hd]) as tf.Tensor4D));
      const att = causalAttention(heads(q4), kv.k, kv.v, { queryOffset: offset }); // [B, H, T, hd]
      o = tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [B * T, H * hd]) as tf.Tensor2D;
    }
    const x1 = tf.add(x, this.proj(o, pre + 'self_attn.o_proj')) as tf.Tensor2D;
    // --- SwiGLU MLP ---
    const h2 = rmsNorm(x1, this.p<tf.Tensor1D>(pre + 'post_attention_layernorm.weight'), eps);
    const m = swiglu(this.proj(h2, pre + 'mlp.gate_proj'), this.proj(h2, pre + 'mlp.up_proj'));
    return tf.add(x1, this.proj(m, pre + 'mlp.down_proj')) as tf.Tensor2D;
  }

  /** Tied: the embedding `[V, D]` ('VD'); untied: lm_head `[D, V]` ('DV'). */
  outputProjection(): { weight: tf.Tensor2D; layout: 'DV' | 'VD' } {
    return this.config.tieWordEmbeddings
      ? { weight: this.p<tf.Tensor2D>('model.embed_tokens.weight'), layout: 'VD' }
      : { weight: this.p<tf.Tensor2D>('lm_head.weight'), layout: 'DV' };
  }
}

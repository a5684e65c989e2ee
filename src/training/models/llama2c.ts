/**
 * Reader for karpathy/llama2.c checkpoints (`.bin`, the legacy "version 0" export of `export.py`
 * `legacy_export`, also written by the original `export_meta_llama_bin.py`).
 *
 * Layout (all little-endian): a header of 7 int32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len` (a negative vocab_size means an untied classifier follows), then float32 tensors in
 * PyTorch `[out, in]` layout: token_embedding `[V, D]`, rms_att `[L, D]`, wq `[L, D, D]`, wk `[L, KVD, D]`,
 * wv `[L, KVD, D]`, wo `[L, D, D]`, rms_ffn `[L, D]`, w1 `[L, F, D]`, w2 `[L, D, F]`, w3 `[L, F, D]`,
 * rms_final `[D]`, freq_cis_real `[seq_len, hd/2]`, freq_cis_imag `[seq_len, hd/2]`, and wcls `[V, D]` when
 * untied. (Source: llama2.c `export.py` legacy_export and `run.c` memory_map_weights.)
 *
 * llama2.c applies RoPE to interleaved pairs (x0,x1),(x2,x3)...; transformers rotates halves
 * (`rotate_half`). We permute the rows of wq and wk the way transformers'
 * `convert_llama_weights_to_hf.py` does (`permute`), so the HF convention serves both.
 */
import { readFile } from 'node:fs/promises';
import type { ModelConfig } from '../types.js';
import { WeightsError } from './errors.js';

/** A tensor in Hugging Face layout (linear weights `[out, in]`), float32. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** Tensors by transformers name, HF layout. */
export type TensorMap = Map<string, HostTensor>;

/**
 * transformers' `permute(w, n_heads, dim1, dim2)` for q/k projections:
 * `w.view(n_heads, dim1 / n_heads / 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)`.
 * Row (h, i, p) of the interleaved layout moves to row (h, p, i) of the rotate-half layout.
 * @param w `[dim1, dim2]` row-major (PyTorch `[out, in]`)
 * @returns a new `[dim1, dim2]` array
 */
export function permuteQK(w: Float32Array, nHeads: number, dim1: number, dim2: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = dim1 / nHeads / 2;
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < half; i++) {
      for (let p = 0; p < 2; p++) {
        const src = h * half * 2 + i * 2 + p;
        const dst = h * half * 2 + p * half + i;
        out.set(w.subarray(src * dim2, (src + 1) * dim2), dst * dim2);
      }
    }
  }
  return out;
}

/**
 * Read a llama2.c `.bin` checkpoint.
 * @param path file path
 * @returns the config (`modelType: 'llama'`, norm eps 1e-5, rope theta 10000 as in llama2.c `model.py`)
 *   and the tensors under transformers' names in HF layout (q/k permuted to the rotate-half convention)
 * @throws WeightsError (code `INVALID_WEIGHTS`) when the header is implausible or the file size does not
 *   match the header
 */
export async function readLlama2c(path: string): Promise<{ config: ModelConfig; tensors: TensorMap }> {
  const buf = await readFile(path);
  if (buf.byteLength < 28) throw new WeightsError(`${path}: too short for a llama2.c header (28 bytes)`);
  const header = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + 28));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, rawVocab, seqLen] = Array.from(header) as [number, number, number, number, number, number, number];
  const vocab = Math.abs(rawVocab);
  const shared = rawVocab > 0;
  const plausible = [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen].every((v) => v > 0 && v < 1 << 24);
  if (!plausible || dim % nHeads !== 0 || nHeads % nKvHeads !== 0) {
    throw new WeightsError(
      `${path}: not a llama2.c legacy checkpoint (header dim=${dim} hidden_dim=${hiddenDim} n_layers=${nLayers} ` +
        `n_heads=${nHeads} n_kv_heads=${nKvHeads} vocab_size=${rawVocab} seq_len=${seqLen}); version-1/2 exports are not supported`,
    );
  }
  const hd = dim / nHeads;
  const kvDim = hd * nKvHeads;
  const L = nLayers;
  const sizes: Array<[string, number]> = [
    ['token_embedding', vocab * dim],
    ['rms_att', L * dim],
    ['wq', L * dim * dim],
    ['wk', L * kvDim * dim],
    ['wv', L * kvDim * dim],
    ['wo', L * dim * dim],
    ['rms_ffn', L * dim],
    ['w1', L * hiddenDim * dim],
    ['w2', L * dim * hiddenDim],
    ['w3', L * hiddenDim * dim],
    ['rms_final', dim],
    ['freq_cis_real', seqLen * (hd / 2)],
    ['freq_cis_imag', seqLen * (hd / 2)],
  ];
  if (!shared) sizes.push(['wcls', vocab * dim]);
  const total = sizes.reduce((a, [, n]) => a + n, 0);
  if (buf.byteLength !== 28 + 4 * total) {
    throw new WeightsError(
      `${path}: size ${buf.byteLength} bytes does not match its header (expected ${28 + 4 * total}); the file is truncated or not a legacy llama2.c export`,
    );
  }
  // Copy the float payload into an aligned buffer (the header is 28 bytes, so the floats are 4-aligned).
  const floats = new Float32Array(buf.buffer.slice(buf.byteOffset + 28, buf.byteOffset + buf.byteLength));
  const parts = new Map<string, Float32Array>();
  let off = 0;
  for (const [name, n] of sizes) {
    parts.set(name, floats.subarray(off, off + n));
    off += n;
  }
  const part = (name: string): Float32Array => parts.get(name)!;
  const layer = (name: string, l: number, n: number): Float32Array => part(name).slice(l * n, (l + 1) * n);

  const tensors: TensorMap = new Map();
  tensors.set('model.embed_tokens.weight', { shape: [vocab, dim], data: part('token_embedding').slice() });
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    tensors.set(p + 'input_layernorm.weight', { shape: [dim], data: layer('rms_att', l, dim) });
    tensors.set(p + 'self_attn.q_proj.weight', {
      shape: [dim, dim],
      data: permuteQK(layer('wq', l, dim * dim), nHeads, dim, dim),
    });
    tensors.set(p + 'self_attn.k_proj.weight', {
      shape: [kvDim, dim],
      data: permuteQK(layer('wk', l, kvDim * dim), nKvHeads, kvDim, dim),
    });
    tensors.set(p + 'self_attn.v_proj.weight', { shape: [kvDim, dim], data: layer('wv', l, kvDim * dim) });
    tensors.set(p + 'self_attn.o_proj.weight', { shape: [dim, dim], data: layer('wo', l, dim * dim) });
    tensors.set(p + 'post_attention_layernorm.weight', { shape: [dim], data: layer('rms_ffn', l, dim) });
    tensors.set(p + 'mlp.gate_proj.weight', { shape: [hiddenDim, dim], data: layer('w1', l, hiddenDim * dim) });
    tensors.set(p + 'mlp.down_proj.weight', { shape: [dim, hiddenDim], data: layer('w2', l, dim * hiddenDim) });
    tensors.set(p + 'mlp.up_proj.weight', { shape: [hiddenDim, dim], data: layer('w3', l, hiddenDim * dim) });
  }
  tensors.set('model.norm.weight', { shape: [dim], data: part('rms_final').slice() });
  if (!shared) tensors.set('lm_head.weight', { shape: [vocab, dim], data: part('wcls').slice() });

  const config: ModelConfig = {
    architecture: 'llama',
    modelType: 'llama',
    vocabSize: vocab,
    hiddenSize: dim,
    intermediateSize: hiddenDim,
    numLayers: L,
    numHeads: nHeads,
    numKvHeads: nKvHeads,
    headDim: hd,
    maxPositionEmbeddings: seqLen,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tieWordEmbeddings: shared,
    attentionBias: false,
    qkNorm: false,
    // llama2.c's sentencepiece vocabularies: 0 <unk>, 1 <s>, 2 </s>.
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: null,
  };
  return { config, tensors };
}

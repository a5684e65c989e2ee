/**
 * Frozen weights in low precision (engine/lowp.ts): the decoder's linear projection weights of a model whose
 * weights do not train (the full-fine-tuning reference) or of a LoRA base (adapters train, the base does
 * not), re-stored in bfloat16 or weight-only int8 and consumed by the native GEMM directly. Embeddings, the
 * LM head, norms and biases stay float32: the vocabulary matrix is gathered and sliced by the log-prob
 * kernels, and norms and biases are small. On backends other than `native` nothing changes.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { LowPrecision } from '../engine/lowp.js';
import { storeInLowPrecision } from '../engine/native-backend.js';
import type { CausalLM } from '../types.js';
import { BaseLM } from './base.js';

/** Names of decoder linear weights (`*_proj.weight`, GPT-2's `c_attn`/`c_proj`/`c_fc`), LoRA adapters excluded. */
export function isDecoderLinear(name: string, v: tf.Variable): boolean {
  return v.shape.length === 2 && /\.(q|k|v|o|gate|up|down)_proj\.weight$|\.(c_attn|c_proj|c_fc)\.weight$/.test(name);
}

/**
 * Re-store every frozen (non-trainable) decoder linear weight of `model` in `kind`.
 * @returns how many weights were converted and the bytes they hold now and held before
 */
export function storeFrozenInLowPrecision(model: CausalLM, kind: LowPrecision): { converted: number; bytesBefore: number; bytesAfter: number } {
  if (!(model instanceof BaseLM)) throw new TypeError('storeFrozenInLowPrecision: model was not created by src/training/models');
  let converted = 0;
  let before = 0;
  let after = 0;
  for (const [name, v] of model.params) {
    if (v.trainable || !isDecoderLinear(name, v)) continue;
    if (!storeInLowPrecision(v, kind)) continue;
    converted += 1;
    before += v.size * 4;
    after += kind === 'bfloat16' ? v.size * 2 : v.size + v.shape[1]! * 4;
  }
  return { converted, bytesBefore: before, bytesAfter: after };
}

/**
 * Fused optimizer updates for the engine. One AdamW step per parameter: with the native addon (kernels.ts)
 * it is a single fused kernel (one pass over p, g, m, v); elsewhere the same formula in tfjs ops. Out of place: the variables are re-assigned, so tensors sharing a buffer with them (e.g. a
 * reference model cloned from the policy) are never modified.
 *
 * Formula: torch.optim.AdamW (Loshchilov & Hutter 2019, Algorithm 2, decoupled weight decay):
 *   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
 *   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 */
import * as tf from '@tensorflow/tfjs-core';
import { ADAMW, fusedKernelsActive } from './kernels.js';

export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count t (bias corrections use it). */
  step: number;
}

/** true when {@link adamwUpdate} runs the fused native kernel on the current backend. */
export function fusedAdamWAvailable(): boolean {
  return fusedKernelsActive();
}

/**
 * One AdamW update of `p` with gradient `g`, moment estimates `m` and `v` (same shape, float32), in place
 * on the variables (by assignment).
 * @throws RangeError when the shapes differ
 */
export function adamwUpdate(p: tf.Variable, g: tf.Tensor, m: tf.Variable, v: tf.Variable, h: AdamWHyper): void {
  if (g.size !== p.size || m.size !== p.size || v.size !== p.size) {
    throw new RangeError(`adamwUpdate: p [${p.shape}], g [${g.shape}], m [${m.shape}], v [${v.shape}] must have one size`);
  }
  if (fusedAdamWAvailable()) {
    const [pN, mN, vN] = ADAMW.run({ p, g, m, v }, h);
    p.assign(pN!);
    m.assign(mN!);
    v.assign(vN!);
    tf.dispose([pN!, mN!, vN!]);
    return;
  }
  tf.tidy(() => {
    const bc1 = 1 - h.beta1 ** h.step;
    const bc2 = 1 - h.beta2 ** h.step;
    const mN = tf.add(tf.mul(m, h.beta1), tf.mul(g, 1 - h.beta1));
    const vN = tf.add(tf.mul(v, h.beta2), tf.mul(tf.square(g), 1 - h.beta2));
    const denom = tf.add(tf.div(tf.sqrt(vN), Math.sqrt(bc2)), h.eps);
    const base = h.weightDecay > 0 ? tf.mul(p, 1 - h.lr * h.weightDecay) : p;
    m.assign(mN);
    v.assign(vN);
    p.assign(tf.sub(base, tf.mul(tf.div(mN, denom), h.lr / bc1)));
  });
}

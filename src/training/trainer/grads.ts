/**
 * Gradient accumulation and global-norm clipping.
 * Clipping follows `torch.nn.utils.clip_grad_norm_`: total norm = ‖concat(g)‖₂; if max_norm is set the
 * gradients are scaled by min(1, max_norm / (total + 1e-6)); the returned (logged) norm is the pre-clip one.
 */
import * as tf from '@tensorflow/tfjs-core';

/** Add `grads` into `acc` (taking ownership of `grads`, disposing what it replaces). */
export function accumulateGrads(acc: Map<string, tf.Tensor>, grads: tf.NamedTensorMap | Map<string, tf.Tensor>): void {
  const entries = grads instanceof Map ? [...grads] : Object.entries(grads);
  for (const [k, g] of entries) {
    const prev = acc.get(k);
    if (!prev) acc.set(k, g);
    else {
      acc.set(k, tf.add(prev, g));
      prev.dispose();
      g.dispose();
    }
  }
}

/** Global L2 norm of all gradients (a host number). */
export function globalNorm(grads: Map<string, tf.Tensor>): number {
  if (grads.size === 0) return 0;
  const s = tf.tidy(() => tf.addN([...grads.values()].map((g) => tf.sum(tf.square(g)))));
  const v = s.dataSync()[0]!;
  s.dispose();
  return Math.sqrt(v);
}

/**
 * Clip in place to `maxNorm` (null: no clipping).
 * @returns the pre-clip global norm
 */
export function clipByGlobalNorm(grads: Map<string, tf.Tensor>, maxNorm: number | null): number {
  const norm = globalNorm(grads);
  if (maxNorm !== null && maxNorm > 0 && Number.isFinite(norm)) {
    const coef = maxNorm / (norm + 1e-6);
    if (coef < 1) {
      for (const [k, g] of grads) {
        grads.set(k, tf.mul(g, coef));
        g.dispose();
      }
    }
  }
  return norm;
}

export function disposeGrads(grads: Map<string, tf.Tensor>): void {
  for (const g of grads.values()) g.dispose();
  grads.clear();
}

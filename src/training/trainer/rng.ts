/**
 * The trainer's seeded randomness: the {@link Rng} (src/util/rng.ts, re-exported here for the checkpoint
 * code) and the per-epoch data permutation.
 */
import { Rng } from '../../util/rng.js';

export { Rng, type RngState } from '../../util/rng.js';

/**
 * The order of the training examples in epoch `epoch`: a permutation of 0..n-1 that depends only on
 * (seed, epoch), so the data position of a checkpoint is fully described by its step.
 */
export function epochPermutation(n: number, seed: number, epoch: number): number[] {
  const rng = new Rng((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca77)) >>> 0);
  return rng.shuffle(Array.from({ length: n }, (_, i) => i));
}

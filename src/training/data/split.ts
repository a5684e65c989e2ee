/**
 * Deterministic order and splits: seeded shuffle (the project's Rng, src/util/rng.ts: xoshiro128** +
 * Fisher–Yates), eval split, dedup.
 */
import { Rng } from '../../util/rng.js';
import type { PreferenceExample } from '../types.js';

/** A shuffled copy of `xs` (Fisher–Yates); the same seed always gives the same order. */
export function shuffleExamples<T>(xs: T[], seed: number): T[] {
  return new Rng(seed).shuffle(xs.slice());
}

/**
 * Split into train and eval: round(n · fraction) examples (at least 1 when fraction > 0 and n ≥ 2, never
 * all of them) chosen by a seeded shuffle; both parts keep the input order.
 * @throws RangeError when fraction is outside [0, 1)
 */
export function splitEval<T>(xs: T[], fraction: number, seed: number): { train: T[]; eval: T[] } {
  if (!(fraction >= 0 && fraction < 1)) throw new RangeError(`eval fraction must be in [0, 1), got ${fraction}`);
  const n = xs.length;
  let nEval = Math.round(n * fraction);
  if (fraction > 0 && n >= 2) nEval = Math.max(1, nEval);
  nEval = Math.min(nEval, Math.max(0, n - 1));
  const idx = shuffleExamples(
    xs.map((_, i) => i),
    seed,
  );
  const isEval = new Uint8Array(n);
  for (let k = 0; k < nEval; k++) isEval[idx[k]!] = 1;
  const train: T[] = [];
  const evalSet: T[] = [];
  xs.forEach((x, i) => (isEval[i] ? evalSet : train).push(x));
  return { train, eval: evalSet };
}

/** Key of an example for duplicate detection (prompt, chosen, rejected). */
export function exampleKey(ex: PreferenceExample): string {
  return JSON.stringify([ex.prompt, ex.chosen, ex.rejected]);
}

/** Drop exact duplicates (same prompt, chosen and rejected), keeping the first occurrence. */
export function dedupExamples(xs: PreferenceExample[]): { examples: PreferenceExample[]; removed: number } {
  const seen = new Set<string>();
  const examples: PreferenceExample[] = [];
  for (const x of xs) {
    const k = exampleKey(x);
    if (seen.has(k)) continue;
    seen.add(k);
    examples.push(x);
  }
  return { examples, removed: xs.length - examples.length };
}

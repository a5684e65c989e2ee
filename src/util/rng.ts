/**
 * The one seeded PRNG of the project, with serialisable state (xoshiro128**, Blackman & Vigna 2018): data
 * order and eval split, sampling, and the trainer's stream that a checkpoint restores exactly. In src/util/
 * so that every floor (data, models, trainer) can use it without importing upwards.
 */

/** Serialisable PRNG state: four uint32 words. */
export type RngState = [number, number, number, number];

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

const rotl = (x: number, k: number): number => ((x << k) | (x >>> (32 - k))) >>> 0;

/** xoshiro128** generator. */
export class Rng {
  private s: RngState;

  /** @param seed any integer (mixed with splitmix32 so that nearby seeds give unrelated streams) */
  constructor(seed: number | RngState) {
    if (Array.isArray(seed)) this.s = [...seed] as RngState;
    else {
      const sm = splitmix32(seed);
      this.s = [sm(), sm(), sm(), sm()];
      if (this.s.every((w) => w === 0)) this.s[0] = 1;
    }
  }

  /** The next uint32. */
  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] = (s[2] ^ s[0]) >>> 0;
    s[3] = (s[3] ^ s[1]) >>> 0;
    s[1] = (s[1] ^ s[2]) >>> 0;
    s[0] = (s[0] ^ s[3]) >>> 0;
    s[2] = (s[2] ^ t) >>> 0;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** In-place Fisher–Yates shuffle; returns `xs`. */
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = xs[i]!;
      xs[i] = xs[j]!;
      xs[j] = tmp;
    }
    return xs;
  }

  /** A copy of the state (for checkpoints). */
  getState(): RngState {
    return [...this.s] as RngState;
  }

  setState(s: RngState): void {
    if (!Array.isArray(s) || s.length !== 4) throw new RangeError('RNG state must be four uint32 words');
    this.s = s.map((w) => w >>> 0) as RngState;
  }
}

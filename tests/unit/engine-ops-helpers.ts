/**
 * Shared checks for the engine op tests: a fast op must equal the plain reference op in value and in
 * gradient (tf.grads of sum(out * R) for a fixed random R, w.r.t. every float input).
 */
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import * as fast from '../../src/training/engine/ops.js';
import * as ref from '../../src/training/engine/ops-reference.js';

let seed = 1234;
/** Deterministic N(0,1)-ish tensor (seeded). */
export function randn(shape: number[], scale = 1): tf.Tensor {
  seed += 1;
  return tf.mul(tf.randomNormal(shape, 0, 1, 'float32', seed), scale);
}

/** Max |a - b| / (1 + max |b|) over all entries. */
export function relErr(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => {
    const d = tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!;
    const m = tf.max(tf.abs(b)).dataSync()[0]!;
    return d / (1 + m);
  });
}

/**
 * Compare f(...xs) and g(...xs) (values) and their gradients w.r.t. xs.
 * @param tol relative tolerance (see relErr)
 */
export function checkOp(name: string, f: (...xs: tf.Tensor[]) => tf.Tensor, g: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], tol = 1e-4): void {
  tf.tidy(() => {
    const yf = f(...xs);
    const yg = g(...xs);
    assert.deepEqual(yf.shape, yg.shape, `${name}: shape`);
    const e = relErr(yf, yg);
    assert.ok(e < tol, `${name}: value error ${e}`);
    const R = randn(yg.shape);
    const gf = tf.grads((...a: tf.Tensor[]) => tf.sum(tf.mul(f(...a), R)))(xs);
    const gg = tf.grads((...a: tf.Tensor[]) => tf.sum(tf.mul(g(...a), R)))(xs);
    for (let i = 0; i < xs.length; i++) {
      assert.deepEqual(gf[i]!.shape, xs[i]!.shape, `${name}: grad ${i} shape`);
      const ge = relErr(gf[i]!, gg[i]!);
      assert.ok(ge < tol, `${name}: gradient ${i} error ${ge}`);
      // a gradient that is identically zero would make the comparison vacuous
      assert.ok(tf.max(tf.abs(gg[i]!)).dataSync()[0]! > 0, `${name}: reference gradient ${i} is zero`);
    }
  });
}

/** RoPE tables `[T, hd]` for positions offset..offset+T-1 (halves duplicated, HF convention). */
export function ropeTables(T: number, hd: number, offset = 0): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const c = new Float32Array(T * hd);
  const s = new Float32Array(T * hd);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < hd / 2; j++) {
      const a = (t + offset) / 10000 ** ((2 * j) / hd);
      c[t * hd + j] = c[t * hd + j + hd / 2] = Math.cos(a);
      s[t * hd + j] = s[t * hd + j + hd / 2] = Math.sin(a);
    }
  return { cos: tf.tensor2d(c, [T, hd]), sin: tf.tensor2d(s, [T, hd]) };
}

/** Run every op comparison of the fast ops against the reference on the current backend. */
export function runAllOpChecks(): void {
  checkOp(
    'linear',
    (x, w) => fast.linear(x as tf.Tensor2D, w as tf.Tensor2D),
    (x, w) => ref.linear(x as tf.Tensor2D, w as tf.Tensor2D),
    [randn([7, 5]), randn([5, 3])],
  );
  checkOp(
    'linear+bias',
    (x, w, b) => fast.linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D),
    (x, w, b) => ref.linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D),
    [randn([6, 4]), randn([4, 9]), randn([9])],
  );
  const ids = tf.tensor1d([3, 1, 3, 0, 7, 3], 'int32');
  checkOp(
    'embedding',
    (t) => fast.embedding(ids, t as tf.Tensor2D),
    (t) => ref.embedding(ids, t as tf.Tensor2D),
    [randn([8, 5])],
  );
  checkOp(
    'rmsNorm',
    (x, w) => fast.rmsNorm(x as tf.Tensor2D, w as tf.Tensor1D, 1e-5),
    (x, w) => ref.rmsNorm(x as tf.Tensor2D, w as tf.Tensor1D, 1e-5),
    [randn([6, 10]), randn([10])],
  );
  checkOp(
    'layerNorm',
    (x, a, b) => fast.layerNorm(x as tf.Tensor2D, a as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    (x, a, b) => ref.layerNorm(x as tf.Tensor2D, a as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    [randn([6, 10]), randn([10]), randn([10])],
  );
  checkOp(
    'swiglu',
    (a, b) => fast.swiglu(a as tf.Tensor2D, b as tf.Tensor2D),
    (a, b) => ref.swiglu(a as tf.Tensor2D, b as tf.Tensor2D),
    [randn([5, 12], 2), randn([5, 12])],
  );
  // sizes past the native kernels' one-thread and one-task limits (row blocks with partial dw sums)
  checkOp(
    'rmsNorm large',
    (x, w) => fast.rmsNorm(x as tf.Tensor2D, w as tf.Tensor1D, 1e-5),
    (x, w) => ref.rmsNorm(x as tf.Tensor2D, w as tf.Tensor1D, 1e-5),
    [randn([1100, 72]), randn([72])],
  );
  checkOp(
    'swiglu large',
    (a, b) => fast.swiglu(a as tf.Tensor2D, b as tf.Tensor2D),
    (a, b) => ref.swiglu(a as tf.Tensor2D, b as tf.Tensor2D),
    [randn([300, 172], 2), randn([300, 172])],
  );
  checkOp(
    'geluTanh',
    (x) => fast.geluTanh(x),
    (x) => ref.geluTanh(x),
    [randn([5, 12], 2)],
  );
  const { cos, sin } = ropeTables(5, 8, 2);
  checkOp(
    'applyRope',
    (x) => fast.applyRope(x as tf.Tensor4D, cos, sin),
    (x) => ref.applyRope(x as tf.Tensor4D, cos, sin),
    [randn([2, 5, 3, 8])],
  );
  // attention: MHA, GQA (2 query heads per kv head), and a KV-cache offset (T < S)
  for (const [B, H, KV, T, S, hd] of [
    [2, 3, 3, 5, 5, 4],
    [2, 4, 2, 6, 6, 4],
    [1, 4, 1, 3, 7, 8],
  ] as const) {
    checkOp(
      `causalAttention B${B} H${H} KV${KV} T${T} S${S}`,
      (q, k, v) => fast.causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D),
      (q, k, v) => ref.causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D),
      [randn([B, H, T, hd]), randn([B, KV, S, hd]), randn([B, KV, S, hd])],
    );
  }
  checkOp(
    'causalAttention scale',
    (q, k, v) => fast.causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D, { scale: 0.3 }),
    (q, k, v) => ref.causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D, { scale: 0.3 }),
    [randn([1, 2, 4, 4]), randn([1, 2, 4, 4]), randn([1, 2, 4, 4])],
  );
  checkSelfAttention();
  // token log-probs: both layouts, one chunk and several chunks
  const N = 7;
  const D = 6;
  const V = 11;
  const labels = tf.tensor1d([0, 10, 3, 3, 7, 1, 5], 'int32');
  for (const layout of ['VD', 'DV'] as const) {
    const wShape = layout === 'VD' ? [V, D] : [D, V];
    for (const [chunkRows, vocabBlock] of [
      [undefined, undefined],
      [3, undefined],
      [undefined, 4],
      [4, 5],
    ] as const) {
      checkOp(
        `tokenLogps ${layout} chunk ${chunkRows ?? 'all'} block ${vocabBlock ?? 'all'}`,
        (h, w) => fast.tokenLogps(h as tf.Tensor2D, w as tf.Tensor2D, labels, layout, { chunkRows, vocabBlock }),
        (h, w) => ref.tokenLogps(h as tf.Tensor2D, w as tf.Tensor2D, labels, layout),
        [randn([N, D], 2), randn(wShape, 2)],
      );
    }
    const rowMask = [0, 1, 1, 0, 1, 1, 0];
    const m = tf.tensor1d(rowMask);
    checkOp(
      `tokenLogps ${layout} rowMask`,
      (h, w) => fast.tokenLogps(h as tf.Tensor2D, w as tf.Tensor2D, labels, layout, { rowMask, chunkRows: 2, vocabBlock: 4 }),
      (h, w) => tf.mul(ref.tokenLogps(h as tf.Tensor2D, w as tf.Tensor2D, labels, layout), m),
      [randn([N, D], 2), randn(wShape, 2)],
    );
  }
}

/**
 * selfAttention (fused native kernel when active) against the reference composition: reference RoPE on q
 * and k, head transposes, reference causal attention. Shapes cover MHA, GQA, T across 16-key vector
 * boundaries, no RoPE with an odd head dim, and a size large enough for the threaded path.
 */
export function checkSelfAttention(): void {
  for (const [B, T, H, KV, hd, withRope] of [
    [2, 5, 3, 3, 4, true],
    [2, 37, 4, 2, 8, true],
    [1, 16, 2, 1, 6, true],
    [3, 17, 2, 2, 5, false],
    [2, 40, 4, 2, 16, true],
    [1, 130, 2, 1, 48, true], // head dim of stories15M (3 lane blocks), T past 128 (9 key vectors)
  ] as const) {
    const rope = withRope ? ropeTables(T, hd) : undefined;
    const dims = { B, T, H, KV, hd };
    const refAttention = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): tf.Tensor => {
      let q4 = tf.reshape(q, [B, T, H, hd]) as tf.Tensor4D;
      let k4 = tf.reshape(k, [B, T, KV, hd]) as tf.Tensor4D;
      if (rope) {
        q4 = ref.applyRope(q4, rope.cos, rope.sin);
        k4 = ref.applyRope(k4, rope.cos, rope.sin);
      }
      const heads = (x: tf.Tensor): tf.Tensor4D => tf.transpose(x, [0, 2, 1, 3]) as tf.Tensor4D;
      const att = ref.causalAttention(heads(q4), heads(k4), heads(tf.reshape(v, [B, T, KV, hd])));
      return tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [B * T, H * hd]);
    };
    checkOp(
      `selfAttention B${B} T${T} H${H} KV${KV} hd${hd}${withRope ? ' rope' : ''}`,
      (q, k, v) => fast.selfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope),
      refAttention,
      [randn([B * T, H * hd]), randn([B * T, KV * hd]), randn([B * T, KV * hd])],
    );
  }
}

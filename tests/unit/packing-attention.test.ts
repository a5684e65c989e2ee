/**
 * The fused attention kernel with segment masks (packed rows: padding_free and shared_prompt, data/packing.ts)
 * against the reference composition with an explicit additive mask (values and gradients), with per-token
 * RoPE positions, at several lengths including 1-token answers; and a packed sequence's attention equal to
 * the same sequence attended alone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { nativeStatus } from '../../src/training/engine/addon.js';
import { fusedAttentionActive, maskedSelfAttention, selfAttention, segmentMaskAdditive } from '../../src/training/engine/ops.js';
import { packSequences, packSharedPrompt } from '../../src/training/data/packing.js';
import type { TokenizedPair } from '../../src/training/data/index.js';
import { checkOp, randn, relErr } from './engine-ops-helpers.js';

/** Per-token RoPE tables `[N, hd]` for position ids (HF convention, halves duplicated). */
function ropeAt(pos: Int32Array, hd: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const c = new Float32Array(pos.length * hd);
  const s = new Float32Array(pos.length * hd);
  for (let i = 0; i < pos.length; i++)
    for (let j = 0; j < hd / 2; j++) {
      const a = pos[i]! / 10000 ** ((2 * j) / hd);
      c[i * hd + j] = c[i * hd + j + hd / 2] = Math.cos(a);
      s[i * hd + j] = s[i * hd + j + hd / 2] = Math.sin(a);
    }
  return { cos: tf.tensor2d(c, [pos.length, hd]), sin: tf.tensor2d(s, [pos.length, hd]) };
}

const toks = (n: number, base: number): number[] => Array.from({ length: n }, (_, i) => base + i);
function pair(P: number, C: number, R: number): TokenizedPair {
  return { promptIds: toks(P, 1), chosenIds: toks(C, 100), rejectedIds: toks(R, 200), sftIds: toks(C, 100) } as TokenizedPair;
}

const layouts = [
  {
    name: 'padding_free 5,1,17,2,40',
    batch: packSequences([5, 1, 17, 2, 40].map((n) => ({ prompt: toks(Math.ceil(n / 2), 1), completion: toks(Math.floor(n / 2), 50) }))),
  },
  { name: 'padding_free one long', batch: packSequences([{ prompt: toks(20, 1), completion: toks(19, 50) }]) },
  { name: 'shared_prompt 1-token answers', batch: packSharedPrompt([pair(3, 1, 1), pair(1, 1, 2), pair(20, 5, 33)]) },
  { name: 'shared_prompt long prompt', batch: packSharedPrompt([pair(37, 2, 1), pair(2, 18, 17)]) },
];

test('the fused attention with segments equals the explicit-mask composition (values and gradients)', async () => {
  await initBackend('auto');
  if (nativeStatus().available) assert.ok(fusedAttentionActive(), 'native addon loaded but the fused attention is not active');
  for (const { name, batch } of layouts) {
    for (const [H, KV, hd, withRope] of [
      [4, 2, 8, true],
      [3, 3, 5, false],
      [2, 1, 48, true],
    ] as const) {
      const N = batch.seqLen;
      const dims = { B: 1, T: N, H, KV, hd };
      const rope = withRope ? ropeAt(batch.positionIds, hd) : undefined;
      const segments = { mask: batch.segments };
      checkOp(
        `${name} H${H} KV${KV} hd${hd}${withRope ? ' rope' : ''}`,
        (q, k, v) => selfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, segments),
        (q, k, v) => maskedSelfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, segments),
        [randn([N, H * hd]), randn([N, KV * hd]), randn([N, KV * hd])],
        2e-5,
      );
      rope?.cos.dispose();
      rope?.sin.dispose();
    }
  }
});

test('several packed rows (B = 2) with per-token positions: fused equals the explicit mask', async () => {
  await initBackend('auto');
  const T = 24;
  const r0 = packSequences([
    { prompt: toks(3, 1), completion: toks(9, 5) },
    { prompt: toks(1, 1), completion: toks(11, 5) },
  ]);
  const r1 = packSharedPrompt([pair(4, 1, 3), pair(5, 7, 4)]);
  assert.equal(r0.seqLen, T);
  assert.equal(r1.seqLen, T);
  const mask = new Int32Array(3 * 2 * T);
  for (let k = 0; k < 3; k++) {
    mask.set(r0.segments.subarray(k * T, (k + 1) * T), k * 2 * T);
    mask.set(r1.segments.subarray(k * T, (k + 1) * T), k * 2 * T + T);
  }
  const pos = new Int32Array(2 * T);
  pos.set(r0.positionIds, 0);
  pos.set(r1.positionIds, T);
  const H = 4;
  const KV = 2;
  const hd = 16;
  const dims = { B: 2, T, H, KV, hd };
  const rope = ropeAt(pos, hd);
  checkOp(
    'B2 packed rows',
    (q, k, v) => selfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, { mask }),
    (q, k, v) => maskedSelfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, { mask }),
    [randn([2 * T, H * hd]), randn([2 * T, KV * hd]), randn([2 * T, KV * hd])],
    2e-5,
  );
});

test('a packed sequence attends exactly as the same sequence alone (block-diagonal, positions restart)', async () => {
  await initBackend('auto');
  const lens = [7, 1, 19];
  const batch = packSequences(lens.map((n) => ({ prompt: toks(n, 1), completion: [] })));
  const H = 2;
  const hd = 8;
  const N = batch.seqLen;
  const q = randn([N, H * hd]) as tf.Tensor2D;
  const k = randn([N, H * hd]) as tf.Tensor2D;
  const v = randn([N, H * hd]) as tf.Tensor2D;
  const packed = selfAttention(q, k, v, { B: 1, T: N, H, KV: H, hd }, ropeAt(batch.positionIds, hd), undefined, { mask: batch.segments });
  let start = 0;
  for (const n of lens) {
    const sl = (x: tf.Tensor2D): tf.Tensor2D => tf.slice(x, [start, 0], [n, H * hd]);
    const alone = selfAttention(
      sl(q),
      sl(k),
      sl(v),
      { B: 1, T: n, H, KV: H, hd },
      ropeAt(
        Int32Array.from({ length: n }, (_, i) => i),
        hd,
      ),
    );
    assert.ok(relErr(sl(packed), alone) < 1e-6, `sequence of ${n} tokens`);
    start += n;
  }
});

test('the shared-prompt mask: rejected sees prompt + rejected, never chosen', () => {
  const b = packSharedPrompt([pair(2, 2, 2)]);
  const m = segmentMaskAdditive(1, 6, { mask: b.segments });
  const row = (i: number): number[] => Array.from(m.subarray(i * 6, i * 6 + 6), (x) => (x === 0 ? 1 : 0));
  assert.deepEqual(row(3), [1, 1, 1, 1, 0, 0]); // chosen token 2
  assert.deepEqual(row(4), [1, 1, 0, 0, 1, 0]); // rejected token 1
  assert.deepEqual(row(5), [1, 1, 0, 0, 1, 1]);
  assert.deepEqual(Array.from(b.positionIds), [0, 1, 2, 3, 2, 3]);
  // the first rejected label is scored by the prompt's last token
  assert.deepEqual(Array.from(b.predRows), [1, 2, 1, 4]);
});

/**
 * A random valid segment mask: for each query row i, 0 <= a <= b <= c <= i (some rows with b = c, one range);
 * `rows` > 1 draws one (a, b, c) per run of that many rows (valid for the run's first row), so whole query
 * blocks share their ranges (the kernel's per-block fast path), e.g. with b = c: one range [a, i].
 */
function randomSegments(T: number, seed: number, rows = 1): Int32Array {
  let s = seed >>> 0;
  const next = (n: number): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % (n + 1);
  };
  const m = new Int32Array(3 * T);
  for (let i0 = 0; i0 < T; i0 += rows) {
    const c = next(i0);
    const b = (i0 / rows) % 5 === 0 ? c : next(c);
    const a = next(b);
    for (let i = i0; i < Math.min(T, i0 + rows); i++) {
      m[i] = a;
      m[T + i] = b;
      m[2 * T + i] = c;
    }
  }
  return m;
}

test('long packed segments (key vectors seen whole, and cut by the mask), random masks, head dims 8 and 64, threaded', async () => {
  await initBackend('auto');
  const batches = [
    { name: 'shared_prompt long, 1-token answers', batch: packSharedPrompt([pair(70, 1, 45), pair(33, 40, 1), pair(1, 1, 1), pair(24, 17, 9)]) },
    {
      name: 'padding_free long',
      batch: packSequences([100, 1, 64, 9, 57].map((n) => ({ prompt: toks(Math.ceil(n / 2), 1), completion: toks(Math.floor(n / 2), 50) }))),
    },
  ];
  for (const { name, batch } of batches) {
    for (const [H, KV, hd] of [
      [8, 4, 8],
      [4, 2, 64],
    ] as const) {
      const N = batch.seqLen;
      const dims = { B: 1, T: N, H, KV, hd };
      const rope = ropeAt(batch.positionIds, hd);
      const segments = { mask: batch.segments };
      checkOp(
        `${name} (T ${N}) H${H} KV${KV} hd${hd}`,
        (q, k, v) => selfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, segments),
        (q, k, v) => maskedSelfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, segments),
        [randn([N, H * hd]), randn([N, KV * hd]), randn([N, KV * hd])],
        2e-5,
      );
      rope.cos.dispose();
      rope.sin.dispose();
    }
  }
  for (const [T, hd, seed, rows] of [
    [61, 8, 7, 1],
    [150, 8, 8, 1],
    [97, 64, 9, 1],
    [203, 8, 10, 8], // ranges shared by whole query blocks (8 queries; runs of 16: two blocks)
    [203, 8, 11, 16],
    [130, 64, 12, 16],
  ] as const) {
    const dims = { B: 1, T, H: 2, KV: 1, hd };
    const segments = { mask: randomSegments(T, seed, rows) };
    const pos = Int32Array.from({ length: T }, (_, i) => i);
    const rope = ropeAt(pos, hd);
    checkOp(
      `random mask T${T} hd${hd} rows ${rows}`,
      (q, k, v) => selfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, segments),
      (q, k, v) => maskedSelfAttention(q as tf.Tensor2D, k as tf.Tensor2D, v as tf.Tensor2D, dims, rope, undefined, segments),
      [randn([T, 2 * hd]), randn([T, hd]), randn([T, hd])],
      2e-5,
    );
    rope.cos.dispose();
    rope.sin.dispose();
  }
});

/**
 * The fast engine ops (src/training/engine/ops.ts) against the plain tfjs reference (ops-reference.ts):
 * values and gradients, on the wasm backend (threaded build when the machine has several cores), plus the
 * kernels registered for wasm (Slice, Unpack, UnsortedSegmentSum).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { checkSelfAttention, runAllOpChecks, randn, relErr } from './engine-ops-helpers.js';
import { fusedAttentionActive, useFusedAttention } from '../../src/training/engine/ops.js';
import { nativeStatus } from '../../src/training/engine/addon.js';

test('wasm backend initialises', async () => {
  const info = await initBackend('wasm');
  assert.equal(info.name, 'wasm');
  assert.ok(info.threads >= 1);
});

test('fast ops equal the reference ops (values and gradients) on wasm', async () => {
  await initBackend('wasm');
  runAllOpChecks();
});

test('the fused native attention kernel is the one checked, and so is the tfjs composition it replaces', async () => {
  await initBackend('wasm');
  if (nativeStatus().available) assert.ok(fusedAttentionActive(), 'native addon loaded but the fused attention is not active');
  checkSelfAttention();
  useFusedAttention(false);
  try {
    assert.equal(fusedAttentionActive(), false);
    checkSelfAttention();
  } finally {
    useFusedAttention(true);
  }
});

test('wasm Slice/Unpack kernels equal a plain JS slice', async () => {
  await initBackend('wasm');
  tf.tidy(() => {
    const shape = [3, 4, 5, 6];
    const x = randn(shape);
    const xv = x.dataSync();
    const begin = [1, 0, 2, 1];
    const size = [2, 3, 2, 4];
    const got = tf.slice(x, begin, size).dataSync();
    const want: number[] = [];
    for (let a = 0; a < size[0]!; a++)
      for (let b = 0; b < size[1]!; b++)
        for (let c = 0; c < size[2]!; c++)
          for (let d = 0; d < size[3]!; d++) want.push(xv[(((begin[0]! + a) * 4 + begin[1]! + b) * 5 + begin[2]! + c) * 6 + begin[3]! + d]!);
    assert.deepEqual(Array.from(got), want);
    const parts = tf.unstack(x, 1);
    assert.equal(parts.length, 4);
    for (let i = 0; i < 4; i++) {
      const pv = parts[i]!.dataSync();
      assert.deepEqual(parts[i]!.shape, [3, 5, 6]);
      for (let a = 0; a < 3; a++) for (let c = 0; c < 30; c++) assert.equal(pv[a * 30 + c], xv[(a * 4 + i) * 30 + c]);
    }
    const ints = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2], 'int32');
    assert.deepEqual(Array.from(tf.slice(ints, [1, 1], [2, 1]).dataSync()), [4, 6]);
  });
});

test('gather is differentiable on wasm (UnsortedSegmentSum) and sums repeated ids', async () => {
  await initBackend('wasm');
  tf.tidy(() => {
    const table = randn([5, 3]);
    const ids = tf.tensor1d([4, 0, 4, 4], 'int32');
    const dy = randn([4, 3]);
    const [g] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), dy)))([table]);
    const dyv = dy.arraySync() as number[][];
    const want = Array.from({ length: 5 }, () => [0, 0, 0]);
    [4, 0, 4, 4].forEach((id, i) => dyv[i]!.forEach((v, j) => (want[id]![j]! += v)));
    assert.ok(relErr(g!, tf.tensor2d(want)) < 1e-6);
  });
});

test('native GEMM kernel equals a plain JS product in every form (NN, NT, TN, TT, batched, broadcast)', async (t) => {
  const info = await initBackend('wasm');
  if (!info.nativeMatmul) {
    t.skip(`native GEMM not available: ${info.nativeDetail}`);
    return;
  }
  const { nativeMatmulActive } = await import('../../src/training/engine/matmul.js');
  assert.ok(nativeMatmulActive());
  tf.tidy(() => {
    const cases: Array<[number[], number[], boolean, boolean]> = [
      [[7, 5], [5, 3], false, false],
      [[37, 300], [300, 70], false, false],
      [[300, 37], [300, 70], true, false],
      [[37, 300], [70, 300], false, true],
      [[300, 37], [70, 300], true, true],
      [[3, 9, 20], [3, 20, 33], false, false],
      [[3, 20, 9], [3, 33, 20], true, true],
      [[1, 9, 20], [4, 20, 6], false, false],
      [[2, 3, 9, 20], [20, 6], false, false],
      // many small products (the batch is spread over the threads)
      [[40, 40, 50], [40, 60, 50], false, true],
    ];
    for (const [sa, sb, ta, tb] of cases) {
      const a = randn(sa);
      const b = randn(sb);
      const got = tf.matMul(a, b, ta, tb);
      // plain JS reference over broadcast batches
      const ra = sa.length;
      const rb = sb.length;
      const M = ta ? sa[ra - 1]! : sa[ra - 2]!;
      const K = ta ? sa[ra - 2]! : sa[ra - 1]!;
      const N = tb ? sb[rb - 2]! : sb[rb - 1]!;
      const flatA = a.dataSync();
      const flatB = b.dataSync();
      const nA = sa.slice(0, -2).reduce((x, y) => x * y, 1);
      const nB = sb.slice(0, -2).reduce((x, y) => x * y, 1);
      const n = Math.max(nA, nB);
      const want = new Float32Array(n * M * N);
      for (let q = 0; q < n; q++)
        for (let i = 0; i < M; i++)
          for (let j = 0; j < N; j++) {
            let s = 0;
            for (let k = 0; k < K; k++) {
              const x = flatA[(nA === 1 ? 0 : q) * M * K + (ta ? k * M + i : i * K + k)]!;
              const y = flatB[(nB === 1 ? 0 : q) * K * N + (tb ? j * K + k : k * N + j)]!;
              s += x * y;
            }
            want[q * M * N + i * N + j] = s;
          }
      assert.equal(got.size, want.length, `${sa} x ${sb}`);
      assert.ok(relErr(tf.reshape(got, [-1]), tf.tensor1d(want)) < 1e-5, `${sa}${ta ? 'T' : ''} x ${sb}${tb ? 'T' : ''}`);
    }
  });
});

test('fast ops equal the reference ops on wasm with the stock XNNPACK matmul too', async () => {
  await initBackend('wasm');
  const { useNativeMatmul, nativeMatmulActive } = await import('../../src/training/engine/matmul.js');
  const was = nativeMatmulActive();
  useNativeMatmul(false);
  try {
    assert.equal(nativeMatmulActive(), false);
    runAllOpChecks();
  } finally {
    if (was) useNativeMatmul(true);
  }
});

test('adamwUpdate (fused native kernel when available) follows torch AdamW over three steps', async () => {
  await initBackend('wasm');
  const { adamwUpdate } = await import('../../src/training/engine/optim.js');
  const n = 37;
  const p0 = Array.from(randn([n]).dataSync());
  const p = tf.variable(tf.tensor1d(p0));
  const m = tf.variable(tf.zeros([n]));
  const v = tf.variable(tf.zeros([n]));
  const h = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const P = p0.slice();
  const Mv = new Array<number>(n).fill(0);
  const Vv = new Array<number>(n).fill(0);
  for (let t = 1; t <= 3; t++) {
    const g = randn([n]);
    const gv = g.dataSync();
    adamwUpdate(p, g, m, v, { ...h, step: t });
    for (let i = 0; i < n; i++) {
      P[i] = P[i]! * (1 - h.lr * h.weightDecay);
      Mv[i] = h.beta1 * Mv[i]! + (1 - h.beta1) * gv[i]!;
      Vv[i] = h.beta2 * Vv[i]! + (1 - h.beta2) * gv[i]! * gv[i]!;
      const denom = Math.sqrt(Vv[i]!) / Math.sqrt(1 - h.beta2 ** t) + h.eps;
      P[i] = P[i]! - (h.lr / (1 - h.beta1 ** t)) * (Mv[i]! / denom);
    }
    g.dispose();
  }
  assert.ok(relErr(p, tf.tensor1d(P)) < 1e-5);
  assert.ok(relErr(m, tf.tensor1d(Mv)) < 1e-5);
  assert.ok(relErr(v, tf.tensor1d(Vv)) < 1e-5);
  assert.notDeepEqual(Array.from(p.dataSync()), p0);
  tf.dispose([p, m, v]);
});

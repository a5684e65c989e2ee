/**
 * The `native` backend (src/training/engine/native-backend.ts): tensors in TypedArrays outside any wasm heap,
 * native kernels for the hot ops. Checked three ways:
 * - every native tensor kernel against tfjs-backend-cpu's own JS kernel (the oracle), values and gradients,
 *   with the pool forced multi-threaded for every size (configure(0, ...));
 * - the engine's fast ops against the reference ops (DPO_ENGINE_OPS=reference's code) on this backend;
 * - a DPO training step of a small Llama runs no JS-fallback kernel on more than a handful of elements.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { loadNativeAddon } from '../../src/training/engine/addon.js';
import { NATIVE_BACKEND, NATIVE_KERNELS, fallbackKernelCalls } from '../../src/training/engine/native-backend.js';
import { engineSettings } from '../../src/training/engine/settings.js';
import { runAllOpChecks, checkSelfAttention } from './engine-ops-helpers.js';

const info = await initBackend('native');

/** Deterministic values in [-scale, scale] (an LCG), as plain arrays so each backend builds its own tensors. */
function values(n: number, seed: number, scale = 1, positive = false): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    const u = s / 2 ** 32;
    out[i] = positive ? 0.1 + u * scale : (2 * u - 1) * scale;
  }
  return out;
}

/** Max |a - b| / (1 + max |b|). */
function rel(a: Float32Array | Int32Array, b: Float32Array | Int32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / (1 + m);
}

interface Case {
  name: string;
  shapes: number[][];
  f: (...xs: tf.Tensor[]) => tf.Tensor;
  positive?: boolean;
  grad?: boolean;
}

/** Run a case on `backend`: output and (when differentiable) the gradients of sum(out * R). */
function runOn(backend: string, c: Case): { y: Float32Array; grads: Float32Array[]; shape: number[] } {
  tf.setBackend(backend);
  return tf.tidy(() => {
    const xs = c.shapes.map((s, i) =>
      tf.tensor(
        values(
          s.reduce((a, b) => a * b, 1),
          17 + i * 101,
          2,
          c.positive,
        ),
        s,
      ),
    );
    const y = c.f(...xs);
    const R = tf.tensor(values(y.size, 9), y.shape);
    const grads =
      c.grad === false
        ? []
        : tf
            .grads((...a: tf.Tensor[]) => tf.sum(tf.mul(c.f(...a), R)))(xs)
            .map((g) => g.dataSync() as Float32Array);
    return { y: y.dataSync() as Float32Array, grads, shape: y.shape };
  });
}

// shapes large enough for several tasks per kernel (32k-element chunks), and broadcasts of every kind
const B = [64, 3, 520];
const cases: Case[] = [
  { name: 'add same shape', shapes: [B, B], f: (a, b) => tf.add(a!, b!) },
  { name: 'add row broadcast', shapes: [B, [520]], f: (a, b) => tf.add(a!, b!) },
  { name: 'add middle broadcast', shapes: [B, [64, 1, 520]], f: (a, b) => tf.add(a!, b!) },
  { name: 'add column broadcast', shapes: [B, [64, 3, 1]], f: (a, b) => tf.add(a!, b!) },
  {
    name: 'add both broadcast',
    shapes: [
      [64, 1, 520],
      [3, 1],
    ],
    f: (a, b) => tf.add(a!, b!),
  },
  { name: 'add scalar', shapes: [B, []], f: (a, b) => tf.add(a!, b!) },
  { name: 'sub broadcast', shapes: [[520], B], f: (a, b) => tf.sub(a!, b!) },
  { name: 'mul broadcast', shapes: [B, [3, 520]], f: (a, b) => tf.mul(a!, b!) },
  { name: 'div', shapes: [B, [64, 3, 1]], f: (a, b) => tf.div(a!, b!), positive: true },
  { name: 'maximum', shapes: [B, B], f: (a, b) => tf.maximum(a!, b!) },
  { name: 'minimum', shapes: [B, B], f: (a, b) => tf.minimum(a!, b!) },
  { name: 'squaredDifference', shapes: [B, B], f: (a, b) => tf.squaredDifference(a!, b!) },
  { name: 'pow', shapes: [B, [520]], f: (a, b) => tf.pow(a!, b!), positive: true },
  { name: 'addN', shapes: [B, B, B], f: (a, b, c) => tf.addN([a!, b!, c!]) },
  { name: 'neg', shapes: [B], f: (x) => tf.neg(x!) },
  { name: 'exp', shapes: [B], f: (x) => tf.exp(x!) },
  { name: 'log', shapes: [B], f: (x) => tf.log(x!), positive: true },
  { name: 'sqrt', shapes: [B], f: (x) => tf.sqrt(x!), positive: true },
  { name: 'rsqrt', shapes: [B], f: (x) => tf.rsqrt(x!), positive: true },
  { name: 'square', shapes: [B], f: (x) => tf.square(x!) },
  { name: 'sigmoid', shapes: [B], f: (x) => tf.sigmoid(x!) },
  { name: 'softplus', shapes: [B], f: (x) => tf.softplus(x!) },
  { name: 'tanh', shapes: [B], f: (x) => tf.tanh(x!) },
  { name: 'abs', shapes: [B], f: (x) => tf.abs(x!) },
  { name: 'relu', shapes: [B], f: (x) => tf.relu(x!) },
  { name: 'reciprocal', shapes: [B], f: (x) => tf.reciprocal(x!), positive: true },
  { name: 'log1p', shapes: [B], f: (x) => tf.log1p(x!), positive: true },
  { name: 'sum last axis', shapes: [B], f: (x) => tf.sum(x!, -1) },
  { name: 'sum first axis', shapes: [B], f: (x) => tf.sum(x!, 0) },
  { name: 'sum middle keepDims', shapes: [B], f: (x) => tf.sum(x!, 1, true) },
  { name: 'sum all', shapes: [B], f: (x) => tf.sum(x!) },
  { name: 'sum two axes', shapes: [B], f: (x) => tf.sum(x!, [1, 2]) },
  { name: 'mean', shapes: [B], f: (x) => tf.mean(x!, -1, true) },
  { name: 'max', shapes: [B], f: (x) => tf.max(x!, -1) },
  { name: 'min', shapes: [B], f: (x) => tf.min(x!, 0) },
  { name: 'transpose 2-D', shapes: [[300, 520]], f: (x) => tf.transpose(x!) },
  { name: 'transpose 4-D', shapes: [[4, 30, 6, 48]], f: (x) => tf.transpose(x!, [0, 2, 1, 3]) },
  {
    name: 'matMul NT batched',
    shapes: [
      [4, 70, 90],
      [4, 80, 90],
    ],
    f: (a, b) => tf.matMul(a!, b!, false, true),
  },
  {
    name: 'concat axis 1',
    shapes: [
      [64, 100],
      [64, 30],
    ],
    f: (a, b) => tf.concat([a!, b!], 1),
  },
  { name: 'slice', shapes: [B], f: (x) => tf.slice(x!, [3, 1, 7], [50, 2, 400]) },
  { name: 'softmax', shapes: [[64, 520]], f: (x) => tf.softmax(x!) },
  { name: 'logSumExp', shapes: [[64, 520]], f: (x) => tf.logSumExp(x!, -1, true) },
];

test('native backend initialises with the native addon', () => {
  assert.equal(info.name, NATIVE_BACKEND);
  assert.equal(info.nativeMatmul, true, info.nativeDetail);
  for (const k of ['BatchMatMul', 'Add', 'Multiply', 'Sum', 'Transpose', 'ScatterNd', 'GatherV2', 'DpoAttentionFwd']) assert.ok(NATIVE_KERNELS.has(k), k);
});

test('every native tensor kernel equals tfjs-backend-cpu (values and gradients), multi-threaded at every size', () => {
  const addon = loadNativeAddon()!;
  addon.configure(0, engineSettings().spinUs); // every kernel on all threads
  try {
    for (const c of cases) {
      const want = runOn('cpu', c);
      const got = runOn(NATIVE_BACKEND, c);
      assert.deepEqual(got.shape, want.shape, `${c.name}: shape`);
      const e = rel(got.y, want.y);
      assert.ok(e < 1e-5, `${c.name}: value error ${e}`);
      want.grads.forEach((g, i) => {
        const ge = rel(got.grads[i]!, g);
        assert.ok(ge < 1e-5, `${c.name}: gradient ${i} error ${ge}`);
      });
    }
    // gather / scatterND (the embedding and its gradient) with repeated ids
    const ids = [5, 1, 5, 0, 63, 5];
    const g = (backend: string): Float32Array => (
      tf.setBackend(backend),
      tf.tidy(() => {
        const t = tf.tensor2d(values(64 * 520, 3), [64, 520]);
        const R = tf.tensor2d(values(6 * 520, 4), [6, 520]);
        const [dt] = tf.grads((x: tf.Tensor) => tf.sum(tf.mul(tf.gather(x, tf.tensor1d(ids, 'int32')), R)))([t]);
        const sc = tf.scatterND(tf.tensor2d(ids, [6, 1], 'int32'), R, [64, 520]);
        return Float32Array.from([...dt!.dataSync(), ...sc.dataSync()]);
      })
    );
    assert.ok(rel(g(NATIVE_BACKEND), g('cpu')) < 1e-6, 'gather gradient / scatterND');
  } finally {
    addon.configure(engineSettings().mtMflop, engineSettings().spinUs);
    tf.setBackend(NATIVE_BACKEND);
  }
});

test('fast ops equal the reference ops (values and gradients) on the native backend', () => {
  tf.setBackend(NATIVE_BACKEND);
  runAllOpChecks();
  checkSelfAttention();
});

test('a DPO step of a small Llama on the native backend runs no JS-fallback kernel on a hot path', async () => {
  tf.setBackend(NATIVE_BACKEND);
  const { runBench } = await import('../../bench/dpo-step.js');
  await runBench({
    preset: 'stories260K',
    pairs: 2,
    seq: 32,
    steps: 1,
    mode: 'dpo',
    backend: 'native',
    rowMask: true,
    precomputeRef: false,
    fusedAdamW: true,
    json: true,
  });
  fallbackKernelCalls(true);
  const r = await runBench({
    preset: 'stories260K',
    pairs: 2,
    seq: 32,
    steps: 1,
    mode: 'dpo',
    backend: 'native',
    rowMask: true,
    precomputeRef: false,
    fusedAdamW: true,
    json: true,
  });
  assert.ok(Number.isFinite(r.loss));
  // what may stay JS: buffer sharing (Reshape), allocation (ZerosLike, Fill, OnesLike) and a few scalars per step
  const noLoop = new Set(['Reshape', 'ZerosLike', 'OnesLike', 'Fill']);
  const hot = [...fallbackKernelCalls()].filter(([k, u]) => !noLoop.has(k) && u.elements > 2 * 2 * 32);
  assert.deepEqual(hot, [], `JS-fallback kernels on more than one value per token: ${JSON.stringify(hot)}`);
});

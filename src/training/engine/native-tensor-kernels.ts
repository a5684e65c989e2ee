/**
 * tfjs's general kernels on the native backend, computed by the addon's tensor.c: element-wise binary ops
 * with broadcasting (Add, Sub, Multiply, RealDiv, Maximum, Minimum, SquaredDifference, Pow, AddN), unary
 * ops (Neg, Exp, Log, Sqrt, Rsqrt, Square, Sigmoid, Softplus, Tanh, Abs, Relu, Reciprocal, Log1p),
 * reductions over a contiguous block of axes (Sum, Mean, Max, Min), Transpose, ScatterNd, and Concat as
 * block copies. Float32 only: other dtypes, and reductions over non-adjacent axes, go to tfjs-backend-cpu's
 * kernel (counted by native-backend.ts; they are off the training hot path).
 * Semantics are tfjs's own (broadcasting as numpy: backend_util.assertAndGetBroadcastShape).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { NativeAddon } from './addon.js';
import { overrideKernel } from './kernels.js';
import { engineSettings } from './settings.js';

/** Op codes of tensor.c (enum order there). */
const BIN = { Add: 0, Sub: 1, Multiply: 2, RealDiv: 3, Maximum: 4, Minimum: 5, SquaredDifference: 6, Pow: 7 } as const;
const UN = {
  Neg: 0,
  Exp: 1,
  Log: 2,
  Sqrt: 3,
  Rsqrt: 4,
  Square: 5,
  Sigmoid: 6,
  Softplus: 7,
  Tanh: 8,
  Abs: 9,
  Relu: 10,
  Reciprocal: 11,
  Log1p: 13,
} as const;
const RED = { Sum: 0, Max: 1, Min: 2, Mean: 3 } as const;

/** Row-major strides of `shape` aligned to the right of `out` (0 where the input broadcasts or lacks the axis). */
export function broadcastStrides(shape: number[], out: number[]): number[] {
  const strides = new Array<number>(out.length).fill(0);
  let s = 1;
  for (let i = shape.length - 1, d = out.length - 1; i >= 0; i--, d--) {
    strides[d] = shape[i] === 1 ? 0 : s;
    s *= shape[i]!;
  }
  return strides;
}

/**
 * Merge adjacent output axes whose strides are contiguous for both inputs, so a row broadcast `[N, D] + [D]`
 * is 2-D and a same-shape op is 1-D (fewer index steps in the kernel).
 */
function collapse(out: number[], sa: number[], sb: number[]): [number[], number[], number[]] {
  if (out.length === 0) return [[1], [0], [0]];
  const o = [out[0]!];
  const a = [sa[0]!];
  const b = [sb[0]!];
  for (let d = 1; d < out.length; d++) {
    const k = o.length - 1;
    const n = out[d]!;
    // axis d merges into the previous one when each input steps through it exactly as a continuation
    if (a[k] === sa[d]! * n && b[k] === sb[d]! * n) {
      o[k] = o[k]! * n;
      a[k] = sa[d]!;
      b[k] = sb[d]!;
    } else {
      o.push(n);
      a.push(sa[d]!);
      b.push(sb[d]!);
    }
  }
  // the kernel wants last-axis strides 0 or 1: split a last axis with another stride off as its own run
  const last = o.length - 1;
  if ((a[last] !== 0 && a[last] !== 1) || (b[last] !== 0 && b[last] !== 1)) {
    o.push(1);
    a.push(0);
    b.push(0);
  }
  return [o, a, b];
}

/** Normalised, sorted axes of a reduction, or null when they are not one contiguous block. */
function axisBlock(axis: number | number[] | undefined, rank: number): [number, number] | null {
  const list = axis === undefined || axis === null ? [...Array(rank).keys()] : Array.isArray(axis) ? axis : [axis];
  const ax = [...new Set(list.map((a) => (a < 0 ? a + rank : a)))].sort((x, y) => x - y);
  if (ax.length === 0) return null;
  for (let i = 1; i < ax.length; i++) if (ax[i] !== ax[i - 1]! + 1) return null;
  return [ax[0]!, ax[ax.length - 1]!];
}

/** Register the kernels of the file comment on `backendName` (stock tfjs-backend-cpu kernels as fallback). */
export function registerTensorKernels(g: NativeAddon, backendName: string): void {
  const threads = engineSettings().nativeThreads;
  for (const [name, op] of Object.entries(BIN)) {
    overrideKernel<{ a: tf.TensorInfo; b: tf.TensorInfo }, Record<string, never>>(name, backendName, ({ inputs: { a, b }, mem, raw }, stock) => {
      if (a.dtype !== 'float32' || b.dtype !== 'float32') return stock!(raw);
      const shape = tf.backend_util.assertAndGetBroadcastShape(a.shape, b.shape);
      const out = mem.out(shape);
      if (shape.some((d) => d === 0)) return out;
      const [s, sa, sb] = collapse(shape, broadcastStrides(a.shape, shape), broadcastStrides(b.shape, shape));
      g.binary(op, mem.f32(a), mem.f32(b), mem.f32(out), s, sa, sb, threads);
      return out;
    });
  }
  overrideKernel<tf.TensorInfo[], Record<string, never>>('AddN', backendName, ({ inputs, mem, raw }, stock) => {
    const xs = Object.values(inputs) as tf.TensorInfo[];
    if (xs.some((x) => x.dtype !== 'float32')) return stock!(raw);
    const out = mem.out(xs[0]!.shape.slice());
    const n = xs[0]!.shape.reduce((p, c) => p * c, 1);
    const o = mem.f32(out);
    if (xs.length === 1) o.set(mem.f32(xs[0]).subarray(0, n));
    else {
      g.binary(BIN.Add, mem.f32(xs[0]), mem.f32(xs[1]), o, [n], [1], [1], threads);
      for (let i = 2; i < xs.length; i++) g.binary(BIN.Add, o, mem.f32(xs[i]), o, [n], [1], [1], threads);
    }
    return out;
  });
  for (const [name, op] of Object.entries(UN)) {
    overrideKernel<{ x: tf.TensorInfo }, Record<string, never>>(name, backendName, ({ inputs: { x }, mem, raw }, stock) => {
      if (x.dtype !== 'float32') return stock!(raw);
      const out = mem.out(x.shape.slice());
      g.unary(op, mem.f32(x), mem.f32(out), 1, threads);
      return out;
    });
  }
  for (const [name, op] of Object.entries(RED)) {
    // Max names its axes `reductionIndices` (kernel_names.ts MaxAttrs); Sum, Mean, Min name them `axis`
    type ReduceAttrs = { axis?: number | number[]; reductionIndices?: number | number[]; keepDims: boolean };
    overrideKernel<{ x: tf.TensorInfo }, ReduceAttrs>(name, backendName, ({ inputs: { x }, attrs, mem, raw }, stock) => {
      const rank = x.shape.length;
      const block = rank === 0 ? null : axisBlock(attrs.axis ?? attrs.reductionIndices, rank);
      if (x.dtype !== 'float32' || !block) return stock!(raw);
      const [a0, a1] = block;
      const prod = (l: number[]): number => l.reduce((p, c) => p * c, 1);
      const outer = prod(x.shape.slice(0, a0));
      const n = prod(x.shape.slice(a0, a1 + 1));
      const inner = prod(x.shape.slice(a1 + 1));
      const shape = attrs.keepDims ? x.shape.map((d, i) => (i >= a0 && i <= a1 ? 1 : d)) : x.shape.filter((_, i) => i < a0 || i > a1);
      const out = mem.out(shape);
      if (outer * inner === 0) return out;
      g.reduce(op, mem.f32(x), mem.f32(out), outer, n, inner, threads);
      return out;
    });
  }
  // Cast to float32 as a fresh Float32Array (the stock kernel shares an int32/bool buffer under the new dtype)
  overrideKernel<{ x: tf.TensorInfo }, { dtype: tf.DataType }>('Cast', backendName, ({ inputs: { x }, attrs, mem, raw }, stock) => {
    if (attrs.dtype !== 'float32' || (x.dtype !== 'int32' && x.dtype !== 'bool' && x.dtype !== 'float32')) return stock!(raw);
    if (x.dtype === 'float32') return mem.share(x);
    const out = mem.out(x.shape.slice());
    mem.f32(out).set(mem.data(x));
    return out;
  });
  overrideKernel<{ x: tf.TensorInfo }, { perm: number[] }>('Transpose', backendName, ({ inputs: { x }, attrs, mem, raw }, stock) => {
    if (x.dtype !== 'float32' || x.shape.length > 8) return stock!(raw);
    const out = mem.out(attrs.perm.map((p) => x.shape[p]!));
    if (x.shape.some((d) => d === 0)) return out;
    g.transpose(mem.f32(x), mem.f32(out), x.shape, attrs.perm, threads);
    return out;
  });
  overrideKernel<{ indices: tf.TensorInfo; updates: tf.TensorInfo }, { shape: number[] }>(
    'ScatterNd',
    backendName,
    ({ inputs: { indices, updates }, attrs, mem, raw }, stock) => {
      if (updates.dtype !== 'float32' || indices.dtype !== 'int32') return stock!(raw);
      const depth = indices.shape[indices.shape.length - 1] ?? 1;
      const n = indices.shape.slice(0, -1).reduce((p, c) => p * c, 1);
      const slice = attrs.shape.slice(depth).reduce((p, c) => p * c, 1);
      const strides = attrs.shape.slice(0, depth).map((_, d) => attrs.shape.slice(d + 1).reduce((p, c) => p * c, 1));
      const out = mem.out(attrs.shape.slice());
      g.scatterAdd(mem.i32(indices), mem.f32(updates), mem.f32(out), n, depth, slice, strides);
      return out;
    },
  );
  overrideKernel<tf.TensorInfo[], { axis: number }>('Concat', backendName, ({ inputs, attrs, mem, raw }, stock) => {
    const xs = (Object.values(inputs) as tf.TensorInfo[]).filter((x) => x.shape.reduce((p, c) => p * c, 1) > 0);
    const all = Object.values(inputs) as tf.TensorInfo[];
    if (all.length === 0 || all.some((x) => x.dtype === 'string' || x.dtype === 'complex64')) return stock!(raw);
    const rank = all[0]!.shape.length;
    const axis = attrs.axis < 0 ? attrs.axis + rank : attrs.axis;
    const shape = all[0]!.shape.slice();
    shape[axis] = all.reduce((s, x) => s + x.shape[axis]!, 0);
    const out = mem.out(shape, all[0]!.dtype);
    // [outer, axis * inner] blocks: each input contributes one contiguous run per outer index
    const outer = shape.slice(0, axis).reduce((p, c) => p * c, 1);
    const rowOut = shape.slice(axis).reduce((p, c) => p * c, 1);
    const o = mem.data(out);
    let col = 0;
    for (const x of xs) {
      const run = x.shape.slice(axis).reduce((p, c) => p * c, 1);
      const xv = mem.data(x);
      if (outer === 1) o.set(xv.subarray(0, run), col);
      else for (let r = 0; r < outer; r++) o.set(xv.subarray(r * run, (r + 1) * run), r * rowOut + col);
      col += run;
    }
    return out;
  });
}

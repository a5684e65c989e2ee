/**
 * The native SGEMM (native/gemm.c) as tfjs's `BatchMatMul` kernel on the wasm and native backends. Every
 * form runs at the same speed (transposed operands are handled in the packing, batches by strides), unlike
 * XNNPACK in tfjs-wasm where only the plain, unbatched form is fast. Products it cannot take (non-float32,
 * batch shapes that do not broadcast simply) go to the backend's stock kernel.
 */
import * as tf from '@tensorflow/tfjs-core';
import { loadNativeAddon } from './addon.js';
import { overrideKernel } from './kernels.js';
import { engineSettings } from './settings.js';

/** BatchMatMul's inputs and attributes as tfjs declares them (kernel_names.ts `BatchMatMulAttrs`). */
type BatchMatMulInputs = { a: tf.TensorInfo; b: tf.TensorInfo };
type BatchMatMulAttrs = { transposeA: boolean; transposeB: boolean };

interface Registration {
  stock: tf.KernelConfig | null;
  native: tf.KernelConfig;
  on: boolean;
}
const registrations = new Map<string, Registration>();

/** true when the current backend's BatchMatMul is the native one (ops pick matmul forms by this). */
export function nativeMatmulActive(): boolean {
  return registrations.get(tf.getBackend())?.on === true;
}

/**
 * Register the native GEMM as `backendName`'s `BatchMatMul` kernel (idempotent).
 * @returns true when registered
 */
export function registerNativeMatmul(backendName = 'wasm'): boolean {
  const have = registrations.get(backendName);
  if (have) {
    setOn(backendName, have, true);
    return true;
  }
  const g = loadNativeAddon();
  if (!g || !tf.getKernel('BatchMatMul', backendName)) return false;
  const threads = engineSettings().nativeThreads;
  const stock = overrideKernel<BatchMatMulInputs, BatchMatMulAttrs>('BatchMatMul', backendName, ({ inputs: { a, b }, attrs, mem, raw }, stockFn) => {
    const { transposeA, transposeB } = attrs;
    const ra = a.shape.length;
    const rb = b.shape.length;
    const fallback = (): tf.TensorInfo => stockFn!(raw) as tf.TensorInfo;
    if (a.dtype !== 'float32' || b.dtype !== 'float32' || ra < 2 || rb < 2) return fallback();
    const M = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
    const K = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
    const K2 = transposeB ? b.shape[rb - 1]! : b.shape[rb - 2]!;
    const N = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
    if (K !== K2) return fallback(); // let the stock kernel raise its error
    const batchA = a.shape.slice(0, -2);
    const batchB = b.shape.slice(0, -2);
    const nA = batchA.reduce((s, x) => s * x, 1);
    const nB = batchB.reduce((s, x) => s * x, 1);
    let outBatch: number[];
    if (batchA.length === batchB.length && batchA.every((x, i) => x === batchB[i])) outBatch = batchA;
    else if (nA === 1 && batchA.length <= batchB.length) outBatch = batchB;
    else if (nB === 1 && batchB.length <= batchA.length) outBatch = batchA;
    else return fallback();
    const batch = Math.max(nA, nB);
    const out = mem.out([...outBatch, M, N]);
    if (M * N === 0) return out;
    if (K === 0) {
      mem.f32(out).fill(0); // an empty sum (outputs come with unspecified contents)
      return out;
    }
    const lowB = mem.lowp(b);
    if (lowB && nB === 1 && nA === 1) {
      // a frozen weight in bfloat16 / int8: widened while packed (lowp.ts)
      g.sgemmLowp(mem.f32(a), lowB.data, lowB.scale, mem.f32(out), M, K, N, transposeA ? 1 : 0, transposeB ? 1 : 0, threads, lowB.kind === 'bfloat16' ? 1 : 2);
      return out;
    }
    const ov = mem.f32(out);
    g.sgemm(mem.f32(a), mem.f32(b), ov, M, K, N, transposeA ? 1 : 0, transposeB ? 1 : 0, threads, batch, nA === 1 ? 0 : M * K, nB === 1 ? 0 : K * N, M * N);
    return out;
  });
  const native = tf.getKernel('BatchMatMul', backendName)!;
  registrations.set(backendName, { stock, native: { ...native }, on: true });
  return true;
}

function setOn(backendName: string, r: Registration, on: boolean): void {
  if (r.on === on || (!on && !r.stock)) return;
  tf.unregisterKernel('BatchMatMul', backendName);
  tf.registerKernel(on ? r.native : r.stock!);
  r.on = on;
}

/**
 * Switch the current backend's BatchMatMul between the native GEMM and the stock kernel (after
 * {@link registerNativeMatmul}); for A/B measurements and tests.
 * @returns whether the native kernel is now in use
 */
export function useNativeMatmul(on: boolean): boolean {
  const r = registrations.get(tf.getBackend());
  if (!r) return false;
  setOn(tf.getBackend(), r, on);
  return r.on;
}

/**
 * The `native` tfjs backend: tensors in plain JS TypedArrays (tfjs-backend-cpu's data storage, each tensor its
 * own ArrayBuffer outside any wasm heap, so no 4 GiB ceiling on the sum of live tensors), with the engine's
 * native kernels (addon.ts; C on those TypedArrays in place, through N-API) registered for every op on the
 * training hot path, and tfjs-backend-cpu's JS kernels for the rest (setup, metrics, generation glue).
 *
 * Why this design (measured on the 2-core build machine; see the README's Performance section): the wasm
 * backend keeps every tensor in one 32-bit `WebAssembly.Memory` (`getHeapMax` 4 GiB), which a 135M-parameter
 * model's full DPO step exceeds. tfjs-backend-cpu already keeps each tensor in its own TypedArray, and its
 * data movement kernels (Reshape shares the buffer) are right; what it lacks is speed, and the native kernels
 * supply that. Subclassing it (instead of writing a KernelBackend from scratch) reuses its tested storage,
 * reference counting and ~150 fallback kernels, and leaves the `cpu` backend itself pure JS.
 *
 * Which kernels are native is {@link NATIVE_KERNELS}; `nativeKernelCalls` counts the JS fallbacks that ran
 * (tests assert a training step runs none on its hot path).
 */
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import { loadNativeAddon } from './addon.js';
import { type BufferAllocator, BufferPool } from './buffer-pool.js';
import { engineSettings } from './settings.js';
import { type LowPrecision, LowPrecisionWeights, quantizeInt8, toBfloat16 } from './lowp.js';
import { registerFusedKernels } from './kernels.js';
import { registerNativeMatmul } from './matmul.js';
import { registerTensorKernels } from './native-tensor-kernels.js';
import { registerWasmKernels } from './wasm-kernels.js';

/** The tfjs name of the backend. */
export const NATIVE_BACKEND = 'native';

/**
 * tfjs-backend-cpu's storage with our name (kernels are registered per backend name below), plus frozen
 * weights held in low precision ({@link storeInLowPrecision}): reads of those return widened float32 copies.
 */
export class NativeBackend extends MathBackendCPU {
  /** Recycled kernel output buffers (buffer-pool.ts; `DPO_NATIVE_POOL_MB`). */
  readonly pool = new BufferPool(engineSettings().poolMb * 1024 * 1024, 16384, nativeAllocator());

  /** The low-precision storage of `dataId`, or null when it is a plain TypedArray. */
  lowPrecision(dataId: tf.DataId): LowPrecisionWeights | null {
    const v = this.data.get(dataId)?.values;
    return v instanceof LowPrecisionWeights ? v : null;
  }

  /** A float32 kernel output of `n` elements (contents unspecified), from the pool when it can. */
  allocFloat32(n: number): Float32Array {
    return this.pool.take(n);
  }

  override write(values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType): tf.DataId {
    this.pool.stored(values);
    return super.write(values, shape, dtype);
  }

  override move(dataId: tf.DataId, values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType, refCount: number): void {
    this.pool.stored(values);
    super.move(dataId, values, shape, dtype, refCount);
  }

  override readSync(dataId: tf.DataId): tf.backend_util.BackendValues {
    return this.lowPrecision(dataId)?.decode() ?? this.pool.exposed(super.readSync(dataId));
  }

  override read(dataId: tf.DataId): Promise<tf.backend_util.BackendValues> {
    const lp = this.lowPrecision(dataId);
    return lp ? Promise.resolve(lp.decode()) : Promise.resolve(this.readSync(dataId));
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    const values = this.data.get(dataId)?.values;
    const disposed = super.disposeData(dataId, force);
    if (disposed && values !== undefined) this.pool.release(values);
    return disposed;
  }

  /** A float32 tensor stored as `w` (shape `shape`, row-major). */
  writeLowPrecision(w: LowPrecisionWeights, shape: number[]): tf.TensorInfo {
    // the storage keeps `values` as given and every reader of this backend recognises the wrapper (readSync,
    // read, TensorMemory.f32, the GEMM); tfjs types `values` as a TypedArray only
    const dataId = this.write(w as unknown as Float32Array, shape, 'float32');
    return { dataId, shape, dtype: 'float32' };
  }
}

/**
 * The addon's buffers for the pool (native/memory.c): outside V8's external-memory count and freed by the pool when
 * it drops them. With V8's own ArrayBuffers the collector ran a full GC per ~64 MB of new kernel outputs (about 240
 * in a SmolLM2-135M epoch), its marking thread taking a core from the kernels.
 */
function nativeAllocator(): BufferAllocator | undefined {
  const addon = loadNativeAddon();
  if (!addon || typeof addon.bufferAlloc !== 'function') return undefined;
  return { alloc: (n) => addon.bufferAlloc(n), free: (b) => addon.bufferFree(b), escape: (b) => addon.bufferEscape(b) };
}

/**
 * Re-store the frozen 2-D float32 variable `v` in `kind` (a new buffer; tensors that shared the old one keep
 * it). Only on the native backend; elsewhere nothing changes.
 * @returns true when `v` is now held in low precision
 */
export function storeInLowPrecision(v: tf.Variable, kind: LowPrecision): boolean {
  const backend = tf.backend();
  if (!(backend instanceof NativeBackend) || v.dtype !== 'float32' || v.shape.length !== 2) return false;
  if (backend.lowPrecision(v.dataId)) return true;
  const src = v.dataSync() as Float32Array;
  const [rows, cols] = v.shape as [number, number];
  let w: LowPrecisionWeights;
  if (kind === 'bfloat16') w = new LowPrecisionWeights(kind, toBfloat16(src), new Float32Array(0));
  else {
    const q = quantizeInt8(src, rows, cols);
    w = new LowPrecisionWeights(kind, q.data, q.scale);
  }
  const t = tf.engine().makeTensorFromTensorInfo(backend.writeLowPrecision(w, v.shape.slice()));
  v.assign(t);
  t.dispose();
  return true;
}

/** The most a training run's pool grows to when DPO_NATIVE_POOL_MB is not set (bytes). */
export const POOL_AUTO_MAX_BYTES = 8 * 2 ** 30;

/**
 * Size the native backend's buffer pool for a training run that has `spareBytes` beyond its memory estimate
 * (src/training/plan/memory.ts), when DPO_NATIVE_POOL_MB is not set: the pool may then hold up to that much
 * (at least the 1 GiB default, at most {@link POOL_AUTO_MAX_BYTES}), so what it keeps for reuse never takes
 * memory the estimate counted on. Larger pools measured faster on every bench:real row (8 GiB against 1 GiB:
 * epochs -4 to -18 %, peak RSS -1.2 to +1.6 GB; README "Performance").
 * @returns the pool's size in bytes, or null when the backend is not the native one or the size was set
 */
export function sizeNativePool(spareBytes: number): number | null {
  const backend = tf.backend();
  const settings = engineSettings();
  if (!(backend instanceof NativeBackend) || !settings.poolAuto) return null;
  const floor = settings.poolMb * 2 ** 20;
  const bytes = Math.max(floor, Math.min(POOL_AUTO_MAX_BYTES, Math.floor(Number.isFinite(spareBytes) ? spareBytes : 0)));
  backend.pool.resize(bytes);
  return bytes;
}

let registered = false;
/** Kernels of the native backend that are not tfjs-backend-cpu's JS ones. */
export const NATIVE_KERNELS = new Set<string>();

/** What the JS fallbacks (tfjs-backend-cpu kernels) did since the last reset, per kernel. */
export interface FallbackUse {
  calls: number;
  /** elements of their outputs (a measure of the per-element JS work done) */
  elements: number;
}
const fallbackCalls = new Map<string, FallbackUse>();
/** JS-fallback kernel use since the last reset (name -> calls, output elements); `reset` clears it. */
export function fallbackKernelCalls(reset = false): Map<string, FallbackUse> {
  const copy = new Map([...fallbackCalls].map(([k, v]) => [k, { ...v }]));
  if (reset) fallbackCalls.clear();
  return copy;
}

/**
 * Register the `native` backend with tfjs (idempotent): every tfjs-backend-cpu kernel under the new name
 * (counted when it runs), then the native kernels over them.
 * @returns false (and registers nothing) when the native addon cannot be loaded (see nativeStatus)
 */
export function registerNativeBackend(): boolean {
  if (registered) return true;
  const addon = loadNativeAddon();
  if (!addon) return false;
  tf.registerBackend(NATIVE_BACKEND, () => new NativeBackend(), 0);
  const fallbacks = new WeakSet<tf.KernelFunc>();
  for (const k of tf.getKernelsForBackend('cpu')) {
    const name = k.kernelName;
    const fn = k.kernelFunc;
    const counted: tf.KernelFunc = (p) => {
      const out = fn(p);
      const use = fallbackCalls.get(name) ?? { calls: 0, elements: 0 };
      use.calls += 1;
      for (const o of Array.isArray(out) ? out : [out]) use.elements += o.shape.reduce((a, c) => a * c, 1);
      fallbackCalls.set(name, use);
      return out;
    };
    fallbacks.add(counted);
    tf.registerKernel({ ...k, backendName: NATIVE_BACKEND, kernelFunc: counted });
  }
  registerWasmKernels(NATIVE_BACKEND); // Slice, Unpack, GatherV2, Identity: typed-array data movement
  registerNativeMatmul(NATIVE_BACKEND);
  registerFusedKernels(NATIVE_BACKEND);
  registerTensorKernels(addon, NATIVE_BACKEND);
  for (const k of tf.getKernelsForBackend(NATIVE_BACKEND)) if (!fallbacks.has(k.kernelFunc)) NATIVE_KERNELS.add(k.kernelName);
  registered = true;
  return true;
}

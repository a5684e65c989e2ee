/**
 * Typed tfjs kernels: each kernel is declared once with its input names and attribute types
 * ({@link defineKernel}), registered for a backend with a body that sees those types, and run through the
 * same declaration, so a caller and its kernel cannot disagree on names or attributes. {@link tensorMemory}
 * gives a body the backend's tensor memory without copies (the wasm heap, or the TypedArrays of the
 * `native` backend, native-backend.ts).
 *
 * The engine's fused kernels (AdamW, softmax + log-sum-exp, causal attention with RoPE, RMSNorm, SwiGLU)
 * are declared and registered here on top of the addon (addon.ts); the formulas are in the C sources.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type NativeAddon, loadNativeAddon } from './addon.js';
import { LowPrecisionWeights } from './lowp.js';
import { engineSettings } from './settings.js';

/** The parts of a backend's tensor memory a kernel body uses. */
export interface TensorMemory {
  /** The float32 data of `t` in place (no copy); an empty array for an absent tensor. */
  f32(t: tf.TensorInfo | undefined): Float32Array;
  /** The int32 data of `t` in place (no copy). */
  i32(t: tf.TensorInfo): Int32Array;
  /** The data of a numeric tensor `t` in place, whatever its dtype (float32, int32, bool as bytes). */
  data(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  /** A new output tensor of `shape` (contents unspecified until the kernel writes them). */
  out(shape: number[], dtype?: tf.DataType): tf.TensorInfo;
  /** The low-precision storage of a frozen weight `t` (lowp.ts), or null. */
  lowp(t: tf.TensorInfo): LowPrecisionWeights | null;
  /** A new reference to `t`'s buffer (an output that shares its input's data; tensors are immutable). */
  share(t: tf.TensorInfo, shape?: number[]): tf.TensorInfo;
}

/** tfjs-backend-wasm's BackendWasm, as far as kernels use it (the package exports no types for these). */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  incRef(dataId: tf.DataId): void;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** tfjs-backend-cpu's MathBackendCPU (and the native backend derived from it), as far as kernels use it. */
export interface TypedArrayBackendLike {
  data: { get(dataId: tf.DataId): { values?: unknown } | undefined };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: Float32Array | Int32Array | Uint8Array): tf.TensorInfo;
  incRef(dataId: tf.DataId): void;
  /** A float32 output buffer of `n` elements, contents unspecified (the native backend's pool); absent: a new array. */
  allocFloat32?(n: number): Float32Array;
}

const EMPTY_F32 = new Float32Array(0);
const EMPTY_I32 = new Int32Array(0);

/**
 * The tensor memory of `backend`, registered under `backendName`. On wasm, views are taken after outputs are
 * made (an allocation may grow, and so replace, the heap): bodies make their outputs first.
 * @throws TypeError when a tensor's data is not of the asked type (a kernel called with the wrong dtype)
 */
export function tensorMemory(backend: unknown, backendName: string): TensorMemory {
  if (backendName === 'wasm') {
    const b = backend as WasmBackendLike;
    return {
      f32: (t) => (t ? (b.typedArrayFromHeap(t) as Float32Array) : EMPTY_F32),
      i32: (t) => b.typedArrayFromHeap(t) as Int32Array,
      data: (t) => b.typedArrayFromHeap(t),
      lowp: () => null,
      out: (shape, dtype = 'float32') => b.makeOutput(shape, dtype),
      share: (t, shape) => {
        b.incRef(t.dataId);
        return { dataId: t.dataId, shape: (shape ?? t.shape).slice(), dtype: t.dtype };
      },
    };
  }
  const b = backend as TypedArrayBackendLike;
  const values = (t: tf.TensorInfo): unknown => b.data.get(t.dataId)?.values;
  return {
    f32: (t) => {
      if (!t) return EMPTY_F32;
      const v = values(t);
      if (v instanceof Float32Array) return v;
      if (v instanceof LowPrecisionWeights) return v.decode(); // a frozen weight read by a kernel other than the GEMM
      // tfjs-backend-cpu's lossless casts (int32/bool -> float32) share the source buffer under the new
      // dtype: widen it once, in the storage, so later kernels read float32 in place
      if (t.dtype === 'float32' && (v instanceof Int32Array || v instanceof Uint8Array)) {
        const f = Float32Array.from(v);
        const entry = b.data.get(t.dataId);
        if (entry) entry.values = f;
        return f;
      }
      throw new TypeError(`kernel input of dtype ${t.dtype} is not float32 data`);
    },
    i32: (t) => {
      const v = values(t);
      if (!(v instanceof Int32Array)) throw new TypeError(`kernel input of dtype ${t.dtype} is not int32 data`);
      return v;
    },
    lowp: (t) => {
      const v = values(t);
      return v instanceof LowPrecisionWeights ? v : null;
    },
    data: (t) => {
      const v = values(t);
      if (v instanceof LowPrecisionWeights) return v.decode();
      if (!(v instanceof Float32Array || v instanceof Int32Array || v instanceof Uint8Array))
        throw new TypeError(`kernel input of dtype ${t.dtype} is not numeric data`);
      return v;
    },
    out: (shape, dtype = 'float32') => {
      const n = shape.reduce((a, c) => a * c, 1);
      const buf = dtype === 'int32' ? new Int32Array(n) : dtype === 'bool' ? new Uint8Array(n) : (b.allocFloat32?.(n) ?? new Float32Array(n));
      return b.makeTensorInfo(shape, dtype, buf);
    },
    share: (t, shape) => {
      b.incRef(t.dataId);
      return { dataId: t.dataId, shape: (shape ?? t.shape).slice(), dtype: t.dtype };
    },
  };
}

/** What a typed kernel body receives. */
export interface KernelBodyArgs<In, Attrs> {
  inputs: In;
  attrs: Attrs;
  mem: TensorMemory;
  /** the backend object (for calling its other kernels) */
  backend: unknown;
  /** the untyped call, to hand on unchanged to a stock kernel */
  raw: Parameters<tf.KernelFunc>[0];
}

/** A kernel body: outputs in order. */
export type KernelBody<In, Attrs> = (args: KernelBodyArgs<In, Attrs>) => tf.TensorInfo | tf.TensorInfo[];

/** The TensorInfo view of a kernel's declared tensor inputs (optional inputs stay optional). */
export type TensorInfos<In> = { [K in keyof In]: undefined extends In[K] ? tf.TensorInfo | undefined : tf.TensorInfo };

/**
 * The one place where typed kernels meet tfjs's untyped kernel registry. tfjs declares every kernel as
 * `(params: {inputs: NamedTensorInfoMap; attrs?: NamedAttrMap; backend}) => ...` and every call as
 * `runKernel(name, NamedTensorMap, NamedAttrMap)`; a kernel's own input and attribute interfaces are not
 * assignable to those index-signature maps. Registration and invocation go through the same
 * {@link KernelDef} (and an override names the stock kernel's documented inputs and attributes), so the
 * shape the body reads is the shape the caller wrote: these casts only forget and recover that shared type
 * across the registry.
 */
const boundary = {
  kernelFunc<In, Attrs>(backendName: string, body: KernelBody<In, Attrs>): tf.KernelFunc {
    const f = (p: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap; backend: unknown }): tf.TensorInfo | tf.TensorInfo[] =>
      body({
        inputs: p.inputs as unknown as In,
        attrs: (p.attrs ?? {}) as unknown as Attrs,
        mem: tensorMemory(p.backend, backendName),
        backend: p.backend,
        raw: p as Parameters<tf.KernelFunc>[0],
      });
    return f as tf.KernelFunc;
  },
  run<In, Attrs>(name: string, inputs: In, attrs: Attrs): tf.Tensor[] {
    const out = tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap);
    return Array.isArray(out) ? (out as tf.Tensor[]) : [out as tf.Tensor];
  },
};

/** A kernel declared with its inputs `In` (tensors by name) and attributes `Attrs`. */
export interface KernelDef<In extends object, Attrs extends object> {
  readonly name: string;
  /** Register `body` as this kernel on `backendName` (replacing any kernel of that name there). */
  register(backendName: string, body: KernelBody<TensorInfos<In>, Attrs>): void;
  /** Run the kernel on the current backend; outputs in the body's order. */
  run(inputs: In, attrs: Attrs): tf.Tensor[];
}

/**
 * Declare a kernel `name` with inputs `In` (an object of tensors; optional keys for optional inputs) and
 * attributes `Attrs`.
 */
export function defineKernel<In extends object, Attrs extends object>(name: string): KernelDef<In, Attrs> {
  return {
    name,
    register(backendName, body) {
      if (tf.getKernel(name, backendName)) tf.unregisterKernel(name, backendName);
      tf.registerKernel({ kernelName: name, backendName, kernelFunc: boundary.kernelFunc(backendName, body) });
    },
    run: (inputs, attrs) => boundary.run(name, inputs, attrs),
  };
}

/**
 * Replace tfjs's own kernel `kernelName` on `backendName` with a typed body (inputs `In` and attributes
 * `Attrs` as tfjs documents that kernel); the body gets the stock kernel (or null when the backend had
 * none) to delegate the cases it does not handle, with `args.raw`.
 * @returns the stock kernel's config, or null
 */
export function overrideKernel<In, Attrs>(
  kernelName: string,
  backendName: string,
  body: (args: KernelBodyArgs<In, Attrs>, stock: tf.KernelFunc | null) => tf.TensorInfo | tf.TensorInfo[],
): tf.KernelConfig | null {
  const stock = tf.getKernel(kernelName, backendName) ?? null;
  if (stock) tf.unregisterKernel(kernelName, backendName);
  const stockFn = stock ? stock.kernelFunc : null;
  tf.registerKernel({ kernelName, backendName, kernelFunc: boundary.kernelFunc<In, Attrs>(backendName, (a) => body(a, stockFn)) });
  return stock ? { ...stock } : null;
}

// ---------------------------------------------------------------------------------------------------------
// the engine's fused kernels

/** Attributes of the fused AdamW kernel (optim.ts has the formula). */
export interface AdamWAttrs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step t */
  step: number;
}
/** Fused AdamW: p, g, m, v (one shape) -> p', m', v'. */
export const ADAMW = defineKernel<{ p: tf.Tensor; g: tf.Tensor; m: tf.Tensor; v: tf.Tensor }, AdamWAttrs>('DpoFusedAdamW');

/** Row softmax and log-sum-exp: x `[n, V]` -> p `[n, V]`, lse `[n]`. */
export const SOFTMAX_LSE = defineKernel<{ x: tf.Tensor }, Record<string, never>>('DpoSoftmaxLse');

/** Attributes of the fused attention kernels: batch, sequence, query heads, key/value heads, head dim, scale. */
export interface AttentionAttrs {
  B: number;
  T: number;
  H: number;
  KV: number;
  hd: number;
  scale: number;
  /** cos/sin are per token `[B*T, hd]` (packed sequences' position ids) instead of `[T, hd]`. */
  ropeRows?: boolean;
}
/**
 * Fused causal attention with RoPE, forward (native/attention.c): q `[B*T, H*hd]`, k, v `[B*T, KV*hd]`,
 * optional cos, sin `[T, hd]` (or `[B*T, hd]` with ropeRows), optional int32 mask `[3, B*T]` (rows a, b, c:
 * key j visible from query row b*T + i iff c <= j <= i or a <= j < b; packed sequences) -> o `[B*T, H*hd]`, qr (scaled, rotated queries), kr (rotated keys), lse `[B*H*T]`.
 */
export const ATTENTION_FWD = defineKernel<{ q: tf.Tensor; k: tf.Tensor; v: tf.Tensor; cos?: tf.Tensor; sin?: tf.Tensor; mask?: tf.Tensor }, AttentionAttrs>(
  'DpoAttentionFwd',
);
/** Its backward: dy, qr, kr, v, o, lse, optional cos, sin -> dq, dk, dv. */
export const ATTENTION_BWD = defineKernel<
  { dy: tf.Tensor; qr: tf.Tensor; kr: tf.Tensor; v: tf.Tensor; o: tf.Tensor; lse: tf.Tensor; cos?: tf.Tensor; sin?: tf.Tensor; mask?: tf.Tensor },
  AttentionAttrs
>('DpoAttentionBwd');

/** RMSNorm forward: x `[N, D]`, w `[D]` -> y `[N, D]`, r `[N]` (inverse RMS of each row). */
export const RMSNORM_FWD = defineKernel<{ x: tf.Tensor; w: tf.Tensor }, { eps: number }>('DpoRmsNormFwd');
/** RMSNorm backward: dy, x, w, r -> dx `[N, D]`, dw `[D]`. */
export const RMSNORM_BWD = defineKernel<{ dy: tf.Tensor; x: tf.Tensor; w: tf.Tensor; r: tf.Tensor }, Record<string, never>>('DpoRmsNormBwd');
/** SwiGLU forward: a, b (one shape) -> silu(a) b. */
export const SWIGLU_FWD = defineKernel<{ a: tf.Tensor; b: tf.Tensor }, Record<string, never>>('DpoSwigluFwd');
/** SwiGLU backward: dy, a, b -> da, db. */
export const SWIGLU_BWD = defineKernel<{ dy: tf.Tensor; a: tf.Tensor; b: tf.Tensor }, Record<string, never>>('DpoSwigluBwd');

const registeredOn = new Set<string>();

/** Register the fused kernels above for `backendName` (wasm or native) on the addon `g`. */
function registerFused(g: NativeAddon, backendName: string): void {
  const threads = engineSettings().nativeThreads;
  ADAMW.register(backendName, ({ inputs: { p, g: gr, m, v }, attrs: a, mem }) => {
    const outs = [mem.out(p.shape.slice()), mem.out(m.shape.slice()), mem.out(v.shape.slice())] as const;
    g.adamw(
      mem.f32(p),
      mem.f32(gr),
      mem.f32(m),
      mem.f32(v),
      mem.f32(outs[0]),
      mem.f32(outs[1]),
      mem.f32(outs[2]),
      a.lr,
      a.beta1,
      a.beta2,
      a.eps,
      a.weightDecay,
      a.step,
      threads,
    );
    return [...outs];
  });
  SOFTMAX_LSE.register(backendName, ({ inputs: { x }, mem }) => {
    const [n, V] = x.shape as [number, number];
    const p = mem.out([n, V]);
    const l = mem.out([n]);
    g.softmaxLse(mem.f32(x), mem.f32(p), mem.f32(l), n, V, threads);
    return [p, l];
  });
  ATTENTION_FWD.register(backendName, ({ inputs: { q, k, v, cos, sin, mask }, attrs: a, mem }) => {
    const [o, qr, kr, lse] = [mem.out(q.shape.slice()), mem.out(q.shape.slice()), mem.out(k.shape.slice()), mem.out([a.B * a.H * a.T])] as const;
    g.attentionFwd(
      mem.f32(q),
      mem.f32(k),
      mem.f32(v),
      mem.f32(cos),
      mem.f32(sin),
      mem.f32(o),
      mem.f32(qr),
      mem.f32(kr),
      mem.f32(lse),
      a.B,
      a.T,
      a.H,
      a.KV,
      a.hd,
      a.scale,
      threads,
      mask ? mem.i32(mask) : EMPTY_I32,
      a.ropeRows ? 1 : 0,
    );
    return [o, qr, kr, lse];
  });
  ATTENTION_BWD.register(backendName, ({ inputs: { dy, qr, kr, v, o, lse, cos, sin, mask }, attrs: a, mem }) => {
    const [dq, dk, dv] = [mem.out(qr.shape.slice()), mem.out(kr.shape.slice()), mem.out(v.shape.slice())] as const;
    g.attentionBwd(
      mem.f32(dy),
      mem.f32(qr),
      mem.f32(kr),
      mem.f32(v),
      mem.f32(o),
      mem.f32(lse),
      mem.f32(cos),
      mem.f32(sin),
      mem.f32(dq),
      mem.f32(dk),
      mem.f32(dv),
      a.B,
      a.T,
      a.H,
      a.KV,
      a.hd,
      a.scale,
      threads,
      mask ? mem.i32(mask) : EMPTY_I32,
      a.ropeRows ? 1 : 0,
    );
    return [dq, dk, dv];
  });
  RMSNORM_FWD.register(backendName, ({ inputs: { x, w }, attrs, mem }) => {
    const [N, D] = x.shape as [number, number];
    const y = mem.out([N, D]);
    const r = mem.out([N]);
    g.rmsNormFwd(mem.f32(x), mem.f32(w), mem.f32(y), mem.f32(r), N, D, attrs.eps, threads);
    return [y, r];
  });
  RMSNORM_BWD.register(backendName, ({ inputs: { dy, x, w, r }, mem }) => {
    const [N, D] = x.shape as [number, number];
    const dx = mem.out([N, D]);
    const dw = mem.out([D]);
    g.rmsNormBwd(mem.f32(dy), mem.f32(x), mem.f32(w), mem.f32(r), mem.f32(dx), mem.f32(dw), N, D, threads);
    return [dx, dw];
  });
  SWIGLU_FWD.register(backendName, ({ inputs: { a, b }, mem }) => {
    const y = mem.out(a.shape.slice());
    g.swigluFwd(mem.f32(a), mem.f32(b), mem.f32(y), threads);
    return [y];
  });
  SWIGLU_BWD.register(backendName, ({ inputs: { dy, a, b }, mem }) => {
    const da = mem.out(a.shape.slice());
    const db = mem.out(a.shape.slice());
    g.swigluBwd(mem.f32(dy), mem.f32(a), mem.f32(b), mem.f32(da), mem.f32(db), threads);
    return [da, db];
  });
}

/**
 * Register the engine's fused kernels for `backendName` once per process, when the addon loads.
 * @returns true when they are registered there
 */
export function registerFusedKernels(backendName: string): boolean {
  if (registeredOn.has(backendName)) return true;
  const g = loadNativeAddon();
  if (!g) return false;
  registerFused(g, backendName);
  registeredOn.add(backendName);
  return true;
}

/** true when the fused kernels are registered for the current tfjs backend. */
export function fusedKernelsActive(): boolean {
  return registeredOn.has(tf.getBackend());
}

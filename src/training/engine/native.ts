/**
 * Native kernels for the wasm backend, built as one Node-API addon (native/addon.c) with the system C
 * compiler on first use: a small SGEMM (native/gemm.c, packed panels + an FMA register-blocked
 * micro-kernel, pthreads over both cores) registered as the wasm backend's `BatchMatMul` kernel, a fused
 * AdamW, a row softmax with log-sum-exp, and a fused causal attention with RoPE (native/attention.c). It reads and writes the
 * tensors in place in the wasm heap (no copies) and handles transposed operands in its packing, so every
 * matmul form (NN, NT, TN, batched) runs at the same speed.
 *
 * Measured on the 2-core build machine (AVX-512): 73-97 GFLOP/s on one thread, 155-175 GFLOP/s on two,
 * for the LM-head and MLP shapes of stories15M; XNNPACK in tfjs-wasm reaches 15-30 GFLOP/s (one thread) on
 * the same shapes and 1-3 GFLOP/s for the transposed/batched forms.
 *
 * Optional by design: when there is no C compiler, no Node headers, or `DPO_NATIVE=0`, nothing is
 * registered and the stock XNNPACK kernel runs (same values up to float32 summation order).
 * Build: `cc -O3 -march=native -shared -fPIC -pthread -I<node include> addon.c` into a cache directory
 * (env `DPO_NATIVE_CACHE`, default `<os tmpdir>/dpo-native`), keyed by a hash of the sources, the Node
 * version and the CPU model; concurrent processes build to temporary names and rename atomically.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';

export interface NativeGemm {
  /** C = op(A) op(B) for `batch` products (element strides between them; stride 0 broadcasts). */
  sgemm(
    A: Float32Array,
    B: Float32Array,
    C: Float32Array,
    M: number,
    K: number,
    N: number,
    transA: number,
    transB: number,
    threads: number,
    batch: number,
    strideA: number,
    strideB: number,
    strideC: number,
  ): void;
  /** Fused AdamW, out of place (see optim.c). */
  adamw(
    p: Float32Array,
    g: Float32Array,
    m: Float32Array,
    v: Float32Array,
    pOut: Float32Array,
    mOut: Float32Array,
    vOut: Float32Array,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
  ): void;
  /** Row softmax P of X `[n, V]` and row log-sum-exp L `[n]` in one pass pair (see softmax.c). */
  softmaxLse(X: Float32Array, P: Float32Array, L: Float32Array, n: number, V: number, threads: number): void;
  /** Fused causal attention with RoPE, forward (see attention.c); cos/sin empty for no rotary embedding. */
  attentionFwd(
    Q: Float32Array,
    K: Float32Array,
    V: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    O: Float32Array,
    Qr: Float32Array,
    Kr: Float32Array,
    L: Float32Array,
    B: number,
    T: number,
    H: number,
    KV: number,
    hd: number,
    scale: number,
    threads: number,
  ): void;
  /** RMSNorm forward: y = w x r, r `[N]` = (mean(x^2) + eps)^-1/2 (see elementwise.c). */
  rmsNormFwd(x: Float32Array, w: Float32Array, y: Float32Array, r: Float32Array, N: number, D: number, eps: number, threads: number): void;
  /** RMSNorm backward: dx `[N, D]`, dw `[D]` (see elementwise.c). */
  rmsNormBwd(
    g: Float32Array,
    x: Float32Array,
    w: Float32Array,
    r: Float32Array,
    dx: Float32Array,
    dw: Float32Array,
    N: number,
    D: number,
    threads: number,
  ): void;
  /** SwiGLU forward y = silu(a) b (see elementwise.c). */
  swigluFwd(a: Float32Array, b: Float32Array, y: Float32Array, threads: number): void;
  /** SwiGLU backward (see elementwise.c). */
  swigluBwd(g: Float32Array, a: Float32Array, b: Float32Array, da: Float32Array, db: Float32Array, threads: number): void;
  /** Its backward pass (see attention.c). */
  attentionBwd(
    dO: Float32Array,
    Qr: Float32Array,
    Kr: Float32Array,
    V: Float32Array,
    O: Float32Array,
    L: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    dQ: Float32Array,
    dK: Float32Array,
    dV: Float32Array,
    B: number,
    T: number,
    H: number,
    KV: number,
    hd: number,
    scale: number,
    threads: number,
  ): void;
}

export interface NativeStatus {
  /** true when the addon is loaded. */
  available: boolean;
  /** where it was loaded from, or why not. */
  detail: string;
}

let loaded: NativeGemm | null = null;
let status: NativeStatus = { available: false, detail: 'not tried' };
let tried = false;

function sourcePath(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const cands = [path.join(here, 'native', 'addon.c')];
  // compiled to dist/: look for the source tree beside it
  let dir = here;
  for (let i = 0; i < 6; i++) {
    cands.push(path.join(dir, 'src', 'training', 'engine', 'native', 'addon.c'));
    dir = path.dirname(dir);
  }
  return cands.find((c) => fs.existsSync(c)) ?? null;
}

/**
 * Build (if needed) and load the native GEMM addon once per process.
 * @returns the addon, or null (see {@link nativeStatus} for why)
 */
export function loadNativeGemm(): NativeGemm | null {
  if (tried) return loaded;
  tried = true;
  if (process.env.DPO_NATIVE === '0') {
    status = { available: false, detail: 'disabled by DPO_NATIVE=0' };
    return null;
  }
  if (process.arch !== 'x64' && process.arch !== 'arm64') {
    status = { available: false, detail: `unsupported arch ${process.arch}` };
    return null;
  }
  try {
    const src = sourcePath();
    if (!src) throw new Error('native/addon.c not found');
    const include = [path.join(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'].find((d) =>
      fs.existsSync(path.join(d, 'node_api.h')),
    );
    if (!include) throw new Error('Node headers (node_api.h) not found');
    // every source of the one translation unit (addon.c includes the others)
    const srcDir = path.dirname(src);
    const hash = createHash('sha256');
    for (const f of fs
      .readdirSync(srcDir)
      .filter((n) => /\.[ch]$/.test(n))
      .sort())
      hash.update(f).update(fs.readFileSync(path.join(srcDir, f)));
    const key = hash
      .update(process.version)
      .update(os.cpus()[0]?.model ?? '')
      .update(process.arch)
      .digest('hex')
      .slice(0, 16);
    const cacheDir = process.env.DPO_NATIVE_CACHE ?? path.join(os.tmpdir(), 'dpo-native');
    fs.mkdirSync(cacheDir, { recursive: true });
    const out = path.join(cacheDir, `kernels-${key}.node`);
    if (!fs.existsSync(out)) {
      const cc = process.env.CC ?? 'cc';
      const tmp = `${out}.${process.pid}.${Date.now()}.tmp`;
      const r = spawnSync(
        cc,
        ['-O3', '-march=native', '-ffp-contract=fast', '-shared', '-fPIC', '-pthread', '-DNODE_GYP_MODULE_NAME=gemm', `-I${include}`, src, '-o', tmp],
        { encoding: 'utf8' },
      );
      if (r.error || r.status !== 0) {
        try {
          fs.rmSync(tmp, { force: true });
        } catch {
          /* ignore */
        }
        throw new Error(`${cc} failed: ${r.error?.message ?? r.stderr.slice(0, 500)}`);
      }
      fs.renameSync(tmp, out);
    }
    const req = createRequire(import.meta.url);
    loaded = req(out) as NativeGemm;
    if (process.env.DPO_NATIVE_PROFILE === '1') loaded = profiled(loaded);
    status = { available: true, detail: out };
  } catch (e) {
    loaded = null;
    status = { available: false, detail: (e as Error).message };
  }
  return loaded;
}

const profile = new Map<string, { ms: number; calls: number }>();

/** The addon with every function timed into {@link nativeProfile} (env DPO_NATIVE_PROFILE=1). */
function profiled(addon: NativeGemm): NativeGemm {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(addon as unknown as Record<string, (...a: unknown[]) => unknown>)) {
    out[name] = (...args: unknown[]): unknown => {
      const key = name === 'sgemm' ? `sgemm ${args[3]}x${args[4]}x${args[5]} ${args[6] ? 'T' : 'N'}${args[7] ? 'T' : 'N'} b${args[9]}` : name;
      const t0 = performance.now();
      const r = fn(...args);
      const e = profile.get(key) ?? { ms: 0, calls: 0 };
      e.ms += performance.now() - t0;
      e.calls += 1;
      profile.set(key, e);
      return r;
    };
  }
  return out as unknown as NativeGemm;
}

/**
 * Wall time spent in each native function (sgemm by shape) since the last reset, when the process started
 * with DPO_NATIVE_PROFILE=1 (else empty). For bench/profile-step.ts.
 */
export function nativeProfile(reset = false): Map<string, { ms: number; calls: number }> {
  const copy = new Map(profile);
  if (reset) profile.clear();
  return copy;
}

/** Whether the native GEMM is loaded, and from where (or why not). */
export function nativeStatus(): NativeStatus {
  return status;
}

// ---------------------------------------------------------------------------------------------------------
// the wasm kernel

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

let registeredOn: string | null = null;
let stockKernel: tf.KernelConfig | null = null;
let nativeKernel: tf.KernelConfig | null = null;
let threads = Math.max(1, Math.floor(Number(process.env.DPO_NATIVE_THREADS) || os.cpus().length));

/** Threads the native GEMM uses for large products (default: the number of CPU cores). */
export function setNativeThreads(n: number): void {
  threads = Math.max(1, Math.floor(n));
}

/** true when the wasm backend's BatchMatMul is the native one (ops pick matmul forms by this). */
export function nativeMatmulActive(): boolean {
  return registeredOn !== null && tf.getBackend() === registeredOn;
}

/**
 * Register the native GEMM as the `BatchMatMul` kernel of the wasm backend (idempotent). Products it cannot
 * take (non-float32, batch shapes that do not broadcast simply) go to the stock kernel.
 * @returns true when registered
 */
export function registerNativeMatmul(): boolean {
  if (nativeKernel) return useNativeMatmul(true);
  const g = loadNativeGemm();
  if (!g) return false;
  const stock = tf.getKernel('BatchMatMul', 'wasm');
  if (!stock) return false;
  const kernelFunc = (args: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap; backend: unknown }): tf.TensorInfo => {
    const a = args.inputs.a as tf.TensorInfo;
    const b = args.inputs.b as tf.TensorInfo;
    const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    const ra = a.shape.length;
    const rb = b.shape.length;
    const fallback = (): tf.TensorInfo => stock.kernelFunc(args as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
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
    const backend = args.backend as WasmBackendLike;
    const out = backend.makeOutput([...outBatch, M, N], 'float32');
    if (M * N === 0) return out;
    const ov = backend.typedArrayFromHeap(out) as Float32Array;
    const av = backend.typedArrayFromHeap(a) as Float32Array;
    const bv = backend.typedArrayFromHeap(b) as Float32Array;
    g.sgemm(av, bv, ov, M, K, N, transposeA ? 1 : 0, transposeB ? 1 : 0, threads, batch, nA === 1 ? 0 : M * K, nB === 1 ? 0 : K * N, M * N);
    return out;
  };
  stockKernel = stock;
  nativeKernel = { kernelName: 'BatchMatMul', backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel(nativeKernel);
  registeredOn = 'wasm';
  return true;
}

/**
 * Switch the wasm backend's BatchMatMul between the native GEMM and the stock XNNPACK kernel (after
 * {@link registerNativeMatmul}); for A/B measurements and tests.
 * @returns whether the native kernel is now in use
 */
export function useNativeMatmul(on: boolean): boolean {
  if (!stockKernel || !nativeKernel) return false;
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel(on ? nativeKernel : stockKernel);
  registeredOn = on ? 'wasm' : null;
  return on;
}

/** Name of the fused AdamW kernel registered for the wasm backend when the native addon is loaded. */
export const ADAMW_KERNEL = 'DpoFusedAdamW';

/** What a native wasm kernel body gets: its inputs, attributes, the backend, and float32 heap views. */
interface KernelCtx {
  inputs: Record<string, tf.TensorInfo | undefined>;
  attrs: tf.NamedAttrMap;
  /** a Float32Array view of a tensor in the wasm heap (no copy); an empty array for an absent input */
  view(t: tf.TensorInfo | undefined): Float32Array;
  /** a new float32 output of the given shape */
  out(shape: number[]): tf.TensorInfo;
}

const emptyView = new Float32Array(0);

/** Register `body` as the wasm backend's kernel `kernelName` (outputs in order). */
function registerWasmKernel(kernelName: string, body: (k: KernelCtx) => tf.TensorInfo[]): void {
  const kernelFunc = (args: { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap; backend: unknown }): tf.TensorInfo[] => {
    const backend = args.backend as WasmBackendLike;
    return body({
      inputs: args.inputs as Record<string, tf.TensorInfo | undefined>,
      attrs: args.attrs ?? {},
      view: (t) => (t ? (backend.typedArrayFromHeap(t) as Float32Array) : emptyView),
      out: (shape) => backend.makeOutput(shape, 'float32'),
    });
  };
  tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}

const registeredGroups = new Set<string>();

/**
 * Run `register` once per process for the kernel group whose addon entry is `probe`, when the addon is
 * loaded and has that entry (an addon built from older sources may not).
 * @returns true when the group's kernels are registered
 */
function registerOnce(probe: keyof NativeGemm, register: (g: NativeGemm) => void): boolean {
  if (registeredGroups.has(probe)) return true;
  const g = loadNativeGemm();
  if (!g || typeof g[probe] !== 'function') return false;
  register(g);
  registeredGroups.add(probe);
  return true;
}

/**
 * Register the fused AdamW kernel (inputs p, g, m, v; outputs p', m', v'; attrs lr, beta1, beta2, eps,
 * weightDecay, step) for the wasm backend. Idempotent.
 * @returns true when the kernel is available
 */
export function registerNativeAdamW(): boolean {
  return registerOnce('adamw', (g) => {
    registerWasmKernel(ADAMW_KERNEL, ({ inputs: { p, g: gr, m, v }, attrs, view, out }) => {
      const at = attrs as unknown as { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number };
      const outs = [p!, m!, v!].map((t) => out(t.shape.slice()));
      g.adamw(view(p), view(gr), view(m), view(v), view(outs[0]), view(outs[1]), view(outs[2]), at.lr, at.beta1, at.beta2, at.eps, at.weightDecay, at.step);
      return outs;
    });
  });
}

/** Name of the fused softmax + logsumexp kernel registered for the wasm backend with the native addon. */
export const SOFTMAX_LSE_KERNEL = 'DpoSoftmaxLse';

/**
 * Register the fused row softmax + log-sum-exp kernel (input x `[n, V]`; outputs p `[n, V]`, lse `[n]`) for
 * the wasm backend. Idempotent.
 * @returns true when the kernel is available
 */
export function registerNativeSoftmaxLse(): boolean {
  return registerOnce('softmaxLse', (g) => {
    registerWasmKernel(SOFTMAX_LSE_KERNEL, ({ inputs: { x }, view, out }) => {
      const [n, V] = x!.shape as [number, number];
      const p = out([n, V]);
      const l = out([n]);
      g.softmaxLse(view(x), view(p), view(l), n, V, threads);
      return [p, l];
    });
  });
}

/**
 * Row softmax and log-sum-exp of logits `[n, V]`: the native fused kernel on wasm when the addon is loaded
 * and the native matmul is active, else tfjs ops (softmax, and lse = max - log(max p)).
 * @returns p `[n, V]` and lse `[n, 1]`
 */
export function softmaxWithLse(logits: tf.Tensor2D): { p: tf.Tensor2D; lse: tf.Tensor2D } {
  const [n] = logits.shape;
  if (nativeMatmulActive() && registerNativeSoftmaxLse()) {
    const [p, l] = tf.engine().runKernel(SOFTMAX_LSE_KERNEL, { x: logits }, {}) as tf.Tensor[];
    return { p: p as tf.Tensor2D, lse: tf.reshape(l!, [n, 1]) as tf.Tensor2D };
  }
  const p = tf.softmax(logits, -1) as tf.Tensor2D;
  // max(p) = exp(max - lse) >= 1/V: never underflows
  const lse = tf.sub(tf.max(logits, -1, true), tf.log(tf.max(p, -1, true))) as tf.Tensor2D;
  return { p, lse };
}

/** Names of the fused attention kernels registered for the wasm backend with the native addon. */
export const ATTENTION_FWD_KERNEL = 'DpoAttentionFwd';
export const ATTENTION_BWD_KERNEL = 'DpoAttentionBwd';

/** Attributes of the fused attention kernels (see {@link registerNativeAttention}). */
export interface AttentionAttrs {
  B: number;
  T: number;
  H: number;
  KV: number;
  hd: number;
  scale: number;
}

/**
 * Register the fused causal attention kernels for the wasm backend (idempotent; native/attention.c):
 * - `DpoAttentionFwd`: inputs q `[B*T, H*hd]`, k, v `[B*T, KV*hd]`, optional cos, sin `[T, hd]`; outputs o
 *   `[B*T, H*hd]`, qr (scaled, rotated queries, same shape), kr (rotated keys, shape of k), lse `[B*H*T]`;
 * - `DpoAttentionBwd`: inputs dy, qr, kr, v, o, lse, optional cos, sin; outputs dq, dk, dv.
 * Attributes {@link AttentionAttrs}.
 * @returns true when the kernels are available
 */
export function registerNativeAttention(): boolean {
  return registerOnce('attentionFwd', (g) => {
    registerWasmKernel(ATTENTION_FWD_KERNEL, ({ inputs: { q, k, v, cos, sin }, attrs, view, out }) => {
      const a = attrs as unknown as AttentionAttrs;
      const [o, qr, kr, lse] = [out(q!.shape.slice()), out(q!.shape.slice()), out(k!.shape.slice()), out([a.B * a.H * a.T])];
      g.attentionFwd(view(q), view(k), view(v), view(cos), view(sin), view(o), view(qr), view(kr), view(lse), a.B, a.T, a.H, a.KV, a.hd, a.scale, threads);
      return [o, qr, kr, lse];
    });
    registerWasmKernel(ATTENTION_BWD_KERNEL, ({ inputs: { dy, qr, kr, v, o, lse, cos, sin }, attrs, view, out }) => {
      const a = attrs as unknown as AttentionAttrs;
      const [dq, dk, dv] = [out(qr!.shape.slice()), out(kr!.shape.slice()), out(v!.shape.slice())];
      g.attentionBwd(
        view(dy),
        view(qr),
        view(kr),
        view(v),
        view(o),
        view(lse),
        view(cos),
        view(sin),
        view(dq),
        view(dk),
        view(dv),
        a.B,
        a.T,
        a.H,
        a.KV,
        a.hd,
        a.scale,
        threads,
      );
      return [dq, dk, dv];
    });
  });
}

/** Names of the fused RMSNorm / SwiGLU kernels registered for the wasm backend with the native addon. */
export const RMSNORM_FWD_KERNEL = 'DpoRmsNormFwd';
export const RMSNORM_BWD_KERNEL = 'DpoRmsNormBwd';
export const SWIGLU_FWD_KERNEL = 'DpoSwigluFwd';
export const SWIGLU_BWD_KERNEL = 'DpoSwigluBwd';

/**
 * Register the fused element-wise kernels for the wasm backend (idempotent; native/elementwise.c):
 * - `DpoRmsNormFwd`: x `[N, D]`, w `[D]`, attr eps -> y `[N, D]`, r `[N]` (the inverse RMS of each row);
 * - `DpoRmsNormBwd`: dy, x, w, r -> dx `[N, D]`, dw `[D]`;
 * - `DpoSwigluFwd`: a, b (one shape) -> silu(a) b;  `DpoSwigluBwd`: dy, a, b -> da, db.
 * @returns true when the kernels are available
 */
export function registerNativeElementwise(): boolean {
  return registerOnce('rmsNormFwd', (g) => {
    registerWasmKernel(RMSNORM_FWD_KERNEL, ({ inputs: { x, w }, attrs, view, out }) => {
      const [N, D] = x!.shape as [number, number];
      const y = out([N, D]);
      const r = out([N]);
      g.rmsNormFwd(view(x), view(w), view(y), view(r), N, D, Number(attrs.eps), threads);
      return [y, r];
    });
    registerWasmKernel(RMSNORM_BWD_KERNEL, ({ inputs: { dy, x, w, r }, view, out }) => {
      const [N, D] = x!.shape as [number, number];
      const dx = out([N, D]);
      const dw = out([D]);
      g.rmsNormBwd(view(dy), view(x), view(w), view(r), view(dx), view(dw), N, D, threads);
      return [dx, dw];
    });
    registerWasmKernel(SWIGLU_FWD_KERNEL, ({ inputs: { a, b }, view, out }) => {
      const y = out(a!.shape.slice());
      g.swigluFwd(view(a), view(b), view(y), threads);
      return [y];
    });
    registerWasmKernel(SWIGLU_BWD_KERNEL, ({ inputs: { dy, a, b }, view, out }) => {
      const da = out(a!.shape.slice());
      const db = out(a!.shape.slice());
      g.swigluBwd(view(dy), view(a), view(b), view(da), view(db), threads);
      return [da, db];
    });
  });
}

/**
 * The engine's native kernels as one Node-API addon (native/addon.c): compiled with the system C compiler on
 * first use, cached, loaded once per process, optionally profiled. The kernels themselves are registered
 * for tfjs backends by kernels.ts; this module only owns the shared library.
 *
 * Build: `cc -O3 -march=native -ffp-contract=fast -fno-math-errno -shared -fPIC -pthread -I<node include> addon.c` into the cache directory
 * (settings `cacheDir`, env `DPO_NATIVE_CACHE`), keyed by a hash of the sources, the flags, the Node version and the
 * CPU model; concurrent processes build to temporary names and rename atomically.
 *
 * Optional by design: with no C compiler, no Node headers, or `DPO_NATIVE=0`, {@link loadNativeAddon}
 * returns null and the engine runs on stock tfjs kernels (same values up to float32 summation order).
 * Measured on the 2-core build machine (AVX-512): the SGEMM reaches 73-97 GFLOP/s on one thread, 155-175
 * GFLOP/s on two, for the LM-head and MLP shapes of stories15M.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { engineSettings } from './settings.js';
import { repoRoot } from '../../config/paths.js';

/** The addon's functions (arguments as in the C sources; Float32Arrays are read and written in place). */
export interface NativeAddon {
  /** The pool's modes (see common.h): kernels below mtMflop million flops on one thread; idle spin time. */
  configure(mtMflop: number, spinUs: number): void;
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
  /**
   * C = op(A) op(B) for one product with B a frozen low-precision weight, widened in the packing (gemm.c):
   * btype 1: B bfloat16 (Uint16Array); btype 2: B int8 (Int8Array) times scale[stored column].
   */
  sgemmLowp(
    A: Float32Array,
    B: Uint16Array | Int8Array,
    scale: Float32Array,
    C: Float32Array,
    M: number,
    K: number,
    N: number,
    transA: number,
    transB: number,
    threads: number,
    btype: number,
  ): void;
  /** Fused AdamW, out of place, over `threads` of the pool (see optim.c). */
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
    threads?: number,
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
    mask?: Int32Array,
    ropeRows?: number,
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
  /** C = A op B with broadcasting by strides (0 broadcasts; last-axis strides 0 or 1); see tensor.c for op codes. */
  binary(op: number, A: Float32Array, B: Float32Array, C: Float32Array, shape: number[], aStrides: number[], bStrides: number[], threads: number): void;
  /** Y = f(X) element-wise (tensor.c op codes; alpha for the scale op). */
  unary(op: number, X: Float32Array, Y: Float32Array, alpha: number, threads: number): void;
  /** Y [outer, inner] = reduce over k of X [outer, n, inner] (tensor.c op codes). */
  reduce(op: number, X: Float32Array, Y: Float32Array, outer: number, n: number, inner: number, threads: number): void;
  /** Y = X with axes permuted (output axis d is input axis perm[d]). */
  transpose(X: Float32Array, Y: Float32Array, shape: number[], perm: number[], threads: number): void;
  /** out = 0, then slices of upd added at the flat offsets sum_d idx[i, d] strides[d] (ScatterNd). */
  /** An uninitialised, 64-byte aligned ArrayBuffer of `bytes` outside V8's external-memory count (memory.c). */
  bufferAlloc(bytes: number): ArrayBuffer;
  /** Detach and free a bufferAlloc buffer now; only for one nothing else can still see (not escaped). */
  bufferFree(buf: ArrayBuffer): void;
  /** A bufferAlloc buffer escaped its owner: back into V8's count (the garbage collector frees it). */
  bufferEscape(buf: ArrayBuffer): void;
  scatterAdd(idx: Int32Array, upd: Float32Array, out: Float32Array, n: number, depth: number, slice: number, strides: number[]): void;
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
    mask?: Int32Array,
    ropeRows?: number,
  ): void;
}

export interface NativeStatus {
  /** true when the addon is loaded. */
  available: boolean;
  /** where it was loaded from, or why not. */
  detail: string;
}

let loaded: NativeAddon | null = null;
let status: NativeStatus = { available: false, detail: 'not tried' };
let tried = false;

function sourcePath(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // beside this file under tsx; compiled to dist/: the source tree in the repository
  const cands = [path.join(here, 'native', 'addon.c'), path.join(repoRoot(), 'src', 'training', 'engine', 'native', 'addon.c')];
  return cands.find((c) => fs.existsSync(c)) ?? null;
}

/**
 * Build (if needed) and load the native addon once per process, configured from the engine settings.
 * @returns the addon, or null (see {@link nativeStatus} for why)
 * @throws EngineSettingsError when an engine environment variable is invalid
 */
export function loadNativeAddon(): NativeAddon | null {
  if (tried) return loaded;
  tried = true;
  const settings = engineSettings();
  if (!settings.native) {
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
    // -fno-math-errno: sqrtf without its errno branch, so loops calling it vectorise (AdamW); values unchanged
    const flags = ['-O3', '-march=native', '-ffp-contract=fast', '-fno-math-errno', '-shared', '-fPIC', '-pthread', '-DNODE_GYP_MODULE_NAME=gemm'];
    const key = hash
      .update(flags.join(' '))
      .update(process.version)
      .update(os.cpus()[0]?.model ?? '')
      .update(process.arch)
      .digest('hex')
      .slice(0, 16);
    const cacheDir = settings.cacheDir;
    fs.mkdirSync(cacheDir, { recursive: true });
    const out = path.join(cacheDir, `kernels-${key}.node`);
    if (!fs.existsSync(out)) {
      const cc = settings.cc;
      const tmp = `${out}.${process.pid}.${Date.now()}.tmp`;
      const r = spawnSync(cc, [...flags, `-I${include}`, src, '-o', tmp], { encoding: 'utf8' });
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
    const addon = req(out) as NativeAddon;
    if (typeof addon.configure !== 'function') throw new Error(`${out} has no configure(): an addon built from older sources`);
    addon.configure(settings.mtMflop, settings.spinUs);
    loaded = settings.profile ? profiled(addon) : addon;
    status = { available: true, detail: out };
  } catch (e) {
    loaded = null;
    status = { available: false, detail: (e as Error).message };
  }
  return loaded;
}

const profile = new Map<string, { ms: number; calls: number }>();

/** The addon with every function timed into {@link nativeProfile} (env DPO_NATIVE_PROFILE=1). */
function profiled(addon: NativeAddon): NativeAddon {
  const out: Record<string, unknown> = {};
  // the addon is a plain object of functions (addon.c's init); walking it by name needs the loose view
  const fns = Object.entries(addon) as Array<[string, (...a: unknown[]) => unknown]>;
  for (const [name, fn] of fns) {
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
  return out as unknown as NativeAddon; // same names and signatures as `addon`, each wrapped
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

/** Whether the native addon is loaded, and from where (or why not). */
export function nativeStatus(): NativeStatus {
  return status;
}

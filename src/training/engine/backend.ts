/**
 * Backend selection for the training engine.
 *
 * `auto` tries, in order: `@tensorflow/tfjs-node-gpu` (CUDA), `@tensorflow/tfjs-node` (libtensorflow CPU),
 * `@tensorflow/tfjs-backend-wasm` (XNNPACK, SIMD), then the pure-JS `cpu` backend. The native packages are
 * optional: they are not in the default install (their install script downloads libtensorflow) and are
 * imported dynamically only when present.
 */
import * as tf from '@tensorflow/tfjs-core';
import { withNodeThreadedWasmPatches } from './wasm-threads.js';
import { registerWasmKernels } from './wasm-kernels.js';
import { ensureGradients } from './gradients.js';
import { nativeStatus } from './addon.js';
import { registerFusedKernels } from './kernels.js';
import { registerNativeMatmul } from './matmul.js';
import { NATIVE_BACKEND, registerNativeBackend } from './native-backend.js';
import { BACKEND_REQUESTS, type BackendRequest, engineSettings } from './settings.js';

export type { BackendRequest } from './settings.js';

export interface BackendInfo {
  /** tfjs backend name actually running: `tensorflow`, `wasm` or `cpu`. */
  name: string;
  /** npm package that provided it. */
  package: string;
  /** true when the tensorflow backend came from tfjs-node-gpu. */
  gpu: boolean;
  /** Threads of the wasm backend's XNNPACK pool (1 = the single-threaded build; other backends: 1). */
  threads: number;
  /** true when matrix products run on the native GEMM (native.ts) instead of XNNPACK. */
  nativeMatmul: boolean;
  /** Why the native GEMM is or is not in use (its path, or the reason). */
  nativeDetail: string;
}

/** Options of {@link initBackend}. */
export interface BackendOptions {
  /**
   * Threads for the wasm backend's XNNPACK pool (default: env `TFJS_WASM_THREADS`, else 1: the pool's
   * per-op wake-up made whole training steps 2-5x slower; the native GEMM threads the big products itself).
   * With more than 1 the threaded wasm build is started in Node (see wasm-threads.ts); if that fails the
   * single-threaded build is used and `threads` reports 1.
   */
  wasmThreads?: number;
  /** Use the native GEMM on wasm when it can be built (default: true unless env DPO_NATIVE=0). */
  nativeMatmul?: boolean;
}

/** The requested backend cannot run here; `request` is what was asked, the message says what to install or set. */
export class BackendUnavailableError extends Error {
  readonly code = 'BACKEND_UNAVAILABLE';
  constructor(
    message: string,
    readonly request: string,
  ) {
    super(message);
    this.name = 'BackendUnavailableError';
  }
}

/** What to do when an explicitly requested backend is missing. */
const INSTALL_HINT: Record<string, string> = {
  '@tensorflow/tfjs-node-gpu':
    'npm install @tensorflow/tfjs-node-gpu (CUDA; its install script downloads libtensorflow), or TFJS_BACKEND=auto for the CPU engine',
  '@tensorflow/tfjs-node': 'npm install @tensorflow/tfjs-node (its install script downloads libtensorflow), or TFJS_BACKEND=auto for the CPU engine',
  '@tensorflow/tfjs-backend-wasm': 'npm install @tensorflow/tfjs-backend-wasm, or TFJS_BACKEND=cpu',
  '@tensorflow/tfjs-backend-cpu': 'npm install @tensorflow/tfjs-backend-cpu',
};

let current: BackendInfo | null = null;

async function tryImport(pkg: string): Promise<boolean> {
  try {
    await import(pkg);
    return true;
  } catch {
    return false;
  }
}

/**
 * Initialise the tfjs backend once per process and return what runs. On wasm it also registers the engine's
 * kernels (wasm-kernels.ts) and, unless `opts.nativeMatmul === false` or env `DPO_NATIVE=0`, the native
 * GEMM / softmax / AdamW kernels when they can be built (native.ts; `nativeMatmul`/`nativeDetail` tell).
 * Modes come from the engine settings (settings.ts: `TFJS_BACKEND`, `TFJS_WASM_THREADS`, `DPO_NATIVE`, ...).
 * @param request `auto` | `tensorflow-gpu` | `tensorflow` | `wasm` | `cpu` (default: settings `backend`, env `TFJS_BACKEND`).
 * @param opts see {@link BackendOptions}; ignored after the first call (the backend is per process)
 * @throws BackendUnavailableError (code `BACKEND_UNAVAILABLE`) when no requested backend can be loaded: the
 *   message names each package tried and what to install or set.
 * @throws EngineSettingsError (code `INVALID_ENV`) when an engine environment variable is invalid
 */
export async function initBackend(request?: BackendRequest, opts: BackendOptions = {}): Promise<BackendInfo> {
  const settings = engineSettings();
  const want = request ?? settings.backend;
  if (current) return current;
  const candidates: Array<{ req: BackendRequest; pkg: string; backend: string; gpu: boolean }> = [
    { req: 'tensorflow-gpu', pkg: '@tensorflow/tfjs-node-gpu', backend: 'tensorflow', gpu: true },
    { req: 'tensorflow', pkg: '@tensorflow/tfjs-node', backend: 'tensorflow', gpu: false },
    { req: 'native', pkg: '@tensorflow/tfjs-backend-cpu', backend: NATIVE_BACKEND, gpu: false },
    { req: 'wasm', pkg: '@tensorflow/tfjs-backend-wasm', backend: 'wasm', gpu: false },
    { req: 'cpu', pkg: '@tensorflow/tfjs-backend-cpu', backend: 'cpu', gpu: false },
  ];
  const order =
    want === 'auto' ? candidates : want === 'tensorflow' ? candidates.filter((c) => c.backend === 'tensorflow') : candidates.filter((c) => c.req === want);
  if (order.length === 0) {
    throw new BackendUnavailableError(`TFJS_BACKEND=${String(want)} is not one of ${BACKEND_REQUESTS.join(', ')}`, String(want));
  }
  const failures: string[] = [];
  for (const c of order) {
    const imported = await tryImport(c.pkg);
    if (!imported) {
      failures.push(`${c.pkg} is not installed (${INSTALL_HINT[c.pkg]})`);
      continue;
    }
    if (c.backend === NATIVE_BACKEND && (opts.nativeMatmul === false || !registerNativeBackend())) {
      failures.push(`the native backend needs the native addon (${opts.nativeMatmul === false ? 'disabled by the caller' : nativeStatus().detail})`);
      continue;
    }
    try {
      if (c.backend === 'wasm' ? await setWasm(opts) : await tf.setBackend(c.backend)) {
        await tf.ready();
        const onWasm = c.backend === 'wasm';
        const native = c.backend === NATIVE_BACKEND || (onWasm && opts.nativeMatmul !== false && registerNativeMatmul('wasm'));
        if (native && onWasm) registerFusedKernels('wasm');
        current = {
          name: tf.getBackend(),
          package: c.pkg,
          gpu: c.gpu,
          threads: onWasm ? wasmThreads() : c.backend === NATIVE_BACKEND ? engineSettings().nativeThreads : 1,
          nativeMatmul: native,
          nativeDetail: onWasm || c.backend === NATIVE_BACKEND ? nativeStatus().detail : 'not used on this backend',
        };
        await afterInit(current);
        return current;
      }
      failures.push(`${c.pkg} did not initialise`);
    } catch (e) {
      failures.push(`${c.pkg} failed to initialise: ${(e as Error).message}`);
    }
  }
  throw new BackendUnavailableError(`no tfjs backend could be initialised for TFJS_BACKEND=${want}: ${failures.join('; ')}`, want);
}

type WasmModule = { setThreadsCount(n: number): void; getThreadsCount(): number };
let wasmMod: WasmModule | null = null;

function wasmThreads(): number {
  try {
    return wasmMod ? wasmMod.getThreadsCount() : 1;
  } catch {
    return 1;
  }
}

/** Start the wasm backend, threaded when more than one thread is wanted, then register our kernels. */
async function setWasm(opts: BackendOptions): Promise<boolean> {
  wasmMod = await import('@tensorflow/tfjs-backend-wasm');
  // Default 1: XNNPACK's pool costs a wake-up per op, which made stories15M/stories260K training steps 2-5x
  // slower than one thread (bench/README.md); the native GEMM threads the big products itself.
  const want = Math.max(1, Math.floor(opts.wasmThreads ?? engineSettings().wasmThreads));
  let ok = false;
  if (want > 1) {
    try {
      tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
      wasmMod.setThreadsCount(want);
      ok = await withNodeThreadedWasmPatches(async () => {
        const r = await tf.setBackend('wasm');
        await tf.ready();
        return r;
      }, want);
    } catch {
      ok = false;
    }
    if (!ok) tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
  }
  if (!ok) ok = await tf.setBackend('wasm');
  if (ok) registerWasmKernels();
  return ok;
}

/** Hooks run once after a backend is up (e.g. registering missing kernels). */
const initHooks: Array<(info: BackendInfo) => void | Promise<void>> = [];
export function onBackendInit(hook: (info: BackendInfo) => void | Promise<void>): void {
  initHooks.push(hook);
  if (current) void hook(current);
}
async function afterInit(info: BackendInfo): Promise<void> {
  await ensureGradients();
  for (const h of initHooks) await h(info);
}

/** The backend initialised by {@link initBackend}, or null before it ran. */
export function currentBackend(): BackendInfo | null {
  return current;
}

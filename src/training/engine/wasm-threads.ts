/**
 * Multi-threaded tfjs-wasm in Node.
 *
 * tfjs-backend-wasm ships a pthreads build (`tfjs-backend-wasm-threaded-simd.wasm`, XNNPACK on a pthreadpool)
 * but disables it in Node (tfjs#3830): emscripten starts its pthread workers from `blob:` URLs, which
 * Node's `worker_threads` refuses (`ERR_WORKER_PATH`), and the worker then loads the main script from a Blob
 * it cannot read. This module makes the threaded build start in Node by writing those two scripts to real
 * files while the backend initialises:
 * - `globalThis.Blob` is wrapped for the duration of the init so the string parts of each Blob are kept;
 * - `URL.createObjectURL` returns a file path (in a private temporary directory) holding the Blob's text;
 * - the worker script is given a prelude with the bundle's module-scope names the main script refers to
 *   (`require$$0`…, `commonjsGlobal`, `__dirname`), and loads the main script from its file.
 * Both are restored when the init ends. Nothing here changes what the kernels compute.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';

export class WasmThreadsError extends Error {
  readonly code = 'WASM_THREADS_UNAVAILABLE';
  constructor(message: string) {
    super(message);
    this.name = 'WasmThreadsError';
  }
}

const MAIN_MARK = 'var WasmBackendModuleThreadedSimd';
const WORKER_MARK = 'WasmBackendModuleThreadedSimd(Module)';

/**
 * Run `init` (which must call `tf.setBackend('wasm')`) with the Blob/URL patches that let the threaded
 * build start its pthread workers in Node. The caller sets `WASM_HAS_MULTITHREAD_SUPPORT` and the thread
 * count before calling.
 * @returns what `init` returns
 */
export async function withNodeThreadedWasmPatches<T>(init: () => Promise<T>, threads = os.cpus().length): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tfjs-wasm-threads-'));
  const req = createRequire(import.meta.url);
  const distDir = path.dirname(req.resolve('@tensorflow/tfjs-backend-wasm'));
  const mainPath = path.join(dir, 'tfjs-backend-wasm-threaded-simd.main.cjs');
  const workerPath = path.join(dir, 'tfjs-backend-wasm-threaded-simd.worker.cjs');

  const OrigBlob = globalThis.Blob;
  const origCreate = URL.createObjectURL;
  const parts = new WeakMap<object, string>();
  class KeptBlob extends OrigBlob {
    constructor(blobParts?: unknown[], options?: BlobPropertyBag) {
      super(blobParts as ConstructorParameters<typeof Blob>[0], options);
      if (Array.isArray(blobParts) && blobParts.every((p) => typeof p === 'string')) {
        const text = (blobParts as string[]).join('');
        parts.set(this, text);
        if (text.startsWith(MAIN_MARK)) writeMain(text);
      }
    }
  }
  const writeMain = (text: string): void => {
    const prelude =
      "var require$$0=require('fs'),require$$1=require('path'),require$$3=require('perf_hooks'),require$$4=require('os');" +
      `var commonjsGlobal=globalThis;var __dirname=${JSON.stringify(distDir)};\n`;
    fs.writeFileSync(mainPath, prelude + text);
  };
  const create = (obj: Blob | MediaSource): string => {
    const text = parts.get(obj as object);
    if (text?.includes(WORKER_MARK)) {
      // Load the main script from its file instead of the (unreadable in Node) Blob.
      const patched = text.replace('typeof e.data.urlOrBlob=="string"', `(e.data.urlOrBlob=${JSON.stringify(mainPath)},true)`);
      if (patched === text) throw new WasmThreadsError('tfjs-backend-wasm worker script has an unexpected form; pin tfjs 4.22');
      fs.writeFileSync(workerPath, patched);
      return workerPath;
    }
    return origCreate.call(URL, obj as Blob);
  };
  (globalThis as { Blob: typeof Blob }).Blob = KeptBlob as typeof Blob;
  URL.createObjectURL = create as typeof URL.createObjectURL;
  // The backend caps its pool at emscripten_num_logical_cores() / 2 (it assumes 2 hyper-threads per core),
  // which in Node is os.cpus().length / 2: report 2 * threads logical cores while the module starts.
  const osMod = req('os') as typeof os;
  const origCpus = osMod.cpus;
  const fakeCpus = (): os.CpuInfo[] => {
    const real = origCpus.call(osMod);
    return Array.from({ length: 2 * threads }, (_, i) => real[i % real.length]!);
  };
  osMod.cpus = fakeCpus;
  // emscripten sets `global.Worker = worker_threads.Worker` and ref()s a worker while it runs a pthread;
  // XNNPACK's pool threads never end, so the process would never exit. Give it workers that stay unref'd
  // (the main thread blocks on them synchronously while a kernel runs, so nothing is lost).
  const wt = req('worker_threads') as typeof import('node:worker_threads');
  class UnrefWorker extends wt.Worker {
    constructor(filename: string | URL, options?: import('node:worker_threads').WorkerOptions) {
      // plain CommonJS scripts: none of the parent's loader flags (tsx, --input-type, ...) apply to them
      super(filename, { ...options, execArgv: [] });
      super.unref();
    }
    override ref(): void {
      /* stay unref'd */
    }
  }
  Object.defineProperty(globalThis, 'Worker', {
    configurable: true,
    enumerable: false,
    get: () => UnrefWorker,
    set: () => {
      /* keep UnrefWorker */
    },
  });
  try {
    return await init();
  } finally {
    Object.defineProperty(globalThis, 'Worker', { configurable: true, writable: true, enumerable: false, value: UnrefWorker });
    osMod.cpus = origCpus;
    (globalThis as { Blob: typeof Blob }).Blob = OrigBlob;
    URL.createObjectURL = origCreate;
  }
}

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
/** How long the threaded build may take to start its workers (ms); it takes ~1-2 s. */
const START_TIMEOUT_MS = 60_000;
const WORKER_MARK = 'WasmBackendModuleThreadedSimd(Module)';

/**
 * Run `init` (which must call `tf.setBackend('wasm')`) with the Blob/URL patches that let the threaded
 * build start its pthread workers in Node. The caller sets `WASM_HAS_MULTITHREAD_SUPPORT` and the thread
 * count before calling.
 * @returns what `init` returns
 * @throws WasmThreadsError when the bundle has an unexpected form, or the workers have not started within 60 s
 */
export async function withNodeThreadedWasmPatches<T>(init: () => Promise<T>, threads = os.cpus().length): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tfjs-wasm-threads-'));
  const req = createRequire(import.meta.url);
  const distDir = path.dirname(req.resolve('@tensorflow/tfjs-backend-wasm'));
  const mainPath = path.join(dir, 'tfjs-backend-wasm-threaded-simd.main.cjs');
  const workerPath = path.join(dir, 'tfjs-backend-wasm-threaded-simd.worker.cjs');

  // Each pthread worker asks for the worker script's URL again while earlier workers may still be reading the
  // file: rewriting it in place (truncate, then write) let a worker read it empty, run nothing, exit 0 without
  // ever reporting `loaded`, and the init waited forever. So each file is written once, to a temporary name
  // renamed into place.
  const written = new Map<string, string>();
  const writeOnce = (file: string, text: string): void => {
    if (written.get(file) === text) return;
    const tmp = `${file}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
    written.set(file, text);
  };
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
    writeOnce(mainPath, prelude + text);
  };
  const create = (obj: Blob | MediaSource): string => {
    const text = parts.get(obj as object);
    if (text?.includes(WORKER_MARK)) {
      // Load the main script from its file instead of the (unreadable in Node) Blob.
      const patched = text.replace('typeof e.data.urlOrBlob=="string"', `(e.data.urlOrBlob=${JSON.stringify(mainPath)},true)`);
      if (patched === text) throw new WasmThreadsError('tfjs-backend-wasm worker script has an unexpected form; pin tfjs 4.22');
      writeOnce(workerPath, patched);
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
  // The workers are unref'd, so while the module waits for them to start nothing else may keep the event loop
  // alive (the process would quit mid-await, exit code 13); this timer does, and it bounds the wait.
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new WasmThreadsError(
            `the threaded tfjs-wasm build did not start within ${START_TIMEOUT_MS / 1000} s (its pthread workers did not report); run with TFJS_WASM_THREADS=1`,
          ),
        ),
      START_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([init(), timeout]);
  } finally {
    clearTimeout(timer);
    Object.defineProperty(globalThis, 'Worker', { configurable: true, writable: true, enumerable: false, value: UnrefWorker });
    osMod.cpus = origCpus;
    (globalThis as { Blob: typeof Blob }).Blob = OrigBlob;
    URL.createObjectURL = origCreate;
  }
}

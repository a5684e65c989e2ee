/**
 * Throughput of a whole training job (`runTraining`, the path `dpo train` and the worker take): SFT then
 * DPO with the default config (stories260K on the toy data) unless key=value overrides are given.
 *
 *   npx tsx bench/train-throughput.ts [key=value ...]        e.g. model=stories260K max_length=128
 *
 * Prints one JSON line: {wall_s, backend, native_matmul, overrides, metrics}. Compare the engine paths with
 * DPO_NATIVE=0 (XNNPACK matmuls) against the default (native GEMM).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { initBackend } from '../src/training/engine/backend.js';

const overrides = process.argv.slice(2);
const info = await initBackend();
const { runTraining } = await import('../src/training/run.js');
const { loadConfig } = await import('../src/config/index.js');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'dpo-train-bench-'));
const t0 = performance.now();
const r = await runTraining({ outputDir: out, config: loadConfig({ overrides }) });
const wall = (performance.now() - t0) / 1000;
fs.rmSync(out, { recursive: true, force: true });
console.log(JSON.stringify({ wall_s: +wall.toFixed(2), backend: info.name, native_matmul: info.nativeMatmul, overrides, metrics: r.metrics }));
process.exit(0);

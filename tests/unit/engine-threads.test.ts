/**
 * The threaded tfjs-wasm build starts in Node (wasm-threads.ts) with 2 XNNPACK threads, computes, and lets
 * the process exit (its pthread workers are unref'd). Run in a child process: the backend is per process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('threaded wasm backend: 2 threads, correct product, process exits', () => {
  const code = `
    import * as tf from '@tensorflow/tfjs-core';
    import { initBackend } from './src/training/engine/backend.ts';
    const info = await initBackend('wasm', { wasmThreads: 2, nativeMatmul: false });
    const a = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const b = tf.tensor2d([1, 0, 0, 1, 1, 1], [3, 2]);
    console.log(JSON.stringify({ threads: info.threads, c: Array.from(tf.matMul(a, b).dataSync()) }));
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  const line = r.stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop()!;
  const out = JSON.parse(line) as { threads: number; c: number[] };
  assert.equal(out.threads, 2);
  assert.deepEqual(out.c, [4, 5, 10, 11]);
});

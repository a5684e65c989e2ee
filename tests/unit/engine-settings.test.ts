/**
 * The engine settings (src/training/engine/settings.ts): one validated object from the environment, a
 * clear error naming a bad variable, and the typed backend errors with the right hint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EngineSettingsError, readEngineSettings } from '../../src/training/engine/settings.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('engine settings: defaults, and every variable parsed into its typed field', () => {
  const d = readEngineSettings({});
  assert.equal(d.backend, 'auto');
  assert.equal(d.native, true);
  assert.equal(d.wasmThreads, 1);
  assert.equal(d.mtMflop, 24);
  assert.equal(d.spinUs, 300);
  assert.equal(d.ops, 'fast');
  assert.equal(d.fusedAttention, true);
  assert.equal(d.poolMb, 1024);
  assert.equal(d.poolAuto, true, 'DPO_NATIVE_POOL_MB unset: a run sizes the pool');
  assert.ok(d.nativeThreads >= 1);
  const s = readEngineSettings({
    TFJS_BACKEND: 'wasm',
    TFJS_WASM_THREADS: '2',
    DPO_NATIVE: '0',
    DPO_NATIVE_THREADS: '3',
    DPO_NATIVE_MT_MFLOP: '1.5',
    DPO_NATIVE_SPIN_US: '0',
    DPO_NATIVE_CACHE: '/tmp/x',
    CC: 'gcc',
    DPO_NATIVE_PROFILE: '1',
    DPO_ENGINE_OPS: 'reference',
    DPO_FUSED_ATTENTION: '0',
    DPO_NATIVE_POOL_MB: '0',
  });
  assert.deepEqual(s, {
    backend: 'wasm',
    wasmThreads: 2,
    native: false,
    nativeThreads: 3,
    mtMflop: 1.5,
    spinUs: 0,
    cacheDir: '/tmp/x',
    cc: 'gcc',
    profile: true,
    ops: 'reference',
    fusedAttention: false,
    poolMb: 0,
    poolAuto: false,
  });
  // blank means unset (docker-compose passes VAR=)
  assert.equal(readEngineSettings({ DPO_NATIVE_THREADS: '' }).nativeThreads, d.nativeThreads);
  assert.equal(readEngineSettings({ DPO_NATIVE_POOL_MB: '' }).poolAuto, true);
  assert.equal(readEngineSettings({ DPO_NATIVE_POOL_MB: '1024' }).poolAuto, false);
});

test('engine settings: a bad value fails naming the variable and what it must be', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['DPO_NATIVE_THREADS', 'abc', /DPO_NATIVE_THREADS="abc" must be an integer >= 1/],
    ['DPO_NATIVE_THREADS', '0', /integer >= 1/],
    ['TFJS_WASM_THREADS', '1.5', /TFJS_WASM_THREADS/],
    ['DPO_NATIVE', 'yes', /DPO_NATIVE="yes" must be 0 or 1/],
    ['DPO_ENGINE_OPS', 'fastest', /DPO_ENGINE_OPS="fastest" must be one of fast, reference/],
    ['TFJS_BACKEND', 'tpu', /TFJS_BACKEND="tpu" must be one of auto/],
    ['DPO_NATIVE_MT_MFLOP', '-1', /DPO_NATIVE_MT_MFLOP/],
  ];
  for (const [k, v, re] of cases) {
    assert.throws(
      () => readEngineSettings({ [k]: v }),
      (e: unknown) => e instanceof EngineSettingsError && e.code === 'INVALID_ENV' && e.variable === k && re.test(e.message),
      `${k}=${v}`,
    );
  }
});

/** Run `dpo train` (one step of the toy job) with `env`; returns its exit code and output. */
function dpoTrain(env: Record<string, string>): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, ['bin/dpo.js', 'train', 'max_steps=1', `output_dir=/tmp/engine-settings-${process.pid}`], {
    cwd: root,
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ...env },
  });
  return { status: r.status, stderr: r.stderr };
}

test('dpo train: DPO_NATIVE_THREADS=abc fails with a one-line error naming the variable, no stack', () => {
  const r = dpoTrain({ DPO_NATIVE_THREADS: 'abc' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /INVALID_ENV.*DPO_NATIVE_THREADS="abc" must be an integer >= 1/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

test('dpo train: TFJS_BACKEND=tensorflow without tfjs-node names the missing package and how to get it', () => {
  const r = dpoTrain({ TFJS_BACKEND: 'tensorflow' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /BACKEND_UNAVAILABLE/);
  assert.match(r.stderr, /@tensorflow\/tfjs-node is not installed \(npm install @tensorflow\/tfjs-node/);
  assert.doesNotMatch(r.stderr, /install @tensorflow\/tfjs-backend-wasm or set TFJS_BACKEND=cpu/, 'the old wrong hint');
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

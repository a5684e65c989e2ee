/**
 * The native backend's pool of kernel output buffers (engine/buffer-pool.ts): disposed outputs are reused, and
 * nothing a caller can still see is ever overwritten (read data, shared buffers, slice views); with the addon's
 * buffers (native/memory.c) the pool frees what it drops, and never what escaped it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { loadNativeAddon } from '../../src/training/engine/addon.js';
import { BufferPool } from '../../src/training/engine/buffer-pool.js';
import { NativeBackend, POOL_AUTO_MAX_BYTES, sizeNativePool } from '../../src/training/engine/native-backend.js';
import { engineSettings } from '../../src/training/engine/settings.js';

const N = 1 << 16; // above the pool's minimum size

function nativeBackend(): NativeBackend | null {
  const b = tf.backend();
  return b instanceof NativeBackend ? b : null;
}

test('BufferPool: capacities, reuse after release, eviction beyond maxBytes, and escapes', () => {
  assert.equal(BufferPool.capacity(8), 8);
  assert.equal(BufferPool.capacity(1 << 20), 1 << 20);
  assert.equal(BufferPool.capacity((1 << 20) + 1), (1 << 20) + (1 << 17));
  for (const n of [9, 1000, 12345, 999_999]) {
    const c = BufferPool.capacity(n);
    assert.ok(c >= n && c <= n * 1.125 + 1, `${n} -> ${c}`);
  }
  const pool = new BufferPool(3 * N * 4, 1);
  const a = pool.take(N);
  pool.stored(a);
  pool.release(a);
  const b = pool.take(N - 5); // same capacity class
  assert.equal(b.buffer, a.buffer, 'the released buffer is reused');
  assert.equal(b.length, N - 5);
  pool.stored(b);
  // a second store of the buffer (a shared view) makes it escape: never released
  pool.stored(b.subarray(1));
  pool.release(b);
  assert.notEqual(pool.take(N).buffer, b.buffer);
  // a read of a whole buffer makes it escape; a view shorter than its buffer is copied instead
  const c = pool.take(N);
  pool.stored(c);
  assert.equal(pool.exposed(c), c);
  pool.release(c);
  assert.equal(pool.stats().freeBytes, 0);
  const d = pool.take(N - 3);
  pool.stored(d);
  const seen = pool.exposed(d);
  assert.notEqual(seen.buffer, d.buffer);
  pool.release(d);
  assert.equal(pool.stats().freeBytes, BufferPool.capacity(N - 3) * 4);
  // at most maxBytes are kept: the least recently freed go first
  const xs = [1, 2, 3, 4].map((i) => pool.take(N * 0 + (i === 4 ? 2 * N : N)));
  for (const x of xs) pool.stored(x);
  for (const x of xs) pool.release(x);
  assert.ok(pool.stats().freeBytes <= 3 * N * 4);
  assert.equal(pool.take(2 * N).buffer, xs[3]!.buffer, 'the most recent release is still held');
});

test('native backend: a disposed output is reused by the next kernel, and read data stays intact', async (t) => {
  await initBackend('auto');
  const backend = nativeBackend();
  if (!backend) {
    t.skip('the native backend is not available here');
    return;
  }
  const x = tf.randomNormal([N]);
  const y = tf.randomNormal([N]);
  const before = backend.pool.stats().hits;
  const s1 = tf.add(x, y);
  const kept = s1.dataSync(); // escapes: must never change
  const copy = Float32Array.from(kept);
  s1.dispose();
  const p1 = tf.mul(x, y);
  p1.dispose();
  const p2 = tf.sub(x, y); // reuses p1's buffer
  assert.ok(backend.pool.stats().hits > before, 'a disposed output buffer was reused');
  assert.deepEqual(kept, copy, 'data read before the dispose is unchanged');
  const expect = tf.sub(x, y).dataSync();
  assert.deepEqual(p2.dataSync(), expect);
  // a contiguous slice of a pooled output keeps its values when the source is disposed and its buffer reused
  const big = tf.add(x, 1);
  const sl = tf.slice(big, [0], [N / 2]);
  const slValues = Float32Array.from(sl.dataSync());
  big.dispose();
  for (let i = 0; i < 3; i++) tf.mul(x, 7).dispose();
  const later = tf.mul(y, 3);
  assert.deepEqual(sl.dataSync(), slValues);
  tf.dispose([x, y, p2, sl, later]);
});

test("the addon's buffers: written and read like any ArrayBuffer, freed (detached) only when the pool drops them", (t) => {
  const addon = loadNativeAddon();
  if (!addon) {
    t.skip('native addon not available');
    return;
  }
  const made: ArrayBuffer[] = [];
  const escaped = new Set<ArrayBuffer>();
  const pool = new BufferPool(2 * N * 4, 1, {
    alloc: (bytes) => {
      const b = addon.bufferAlloc(bytes);
      made.push(b);
      return b;
    },
    free: (b) => addon.bufferFree(b),
    escape: (b) => {
      escaped.add(b);
      addon.bufferEscape(b);
    },
  });
  const a = pool.take(N);
  assert.equal(a.buffer.byteLength, N * 4);
  assert.equal(a.byteOffset % 64, 0);
  a.fill(3);
  pool.stored(a);
  const read = pool.exposed(a); // a whole buffer read: it escapes, and must stay intact whatever the pool does
  assert.ok(escaped.has(a.buffer as ArrayBuffer));
  pool.release(a);
  const xs = [0, 1, 2].map(() => pool.take(N));
  for (const x of xs) pool.stored(x);
  for (const x of xs) pool.release(x); // 3 x N floats into a pool of 2 x N: the first one released is dropped
  assert.equal(xs[0]!.buffer.byteLength, 0, 'the dropped buffer was freed (detached)');
  assert.equal(xs[1]!.buffer.byteLength, N * 4, 'the buffers still held are intact');
  assert.equal(read.length, N);
  assert.ok(
    read.every((e) => e === 3),
    'an escaped buffer is never freed by the pool',
  );
  // freeing twice, or freeing an escaped buffer, throws instead of touching memory
  assert.throws(() => addon.bufferFree(xs[0]!.buffer as ArrayBuffer));
  assert.throws(() => addon.bufferFree(a.buffer as ArrayBuffer), 'an escaped buffer cannot be freed');
  pool.clear();
  assert.equal(xs[1]!.buffer.byteLength, 0);
  assert.equal(xs[2]!.buffer.byteLength, 0);
  const fresh = pool.take(N);
  assert.equal(fresh.buffer, made[made.length - 1], 'a miss after clear allocates anew');
  assert.equal(fresh.buffer.byteLength, N * 4);
});

test('BufferPool.resize: lowering drops the least recently freed buffers until the free bytes fit; raising keeps more', () => {
  const pool = new BufferPool(4 * N * 4, 1);
  const xs = [0, 1, 2, 3].map(() => pool.take(N));
  for (const x of xs) pool.stored(x);
  for (const x of xs) pool.release(x);
  assert.equal(pool.stats().freeBytes, 4 * N * 4);
  pool.resize(2 * N * 4);
  assert.equal(pool.maxBytes, 2 * N * 4);
  assert.equal(pool.stats().freeBytes, 2 * N * 4);
  // the two most recently released are the ones still held
  const held = [pool.take(N).buffer, pool.take(N).buffer];
  assert.deepEqual(new Set(held), new Set([xs[2]!.buffer, xs[3]!.buffer]));
  pool.resize(8 * N * 4);
  const ys = [0, 1, 2, 3, 4, 5].map(() => pool.take(N));
  for (const y of ys) pool.stored(y);
  for (const y of ys) pool.release(y);
  assert.equal(pool.stats().freeBytes, 6 * N * 4, 'a raised size holds more');
  pool.resize(0);
  assert.equal(pool.stats().freeBytes, 0);
  assert.throws(() => pool.resize(-1), /pool size must be >= 0/);
  assert.throws(() => pool.resize(Number.NaN), /pool size must be >= 0/);
});

test('sizeNativePool: a run sizes the native pool to its spare memory, between the default and 8 GiB', async (t) => {
  await initBackend('auto');
  const b = nativeBackend();
  if (!b || !loadNativeAddon()) {
    t.skip('the native backend is not active');
    return;
  }
  const settings = engineSettings();
  if (!settings.poolAuto) {
    assert.equal(sizeNativePool(4 * 2 ** 30), null, 'DPO_NATIVE_POOL_MB set: the pool keeps its size');
    return;
  }
  const before = b.pool.maxBytes;
  try {
    const floor = settings.poolMb * 2 ** 20;
    assert.equal(sizeNativePool(0), floor, 'no spare memory: the default');
    assert.equal(sizeNativePool(-5 * 2 ** 30), floor);
    assert.equal(sizeNativePool(3 * 2 ** 30), 3 * 2 ** 30);
    assert.equal(b.pool.maxBytes, 3 * 2 ** 30);
    assert.equal(sizeNativePool(100 * 2 ** 30), POOL_AUTO_MAX_BYTES, 'at most 8 GiB');
    assert.equal(sizeNativePool(Number.POSITIVE_INFINITY), floor, 'a non-finite spare counts as none');
  } finally {
    b.pool.resize(before);
  }
});

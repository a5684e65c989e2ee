/**
 * The native kernels' thread pool (common.h: tasks claimed from a shared counter, the caller returning when
 * every task has completed, never waiting for a worker to arrive) and the GEMM's independent units on it
 * (gemm.c: B block packed by the caller or as a job of panels, units of rows x column ranges; a long
 * reduction split into slices): every product form, multi-block K and N, few row units (column ranges), on 2 and 3 threads with every kernel threaded
 * (configure(0, ...)), with workers spinning and with workers asleep between jobs (spin 0: the wake-up path),
 * against a plain float64 product; and thousands of back-to-back small jobs, each checked.
 */
import { type TestContext, test } from 'node:test';
import assert from 'node:assert/strict';
import { type NativeAddon, loadNativeAddon } from '../../src/training/engine/addon.js';
import { Rng } from '../../src/util/rng.js';
import { engineSettings } from '../../src/training/engine/settings.js';

/** `n` seeded uniform values in [-1, 1) (src/util/rng.ts). */
function filled(n: number, seed: number): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => 2 * r.next() - 1);
}

/**
 * Run `body` with the addon (skip without one), the engine's thread cut-off and spin restored afterwards
 * (bodies call `configure` to thread every kernel).
 */
function withAddon(t: TestContext, body: (g: NativeAddon) => void): void {
  const g = loadNativeAddon();
  if (!g) {
    t.skip('native addon not available');
    return;
  }
  const s = engineSettings();
  try {
    body(g);
  } finally {
    g.configure(s.mtMflop, s.spinUs);
  }
}

/** C = op(A) op(B) in float64, op(X) = X^T when t. */
function refProduct(A: Float32Array, B: Float32Array, M: number, K: number, N: number, tA: boolean, tB: boolean): Float64Array {
  const C = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let k = 0; k < K; k++) {
      const a = tA ? A[k * M + i]! : A[i * K + k]!;
      for (let j = 0; j < N; j++) C[i * N + j] += a * (tB ? B[j * K + k]! : B[k * N + j]!);
    }
  return C;
}

function maxRelErr(got: Float32Array, want: Float64Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < want.length; i++) {
    d = Math.max(d, Math.abs(got[i]! - want[i]!));
    m = Math.max(m, Math.abs(want[i]!));
  }
  return d / (1 + m);
}

test('threaded GEMM on the claim-based pool equals a float64 product (every form, block edges, few row units)', (t) => {
  withAddon(t, (g) => {
    for (const [M, K, N] of [
      [1400, 64, 172], // the stories260K MLP
      [64, 1400, 172], // a weight gradient: the reduction split into slices (partial products summed)
      [100, 2500, 300], // slices of K on 8 tasks (stories15M-like weight gradient, smaller)
      [33, 777, 17], // slices with a short last one, N not a multiple of the panel width
      [50, 700, 2100], // K in 3 blocks, N in 2 blocks (NC 2048), the last block 52 columns
      [333, 320, 500], // a B block packed by a job of panels (kc x nc >= 131072)
      [7, 33, 5], // fewer rows than one unit
    ] as const) {
      for (const [tA, tB] of [
        [false, false],
        [false, true],
        [true, false],
        [true, true],
      ] as const) {
        const A = filled(M * K, M + K);
        const B = filled(K * N, K + N + 1);
        const want = refProduct(A, B, M, K, N, tA, tB);
        for (const spin of [300, 0]) {
          g.configure(0, spin); // every kernel threaded; spin 0: workers sleep after each job
          for (const threads of [2, 3]) {
            const C = new Float32Array(M * N).fill(Number.NaN);
            g.sgemm(A, B, C, M, K, N, tA ? 1 : 0, tB ? 1 : 0, threads, 1, 0, 0, 0);
            const e = maxRelErr(C, want);
            assert.ok(e < 1e-5, `${M}x${K}x${N} ${tA ? 'T' : 'N'}${tB ? 'T' : 'N'} threads ${threads} spin ${spin}: error ${e}`);
          }
        }
      }
    }
  });
});

test('thousands of back-to-back small threaded jobs each compute their own result', (t) => {
  withAddon(t, (g) => {
    for (const spin of [300, 0]) {
      g.configure(0, spin);
      const M = 96;
      const K = 8;
      const N = 40;
      const B = filled(K * N, 7);
      for (let r = 0; r < 1500; r++) {
        const A = filled(M * K, r);
        const C = new Float32Array(M * N).fill(Number.NaN);
        g.sgemm(A, B, C, M, K, N, 0, 0, 2, 1, 0, 0, 0);
        // every few jobs, check the whole result (the others: a sampled row, and no NaN left)
        if (r % 50 === 0) assert.ok(maxRelErr(C, refProduct(A, B, M, K, N, false, false)) < 1e-5, `job ${r}`);
        else {
          const i = r % M;
          let want = 0;
          for (let k = 0; k < K; k++) want += A[i * K + k]! * B[k * N + 3]!;
          assert.ok(Math.abs(C[i * N + 3]! - want) < 1e-4, `job ${r} row ${i}`);
          assert.ok(!Number.isNaN(C[C.length - 1]!), `job ${r}: last element unwritten`);
        }
        // a second kind of job between products (element-wise, its own tasks)
        const X = filled(70000, r + 1);
        const Y = new Float32Array(X.length);
        g.unary(5, X, Y, 0, 2); // square
        for (const i of [0, r * 37, Y.length - 1]) assert.equal(Y[i], Math.fround(X[i]! * X[i]!), `unary job ${r} element ${i}`);
      }
    }
  });
});

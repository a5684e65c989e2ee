/**
 * The native SGEMM alone on given shapes (min and median ms over --reps calls, GFLOP/s), with the output
 * reused or fresh each call (--fresh: a new Float32Array per call, as an unpooled kernel output).
 *
 * --gap-us U spins U microseconds in JS before each call (the JS work between kernels of a training step, during
 * which the pool's workers may go to sleep).
 *
 * --rotate R cycles through R distinct A and C arrays (inputs and outputs not in cache, as inside a step); with
 * --rotate-b also R distinct B arrays (a step's weights come from memory, not from the cache).
 * --addon F loads a compiled addon file instead of this tree's (A/B against another build).
 *
 *   npx tsx bench/gemm-shapes.ts 1400x64x172NN 64x1400x172TN ... [--reps 50] [--fresh] [--threads 2] [--gap-us 0] [--addon F]
 */
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { type NativeAddon, loadNativeAddon } from '../src/training/engine/addon.js';
import { engineSettings } from '../src/training/engine/settings.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const reps = Number(opt('reps', '50'));
const fresh = args.includes('--fresh');
const gapUs = Number(opt('gap-us', '0'));
const rotate = Number(opt('rotate', '1'));
const rotateB = args.includes('--rotate-b');
const threads = Number(opt('threads', String(engineSettings().nativeThreads)));
const addonFile = args.includes('--addon') ? opt('addon', '') : '';
const g = addonFile ? (createRequire(import.meta.url)(resolve(addonFile)) as NativeAddon) : loadNativeAddon();
if (addonFile) g?.configure(engineSettings().mtMflop, engineSettings().spinUs);
if (!g) throw new Error('native addon not available');
for (const spec of args.filter((a) => /^\d+x\d+x\d+[NT][NT]$/.test(a))) {
  const m = /^(\d+)x(\d+)x(\d+)([NT])([NT])$/.exec(spec)!;
  const [M, K, N] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const As = Array.from({ length: rotate }, () => Float32Array.from({ length: M * K }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5));
  const Cs = Array.from({ length: rotate }, () => new Float32Array(M * N).fill(1));
  const Bs = Array.from({ length: rotateB ? rotate : 1 }, (_, r) => Float32Array.from({ length: K * N }, (_, i) => (((i + r) * 104729) % 1000) / 1000 - 0.5));
  let C = Cs[0]!;
  let A = As[0]!;
  const ts: number[] = [];
  for (let r = 0; r < reps; r++) {
    A = As[r % rotate]!;
    const B = Bs[r % Bs.length]!;
    C = fresh ? new Float32Array(M * N) : Cs[r % rotate]!;
    for (const end = performance.now() + gapUs / 1000; performance.now() < end; );
    const t0 = performance.now();
    g.sgemm(A, B, C, M, K, N, m[4] === 'T' ? 1 : 0, m[5] === 'T' ? 1 : 0, threads, 1, 0, 0, 0);
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  const gf = (2 * M * K * N) / 1e6;
  console.log(
    `${spec.padEnd(18)} min ${ts[0]!.toFixed(3)} ms (${(gf / ts[0]!).toFixed(1)} GFLOP/s)  median ${ts[reps >> 1]!.toFixed(3)} ms (${(gf / ts[reps >> 1]!).toFixed(1)})`,
  );
}

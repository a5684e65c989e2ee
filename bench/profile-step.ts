/**
 * Kernel-level profile of one bench step: `npx tsx bench/profile-step.ts [same args as dpo-step.ts]`.
 * Prints the kernels sorted by total time (tf.profile), to see where a step's time goes.
 * With DPO_NATIVE_PROFILE=1 it instead times 10 real steps (no profiler overhead) and prints the wall time
 * spent in each native function (sgemm by shape) per step, against the whole step.
 */
import * as tf from '@tensorflow/tfjs-core';
import { nativeProfile } from '../src/training/engine/addon.js';
import { engineSettings } from '../src/training/engine/settings.js';
import { parseArgs, runBench } from './dpo-step.js';

const a = parseArgs(process.argv.slice(2));
a.steps = 1;
await runBench(a); // warm-up (and backend init)
if (engineSettings().profile) {
  const steps = 10;
  nativeProfile(true);
  const r = (await runBench({ ...a, steps })) as { median_step_s: number };
  const rows = [...nativeProfile(true)].sort((x, y) => y[1].ms - x[1].ms);
  const calls = steps + 1; // runBench times `steps` steps after one warm-up step
  const total = rows.reduce((s, [, e]) => s + e.ms, 0) / calls;
  console.log(`median step ${(r.median_step_s * 1000).toFixed(1)} ms; native ${total.toFixed(1)} ms per step`);
  for (const [k, e] of rows.slice(0, 25))
    console.log(
      `${(e.ms / calls).toFixed(2).padStart(8)} ms/step ${String(e.calls / calls).padStart(4)} calls  ${((e.ms / e.calls) * 1000).toFixed(0).padStart(6)} us/call  ${k}`,
    );
  process.exit(0);
}
const prof = await tf.profile(async () => {
  await runBench({ ...a, steps: 0 });
});
const by = new Map<string, { ms: number; n: number }>();
for (const k of prof.kernels) {
  const e = by.get(k.name) ?? { ms: 0, n: 0 };
  e.ms += typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
  e.n += 1;
  by.set(k.name, e);
}
const rows = [...by].sort((x, y) => y[1].ms - x[1].ms);
const total = rows.reduce((s, [, e]) => s + e.ms, 0);
console.log(`kernels: ${prof.kernels.length}, kernel time ${total.toFixed(0)} ms`);
for (const [name, e] of rows.slice(0, 25)) console.log(`${name.padEnd(28)} ${e.ms.toFixed(1).padStart(9)} ms  ${String(e.n).padStart(6)} calls`);
const byShape = new Map<string, { ms: number; n: number }>();
for (const k of prof.kernels) {
  if (!['BatchMatMul', 'Transpose', 'Reverse', 'GatherV2', 'Softmax', 'Sum', 'Multiply', 'Add'].includes(k.name)) continue;
  const key = `${k.name} ${JSON.stringify(k.inputShapes)} -> ${JSON.stringify(k.outputShapes)}`;
  const e = byShape.get(key) ?? { ms: 0, n: 0 };
  e.ms += typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
  e.n += 1;
  byShape.set(key, e);
}
for (const [key, e] of [...byShape].sort((x, y) => y[1].ms - x[1].ms).slice(0, 25))
  console.log(`${e.ms.toFixed(1).padStart(9)} ms ${String(e.n).padStart(5)}x  ${key}`);
process.exit(0);

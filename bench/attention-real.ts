/**
 * The fused attention kernels alone on the packed rows of real HH-RLHF pairs (the bench:real epoch's shapes):
 * the first N pairs tokenized as bench:real does, packed 4 pairs a row (padding_free or shared_prompt), random
 * q/k/v, per-token RoPE; prints the forward and backward milliseconds per epoch (each batch's forward run twice,
 * policy and reference, the backward once, times the model's layers), min over --reps repetitions.
 *
 *   npx tsx bench/attention-real.ts [--model stories260K] [--pairs 32] [--max-length 512] [--layout shared_prompt]
 *     [--heads 8 --kv-heads 4 --head-dim 8 --layers 5] [--reps 5] [--addon F (a compiled addon file: A/B)]
 */
import { existsSync, readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { type NativeAddon, loadNativeAddon } from '../src/training/engine/addon.js';
import { engineSettings } from '../src/training/engine/settings.js';
import { initBackend } from '../src/training/engine/backend.js';
import { loadPretrained } from '../src/training/models/index.js';
import { packPreference, tokenizePreference, type TokenizedPair } from '../src/training/data/index.js';
import { Rng } from '../src/util/rng.js';

const SHARED =
  process.env.BENCH_SHARED_DIR ??
  [resolve(import.meta.dirname, '../../shared'), resolve(import.meta.dirname, '../../../shared')].find((d) => existsSync(d)) ??
  '../shared';
const args = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const nPairs = Number(opt('pairs', '32'));
const maxLength = Number(opt('max-length', '512'));
const layout = opt('layout', 'shared_prompt') as 'shared_prompt' | 'padding_free';
const H = Number(opt('heads', '8'));
const KV = Number(opt('kv-heads', '4'));
const hd = Number(opt('head-dim', '8'));
const layers = Number(opt('layers', '5'));
const reps = Number(opt('reps', '5'));
/** --flush: write 64 MB between kernel calls (inputs, outputs and scratch out of the caches, as inside a step) */
const flush = args.includes('--flush') ? new Float32Array(16 << 20) : null;

await initBackend('auto');
const addonFile = args.includes('--addon') ? opt('addon', '') : '';
const g = addonFile ? (createRequire(import.meta.url)(resolve(addonFile)) as NativeAddon) : loadNativeAddon();
if (addonFile) g?.configure(engineSettings().mtMflop, engineSettings().spinUs);
if (!g) throw new Error('native addon not available');
const { tokenizer } = await loadPretrained(opt('model', 'stories260K'));
const text = gunzipSync(readFileSync(join(SHARED, 'data/hh-rlhf/harmless-base-test.jsonl.gz'))).toString('utf8');
const pairs: TokenizedPair[] = [];
for (const line of text.split('\n')) {
  if (!line.trim() || pairs.length >= nPairs) continue;
  const r = JSON.parse(line) as { chosen: string; rejected: string };
  const k = r.chosen.lastIndexOf('\n\nAssistant:') + '\n\nAssistant:'.length;
  if (r.chosen.slice(0, k) !== r.rejected.slice(0, k) || !r.chosen.slice(k).trim() || !r.rejected.slice(k).trim()) continue;
  const p = tokenizePreference({ prompt: r.chosen.slice(0, k), chosen: r.chosen.slice(k), rejected: r.rejected.slice(k) }, tokenizer, {
    maxLength,
    maxPromptLength: Math.floor(maxLength / 2),
    truncationMode: 'keep_end',
  });
  if (p) pairs.push(p);
}
/** `n` seeded uniform values in [-1, 1) (src/util/rng.ts). */
const rand = (n: number, seed: number): Float32Array => {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => 2 * r.next() - 1);
};
const threads = engineSettings().nativeThreads;
const batches = [];
for (let i = 0; i < pairs.length; i += 4) {
  const b = packPreference(pairs.slice(i, i + 4), layout);
  const T = b.seqLen;
  const cos = new Float32Array(T * hd);
  const sin = new Float32Array(T * hd);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < hd / 2; j++) {
      const a = b.positionIds[t]! / 10000 ** ((2 * j) / hd);
      cos[t * hd + j] = cos[t * hd + j + hd / 2] = Math.cos(a);
      sin[t * hd + j] = sin[t * hd + j + hd / 2] = Math.sin(a);
    }
  const nq = T * H * hd;
  const nk = T * KV * hd;
  batches.push({
    T,
    mask: b.segments,
    cos,
    sin,
    q: rand(nq, 1),
    k: rand(nk, 2),
    v: rand(nk, 3),
    dO: rand(nq, 4),
    o: new Float32Array(nq),
    qr: new Float32Array(nq),
    kr: new Float32Array(nk),
    lse: new Float32Array(H * T),
    dq: new Float32Array(nq),
    dk: new Float32Array(nk),
    dv: new Float32Array(nk),
  });
}
let fwdBest = Infinity;
let bwdBest = Infinity;
for (let r = 0; r < reps; r++) {
  let fwd = 0;
  let bwd = 0;
  for (const x of batches) {
    flush?.fill(r);
    const t0 = performance.now();
    g.attentionFwd(x.q, x.k, x.v, x.cos, x.sin, x.o, x.qr, x.kr, x.lse, 1, x.T, H, KV, hd, 1 / Math.sqrt(hd), threads, x.mask, 1);
    const t1a = performance.now();
    flush?.fill(r + 1);
    const t1 = performance.now();
    g.attentionBwd(x.dO, x.qr, x.kr, x.v, x.o, x.lse, x.cos, x.sin, x.dq, x.dk, x.dv, 1, x.T, H, KV, hd, 1 / Math.sqrt(hd), threads, x.mask, 1);
    const t2 = performance.now();
    fwd += t1a - t0;
    bwd += t2 - t1;
  }
  fwdBest = Math.min(fwdBest, fwd);
  bwdBest = Math.min(bwdBest, bwd);
}
let sum = 0;
for (const x of batches) for (const a of [x.o, x.dq, x.dk, x.dv]) for (let i = 0; i < a.length; i += 7) sum += a[i]!;
const T = batches.map((x) => x.T);
console.log(
  JSON.stringify({
    layout,
    rows: batches.length,
    T: `${Math.min(...T)}-${Math.max(...T)}`,
    H,
    KV,
    hd,
    fwd_ms_per_batch: +(fwdBest / batches.length).toFixed(3),
    bwd_ms_per_batch: +(bwdBest / batches.length).toFixed(3),
    epoch_ms: +((2 * fwdBest + bwdBest) * layers).toFixed(1),
    checksum: +sum.toFixed(4),
  }),
);

/**
 * One DPO (or SFT) training step of a Llama-architecture model in TypeScript/tfjs, timed the way the PyTorch
 * peer times it (../shared/bench/torch_dpo_step.py): random weights and tokens, completion mask from seq/4,
 * step = reference forward (no grad) + policy forward/backward on the concatenated [chosen; rejected] batch +
 * sigmoid DPO loss (beta 0.1) + AdamW update; step 0 is a warm-up; the median of the rest is reported.
 * SFT mode: policy forward/backward of the mean NLL over the completion tokens of the same 2*pairs rows + AdamW.
 *
 *   npm run bench -- --preset stories15M --pairs 4 --seq 128 --steps 5 --json [--mode dpo|sft]
 *                    [--threads N] [--backend wasm|cpu|auto] [--no-row-mask] [--precompute-ref] [--fused-adamw]
 * --threads sets the wasm XNNPACK pool (default: see initBackend); --no-row-mask computes the vocabulary
 * projection for every position as the peer does; --precompute-ref computes the reference log-probs once
 * (TRL's precompute_ref_log_probs) instead of every step; --fused-adamw uses the engine's fused AdamW
 * (src/training/engine/optim.ts) instead of the trainer's optimizer.
 *
 * Prints one JSON line: {engine, backend, threads, preset, params, pairs, seq, mode, median_step_s,
 * min_step_s, max_step_s, tokens_per_s, peak_rss_mb, gflops, ...}. `gflops` counts the FLOPs of the
 * peer's computation (every position's full vocabulary projection, full T x T attention) per second, so it
 * compares directly with the peer's throughput; `tokens_per_s` counts policy tokens (2 * pairs * seq).
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, type BackendRequest } from '../src/training/engine/backend.js';
import { tokenLogps } from '../src/training/engine/ops.js';
import { createModel, cloneModel } from '../src/training/models/index.js';
import type { CausalLM, ModelConfig } from '../src/training/types.js';

/** The dims of karpathy/llama2.c's TinyStories models (the peer's PRESETS). */
export const PRESETS: Record<string, { dim: number; hidden: number; layers: number; heads: number; kvHeads: number; vocab: number }> = {
  stories260K: { dim: 64, hidden: 172, layers: 5, heads: 8, kvHeads: 4, vocab: 512 },
  stories15M: { dim: 288, hidden: 768, layers: 6, heads: 6, kvHeads: 6, vocab: 32000 },
  stories42M: { dim: 512, hidden: 1376, layers: 8, heads: 8, kvHeads: 8, vocab: 32000 },
};

export interface BenchArgs {
  preset: string;
  pairs: number;
  seq: number;
  steps: number;
  mode: 'dpo' | 'sft';
  threads?: number;
  backend: BackendRequest;
  rowMask: boolean;
  precomputeRef: boolean;
  fusedAdamW: boolean;
  json: boolean;
}

export function parseArgs(argv: string[]): BenchArgs {
  const a: BenchArgs = {
    preset: 'stories15M',
    pairs: 4,
    seq: 128,
    steps: 5,
    mode: 'dpo',
    backend: 'wasm',
    rowMask: true,
    precomputeRef: false,
    fusedAdamW: false,
    json: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--preset') a.preset = v();
    else if (k === '--pairs') a.pairs = Number(v());
    else if (k === '--seq') a.seq = Number(v());
    else if (k === '--steps') a.steps = Number(v());
    else if (k === '--mode') a.mode = v() as 'dpo' | 'sft';
    else if (k === '--threads') a.threads = Number(v());
    else if (k === '--backend') a.backend = v() as BackendRequest;
    else if (k === '--no-row-mask') a.rowMask = false;
    else if (k === '--precompute-ref') a.precomputeRef = true;
    else if (k === '--fused-adamw') a.fusedAdamW = true;
    else if (k === '--json') a.json = true;
    else throw new Error(`unknown argument ${k}; see bench/dpo-step.ts`);
  }
  if (!PRESETS[a.preset]) throw new Error(`--preset must be one of ${Object.keys(PRESETS).join(', ')}`);
  if (a.mode !== 'dpo' && a.mode !== 'sft') throw new Error('--mode must be dpo or sft');
  return a;
}

export function presetConfig(name: string, seq: number): ModelConfig {
  const p = PRESETS[name]!;
  return {
    architecture: 'llama',
    modelType: 'llama',
    vocabSize: p.vocab,
    hiddenSize: p.dim,
    intermediateSize: p.hidden,
    numLayers: p.layers,
    numHeads: p.heads,
    numKvHeads: p.kvHeads,
    headDim: p.dim / p.heads,
    maxPositionEmbeddings: Math.max(seq, 256),
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tieWordEmbeddings: true,
    attentionBias: false,
    qkNorm: false,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: null,
  };
}

/** FLOPs of the peer's step (forward = 1 unit, backward = 2): reference fwd + policy fwd/bwd (DPO), policy fwd/bwd (SFT). */
export function peerStepFlops(c: ModelConfig, rows: number, T: number, mode: 'dpo' | 'sft'): number {
  const D = c.hiddenSize;
  const kv = c.numKvHeads * c.headDim;
  const perLayer = 2 * (D * D + 2 * D * kv + D * D + 3 * D * c.intermediateSize); // q,k,v,o + mlp, per token
  const attn = 2 * 2 * T * c.numHeads * c.headDim; // q k^T and p v, full T x T, per token per layer
  const fwd = rows * T * (c.numLayers * (perLayer + attn) + 2 * D * c.vocabSize);
  return mode === 'dpo' ? 4 * fwd : 3 * fwd;
}

/** Minimal AdamW (torch.optim.AdamW semantics) used when the trainer's optimizer is not available. */
class BenchAdamW {
  private m = new Map<string, tf.Variable>();
  private v = new Map<string, tf.Variable>();
  private t = 0;
  constructor(
    private lr = 1e-5,
    private wd = 0.01,
    private b1 = 0.9,
    private b2 = 0.999,
    private eps = 1e-8,
  ) {}
  apply(params: Map<string, tf.Variable>, grads: Map<string, tf.Tensor>): void {
    this.t++;
    const bc1 = 1 - this.b1 ** this.t;
    const bc2 = 1 - this.b2 ** this.t;
    for (const [name, p] of params) {
      const g = grads.get(name);
      if (!g) continue;
      if (!this.m.has(name)) {
        this.m.set(name, tf.variable(tf.zerosLike(p), false));
        this.v.set(name, tf.variable(tf.zerosLike(p), false));
      }
      const m = this.m.get(name)!;
      const v = this.v.get(name)!;
      tf.tidy(() => {
        const mN = tf.add(tf.mul(m, this.b1), tf.mul(g, 1 - this.b1));
        const vN = tf.add(tf.mul(v, this.b2), tf.mul(tf.square(g), 1 - this.b2));
        const upd = tf.div(mN, tf.add(tf.sqrt(tf.div(vN, bc2)), this.eps));
        m.assign(mN);
        v.assign(vN);
        p.assign(tf.sub(tf.mul(p, 1 - this.lr * this.wd), tf.mul(upd, this.lr / bc1)));
      });
    }
  }
}

type Applier = (params: Map<string, tf.Variable>, grads: Map<string, tf.Tensor>) => void;

/** The trainer's AdamW (src/training/trainer/optimizer.ts) when present, else {@link BenchAdamW}. */
async function makeOptimizer(params: Map<string, tf.Variable>, fused: boolean): Promise<{ apply: Applier; source: string }> {
  if (fused) {
    const { adamwUpdate, fusedAdamWAvailable } = await import('../src/training/engine/optim.js');
    const m = new Map<string, tf.Variable>();
    const v = new Map<string, tf.Variable>();
    let t = 0;
    return {
      apply: (p, g) => {
        t++;
        for (const [name, w] of p) {
          const gr = g.get(name);
          if (!gr) continue;
          if (!m.has(name)) {
            m.set(name, tf.variable(tf.zerosLike(w), false));
            v.set(name, tf.variable(tf.zerosLike(w), false));
          }
          adamwUpdate(w, gr, m.get(name)!, v.get(name)!, { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: t });
        }
      },
      source: fusedAdamWAvailable() ? 'engine-fused' : 'engine-tfjs',
    };
  }
  try {
    const modPath = '../src/training/trainer/optimizer.js';
    const mod = (await import(modPath)) as {
      Optimizer: new (p: Map<string, tf.Variable>, s: Record<string, unknown>) => { apply(g: Map<string, tf.Tensor>, lr: number): void };
    };
    const opt = new mod.Optimizer(params, { name: 'adamw', weightDecay: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, rmspropAlpha: 0.99, momentum: 0 });
    return { apply: (_p, g) => opt.apply(g, 1e-5), source: 'trainer' };
  } catch {
    const opt = new BenchAdamW();
    return { apply: (p, g) => opt.apply(p, g), source: 'bench' };
  }
}

/**
 * Summed completion log-probs `[rows]` (label t+1 scored at t, mask[t+1]); the same convention as the losses'
 * completionLogps, with the shifted mask passed to tokenLogps so prompt rows skip the vocabulary projection.
 */
export function seqLogps(model: CausalLM, ids: tf.Tensor2D, labels: tf.Tensor1D, shiftedMask: Float32Array, rowMask: boolean): tf.Tensor1D {
  const [B, T] = ids.shape;
  const hidden = model.hidden(ids);
  const { weight, layout } = model.outputProjection();
  const lp = tokenLogps(hidden, weight, labels, layout, rowMask ? { rowMask: shiftedMask } : {});
  return tf.sum(tf.mul(tf.reshape(lp, [B, T]), tf.tensor2d(shiftedMask, [B, T])), 1) as tf.Tensor1D;
}

export interface BenchResult {
  engine: string;
  backend: string;
  threads: number;
  preset: string;
  params: number;
  pairs: number;
  seq: number;
  mode: string;
  median_step_s: number;
  min_step_s: number;
  max_step_s: number;
  tokens_per_s: number;
  peak_rss_mb: number;
  gflops: number;
  row_mask: boolean;
  precompute_ref: boolean;
  optimizer: string;
  /** loss of the last timed step (after `steps` updates) */
  loss: number;
  /** loss of the warm-up step (before any update: policy = reference, so DPO gives log 2) */
  first_loss: number;
  /** mean seconds per step of: the reference forward, the policy forward/backward, the optimizer update */
  parts_s: { ref: number; policy: number; optimizer: number };
  native_matmul: boolean;
}

export async function runBench(a: BenchArgs): Promise<BenchResult> {
  const info = await initBackend(a.backend, a.threads ? { wasmThreads: a.threads } : {});
  const c = presetConfig(a.preset, a.seq);
  // seed 1: tfjs treats a seed of 0 as "unseeded" (Math.random), and createModel derives seed * 7919 + i
  const policy = createModel(c, { seed: 1 });
  const reference = a.mode === 'dpo' ? cloneModel(policy, { trainable: false }) : null;
  const params = new Map([...policy.params].filter(([, v]) => v.trainable));
  const nParams = [...policy.params.values()].reduce((s, v) => s + v.size, 0);
  const opt = await makeOptimizer(params, a.fusedAdamW);
  const rows = 2 * a.pairs;
  const T = a.seq;
  // random tokens (seeded LCG) and the peer's mask: completion from seq/4
  let s = 12345;
  const idsData = new Int32Array(rows * T).map(() => ((s = (s * 1103515245 + 12345) >>> 0), s % c.vocabSize));
  const ids = tf.tensor2d(idsData, [rows, T], 'int32');
  const labelData = new Int32Array(rows * T);
  const shifted = new Float32Array(rows * T);
  for (let r = 0; r < rows; r++)
    for (let t = 0; t < T - 1; t++) {
      labelData[r * T + t] = idsData[r * T + t + 1]!;
      shifted[r * T + t] = t + 1 >= Math.floor(T / 4) ? 1 : 0;
    }
  const labels = tf.tensor1d(labelData, 'int32');
  const beta = 0.1;
  let refLogps: tf.Tensor1D | null = null;
  if (a.precomputeRef && reference) refLogps = tf.keep(tf.tidy(() => seqLogps(reference, ids, labels, shifted, a.rowMask)));

  const times: number[] = [];
  const parts = { ref: 0, policy: 0, optimizer: 0 };
  let loss = NaN;
  let firstLoss = NaN;
  for (let step = 0; step <= a.steps; step++) {
    const t0 = performance.now();
    const ref = reference ? (refLogps ?? tf.tidy(() => seqLogps(reference, ids, labels, shifted, a.rowMask))) : null;
    const t1 = performance.now();
    const { value, grads } = tf.variableGrads(() => {
      const lp = seqLogps(policy, ids, labels, shifted, a.rowMask);
      if (a.mode === 'sft') {
        let n = 0;
        for (const m of shifted) n += m;
        return tf.div(tf.neg(tf.sum(lp)), n) as tf.Scalar;
      }
      const [pc, pr] = tf.split(lp, 2);
      const [rc, rr] = tf.split(ref!, 2);
      const logits = tf.sub(tf.sub(pc!, pr!), tf.sub(rc!, rr!));
      // -logsigmoid(z) = softplus(-z) (tfjs's logSigmoid gradient reads a disposed input inside variableGrads)
      return tf.mean(tf.softplus(tf.mul(-beta, logits))) as tf.Scalar;
    }, [...params.values()]);
    const gmap = new Map<string, tf.Tensor>();
    for (const [name, v] of params) if (grads[v.name]) gmap.set(name, grads[v.name]!);
    const t2 = performance.now();
    opt.apply(params, gmap);
    loss = (await value.data())[0]!;
    if (step === 0) firstLoss = loss;
    const t3 = performance.now();
    if (step > 0) {
      parts.ref += (t1 - t0) / 1000;
      parts.policy += (t2 - t1) / 1000;
      parts.optimizer += (t3 - t2) / 1000;
    }
    tf.dispose([value, ...Object.values(grads)]);
    if (ref && ref !== refLogps) ref.dispose();
    const dt = (performance.now() - t0) / 1000;
    if (step > 0) times.push(dt);
  }
  if (times.length === 0) times.push(NaN); // steps 0: warm-up only (profiling)
  times.sort((x, y) => x - y);
  const med = times.length % 2 ? times[(times.length - 1) / 2]! : (times[times.length / 2 - 1]! + times[times.length / 2]!) / 2;
  const flops = peerStepFlops(c, rows, T, a.mode);
  return {
    engine: 'tfjs',
    backend: info.name,
    threads: info.threads,
    preset: a.preset,
    params: nParams,
    pairs: a.pairs,
    seq: a.seq,
    mode: a.mode,
    median_step_s: +med.toFixed(4),
    min_step_s: +times[0]!.toFixed(4),
    max_step_s: +times[times.length - 1]!.toFixed(4),
    tokens_per_s: +((rows * T) / med).toFixed(1),
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
    gflops: +(flops / med / 1e9).toFixed(1),
    row_mask: a.rowMask,
    precompute_ref: a.precomputeRef,
    optimizer: opt.source,
    loss,
    first_loss: firstLoss,
    parts_s: {
      ref: +(parts.ref / Math.max(1, a.steps)).toFixed(4),
      policy: +(parts.policy / Math.max(1, a.steps)).toFixed(4),
      optimizer: +(parts.optimizer / Math.max(1, a.steps)).toFixed(4),
    },
    native_matmul: info.nativeMatmul,
  };
}

const isMain = process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!);
if (isMain) {
  const a = parseArgs(process.argv.slice(2));
  const r = await runBench(a);
  if (a.json) console.log(JSON.stringify(r));
  else
    console.log(
      `${r.engine}/${r.backend}x${r.threads} ${r.preset} ${r.mode} ${r.pairs}x${r.seq}: ${(r.median_step_s * 1000).toFixed(0)} ms/step (min ${(r.min_step_s * 1000).toFixed(0)}, max ${(r.max_step_s * 1000).toFixed(0)}), ${r.tokens_per_s} tok/s, ${r.gflops} GFLOP/s (peer-equivalent), peak RSS ${r.peak_rss_mb} MB, optimizer ${r.optimizer}, native matmul ${r.native_matmul}; per step: reference ${r.parts_s.ref}s, policy fwd/bwd ${r.parts_s.policy}s, optimizer ${r.parts_s.optimizer}s`,
    );
  process.exit(0);
}

/**
 * Peak-memory estimate of a training run from its configuration, before any weight is trained, and the
 * refusal of a run that cannot fit (`INSUFFICIENT_MEMORY`, naming the estimate, the memory available and
 * settings that would fit).
 *
 * The estimate (bytes; float32 = 4) is the sum of what is alive at the peak of a DPO step (SFT's is lower:
 * no reference, half the rows):
 *   weights     4 P, with frozen decoder linears P_lin at 2 (bfloat16) or 1 (int8) bytes when configured
 *   gradients   4 T (T trainable parameters: P, or the LoRA adapters' r (in + out) per projection), twice
 *               with gradient accumulation (the running sum and the micro-batch's)
 *   optimizer   AdamW's two moments 8 T, plus the out-of-place update of the largest tensor (12 max_i T_i)
 *   reference   a frozen copy of the policy (4 P, or bfloat16 linears) unless LoRA (the adapter-disabled
 *               policy), precomputed log-probs, or a reference-free loss
 *   activations the decoder's saved intermediates per token and layer (Llama: ~10 D + 4 kv + 4 F floats),
 *               or with gradient_checkpointing the layer inputs (D per token and layer) plus one layer's, over
 *               N = 2 batch_size max_length tokens (chosen and rejected rows); the LM head keeps softmax
 *               probabilities for the completion rows (V floats each) for its backward pass
 *   runtime     ~350 MB for Node, V8, tfjs and the addon, and 15% for allocator slack
 * The native backend's pool of freed buffers is not part of it: a run lets the pool hold only what is left
 * beyond this estimate (src/training/engine/native-backend.ts sizeNativePool; DPO_NATIVE_POOL_MB fixes it).
 * It is an estimate (tfjs frees tensors as their scopes end, the garbage collector returns buffers late): the
 * README's table gives measured peaks next to it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { TrainConfig } from '../../config/index.js';
import type { ModelConfig } from '../types.js';

/** A run that cannot fit in memory (code `INSUFFICIENT_MEMORY`): the estimate, what is available, what would fit. */
export class InsufficientMemoryError extends Error {
  readonly code = 'INSUFFICIENT_MEMORY';
  constructor(
    readonly estimate: MemoryEstimate,
    readonly availableBytes: number,
    /** settings that would fit, e.g. `gradient_checkpointing=true` (with their estimates) */
    readonly wouldFit: Array<{ overrides: string; bytes: number }>,
  ) {
    super(
      `estimated peak memory ${gib(estimate.totalBytes)} (${describe(estimate)}) exceeds the ${gib(availableBytes)} available; ` +
        (wouldFit.length
          ? `would fit: ${wouldFit.map((w) => `${w.overrides} (${gib(w.bytes)})`).join('; ')}`
          : 'no single change of lora.enabled, gradient_checkpointing, frozen_weights_dtype, batch_size or max_length fits'),
    );
    this.name = 'InsufficientMemoryError';
  }
}

/** The parts of the estimate, bytes. */
export interface MemoryEstimate {
  weights: number;
  gradients: number;
  optimizer: number;
  reference: number;
  activations: number;
  runtime: number;
  totalBytes: number;
}

/** The settings the estimate reads. */
export type MemoryConfig = Pick<
  TrainConfig,
  | 'batch_size'
  | 'gradient_accumulation_steps'
  | 'max_length'
  | 'max_prompt_length'
  | 'lora'
  | 'precompute_ref_log_probs'
  | 'gradient_checkpointing'
  | 'frozen_weights_dtype'
  | 'weight_quantize_algo'
>;

const gib = (b: number): string => `${(b / 2 ** 30).toFixed(2)} GiB`;
function describe(e: MemoryEstimate): string {
  const parts: Array<[string, number]> = [
    ['weights', e.weights],
    ['gradients', e.gradients],
    ['optimizer', e.optimizer],
    ['reference', e.reference],
    ['activations', e.activations],
    ['runtime', e.runtime],
  ];
  return parts
    .filter(([, b]) => b > 0)
    .map(([k, b]) => `${k} ${gib(b)}`)
    .join(', ');
}

/** Parameter counts of a model config: total, decoder linears, and each decoder projection's [in, out]. */
export function parameterShapes(c: ModelConfig): { total: number; linear: number; projections: Array<{ name: string; inDim: number; outDim: number }> } {
  const D = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const F = c.intermediateSize;
  const projections: Array<{ name: string; inDim: number; outDim: number }> = [];
  let other = c.vocabSize * D * (c.tieWordEmbeddings ? 1 : 2) + D;
  if (c.architecture === 'gpt2') {
    other += c.maxPositionEmbeddings * D;
    projections.push({ name: 'c_attn', inDim: D, outDim: 3 * D }, { name: 'attn.c_proj', inDim: D, outDim: D });
    projections.push({ name: 'c_fc', inDim: D, outDim: F }, { name: 'mlp.c_proj', inDim: F, outDim: D });
    other += c.numLayers * (4 * D + 3 * D + D + F + D);
  } else {
    projections.push({ name: 'q_proj', inDim: D, outDim: q }, { name: 'k_proj', inDim: D, outDim: kv }, { name: 'v_proj', inDim: D, outDim: kv });
    projections.push({ name: 'o_proj', inDim: q, outDim: D });
    projections.push({ name: 'gate_proj', inDim: D, outDim: F }, { name: 'up_proj', inDim: D, outDim: F }, { name: 'down_proj', inDim: F, outDim: D });
    other += c.numLayers * (2 * D + (c.attentionBias ? q + 2 * kv : 0) + (c.qkNorm ? 2 * c.headDim : 0));
  }
  const perLayer = projections.reduce((s, p) => s + p.inDim * p.outDim, 0);
  const linear = perLayer * c.numLayers;
  return { total: linear + other, linear, projections };
}

/**
 * Estimate the peak memory of an SFT -> DPO run of `model` with `cfg` (see the file comment).
 * @param needsReference false for a reference-free loss (no reference copy)
 */
export function estimateMemory(model: ModelConfig, cfg: MemoryConfig, needsReference = true): MemoryEstimate {
  const { total: P, linear: PL, projections } = parameterShapes(model);
  const lora = cfg.lora.enabled;
  const targets = cfg.lora.target_modules;
  const adapted = lora ? projections.filter((p) => targets === 'all-linear' || targets.includes(p.name.split('.').pop()!)) : [];
  const T = lora ? adapted.reduce((s, p) => s + cfg.lora.r * (p.inDim + p.outDim), 0) * model.numLayers : P;
  const largest = lora ? Math.max(0, ...adapted.map((p) => cfg.lora.r * Math.max(p.inDim, p.outDim))) : model.vocabSize * model.hiddenSize;
  const frozenBytes = lora && cfg.weight_quantize_algo === 'weight_only_int8' ? 1 : cfg.frozen_weights_dtype === 'bfloat16' ? 2 : 4;
  const weights = lora ? 4 * (P - PL) + frozenBytes * PL + 4 * T : 4 * P;
  const gradients = 4 * T * (cfg.gradient_accumulation_steps > 1 ? 2 : 1);
  const optimizer = 8 * T + 12 * largest;
  const refLinear = cfg.frozen_weights_dtype === 'bfloat16' ? 2 : 4;
  const reference = !needsReference || lora || cfg.precompute_ref_log_probs ? 0 : 4 * (P - PL) + refLinear * PL;
  const D = model.hiddenSize;
  const kv = model.numKvHeads * model.headDim;
  const F = model.intermediateSize;
  const rows = 2 * cfg.batch_size;
  const N = rows * cfg.max_length;
  const perTokenLayer = 10 * D + 4 * kv + 4 * F + 2 * model.numHeads;
  const layerActs = cfg.gradient_checkpointing ? N * (model.numLayers * D + perTokenLayer) : N * model.numLayers * perTokenLayer;
  const completionRows = rows * Math.max(1, cfg.max_length - Math.min(cfg.max_prompt_length, cfg.max_length - 1));
  const headActs = completionRows * model.vocabSize + Math.min(N, 2 ** 25 / model.vocabSize + 1) * model.vocabSize;
  const activations = 4 * (layerActs + headActs + N * D * 4);
  const runtime = 350 * 2 ** 20;
  const sum = weights + gradients + optimizer + reference + activations;
  return { weights, gradients, optimizer, reference, activations, runtime, totalBytes: Math.round(sum * 1.15 + runtime) };
}

/**
 * Memory this process can use, bytes: the cgroup limit when one is set (containers), else MemAvailable from
 * /proc/meminfo plus what this process already holds, else os.freemem().
 */
export function availableMemory(): number {
  const rss = process.memoryUsage().rss;
  let limit = Number.POSITIVE_INFINITY;
  for (const f of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const v = Number(fs.readFileSync(f, 'utf8').trim());
      if (Number.isFinite(v) && v > 0 && v < 2 ** 60) limit = Math.min(limit, v);
    } catch {
      /* not in a cgroup with a limit */
    }
  }
  let avail = os.freemem() + rss;
  try {
    const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m) avail = Number(m[1]) * 1024 + rss;
  } catch {
    /* not Linux */
  }
  return Math.min(limit, avail, os.totalmem());
}

/**
 * Refuse a run whose estimate exceeds `available` (default {@link availableMemory}), suggesting single changes
 * that would fit (each estimated the same way).
 * @returns the estimate when it fits
 * @throws InsufficientMemoryError otherwise
 */
export function checkMemory(model: ModelConfig, cfg: MemoryConfig, opts: { needsReference?: boolean; available?: number } = {}): MemoryEstimate {
  const need = opts.needsReference ?? true;
  const available = opts.available ?? availableMemory();
  const est = estimateMemory(model, cfg, need);
  if (est.totalBytes <= available) return est;
  const tries: Array<[string, MemoryConfig]> = [];
  if (!cfg.gradient_checkpointing) tries.push(['gradient_checkpointing=true', { ...cfg, gradient_checkpointing: true }]);
  if (!cfg.lora.enabled) tries.push(['lora.enabled=true', { ...cfg, lora: { ...cfg.lora, enabled: true } }]);
  if (cfg.frozen_weights_dtype !== 'bfloat16') tries.push(['frozen_weights_dtype=bfloat16', { ...cfg, frozen_weights_dtype: 'bfloat16' }]);
  for (let b = cfg.batch_size >> 1; b >= 1; b >>= 1) {
    if (estimateMemory(model, { ...cfg, batch_size: b }, need).totalBytes <= available) {
      tries.push([`batch_size=${b}`, { ...cfg, batch_size: b }]);
      break;
    }
  }
  if (!cfg.gradient_checkpointing && !cfg.lora.enabled)
    tries.push(['lora.enabled=true gradient_checkpointing=true', { ...cfg, gradient_checkpointing: true, lora: { ...cfg.lora, enabled: true } }]);
  const wouldFit = tries.map(([overrides, c]) => ({ overrides, bytes: estimateMemory(model, c, need).totalBytes })).filter((w) => w.bytes <= available);
  throw new InsufficientMemoryError(est, available, wouldFit);
}

/** The estimate as one line (for logs and `--dry-run`). */
export function formatEstimate(e: MemoryEstimate, available: number): string {
  return `estimated peak ${gib(e.totalBytes)} of ${gib(available)} available (${describe(e)})`;
}

/**
 * An allocation failure during training (a TypedArray or ArrayBuffer the engine could not get) as
 * {@link InsufficientMemoryError} with the run's estimate; any other error unchanged.
 */
export function asInsufficientMemory(e: unknown, estimate: MemoryEstimate | null): unknown {
  if (!(e instanceof RangeError) || !/allocation failed|Invalid typed array length|Array buffer allocation|out of memory/i.test(e.message)) return e;
  const est = estimate ?? { weights: 0, gradients: 0, optimizer: 0, reference: 0, activations: 0, runtime: 0, totalBytes: 0 };
  const err = new InsufficientMemoryError(est, availableMemory(), []);
  err.message = `out of memory during training (${e.message}); ${err.message}`;
  return err;
}

/**
 * What the architectures (llama.ts, gpt2.ts) share: parameters as tf.Variables under transformers' names,
 * the HF ⇄ internal layout of linear weights, LoRA adapters on named projections, and the KV cache.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM, ModelConfig, PackedPositions } from '../types.js';
import { linear } from '../engine/ops.js';
import { recomputeInBackward } from '../engine/recompute.js';
import { WeightsError } from './errors.js';
import type { HostTensor, TensorMap } from './llama2c.js';

/** Per-layer cached keys and values for incremental decoding. */
export class KVCache {
  /** `[B, KV, S, hd]` per layer, null before the first step. */
  readonly keys: Array<tf.Tensor4D | null>;
  readonly values: Array<tf.Tensor4D | null>;
  /** Number of positions cached (S). */
  length = 0;
  constructor(numLayers: number) {
    this.keys = new Array<tf.Tensor4D | null>(numLayers).fill(null);
    this.values = new Array<tf.Tensor4D | null>(numLayers).fill(null);
  }
  /**
   * Append `k`, `v` (`[B, KV, T, hd]`) for layer `l`; returns the full `[B, KV, S+T, hd]` pair. The cache
   * keeps (tf.keep) its own tensors and disposes the previous ones.
   */
  append(l: number, k: tf.Tensor4D, v: tf.Tensor4D): { k: tf.Tensor4D; v: tf.Tensor4D } {
    const oldK = this.keys[l];
    const oldV = this.values[l];
    const nk = oldK ? (tf.concat([oldK, k], 2) as tf.Tensor4D) : k.clone();
    const nv = oldV ? (tf.concat([oldV, v], 2) as tf.Tensor4D) : v.clone();
    this.keys[l] = tf.keep(nk);
    this.values[l] = tf.keep(nv);
    oldK?.dispose();
    oldV?.dispose();
    return { k: nk, v: nv };
  }
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
    this.length = 0;
  }
}

/**
 * A LoRA adapter on one linear projection: y += dropout(x) @ A @ B * scale (Hu et al. 2021, eq. 3), scale =
 * alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor").
 */
export interface LoraAdapter {
  /** `[in, r]` */
  A: tf.Variable;
  /** `[r, out]`, zero-initialised */
  B: tf.Variable;
  r: number;
  alpha: number;
  /** the update's scale: alpha / r (LoRA) or alpha / sqrt(r) (rsLoRA) */
  scale: number;
  dropout: number;
}

/** A model that also supports incremental decoding with a KV cache (every model of this layer does). */
export interface GenerativeLM extends CausalLM {
  /** When false, projections ignore their LoRA adapters (the base model: the DPO reference under LoRA). */
  adaptersEnabled: boolean;
  /** Recompute each decoder layer in the backward pass (TRL `gradient_checkpointing`). */
  gradientCheckpointing: boolean;
  /** A fresh, empty cache. */
  createCache(): KVCache;
  /**
   * Logits for new tokens given the cached prefix; appends their keys/values to `cache`.
   * @param inputIds `[B, T]` int32, the tokens at positions cache.length .. cache.length + T - 1
   * @returns `[B, T, V]`
   */
  logitsCached(inputIds: tf.Tensor2D, cache: KVCache): tf.Tensor3D;
}

/** A small stable hash of a module name (distinct dropout seeds per projection). */
function moduleHash(module: string): number {
  let h = 0;
  for (let i = 0; i < module.length; i++) h = (h * 31 + module.charCodeAt(i)) % 1000003;
  return h;
}

/** Expected HF-layout shape of every tensor of an architecture, in a stable order. */
export type ShapeSpec = Array<[name: string, shape: number[]]>;

/** Row-major transpose of a `[rows, cols]` matrix. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[base + c]!;
  }
  return out;
}

/**
 * Common machinery of the architectures. Subclasses implement {@link forward} and describe their tensors.
 */
export abstract class BaseLM implements GenerativeLM {
  readonly config: ModelConfig;
  readonly params: Map<string, tf.Variable>;
  /**
   * LoRA adapters by module name (e.g. `model.layers.0.self_attn.q_proj`). Their variables are also in
   * `params` as `<module>.lora_A.weight` / `<module>.lora_B.weight` so trainers find them.
   */
  readonly adapters = new Map<string, LoraAdapter>();
  /** When false, projections ignore their adapters (the LoRA reference model). */
  adaptersEnabled = true;
  /** Training mode enables LoRA dropout; off by default (DPO disables dropout, as TRL's disable_dropout). */
  training = false;
  /**
   * Recompute each decoder layer's activations in the backward pass instead of keeping them (TRL's
   * `gradient_checkpointing`): peak activation memory of a whole-sequence forward falls to the layer inputs
   * plus one layer, for about one more forward pass of compute. Same values and gradients.
   */
  gradientCheckpointing = false;
  /**
   * Seed of LoRA dropout (each projection draws from `dropoutSeed + hash(module name)`); null: unseeded. A
   * checkpointed layer seeds itself when this is null, so its recomputation draws the same mask.
   */
  dropoutSeed: number | null = null;

  constructor(config: ModelConfig, params: Map<string, tf.Variable>) {
    this.config = config;
    this.params = params;
  }

  /**
   * Final normed hidden states, optionally continuing a KV cache.
   * @param inputIds `[B, T]` int32
   * @param packing per-token positions and attention segments of packed rows (no cache); default: each row
   *   one sequence at positions cache.length.. with plain causal attention
   * @returns `[B*T, D]`
   */
  protected abstract forward(inputIds: tf.Tensor2D, cache: KVCache | null, packing?: PackedPositions): tf.Tensor2D;
  abstract outputProjection(): { weight: tf.Tensor2D; layout: 'DV' | 'VD' };

  /** @inheritdoc */
  hidden(inputIds: tf.Tensor2D, packing?: PackedPositions): tf.Tensor2D {
    return packing ? this.forward(inputIds, null, packing) : this.forward(inputIds, null);
  }

  /** Full logits `[B, T, V]`. */
  logits(inputIds: tf.Tensor2D): tf.Tensor3D {
    return this.logitsCached(inputIds, null);
  }

  createCache(): KVCache {
    return new KVCache(this.config.numLayers);
  }

  logitsCached(inputIds: tf.Tensor2D, cache: KVCache | null): tf.Tensor3D {
    const [B, T] = inputIds.shape;
    return tf.tidy(() => {
      const h = this.forward(inputIds, cache);
      const { weight, layout } = this.outputProjection();
      const logits = tf.matMul(h, weight, false, layout === 'VD');
      return tf.reshape(logits, [B, T, this.config.vocabSize]) as tf.Tensor3D;
    });
  }

  /** A parameter by name. @throws WeightsError (code `INVALID_WEIGHTS`) when absent. */
  protected p<T extends tf.Tensor = tf.Tensor>(name: string): T {
    const v = this.params.get(name);
    if (!v) throw new WeightsError(`model parameter "${name}" is missing`, name);
    // a tf.Variable is a tf.Tensor of its rank; callers name the rank they read (T), which the map cannot carry
    return v as unknown as T;
  }

  /**
   * The linear projection `module` (weight `[in, out]`, optional bias), plus its LoRA adapter when enabled.
   * @param x `[N, in]` @returns `[N, out]`
   */
  protected proj(x: tf.Tensor2D, module: string): tf.Tensor2D {
    const w = this.p<tf.Tensor2D>(module + '.weight');
    const b = this.params.get(module + '.bias') as tf.Tensor1D | undefined;
    const y = linear(x, w, b);
    const ad = this.adaptersEnabled ? this.adapters.get(module) : undefined;
    if (!ad) return y;
    const seed = this.dropoutSeed === null ? undefined : this.dropoutSeed + moduleHash(module);
    const xin = this.training && ad.dropout > 0 ? (tf.dropout(x, ad.dropout, undefined, seed) as tf.Tensor2D) : x;
    // adapter variables are created 2-D ([in, r] and [r, out]); tf.Variable does not carry its rank in its type
    const delta = linear(linear(xin, ad.A as unknown as tf.Tensor2D), ad.B as unknown as tf.Tensor2D);
    return tf.add(y, tf.mul(delta, ad.scale)) as tf.Tensor2D;
  }

  /**
   * Decoder layer `l` as `run(x)`, its activations recomputed in the backward pass (see
   * {@link gradientCheckpointing}); gradients reach x and the layer's trainable parameters
   * (`model.layers.<l>.*`, LoRA adapters included).
   */
  protected checkpointed(l: number, x: tf.Tensor2D, run: (x: tf.Tensor2D) => tf.Tensor2D): tf.Tensor2D {
    const prefix = this.layerPrefix(l);
    const params = [...this.params].filter(([name, v]) => v.trainable && name.startsWith(prefix)).map(([, v]) => v);
    const seed = this.dropoutSeed ?? (Math.random() * 2 ** 30) | 0;
    return recomputeInBackward(x, params, (xi) => {
      const before = this.dropoutSeed;
      this.dropoutSeed = seed;
      try {
        return run(xi);
      } finally {
        this.dropoutSeed = before;
      }
    });
  }

  /** Name prefix of decoder layer `l`'s parameters (Llama: `model.layers.<l>.`). */
  protected layerPrefix(l: number): string {
    return `model.layers.${l}.`;
  }

  /** Free every variable (parameters, including LoRA adapters, which live in `params` too). */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    this.params.clear();
    this.adapters.clear();
  }
}

/**
 * Check `tensors` against `spec` and create the variables, converting HF layout to internal layout.
 * Tensors are consumed (deleted from the map) one at a time so that host copies can be freed early.
 * @param isLinear names stored `[out, in]` by HF that we hold `[in, out]`
 * @throws WeightsError naming the tensor for a missing tensor or a shape mismatch
 */
export function variablesFromHF(
  spec: ShapeSpec,
  tensors: TensorMap,
  isLinear: (name: string) => boolean,
  opts: { trainable?: boolean; source?: string } = {},
): Map<string, tf.Variable> {
  const src = opts.source ? `${opts.source}: ` : '';
  for (const [name, shape] of spec) {
    const t = tensors.get(name);
    if (!t) throw new WeightsError(`${src}tensor "${name}" is missing from the checkpoint`, name, 'MISSING_WEIGHT_TENSOR');
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new WeightsError(
        `${src}tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`,
        name,
        'WEIGHTS_SHAPE_MISMATCH',
      );
    }
  }
  const params = new Map<string, tf.Variable>();
  for (const [name, shape] of spec) {
    const t = tensors.get(name)!;
    tensors.delete(name);
    params.set(name, hostToVariable(name, t, shape, isLinear(name), opts.trainable ?? true));
  }
  return params;
}

/**
 * A variable holding `init`, which is then disposed: tf.variable copies its initial value (tfjs 4), so
 * keeping the initial tensor would hold the weights twice.
 */
export function ownVariable(init: tf.Tensor, trainable: boolean): tf.Variable {
  const v = tf.variable(init, trainable);
  init.dispose();
  return v;
}

/** One HF-layout host tensor → a variable in internal layout. */
export function hostToVariable(_name: string, t: HostTensor, hfShape: number[], linearWeight: boolean, trainable: boolean): tf.Variable {
  if (linearWeight && hfShape.length === 2) {
    const [out, inn] = hfShape as [number, number];
    return ownVariable(tf.tensor2d(transpose2d(t.data, out, inn), [inn, out]), trainable);
  }
  return ownVariable(tf.tensor(t.data, hfShape), trainable);
}

/** Internal-layout variable → HF-layout host tensor (the inverse of {@link hostToVariable}). */
export function variableToHost(v: tf.Tensor, linearWeight: boolean): HostTensor {
  const data = v.dataSync() as Float32Array;
  if (linearWeight && v.shape.length === 2) {
    const [inn, out] = v.shape as [number, number];
    return { shape: [out, inn], data: transpose2d(data, inn, out) };
  }
  return { shape: v.shape.slice(), data: data.slice() };
}

/** Random init as in transformers' `_init_weights`: normal(0, 0.02) matrices, norms 1, biases 0. */
export function randomVariables(spec: ShapeSpec, isLinear: (name: string) => boolean, seed: number): Map<string, tf.Variable> {
  const params = new Map<string, tf.Variable>();
  spec.forEach(([name, shape], i) => {
    let t: tf.Tensor;
    if (shape.length === 1) {
      t = /norm|ln_/.test(name) && name.endsWith('.weight') ? tf.ones(shape) : tf.zeros(shape);
    } else {
      const internal = isLinear(name) ? [shape[1]!, shape[0]!] : shape;
      t = tf.randomNormal(internal, 0, 0.02, 'float32', seed * 7919 + i + 1); // +1: tfjs treats seed 0 as "unseeded"
    }
    params.set(name, ownVariable(t, true));
  });
  return params;
}

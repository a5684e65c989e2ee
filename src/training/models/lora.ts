/**
 * LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3): a frozen projection
 * W `[in, out]` gains a trainable low-rank update, y = x W + dropout(x) A B · alpha / r, with A `[in, r]`
 * (Kaiming-uniform, as PEFT's `reset_lora_parameters`) and B `[r, out]` zero-initialised, so the adapted
 * model starts equal to the base model. With adapters the DPO reference is the same model with its adapters
 * disabled (TRL/LlamaFactory: `with model.disable_adapter()`), see {@link withAdaptersDisabled}.
 *
 * Saved in PEFT's layout: `adapter_model.safetensors` with `base_model.model.<module>.lora_A.weight` `[r, in]`
 * and `.lora_B.weight` `[out, r]`, and `adapter_config.json`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { CausalLM } from '../types.js';
import { BaseLM, ownVariable, transpose2d } from './base.js';
import { ModelError } from './errors.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';

/** PEFT `LoraConfig` fields we honour. */
export interface LoraConfig {
  /** rank r */
  r: number;
  /** scaling numerator: the update is scaled by alpha / r */
  alpha: number;
  /** dropout on the adapter's input (applied only while `model.training` is true) */
  dropout: number;
  /** projection names, e.g. ['q_proj', 'v_proj'] (Llama) or ['c_attn'] (GPT-2), or 'all-linear' (PEFT: every decoder linear layer) */
  targetModules: string[] | 'all-linear';
  /** rsLoRA: scale by alpha / sqrt(r) instead of alpha / r (PEFT `use_rslora`, PaddleNLP `rslora`) */
  rslora?: boolean;
}

/** A bad LoRA setting (code `INVALID_LORA_CONFIG`). */
export class LoraConfigError extends ModelError {
  constructor(message: string) {
    super('INVALID_LORA_CONFIG', message);
  }
}

function asBase(model: CausalLM, fn: string): BaseLM {
  if (!(model instanceof BaseLM)) throw new TypeError(`${fn}: model was not created by src/training/models`);
  return model;
}

const loraConfigs = new WeakMap<BaseLM, LoraConfig>();

/**
 * Add LoRA adapters to every linear projection whose last name segment is in `cfg.targetModules`, and
 * freeze all base parameters (`trainable = false`). Afterwards the trainable variables of `model.params`
 * are exactly the adapters (`<module>.lora_A.weight`, `<module>.lora_B.weight`).
 * @throws LoraConfigError for r < 1, alpha <= 0, dropout outside [0, 1), adapters already present, or no
 *   module matching `targetModules` (the message lists the available ones)
 */
export function applyLora(model: CausalLM, cfg: LoraConfig, opts: { seed?: number } = {}): void {
  const m = asBase(model, 'applyLora');
  if (!Number.isInteger(cfg.r) || cfg.r < 1) throw new LoraConfigError(`lora.r must be a positive integer, got ${cfg.r}`);
  if (!(cfg.alpha > 0)) throw new LoraConfigError(`lora.alpha must be > 0, got ${cfg.alpha}`);
  if (!(cfg.dropout >= 0 && cfg.dropout < 1)) throw new LoraConfigError(`lora.dropout must be in [0, 1), got ${cfg.dropout}`);
  if (m.adapters.size > 0) throw new LoraConfigError('applyLora: the model already has LoRA adapters; mergeLora first');
  const modules: string[] = [];
  const available = new Set<string>();
  for (const [name, v] of m.params) {
    if (!name.endsWith('.weight') || v.shape.length !== 2 || /embed|wte|wpe|lm_head/.test(name)) continue;
    const module = name.slice(0, -'.weight'.length);
    const short = module.split('.').pop()!;
    available.add(short);
    if (cfg.targetModules === 'all-linear' || cfg.targetModules.includes(short)) modules.push(module);
  }
  if (modules.length === 0) {
    throw new LoraConfigError(
      `lora.target_modules ${JSON.stringify(cfg.targetModules)} match no projection of this model; available: ${[...available].join(', ')}`,
    );
  }
  for (const v of m.params.values()) v.trainable = false;
  let seed = opts.seed ?? 0;
  for (const module of modules) {
    const [inDim, outDim] = m.params.get(module + '.weight')!.shape as [number, number];
    const bound = 1 / Math.sqrt(inDim); // kaiming_uniform_(a=sqrt(5)) on [r, in]: bound = 1/sqrt(in)
    const A = ownVariable(tf.randomUniform([inDim, cfg.r], -bound, bound, 'float32', seed++), true);
    const B = ownVariable(tf.zeros([cfg.r, outDim]), true);
    m.params.set(module + '.lora_A.weight', A);
    m.params.set(module + '.lora_B.weight', B);
    const scale = cfg.rslora ? cfg.alpha / Math.sqrt(cfg.r) : cfg.alpha / cfg.r;
    m.adapters.set(module, { A, B, r: cfg.r, alpha: cfg.alpha, scale, dropout: cfg.dropout });
  }
  // PEFT records 'all-linear' resolved to the module names it matched
  loraConfigs.set(m, {
    ...cfg,
    targetModules: cfg.targetModules === 'all-linear' ? [...new Set(modules.map((x) => x.split('.').pop()!))] : [...cfg.targetModules],
  });
}

/** The adapter variables by name (`<module>.lora_A.weight`, `<module>.lora_B.weight`). */
export function loraParameters(model: CausalLM): Map<string, tf.Variable> {
  const m = asBase(model, 'loraParameters');
  const out = new Map<string, tf.Variable>();
  for (const [module, a] of m.adapters) {
    out.set(module + '.lora_A.weight', a.A);
    out.set(module + '.lora_B.weight', a.B);
  }
  return out;
}

/**
 * Fold every adapter into its base weight (W ← W + A B alpha/r), remove the adapters, and make the base
 * parameters trainable again: the result is a plain model with the adapted function.
 */
export function mergeLora(model: CausalLM): void {
  const m = asBase(model, 'mergeLora');
  for (const [module, a] of m.adapters) {
    const w = m.params.get(module + '.weight')!;
    const merged = tf.tidy(() => tf.add(w, tf.mul(tf.matMul(a.A, a.B), a.scale)));
    w.assign(merged);
    merged.dispose();
    m.params.delete(module + '.lora_A.weight');
    m.params.delete(module + '.lora_B.weight');
    a.A.dispose();
    a.B.dispose();
  }
  m.adapters.clear();
  loraConfigs.delete(m);
  for (const v of m.params.values()) v.trainable = true;
}

/**
 * Run `fn` with the adapters disabled (the base model: the DPO reference under LoRA), then re-enable them.
 */
export function withAdaptersDisabled<T>(model: CausalLM, fn: () => T): T {
  const m = asBase(model, 'withAdaptersDisabled');
  const before = m.adaptersEnabled;
  m.adaptersEnabled = false;
  try {
    return fn();
  } finally {
    m.adaptersEnabled = before;
  }
}

/**
 * Write the adapters as a PEFT directory: `adapter_model.safetensors` (F32) and `adapter_config.json`.
 * @param opts.baseModel `base_model_name_or_path` to record
 * @returns absolute paths of the files written
 * @throws LoraConfigError when the model has no adapters
 */
export async function saveLoraAdapter(model: CausalLM, dir: string, opts: { baseModel?: string } = {}): Promise<string[]> {
  const m = asBase(model, 'saveLoraAdapter');
  const cfg = loraConfigs.get(m);
  if (m.adapters.size === 0 || !cfg) throw new LoraConfigError('saveLoraAdapter: the model has no LoRA adapters (applyLora first)');
  const out = resolve(dir);
  await mkdir(out, { recursive: true });
  const tensors: TensorToWrite[] = [];
  for (const [module, a] of m.adapters) {
    const [inDim, r] = a.A.shape as [number, number];
    const outDim = a.B.shape[1]!;
    tensors.push({
      name: `base_model.model.${module}.lora_A.weight`,
      shape: [r, inDim],
      data: () => transpose2d(a.A.dataSync() as Float32Array, inDim, r),
    });
    tensors.push({
      name: `base_model.model.${module}.lora_B.weight`,
      shape: [outDim, r],
      data: () => transpose2d(a.B.dataSync() as Float32Array, r, outDim),
    });
  }
  const weights = join(out, 'adapter_model.safetensors');
  writeSafetensors(weights, tensors, 'F32');
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: opts.baseModel ?? null,
    r: cfg.r,
    lora_alpha: cfg.alpha,
    lora_dropout: cfg.dropout,
    target_modules: cfg.targetModules,
    bias: 'none',
    fan_in_fan_out: m.config.architecture === 'gpt2',
    inference_mode: true,
    modules_to_save: null,
    init_lora_weights: true,
    use_rslora: cfg.rslora === true,
    use_dora: false,
  };
  const cfgPath = join(out, 'adapter_config.json');
  await writeFile(cfgPath, JSON.stringify(config, null, 2) + '\n');
  return [weights, cfgPath];
}

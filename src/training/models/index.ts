/**
 * The model layer's public API: load (built-in name, HF directory, llama2.c `.bin`), create, clone, save as a
 * Hugging Face directory, generate, LoRA.
 *
 * Supported families (config.json `model_type`): llama, mistral, qwen2, qwen3 (llama.ts) and gpt2 (gpt2.ts).
 * Weights are computed in float32 whatever their dtype on disk (F32/F16/BF16 read; F32 or BF16 written).
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, statSync, readdirSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { repoRoot } from '../../config/paths.js';
import type { CausalLM, ModelConfig, Tokenizer } from '../types.js';
import { loadTokenizer, saveTokenizerFiles } from '../tokenizers/index.js';
import { BaseLM, hostToVariable, ownVariable, randomVariables, transpose2d, variablesFromHF, type GenerativeLM, type ShapeSpec } from './base.js';
import { eosIds, parseHFConfig, toHFConfig, type HFModelConfig } from './config.js';
import { ModelConfigError, ModelNotFoundError, WeightsError } from './errors.js';
import { Gpt2Model, canonicalGpt2Name, gpt2Shapes, isGpt2Linear } from './gpt2.js';
import { LlamaModel, isLlamaLinear, llamaShapes } from './llama.js';
import { readLlama2c } from './llama2c.js';
import { modelLog } from './log.js';
import { forEachTensor, readSafetensorsIndex, writeSafetensors, type TensorToWrite } from './safetensors.js';

export { scoreCompletions, type ScoreRow } from './score.js';
export { generate, sampleNext, seededRandom, type GenerateOptions } from './generate.js';
export { applyLora, mergeLora, saveLoraAdapter, withAdaptersDisabled, loraParameters, type LoraConfig } from './lora.js';
export { parseHFConfig, toHFConfig, eosIds, SUPPORTED_MODEL_TYPES, type HFModelConfig } from './config.js';
export { KVCache, BaseLM, type GenerativeLM } from './base.js';
export { LlamaModel } from './llama.js';
export { Gpt2Model } from './gpt2.js';
export { readLlama2c } from './llama2c.js';
export { readSafetensorsHeader, readSafetensorsIndex, writeSafetensors } from './safetensors.js';
export * from './errors.js';
export { setModelLogger } from './log.js';

/** How an architecture is described, built and named. */
interface ArchSpec {
  shapes(c: ModelConfig): ShapeSpec;
  /** names stored `[out, in]` on disk, held `[in, out]` */
  isLinear(name: string): boolean;
  /** checkpoint name → canonical name, or null to skip the tensor */
  canonical(name: string): string | null;
  /** tensors that transformers zero-initialises when a checkpoint lacks them (loaded as zeros, with a warning) */
  zeroIfMissing?(name: string): boolean;
  build(c: ModelConfig, params: Map<string, tf.Variable>): BaseLM;
}

const ARCHS: Record<ModelConfig['architecture'], ArchSpec> = {
  llama: {
    shapes: llamaShapes,
    isLinear: isLlamaLinear,
    canonical: (n) => (n.includes('rotary_emb.inv_freq') ? null : n),
    build: (c, p) => new LlamaModel(c, p),
  },
  gpt2: {
    shapes: gpt2Shapes,
    isLinear: isGpt2Linear,
    canonical: canonicalGpt2Name,
    // GPT-2 Conv1D biases are zero-initialised by transformers (`_init_weights`) when absent.
    zeroIfMissing: (n) => /\.(c_attn|c_proj|c_fc)\.bias$/.test(n),
    build: (c, p) => new Gpt2Model(c, p),
  },
};

/** Built-in model names → files in the repository. */
export const BUILTIN_MODELS: Record<string, { weights: string; tokenizer: string }> = {
  stories260K: { weights: 'models/stories260K/stories260K.bin', tokenizer: 'models/stories260K/tok512.bin' },
};

/** Resolve a name or path to what to load. */
function resolveSource(nameOrPath: string): { kind: 'llama2c' | 'hf'; path: string; tokenizer: string | null } {
  const builtin = Object.hasOwn(BUILTIN_MODELS, nameOrPath) ? BUILTIN_MODELS[nameOrPath] : undefined;
  if (builtin) {
    const root = repoRoot();
    return { kind: 'llama2c', path: join(root, builtin.weights), tokenizer: join(root, builtin.tokenizer) };
  }
  const p = resolve(nameOrPath);
  if (!existsSync(p)) {
    throw new ModelNotFoundError(
      `model "${nameOrPath}" not found: give a built-in name (${Object.keys(BUILTIN_MODELS).join(', ')}), a Hugging Face directory (config.json + *.safetensors) or a llama2.c .bin`,
    );
  }
  const st = statSync(p);
  if (st.isFile()) {
    if (p.endsWith('.bin')) return { kind: 'llama2c', path: p, tokenizer: null };
    if (p.endsWith('.safetensors') || p.endsWith('config.json')) return { kind: 'hf', path: dirname(p), tokenizer: null };
    throw new ModelNotFoundError(`${p}: not a model file (expected a llama2.c .bin, a .safetensors or a directory)`);
  }
  if (existsSync(join(p, 'config.json'))) return { kind: 'hf', path: p, tokenizer: null };
  const bins = readdirSync(p).filter((f) => f.endsWith('.bin') && !/^tok/.test(f) && f !== 'tokenizer.bin');
  if (bins.length === 1) return { kind: 'llama2c', path: join(p, bins[0]!), tokenizer: null };
  throw new ModelNotFoundError(`${p}: no config.json (Hugging Face) and no single llama2.c .bin in this directory`);
}

/**
 * Load a model.
 * @param nameOrPath `stories260K` (built in), a Hugging Face directory (config.json + model.safetensors or
 *   sharded model-0000x-of-0000n.safetensors with model.safetensors.index.json), or a llama2.c `.bin`
 * @param opts.trainable whether the parameters are trainable variables (default true)
 * @throws ModelNotFoundError, UnsupportedModelError (unknown model_type), ModelConfigError, WeightsError
 *   (corrupt file, missing tensor, shape mismatch — each naming the tensor)
 */
export async function loadModel(nameOrPath: string, opts: { trainable?: boolean } = {}): Promise<GenerativeLM> {
  const src = resolveSource(nameOrPath);
  const t0 = Date.now();
  let model: BaseLM;
  if (src.kind === 'llama2c') {
    const { config, tensors } = await readLlama2c(src.path);
    model = ARCHS.llama.build(config, variablesFromHF(llamaShapes(config), tensors, isLlamaLinear, { ...opts, source: src.path }));
  } else {
    model = await loadHFDir(src.path, opts.trainable ?? true);
  }
  modelLog().debug({ source: src.path, ms: Date.now() - t0, type: model.config.modelType }, 'model loaded');
  return model;
}

/** Load a Hugging Face checkpoint directory tensor by tensor (one host copy of one tensor at a time). */
async function loadHFDir(dir: string, trainable: boolean): Promise<BaseLM> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new ModelConfigError(`${join(dir, 'config.json')}: cannot read config.json (${(e as Error).message})`);
  }
  const config: HFModelConfig = parseHFConfig(raw);
  // generation_config.json may list more EOS ids than config.json (Llama 3 Instruct)
  const genPath = join(dir, 'generation_config.json');
  if (existsSync(genPath)) {
    try {
      const gen = JSON.parse(await readFile(genPath, 'utf8')) as { eos_token_id?: unknown };
      const ids = (Array.isArray(gen.eos_token_id) ? gen.eos_token_id : [gen.eos_token_id]).filter((x): x is number => typeof x === 'number');
      const all = [...new Set([...eosIds(config), ...ids])];
      if (all.length > 1) config.eosTokenIds = all;
      if (config.eosTokenId === null && all.length > 0) config.eosTokenId = all[0]!;
    } catch {
      modelLog().warn({ file: genPath }, 'generation_config.json is not valid JSON; ignored');
    }
  }
  const arch = ARCHS[config.architecture];
  const index = await readSafetensorsIndex(dir);
  // canonical name → name in the checkpoint (GPT-2 files may lack the `transformer.` prefix)
  const fileNameOf = new Map<string, string>();
  for (const name of index.keys()) {
    const c = arch.canonical(name);
    if (c !== null) fileNameOf.set(c, name);
  }
  // Validate every expected tensor from the headers alone, before reading any data.
  const spec = arch.shapes(config);
  const zeroFilled: string[] = [];
  for (const [name, shape] of spec) {
    const fileName = fileNameOf.get(name);
    const info = fileName ? index.get(fileName) : undefined;
    if (!info && arch.zeroIfMissing?.(name)) {
      zeroFilled.push(name);
      continue;
    }
    if (!info) throw new WeightsError(`${dir}: tensor "${name}" is missing from the checkpoint`, name, 'MISSING_WEIGHT_TENSOR');
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightsError(
        `${dir}: tensor "${name}" has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`,
        name,
        'WEIGHTS_SHAPE_MISMATCH',
      );
    }
  }
  const shapes = new Map(spec);
  const ignored = [...fileNameOf.keys()].filter((c) => !shapes.has(c) && !(c === 'lm_head.weight' && config.tieWordEmbeddings));
  if (ignored.length > 0) {
    modelLog().warn({ dir, tensors: ignored.slice(0, 10), count: ignored.length }, 'checkpoint tensors not used by the model were ignored');
  }
  if (zeroFilled.length > 0) {
    modelLog().warn(
      { dir, tensors: zeroFilled.slice(0, 10), count: zeroFilled.length },
      'checkpoint lacks these biases; they are zero-initialised as transformers does',
    );
  }
  // Read tensor by tensor (grouped by shard); each host copy becomes a variable before the next is read.
  const canonicalOf = new Map<string, string>();
  for (const [name] of spec) {
    const fileName = fileNameOf.get(name);
    if (fileName) canonicalOf.set(fileName, name);
  }
  const params = new Map<string, tf.Variable>();
  try {
    await forEachTensor(index, [...canonicalOf.keys()], (fileName, t) => {
      const name = canonicalOf.get(fileName)!;
      params.set(name, hostToVariable(name, t, shapes.get(name)!, arch.isLinear(name), trainable));
    });
  } catch (e) {
    for (const v of params.values()) v.dispose();
    throw e;
  }
  // Keep the spec order in the map (stable save order).
  const ordered = new Map<string, tf.Variable>();
  for (const [name, shape] of spec) ordered.set(name, params.get(name) ?? ownVariable(tf.zeros(shape), trainable));
  return arch.build(config, ordered);
}

/**
 * Load a model and its tokenizer.
 * @returns `source`: the resolved weights path
 * @throws as {@link loadModel}; TokenizerError when no tokenizer is found next to the weights
 */
export async function loadPretrained(
  nameOrPath: string,
  opts: { trainable?: boolean } = {},
): Promise<{ model: GenerativeLM; tokenizer: Tokenizer; source: string }> {
  const src = resolveSource(nameOrPath);
  const model = await loadModel(nameOrPath, opts);
  try {
    const tokenizer = await loadModelTokenizer(nameOrPath);
    return { model, tokenizer, source: src.path };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/**
 * The tokenizer that {@link loadPretrained} pairs with a model (the built-in's, or the one next to the
 * weights), without loading the weights.
 * @throws ModelNotFoundError for an unknown model; TokenizerError when no tokenizer is found next to it
 */
export async function loadModelTokenizer(nameOrPath: string): Promise<Tokenizer> {
  const src = resolveSource(nameOrPath);
  return loadTokenizer(src.tokenizer ?? (src.kind === 'hf' ? src.path : dirname(src.path)));
}

/**
 * A randomly initialised model (normal(0, 0.02) matrices, unit norms, zero biases), for tests and benches.
 * @param opts.seed RNG seed (default 0): equal seeds give equal weights
 */
export function createModel(config: ModelConfig, opts: { seed?: number } = {}): GenerativeLM {
  const arch = ARCHS[config.architecture];
  return arch.build(config, randomVariables(arch.shapes(config), arch.isLinear, opts.seed ?? 0));
}

/**
 * A copy of `model` with its own variables (e.g. the frozen DPO reference): a second copy of the weights in
 * memory (tf.variable copies). LoRA adapters are copied too.
 * @param opts.trainable trainable flag of the copy's parameters (default: as in the original)
 */
export function cloneModel(model: CausalLM, opts: { trainable?: boolean } = {}): GenerativeLM {
  if (!(model instanceof BaseLM)) throw new TypeError('cloneModel: model was not created by src/training/models');
  const params = new Map<string, tf.Variable>();
  for (const [name, v] of model.params) params.set(name, tf.variable(v, opts.trainable ?? v.trainable));
  const copy = ARCHS[model.config.architecture].build({ ...model.config }, params);
  for (const [module, a] of model.adapters) {
    copy.adapters.set(module, {
      ...a,
      A: params.get(module + '.lora_A.weight')!,
      B: params.get(module + '.lora_B.weight')!,
    });
  }
  copy.adaptersEnabled = model.adaptersEnabled;
  return copy;
}

/**
 * The HF-layout tensors of `model` for saving, produced one at a time. LoRA adapters, when present and
 * enabled, are folded in (W + A B alpha/r) without changing the model.
 */
export function hfTensors(model: CausalLM): TensorToWrite[] {
  if (!(model instanceof BaseLM)) throw new TypeError('saveModelHF: model was not created by src/training/models');
  const arch = ARCHS[model.config.architecture];
  const out: TensorToWrite[] = [];
  for (const [name, hfShape] of arch.shapes(model.config)) {
    const v = model.params.get(name);
    if (!v) throw new WeightsError(`model parameter "${name}" is missing`, name);
    const module = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : null;
    const ad = module && model.adaptersEnabled ? model.adapters.get(module) : undefined;
    out.push({
      name,
      shape: hfShape,
      data: () => {
        let internal: Float32Array;
        if (ad) {
          internal = tf.tidy(() => tf.add(v, tf.mul(tf.matMul(ad.A, ad.B), ad.scale)).dataSync() as Float32Array);
        } else internal = v.dataSync() as Float32Array;
        if (arch.isLinear(name) && hfShape.length === 2) return transpose2d(internal, hfShape[1]!, hfShape[0]!);
        return internal;
      },
    });
  }
  return out;
}

/**
 * Save `model` as a Hugging Face directory that transformers loads unchanged: `model.safetensors`
 * (transformers tensor names, `[out, in]` linear weights), `config.json`, `generation_config.json`, and the
 * tokenizer files when a tokenizer is given (saveTokenizerFiles: tokenizer.json always, with
 * `model_max_length` = the model's `max_position_embeddings` and the chat template when given).
 * @param opts.dtype `F32` (default) or `BF16`
 * @param opts.chatTemplate the chat template the run used, written to tokenizer_config.json
 * @returns absolute paths of the files written
 */
export async function saveModelHF(
  model: CausalLM,
  outDir: string,
  opts: { dtype?: 'F32' | 'BF16'; tokenizer?: Tokenizer; chatTemplate?: string | null } = {},
): Promise<string[]> {
  const dtype = opts.dtype ?? 'F32';
  const dir = resolve(outDir);
  await mkdir(dir, { recursive: true });
  const files: string[] = [];
  const weights = join(dir, 'model.safetensors');
  writeSafetensors(weights, hfTensors(model), dtype);
  files.push(weights);
  const cfg = toHFConfig(model.config, dtype);
  await writeFile(join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  files.push(join(dir, 'config.json'));
  const gen: Record<string, unknown> = { _from_model_config: true };
  if (model.config.bosTokenId !== null) gen.bos_token_id = model.config.bosTokenId;
  const eos = eosIds(model.config);
  if (eos.length > 0) gen.eos_token_id = eos.length > 1 ? eos : eos[0];
  if (model.config.padTokenId !== null) gen.pad_token_id = model.config.padTokenId;
  await writeFile(join(dir, 'generation_config.json'), JSON.stringify(gen, null, 2) + '\n');
  files.push(join(dir, 'generation_config.json'));
  if (opts.tokenizer) {
    const tokOpts = { modelMaxLength: model.config.maxPositionEmbeddings, chatTemplate: opts.chatTemplate ?? null };
    for (const f of await saveTokenizerFiles(opts.tokenizer, dir, tokOpts)) if (!files.includes(f)) files.push(resolve(f));
  }
  return files;
}

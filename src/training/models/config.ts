/**
 * Hugging Face `config.json` ⇄ {@link ModelConfig}.
 *
 * Field names and defaults follow transformers' `LlamaConfig`, `MistralConfig`, `Qwen2Config`,
 * `Qwen3Config` and `GPT2Config` (configuration_*.py). The Llama family shares one implementation
 * (llama.ts); GPT-2 has its own (gpt2.ts).
 */
import type { ModelConfig } from '../types.js';
import { ModelConfigError, UnsupportedModelError } from './errors.js';
import { modelLog } from './log.js';

/** `model_type` values we load, and the file that implements each. */
export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'qwen3', 'gpt2'] as const;
export type SupportedModelType = (typeof SUPPORTED_MODEL_TYPES)[number];

/** `rope_scaling` types we implement (`default` = none). */
export const SUPPORTED_ROPE_TYPES = ['default', 'linear', 'llama3'] as const;

type Json = Record<string, unknown>;

/**
 * A {@link ModelConfig} that may carry every EOS id when config.json / generation_config.json list several
 * (Llama 3: `[128001, 128008, 128009]`); `eosTokenId` is the first.
 */
export interface HFModelConfig extends ModelConfig {
  eosTokenIds?: number[];
}

/** All EOS ids of a config (the list when known, else the single id). */
export function eosIds(c: ModelConfig): number[] {
  const list = (c as HFModelConfig).eosTokenIds;
  if (list && list.length > 0) return list;
  return c.eosTokenId === null ? [] : [c.eosTokenId];
}

function tokenIdList(raw: Json, key: string): { eosTokenIds?: number[] } {
  const v = raw[key];
  return Array.isArray(v) && v.length > 1 && v.every((x) => typeof x === 'number') ? { eosTokenIds: v as number[] } : {};
}

function num(raw: Json, key: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelConfigError(`config.json: required field "${key}" is missing; add it (a number)`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new ModelConfigError(`config.json: field "${key}" must be a number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function positiveInt(raw: Json, key: string, fallback?: number): number {
  const v = num(raw, key, fallback);
  if (!Number.isInteger(v) || v <= 0) {
    throw new ModelConfigError(`config.json: field "${key}" must be a positive integer, got ${v}`);
  }
  return v;
}

function tokenId(raw: Json, key: string): number | null {
  const v = raw[key];
  if (v === undefined || v === null) return null;
  if (Array.isArray(v)) return typeof v[0] === 'number' ? v[0] : null;
  return typeof v === 'number' ? v : null;
}

/**
 * Parse a Hugging Face `config.json` object.
 * @param raw the parsed JSON
 * @returns the normalised config; `modelType` keeps the HF `model_type`
 * @throws UnsupportedModelError (code `UNSUPPORTED_MODEL`) for a `model_type`, `hidden_act`, `rope_scaling`
 *   type or `mlp_bias` we do not implement, naming what is supported
 * @throws ModelConfigError (code `INVALID_MODEL_CONFIG`) for a missing or inconsistent field
 */
export function parseHFConfig(raw: Json): ModelConfig {
  const modelType = raw.model_type;
  if (typeof modelType !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new UnsupportedModelError(
      `config.json model_type ${JSON.stringify(modelType)} is not supported; supported model types: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
    );
  }
  return modelType === 'gpt2' ? parseGpt2(raw) : parseLlamaFamily(raw, modelType as SupportedModelType);
}

function parseLlamaFamily(raw: Json, modelType: SupportedModelType): ModelConfig {
  const hiddenSize = positiveInt(raw, 'hidden_size');
  const numHeads = positiveInt(raw, 'num_attention_heads');
  const numKvHeads = positiveInt(raw, 'num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelConfigError(`config.json: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = positiveInt(raw, 'head_dim', hiddenSize / numHeads);
  if (headDim % 2 !== 0) throw new ModelConfigError(`config.json: head_dim (${headDim}) must be even for RoPE`);
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu' && act !== 'swish') {
    throw new UnsupportedModelError(`config.json hidden_act ${JSON.stringify(act)} is not supported; supported: silu`);
  }
  if (raw.mlp_bias === true) {
    throw new UnsupportedModelError('config.json mlp_bias=true is not supported; supported: mlp_bias false');
  }
  // transformers >= 4.56 may move rope_theta/rope_scaling into `rope_parameters`.
  const ropeParams = (raw.rope_parameters ?? null) as Json | null;
  let ropeScaling = (raw.rope_scaling ?? null) as Json | null;
  let ropeTheta = num(raw, 'rope_theta', typeof ropeParams?.rope_theta === 'number' ? ropeParams.rope_theta : 10000);
  if (!ropeScaling && ropeParams && (ropeParams.rope_type ?? 'default') !== 'default') ropeScaling = ropeParams;
  if (ropeScaling) {
    const type = String(ropeScaling.rope_type ?? ropeScaling.type ?? 'default');
    if (!(SUPPORTED_ROPE_TYPES as readonly string[]).includes(type)) {
      throw new UnsupportedModelError(`config.json rope_scaling type ${JSON.stringify(type)} is not supported; supported: ${SUPPORTED_ROPE_TYPES.join(', ')}`);
    }
    if (type === 'default') ropeScaling = null;
    else {
      ropeScaling = { ...ropeScaling, rope_type: type };
      if (typeof ropeScaling.factor !== 'number') {
        throw new ModelConfigError(`config.json: rope_scaling.factor is required for rope_scaling type ${type}`);
      }
    }
  }
  if (!Number.isFinite(ropeTheta) || ropeTheta <= 0) ropeTheta = 10000;
  const slidingActive = modelType === 'mistral' ? raw.sliding_window !== undefined && raw.sliding_window !== null : raw.use_sliding_window === true;
  if (slidingActive) {
    modelLog().warn(
      { modelType, slidingWindow: raw.sliding_window },
      'config.json sliding_window is ignored: full causal attention is used (identical for sequences no longer than the window)',
    );
  }
  return {
    architecture: 'llama',
    modelType,
    vocabSize: positiveInt(raw, 'vocab_size'),
    hiddenSize,
    intermediateSize: positiveInt(raw, 'intermediate_size'),
    numLayers: positiveInt(raw, 'num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositionEmbeddings: positiveInt(raw, 'max_position_embeddings', 2048),
    normEps: num(raw, 'rms_norm_eps', 1e-6),
    ropeTheta,
    ropeScaling,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    // Qwen2 always has q/k/v biases; Llama/Qwen3 when attention_bias is set.
    attentionBias: modelType === 'qwen2' ? true : raw.attention_bias === true,
    qkNorm: modelType === 'qwen3',
    bosTokenId: tokenId(raw, 'bos_token_id'),
    eosTokenId: tokenId(raw, 'eos_token_id'),
    padTokenId: tokenId(raw, 'pad_token_id'),
    ...tokenIdList(raw, 'eos_token_id'),
  } as HFModelConfig;
}

function parseGpt2(raw: Json): ModelConfig {
  const hiddenSize = positiveInt(raw, 'n_embd');
  const numHeads = positiveInt(raw, 'n_head');
  if (hiddenSize % numHeads !== 0) {
    throw new ModelConfigError(`config.json: n_embd (${hiddenSize}) must be a multiple of n_head (${numHeads})`);
  }
  const act = raw.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
    throw new UnsupportedModelError(`config.json activation_function ${JSON.stringify(act)} is not supported for gpt2; supported: gelu_new, gelu_pytorch_tanh`);
  }
  if (raw.tie_word_embeddings === false) {
    throw new UnsupportedModelError('config.json tie_word_embeddings=false is not supported for gpt2; supported: tied lm_head');
  }
  const nInner = raw.n_inner;
  return {
    architecture: 'gpt2',
    modelType: 'gpt2',
    vocabSize: positiveInt(raw, 'vocab_size'),
    hiddenSize,
    intermediateSize: typeof nInner === 'number' ? nInner : 4 * hiddenSize,
    numLayers: positiveInt(raw, 'n_layer'),
    numHeads,
    numKvHeads: numHeads,
    headDim: hiddenSize / numHeads,
    maxPositionEmbeddings: positiveInt(raw, 'n_positions', typeof raw.n_ctx === 'number' ? raw.n_ctx : 1024),
    normEps: num(raw, 'layer_norm_epsilon', 1e-5),
    ropeTheta: 0,
    ropeScaling: null,
    tieWordEmbeddings: true,
    attentionBias: true,
    qkNorm: false,
    bosTokenId: tokenId(raw, 'bos_token_id'),
    eosTokenId: tokenId(raw, 'eos_token_id'),
    padTokenId: tokenId(raw, 'pad_token_id'),
    ...tokenIdList(raw, 'eos_token_id'),
  } as HFModelConfig;
}

const ARCH_NAMES: Record<string, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  gpt2: 'GPT2LMHeadModel',
};

/**
 * Render a {@link ModelConfig} as a transformers `config.json` object (the inverse of {@link parseHFConfig}).
 * @param dtype the dtype of the saved weights (`torch_dtype`)
 */
export function toHFConfig(config: ModelConfig, dtype: 'F32' | 'BF16' = 'F32'): Json {
  const torchDtype = dtype === 'BF16' ? 'bfloat16' : 'float32';
  const common = {
    bos_token_id: config.bosTokenId,
    eos_token_id: eosIds(config).length > 1 ? eosIds(config) : config.eosTokenId,
    ...(config.padTokenId !== null ? { pad_token_id: config.padTokenId } : {}),
    torch_dtype: torchDtype,
    vocab_size: config.vocabSize,
  };
  if (config.architecture === 'gpt2') {
    return {
      architectures: [ARCH_NAMES.gpt2],
      model_type: 'gpt2',
      n_embd: config.hiddenSize,
      n_layer: config.numLayers,
      n_head: config.numHeads,
      n_inner: config.intermediateSize === 4 * config.hiddenSize ? null : config.intermediateSize,
      n_positions: config.maxPositionEmbeddings,
      n_ctx: config.maxPositionEmbeddings,
      layer_norm_epsilon: config.normEps,
      activation_function: 'gelu_new',
      tie_word_embeddings: true,
      ...common,
    };
  }
  const out: Json = {
    architectures: [ARCH_NAMES[config.modelType] ?? ARCH_NAMES.llama],
    model_type: config.modelType,
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    num_hidden_layers: config.numLayers,
    num_attention_heads: config.numHeads,
    num_key_value_heads: config.numKvHeads,
    head_dim: config.headDim,
    hidden_act: 'silu',
    max_position_embeddings: config.maxPositionEmbeddings,
    rms_norm_eps: config.normEps,
    rope_theta: config.ropeTheta,
    rope_scaling: config.ropeScaling ?? null,
    tie_word_embeddings: config.tieWordEmbeddings,
    use_cache: true,
    ...common,
  };
  if (config.modelType === 'llama' || config.modelType === 'qwen3') {
    out.attention_bias = config.attentionBias;
    out.attention_dropout = 0.0;
  }
  if (config.modelType === 'llama') out.mlp_bias = false;
  if (config.modelType === 'mistral') out.sliding_window = null;
  if (config.modelType === 'qwen2' || config.modelType === 'qwen3') {
    out.use_sliding_window = false;
    out.sliding_window = null;
  }
  return out;
}

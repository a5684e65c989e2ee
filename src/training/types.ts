/**
 * Shared contracts of the training core: models, tokenizers, preference examples and progress events.
 * Modules depend on these interfaces, not on each other's classes.
 */
import type * as tf from '@tensorflow/tfjs-core';

/** Architecture family implemented by one model file in src/training/models. */
export type Architecture = 'llama' | 'gpt2';

/**
 * Normalised model configuration (the HF `config.json` fields we honour, in camelCase).
 * `modelType` keeps the HF `model_type` (llama, mistral, qwen2, qwen3, gpt2) for export.
 */
export interface ModelConfig {
  architecture: Architecture;
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  /** RMSNorm epsilon (llama) or LayerNorm epsilon (gpt2). */
  normEps: number;
  ropeTheta: number;
  ropeScaling?: Record<string, unknown> | null;
  tieWordEmbeddings: boolean;
  /** q/k/v projection biases (qwen2). */
  attentionBias: boolean;
  /** per-head RMSNorm on q and k (qwen3). */
  qkNorm: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
}

/**
 * A causal language model whose parameters are tfjs Variables, named as `transformers` names them
 * (e.g. `model.layers.0.self_attn.q_proj.weight`). Linear weights are held `[in, out]` internally.
 */
/**
 * Per-token positions and attention segments of packed rows (padding-free and shared-prompt batches,
 * data/packing.ts): `positionIds` `[B*T]` int32 (each sequence's own positions, restarting at 0), `segments`
 * the attention's `[3, B*T]` visibility ranges (engine/ops.ts AttentionSegments: key j visible from row
 * b*T + i iff c <= j <= i or a <= j < b).
 */
export interface PackedPositions {
  positionIds: Int32Array;
  segments: Int32Array;
}

export interface CausalLM {
  readonly config: ModelConfig;
  /** Parameters by HF tensor name (internal layout; see weight IO for the HF layout). */
  readonly params: Map<string, tf.Variable>;
  /**
   * Final normed hidden states.
   * @param inputIds `[B, T]` int32
   * @returns `[B*T, D]` (rows ordered batch-major)
   */
  hidden(inputIds: tf.Tensor2D, packing?: PackedPositions): tf.Tensor2D;
  /** The output projection and its layout for {@link tokenLogps}: `[D, V]` ('DV') or tied `[V, D]` ('VD'). */
  outputProjection(): { weight: tf.Tensor2D; layout: 'DV' | 'VD' };
  /** Full logits `[B, T, V]` (inference and tests; training uses hidden + chunked log-probs). */
  logits(inputIds: tf.Tensor2D): tf.Tensor3D;
  /** Free every variable. */
  dispose(): void;
}

/** Text ⇄ ids. Implementations: llama2.c tokenizer.bin, HF tokenizer.json. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /** Encode text without adding BOS/EOS. */
  encode(text: string): number[];
  decode(ids: number[]): string;
  /** Render a conversation with the tokenizer's chat template, if it has one. */
  applyChatTemplate?(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string;
  readonly chatTemplate?: string | null;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

/**
 * One preference pair, after format detection; also the webhook's row (`{prompt, chosen, rejected}`, the
 * request schema's `dataset` items). `sftTarget` defaults to `chosen`.
 */
export interface PreferenceExample {
  prompt: string;
  chosen: string;
  rejected: string;
  sftTarget?: string;
}

/**
 * One prompt of online DPO (the webhook's `[{prompt}]` rows for `method: online_dpo`), optionally with an SFT
 * target (`chosen`) for the SFT stage that runs first.
 */
export interface PromptExample {
  prompt: string;
  chosen?: string;
}

/** A row of a job's inline dataset: a preference pair, or a prompt (method online_dpo). */
export type DatasetRow = PreferenceExample | PromptExample;

/** Progress of a training stage, reported to the CLI bar, logs and the queue. */
export interface ProgressEvent {
  stage: 'sft' | 'dpo';
  step: number;
  totalSteps: number;
  metrics?: Record<string, number>;
}

/** Latest metrics per training stage, TRL's names (`loss`, `rewards/margins`, ...). */
export interface StageMetrics {
  sft: Record<string, number>;
  dpo: Record<string, number>;
}

/** What runTraining returns (and the training child sends back to the worker). */
export interface TrainResult {
  artifactDir: string;
  /** The final metrics of each stage (last logged train step + last eval). */
  metrics: StageMetrics;
}

/**
 * Something worth recording in a job's event log that only training knows (the model being loaded, the
 * data counts after tokenisation, a warning). The CLI ignores these; the worker writes them to the job's
 * event log (src/queue/events.ts) after validating them.
 */
export interface TrainingEvent {
  type: 'model.loading' | 'data.ready' | 'warning';
  level?: 'info' | 'warn';
  message: string;
  data?: Record<string, unknown>;
}

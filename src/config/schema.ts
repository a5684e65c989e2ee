/**
 * The training configuration's schema, written once with TypeBox: {@link ConfigInputSchema} is what a
 * config file, the webhook's `config` and `key=value` overrides may hold (every key optional; the committed
 * `schemas/config.schema.json` is generated from it by `npm run schemas`), {@link TrainConfigSchema} the
 * resolved configuration that loadConfig returns (every key present). The TypeScript types are derived
 * from these schemas (`Static`), so there is no hand-written mirror to keep in step.
 *
 * Names follow the DPO reference implementation (config/config.yaml) and TRL's DPOConfig; defaults of the
 * top-level keys are in config/config.yaml, those of the loss hyper-parameters in the loss schema.
 */
import { Type, type Static, type TOptional, type TProperties, type TSchema } from '@sinclair/typebox';
import { LossGroupSchema, ResolvedLossSchema } from '../training/losses/options.js';
import { trlInputProperties, trlStageProperties } from './trl.js';
import { OnlineDpoInputSchema, OnlineDpoSchema, TRAINING_STAGES } from '../training/online/schema.js';

export const SCHEMA_ID = 'https://dpo-service.local/schemas/config.schema.json';

// every count-like setting has a maximum (a request cannot ask for 2^53 of anything; issue 14)
const posInt = (o: Record<string, unknown> = {}) => Type.Integer({ minimum: 1, maximum: 1_000_000, ...o });
const nonNegInt = (o: Record<string, unknown> = {}) => Type.Integer({ minimum: 0, maximum: 1_000_000, ...o });
const nullable = <T extends TSchema>(t: T, o: Record<string, unknown> = {}) => Type.Union([t, Type.Null()], o);
const stringEnum = <T extends string>(values: readonly T[], o: Record<string, unknown> = {}) => Type.Unsafe<T>({ type: 'string', enum: [...values], ...o });
const str = (maxLength: number, o: Record<string, unknown> = {}) => Type.String({ maxLength, ...o });

export const LR_SCHEDULERS = ['linear', 'cosine', 'constant'] as const;
export const OPTIMIZERS = ['adamw', 'adam', 'rmsprop', 'sgd'] as const;
export const BACKENDS = ['auto', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'] as const;

/** Per-stage training controls (the DPO stage reads them from the top level, SFT from `sft` over the top level). */
const stageProperties = {
  n_epochs: nullable(posInt({ maximum: 1000 }), { description: 'Epochs (null: use n_examples or max_steps).' }),
  max_steps: nullable(posInt({ maximum: 10_000_000 }), { description: 'Stop after this many optimizer steps.' }),
  n_examples: nullable(posInt({ maximum: 100_000_000 }), { description: 'Stop after this many training examples (reference).' }),
  batch_size: posInt({
    description: 'Pairs per micro-batch (one forward/backward); an optimizer step sees batch_size * gradient_accumulation_steps pairs (TRL semantics).',
  }),
  gradient_accumulation_steps: posInt({
    description: 'Micro-batches whose gradients are summed (weighted so the loss is a mean over the effective batch) before one optimizer step.',
  }),
  lr: Type.Number({ exclusiveMinimum: 0, description: 'Peak learning rate.' }),
  warmup_steps: nonNegInt({ description: 'Linear warmup from 0, in optimizer steps (when > 0 it wins over warmup_ratio, as in transformers).' }),
  warmup_ratio: Type.Number({
    minimum: 0,
    maximum: 1,
    description: "Warmup as a fraction of the stage's optimizer steps: ceil(warmup_ratio * total steps) when warmup_steps is 0 (TRL/transformers).",
  }),
  lr_scheduler: stringEnum(LR_SCHEDULERS),
  optimizer: stringEnum(OPTIMIZERS),
  weight_decay: Type.Number({ minimum: 0, description: 'Decoupled (AdamW) or L2 (others) weight decay.' }),
  max_grad_norm: nullable(Type.Number({ exclusiveMinimum: 0 }), {
    description: 'Clip the global gradient norm (null: no clipping; the norm is logged anyway).',
  }),
};
export const StageSchema = Type.Object(stageProperties, { additionalProperties: false });
export type StageSettings = Static<typeof StageSchema>;
export type LrScheduler = StageSettings['lr_scheduler'];
export type OptimizerName = StageSettings['optimizer'];

const sftProperties = { enabled: Type.Boolean({ description: 'false skips the SFT stage.' }), ...stageProperties };
const sftDescription = 'The SFT stage on prompt + chosen; unset keys inherit the top-level value. enabled=false skips SFT.';
const SftSchema = Type.Partial(Type.Object(sftProperties), { additionalProperties: false, description: sftDescription });
/** `sft` as written: also TRL's names of the stage settings (learning_rate, num_train_epochs, ...). */
const SftInputSchema = Type.Object({ ...allOptional(sftProperties), ...trlStageProperties() }, { additionalProperties: false, description: sftDescription });

const dpoDescription =
  'The preference stage (DPO, or online DPO with stage: online_dpo). enabled=false skips it: the artifact is the SFT model (method "sft" of POST /trigger-finetune).';
const DpoSwitchSchema = Type.Object(
  { enabled: Type.Boolean({ description: 'false skips the preference stage (SFT only).' }) },
  { additionalProperties: false, description: dpoDescription },
);
const DpoSwitchInputSchema = Type.Partial(DpoSwitchSchema, { additionalProperties: false, description: dpoDescription });

const modelProperties = {
  name: Type.String({ minLength: 1, maxLength: 200, description: 'Short name of the model (group name).' }),
  name_or_path: Type.String({
    minLength: 1,
    maxLength: 1000,
    description: "'stories260K' (built-in), an HF directory (config.json + *.safetensors) or a llama2.c .bin.",
  }),
  tokenizer_name_or_path: Type.Optional(nullable(str(1000), { description: 'Tokenizer path when it is not next to the weights.' })),
};
export const ModelSchema = Type.Object(modelProperties, { additionalProperties: false });
export type ModelSettings = Static<typeof ModelSchema>;

export const LoraSchema = Type.Object(
  {
    enabled: Type.Boolean(),
    r: posInt(),
    alpha: Type.Number({ exclusiveMinimum: 0 }),
    dropout: Type.Number({ minimum: 0, exclusiveMaximum: 1 }),
    target_modules: Type.Union([Type.Array(Type.String({ minLength: 1, maxLength: 100 }), { minItems: 1 }), Type.Literal('all-linear')], {
      description: "Projection names, or 'all-linear' (PEFT): every linear layer of the decoder.",
    }),
    rslora: Type.Boolean({ description: 'Rank-stabilised LoRA: scale the update by alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023).' }),
    lora_plus_scale: Type.Number({ minimum: 1, description: "LoRA+: B's learning rate is this many times A's (Hayou et al. 2024); 1: off." }),
    merge: Type.Boolean({ description: 'Export merges the adapters into the weights; false: save a PEFT adapter.' }),
  },
  { additionalProperties: false },
);
export type LoraSettings = Static<typeof LoraSchema>;

const unit = (o: Record<string, unknown> = {}) => Type.Number({ minimum: 0, exclusiveMaximum: 1, ...o });

/** The keys that are the same in the written and the resolved configuration. */
const plainProperties = {
  exp_name: str(200, { description: 'Name of the run (run.json).' }),
  seed: Type.Integer({ minimum: 0, maximum: 4294967295 }),
  datasets: Type.Array(Type.String({ minLength: 1, maxLength: 1000 }), {
    minItems: 1,
    maxItems: 32,
    description: 'Training data: registered names (toy, hh) or file paths; concatenated.',
  }),
  eval_dataset: nullable(str(1000), { description: 'Held-out file/name; default: a split of the training data (eval_split_fraction).' }),
  dataset_format: nullable(str(64), { description: 'Force a data format instead of detecting it.' }),
  chosen_key: nullable(str(200)),
  rejected_key: nullable(str(200)),
  ...stageProperties,
  eval_batch_size: posInt(),
  n_eval_examples: nullable(posInt(), { description: 'Cap on the held-out examples evaluated.' }),
  adam_beta1: unit(),
  adam_beta2: unit(),
  adam_epsilon: Type.Number({ exclusiveMinimum: 0 }),
  rmsprop_alpha: unit(),
  momentum: unit(),
  max_length: Type.Integer({ minimum: 2, maximum: 1048576, description: 'Tokens of prompt + completion.' }),
  max_prompt_length: Type.Integer({ minimum: 1, maximum: 1048576 }),
  truncation_mode: stringEnum(['keep_start', 'keep_end'] as const, { description: 'Which end of an over-long prompt is kept.' }),
  eval_every: nullable(posInt({ maximum: 1_000_000_000 }), {
    description: 'Evaluate every this many training examples (reference semantics); null: only at the end.',
  }),
  do_first_eval: Type.Boolean({ description: 'Evaluate before the first DPO step.' }),
  eval_split_fraction: unit(),
  sample_during_eval: Type.Boolean(),
  n_eval_model_samples: nonNegInt(),
  sample_max_new_tokens: posInt(),
  sample_temperature: Type.Number({ minimum: 0 }),
  log_every: posInt({ description: 'Log metrics every this many optimizer steps.' }),
  log_logit_stats: Type.Boolean({
    description: 'Log logits/chosen|rejected, entropy and mean_token_accuracy (TRL); costs one extra forward pass per micro-batch.',
  }),
  save_steps: nullable(posInt(), { description: 'Checkpoint every this many optimizer steps (and always at the end).' }),
  save_total_limit: nullable(posInt()),
  checkpoint_every_seconds: nullable(posInt({ maximum: 604_800 }), {
    description: 'Also checkpoint when this many seconds passed since the last one (and at each stage end); service jobs default to 600.',
  }),
  loss_watchdog_threshold: nullable(Type.Number({ exclusiveMinimum: 0 }), {
    description: "Axolotl's name: stop with TRAINING_DIVERGED after loss_watchdog_patience consecutive steps with loss above this; null: off.",
  }),
  loss_watchdog_patience: posInt({ maximum: 1000, description: 'Consecutive steps above loss_watchdog_threshold before the run stops (Axolotl default 3).' }),
  keep_checkpoints: Type.Boolean({
    description:
      'Service jobs: keep the intermediate checkpoints (about 4x the model size each) in the uploaded artifact; default false (only the final model).',
  }),
  resume_from_checkpoint: nullable(str(1000), { description: "A checkpoint directory or 'latest' (in output_dir/checkpoints)." }),
  resume_strict: Type.Boolean({
    description: "On resume, fail when a given setting differs from the checkpoint's (other than cadence/output settings); false: warn and use it.",
  }),
  output_dir: nullable(str(1000)),
  precompute_ref_log_probs: Type.Boolean({
    description: 'Compute reference log-probs in one pass before DPO; no reference model in memory during training.',
  }),
  sync_ref_model: Type.Boolean({ description: 'TR-DPO soft update ref = α·policy + (1−α)·ref every ref_model_sync_steps.' }),
  ref_model_mixup_alpha: Type.Number({ minimum: 0, maximum: 1 }),
  ref_model_sync_steps: posInt(),
  ref_model_update_steps: nullable(posInt(), { description: 'PaddleNLP hard reference update (copy the policy) every N steps; null: off.' }),
  backend: Type.Unsafe<(typeof BACKENDS)[number] | null>({ enum: [...BACKENDS, null] }),
  gradient_checkpointing: Type.Boolean({
    description:
      "Recompute each layer's activations in the backward pass instead of keeping them (transformers' gradient_checkpointing): less memory, more compute.",
  }),
  padding_free: Type.Boolean({
    description:
      "TRL's name: pack each micro-batch's sequences into one row without padding (positions restart per sequence, attention within each sequence only); same tokens scored as padded. Default true: SFT packs (measured fastest); DPO uses shared_prompt when that is true.",
  }),
  shared_prompt: Type.Boolean({
    description:
      "DPO: one [prompt | chosen | rejected] sequence per pair (PaddleNLP's layout): the prompt is encoded once per pair; rejected attends to prompt + rejected only. Wins over padding_free for DPO. Default true (measured fastest).",
  }),
  max_tokens_per_batch: nullable(posInt(), {
    description:
      'Token-budget micro-batches: pairs grouped first-fit decreasing by length within a seeded shuffle window so each micro-batch holds at most this many tokens; null: batch_size pairs each.',
  }),
  tensorboard: Type.Boolean(),
  plot: Type.Boolean(),
  progress_bar: Type.Unsafe<boolean | 'auto'>({ enum: [true, false, 'auto'] }),
  save_dtype: stringEnum(['F32', 'BF16'] as const),
  frozen_weights_dtype: stringEnum(['float32', 'bfloat16'] as const, {
    description: 'Storage of frozen linear weights (the reference copy, the LoRA base) on the native backend; bfloat16 halves them.',
  }),
  weight_quantize_algo: nullable(stringEnum(['weight_only_int8'] as const), {
    description: "PaddleNLP's name: the LoRA base's linear weights as int8 with one scale per output feature (native backend).",
  }),
  stage: stringEnum(TRAINING_STAGES, { description: 'After SFT: dpo (preference pairs) or online_dpo (prompts, sampled pairs ranked by online_dpo.judge).' }),
};

/** The resolved training configuration: every key present, `model` and `loss` expanded (see config/config.yaml). */
export const TrainConfigSchema = Type.Object(
  { ...plainProperties, model: ModelSchema, loss: ResolvedLossSchema, sft: SftSchema, dpo: DpoSwitchSchema, lora: LoraSchema, online_dpo: OnlineDpoSchema },
  { additionalProperties: false },
);
export type TrainConfig = Static<typeof TrainConfigSchema>;

function allOptional<P extends TProperties>(p: P): { [K in keyof P]: TOptional<P[K]> } {
  return Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Type.Optional(v)])) as never;
}

/** What a config layer may hold: every key optional, `model`/`loss` also as group names, `beta` shorthands. */
export const ConfigInputSchema = Type.Object(
  {
    ...allOptional(plainProperties),
    model: Type.Optional(
      Type.Union([Type.String({ minLength: 1, maxLength: 1000 }), Type.Partial(ModelSchema)], {
        description: 'A model group name (config/model/<name>.yaml), a path/name for loadModel, or the model object.',
      }),
    ),
    loss: Type.Optional(
      Type.Union([Type.String({ minLength: 1, maxLength: 64 }), LossGroupSchema], {
        description: 'A loss group name (config/loss/<name>.yaml) or the loss object (name, beta, label_smoothing, ...).',
      }),
    ),
    beta: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: 'Shorthand for loss.beta (webhook convenience).' })),
    label_smoothing: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 0.5, description: 'Shorthand for loss.label_smoothing.' })),
    sft: Type.Optional(SftInputSchema),
    dpo: Type.Optional(DpoSwitchInputSchema),
    lora: Type.Optional(Type.Partial(LoraSchema)),
    ...trlInputProperties(),
    online_dpo: Type.Optional(OnlineDpoInputSchema),
  },
  {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: SCHEMA_ID,
    title: 'TrainConfig',
    description:
      "Training configuration of `dpo train` and of the webhook's optional `config` object (SFT then DPO). Every key is optional here: config/config.yaml supplies the defaults, and `model`/`loss` may name a group (config/model/<name>.yaml, config/loss/<name>.yaml). Names follow the DPO reference implementation (config/config.yaml) and TRL's DPOConfig. Generated from src/config/schema.ts (npm run schemas).",
    additionalProperties: false,
  },
);
export type ConfigInput = Static<typeof ConfigInputSchema>;

/** A schema as plain JSON (TypeBox's symbol keys dropped), as written to schemas/. */
export function toJsonSchema(s: TSchema): Record<string, unknown> {
  return JSON.parse(JSON.stringify(s)) as Record<string, unknown>;
}

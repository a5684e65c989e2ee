/**
 * TRL's names for our settings (TRL `DPOConfig` / transformers `TrainingArguments`, TRL's CLI `ModelConfig`
 * for LoRA), accepted wherever a setting is: config files, the webhook's `config`, `key=value` overrides, and
 * inside `sft` for the stage settings. Each alias maps to one of our keys, with a unit conversion where the
 * meanings differ (`eval_steps` counts optimizer steps, our `eval_every` training examples); conversions
 * that need other settings (`eval_steps`, `save_strategy`, `max_completion_length`) run once every layer is
 * merged, and a key of ours set in a later layer wins over them. A TRL name we do not support fails with a
 * ConfigError naming what to use instead.
 *
 * Sources: trl/trainer/dpo_config.py (DPOConfig), transformers/training_args.py (TrainingArguments),
 * trl/trainer/model_config.py (use_peft, lora_*). The README's "TRL names" table lists the same mapping.
 */
import { Type, type TSchema } from '@sinclair/typebox';
import { Ajv, type ValidateFunction } from 'ajv';
import { ConfigError, configErrorFromAjv, type ConfigPath } from './errors.js';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

const posNumber = Type.Number({ exclusiveMinimum: 0 });
const posInt = Type.Integer({ minimum: 1 });
const num = Type.Number();

/** One TRL name that maps to a setting of ours. */
export interface TrlAlias {
  /** Our setting (dotted), or the settings it decides. */
  ours: string;
  /** Meaning / conversion (README table, schema description). */
  meaning: string;
  /** The values TRL accepts that we accept (validated with the TRL name in errors). */
  schema: TSchema;
  /** Also valid inside `sft` (a stage setting). */
  stage?: boolean;
  /** `value` → a layer fragment of our keys (default `{[ours]: value}`, dotted keys nested). */
  map?: (value: unknown, at: ConfigPath) => Obj;
  /** A conversion that needs the merged config: `(value, cfg)` → our keys to set. */
  deferred?: (value: unknown, cfg: Obj, pending: ReadonlyMap<string, unknown>, at: ConfigPath) => Obj;
  /** The deferred conversion applies even over our key set in a later layer (TRL ignores that key then). */
  wins?: (value: unknown) => boolean;
}

const LR_SCHEDULER_OF: Record<string, 'linear' | 'cosine' | 'constant'> = {
  linear: 'linear',
  cosine: 'cosine',
  constant: 'constant',
  constant_with_warmup: 'constant',
};
const OPTIMIZER_OF: Record<string, 'adamw' | 'sgd' | 'rmsprop'> = {
  adamw_torch: 'adamw',
  adamw_torch_fused: 'adamw',
  adamw_hf: 'adamw',
  adamw: 'adamw',
  sgd: 'sgd',
  rmsprop: 'rmsprop',
};

function wholeNumber(v: unknown, at: ConfigPath, hint: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new ConfigError(at, `must be a whole number >= 1, got ${JSON.stringify(v)}; ${hint}`);
  return v;
}

/** Optimizer steps per evaluation/save (TRL accepts a float in (0, 1) as a fraction of the run: not supported). */
function stepCount(v: unknown, at: ConfigPath): number {
  return wholeNumber(v, at, 'a fraction of the total steps is not supported: give the number of optimizer steps');
}

/** The examples one optimizer step consumes (batch_size × gradient_accumulation_steps). */
const examplesPerStep = (cfg: Obj): number => Number(cfg.batch_size) * Number(cfg.gradient_accumulation_steps);

/** TRL name → our setting. Names that are the same in TRL and here (beta, max_length, seed, ...) need no alias. */
export const TRL_ALIASES: Readonly<Record<string, TrlAlias>> = {
  learning_rate: { ours: 'lr', meaning: 'peak learning rate (same meaning)', schema: posNumber, stage: true },
  num_train_epochs: {
    ours: 'n_epochs',
    meaning: 'epochs; whole numbers only (a fraction: use max_steps)',
    schema: posNumber,
    stage: true,
    map: (v, at) => ({ n_epochs: wholeNumber(v, at, 'our n_epochs counts whole epochs; for part of an epoch set max_steps') }),
  },
  per_device_train_batch_size: { ours: 'batch_size', meaning: 'pairs per micro-batch (one device: the same)', schema: posInt, stage: true },
  per_device_eval_batch_size: { ours: 'eval_batch_size', meaning: 'pairs per eval batch', schema: posInt },
  logging_steps: { ours: 'log_every', meaning: 'log every N optimizer steps (same unit)', schema: num, map: (v, at) => ({ log_every: stepCount(v, at) }) },
  eval_steps: {
    ours: 'eval_every',
    meaning: 'evaluate every N optimizer steps: eval_every = N × batch_size × gradient_accumulation_steps examples (implies eval_strategy=steps)',
    schema: num,
    deferred: (v, cfg, pending, at) => {
      const n = stepCount(v, at) * examplesPerStep(cfg);
      // a bad batch size is reported by the schema, not as a wrong eval_every
      return pending.get('eval_strategy') === 'no' || !Number.isInteger(n) ? {} : { eval_every: n };
    },
  },
  eval_strategy: {
    ours: 'eval_every',
    meaning: '"no": eval_every=null (evaluate at the end only); "steps": every eval_steps (default logging_steps) optimizer steps',
    schema: Type.String(),
    deferred: (v, cfg, pending, at) => {
      if (v === 'no') return { eval_every: null };
      if (v === 'steps') return pending.has('eval_steps') ? {} : { eval_every: Number(cfg.log_every) * examplesPerStep(cfg) };
      if (v === 'epoch') throw new ConfigError(at, 'eval_strategy=epoch is not supported: use eval_steps=<optimizer steps per epoch> or eval_every=<examples>');
      throw new ConfigError(at, `must be "no" or "steps", got ${JSON.stringify(v)}`);
    },
  },
  save_strategy: {
    ours: 'save_steps',
    meaning: '"no": save_steps=null (no checkpoints); "steps": every save_steps (TRL default 500) optimizer steps',
    schema: Type.String(),
    wins: (v) => v === 'no',
    deferred: (v, cfg, _pending, at) => {
      if (v === 'no') return { save_steps: null };
      if (v === 'steps') return cfg.save_steps === null || cfg.save_steps === undefined ? { save_steps: 500 } : {};
      if (v === 'epoch' || v === 'best')
        throw new ConfigError(at, `save_strategy=${v} is not supported: use save_steps=<optimizer steps> (checkpoints are also written at the end)`);
      throw new ConfigError(at, `must be "no" or "steps", got ${JSON.stringify(v)}`);
    },
  },
  lr_scheduler_type: {
    ours: 'lr_scheduler',
    meaning: 'linear, cosine, constant; constant_with_warmup = constant (our warmup applies to every schedule)',
    schema: Type.String(),
    stage: true,
    map: (v, at) => {
      const s = typeof v === 'string' ? LR_SCHEDULER_OF[v] : undefined;
      if (!s)
        throw new ConfigError(
          at,
          `${JSON.stringify(v)} is not supported: use one of ${Object.keys(LR_SCHEDULER_OF).join(', ')} (or our lr_scheduler=linear|cosine|constant)`,
        );
      return { lr_scheduler: s };
    },
  },
  optim: {
    ours: 'optimizer',
    meaning: 'adamw_torch / adamw_torch_fused / adamw_hf → adamw; sgd; rmsprop',
    schema: Type.String(),
    stage: true,
    map: (v, at) => {
      const o = typeof v === 'string' ? OPTIMIZER_OF[v] : undefined;
      if (!o)
        throw new ConfigError(
          at,
          `${JSON.stringify(v)} is not supported: use one of ${Object.keys(OPTIMIZER_OF).join(', ')} (or our optimizer=adamw|adam|rmsprop|sgd)`,
        );
      return { optimizer: o };
    },
  },
  report_to: {
    ours: 'tensorboard',
    meaning: '"tensorboard" / ["tensorboard"] / "all" → tensorboard=true; "none" / [] → false (event files in <output_dir>/tensorboard)',
    schema: Type.Union([Type.String(), Type.Array(Type.String())]),
    map: (v, at) => {
      const list = (Array.isArray(v) ? v : [v]).map(String);
      const other = list.filter((x) => !['tensorboard', 'none', 'all'].includes(x));
      if (other.length > 0) {
        throw new ConfigError(at, `${other.join(', ')} is not supported: we write TensorBoard event files only; use report_to=tensorboard or report_to=none`);
      }
      return { tensorboard: list.includes('tensorboard') || list.includes('all') };
    },
  },
  bf16: {
    ours: 'save_dtype',
    meaning: 'true → save_dtype=BF16 (weights exported as bfloat16; training computes in float32 on every backend); false → F32',
    schema: Type.Boolean(),
    map: (v) => ({ save_dtype: v ? 'BF16' : 'F32' }),
  },
  max_completion_length: {
    ours: 'max_length',
    meaning: 'max_length = max_prompt_length + N (or the smaller max_length when both are given); a completion may use room a shorter prompt leaves',
    schema: posInt,
    deferred: (v, cfg, pending) => {
      const total = Number(cfg.max_prompt_length) + Number(v);
      return { max_length: pending.has('max_length') ? Math.min(Number(cfg.max_length), total) : total };
    },
  },
  loss_type: {
    ours: 'loss.loss_type',
    meaning: 'the loss type or a list (MPO, with loss_weights)',
    schema: Type.Union([Type.String(), Type.Array(Type.String())]),
  },
  loss_weights: { ours: 'loss.loss_weights', meaning: 'weights of the listed loss types', schema: Type.Array(Type.Number({ minimum: 0 })) },
  reference_free: { ours: 'loss.reference_free', meaning: 'reference log-probs taken as 0', schema: Type.Boolean() },
  rpo_alpha: {
    ours: 'loss.sft_loss_ratio',
    meaning: 'RPO: adds α × token-mean NLL of the chosen completions (the same term)',
    schema: Type.Number({ minimum: 0 }),
  },
  f_divergence_type: { ours: 'loss.f_divergence_type', meaning: 'same values', schema: Type.String() },
  f_alpha_divergence_coef: { ours: 'loss.f_alpha_divergence_coef', meaning: 'same', schema: num },
  discopop_tau: { ours: 'loss.discopop_tau', meaning: 'same', schema: posNumber },
  simpo_gamma: { ours: 'loss.simpo_gamma', meaning: 'same (TRL CPOConfig)', schema: num },
  cpo_alpha: { ours: 'loss.cpo_alpha', meaning: 'same (TRL CPOConfig)', schema: Type.Number({ minimum: 0 }) },
  generate_during_eval: { ours: 'sample_during_eval', meaning: 'greedy samples at each eval (samples.jsonl)', schema: Type.Boolean() },
  eval_on_start: { ours: 'do_first_eval', meaning: 'evaluate before the first DPO step', schema: Type.Boolean() },
  run_name: { ours: 'exp_name', meaning: 'name of the run', schema: Type.String({ maxLength: 200 }) },
  use_peft: { ours: 'lora.enabled', meaning: 'train LoRA adapters (TRL CLI ModelConfig)', schema: Type.Boolean() },
  lora_r: { ours: 'lora.r', meaning: 'LoRA rank', schema: posInt },
  lora_alpha: { ours: 'lora.alpha', meaning: 'LoRA α', schema: posNumber },
  lora_dropout: { ours: 'lora.dropout', meaning: 'LoRA dropout', schema: Type.Number({ minimum: 0, exclusiveMaximum: 1 }) },
  lora_target_modules: { ours: 'lora.target_modules', meaning: 'modules that get adapters', schema: Type.Array(Type.String({ minLength: 1 })) },
};

/** TRL names that keep their meaning here but take values we map (TRL's `max_steps=-1` means "no limit"). */
const SAME_NAME_VALUES: Readonly<Record<string, (v: unknown) => unknown>> = {
  max_steps: (v) => (v === -1 ? null : v),
};

/** TRL / TrainingArguments names we do not support, and what to use instead. */
export const TRL_UNSUPPORTED: Readonly<Record<string, string>> = {
  fp16: 'we train in float32; use bf16=true (or save_dtype=BF16) to export bfloat16 weights',
  tf32: 'we train in float32 on every backend; remove it',
  evaluation_strategy: 'use eval_strategy (its newer name) or eval_steps / eval_every',
  logging_strategy: 'we log every log_every (logging_steps) optimizer steps; use logging_steps',
  logging_dir: 'TensorBoard event files go to <output_dir>/tensorboard; use output_dir',
  logging_first_step: 'step 1 is always logged when log_every=1; set logging_steps',
  per_gpu_train_batch_size: 'use per_device_train_batch_size (batch_size)',
  per_gpu_eval_batch_size: 'use per_device_eval_batch_size (eval_batch_size)',
  eval_accumulation_steps: 'evaluation runs in eval_batch_size batches; use per_device_eval_batch_size',
  gradient_checkpointing_kwargs: 'use gradient_checkpointing=true (no options)',
  lr_scheduler_kwargs: 'use lr_scheduler_type, warmup_steps or warmup_ratio',
  optim_args: 'use weight_decay, adam_beta1, adam_beta2, adam_epsilon',
  load_best_model_at_end: 'the final model is exported; use eval_steps to watch the eval metrics',
  metric_for_best_model: 'the final model is exported (no best-model selection)',
  save_only_model: 'checkpoints hold the model, optimizer and sampler state for exact resume; use save_total_limit',
  use_cpu: 'the tfjs backend is chosen with backend= (CLI) or TFJS_BACKEND (worker)',
  model_name_or_path: 'use model=<group in config/model or a path>',
  dataset_name: 'use datasets=[<registered name or path>]',
  use_logits_to_keep: 'not supported; log-probs are computed in chunks over the completion only',
  use_weighting: 'not supported (WPO weighting)',
  ld_alpha: 'not supported (LD-DPO)',
  torch_compile: 'not applicable (TensorFlow.js with our native kernels)',
  use_liger_kernel: 'not applicable (TensorFlow.js with our native kernels)',
  deepspeed: 'not applicable: one process trains one job',
  push_to_hub: 'the service uploads the artifact to its storage; use dpo export for a local copy',
  ref_model_init_kwargs: 'the reference is the SFT weights (or precomputed log-probs); see precompute_ref_log_probs',
  model_init_kwargs: 'not supported; the model group (config/model/<name>.yaml) describes the model',
};

/** Every TRL name we know: aliases, unsupported names and the shared names (for "did you mean"). */
export function trlNames(): string[] {
  return [...Object.keys(TRL_ALIASES), ...Object.keys(TRL_UNSUPPORTED)];
}

/** Schema properties of the TRL names (ConfigInputSchema embeds them so requests and files may use them). */
export function trlInputProperties(): Record<string, TSchema> {
  const out: Record<string, TSchema> = {};
  for (const [name, a] of Object.entries(TRL_ALIASES)) out[name] = Type.Optional({ ...a.schema, description: `TRL name of ${a.ours}: ${a.meaning}.` });
  for (const [name, hint] of Object.entries(TRL_UNSUPPORTED))
    out[name] = Type.Optional(Type.Unknown({ description: `TRL's ${name}: not supported; ${hint}.` }));
  return out;
}

/** TRL's stage settings, as accepted inside `sft`. */
export function trlStageProperties(): Record<string, TSchema> {
  const out: Record<string, TSchema> = {};
  for (const [name, a] of Object.entries(TRL_ALIASES)) if (a.stage) out[name] = Type.Optional({ ...a.schema, description: `TRL name of sft.${a.ours}.` });
  return out;
}

const validators = new Map<string, ValidateFunction>();
function checkValue(name: string, a: TrlAlias, value: unknown, at: ConfigPath): void {
  let v = validators.get(name);
  if (!v) {
    v = new Ajv({ allErrors: true, strict: false, strictNumbers: true }).compile(JSON.parse(JSON.stringify(a.schema)));
    validators.set(name, v);
  }
  if (!v(value)) throw configErrorFromAjv(v.errors ?? [], { value, prefix: at });
}

function nestInto(out: Obj, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let cur = out;
  for (const p of parts.slice(0, -1)) {
    if (!isObj(cur[p])) cur[p] = {};
    cur = cur[p] as Obj;
  }
  cur[parts.at(-1)!] = value;
}

/**
 * Translates TRL names in config layers (each file, object or override is one layer, in order) and runs the
 * conversions that need the merged config at the end.
 */
export class TrlTranslator {
  private layer = 0;
  /** Pending deferred conversions: TRL name → value, layer, path. */
  private readonly pending = new Map<string, { value: unknown; layer: number; at: ConfigPath }>();
  /** Our top-level keys → the last layer that set them directly. */
  private readonly lastSet = new Map<string, number>();

  /**
   * One layer with TRL names replaced by ours: `[the layer without them, what the aliases set]`, applied in
   * that order (so `{loss: ipo, reference_free: true}` selects the group, then sets its key). Deferred
   * conversions are held back for {@link finish}.
   * @throws ConfigError at the TRL name for an unsupported name or value, or when the same layer also sets
   *   the key it maps to.
   */
  translate(layer: Obj, source?: (key: string) => string | undefined): Obj[] {
    this.layer += 1;
    const rest: Obj = {};
    const aliased: Obj = {};
    const setByAlias: Array<[string, string]> = [];
    for (const [k, v] of Object.entries(layer)) {
      const at = [k];
      if (k in TRL_UNSUPPORTED) throw new ConfigError(at, `TRL's ${k} is not supported: ${TRL_UNSUPPORTED[k]}${fromText(source?.(k))}`);
      const alias = TRL_ALIASES[k];
      if (alias) {
        checkValue(k, alias, v, at);
        if (alias.deferred) {
          this.pending.set(k, { value: v, layer: this.layer, at });
          continue;
        }
        const frag = alias.map ? alias.map(v, at) : { [alias.ours]: v };
        for (const [ok, ov] of Object.entries(frag)) {
          nestInto(aliased, ok, ov);
          setByAlias.push([k, ok]);
          this.lastSet.set(ok.split('.')[0]!, this.layer);
        }
        continue;
      }
      if (k === 'sft' && isObj(v)) {
        const sft: Obj = {};
        for (const [sk, sv] of Object.entries(v)) {
          const sa = TRL_ALIASES[sk];
          if (!sa?.stage) {
            sft[sk] = sv;
            continue;
          }
          checkValue(sk, sa, sv, ['sft', sk]);
          for (const [ok, ov] of Object.entries(sa.map ? sa.map(sv, ['sft', sk]) : { [sa.ours]: sv })) {
            if (ok in v) throw new ConfigError(['sft', sk], `is TRL's name of sft.${ok}, which is set too; set one of them`);
            sft[ok] = ov;
          }
        }
        rest.sft = sft;
      } else rest[k] = k in SAME_NAME_VALUES ? SAME_NAME_VALUES[k]!(v) : v;
      this.lastSet.set(k, this.layer);
    }
    for (const [trl, ours] of setByAlias) {
      if (hasPath(rest, ours)) throw new ConfigError([trl], `is TRL's name of ${ours}, which is set too; set one of them`);
    }
    return Object.keys(aliased).length > 0 ? [rest, aliased] : [rest];
  }

  /** Apply the deferred conversions to the merged config (a key of ours set in a later layer wins). */
  finish(cfg: Obj): Obj {
    const values = new Map([...this.pending].map(([k, p]) => [k, p.value]));
    // explicit settings of ours the conversions must respect (max_completion_length with max_length)
    for (const [k, layer] of this.lastSet) if (layer > 1) values.set(k, cfg[k]);
    let out = cfg;
    for (const name of ['eval_strategy', 'eval_steps', 'save_strategy', 'max_completion_length']) {
      const p = this.pending.get(name);
      if (!p) continue;
      const alias = TRL_ALIASES[name]!;
      const frag = alias.deferred!(p.value, out, values, p.at);
      const wins = alias.wins?.(p.value) ?? false;
      for (const [k, v] of Object.entries(frag)) if (wins || (this.lastSet.get(k) ?? 0) <= p.layer) out = { ...out, [k]: v };
    }
    return out;
  }
}

function hasPath(o: Obj, dotted: string): boolean {
  let cur: unknown = o;
  for (const p of dotted.split('.')) {
    if (!isObj(cur) || !(p in cur)) return false;
    cur = cur[p];
  }
  return true;
}

const fromText = (src: string | undefined) => (src ? ` [from ${src}]` : '');

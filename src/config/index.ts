/**
 * Training configuration: `config/config.yaml` defaults, Hydra-style groups (`model=<name>` →
 * `config/model/<name>.yaml`, `loss=<name>` → `config/loss/<name>.yaml`), a config file, a config object (the
 * webhook's `config`), and `key=value` / `a.b=value` overrides whose values are parsed as YAML
 * (`datasets=[a,b]`, `loss.beta=0.2`, `max_steps=null`). The result is validated by
 * `schemas/config.schema.json` (ajv) and by the loss module's `resolveLossOptions`.
 *
 * Source of the scheme: eric-mitchell/direct-preference-optimization `config/config.yaml` + Hydra overrides.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import YAML from 'yaml';
import { LOSS_ALIASES, LOSS_TYPES, resolveLossOptions, type ResolvedLossOptions } from '../training/losses/options.js';
import { configDir, schemasDir } from './paths.js';

export { configDir, repoRoot, schemasDir } from './paths.js';

/** A configuration error; `key` names the setting (dotted, e.g. `loss.beta`), `code` is stable. */
export class ConfigError extends Error {
  readonly code = 'INVALID_CONFIG';
  readonly key: string;
  constructor(key: string, message: string) {
    super(key ? `${key}: ${message}` : message);
    this.name = 'ConfigError';
    this.key = key;
  }
}

export interface ModelSettings {
  name: string;
  name_or_path: string;
  tokenizer_name_or_path?: string | null;
}

/** The loss group (snake_case as in config/loss/*.yaml); validated by resolveLossOptions. */
export interface LossSettings {
  name: string;
  beta?: number;
  label_smoothing?: number;
  [key: string]: unknown;
}

export type LrScheduler = 'linear' | 'cosine' | 'constant';
export type OptimizerName = 'adamw' | 'adam' | 'rmsprop' | 'sgd';

/** Per-stage training controls (the DPO stage reads them from the top level, SFT from `sft` + top level). */
export interface StageSettings {
  n_epochs: number | null;
  max_steps: number | null;
  n_examples: number | null;
  batch_size: number;
  gradient_accumulation_steps: number;
  lr: number;
  warmup_steps: number;
  lr_scheduler: LrScheduler;
  optimizer: OptimizerName;
  weight_decay: number;
  max_grad_norm: number | null;
}

export interface LoraSettings {
  enabled: boolean;
  r: number;
  alpha: number;
  dropout: number;
  target_modules: string[];
  merge: boolean;
}

/** The resolved training configuration (every key present; see config/config.yaml for meanings and defaults). */
export interface TrainConfig extends StageSettings {
  exp_name: string;
  seed: number;
  model: ModelSettings;
  loss: LossSettings;
  datasets: string[];
  eval_dataset: string | null;
  dataset_format: string | null;
  chosen_key: string | null;
  rejected_key: string | null;
  eval_split_fraction: number;
  n_eval_examples: number | null;
  max_length: number;
  max_prompt_length: number;
  truncation_mode: 'keep_start' | 'keep_end';
  eval_batch_size: number;
  adam_beta1: number;
  adam_beta2: number;
  adam_epsilon: number;
  rmsprop_alpha: number;
  momentum: number;
  sft: Partial<StageSettings> & { enabled: boolean };
  precompute_ref_log_probs: boolean;
  sync_ref_model: boolean;
  ref_model_mixup_alpha: number;
  ref_model_sync_steps: number;
  ref_model_update_steps: number | null;
  lora: LoraSettings;
  eval_every: number | null;
  do_first_eval: boolean;
  sample_during_eval: boolean;
  n_eval_model_samples: number;
  sample_max_new_tokens: number;
  sample_temperature: number;
  log_every: number;
  log_logit_stats: boolean;
  save_steps: number | null;
  save_total_limit: number | null;
  resume_from_checkpoint: string | null;
  output_dir: string | null;
  tensorboard: boolean;
  plot: boolean;
  progress_bar: boolean | 'auto';
  save_dtype: 'F32' | 'BF16';
  backend: 'auto' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu' | null;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

let validator: ValidateFunction | null = null;
let schemaCache: Obj | null = null;

/** The parsed `schemas/config.schema.json`. */
export function configSchema(): Obj {
  if (!schemaCache) schemaCache = JSON.parse(readFileSync(join(schemasDir(), 'config.schema.json'), 'utf8')) as Obj;
  return schemaCache;
}

function validate(): ValidateFunction {
  if (!validator) {
    const ajv = new Ajv({ allErrors: true, strict: true });
    validator = ajv.compile(configSchema());
  }
  return validator;
}

function readYamlFile(path: string, key: string): Obj {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(key, `cannot read ${path}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = YAML.parse(text);
  } catch (e) {
    throw new ConfigError(key, `${path} is not valid YAML: ${(e as Error).message}`);
  }
  if (v === null || v === undefined) return {};
  if (!isObj(v)) throw new ConfigError(key, `${path} must hold a YAML mapping`);
  return v;
}

function deepMerge(base: Obj, over: Obj): Obj {
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) {
    out[k] = isObj(v) && isObj(out[k]) ? deepMerge(out[k] as Obj, v) : v;
  }
  return out;
}

/** Names of the groups found in `config/<group>/*.yaml`. */
export function listGroup(group: 'model' | 'loss'): string[] {
  const dir = join(configDir(), group);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => f.slice(0, -5))
    .sort();
}

const GROUP_NAME = /^[A-Za-z0-9_.-]+$/;

/**
 * Expand a `model` group name: `config/model/<name>.yaml`, else a model name or path for loadModel
 * (`{name: basename, name_or_path: value}`).
 */
function modelGroup(value: string): Obj {
  const file = join(configDir(), 'model', `${value}.yaml`);
  if (GROUP_NAME.test(value) && existsSync(file)) return { name: value, name_or_path: value, ...readYamlFile(file, 'model') };
  return { name: basename(value).replace(/\.(bin|safetensors)$/, ''), name_or_path: value };
}

/**
 * Expand a `loss` group name: `config/loss/<name>.yaml`, else `{name}` when it is a known loss type or alias
 * (so that `loss=ipo` never fails for a missing file, the reference's issue #81).
 * @throws ConfigError (key `loss`) for an unknown loss name.
 */
function lossGroup(value: string): Obj {
  const file = join(configDir(), 'loss', `${value}.yaml`);
  if (GROUP_NAME.test(value) && existsSync(file)) return { name: value, ...readYamlFile(file, 'loss') };
  const n = value.trim().toLowerCase();
  if ((LOSS_TYPES as readonly string[]).includes(n) || n in LOSS_ALIASES) return { name: n };
  throw new ConfigError('loss', `unknown loss '${value}'; use one of ${[...new Set([...listGroup('loss'), ...LOSS_TYPES])].join(', ')}`);
}

/** Apply a layer (file, object or override) onto the config, expanding group names. */
function applyLayer(cfg: Obj, layer: Obj): Obj {
  let out = cfg;
  for (const [k, v] of Object.entries(layer)) {
    if (k === 'model' && typeof v === 'string') out = { ...out, model: modelGroup(v) };
    else if (k === 'loss' && typeof v === 'string') out = { ...out, loss: lossGroup(v) };
    else if (k === 'loss' && isObj(v) && typeof v.name === 'string' && isObj(out.loss) && v.name !== out.loss.name) {
      // switching loss type by object: start from that loss's group defaults
      out = { ...out, loss: deepMerge(lossGroup(v.name), v) };
    } else if (k === 'model' && isObj(v) && typeof v.name_or_path === 'string' && isObj(out.model) && v.name_or_path !== out.model.name_or_path) {
      out = { ...out, model: { name: basename(v.name_or_path), ...v } };
    } else out = deepMerge(out, { [k]: v });
  }
  return out;
}

/** One parsed command-line override. */
export interface Override {
  /** Dotted key, e.g. `loss.beta`. */
  key: string;
  path: string[];
  value: unknown;
  /** The original `key=value` text. */
  text: string;
}

/**
 * Parse `key=value` (Hydra style). Values are YAML: `0.1` → number, `[a,b]` → list, `null`, `true`. A leading
 * `+` (Hydra's "add") or `++` is accepted and ignored. `datasets=hh` is read as `[hh]`.
 * @throws ConfigError naming the override when it has no `=` or an empty/ill-formed key.
 */
export function parseOverride(text: string): Override {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new ConfigError(text, `an override must be key=value (e.g. loss.beta=0.1), got '${text}'`);
  const key = text
    .slice(0, eq)
    .trim()
    .replace(/^\+\+?/, '');
  const raw = text.slice(eq + 1);
  if (!/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/.test(key)) {
    throw new ConfigError(key || text, `'${key}' is not a valid setting name (letters, digits, _ and dots)`);
  }
  let value: unknown;
  try {
    value = raw.trim() === '' ? '' : YAML.parse(raw);
  } catch (e) {
    throw new ConfigError(key, `cannot parse the value '${raw}' of ${text}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (key === 'datasets' && typeof value === 'string') value = [value];
  return { key, path: key.split('.'), value, text };
}

function nest(path: string[], value: unknown): Obj {
  const out: Obj = {};
  let cur = out;
  path.forEach((p, i) => {
    if (i === path.length - 1) cur[p] = value;
    else {
      const next: Obj = {};
      cur[p] = next;
      cur = next;
    }
  });
  return out;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length]![b.length]!;
}

function suggest(name: string, known: string[]): string {
  const best = known.map((k) => [k, editDistance(name, k)] as const).sort((x, y) => x[1] - y[1])[0];
  return best && best[1] <= Math.max(2, Math.floor(name.length / 3)) ? ` (did you mean '${best[0]}'?)` : '';
}

function pathOf(e: ErrorObject): string {
  const parts = e.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (e.keyword === 'additionalProperties') parts.push(String((e.params as { additionalProperty: string }).additionalProperty));
  return parts.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

function getAt(obj: unknown, path: string): unknown {
  let cur: unknown = obj;
  for (const p of path.split(/\.|\[|\]/).filter(Boolean)) cur = isObj(cur) || Array.isArray(cur) ? (cur as Obj)[p] : undefined;
  return cur;
}

/** Turn ajv errors into one ConfigError naming the most specific offending key. */
function schemaError(errors: ErrorObject[], cfg: Obj, sources: Map<string, string>): ConfigError {
  const specific = errors.filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'anyOf');
  // prefer the deepest path; among equals prefer constraint errors over type errors of a oneOf branch
  const rank = (e: ErrorObject) => pathOf(e).split(/\.|\[/).length * 10 + (e.keyword === 'type' ? 0 : 1);
  const e = (specific.length ? specific : errors).slice().sort((a, b) => rank(b) - rank(a))[0]!;
  const key = pathOf(e);
  const props = (configSchema().properties ?? {}) as Obj;
  let msg: string;
  if (e.keyword === 'additionalProperties') {
    const parentPath = key.includes('.') ? key.slice(0, key.lastIndexOf('.')) : '';
    const name = key.slice(key.lastIndexOf('.') + 1);
    const known = parentPath === '' ? Object.keys(props) : Object.keys(((getSchemaAt(parentPath) ?? {}) as Obj).properties ?? {});
    msg = `unknown setting '${key}'${suggest(name, known)}; known settings${parentPath ? ` of ${parentPath}` : ''}: ${known.join(', ')}`;
  } else {
    const got = getAt(cfg, key);
    msg = `${e.message ?? 'is invalid'}${e.keyword === 'enum' ? ` (${((e.params as { allowedValues?: unknown[] }).allowedValues ?? []).map(String).join(', ')})` : ''}, got ${JSON.stringify(got)}`;
  }
  const src = sources.get(key);
  return new ConfigError(key, `${msg}${src ? ` [from ${src}]` : ''}`);
}

function getSchemaAt(path: string): Obj | undefined {
  const schema = configSchema();
  const defs = (schema.definitions ?? {}) as Obj;
  const deref = (s: Obj | undefined): Obj | undefined => {
    if (!s) return s;
    if (typeof s.$ref === 'string') return deref(defs[s.$ref.split('/').pop()!] as Obj);
    const alts = (s.oneOf ?? s.anyOf) as Obj[] | undefined;
    if (alts) return deref(alts.find((a) => a.type === 'object' || a.$ref) ?? alts[0]);
    return s;
  };
  let cur: Obj | undefined = schema;
  for (const p of path.split('.')) cur = deref(((cur?.properties ?? {}) as Obj)[p] as Obj | undefined);
  return cur;
}

export interface LoadConfigOptions {
  /** A YAML file merged over config/config.yaml (may be partial). */
  configFile?: string;
  /** A config object (e.g. the webhook's `config`), applied after the file. */
  object?: Record<string, unknown>;
  /** `key=value` overrides, applied last (group selections first, Hydra order). */
  overrides?: string[];
  /** Base config instead of config/config.yaml (tests). */
  defaults?: Record<string, unknown>;
}

/**
 * Resolve the training configuration.
 * Order: `config/config.yaml` → `configFile` → `object` → group selections in `overrides` (`model=`, `loss=`)
 * → the other overrides. Top-level `beta` / `label_smoothing` (webhook shorthand) move into `loss`.
 * @returns the validated {@link TrainConfig} (plain JSON, safe to write to run.json)
 * @throws ConfigError (code INVALID_CONFIG) whose `key` names the offending setting: an unknown key
 *   (`unknown.key=1`), a value of the wrong type or range (`loss.beta=abc`), an unknown loss or an invalid
 *   loss hyper-parameter (from resolveLossOptions), max_prompt_length >= max_length.
 */
export function loadConfig(opts: LoadConfigOptions = {}): TrainConfig {
  const sources = new Map<string, string>();
  let cfg: Obj = {};
  const base = opts.defaults ?? readYamlFile(join(configDir(), 'config.yaml'), 'config.yaml');
  cfg = applyLayer(cfg, base);
  if (opts.configFile) cfg = applyLayer(cfg, readYamlFile(opts.configFile, '--config'));
  if (opts.object !== undefined) {
    if (!isObj(opts.object)) throw new ConfigError('config', `must be an object of settings, got ${JSON.stringify(opts.object)}`);
    // group names are validated by the schema before expansion too (a number as model is a type error)
    cfg = applyLayer(cfg, opts.object);
  }
  const parsed = (opts.overrides ?? []).map(parseOverride);
  const props = Object.keys((configSchema().properties ?? {}) as Obj);
  for (const o of parsed) {
    const top = o.path[0]!;
    if (!props.includes(top)) {
      throw new ConfigError(o.key, `unknown setting '${top}' in override ${o.text}${suggest(top, props)}; see config/config.yaml for the settings`);
    }
  }
  const isGroup = (o: Override) => o.path.length === 1 && (o.key === 'model' || o.key === 'loss');
  for (const o of [...parsed.filter(isGroup), ...parsed.filter((o) => !isGroup(o))]) {
    if (isGroup(o) && typeof o.value !== 'string') {
      throw new ConfigError(o.key, `${o.key}=<group name>, got ${JSON.stringify(o.value)} [from ${o.text}]`);
    }
    cfg = applyLayer(cfg, nest(o.path, o.value));
    sources.set(o.key, o.text);
  }
  // webhook shorthands
  for (const k of ['beta', 'label_smoothing'] as const) {
    if (cfg[k] !== undefined && isObj(cfg.loss)) {
      cfg = { ...cfg, loss: { ...cfg.loss, [k]: cfg[k] } };
      if (!sources.has(`loss.${k}`) && sources.has(k)) sources.set(`loss.${k}`, sources.get(k)!);
      delete cfg[k];
    }
  }
  const v = validate();
  if (!v(cfg)) throw schemaError(v.errors ?? [], cfg, sources);
  const c = cfg as unknown as TrainConfig;
  for (const k of Object.keys(base)) {
    if (!(k in c)) throw new ConfigError(k, 'missing after resolution (config/config.yaml must define it)');
  }
  resolveLoss(c);
  if (c.max_prompt_length >= c.max_length) {
    throw new ConfigError('max_prompt_length', `must be smaller than max_length (${c.max_length}), got ${c.max_prompt_length}; the completion needs room`);
  }
  if (c.lora.enabled && c.sync_ref_model) {
    throw new ConfigError('sync_ref_model', 'is not supported with lora.enabled (the reference is the adapter-disabled model); set one of them to false');
  }
  if (c.precompute_ref_log_probs && (c.sync_ref_model || c.ref_model_update_steps)) {
    throw new ConfigError(
      'precompute_ref_log_probs',
      'cannot be combined with sync_ref_model / ref_model_update_steps (the reference changes during training)',
    );
  }
  return c;
}

/**
 * The loss options of a resolved config (validated by the loss module).
 * @throws ConfigError naming the loss setting (`loss.beta`, `loss.label_smoothing`, `loss.reference_free`, ...).
 */
export function resolveLoss(c: Pick<TrainConfig, 'loss'>): ResolvedLossOptions {
  try {
    return resolveLossOptions(c.loss as Record<string, unknown>);
  } catch (e) {
    const err = e as { setting?: string; message: string };
    if (err.setting) throw new ConfigError(err.setting, err.message.replace(`${err.setting}: `, ''));
    throw e;
  }
}

/** The DPO stage's controls (top-level keys). */
export function dpoStage(c: TrainConfig): StageSettings {
  return {
    n_epochs: c.n_epochs,
    max_steps: c.max_steps,
    n_examples: c.n_examples,
    batch_size: c.batch_size,
    gradient_accumulation_steps: c.gradient_accumulation_steps,
    lr: c.lr,
    warmup_steps: c.warmup_steps,
    lr_scheduler: c.lr_scheduler,
    optimizer: c.optimizer,
    weight_decay: c.weight_decay,
    max_grad_norm: c.max_grad_norm,
  };
}

/** The SFT stage's controls: `sft.*` over the top-level keys. */
export function sftStage(c: TrainConfig): StageSettings {
  const s: Obj = { ...c.sft };
  delete s.enabled;
  return { ...dpoStage(c), ...(s as Partial<StageSettings>) };
}

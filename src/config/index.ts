/**
 * Training configuration: `config/config.yaml` defaults, Hydra-style groups (`model=<name>` →
 * `config/model/<name>.yaml`, `loss=<name>` → `config/loss/<name>.yaml`), a config file, a config object (the
 * webhook's `config`), and `key=value` / `a.b=value` overrides whose values are parsed as YAML
 * (`datasets=[a,b]`, `loss.beta=0.2`, `max_steps=null`). The merged layers are validated by the schema of
 * src/config/schema.ts (= schemas/config.schema.json, ajv), the loss group is resolved by the loss module's
 * `resolveLossGroup`, and every key of the resolved schema must be present: one typed object.
 *
 * Source of the scheme: eric-mitchell/direct-preference-optimization `config/config.yaml` + Hydra overrides.
 */
import { appendFileSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Ajv, type ValidateFunction } from 'ajv';
import YAML from 'yaml';
import { checkOnlineDpoConfig } from '../training/online/schema.js';
import { LOSS_ALIASES, LOSS_TYPES, lossOptionsOf, resolveLossGroup, type LossGroup, type ResolvedLossOptions } from '../training/losses/options.js';
import { closest, ConfigError, configErrorFromAjv, type ConfigPath } from './errors.js';
import { configDir } from './paths.js';
import { TRL_ALIASES, TrlTranslator } from './trl.js';
import { ConfigInputSchema, StageSchema, TrainConfigSchema, toJsonSchema, type StageSettings, type TrainConfig } from './schema.js';

export { configDir, repoRoot, schemasDir } from './paths.js';
export { ConfigError, type ConfigErrorCode } from './errors.js';
export type { ConfigInput, LoraSettings, LrScheduler, ModelSettings, OptimizerName, StageSettings, TrainConfig } from './schema.js';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

let configSchemaCache: Obj | null = null;

/** `schemas/config.schema.json` as plain JSON (generated from {@link ConfigInputSchema}), built once. Read-only. */
export function configSchema(): Obj {
  configSchemaCache ??= toJsonSchema(ConfigInputSchema);
  return configSchemaCache;
}

/**
 * The input schema's validator, compiled when this module loads (0.2-0.5 s): a process pays it at start-up,
 * not inside a request or while a worker holds a job's lock.
 */
const validateInput: ValidateFunction = new Ajv({ allErrors: true, strict: true, strictNumbers: true }).compile(configSchema());
/** The keys every resolved config has. */
const RESOLVED_KEYS = Object.keys(TrainConfigSchema.properties);

// Parsed YAML files by path, with the mtime and size they had: loadConfig runs per webhook request, and parsing
// config.yaml + the model and loss groups each time was most of the trigger's CPU. A changed file is re-read.
const yamlCache = new Map<string, { mtimeMs: number; size: number; value: Obj }>();

/**
 * A YAML file's mapping (an empty file is `{}`), from the cache while the file's mtime and size are unchanged.
 * Each call returns its own copy (callers may merge into it).
 * @throws ConfigError (key `key`) when the file cannot be read, is not YAML, or is not a mapping.
 */
function readYamlFile(path: string, key: string): Obj {
  const st = statSync(path, { throwIfNoEntry: false });
  const hit = st ? yamlCache.get(path) : undefined;
  if (st && hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return structuredClone(hit.value);
  const value = parseYamlFile(path, key);
  if (st) yamlCache.set(path, { mtimeMs: st.mtimeMs, size: st.size, value: structuredClone(value) });
  return value;
}

function parseYamlFile(path: string, key: string): Obj {
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
 * The model and tokenizer sources the registered model files declare: every string `name_or_path` and
 * `tokenizer_name_or_path` of `config/model/*.yaml` (a file without `name_or_path` declares its own name).
 * A config resolved from a registered name carries these values, so the worker accepts them when it checks the
 * queued config again; they are the operator's, and never listed to a client.
 */
export function registeredModelSources(): string[] {
  const out = new Set<string>();
  for (const name of listGroup('model')) {
    const m = modelGroup(name);
    for (const v of [m.name_or_path, m.tokenizer_name_or_path]) if (typeof v === 'string') out.add(v);
  }
  return [...out].sort();
}

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
  if ((LOSS_TYPES as readonly string[]).includes(n) || Object.hasOwn(LOSS_ALIASES, n)) return { name: n };
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

/** `, TRL's name of lr` for a TRL alias. */
const describeKey = (k: string): string => (TRL_ALIASES[k] ? `, TRL's name of ${TRL_ALIASES[k].ours}` : '');

function suggest(name: string, known: string[]): string {
  const near = closest(name, known);
  return near ? ` (did you mean '${near}'${describeKey(near)}?)` : '';
}

/** The keys the input schema knows for the object at `path` (for "unknown setting" messages). */
function knownKeysAt(path: ConfigPath): string[] {
  let cur: Obj | undefined = configSchema();
  for (const p of path) {
    const next: Obj | undefined = ((cur?.properties ?? {}) as Obj)[String(p)] as Obj | undefined;
    const alts = next?.anyOf as Obj[] | undefined;
    cur = alts ? alts.find((a) => a.type === 'object') : next;
  }
  return Object.keys((cur?.properties ?? {}) as Obj);
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

let resolutions = 0;

/**
 * How many times loadConfig ran in this process (the "resolved once per process" contract is tested with
 * it). With `DPO_CONFIG_TRACE=<file>` set, each run also appends `<pid> <entry script>` to that file, so a
 * test can count across the API, worker and training processes.
 */
export function configResolutions(): number {
  return resolutions;
}

/**
 * Resolve the training configuration: the one place a configuration is merged, validated and completed.
 * Order: `config/config.yaml` → `configFile` → `object` → group selections in `overrides` (`model=`, `loss=`)
 * → the other overrides. Top-level `beta` / `label_smoothing` (webhook shorthand) move into `loss`; the loss
 * group is resolved (defaults, canonical loss types). The result is valid input again:
 * `loadConfig({object: loadConfig(x)})` equals `loadConfig(x)`, which is how the worker and the training
 * child re-validate what crossed a process boundary.
 * @returns the resolved {@link TrainConfig} (plain JSON, safe to write to run.json or send to a child process)
 * @throws ConfigError (code INVALID_CONFIG) whose `path`/`key` names the offending setting: an unknown key
 *   (`unknown.key=1`), a value of the wrong type or range (`loss.beta=abc`), an unknown loss, an invalid
 *   loss combination (`loss.reference_free`), max_prompt_length >= max_length, ...
 */
export function loadConfig(opts: LoadConfigOptions = {}): TrainConfig {
  resolutions += 1;
  if (process.env.DPO_CONFIG_TRACE) appendFileSync(process.env.DPO_CONFIG_TRACE, `${process.pid} ${process.argv[1] ?? ''}\n`);
  const sources = new Map<string, string>();
  let cfg: Obj = {};
  const base = opts.defaults ?? readYamlFile(join(configDir(), 'config.yaml'), 'config.yaml');
  // TRL's names (learning_rate, eval_steps, ...) become ours layer by layer; conversions needing the merged config run after
  const trl = new TrlTranslator();
  const apply = (to: Obj, layer: Obj, source?: string): Obj => trl.translate(layer, () => source).reduce(applyLayer, to);
  cfg = apply(cfg, base);
  if (opts.configFile) cfg = apply(cfg, readYamlFile(opts.configFile, '--config'));
  if (opts.object !== undefined) {
    if (!isObj(opts.object)) throw new ConfigError('config', `must be an object of settings, got ${JSON.stringify(opts.object)}`);
    // group names are validated by the schema before expansion too (a number as model is a type error)
    cfg = apply(cfg, opts.object);
  }
  const parsed = (opts.overrides ?? []).map(parseOverride);
  const props = Object.keys((configSchema().properties ?? {}) as Obj);
  for (const o of parsed) {
    const top = o.path[0]!;
    if (!props.includes(top)) {
      throw new ConfigError(o.path, `unknown setting '${top}' in override ${o.text}${suggest(top, props)}; see config/config.yaml for the settings`);
    }
  }
  const isGroup = (o: Override) => o.path.length === 1 && (o.key === 'model' || o.key === 'loss');
  for (const o of [...parsed.filter(isGroup), ...parsed.filter((o) => !isGroup(o))]) {
    if (isGroup(o) && typeof o.value !== 'string') {
      throw new ConfigError(o.path, `${o.key}=<group name>, got ${JSON.stringify(o.value)} [from ${o.text}]`);
    }
    cfg = apply(cfg, nest(o.path, o.value), o.text);
    sources.set(o.key, o.text);
  }
  cfg = trl.finish(cfg);
  // webhook shorthands
  for (const k of ['beta', 'label_smoothing'] as const) {
    if (cfg[k] !== undefined && isObj(cfg.loss)) {
      cfg = { ...cfg, loss: { ...cfg.loss, [k]: cfg[k] } };
      if (!sources.has(`loss.${k}`) && sources.has(k)) sources.set(`loss.${k}`, sources.get(k)!);
      delete cfg[k];
    }
  }
  if (!validateInput(cfg)) {
    throw configErrorFromAjv(validateInput.errors ?? [], { value: cfg, knownKeys: knownKeysAt, sourceOf: (k) => sources.get(k), describe: describeKey });
  }
  // valid as input; what makes it a TrainConfig is every key being there (tests check it against TrainConfigSchema)
  for (const k of RESOLVED_KEYS) if (!(k in cfg)) throw new ConfigError(k, 'missing after resolution (config/config.yaml must define it)');
  const c = { ...cfg, loss: resolveLossGroup(cfg.loss as LossGroup, ['loss']) } as TrainConfig;
  if (c.max_prompt_length >= c.max_length) {
    throw new ConfigError('max_prompt_length', `must be smaller than max_length (${c.max_length}), got ${c.max_prompt_length}; the completion needs room`);
  }
  if (!c.dpo.enabled && !c.sft.enabled) {
    throw new ConfigError('dpo.enabled', 'is false and so is sft.enabled: nothing would train; enable one of the stages');
  }
  if (!c.dpo.enabled && c.stage === 'online_dpo') {
    throw new ConfigError('dpo.enabled', 'is false with stage: online_dpo (the online stage is the preference stage); set dpo.enabled=true or stage=dpo');
  }
  checkOnlineDpoConfig(c);
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

/** The camelCase loss options (preferenceLoss) of a resolved config: a view of `c.loss`, nothing resolved again. */
export function lossOptions(c: Pick<TrainConfig, 'loss'>): ResolvedLossOptions {
  return lossOptionsOf(c.loss);
}

const STAGE_KEYS = Object.keys(StageSchema.properties) as Array<keyof StageSettings>;

/** The DPO stage's controls (top-level keys). */
export function dpoStage(c: TrainConfig): StageSettings {
  return Object.fromEntries(STAGE_KEYS.map((k) => [k, c[k]])) as StageSettings;
}

/** The SFT stage's controls: `sft.*` over the top-level keys. */
export function sftStage(c: TrainConfig): StageSettings {
  const { enabled: _enabled, ...s } = c.sft;
  return { ...dpoStage(c), ...s };
}

/** A problem of a request's config: JSON pointer (e.g. `/config/loss/beta`) and what is wrong there. */
export interface ConfigProblem {
  path: string;
  message: string;
}

/**
 * loadConfig on a request's (or a job payload's) `config` object, with a ConfigError turned into a problem
 * at its JSON pointer under `root`: what the API answers 400 with and the worker fails a job with.
 * @throws anything loadConfig throws other than a ConfigError (a bug, not bad input).
 */
export function resolveRequestConfig(
  config: Record<string, unknown> | undefined,
  root = '/config',
): { config: TrainConfig; problems: [] } | { config: null; problems: ConfigProblem[] } {
  try {
    return { config: loadConfig({ object: config ?? {} }), problems: [] };
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return { config: null, problems: [{ path: err.pointer(root), message: err.detail }] };
  }
}

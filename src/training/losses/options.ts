/**
 * Loss options: the names of the preference-loss family, their aliases, defaults, and the validation of a
 * `loss` config group (`config/loss/<name>.yaml` plus `loss.key=value` overrides).
 *
 * Names follow TRL (`trl/trainer/dpo_config.py`, `trl/experimental/cpo/cpo_config.py`), PaddleNLP
 * (`llm/alignment/dpo/dpo_argument.py`) and the DPO reference implementation (`config/loss/dpo.yaml`).
 * The settings and their defaults are described once, by the TypeBox schema {@link LossGroupSchema}; the
 * TypeScript types are derived from it.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Ajv, type ValidateFunction } from 'ajv';
import { ConfigError, configErrorFromAjv, parseKey, type ConfigErrorCode, type ConfigPath } from '../../config/errors.js';

/** Every canonical loss type (aliases resolve to one of these). */
export const LOSS_TYPES = [
  // TRL DPOTrainer (HEAD) loss types
  'sigmoid',
  'hinge',
  'ipo',
  'exo_pair',
  'nca_pair',
  'robust',
  'bco_pair',
  'sppo_hard',
  'aot',
  'aot_unpaired',
  'apo_zero',
  'apo_down',
  'discopop',
  'sigmoid_norm',
  'sft',
  // reference-free family (TRL CPOTrainer / ORPOTrainer)
  'simpo',
  'orpo',
  'cpo',
  // PaddleNLP
  'kto_pair',
  'dpop',
] as const;

export type LossType = (typeof LOSS_TYPES)[number];

/** Accepted alternative names: the reference's `dpo`, PaddleNLP's `or`, TRL legacy's `aot_pair`. */
export const LOSS_ALIASES: Readonly<Record<string, LossType>> = {
  dpo: 'sigmoid',
  or: 'orpo',
  aot_pair: 'aot_unpaired',
};

/** Loss types that use no reference model at all (their formula has no reference term). */
export const REFERENCE_FREE_LOSS_TYPES: readonly LossType[] = ['simpo', 'orpo', 'cpo', 'sft'];

/**
 * Loss types that depend on the reference log-ratios individually (not only through Δ), so
 * `reference_free: true` (reference log-probs set to 0) would make them meaningless: rejected with a config error.
 */
export const REFERENCE_REQUIRED_LOSS_TYPES: readonly LossType[] = [
  'nca_pair',
  'bco_pair',
  'sppo_hard',
  'aot',
  'aot_unpaired',
  'apo_zero',
  'apo_down',
  'kto_pair',
  'dpop',
];

const F_DIVERGENCES = ['reverse_kl', 'forward_kl', 'js_divergence', 'alpha_divergence'] as const;
/** f-divergence used to turn log-ratios into scores before the loss (TRL `f_divergence_type`). */
export type FDivergenceType = (typeof F_DIVERGENCES)[number];

const stringEnum = <T extends string>(values: readonly T[], opts: Record<string, unknown> = {}) =>
  Type.Unsafe<T>({ type: 'string', enum: [...values], ...opts });
const lossName = Type.String({ minLength: 1, maxLength: 64 });

/**
 * The loss group's settings with their defaults (TRL DPOConfig / CPOConfig, PaddleNLP DPOConfig): the one
 * description of a loss setting. `schemas/config.schema.json` embeds it (partial) as `loss`; the resolved
 * group ({@link ResolvedLoss}) has every key.
 */
const lossProperties = {
  name: Type.String({ minLength: 1, maxLength: 64, description: 'Loss type or alias: dpo (= sigmoid), ipo, hinge, simpo, orpo, ... (LOSS_TYPES).' }),
  loss_type: Type.Union([lossName, Type.Array(lossName, { minItems: 1, maxItems: 16 })], {
    description: "TRL's loss_type (a name or a list, combined with loss_weights: MPO); default: the group's name.",
  }),
  loss_weights: Type.Union([Type.Array(Type.Number({ minimum: 0 }), { maxItems: 16 }), Type.Null()], {
    description: 'Weights of the listed loss types (TRL loss_weights); default all 1.',
  }),
  beta: Type.Number({
    exclusiveMinimum: 0,
    default: 0.1,
    description: "β, inverse temperature of the implicit reward (TRL/reference beta, ORPO's λ, IPO's τ).",
  }),
  label_smoothing: Type.Number({
    minimum: 0,
    exclusiveMaximum: 0.5,
    default: 0,
    description: 'ε of conservative DPO / robust DPO (the fraction of flipped preference labels), in [0, 0.5).',
  }),
  reference_free: Type.Boolean({ default: false, description: "Reference log-probs taken as 0 in the loss (the reference's / TRL legacy reference_free)." }),
  ipo_normalize: Type.Boolean({ default: true, description: "IPO on per-token average scores (TRL) or on summed log-probs (the reference's)." }),
  discopop_tau: Type.Number({ exclusiveMinimum: 0, default: 0.05, description: 'DiscoPOP τ.' }),
  simpo_gamma: Type.Number({ default: 0.5, description: 'SimPO target margin γ.' }),
  cpo_alpha: Type.Number({ minimum: 0, default: 1, description: 'Weight of the chosen NLL in CPO.' }),
  dpop_lambda: Type.Number({ minimum: 0, default: 50, description: 'DPOP penalty λ.' }),
  sft_loss_ratio: Type.Number({ minimum: 0, default: 0, description: 'PaddleNLP: adds ratio · token-mean NLL of the chosen completions (TRL rpo_alpha).' }),
  pref_loss_ratio: Type.Number({ minimum: 0, default: 1, description: 'PaddleNLP: multiplies the preference term.' }),
  f_divergence_type: stringEnum(F_DIVERGENCES, { default: 'reverse_kl', description: 'TRL f_divergence_type (reverse_kl = standard DPO).' }),
  f_alpha_divergence_coef: Type.Number({ default: 0.5, description: 'TRL f_alpha_divergence_coef.' }),
};

/** A loss group as written (config/loss/<name>.yaml, `loss.key=value`, the webhook's `config.loss`): every key optional. */
export const LossGroupSchema = Type.Partial(Type.Object(lossProperties, { additionalProperties: false }), {
  description: 'The loss group (config/loss/<name>.yaml): the loss type and its hyper-parameters; unset keys take the defaults shown.',
});
export type LossGroup = Static<typeof LossGroupSchema>;

/** A resolved loss group: every key, the loss types canonical, one weight per type (valid input again). */
export const ResolvedLossSchema = Type.Object(
  {
    ...lossProperties,
    loss_type: Type.Array(stringEnum(LOSS_TYPES), { minItems: 1, maxItems: 16 }),
    loss_weights: Type.Array(Type.Number({ minimum: 0 }), { minItems: 1, maxItems: 16 }),
  },
  { additionalProperties: false },
);
export type ResolvedLoss = Static<typeof ResolvedLossSchema>;

type CamelCase<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<CamelCase<T>>}` : S;
type CamelKeys<T> = { [K in keyof T as K extends string ? CamelCase<K> : K]: T[K] };
type Hyper = Omit<ResolvedLoss, 'name' | 'loss_type' | 'loss_weights'>;

/** Options of {@link preferenceLoss} with every default filled in: the camelCase view of a {@link ResolvedLoss}. */
export type ResolvedLossOptions = CamelKeys<Hyper> & { lossTypes: LossType[]; lossWeights: number[] };

/**
 * Options of {@link preferenceLoss} as a caller writes them (camelCase names of the loss group's settings;
 * unset ones take the defaults of {@link LossGroupSchema}).
 */
export type LossOptions = Partial<CamelKeys<Omit<Hyper, 'beta'>>> & {
  /** One loss type or a list (TRL MPO: `loss = Σ_k w_k · mean(loss_k)`). Aliases are accepted. */
  lossType: LossType | string | Array<LossType | string>;
  lossWeights?: number[] | null;
  beta: number;
};

/** Defaults of the loss hyper-parameters, read from {@link LossGroupSchema} (their one definition). */
export const LOSS_DEFAULTS: Readonly<Hyper> = Object.freeze(
  Object.fromEntries(
    Object.entries(lossProperties)
      .filter(([, s]) => 'default' in s)
      .map(([k, s]) => [k, (s as { default: unknown }).default]),
  ) as Hyper,
);

/** A loss configuration error of the loss module's own API (code INVALID_LOSS_CONFIG). */
const lossError = (path: ConfigPath | string, detail: string, code: ConfigErrorCode) => new ConfigError(path, detail, code);

/**
 * Canonical name of a loss type or alias.
 * @throws ConfigError (at `where`, code INVALID_LOSS_CONFIG unless given) for an unknown name.
 */
export function canonicalLossType(name: string, where: ConfigPath | string = 'loss.loss_type', code: ConfigErrorCode = 'INVALID_LOSS_CONFIG'): LossType {
  const n = String(name).trim().toLowerCase();
  if ((LOSS_TYPES as readonly string[]).includes(n)) return n as LossType;
  const alias = Object.hasOwn(LOSS_ALIASES, n) ? LOSS_ALIASES[n] : undefined;
  if (alias) return alias;
  throw lossError(where, `unknown loss type '${name}'; use one of ${LOSS_TYPES.join(', ')} (aliases: ${Object.keys(LOSS_ALIASES).join(', ')})`, code);
}

const camel = (k: string) => k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
const snake = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The camelCase view of a resolved group (a rename: nothing is checked or defaulted again). */
export function lossOptionsOf(loss: ResolvedLoss): ResolvedLossOptions {
  const { name: _name, loss_type, loss_weights, ...hyper } = loss;
  const out: Record<string, unknown> = { lossTypes: loss_type, lossWeights: loss_weights };
  for (const [k, v] of Object.entries(hyper)) out[camel(k)] = v;
  return out as ResolvedLossOptions;
}

/**
 * Resolve a schema-valid loss group (see {@link LossGroupSchema}; the caller validated it): fill in the
 * defaults, canonicalise the loss types (`loss_type`, a name or a list, else `name`) and check what the
 * schema cannot: known loss names, one weight per type, `reference_free` only for losses that do not need
 * the reference. The one resolution of loss settings; loadConfig runs it once per config.
 * @param prefix path of the group in errors (`['loss']`).
 * @throws ConfigError (with `code`) naming the setting.
 */
export function resolveLossGroup(g: LossGroup, prefix: ConfigPath = ['loss'], code: ConfigErrorCode = 'INVALID_CONFIG'): ResolvedLoss {
  const at = (...p: Array<string | number>) => [...prefix, ...p];
  let raw: string | string[] | undefined = g.loss_type;
  let where = 'loss_type';
  if (raw === undefined) {
    raw = g.name;
    where = 'name';
  }
  if (raw === undefined) throw lossError(at('name'), `must name a loss type (one of ${LOSS_TYPES.join(', ')}), got undefined`, code);
  const list = Array.isArray(raw) ? raw : [raw];
  const lossTypes = list.map((t, i) => canonicalLossType(t, Array.isArray(raw) ? at(where, i) : at(where), code));
  const weights = g.loss_weights ?? lossTypes.map(() => 1);
  if (weights.length !== lossTypes.length) {
    throw lossError(
      at('loss_weights'),
      `needs one weight per loss type (${lossTypes.length}: ${lossTypes.join(', ')}), got ${JSON.stringify(g.loss_weights)}`,
      code,
    );
  }
  const out = { ...LOSS_DEFAULTS, ...g, name: g.name ?? lossTypes.join('+'), loss_type: lossTypes, loss_weights: weights } as ResolvedLoss;
  if (out.reference_free) {
    const bad = lossTypes.filter((t) => REFERENCE_REQUIRED_LOSS_TYPES.includes(t));
    if (bad.length > 0) {
      throw lossError(
        at('reference_free'),
        `loss type ${bad.join(', ')} needs a reference model; set reference_free=false or use a reference-free loss (simpo, orpo, cpo) or one of sigmoid, hinge, ipo, exo_pair, robust, discopop, sigmoid_norm`,
        code,
      );
    }
  }
  return out;
}

let groupValidator: ValidateFunction | null = null;

/**
 * Validate and resolve a loss group given alone (snake_case, as in `config/loss/<name>.yaml`), for callers
 * outside loadConfig (tests, the programmatic API).
 * @param cfg e.g. `{name: 'dpo', beta: 0.1, label_smoothing: 0}`
 * @throws ConfigError (code INVALID_LOSS_CONFIG) naming the setting (`loss.beta`, `loss.label_smoothing`,
 *   `loss.name`, `loss.reference_free`, an unknown `loss.betta`, ...).
 */
export function resolveLossOptions(cfg: Record<string, unknown>, opts: { prefix?: string } = {}): ResolvedLossOptions {
  const prefix = parseKey(opts.prefix ?? 'loss');
  const code = 'INVALID_LOSS_CONFIG';
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) {
    throw lossError(prefix, `must be an object with at least a name (e.g. {name: dpo, beta: 0.1}), got ${JSON.stringify(cfg)}`, code);
  }
  groupValidator ??= new Ajv({ allErrors: true, strict: true, strictNumbers: true }).compile(LossGroupSchema);
  if (!groupValidator(cfg)) {
    throw configErrorFromAjv(groupValidator.errors ?? [], { value: cfg, prefix, code, knownKeys: () => Object.keys(lossProperties) });
  }
  return lossOptionsOf(resolveLossGroup(cfg as LossGroup, prefix, code));
}

/**
 * Validate camelCase {@link LossOptions} and fill in the defaults (the same checks as a loss group).
 * @throws ConfigError (INVALID_LOSS_CONFIG) for a non-positive beta, label_smoothing outside [0, 0.5), an
 *   unknown loss type, loss_weights of the wrong length, or `reference_free` with a loss that needs the reference.
 */
export function normalizeLossOptions(o: LossOptions, prefix = 'loss'): ResolvedLossOptions {
  const { lossType, ...rest } = o;
  const g: Record<string, unknown> = { loss_type: lossType };
  for (const [k, v] of Object.entries(rest)) if (v !== undefined) g[snake(k)] = v;
  return resolveLossOptions(g, { prefix });
}

/**
 * True when the options need reference log-probs (a frozen reference model or precomputed values): some loss
 * type in the list uses the reference and `reference_free` is off.
 */
export function needsReference(o: ResolvedLossOptions): boolean {
  if (o.referenceFree) return false;
  return o.lossTypes.some((t) => !REFERENCE_FREE_LOSS_TYPES.includes(t));
}

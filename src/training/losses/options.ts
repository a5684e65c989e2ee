/**
 * Loss options: the names of the preference-loss family, their aliases, defaults, and the validation of a
 * `loss` config group (`config/loss/<name>.yaml` plus `loss.key=value` overrides).
 *
 * Names follow TRL (`trl/trainer/dpo_config.py`, `trl/experimental/cpo/cpo_config.py`), PaddleNLP
 * (`llm/alignment/dpo/dpo_argument.py`) and the DPO reference implementation (`config/loss/dpo.yaml`).
 */

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

/** f-divergence used to turn log-ratios into scores before the loss (TRL `f_divergence_type`). */
export type FDivergenceType = 'reverse_kl' | 'forward_kl' | 'js_divergence' | 'alpha_divergence';

/**
 * Options of {@link preferenceLoss}. camelCase versions of TRL's / PaddleNLP's config names.
 */
export interface LossOptions {
  /** One loss type or a list (TRL MPO: `loss = Σ_k w_k · mean(loss_k)`). Aliases are accepted. */
  lossType: LossType | string | Array<LossType | string>;
  /** Weights of the listed loss types (TRL `loss_weights`); default all 1. */
  lossWeights?: number[];
  /** β: the inverse temperature of the implicit reward (TRL/reference `beta`, ORPO's λ, IPO's τ). Default 0.1. */
  beta: number;
  /** ε (`label_smoothing`): conservative DPO for sigmoid/cpo/simpo, flip rate for robust, ε of exo_pair/aot. */
  labelSmoothing?: number;
  /** Reference log-probs taken as 0 in the loss (the reference's / TRL legacy `reference_free`). */
  referenceFree?: boolean;
  /** IPO on per-token average scores (TRL, default true) or on summed log-probs (reference implementation). */
  ipoNormalize?: boolean;
  /** DiscoPOP τ (`discopop_tau`, default 0.05). */
  discopopTau?: number;
  /** SimPO target margin γ (`simpo_gamma`, default 0.5). */
  simpoGamma?: number;
  /** Weight of the chosen NLL in CPO (`cpo_alpha`, default 1.0). */
  cpoAlpha?: number;
  /** DPOP penalty λ (`dpop_lambda`, default 50). */
  dpopLambda?: number;
  /** PaddleNLP `sft_loss_ratio`: adds ratio · token-mean NLL of the chosen completions (default 0). */
  sftLossRatio?: number;
  /** PaddleNLP `pref_loss_ratio`: multiplies the preference term (default 1). */
  prefLossRatio?: number;
  /** TRL `f_divergence_type` (default reverse_kl = standard DPO). */
  fDivergenceType?: FDivergenceType;
  /** TRL `f_alpha_divergence_coef` (default 0.5). */
  fAlphaDivergenceCoef?: number;
}

/** Options with every default filled in and the loss types canonicalised. */
export interface ResolvedLossOptions {
  lossTypes: LossType[];
  lossWeights: number[];
  beta: number;
  labelSmoothing: number;
  referenceFree: boolean;
  ipoNormalize: boolean;
  discopopTau: number;
  simpoGamma: number;
  cpoAlpha: number;
  dpopLambda: number;
  sftLossRatio: number;
  prefLossRatio: number;
  fDivergenceType: FDivergenceType;
  fAlphaDivergenceCoef: number;
}

/** Defaults (TRL DPOConfig / CPOConfig, PaddleNLP DPOConfig). */
export const LOSS_DEFAULTS = {
  beta: 0.1,
  labelSmoothing: 0,
  referenceFree: false,
  ipoNormalize: true,
  discopopTau: 0.05,
  simpoGamma: 0.5,
  cpoAlpha: 1.0,
  dpopLambda: 50,
  sftLossRatio: 0,
  prefLossRatio: 1,
  fDivergenceType: 'reverse_kl' as FDivergenceType,
  fAlphaDivergenceCoef: 0.5,
} as const;

const F_DIVERGENCES: readonly FDivergenceType[] = ['reverse_kl', 'forward_kl', 'js_divergence', 'alpha_divergence'];

/** A loss configuration error; `setting` names the offending key (e.g. `loss.beta`). */
export class LossConfigError extends Error {
  readonly code = 'INVALID_LOSS_CONFIG';
  readonly setting: string;
  constructor(setting: string, message: string) {
    super(`${setting}: ${message}`);
    this.name = 'LossConfigError';
    this.setting = setting;
  }
}

/**
 * Canonical name of a loss type or alias.
 * @throws LossConfigError (setting `where`) for an unknown name.
 */
export function canonicalLossType(name: string, where = 'loss.loss_type'): LossType {
  const n = String(name).trim().toLowerCase();
  if ((LOSS_TYPES as readonly string[]).includes(n)) return n as LossType;
  const alias = LOSS_ALIASES[n];
  if (alias) return alias;
  throw new LossConfigError(where, `unknown loss type '${name}'; use one of ${LOSS_TYPES.join(', ')} (aliases: ${Object.keys(LOSS_ALIASES).join(', ')})`);
}

function checkNumber(v: unknown, setting: string, cond: (x: number) => boolean, rule: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !cond(v)) {
    throw new LossConfigError(setting, `must be ${rule}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Validate camelCase {@link LossOptions} and fill in the defaults.
 * @param prefix used to name settings in errors (`loss` → `loss.beta`).
 * @throws LossConfigError for a non-positive beta, label_smoothing outside [0, 0.5), an unknown loss type,
 *   loss_weights of the wrong length, or `reference_free` with a loss that needs the reference.
 */
export function normalizeLossOptions(o: LossOptions, prefix = 'loss'): ResolvedLossOptions {
  const raw = Array.isArray(o.lossType) ? o.lossType : [o.lossType];
  if (raw.length === 0) throw new LossConfigError(`${prefix}.loss_type`, 'must name at least one loss type');
  const lossTypes = raw.map((t, i) => canonicalLossType(String(t), Array.isArray(o.lossType) ? `${prefix}.loss_type[${i}]` : `${prefix}.loss_type`));
  let lossWeights: number[];
  if (o.lossWeights === undefined || o.lossWeights === null) lossWeights = lossTypes.map(() => 1);
  else {
    if (!Array.isArray(o.lossWeights) || o.lossWeights.length !== lossTypes.length) {
      throw new LossConfigError(
        `${prefix}.loss_weights`,
        `needs one weight per loss type (${lossTypes.length}: ${lossTypes.join(', ')}), got ${JSON.stringify(o.lossWeights)}`,
      );
    }
    lossWeights = o.lossWeights.map((w, i) => checkNumber(w, `${prefix}.loss_weights[${i}]`, (x) => x >= 0, 'a number >= 0'));
  }
  const beta = checkNumber(o.beta ?? LOSS_DEFAULTS.beta, `${prefix}.beta`, (x) => x > 0, 'a number > 0 (e.g. 0.1)');
  const labelSmoothing = checkNumber(
    o.labelSmoothing ?? LOSS_DEFAULTS.labelSmoothing,
    `${prefix}.label_smoothing`,
    (x) => x >= 0 && x < 0.5,
    'a number in [0, 0.5) (the fraction of flipped preference labels)',
  );
  const bool = (v: unknown, d: boolean, key: string): boolean => {
    if (v === undefined || v === null) return d;
    if (typeof v !== 'boolean') throw new LossConfigError(`${prefix}.${key}`, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const referenceFree = bool(o.referenceFree, LOSS_DEFAULTS.referenceFree, 'reference_free');
  const ipoNormalize = bool(o.ipoNormalize, LOSS_DEFAULTS.ipoNormalize, 'ipo_normalize');
  const discopopTau = checkNumber(o.discopopTau ?? LOSS_DEFAULTS.discopopTau, `${prefix}.discopop_tau`, (x) => x > 0, 'a number > 0');
  const simpoGamma = checkNumber(o.simpoGamma ?? LOSS_DEFAULTS.simpoGamma, `${prefix}.simpo_gamma`, () => true, 'a number');
  const cpoAlpha = checkNumber(o.cpoAlpha ?? LOSS_DEFAULTS.cpoAlpha, `${prefix}.cpo_alpha`, (x) => x >= 0, 'a number >= 0');
  const dpopLambda = checkNumber(o.dpopLambda ?? LOSS_DEFAULTS.dpopLambda, `${prefix}.dpop_lambda`, (x) => x >= 0, 'a number >= 0');
  const sftLossRatio = checkNumber(o.sftLossRatio ?? LOSS_DEFAULTS.sftLossRatio, `${prefix}.sft_loss_ratio`, (x) => x >= 0, 'a number >= 0');
  const prefLossRatio = checkNumber(o.prefLossRatio ?? LOSS_DEFAULTS.prefLossRatio, `${prefix}.pref_loss_ratio`, (x) => x >= 0, 'a number >= 0');
  const fDivergenceType = (o.fDivergenceType ?? LOSS_DEFAULTS.fDivergenceType) as FDivergenceType;
  if (!F_DIVERGENCES.includes(fDivergenceType)) {
    throw new LossConfigError(`${prefix}.f_divergence_type`, `must be one of ${F_DIVERGENCES.join(', ')}, got ${JSON.stringify(fDivergenceType)}`);
  }
  const fAlphaDivergenceCoef = checkNumber(
    o.fAlphaDivergenceCoef ?? LOSS_DEFAULTS.fAlphaDivergenceCoef,
    `${prefix}.f_alpha_divergence_coef`,
    () => true,
    'a number',
  );
  if (referenceFree) {
    const bad = lossTypes.filter((t) => REFERENCE_REQUIRED_LOSS_TYPES.includes(t));
    if (bad.length > 0) {
      throw new LossConfigError(
        `${prefix}.reference_free`,
        `loss type ${bad.join(', ')} needs a reference model; set reference_free=false or use a reference-free loss (simpo, orpo, cpo) or one of sigmoid, hinge, ipo, exo_pair, robust, discopop, sigmoid_norm`,
      );
    }
  }
  return {
    lossTypes,
    lossWeights,
    beta,
    labelSmoothing,
    referenceFree,
    ipoNormalize,
    discopopTau,
    simpoGamma,
    cpoAlpha,
    dpopLambda,
    sftLossRatio,
    prefLossRatio,
    fDivergenceType,
    fAlphaDivergenceCoef,
  };
}

/** snake_case config keys of a loss group and the {@link LossOptions} field each one sets. */
export const LOSS_CONFIG_KEYS: Readonly<Record<string, keyof LossOptions | null>> = {
  name: null,
  loss_type: 'lossType',
  loss_weights: 'lossWeights',
  beta: 'beta',
  label_smoothing: 'labelSmoothing',
  reference_free: 'referenceFree',
  ipo_normalize: 'ipoNormalize',
  discopop_tau: 'discopopTau',
  simpo_gamma: 'simpoGamma',
  cpo_alpha: 'cpoAlpha',
  dpop_lambda: 'dpopLambda',
  sft_loss_ratio: 'sftLossRatio',
  pref_loss_ratio: 'prefLossRatio',
  f_divergence_type: 'fDivergenceType',
  f_alpha_divergence_coef: 'fAlphaDivergenceCoef',
};

/**
 * Resolve a `loss` config group (snake_case, as in `config/loss/<name>.yaml` after overrides) into validated
 * options. The loss type is `loss_type` (a name or a list, TRL) when present, otherwise `name` (the group name,
 * as the reference implementation's `loss.name`).
 * @param cfg e.g. `{name: 'dpo', beta: 0.1, label_smoothing: 0, reference_free: false}`
 * @param opts.prefix how settings are named in errors (default `loss`); `opts.allowKeys` extra keys the caller
 *   owns (e.g. reference-sync settings) that are accepted and ignored here.
 * @throws LossConfigError naming the setting (`loss.beta`, `loss.label_smoothing`, `loss.name`,
 *   `loss.reference_free`, ...) for invalid values or unknown keys.
 */
export function resolveLossOptions(cfg: Record<string, unknown>, opts: { prefix?: string; allowKeys?: readonly string[] } = {}): ResolvedLossOptions {
  const prefix = opts.prefix ?? 'loss';
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) {
    throw new LossConfigError(prefix, `must be an object with at least a name (e.g. {name: dpo, beta: 0.1}), got ${JSON.stringify(cfg)}`);
  }
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(cfg)) {
    if (!(k in LOSS_CONFIG_KEYS)) {
      if (opts.allowKeys?.includes(k)) continue;
      throw new LossConfigError(`${prefix}.${k}`, `unknown loss setting; known: ${Object.keys(LOSS_CONFIG_KEYS).join(', ')}`);
    }
    const field = LOSS_CONFIG_KEYS[k];
    if (field) o[field] = v;
  }
  let lossType = cfg.loss_type as LossOptions['lossType'] | undefined;
  let where = `${prefix}.loss_type`;
  if (lossType === undefined || lossType === null) {
    lossType = cfg.name as string | undefined;
    where = `${prefix}.name`;
  }
  if (lossType === undefined || lossType === null || (typeof lossType !== 'string' && !Array.isArray(lossType))) {
    throw new LossConfigError(where, `must name a loss type (one of ${LOSS_TYPES.join(', ')}), got ${JSON.stringify(lossType)}`);
  }
  if (typeof lossType === 'string') canonicalLossType(lossType, where);
  o.lossType = lossType;
  return normalizeLossOptions(o as unknown as LossOptions, prefix);
}

/**
 * True when the options need reference log-probs (a frozen reference model or precomputed values): some loss
 * type in the list uses the reference and `reference_free` is off.
 */
export function needsReference(o: ResolvedLossOptions): boolean {
  if (o.referenceFree) return false;
  return o.lossTypes.some((t) => !REFERENCE_FREE_LOSS_TYPES.includes(t));
}

/**
 * What a `finetune` job may hold, checked at both ends: the API before it queues a job, and the worker again
 * before it touches a file (a job can reach Redis by other paths: Bull Board, a script, a compromised
 * client of Redis). One set of rules:
 *
 * - the payload's shape (communityId, the dataset reference, config, requestedAt) — ajv, no extra keys;
 * - the config policy: keys that address the worker's file system are the service's, and `model` must be a
 *   registered name (`config/model/<name>.yaml`), looked up as an own property, never a path or a prototype
 *   key such as `constructor`;
 * - the trainer's own config resolution (src/config loadConfig: types, ranges, loss settings);
 * - the compute budget MAX_TRAIN_TOKENS.
 */
import { Ajv, type ValidateFunction } from 'ajv';
import { apiSchemas } from '../api/schemas.js';
import { TRAINING_METHODS } from './types.js';

/** One problem: JSON pointer into the request (or job payload) and what is wrong there. */
export interface Problem {
  path: string;
  message: string;
}

export const COMMUNITY_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Job ids the service makes: `ft-` + 24 random hex digits (src/queue/finetune-queue.ts newJobId). */
export const JOB_ID = /^ft-[0-9a-f]{24}$/;

/** Keys of `config` a caller may not set: they address the worker's file system or process. */
export const FORBIDDEN_CONFIG_KEYS = ['output_dir', 'datasets', 'eval_dataset', 'resume_from_checkpoint', 'progress_bar', 'backend'] as const;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

let registry: Readonly<Record<string, true>> | null = null;

/** Registered model names (config/model/*.yaml), as a null-prototype record: look names up with Object.hasOwn. */
export async function modelRegistry(): Promise<Readonly<Record<string, true>>> {
  if (!registry) {
    const mod = await import('../config/index.js');
    const r = Object.create(null) as Record<string, true>;
    for (const name of mod.listGroup('model')) r[name] = true;
    registry = Object.freeze(r);
  }
  return registry;
}

/**
 * Problems of `config` that its schema cannot express: file-system keys are the service's, and the model
 * (and its tokenizer) must be registered names.
 * @param models the registry from {@link modelRegistry}
 */
export function configPolicyProblems(config: Obj | undefined, models: Readonly<Record<string, true>>): Problem[] {
  if (config === undefined) return [];
  if (!isObj(config)) return [{ path: '/config', message: 'must be an object of settings' }];
  const out: Problem[] = [];
  for (const k of FORBIDDEN_CONFIG_KEYS) {
    if (Object.hasOwn(config, k)) out.push({ path: `/config/${k}`, message: 'is set by the service and cannot be sent in a request' });
  }
  const names = Object.keys(models).join(', ');
  const registered = (v: unknown): boolean => typeof v === 'string' && Object.hasOwn(models, v);
  const model = config.model;
  if (model !== undefined) {
    if (typeof model === 'string') {
      if (!registered(model)) out.push({ path: '/config/model', message: `must be a registered model name (one of: ${names})` });
    } else if (isObj(model)) {
      if (model.name_or_path !== undefined && !registered(model.name_or_path)) {
        out.push({ path: '/config/model/name_or_path', message: `must be a registered model name (one of: ${names})` });
      }
      const tok = model.tokenizer_name_or_path;
      if (tok !== undefined && tok !== null && !registered(tok)) {
        out.push({ path: '/config/model/tokenizer_name_or_path', message: `must be null (the model's own tokenizer) or a registered name (one of: ${names})` });
      }
    }
  }
  out.push(...judgePolicyProblems(config, '/config'));
  return out;
}

const looksLikePath = (v: unknown): boolean => typeof v === 'string' && (/[/\\]/.test(v) || v.startsWith('.') || v.startsWith('~'));

/**
 * The HTTP judges a job may call (online DPO `online_dpo.judge.url`): the operator's comma-separated list
 * `DPO_JUDGE_URLS`; none by default, so neither a request nor a job found in Redis can point the worker at
 * an arbitrary address.
 */
export function allowedJudgeUrls(env: Record<string, string | undefined> = process.env): string[] {
  return (env.DPO_JUDGE_URLS ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '');
}

/**
 * Problems of an online DPO judge (`config.online_dpo.judge`, given or resolved): rule files and reward
 * models are registered names (config/judge/<name>.yaml), not paths; an http judge's url must be one the
 * operator allows ({@link allowedJudgeUrls}).
 */
export function judgePolicyProblems(config: Obj, root: string, allowedUrls: string[] = allowedJudgeUrls()): Problem[] {
  const od = config.online_dpo;
  const judge = isObj(od) ? od.judge : undefined;
  if (!isObj(judge)) return [];
  const out: Problem[] = [];
  for (const k of ['file', 'name_or_path']) {
    if (looksLikePath(judge[k])) out.push({ path: `${root}/online_dpo/judge/${k}`, message: 'must be a registered name, not a path' });
  }
  if (judge.type === 'http' && !(typeof judge.url === 'string' && allowedUrls.includes(judge.url))) {
    out.push({ path: `${root}/online_dpo/judge/url`, message: 'is not an http judge this service allows (the operator lists them in DPO_JUDGE_URLS)' });
  }
  return out;
}

/** The parts of a resolved training config the budget needs (src/config TrainConfig). */
export interface BudgetConfig {
  n_epochs: number | null;
  max_steps: number | null;
  n_examples: number | null;
  batch_size: number;
  gradient_accumulation_steps: number;
  max_length: number;
  sft: {
    enabled?: boolean;
    n_epochs?: number | null;
    max_steps?: number | null;
    n_examples?: number | null;
    batch_size?: number;
    gradient_accumulation_steps?: number;
  };
}

/**
 * Upper bound of the tokens a run trains on: per stage, examples seen x sequences per example x max_length,
 * where examples seen = min(rows x n_epochs, n_examples, max_steps x batch_size x gradient_accumulation_steps);
 * SFT has one sequence (prompt + chosen) per example, DPO two (prompt + chosen, prompt + rejected).
 * @returns tokens per stage and their sum (a count of tokens, not bytes).
 */
export function trainTokenBudget(cfg: BudgetConfig, rows: number): { sft: number; dpo: number; total: number } {
  const stage = (s: Partial<BudgetConfig>, sequences: number): number => {
    const epochs = s.n_epochs === undefined ? cfg.n_epochs : s.n_epochs;
    // no epoch limit: only n_examples / max_steps bound the stage (none at all: unbounded, over any budget)
    let examples = epochs === null ? Number.POSITIVE_INFINITY : rows * epochs;
    const nEx = s.n_examples === undefined ? cfg.n_examples : s.n_examples;
    if (typeof nEx === 'number') examples = Math.min(examples, nEx);
    const steps = s.max_steps === undefined ? cfg.max_steps : s.max_steps;
    if (typeof steps === 'number')
      examples = Math.min(examples, steps * (s.batch_size ?? cfg.batch_size) * (s.gradient_accumulation_steps ?? cfg.gradient_accumulation_steps));
    return examples * sequences * cfg.max_length;
  };
  const sft = cfg.sft?.enabled === false ? 0 : stage(cfg.sft ?? {}, 1);
  const dpo = stage(cfg, 2);
  return { sft, dpo, total: sft + dpo };
}

/** The budget problem of a run over `maxTokens` (0 = no budget), or none. */
export function budgetProblems(cfg: BudgetConfig, rows: number, maxTokens: number): Problem[] {
  if (maxTokens <= 0) return [];
  const b = trainTokenBudget(cfg, rows);
  if (b.total <= maxTokens) return [];
  return [
    {
      path: '/config',
      message: `the run would train on up to ${b.total} tokens (SFT ${b.sft} + DPO ${b.dpo}: rows x epochs x sequences x max_length), over MAX_TRAIN_TOKENS=${maxTokens}; send fewer rows, epochs or max_steps`,
    },
  ];
}

/**
 * Problems of a *resolved* config (the job payload's, src/config TrainConfig) under the same policy: the
 * file-system settings are unset (the service sets them), and the model and tokenizer are registered names or
 * sources a registered model file declares (`sources`, {@link modelSourceRegistry}: a model file may point at a
 * checkpoint directory by path; problems list the names only, never those paths).
 */
export function resolvedConfigProblems(
  cfg: Obj,
  models: Readonly<Record<string, true>>,
  root = '/data/config',
  sources: Readonly<Record<string, true>> = Object.create(null),
): Problem[] {
  const out: Problem[] = [];
  for (const k of ['output_dir', 'eval_dataset', 'resume_from_checkpoint'] as const) {
    if (cfg[k] !== null && cfg[k] !== undefined) out.push({ path: `${root}/${k}`, message: 'must be null: it is set by the service' });
  }
  const names = Object.keys(models).join(', ');
  const model = cfg.model as Obj | undefined;
  // a registered name, or a source a registered model file declares (the messages list names only)
  const registered = (v: unknown): boolean => typeof v === 'string' && (Object.hasOwn(models, v) || Object.hasOwn(sources, v));
  if (!isObj(model) || !registered(model.name_or_path))
    out.push({ path: `${root}/model/name_or_path`, message: `must be a registered model name (one of: ${names})` });
  else if (model.tokenizer_name_or_path !== null && model.tokenizer_name_or_path !== undefined && !registered(model.tokenizer_name_or_path)) {
    out.push({ path: `${root}/model/tokenizer_name_or_path`, message: `must be null or a registered name (one of: ${names})` });
  }
  out.push(...judgePolicyProblems(cfg, root));
  return out;
}

let sourcesRegistry: Readonly<Record<string, true>> | null = null;

/** {@link registeredModelSources} of the config directory as a lookup (read once per process). */
export async function modelSourceRegistry(): Promise<Readonly<Record<string, true>>> {
  if (!sourcesRegistry) {
    const mod = await import('../config/index.js');
    const r = Object.create(null) as Record<string, true>;
    for (const v of mod.registeredModelSources()) r[v] = true;
    sourcesRegistry = Object.freeze(r);
  }
  return sourcesRegistry;
}

let payloadValidator: ValidateFunction | null = null;
let rowsValidator: ValidateFunction | null = null;

function ajv(): Ajv {
  return new Ajv({ allErrors: true, coerceTypes: false, useDefaults: false, strict: false });
}

/** JSON Schema of a job payload as stored in Redis (FinetunePayload). */
export function payloadSchema(): Obj {
  return {
    type: 'object',
    additionalProperties: false,
    required: ['communityId', 'dataset', 'config', 'requestHash', 'requestedAt'],
    properties: {
      communityId: { type: 'string', pattern: COMMUNITY_ID.source },
      dataset: {
        type: 'object',
        additionalProperties: false,
        required: ['datasetId', 'sha256', 'rows'],
        properties: {
          datasetId: { type: 'string', pattern: '^ds-[0-9a-f]{64}$' },
          sha256: { type: 'string', pattern: '^[0-9a-f]{64}$' },
          rows: { type: 'integer', minimum: 1, maximum: 100_000_000 },
        },
      },
      // the resolved TrainConfig: checked by resolveRequestConfig (the trainer's own resolution) after this
      config: { type: 'object' },
      requestHash: { type: 'string', pattern: '^[0-9a-f]{64}$' },
      requestedAt: { type: 'string', maxLength: 64 },
      // request fields (issue 15), as the API checked them; the callback target is checked again at delivery
      suffix: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
      method: { type: 'string', enum: [...TRAINING_METHODS] },
      datasetId: { type: 'string', pattern: '^ds-[0-9a-f]{64}$' },
      evalDatasetId: { type: 'string', pattern: '^ds-[0-9a-f]{64}$' },
      callbackUrl: { type: 'string', maxLength: 2048, pattern: '^https?://' },
    },
  };
}

/** Schema problems of a job payload (paths under `/data`), empty when it has the right shape. */
export function payloadShapeProblems(data: unknown): Problem[] {
  payloadValidator ??= ajv().compile(payloadSchema());
  if (payloadValidator(data)) return [];
  return (payloadValidator.errors ?? []).slice(0, 20).map((e) => ({
    path: `/data${e.instancePath}${e.keyword === 'additionalProperties' ? `/${String((e.params as { additionalProperty?: string }).additionalProperty)}` : ''}${e.keyword === 'required' ? `/${String((e.params as { missingProperty?: string }).missingProperty)}` : ''}`,
    message: e.message ?? 'is invalid',
  }));
}

/** Schema problems of dataset rows (the request schema's `dataset`: each row {prompt, chosen, rejected} strings). */
export function rowShapeProblems(rows: unknown): Problem[] {
  if (!rowsValidator) {
    const props = (apiSchemas().triggerRequest.properties ?? {}) as Obj;
    const items = (props.dataset as Obj).items;
    rowsValidator = ajv().compile({ type: 'array', minItems: 1, items });
  }
  if (rowsValidator(rows)) return [];
  return (rowsValidator.errors ?? []).slice(0, 20).map((e) => ({ path: `/dataset${e.instancePath}`, message: e.message ?? 'is invalid' }));
}

/**
 * The settings of the online DPO stage (`stage: online_dpo`), as TypeBox schemas that src/config/schema.ts
 * places under the `online_dpo` key (the loss settings are imported there the same way). Names are TRL's
 * OnlineDPOConfig / transformers GenerationConfig names where they have one (`temperature`, `top_p`,
 * `max_new_tokens`, `missing_eos_penalty`, `beta`), MindSpeed-LLM's otherwise (`num_samples_per_step`).
 */
import { Type, type Static } from '@sinclair/typebox';
import { ConfigError } from '../../config/errors.js';

const weight = Type.Number({ description: 'Added to the score per hit (negative: a penalty).' });

const KeywordsRule = Type.Object(
  {
    type: Type.Literal('keywords'),
    words: Type.Array(Type.String({ minLength: 1, maxLength: 200 }), { minItems: 1, maxItems: 1000 }),
    weight,
    count: Type.Optional(
      Type.Union([Type.Literal('occurrences'), Type.Literal('presence')], {
        description: 'occurrences (default): weight per whole-word, case-insensitive occurrence; presence: weight once per word present.',
      }),
    ),
  },
  { additionalProperties: false },
);
const RegexRule = Type.Object(
  {
    type: Type.Literal('regex'),
    pattern: Type.String({ minLength: 1, maxLength: 1000, description: 'A JavaScript regular expression, matched against the completion.' }),
    flags: Type.Optional(Type.String({ pattern: '^[imsu]*$', maxLength: 4 })),
    weight,
    count: Type.Optional(
      Type.Union([Type.Literal('occurrences'), Type.Literal('presence')], { description: 'presence (default): weight once when it matches.' }),
    ),
  },
  { additionalProperties: false },
);
const LengthRule = Type.Object(
  {
    type: Type.Literal('length'),
    unit: Type.Optional(Type.Union([Type.Literal('words'), Type.Literal('chars')], { description: 'default words' })),
    min: Type.Optional(Type.Integer({ minimum: 0 })),
    max: Type.Optional(Type.Integer({ minimum: 0 })),
    weight: Type.Number({ minimum: 0, description: 'Subtracted per unit the completion is shorter than min or longer than max.' }),
  },
  { additionalProperties: false },
);
export const JudgeRuleSchema = Type.Union([KeywordsRule, RegexRule, LengthRule]);
export type JudgeRule = Static<typeof JudgeRuleSchema>;
export const JudgeRulesSchema = Type.Array(JudgeRuleSchema, { minItems: 1, maxItems: 200 });

export const RuleJudgeSchema = Type.Object(
  {
    type: Type.Literal('rule'),
    rules: Type.Optional(JudgeRulesSchema),
    file: Type.Optional(Type.String({ minLength: 1, maxLength: 1000, description: 'A YAML file with `rules: [...]`, or a name of config/judge/<name>.yaml.' })),
  },
  { additionalProperties: false, description: 'Score = the sum of the rules over the completion text (rules inline or from a YAML file).' },
);
export const RewardModelJudgeSchema = Type.Object(
  {
    type: Type.Literal('reward_model'),
    name_or_path: Type.String({
      minLength: 1,
      maxLength: 1000,
      description: 'A Hugging Face *ForSequenceClassification directory (Llama, Qwen2, GPT-2 with a `score` head, num_labels 1).',
    }),
    batch_size: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024 })),
  },
  { additionalProperties: false },
);
export const HttpJudgeSchema = Type.Object(
  {
    type: Type.Literal('http'),
    url: Type.String({ minLength: 1, maxLength: 2000, pattern: '^https?://', description: 'POSTed {items: [{prompt, completions}]}; answers {scores}.' }),
    timeout_ms: Type.Optional(Type.Integer({ minimum: 1, maximum: 600000, description: 'Per attempt (default 10000).' })),
    retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 10, description: 'Retries after a network error, timeout, 429 or 5xx (default 2).' })),
    secret_env: Type.Optional(
      Type.Union([Type.String({ pattern: '^[A-Z_][A-Z0-9_]*$', maxLength: 100 }), Type.Null()], {
        description:
          'Environment variable holding the Standard Webhooks secret (whsec_...) the request is signed with (default DPO_JUDGE_SECRET; null: unsigned).',
      }),
    ),
  },
  { additionalProperties: false },
);
export const JudgeSchema = Type.Union([RuleJudgeSchema, RewardModelJudgeSchema, HttpJudgeSchema], {
  description: 'Scores the sampled completions: rule, reward_model or http.',
});
export type JudgeSettings = Static<typeof JudgeSchema>;
export type RuleJudgeSettings = Static<typeof RuleJudgeSchema>;
export type RewardModelJudgeSettings = Static<typeof RewardModelJudgeSchema>;
export type HttpJudgeSettings = Static<typeof HttpJudgeSchema>;

const onlineProperties = {
  num_samples_per_step: Type.Integer({ minimum: 2, maximum: 64, description: 'Completions sampled per prompt; the best and worst form the pair.' }),
  do_sample: Type.Boolean({ description: 'false: greedy decoding (all samples equal: only useful for tests).' }),
  temperature: Type.Number({ exclusiveMinimum: 0, maximum: 100 }),
  top_p: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
  top_k: Type.Integer({ minimum: 0, description: '0: no top-k filter.' }),
  max_new_tokens: Type.Integer({ minimum: 1, maximum: 65536 }),
  missing_eos_penalty: Type.Union([Type.Number({ minimum: 0 }), Type.Null()], {
    description: 'Subtracted from the score of a completion that did not end with EOS (TRL); null: none.',
  }),
  beta: Type.Union([Type.Number({ exclusiveMinimum: 0 }), Type.Array(Type.Number({ exclusiveMinimum: 0 }), { minItems: 1, maxItems: 1000 }), Type.Null()], {
    description: 'DPO beta; a list gives the beta of each epoch, the last one for the later epochs (TRL). null: loss.beta.',
  }),
  judge: Type.Union([JudgeSchema, Type.Null()], { description: 'The judge (required when stage is online_dpo).' }),
};

/** The resolved `online_dpo` settings (every key present; defaults in config/config.yaml). */
export const OnlineDpoSchema = Type.Object(onlineProperties, { additionalProperties: false });
export type OnlineDpoSettings = Static<typeof OnlineDpoSchema>;

/** A config layer's `online_dpo` (every key optional). */
export const OnlineDpoInputSchema = Type.Partial(OnlineDpoSchema, { additionalProperties: false });

/** The training methods (`stage`): offline DPO on pairs, or online DPO on prompts with a judge. */
export const TRAINING_STAGES = ['dpo', 'online_dpo'] as const;
export type TrainingStage = (typeof TRAINING_STAGES)[number];

/**
 * The beta of `epoch` (0-based): the number, or the epoch's entry of the list, the last entry after it (TRL
 * OnlineDPOTrainer `beta` list semantics); `fallback` (loss.beta) when unset.
 */
export function betaForEpoch(beta: OnlineDpoSettings['beta'], epoch: number, fallback: number): number {
  if (beta === null) return fallback;
  if (typeof beta === 'number') return beta;
  return beta[Math.min(Math.max(0, epoch), beta.length - 1)]!;
}

/**
 * The cross-key rules of `stage: online_dpo` that the schema cannot express (loadConfig runs it).
 * @throws ConfigError naming the setting: no `online_dpo.judge`; a loss other than sigmoid or ipo;
 *   `precompute_ref_log_probs` (the completions are new at every step)
 */
export function checkOnlineDpoConfig(c: {
  stage: TrainingStage;
  online_dpo: OnlineDpoSettings;
  loss: { loss_type: readonly string[] | string };
  precompute_ref_log_probs: boolean;
}): void {
  if (c.stage !== 'online_dpo') return;
  if (c.online_dpo.judge === null) {
    throw new ConfigError(
      'online_dpo.judge',
      'stage online_dpo needs a judge: {type: rule, rules: [...]}, {type: reward_model, name_or_path} or {type: http, url}',
    );
  }
  const types = Array.isArray(c.loss.loss_type) ? c.loss.loss_type : [c.loss.loss_type];
  if (types.length !== 1 || (types[0] !== 'sigmoid' && types[0] !== 'ipo')) {
    throw new ConfigError('loss.loss_type', `online_dpo trains with the sigmoid or ipo loss, got ${types.join(', ')}; use loss=dpo or loss=ipo`);
  }
  if (c.precompute_ref_log_probs) {
    throw new ConfigError('precompute_ref_log_probs', 'cannot be used with stage online_dpo (the completions are sampled anew at every step)');
  }
}

/**
 * The POST /trigger-finetune body, written once with TypeBox: `schemas/trigger-finetune.request.json` is
 * generated from it (`npm run schemas`, checked by tests/unit/config-schema.test.ts) and the route's body type
 * is derived from it, so the two cannot drift. `config` refers to the training config schema by `$id`.
 */
import { Type, type Static } from '@sinclair/typebox';
import { SCHEMA_ID as CONFIG_SCHEMA_ID, type ConfigInput } from '../config/schema.js';
import { TRAINING_METHODS } from '../queue/types.js';

const communityPattern = '^[A-Za-z0-9_-]{1,64}$';
const datasetIdPattern = '^ds-[a-f0-9]{64}$';

/** One preference pair of a request. */
export const PreferenceRowSchema = Type.Object(
  { prompt: Type.String({ minLength: 1 }), chosen: Type.String({ minLength: 1 }), rejected: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);

/** One prompt of `method: online_dpo`, optionally with an SFT target. */
export const PromptRowSchema = Type.Object(
  { prompt: Type.String({ minLength: 1 }), chosen: Type.Optional(Type.String({ minLength: 1 })) },
  { additionalProperties: false },
);

export const TriggerRequestSchema = Type.Object(
  {
    communityId: Type.String({ pattern: communityPattern, description: 'Owner of the job; 1-64 of A-Z a-z 0-9 _ - (it becomes part of storage paths).' }),
    dataset: Type.Optional(
      Type.Array(Type.Union([PreferenceRowSchema, PromptRowSchema]), {
        minItems: 1,
        maxItems: 100000,
        description:
          'Preference pairs: the prompt, the preferred completion and the dispreferred one; for method online_dpo, prompts ({prompt}, optionally chosen: an SFT target).',
      }),
    ),
    datasetId: Type.Optional(
      Type.String({
        pattern: datasetIdPattern,
        description: 'An uploaded dataset (POST /datasets) to train on instead of inline rows (send dataset or datasetId).',
      }),
    ),
    evalDatasetId: Type.Optional(
      Type.String({ pattern: datasetIdPattern, description: 'An uploaded dataset to evaluate on instead of a split of the training data.' }),
    ),
    suffix: Type.Optional(Type.String({ pattern: communityPattern, description: "1-64 of A-Z a-z 0-9 _ -: part of the artifact's name (<suffix>-<jobId>)." })),
    method: Type.Optional(
      Type.Unsafe<(typeof TRAINING_METHODS)[number]>({
        type: 'string',
        enum: [...TRAINING_METHODS],
        description:
          'Which stages run: SFT then DPO (default), DPO only, SFT only, or online_dpo (SFT, then online DPO: the policy samples completions of each prompt, config.online_dpo.judge ranks them).',
      }),
    ),
    callbackUrl: Type.Optional(
      Type.String({
        maxLength: 2048,
        description: "https URL that receives job.succeeded, job.failed and job.cancelled, signed (Standard Webhooks) with the community's secret.",
      }),
    ),
    config: Type.Optional(
      Type.Unsafe<ConfigInput>({
        $ref: CONFIG_SCHEMA_ID,
        description: "Training overrides (model, loss, beta, n_epochs, TRL's names, ...), validated by the same schema as config/config.yaml.",
      }),
    ),
  },
  {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: 'https://dpo-service.local/schemas/trigger-finetune.request.json',
    title: 'TriggerFinetuneRequest',
    description:
      "POST /trigger-finetune body: a community's preference pairs and optional training overrides. SFT runs on prompt + chosen, then DPO on (prompt, chosen, rejected). Generated from src/api/request-schema.ts (npm run schemas).",
    additionalProperties: false,
  },
);
/** The request body as the route sees it (after schema validation). */
export type TriggerRequest = Static<typeof TriggerRequestSchema>;

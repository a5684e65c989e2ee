/**
 * The dry-run plan of a trigger request (`POST /trigger-finetune?dryRun=true`): what the job would do,
 * computed with the trainer's own pieces and without queueing anything.
 *
 * - data: the worker's data phase (src/training/pipeline/data.ts prepareData: load, eval split, tokenise
 *   with the model's tokenizer), so the counts (train / eval pairs, dropped, truncated) are the ones the
 *   job will see;
 * - steps per stage: the trainer's stagePlan (batch_size x gradient_accumulation_steps per step, the
 *   least of n_epochs / n_examples / max_steps);
 * - tokens per stage: steps x pairs per step x the mean tokens per pair (SFT: prompt + SFT target; DPO:
 *   prompt + chosen and prompt + rejected, both through the policy);
 * - duration: tokens / the tokens/s last measured on this service for that stage (`dpo_training_tokens_per_second`,
 *   src/queue/stats.ts), null until a job has finished;
 * - memory: the engine's estimate (src/training/plan/memory.ts: weights, gradients, optimizer, reference,
 *   activations, runtime) against the memory of the API host (`fits`; the worker's host decides for real:
 *   a job that cannot fit fails there with INSUFFICIENT_MEMORY), with the engine's suggestions when not.
 * Runs in the API process (tokenisation of a large dataset takes a while: the request waits for it).
 */
import pino from 'pino';
import type { Redis } from 'ioredis';
import { dpoStage, sftStage, type TrainConfig } from '../config/index.js';
import { repoRoot } from '../config/paths.js';
import { statsKey } from '../queue/stats.js';
import type { TrainingMethod } from '../queue/types.js';
import type { OnlinePreparedData } from '../training/online/data.js';
import type { DatasetRow, PreferenceExample, Tokenizer } from '../training/types.js';

export interface StagePlan {
  stage: 'sft' | 'dpo';
  steps: number;
  /** Pairs per optimizer step (batch_size x gradient_accumulation_steps). */
  pairsPerStep: number;
  epochs: number;
  tokens: number;
  /** Seconds at the last measured tokens/s of this stage, or null. */
  estimatedSeconds: number | null;
}

export interface DryRunPlan {
  dryRun: true;
  communityId: string;
  method: TrainingMethod;
  model: string;
  data: { examples: number; train: number; eval: number; dropped: number; truncated: number; prompts?: { train: number; eval: number } };
  stages: StagePlan[];
  tokens: number;
  estimatedSeconds: number | null;
  memory: Record<string, unknown> & { totalBytes: number; fits: boolean };
  notes: string[];
}

export const dryRunPlanSchema = {
  $id: 'DryRunPlan',
  title: 'DryRunPlan',
  type: 'object',
  required: ['dryRun', 'communityId', 'method', 'model', 'data', 'stages', 'tokens', 'estimatedSeconds', 'memory', 'notes'],
  properties: {
    dryRun: { type: 'boolean', enum: [true] },
    communityId: { type: 'string' },
    method: { type: 'string', enum: ['sft+dpo', 'dpo', 'sft', 'online_dpo'] },
    model: { type: 'string' },
    data: {
      type: 'object',
      required: ['examples', 'train', 'eval', 'dropped', 'truncated'],
      properties: {
        examples: { type: 'integer' },
        train: { type: 'integer' },
        eval: { type: 'integer' },
        dropped: { type: 'integer', description: 'pairs whose prompt alone fills max_length' },
        truncated: { type: 'integer' },
        prompts: {
          type: 'object',
          description: 'online_dpo: the train / eval prompts (train, eval above count the SFT pairs of the rows with a chosen)',
          required: ['train', 'eval'],
          properties: { train: { type: 'integer' }, eval: { type: 'integer' } },
        },
      },
    },
    stages: {
      type: 'array',
      items: {
        type: 'object',
        required: ['stage', 'steps', 'pairsPerStep', 'epochs', 'tokens', 'estimatedSeconds'],
        properties: {
          stage: { type: 'string', enum: ['sft', 'dpo'] },
          steps: { type: 'integer' },
          pairsPerStep: { type: 'integer' },
          epochs: { type: 'number' },
          tokens: { type: 'integer' },
          estimatedSeconds: { type: ['number', 'null'] },
        },
      },
    },
    tokens: { type: 'integer', description: 'tokens through the policy, all stages' },
    estimatedSeconds: { type: ['number', 'null'], description: 'training time at the last measured tokens/s; null before any job finished' },
    memory: {
      type: 'object',
      additionalProperties: true,
      description: "the engine's peak-memory estimate by part (bytes), the API host's available bytes and whether it fits",
    },
    notes: { type: 'array', items: { type: 'string' } },
  },
} as const;

const tokenizers = new Map<string, Promise<Tokenizer>>();

/** The tokenizer a config trains with, without loading the weights (cached per name). */
export async function tokenizerOf(cfg: TrainConfig): Promise<Tokenizer> {
  const key = cfg.model.tokenizer_name_or_path ?? cfg.model.name_or_path;
  let t = tokenizers.get(key);
  if (!t) {
    t = (async () => {
      const { loadTokenizer } = await import('../training/tokenizers/index.js');
      const { BUILTIN_MODELS } = await import('../training/models/index.js');
      if (cfg.model.tokenizer_name_or_path) return loadTokenizer(cfg.model.tokenizer_name_or_path);
      const builtin = Object.hasOwn(BUILTIN_MODELS, cfg.model.name_or_path) ? BUILTIN_MODELS[cfg.model.name_or_path] : undefined;
      const { join } = await import('node:path');
      return loadTokenizer(builtin ? join(repoRoot(), builtin.tokenizer) : cfg.model.name_or_path);
    })();
    tokenizers.set(key, t);
    t.catch(() => tokenizers.delete(key));
  }
  return t;
}

/**
 * Plan a job.
 * @param dataset inline rows (preference rows; prompt rows for `stage: online_dpo`), or the local path of an
 *   uploaded dataset file
 * @param evalDataset the rows of an uploaded eval dataset, if any (given to the data phase as a file)
 * @throws DataError / ConfigError (`max_length`: nothing fits) from the data phase; TokenizerError
 */
export async function planJob(opts: {
  communityId: string;
  method: TrainingMethod;
  config: TrainConfig;
  dataset: DatasetRow[] | string;
  evalDataset?: PreferenceExample[];
  redis: Redis;
  prefix: string;
}): Promise<DryRunPlan> {
  let evalFile: string | null = null;
  if (opts.evalDataset) {
    const { writeFile } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    evalFile = join(tmpdir(), `dpo-plan-eval-${process.pid}-${Date.now()}.json`);
    await writeFile(evalFile, JSON.stringify(opts.evalDataset));
  }
  try {
    return await planWith(opts, evalFile ? { ...opts.config, eval_dataset: evalFile } : opts.config);
  } finally {
    if (evalFile) await import('node:fs/promises').then((m) => m.rm(evalFile!, { force: true }));
  }
}

async function planWith(opts: Parameters<typeof planJob>[0], cfg: TrainConfig): Promise<DryRunPlan> {
  const { modelShape } = await import('../training/plan/dry-run.js');
  const { InsufficientMemoryError, availableMemory, checkMemory, estimateMemory, formatEstimate } = await import('../training/plan/memory.js');
  const { needsReference } = await import('../training/losses/index.js');
  const { lossOptions } = await import('../config/index.js');
  // a llama2.c / built-in model is loaded to learn its shape (small by nature): tfjs needs a backend for that;
  // Hugging Face directories are read from config.json without weights
  const { initBackend } = await import('../training/engine/backend.js');
  await initBackend('cpu');
  const { config: modelConfig, tokenizer } = await modelShape(cfg.model.name_or_path, cfg.model.tokenizer_name_or_path ?? null);
  const { prepareData } = await import('../training/pipeline/data.js');
  const { stagePlan } = await import('../training/trainer/stage.js');
  const silent = pino({ level: 'silent' });
  const online = cfg.stage === 'online_dpo';
  const data = online
    ? await (await import('../training/online/data.js')).prepareOnlineData(cfg, tokenizer, silent, opts.dataset)
    : await prepareData(cfg, tokenizer, silent, opts.dataset as PreferenceExample[] | string);
  const n = data.train.length;
  let sftTokens = 0;
  let dpoTokens = 0;
  for (const p of data.train) {
    sftTokens += p.promptIds.length + p.sftIds.length;
    dpoTokens += 2 * p.promptIds.length + p.chosenIds.length + p.rejectedIds.length;
  }
  const prompts = online ? (data as OnlinePreparedData).prompts : null;
  const tps = await opts.redis.hmget(statsKey(opts.prefix), 'tps:sft', 'tps:dpo').catch(() => [null, null]);
  const stages: StagePlan[] = [];
  const add = (stage: 'sft' | 'dpo', settings: ReturnType<typeof sftStage>, perPair: number, measured: string | null | undefined, units = n): void => {
    const sp = stagePlan(units, settings);
    const tokens = Math.round(sp.totalSteps * Math.min(sp.perStep, units) * perPair);
    const rate = measured ? Number(measured) : Number.NaN;
    stages.push({
      stage,
      steps: sp.totalSteps,
      pairsPerStep: sp.perStep,
      epochs: Number((sp.totalSteps / sp.stepsPerEpoch).toFixed(4)),
      tokens,
      estimatedSeconds: Number.isFinite(rate) && rate > 0 ? Number((tokens / rate).toFixed(1)) : null,
    });
  };
  const notes: string[] = [];
  // runTraining skips SFT when no row has an SFT target (online DPO from bare prompts)
  if (cfg.sft.enabled && n > 0) add('sft', sftStage(cfg), sftTokens / n, tps[0]);
  if (prompts) {
    // online DPO (src/training/online/task.ts): a step takes batch_size x gradient_accumulation_steps prompts,
    // samples num_samples_per_step completions of each (at most max_new_tokens, within max_length), and the
    // policy scores the judged best and worst: 2 x (prompt + completion) tokens per prompt, counted at the
    // longest completion (an upper bound: sampling stops at EOS)
    const o = cfg.online_dpo;
    const completion = (p: { ids: number[] }) => Math.max(1, Math.min(o.max_new_tokens, cfg.max_length - p.ids.length));
    const m = prompts.train.length;
    let perPrompt = 0;
    let generated = 0;
    for (const p of prompts.train) {
      perPrompt += 2 * (p.ids.length + completion(p));
      generated += o.num_samples_per_step * completion(p);
    }
    if (m > 0) {
      add('dpo', dpoStage(cfg), perPrompt / m, tps[1], m);
      const st = stages.at(-1)!;
      const gen = Math.round(st.steps * Math.min(st.pairsPerStep, m) * (generated / m));
      notes.push(
        `online_dpo: ${m} train prompts, ${o.num_samples_per_step} completions of at most ${o.max_new_tokens} new tokens sampled per prompt and step (up to ${gen} generated tokens); DPO tokens count the longest completions (an upper bound), and generation time is not in estimatedSeconds`,
      );
    }
    if (n === 0 && cfg.sft.enabled) notes.push('no row has an SFT target (chosen / completion): the SFT stage is skipped');
  } else if (cfg.dpo.enabled) add('dpo', dpoStage(cfg), dpoTokens / n, tps[1]);
  const ref = cfg.dpo.enabled && needsReference(lossOptions(cfg));
  const est = estimateMemory(modelConfig, cfg, ref);
  const available = availableMemory();
  let fits = true;
  try {
    checkMemory(modelConfig, cfg, { needsReference: ref, available });
  } catch (err) {
    if (!(err instanceof InsufficientMemoryError)) throw err;
    fits = false;
    notes.push(`INSUFFICIENT_MEMORY on the API host: ${err.message}`);
  }
  const memory = { ...est, availableBytes: available, fits, summary: formatEstimate(est, available) };
  const known = stages.every((s) => s.estimatedSeconds !== null);
  if (!known) notes.push('no job has finished on this service yet: durations need a measured tokens/s');
  return {
    dryRun: true,
    communityId: opts.communityId,
    method: opts.method,
    model: cfg.model.name_or_path,
    data: {
      examples: data.stats.examples,
      train: data.stats.train_pairs,
      eval: data.stats.eval_pairs,
      dropped: data.stats.dropped,
      truncated: data.stats.truncated,
      ...(prompts ? { prompts: { train: prompts.train.length, eval: prompts.eval.length } } : {}),
    },
    stages,
    tokens: stages.reduce((a, s) => a + s.tokens, 0),
    estimatedSeconds: known ? Number(stages.reduce((a, s) => a + (s.estimatedSeconds ?? 0), 0).toFixed(1)) : null,
    memory,
    notes,
  };
}

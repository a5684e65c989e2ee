/**
 * Pipeline phase of `stage: online_dpo`: the online DPO stage after SFT, in the place of offline DPO. It
 * trains the policy with {@link onlineDpoTask} against the frozen reference (a copy of the SFT model, or the
 * adapter-disabled policy under LoRA) through the same stage loop, optimizer, checkpoints and logging as DPO
 * (pipeline/stages.ts runWith); the judge is built here and freed at the end.
 */
import { ConfigError, dpoStage } from '../../config/index.js';
import type { ResolvedLossOptions } from '../losses/index.js';
import { eosIds } from '../models/config.js';
import type { Reference } from '../pipeline/reference.js';
import type { ResumePoint } from '../pipeline/resume.js';
import { resumeFor } from '../pipeline/resume.js';
import { runWith, trainableParams, type StageOutcome, type StageRun } from '../pipeline/stages.js';
import type { Tokenizer } from '../types.js';
import type { OnlinePreparedData } from './data.js';
import { createJudge } from './judges/index.js';
import { JudgeError } from './judges/types.js';
import { onlineDpoTask, type CompletionSource } from './task.js';

/** The ids that end a completion: the tokenizer's and the model's EOS ids, and BOS (llama2.c stories end with it). */
export function stopTokenIds(tok: Tokenizer, model: StageRun['policy']): number[] {
  const ids = new Set<number>();
  for (const id of [tok.eosTokenId, ...eosIds(model.config), tok.bosTokenId, model.config.bosTokenId]) if (id !== null) ids.add(id);
  return [...ids];
}

/**
 * The online DPO stage (call attachDpoAdapters and createReference first, as for DPO).
 * @returns the stage summary (last logged train metrics + last eval) with `generation/tokens_per_s` over the
 *   whole stage
 * @throws ConfigError (`online_dpo.judge`) without a judge; JudgeError; StageConfigError / CheckpointError /
 *   TrainingAbortedError as runDpo
 */
export async function runOnlineDpo(
  run: StageRun,
  o: {
    loss: ResolvedLossOptions;
    reference: Reference;
    point: ResumePoint | null;
    sftSummary: Record<string, number>;
    tokenizer: Tokenizer;
    data: OnlinePreparedData;
    /** Fixed completions instead of sampling (tests). */
    completions?: CompletionSource;
  },
): Promise<StageOutcome> {
  const { cfg, policy } = run;
  const settings = cfg.online_dpo;
  if (!settings.judge) throw new JudgeError('INVALID_JUDGE_CONFIG', 'online_dpo.judge', 'stage online_dpo needs a judge');
  const source = o.reference.source;
  if (source.kind !== 'model' && source.kind !== 'lora') {
    throw new ConfigError('loss.loss_type', `online DPO needs a reference model (got a ${source.kind} reference); use loss=dpo or loss=ipo`);
  }
  const judge = await createJudge(settings.judge);
  try {
    const params = trainableParams(policy);
    const task = onlineDpoTask({
      policy,
      reference: source,
      prompts: o.data.prompts.train,
      evalPrompts: o.data.prompts.eval,
      judge,
      tokenizer: o.tokenizer,
      padId: o.data.padId,
      loss: o.loss,
      settings,
      params,
      seed: cfg.seed,
      stopIds: stopTokenIds(o.tokenizer, policy),
      maxLength: cfg.max_length,
      evalBatchSize: cfg.eval_batch_size,
      completions: o.completions,
      afterStep: (step) => o.reference.afterStep(step),
      onEval: run.onEval('dpo'),
    });
    const out = await runWith(run, task, params, dpoStage(cfg), resumeFor(o.point, 'dpo'), {
      sftSummary: o.sftSummary,
      reference: o.reference.checkpoint(),
    });
    const g = task.generation;
    return { ...out, summary: { ...out.summary, 'generation/stage_tokens_per_s': g.seconds > 0 ? g.tokens / g.seconds : 0 } };
  } finally {
    judge.dispose();
  }
}

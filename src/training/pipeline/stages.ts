/**
 * Pipeline phase: the two training stages on the policy — SFT on prompt + chosen (skipped when `sft.enabled`
 * is false or the run resumes inside DPO), then DPO against a {@link Reference} (skipped when `dpo.enabled` is
 * false) — with the options they share
 * (optimizer hyper-parameters, eval / log / save cadence, the metrics and progress hooks) and the checkpoint
 * hook (every `save_steps` steps and at each stage's end, when `save_steps` is set).
 * LoRA (`lora.enabled`): each stage trains fresh adapters; SFT's are merged into the weights when it ends.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { Logger } from 'pino';
import { dpoStage, sftStage, type StageSettings, type TrainConfig } from '../../config/index.js';
import type { ResolvedLossOptions } from '../losses/index.js';
import { applyLora, mergeLora, type GenerativeLM, type LoraConfig } from '../models/index.js';
import { storeFrozenInLowPrecision } from '../models/frozen.js';
import { assignVariables, CHECKPOINT_VERSION, saveCheckpoint, type CheckpointState } from '../trainer/checkpoint.js';
import type { MetricsRecord } from '../trainer/monitor.js';
import { Optimizer, type OptimizerSettings } from '../trainer/optimizer.js';
import { runStage, type StagePosition, type StageProgress, type StageTask } from '../trainer/stage.js';
import { dpoTask, sftTask } from '../trainer/tasks.js';
import { batchLayout } from '../data/index.js';
import type { PreparedData } from './data.js';
import type { Reference, ReferenceCheckpoint } from './reference.js';
import { configHash, resumeFor, type ResumePoint, type StageResume } from './resume.js';
import type { OnEval } from './samples.js';

/** What both stages share. */
export interface StageRun {
  cfg: TrainConfig;
  outputDir: string;
  policy: GenerativeLM;
  data: PreparedData;
  /** Every logged metrics record (metrics.jsonl). */
  log(record: MetricsRecord): void;
  /** After every optimizer step. */
  progress(p: StageProgress): void;
  /** The evaluation hook of a stage (samples). */
  onEval(stage: 'sft' | 'dpo'): OnEval;
  signal?: AbortSignal;
  logger: Logger;
}

/** A finished stage. */
export interface StageOutcome {
  /** Last logged train metrics merged with the last eval metrics (run.json `metrics.<stage>`). */
  summary: Record<string, number>;
  /** Wall seconds of the stage (0 when skipped). */
  seconds: number;
}

/** Trainable parameters of the model by name (the adapters only, under LoRA). */
export function trainableParams(model: GenerativeLM): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const [k, v] of model.params) if (v.trainable) out.set(k, v);
  return out;
}

/** The optimizer settings of a stage. */
export function optimizerSettings(c: TrainConfig, stage: StageSettings): OptimizerSettings {
  return {
    name: stage.optimizer,
    weightDecay: stage.weight_decay,
    beta1: c.adam_beta1,
    beta2: c.adam_beta2,
    epsilon: c.adam_epsilon,
    rmspropAlpha: c.rmsprop_alpha,
    momentum: c.momentum,
  };
}

/** Trainable and total parameter counts (elements), as PEFT's `print_trainable_parameters`. */
export interface TrainableParameters {
  trainable: number;
  all: number;
  /** 100 · trainable / all */
  percent: number;
}

/** Count the model's trainable parameters (the adapters under LoRA) and all parameters. */
export function countTrainableParameters(model: GenerativeLM): TrainableParameters {
  let trainable = 0;
  let all = 0;
  for (const v of model.params.values()) {
    all += v.size;
    if (v.trainable) trainable += v.size;
  }
  return { trainable, all, percent: all > 0 ? (100 * trainable) / all : 0 };
}

/** The LoRA settings (null when `lora.enabled` is false). */
export function loraConfig(c: Pick<TrainConfig, 'lora'>): LoraConfig | null {
  const l = c.lora;
  return l.enabled ? { r: l.r, alpha: l.alpha, dropout: l.dropout, targetModules: l.target_modules, rslora: l.rslora } : null;
}

/**
 * Attach a stage's LoRA adapters (seed `seed`, +1 for DPO) and log the trainable-parameter count the way
 * PEFT's `print_trainable_parameters` prints it; then store the now-frozen base's linear weights in low
 * precision when the config asks (`weight_quantize_algo: weight_only_int8`, else `frozen_weights_dtype:
 * bfloat16`; native backend).
 */
function attachAdapters(run: Pick<StageRun, 'cfg' | 'policy' | 'logger'>, stage: 'sft' | 'dpo', lora: LoraConfig): void {
  const { cfg, policy } = run;
  applyLora(policy, lora, { seed: cfg.seed + (stage === 'dpo' ? 1 : 0) });
  const c = countTrainableParameters(policy);
  run.logger.info(
    { stage, trainable_params: c.trainable, all_params: c.all, trainable_percent: c.percent },
    `${stage} LoRA: trainable params: ${c.trainable.toLocaleString('en-US')} || all params: ${c.all.toLocaleString('en-US')} || trainable%: ${c.percent.toFixed(4)}`,
  );
  if (cfg.weight_quantize_algo === 'weight_only_int8') storeFrozenInLowPrecision(policy, 'int8');
  else if (cfg.frozen_weights_dtype === 'bfloat16') storeFrozenInLowPrecision(policy, 'bfloat16');
}

/**
 * Give the policy the DPO stage's fresh adapters (seed `seed + 1`) when LoRA is on; call before creating the
 * reference so that a frozen copy or precomputed log-probs see the SFT model exactly.
 * @throws LoraConfigError for bad `lora.*` settings
 */
export function attachDpoAdapters(run: Pick<StageRun, 'cfg' | 'policy' | 'logger'>): void {
  const lora = loraConfig(run.cfg);
  if (lora) attachAdapters(run, 'dpo', lora);
}

/** The JSON state of a checkpoint: the loop position, and the run's config and data hash for the resume. */
function checkpointState(
  run: Pick<StageRun, 'cfg' | 'data'>,
  stage: 'sft' | 'dpo',
  pos: StagePosition & { totalSteps: number; complete: boolean },
  optimizer: Optimizer,
  sftSummary: Record<string, number>,
): CheckpointState {
  return {
    version: CHECKPOINT_VERSION,
    stage,
    step: pos.step,
    totalSteps: pos.totalSteps,
    examples: pos.examples,
    numTokens: pos.numTokens,
    rng: pos.rng,
    optimizer: { name: optimizer.settings.name, step: optimizer.step },
    stageComplete: pos.complete,
    lastMetrics: pos.lastMetrics,
    lastEval: pos.lastEval,
    sftSummary,
    configHash: configHash(run.cfg),
    config: run.cfg,
    dataSha256: run.data.stats.sha256,
    savedAt: new Date().toISOString(),
  };
}

/** Run one stage with the shared options, continuing from `resume` when given (also the online DPO stage's runner). */
export async function runWith(
  run: StageRun,
  task: StageTask,
  params: Map<string, tf.Variable>,
  settings: StageSettings,
  resume: StageResume | null,
  extras: { sftSummary: Record<string, number>; reference: ReferenceCheckpoint | null },
): Promise<StageOutcome> {
  const t0 = Date.now();
  const { cfg, policy } = run;
  const optimizer = new Optimizer(params, optimizerSettings(cfg, settings));
  // LoRA+ (Hayou et al. 2024): the B matrices learn lora_plus_scale times faster than A
  if (cfg.lora.enabled && cfg.lora.lora_plus_scale !== 1)
    for (const name of params.keys()) if (name.endsWith('.lora_B.weight')) optimizer.lrScale.set(name, cfg.lora.lora_plus_scale);
  try {
    if (resume) {
      assignVariables(policy.params, resume.policy, 'checkpoint policy');
      optimizer.setState(resume.optimizer);
    }
    const checkpoint =
      cfg.save_steps === null && cfg.checkpoint_every_seconds === null
        ? undefined
        : async (pos: StagePosition & { totalSteps: number; complete: boolean }): Promise<void> => {
            await saveCheckpoint(
              run.outputDir,
              {
                state: checkpointState(run, task.stage, pos, optimizer, extras.sftSummary),
                policy: policy.params,
                optimizer: optimizer.getState(),
                ...(extras.reference ?? {}),
              },
              { totalLimit: cfg.save_total_limit },
            );
          };
    const res = await runStage(
      task,
      {
        settings,
        optimizer: optimizerSettings(cfg, settings),
        optimizerInstance: optimizer,
        params,
        seed: cfg.seed,
        evalEvery: cfg.eval_every,
        doFirstEval: cfg.do_first_eval,
        logEvery: cfg.log_every,
        saveSteps: cfg.save_steps,
        checkpointEverySeconds: cfg.checkpoint_every_seconds,
        lossWatchdog: { threshold: cfg.loss_watchdog_threshold, patience: cfg.loss_watchdog_patience },
        resume: resume?.position ?? null,
        maxTokensPerBatch: cfg.max_tokens_per_batch,
      },
      { log: run.log, progress: run.progress, signal: run.signal, checkpoint },
    );
    return { summary: { ...res.lastMetrics, ...res.lastEval }, seconds: (Date.now() - t0) / 1000 };
  } finally {
    optimizer.dispose();
  }
}

/**
 * The SFT stage: NLL of the SFT target on the train split (sft.* settings over the top level). Skipped when
 * `point` is a DPO checkpoint (its saved SFT summary is returned) or `sft.enabled` is false.
 * @throws StageConfigError for settings without a stopping criterion; CheckpointError for a checkpoint that
 *   does not match the model; TrainingAbortedError when `run.signal` aborts
 */
export async function runSft(run: StageRun, point: ResumePoint | null): Promise<StageOutcome> {
  if (point?.state.stage === 'dpo') return { summary: point.state.sftSummary ?? {}, seconds: 0 };
  if (!run.cfg.sft.enabled) return { summary: {}, seconds: 0 };
  const { cfg, policy, data } = run;
  const lora = loraConfig(cfg);
  if (lora) attachAdapters(run, 'sft', lora);
  const params = trainableParams(policy);
  const task = sftTask({
    model: policy,
    train: data.train,
    eval: data.eval,
    padId: data.padId,
    params,
    evalBatchSize: cfg.eval_batch_size,
    onEval: run.onEval('sft'),
    layout: batchLayout(cfg, 'sft'),
  });
  const out = await runWith(run, task, params, sftStage(cfg), resumeFor(point, 'sft'), { sftSummary: {}, reference: null });
  if (lora) mergeLora(policy);
  return out;
}

/**
 * The DPO stage: the preference loss `loss` against `reference` (call {@link attachDpoAdapters} first).
 * Skipped (an empty summary, 0 s) when `dpo.enabled` is false (method "sft": the artifact is the SFT model);
 * runTraining then creates neither adapters nor a reference.
 * @throws as {@link runSft}
 */
export async function runDpo(
  run: StageRun,
  o: { loss: ResolvedLossOptions; reference: Reference; point: ResumePoint | null; sftSummary: Record<string, number> },
): Promise<StageOutcome> {
  if (!run.cfg.dpo.enabled) return { summary: {}, seconds: 0 };
  const { cfg, policy, data } = run;
  const params = trainableParams(policy);
  const task = dpoTask({
    policy,
    reference: o.reference.source,
    train: data.train,
    eval: data.eval,
    padId: data.padId,
    loss: o.loss,
    params,
    evalBatchSize: cfg.eval_batch_size,
    logitStats: cfg.log_logit_stats,
    onEval: run.onEval('dpo'),
    afterStep: (step) => o.reference.afterStep(step),
    layout: batchLayout(cfg, 'dpo'),
  });
  return runWith(run, task, params, dpoStage(cfg), resumeFor(o.point, 'dpo'), { sftSummary: o.sftSummary, reference: o.reference.checkpoint() });
}

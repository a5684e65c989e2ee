/**
 * The training loop of one stage (SFT or DPO), independent of the loss: data order, micro-batches and
 * gradient accumulation, clipping, the optimizer and learning-rate schedule, evaluation every `eval_every`
 * examples, logging, checkpoints and resume, abort between steps, and tensor hygiene.
 *
 * Semantics (TRL / the DPO reference implementation):
 * - one optimizer step consumes `batch_size · gradient_accumulation_steps` examples, as
 *   `gradient_accumulation_steps` micro-batches of `batch_size`; the last step of an epoch may be smaller;
 * - each micro-batch's loss is scaled by its share of the step's *units* (pairs for DPO, completion tokens for
 *   SFT) and the gradients are summed, so the update equals that of one big batch (loss = mean over the whole
 *   effective batch): batch 1 × accumulation 8 ≡ batch 8 × accumulation 1 up to float32 rounding;
 * - the data order of epoch e is a permutation that depends only on (seed, e) ({@link epochPermutation}), so
 *   the data position of a checkpoint is its step;
 * - the stage ends after `n_epochs` epochs, `n_examples` examples or `max_steps` steps, whichever comes first.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { StageSettings } from '../../config/index.js';
import { averageMetrics } from '../losses/index.js';
import { clipByGlobalNorm, accumulateGrads, disposeGrads } from './grads.js';
import { Optimizer, type OptimizerSettings } from './optimizer.js';
import { Rng, epochPermutation, type RngState } from './rng.js';
import { learningRateAt } from './schedule.js';

/** Thrown when `signal` aborts training (between steps). */
export class TrainingAbortedError extends Error {
  readonly code = 'TRAINING_ABORTED';
  constructor(message = 'training was aborted') {
    super(message);
    this.name = 'TrainingAbortedError';
  }
}

/**
 * The run diverged: a non-finite loss or gradient norm, or (with the loss watchdog) the loss above
 * `loss_watchdog_threshold` for `loss_watchdog_patience` steps in a row. The optimizer step of the bad step is
 * not applied; the job fails with this code (it is never reported as completed).
 */
export class TrainingDivergedError extends Error {
  readonly code = 'TRAINING_DIVERGED';
  constructor(
    readonly stage: 'sft' | 'dpo',
    readonly step: number,
    reason: string,
  ) {
    super(`training diverged in ${stage} at step ${step}: ${reason}; lower lr, raise warmup_steps or lower max_grad_norm`);
    this.name = 'TrainingDivergedError';
  }
}

/** Loss watchdog settings (Axolotl's names); threshold null = off. */
export interface LossWatchdog {
  threshold: number | null;
  patience: number;
}

/** A stage that cannot run with the given settings (e.g. no stopping criterion, no data). */
export class StageConfigError extends Error {
  readonly code = 'INVALID_CONFIG';
  readonly key: string;
  constructor(key: string, message: string) {
    super(`${key}: ${message}`);
    this.name = 'StageConfigError';
    this.key = key;
  }
}

/** Result of one micro-batch forward/backward. */
export interface MicroResult {
  /** Gradients by parameter name of the *scaled* micro loss (ownership passes to the loop). */
  grads: Map<string, tf.Tensor>;
  /** The unscaled micro-batch loss (its own mean). */
  loss: number;
  /** Per-micro-batch metrics (averaged over the step like TRL's `log()`); `loss` is set by the loop. */
  metrics: Record<string, number>;
  /** Non-padding tokens processed (attention mask sum). */
  tokens: number;
}

/** What a stage supplies to the loop. */
export interface StageTask {
  stage: 'sft' | 'dpo';
  /** Number of training examples. */
  nTrain: number;
  /** The weight of a micro-batch in the step (pairs, or completion tokens for SFT). */
  units(indices: number[]): number;
  /**
   * Before the micro-batches of an optimizer step (0-based `step`, `epoch`): asynchronous work they need,
   * such as online DPO's sampling and judging.
   */
  prepareStep?(micros: number[][], ctx: { step: number; epoch: number }): Promise<void>;
  /** Forward + backward of one micro-batch with the loss multiplied by `scale`. */
  micro(indices: number[], scale: number, rng: Rng): MicroResult;
  /** Tokens example `index` occupies in a micro-batch of the task's layout (token-budget batching). */
  tokensOf?(index: number): number;
  /** Held-out metrics (already `eval_`-prefixed); absent: no evaluation. */
  evaluate?(ctx: { step: number; examples: number; rng: Rng }): Promise<Record<string, number>>;
  /** Called after each optimizer step (reference sync). */
  afterStep?(step: number): void;
}

export interface StageProgress {
  stage: 'sft' | 'dpo';
  step: number;
  totalSteps: number;
  examples: number;
  /** Epochs done, fractional (step / steps per epoch), as transformers logs `epoch`. */
  epoch: number;
  /** Train metrics of this step (after logging aggregation), or null when the step was not logged. */
  metrics: Record<string, number> | null;
  eval: Record<string, number> | null;
}

/** Where the loop is (restored from a checkpoint on resume). */
export interface StagePosition {
  step: number;
  examples: number;
  numTokens: number;
  rng: RngState;
  lastMetrics: Record<string, number>;
  lastEval: Record<string, number>;
}

export interface StageHooks {
  /** Every logged record (train: `{stage, step, ...}`, eval: `{stage, step, eval_...}`). */
  log(record: Record<string, number | string>): void | Promise<void>;
  /** After every optimizer step. */
  progress?(p: StageProgress): void;
  /** Persist a checkpoint of the current position (the caller gathers weights / optimizer). */
  checkpoint?(pos: StagePosition & { totalSteps: number; complete: boolean }): Promise<void>;
  signal?: AbortSignal;
}

export interface StageOptions {
  settings: StageSettings;
  optimizer: OptimizerSettings;
  /** Trainable parameters by name. */
  params: Map<string, tf.Variable>;
  seed: number;
  evalEvery: number | null;
  doFirstEval: boolean;
  logEvery: number;
  saveSteps: number | null;
  /** Also checkpoint when this many seconds passed since the last checkpoint (null: only by steps / at the end). */
  checkpointEverySeconds?: number | null;
  /** Stop on a loss spike (a non-finite loss or grad norm always stops the run). */
  lossWatchdog?: LossWatchdog;
  /** Position to continue from (resume), with the optimizer state already restored into `optimizerInstance`. */
  resume?: StagePosition | null;
  /** An optimizer to use (resume); created from `optimizer` otherwise. */
  optimizerInstance?: Optimizer;
  /**
   * `max_tokens_per_batch`: split each optimizer step's examples into micro-batches of at most this many tokens
   * ({@link tokenBudgetBatches}, by the task's tokensOf) instead of batch_size each; null/absent: off.
   */
  maxTokensPerBatch?: number | null;
}

export interface StageResult {
  steps: number;
  examples: number;
  numTokens: number;
  lastMetrics: Record<string, number>;
  lastEval: Record<string, number>;
  optimizer: Optimizer;
  rng: Rng;
  seconds: number;
}

/**
 * Warmup in optimizer steps: `warmup_steps` when > 0, else `ceil(warmup_ratio × totalSteps)` (transformers'
 * TrainingArguments.get_warmup_steps).
 */
export function warmupSteps(s: Pick<StageSettings, 'warmup_steps' | 'warmup_ratio'>, totalSteps: number): number {
  return s.warmup_steps > 0 ? s.warmup_steps : Math.ceil(s.warmup_ratio * totalSteps);
}

/** Steps per epoch and the total number of optimizer steps of a stage. */
export function stagePlan(nTrain: number, s: StageSettings): { perStep: number; stepsPerEpoch: number; totalSteps: number } {
  if (nTrain <= 0) throw new StageConfigError('datasets', 'no training examples left after tokenisation and the eval split');
  const perStep = s.batch_size * s.gradient_accumulation_steps;
  const stepsPerEpoch = Math.ceil(nTrain / perStep);
  const limits: number[] = [];
  if (s.n_epochs !== null) limits.push(s.n_epochs * stepsPerEpoch);
  if (s.n_examples !== null) limits.push(Math.ceil(s.n_examples / perStep));
  if (s.max_steps !== null) limits.push(s.max_steps);
  if (limits.length === 0) throw new StageConfigError('n_epochs', 'set at least one of n_epochs, n_examples, max_steps');
  return { perStep, stepsPerEpoch, totalSteps: Math.max(1, Math.min(...limits)) };
}

/** The example indices of optimizer step `step` (0-based), split into micro-batches. */
export function stepBatches(step: number, nTrain: number, s: StageSettings, seed: number, cache?: Map<number, number[]>): number[][] {
  const perStep = s.batch_size * s.gradient_accumulation_steps;
  const stepsPerEpoch = Math.ceil(nTrain / perStep);
  const epoch = Math.floor(step / stepsPerEpoch);
  const k = step % stepsPerEpoch;
  let perm = cache?.get(epoch);
  if (!perm) {
    perm = epochPermutation(nTrain, seed, epoch);
    if (cache) {
      cache.clear();
      cache.set(epoch, perm);
    }
  }
  const idx = perm.slice(k * perStep, Math.min((k + 1) * perStep, nTrain));
  const micros: number[][] = [];
  for (let i = 0; i < idx.length; i += s.batch_size) micros.push(idx.slice(i, i + s.batch_size));
  return micros;
}

/**
 * Token-budget micro-batches of one optimizer step's examples: first-fit decreasing by tokens (Johnson 1974)
 * into bins of at most `budget` tokens (an example longer than the budget gets a bin of its own). The window
 * is the step's examples, already in the seeded epoch order ({@link stepBatches}); ties keep that order, so
 * the split depends only on (seed, epoch, step) and a resumed run forms the same micro-batches.
 * @param indices example indices of the step
 * @param budget tokens per micro-batch (> 0)
 * @param tokensOf tokens of an example in the task's layout
 * @returns micro-batches (each non-empty), largest first
 * @throws RangeError when budget is not a positive integer
 */
export function tokenBudgetBatches(indices: number[], budget: number, tokensOf: (index: number) => number): number[][] {
  if (!(Number.isInteger(budget) && budget > 0)) throw new RangeError(`max_tokens_per_batch must be a positive integer, got ${budget}`);
  const order = indices.map((index, pos) => ({ index, pos, n: tokensOf(index) })).sort((a, b) => b.n - a.n || a.pos - b.pos);
  const bins: Array<{ n: number; items: number[] }> = [];
  for (const it of order) {
    const bin = bins.find((b) => b.n + it.n <= budget);
    if (bin) {
      bin.n += it.n;
      bin.items.push(it.index);
    } else bins.push({ n: it.n, items: [it.index] });
  }
  return bins.map((b) => b.items);
}

/**
 * Run one stage to its end (or to an abort).
 * @throws TrainingAbortedError when `hooks.signal` aborts (after checkpointing when `saveSteps` is set)
 * @throws StageConfigError when the settings give no stopping criterion or there is no data
 */
export async function runStage(task: StageTask, opts: StageOptions, hooks: StageHooks): Promise<StageResult> {
  const s = opts.settings;
  const { totalSteps, stepsPerEpoch } = stagePlan(task.nTrain, s);
  const optimizer = opts.optimizerInstance ?? new Optimizer(opts.params, opts.optimizer);
  const rng = new Rng(opts.seed + (task.stage === 'dpo' ? 1 : 0));
  let step = 0;
  let examples = 0;
  let numTokens = 0;
  let lastMetrics: Record<string, number> = {};
  let lastEval: Record<string, number> = {};
  if (opts.resume) {
    step = opts.resume.step;
    examples = opts.resume.examples;
    numTokens = opts.resume.numTokens;
    rng.setState(opts.resume.rng);
    lastMetrics = opts.resume.lastMetrics;
    lastEval = opts.resume.lastEval;
  }
  const permCache = new Map<number, number[]>();
  let highLossSteps = 0;
  let lastCheckpointAt = Date.now();
  const window: Array<Record<string, number>> = [];
  const t0 = Date.now();
  const position = (): StagePosition => ({ step, examples, numTokens, rng: rng.getState(), lastMetrics, lastEval });

  const runEval = async (): Promise<Record<string, number> | null> => {
    if (!task.evaluate) return null;
    const m = await task.evaluate({ step, examples, rng });
    if (Object.keys(m).length === 0) return null;
    lastEval = m;
    await hooks.log({ stage: task.stage, step, examples, epoch: step / stepsPerEpoch, ...m });
    return m;
  };
  const checkAbort = async (): Promise<void> => {
    if (!hooks.signal?.aborted) return;
    if ((opts.saveSteps || opts.checkpointEverySeconds) && hooks.checkpoint && step > 0) await hooks.checkpoint({ ...position(), totalSteps, complete: false });
    throw new TrainingAbortedError(`training aborted during ${task.stage} at step ${step}/${totalSteps}`);
  };

  if (step === 0 && opts.doFirstEval) await runEval();
  while (step < totalSteps) {
    // Yield one macrotask per step so IPC messages (abort), timers and log flushes run during training.
    await new Promise<void>((resolve) => setImmediate(resolve));
    await checkAbort();
    const stepStart = performance.now();
    const budget = opts.maxTokensPerBatch ?? null;
    const planned = stepBatches(step, task.nTrain, s, opts.seed, permCache);
    const micros = budget !== null && task.tokensOf ? tokenBudgetBatches(planned.flat(), budget, (i) => task.tokensOf!(i)) : planned;
    await task.prepareStep?.(micros, { step, epoch: Math.floor(step / stepsPerEpoch) });
    const units = micros.map((m) => task.units(m));
    const totalUnits = units.reduce((a, b) => a + b, 0);
    const acc = new Map<string, tf.Tensor>();
    const microMetrics: Array<Record<string, number>> = [];
    let loss = 0;
    let stepTokens = 0;
    let stepExamples = 0;
    for (let i = 0; i < micros.length; i++) {
      const scale = totalUnits > 0 ? units[i]! / totalUnits : 0;
      const r = task.micro(micros[i]!, scale, rng);
      accumulateGrads(acc, r.grads);
      loss += scale * r.loss;
      stepTokens += r.tokens;
      stepExamples += micros[i]!.length;
      microMetrics.push({ ...r.metrics, loss: r.loss });
    }
    const gradNorm = clipByGlobalNorm(acc, s.max_grad_norm);
    const lr = learningRateAt(step, { lr: s.lr, warmupSteps: warmupSteps(s, totalSteps), kind: s.lr_scheduler, totalSteps });
    // divergence: never apply a non-finite update, never go on as if it had not happened
    const diverged = !Number.isFinite(loss) ? `loss is ${loss}` : !Number.isFinite(gradNorm) ? `grad_norm is ${gradNorm}` : null;
    if (diverged === null) optimizer.apply(acc, lr);
    disposeGrads(acc);
    if (diverged !== null) {
      // the bad step is logged as it was (metrics.jsonl writes non-finite numbers as null)
      await hooks.log({ stage: task.stage, step: step + 1, examples: examples + stepExamples, loss, grad_norm: gradNorm, lr });
      throw new TrainingDivergedError(task.stage, step + 1, diverged);
    }
    const wd = opts.lossWatchdog;
    if (wd && wd.threshold !== null) {
      highLossSteps = loss > wd.threshold ? highLossSteps + 1 : 0;
      if (highLossSteps >= wd.patience) {
        throw new TrainingDivergedError(
          task.stage,
          step + 1,
          `loss ${loss.toFixed(4)} above loss_watchdog_threshold=${wd.threshold} for ${highLossSteps} steps (loss_watchdog_patience=${wd.patience})`,
        );
      }
    }
    const prevExamples = examples;
    step += 1;
    examples += stepExamples;
    numTokens += stepTokens;
    task.afterStep?.(step);
    const seconds = Math.max(1e-9, (performance.now() - stepStart) / 1000);
    const m = averageMetrics(microMetrics);
    m.loss = loss;
    m.grad_norm = gradNorm;
    m.learning_rate = lr;
    m.num_tokens = numTokens;
    m['tokens/s'] = stepTokens / seconds;
    m[task.stage === 'dpo' ? 'pairs/s' : 'examples/s'] = stepExamples / seconds;
    m.step_seconds = seconds;
    if (budget !== null && task.tokensOf) {
      // token-budget batching: the pairs (examples) and micro-batches of this optimizer step
      m[task.stage === 'dpo' ? 'pairs' : 'examples'] = stepExamples;
      m.micro_batches = micros.length;
    }
    window.push(m);
    let logged: Record<string, number> | null = null;
    if (step % opts.logEvery === 0 || step === totalSteps) {
      logged = averageMetrics(window);
      logged.num_tokens = numTokens;
      window.length = 0;
      lastMetrics = logged;
      await hooks.log({ stage: task.stage, step, examples, epoch: step / stepsPerEpoch, ...logged });
    }
    let ev: Record<string, number> | null = null;
    const crossed = opts.evalEvery !== null && Math.floor(examples / opts.evalEvery) > Math.floor(prevExamples / opts.evalEvery);
    if (crossed || step === totalSteps) ev = await runEval();
    hooks.progress?.({ stage: task.stage, step, totalSteps, examples, epoch: step / stepsPerEpoch, metrics: logged, eval: ev });
    const complete = step === totalSteps;
    const timeDue = !!opts.checkpointEverySeconds && Date.now() - lastCheckpointAt >= opts.checkpointEverySeconds * 1000;
    if (hooks.checkpoint && ((opts.saveSteps !== null && step % opts.saveSteps === 0) || complete || timeDue)) {
      await hooks.checkpoint({ ...position(), totalSteps, complete });
      lastCheckpointAt = Date.now();
    }
  }
  return { steps: step, examples, numTokens, lastMetrics, lastEval, optimizer, rng, seconds: (Date.now() - t0) / 1000 };
}

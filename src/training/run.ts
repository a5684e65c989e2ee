/**
 * runTraining: the whole training job of `dpo train` and of the worker — resolve the config, initialise the
 * backend, load model + tokenizer and the data, SFT on prompt + chosen, then DPO with the SFT weights as the
 * frozen reference, and write the artifact:
 *   outputDir/{model/, metrics.jsonl, samples.jsonl?, tensorboard/?, training_plot.png?, run.json, manifest.json}
 * (manifest.json last, listing every other file with its size and sha256), plus `checkpoints/` when
 * `save_steps` is set.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import pino, { type Logger } from 'pino';
import { ConfigError, dpoStage, loadConfig, repoRoot, resolveLoss, sftStage, type StageSettings, type TrainConfig } from '../config/index.js';
import { writeManifest } from '../storage/manifest.js';
import { initBackend, type BackendRequest } from './engine/backend.js';
import { loadPreferenceExamples, resolvePadId, splitEval, tokenizeDataset, type TokenizedPair } from './data/index.js';
import { hardSyncReference, needsReference, referenceSyncDue, softSyncReference } from './losses/index.js';
import { applyLora, cloneModel, generate, loadPretrained, mergeLora, saveLoraAdapter, saveModelHF, type GenerativeLM } from './models/index.js';
import { loadTokenizer } from './tokenizers/index.js';
import { readMetricsJsonl, TensorBoardWriter, writeTrainingPlot } from './metrics/index.js';
import {
  assignVariables,
  readCheckpoint,
  resolveCheckpoint,
  saveCheckpoint,
  CHECKPOINT_VERSION,
  type CheckpointState,
  type CheckpointData,
} from './trainer/checkpoint.js';
import { MetricsFile, ProgressReporter, type MetricsRecord } from './trainer/monitor.js';
import { Optimizer, type OptimizerSettings } from './trainer/optimizer.js';
import { runStage, TrainingAbortedError, type StagePosition, type StageTask } from './trainer/stage.js';
import { dpoTask, scorePairs, sftTask, type ReferenceSource, type RefLogps } from './trainer/tasks.js';
import type { CausalLM, PreferenceExample, ProgressEvent, Tokenizer } from './types.js';

export { TrainingAbortedError } from './trainer/stage.js';

export interface RunTrainingOptions {
  /** Config object (the webhook's `config`), applied over config/config.yaml and `configFile`. */
  config?: Record<string, unknown>;
  /** `key=value` overrides (CLI), applied last. */
  overrides?: string[];
  /** A YAML config file merged over config/config.yaml. */
  configFile?: string;
  /** Training data instead of `datasets`: examples, or a path / registered name. */
  dataset?: PreferenceExample[] | string;
  /** Where the artifact is written (overrides `output_dir`). */
  outputDir: string;
  onProgress?: (e: ProgressEvent) => void;
  /** Abort between steps (TrainingAbortedError). */
  signal?: AbortSignal;
  logger?: Logger;
}

export interface RunTrainingResult {
  artifactDir: string;
  metrics: { sft: Record<string, number>; dpo: Record<string, number> };
}

function trainableParams(model: CausalLM): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const [k, v] of model.params) if (v.trainable) out.set(k, v);
  return out;
}

function optimizerSettings(c: TrainConfig, stage: { optimizer: TrainConfig['optimizer']; weight_decay: number }): OptimizerSettings {
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

function packageVersion(pkg: string): string | null {
  try {
    const p = join(repoRoot(), 'node_modules', ...pkg.split('/'), 'package.json');
    return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

function hashConfig(c: TrainConfig): string {
  const relevant = { ...c, resume_from_checkpoint: null, output_dir: null, progress_bar: null, log_every: null };
  return createHash('sha256').update(JSON.stringify(relevant)).digest('hex').slice(0, 16);
}

/** Prompt text of a tokenized pair without BOS (what generation is given back). */
function promptText(p: TokenizedPair, tok: Tokenizer): string {
  const ids = p.promptIds[0] === tok.bosTokenId ? p.promptIds.slice(1) : p.promptIds;
  return tok.decode(ids);
}

/**
 * Run SFT then DPO and write the artifact (see the module doc).
 * @returns the artifact directory and the final metrics of each stage (last logged train step + last eval)
 * @throws ConfigError (INVALID_CONFIG) for a bad config or override; DataError for unreadable data;
 *   model errors from loadPretrained; TrainingAbortedError when `signal` aborts; CheckpointError for a bad
 *   `resume_from_checkpoint`
 */
export async function runTraining(options: RunTrainingOptions): Promise<RunTrainingResult> {
  const t0 = Date.now();
  const logger = options.logger ?? pino({ level: process.env.LOG_LEVEL ?? 'info' });
  const cfg = loadConfig({ configFile: options.configFile, object: options.config, overrides: options.overrides });
  const lossOpts = resolveLoss(cfg);
  const outputDir = resolve(options.outputDir ?? cfg.output_dir ?? 'output');
  mkdirSync(outputDir, { recursive: true });
  const timings: Record<string, number> = {};
  const checkAbort = (where: string): void => {
    if (options.signal?.aborted) throw new TrainingAbortedError(`training aborted ${where}`);
  };

  const backend = await initBackend((cfg.backend ?? undefined) as BackendRequest | undefined);
  logger.info({ backend: backend.name, package: backend.package, gpu: backend.gpu }, `tfjs backend: ${backend.name}`);

  // model + tokenizer
  let tl = Date.now();
  const { model, tokenizer: tok0, source } = await loadPretrained(cfg.model.name_or_path);
  const tokenizer = cfg.model.tokenizer_name_or_path ? await loadTokenizer(cfg.model.tokenizer_name_or_path) : tok0;
  const policy: GenerativeLM = model;
  let reference: GenerativeLM | null = null;
  let progress: ProgressReporter | null = null;
  try {
    logger.info({ model: cfg.model.name_or_path, source, params: [...policy.params.values()].reduce((a, v) => a + v.size, 0) }, 'model loaded');
    timings.load_model_s = (Date.now() - tl) / 1000;

    // data
    tl = Date.now();
    const loadOpts = {
      format: cfg.dataset_format ?? undefined,
      chosenKey: cfg.chosen_key ?? undefined,
      rejectedKey: cfg.rejected_key ?? undefined,
      tokenizer,
    };
    let examples: PreferenceExample[] = [];
    if (options.dataset !== undefined) {
      examples = typeof options.dataset === 'string' ? await loadPreferenceExamples(options.dataset, loadOpts) : options.dataset;
    } else {
      for (const d of cfg.datasets) examples.push(...(await loadPreferenceExamples(d, loadOpts)));
    }
    const dataHash = createHash('sha256').update(JSON.stringify(examples)).digest('hex');
    let trainEx: PreferenceExample[];
    let evalEx: PreferenceExample[];
    if (cfg.eval_dataset) {
      trainEx = examples;
      evalEx = await loadPreferenceExamples(cfg.eval_dataset, loadOpts);
    } else {
      const sp = splitEval(examples, cfg.eval_split_fraction, cfg.seed);
      trainEx = sp.train;
      evalEx = sp.eval;
    }
    if (cfg.n_eval_examples !== null) evalEx = evalEx.slice(0, cfg.n_eval_examples);
    const tokOpts = { maxLength: cfg.max_length, maxPromptLength: cfg.max_prompt_length, truncationMode: cfg.truncation_mode };
    const trainTok = tokenizeDataset(trainEx, tokenizer, tokOpts);
    const evalTok = tokenizeDataset(evalEx, tokenizer, tokOpts);
    const train = trainTok.pairs;
    const evalPairs = evalTok.pairs;
    if (train.length === 0) {
      throw new ConfigError(
        'max_length',
        `no training pair fits max_length=${cfg.max_length} (all ${trainEx.length} dropped); raise max_length or lower max_prompt_length`,
      );
    }
    const padId = resolvePadId(tokenizer);
    timings.load_data_s = (Date.now() - tl) / 1000;
    logger.info(
      {
        examples: examples.length,
        train: train.length,
        eval: evalPairs.length,
        dropped: trainTok.stats.dropped + evalTok.stats.dropped,
        truncated: trainTok.stats.truncated + evalTok.stats.truncated,
      },
      'data ready',
    );
    checkAbort('before training');

    // resume
    const ckptDir = cfg.resume_from_checkpoint ? await resolveCheckpoint(cfg.resume_from_checkpoint, outputDir) : null;
    const ckpt = ckptDir ? await readCheckpoint(ckptDir) : null;
    const configHash = hashConfig(cfg);
    if (ckpt) {
      logger.info({ checkpoint: ckptDir, stage: ckpt.state.stage, step: ckpt.state.step }, 'resuming from checkpoint');
      if (ckpt.state.configHash !== configHash) logger.warn({ checkpoint: ckptDir }, 'the checkpoint was written with different settings; resuming anyway');
    } else if (cfg.resume_from_checkpoint) logger.info({ output_dir: outputDir }, 'resume_from_checkpoint=latest: no checkpoint yet, starting fresh');
    const metricsFile = new MetricsFile(join(outputDir, 'metrics.jsonl'), ckpt ? { stage: ckpt.state.stage, step: ckpt.state.step } : null);
    const samplesPath = join(outputDir, 'samples.jsonl');
    if (!ckpt && existsSync(samplesPath)) rmSync(samplesPath);
    const log = (r: MetricsRecord): void => metricsFile.append(r);
    progress = new ProgressReporter(logger, cfg.progress_bar, options.onProgress);
    const sampler =
      (stage: 'sft' | 'dpo') =>
      async (ctx: { step: number }): Promise<void> => {
        if (!cfg.sample_during_eval || cfg.n_eval_model_samples <= 0 || evalPairs.length === 0) return;
        for (let i = 0; i < Math.min(cfg.n_eval_model_samples, evalPairs.length); i++) {
          const prompt = promptText(evalPairs[i]!, tokenizer);
          const out = generate(policy, tokenizer, prompt, {
            maxNewTokens: cfg.sample_max_new_tokens,
            temperature: cfg.sample_temperature,
            seed: cfg.seed + ctx.step,
          });
          appendFileSync(samplesPath, JSON.stringify({ stage, step: ctx.step, index: i, prompt, completion: out.text }) + '\n');
        }
      };
    const lora = cfg.lora.enabled ? { r: cfg.lora.r, alpha: cfg.lora.alpha, dropout: cfg.lora.dropout, targetModules: cfg.lora.target_modules } : null;
    const posFromCkpt = (s: CheckpointState): StagePosition => ({
      step: s.step,
      examples: s.examples,
      numTokens: s.numTokens,
      rng: s.rng,
      lastMetrics: s.lastMetrics,
      lastEval: s.lastEval,
    });

    /** Run one stage with the shared options; checkpoints (every save_steps and at the end) carry `extras`. */
    const runStageWith = (
      stage: 'sft' | 'dpo',
      task: StageTask,
      st: StageSettings,
      optimizer: Optimizer,
      params: ReturnType<typeof trainableParams>,
      resume: StagePosition | null,
      extras: { summary: Record<string, number>; reference?: CheckpointData['reference']; refLogps?: CheckpointData['refLogps'] },
    ) =>
      runStage(
        task,
        {
          settings: st,
          optimizer: optimizerSettings(cfg, st),
          optimizerInstance: optimizer,
          params,
          seed: cfg.seed,
          evalEvery: cfg.eval_every,
          doFirstEval: cfg.do_first_eval,
          logEvery: cfg.log_every,
          saveSteps: cfg.save_steps,
          resume,
        },
        {
          log,
          progress: (p) => progress!.update(p),
          signal: options.signal,
          checkpoint:
            cfg.save_steps !== null
              ? async (pos) => {
                  await saveCheckpoint(
                    outputDir,
                    {
                      state: stateOf(stage, pos, optimizer, configHash, extras.summary),
                      policy: policy.params,
                      optimizer: optimizer.getState(),
                      ...(extras.reference !== undefined ? { reference: extras.reference } : {}),
                      ...(extras.refLogps !== undefined ? { refLogps: extras.refLogps } : {}),
                    },
                    { totalLimit: cfg.save_total_limit },
                  );
                }
              : undefined,
        },
      );

    // ---- SFT ----
    let sftSummary: Record<string, number> = {};
    const inDpo = ckpt?.state.stage === 'dpo';
    if (inDpo) sftSummary = ckpt!.state.sftSummary ?? {};
    else if (cfg.sft.enabled) {
      tl = Date.now();
      if (lora) applyLora(policy, lora, { seed: cfg.seed });
      const params = trainableParams(policy);
      const st = sftStage(cfg);
      const optimizer = new Optimizer(params, optimizerSettings(cfg, st));
      let resume: StagePosition | null = null;
      if (ckpt) {
        assignVariables(policy.params, ckpt.policy, 'checkpoint policy');
        optimizer.setState(ckpt.optimizer);
        resume = posFromCkpt(ckpt.state);
      }
      const task = sftTask({ model: policy, train, eval: evalPairs, padId, params, evalBatchSize: cfg.eval_batch_size, onEval: sampler('sft') });
      const res = await runStageWith('sft', task, st, optimizer, params, resume, { summary: {} });
      sftSummary = { ...res.lastMetrics, ...res.lastEval };
      optimizer.dispose();
      if (lora) mergeLora(policy);
      timings.sft_s = (Date.now() - tl) / 1000;
    }
    checkAbort('after SFT');

    // ---- DPO ----
    tl = Date.now();
    if (lora) applyLora(policy, lora, { seed: cfg.seed + 1 });
    const params = trainableParams(policy);
    const st = dpoStage(cfg);
    const optimizer = new Optimizer(params, optimizerSettings(cfg, st));
    let refSource: ReferenceSource = { kind: 'none' };
    let resume: StagePosition | null = null;
    if (inDpo) {
      assignVariables(policy.params, ckpt!.policy, 'checkpoint policy');
      optimizer.setState(ckpt!.optimizer);
      resume = posFromCkpt(ckpt!.state);
    }
    let precomputed: { train: RefLogps; eval: RefLogps } | null = null;
    if (needsReference(lossOpts)) {
      if (lora) refSource = { kind: 'lora' };
      else if (cfg.precompute_ref_log_probs) {
        if (inDpo && ckpt!.refLogps) {
          const g = (k: string): Float32Array => ckpt!.refLogps!.get(k)?.data ?? new Float32Array(0);
          precomputed = {
            train: { chosen: g('train_chosen'), rejected: g('train_rejected') },
            eval: { chosen: g('eval_chosen'), rejected: g('eval_rejected') },
          };
        } else {
          const tp = Date.now();
          precomputed = {
            train: scorePairs(policy, train, padId, cfg.eval_batch_size),
            eval: scorePairs(policy, evalPairs, padId, cfg.eval_batch_size),
          };
          logger.info({ pairs: train.length + evalPairs.length, seconds: (Date.now() - tp) / 1000 }, 'reference log-probs precomputed');
        }
        refSource = { kind: 'precomputed', ...precomputed };
      } else {
        reference = cloneModel(policy, { trainable: false });
        if (inDpo) {
          if (!ckpt!.reference)
            throw new ConfigError('resume_from_checkpoint', `${ckptDir} has no reference weights; it was written with other reference settings`);
          assignVariables(reference.params, ckpt!.reference, 'checkpoint reference');
        }
        refSource = { kind: 'model', model: reference };
      }
    }
    const syncSettings = {
      syncRefModel: cfg.sync_ref_model,
      refModelSyncSteps: cfg.ref_model_sync_steps,
      refModelUpdateSteps: cfg.ref_model_update_steps ?? undefined,
    };
    const task = dpoTask({
      policy,
      reference: refSource,
      train,
      eval: evalPairs,
      padId,
      loss: lossOpts,
      params,
      evalBatchSize: cfg.eval_batch_size,
      logitStats: cfg.log_logit_stats,
      onEval: sampler('dpo'),
      afterStep: (step) => {
        if (!reference) return;
        const due = referenceSyncDue(step, syncSettings);
        if (due === 'soft') softSyncReference(policy.params, reference.params, cfg.ref_model_mixup_alpha);
        else if (due === 'hard') hardSyncReference(policy.params, reference.params);
      },
    });
    const refLogpsHost = precomputed
      ? new Map([
          ['train_chosen', { shape: [precomputed.train.chosen.length], data: precomputed.train.chosen }],
          ['train_rejected', { shape: [precomputed.train.rejected.length], data: precomputed.train.rejected }],
          ['eval_chosen', { shape: [precomputed.eval.chosen.length], data: precomputed.eval.chosen }],
          ['eval_rejected', { shape: [precomputed.eval.rejected.length], data: precomputed.eval.rejected }],
        ])
      : null;
    const dpoRes = await runStageWith('dpo', task, st, optimizer, params, resume, {
      summary: sftSummary,
      reference: reference ? reference.params : null,
      refLogps: refLogpsHost,
    });
    optimizer.dispose();
    timings.dpo_s = (Date.now() - tl) / 1000;
    progress.stop();

    // ---- export ----
    tl = Date.now();
    const modelDir = join(outputDir, 'model');
    rmSync(modelDir, { recursive: true, force: true });
    if (lora && !cfg.lora.merge) {
      const m = policy as unknown as { adaptersEnabled: boolean };
      m.adaptersEnabled = false;
      try {
        await saveModelHF(policy, modelDir, { dtype: cfg.save_dtype, tokenizer });
      } finally {
        m.adaptersEnabled = true;
      }
      await saveLoraAdapter(policy, modelDir, { baseModel: '.' });
    } else {
      if (lora) mergeLora(policy);
      await saveModelHF(policy, modelDir, { dtype: cfg.save_dtype, tokenizer });
    }
    await writeExtras(outputDir, cfg, logger);
    timings.export_s = (Date.now() - tl) / 1000;
    timings.total_s = (Date.now() - t0) / 1000;

    const dpoSummary = { ...dpoRes.lastMetrics, ...dpoRes.lastEval };
    const runJson = {
      config: cfg,
      versions: {
        node: process.version,
        'dpo-service': readPkgVersion(),
        '@tensorflow/tfjs-core': packageVersion('@tensorflow/tfjs-core'),
        '@tensorflow/tfjs-backend-wasm': packageVersion('@tensorflow/tfjs-backend-wasm'),
      },
      backend,
      model: { name_or_path: cfg.model.name_or_path, source, config: policy.config },
      data: {
        sha256: dataHash,
        examples: examples.length,
        train_pairs: train.length,
        eval_pairs: evalPairs.length,
        dropped: trainTok.stats.dropped + evalTok.stats.dropped,
        truncated: trainTok.stats.truncated + evalTok.stats.truncated,
      },
      resumed_from: ckptDir,
      timings,
      metrics: { sft: sftSummary, dpo: dpoSummary },
      finished_at: new Date().toISOString(),
    };
    writeFileSync(join(outputDir, 'run.json'), JSON.stringify(runJson, null, 2) + '\n');
    await writeManifest(outputDir);
    logger.info(
      { artifactDir: outputDir, seconds: timings.total_s, 'rewards/accuracies': dpoSummary['rewards/accuracies'], 'tokens/s': dpoSummary['tokens/s'] },
      'training finished',
    );
    return { artifactDir: outputDir, metrics: { sft: sftSummary, dpo: dpoSummary } };
  } finally {
    progress?.stop();
    reference?.dispose();
    policy.dispose();
  }
}

function readPkgVersion(): string | null {
  try {
    return (JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

function stateOf(
  stage: 'sft' | 'dpo',
  pos: StagePosition & { totalSteps: number; complete: boolean },
  optimizer: Optimizer,
  configHash: string,
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
    configHash,
    savedAt: new Date().toISOString(),
  };
}

/**
 * TensorBoard events (`tensorboard/`, tags `<stage>/<metric>` at the stage's step) and the PNG plot
 * (`training_plot.png`: loss, rewards/accuracies, rewards/margins) from metrics.jsonl, with LOSSES' writers.
 * Written from the (resume-truncated) metrics.jsonl so that they describe exactly the logged run.
 */
async function writeExtras(outputDir: string, cfg: TrainConfig, logger: Logger): Promise<void> {
  const jsonl = join(outputDir, 'metrics.jsonl');
  const records = readMetricsJsonl(jsonl);
  const tbDir = join(outputDir, 'tensorboard');
  rmSync(tbDir, { recursive: true, force: true });
  if (cfg.tensorboard) {
    const tb = new TensorBoardWriter(tbDir);
    try {
      for (const r of records) {
        const { stage, step, ...rest } = r;
        tb.scalars(rest, Number(step ?? 0), `${String(stage ?? 'train')}/`);
      }
    } finally {
      tb.close();
    }
  }
  if (cfg.plot) {
    try {
      await writeTrainingPlot(jsonl, join(outputDir, 'training_plot.png'));
    } catch (e) {
      logger.warn({ err: (e as Error).message }, 'training plot not written');
    }
  }
}

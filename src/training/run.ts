/**
 * runTraining: the whole training job of `dpo train` and of the worker, as a short script over the phases in
 * ./pipeline/ — the resume point, backend + model + tokenizer, data, SFT on prompt + chosen,
 * the DPO reference, DPO, and the artifact:
 *   outputDir/{model/, metrics.jsonl, samples.jsonl?, tensorboard/?, training_plot.png?, run.json, manifest.json}
 * (manifest.json last, listing every other file with its size and sha256), plus `checkpoints/` when
 * `save_steps` is set.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import pino, { type Logger } from 'pino';
import { lossOptions, type TrainConfig } from '../config/index.js';
import { exportModel, writeExtras, writeRunRecord } from './pipeline/artifact.js';
import { loadBackendAndModel } from './pipeline/backend-model.js';
import { prepareData } from './pipeline/data.js';
import { createReference, type Reference } from './pipeline/reference.js';
import { checkResumeData, type GivenSettings, loadResumePoint, resumedConfig } from './pipeline/resume.js';
import { Sampler } from './pipeline/samples.js';
import { attachDpoAdapters, runDpo, runSft, type StageRun } from './pipeline/stages.js';
import { MetricsFile, ProgressReporter } from './trainer/monitor.js';
import { asInsufficientMemory, availableMemory, checkMemory, formatEstimate, type MemoryEstimate } from './plan/memory.js';
import { needsReference } from './losses/index.js';
import { sizeNativePool } from './engine/native-backend.js';
import { TrainingAbortedError } from './trainer/stage.js';
import { prepareOnlineData, preferenceRowsOnly } from './online/data.js';
import { runOnlineDpo } from './online/stage.js';
import type { DatasetRow, ProgressEvent, TrainingEvent, TrainResult } from './types.js';

export { TrainingAbortedError } from './trainer/stage.js';

export interface RunTrainingOptions {
  /**
   * The resolved configuration (src/config loadConfig, run once by the caller: the CLI from its file and
   * overrides, the training child from the job's config). runTraining does not resolve it again.
   */
  config: TrainConfig;
  /**
   * What the caller resolved `config` from (the CLI's file and overrides, the job's config object), so a
   * resume can tell the settings given on the resume command from defaults; absent: the settings whose value
   * differs from config/config.yaml's.
   */
  given?: GivenSettings;
  /** Called with the config the run trains with (after a resume restored the checkpoint's) and the output dir. */
  onConfig?: (cfg: TrainConfig, outputDir: string) => void;
  /** Training data instead of `datasets`: examples (prompts for `stage: online_dpo`), or a path / registered name. */
  dataset?: DatasetRow[] | string;
  /** Where the artifact is written (overrides `output_dir`). */
  outputDir: string;
  onProgress?: (e: ProgressEvent) => void;
  /** Milestones for the job's event log (model loading, data counts, warnings). */
  onEvent?: (e: TrainingEvent) => void;
  /** Abort between steps (TrainingAbortedError). */
  signal?: AbortSignal;
  logger?: Logger;
}

function checkAbort(signal: AbortSignal | undefined, where: string): void {
  if (signal?.aborted) throw new TrainingAbortedError(`training aborted ${where}`);
}

/**
 * Run SFT then DPO (each skipped when its `enabled` is false) and write the artifact (see the module doc).
 * @returns the artifact directory and the final metrics of each stage (last logged train step + last eval)
 * @throws ConfigError (INVALID_CONFIG) when no training pair fits max_length; DataError for unreadable data;
 *   model errors from loadPretrained; TrainingAbortedError when `signal` aborts; CheckpointError for a bad
 *   `resume_from_checkpoint`
 */
export async function runTraining(options: RunTrainingOptions): Promise<TrainResult> {
  const t0 = Date.now();
  const logger = options.logger ?? pino({ level: process.env.LOG_LEVEL ?? 'info' });
  const requested = options.config;
  const outputDir = resolve(options.outputDir ?? requested.output_dir ?? 'output');
  mkdirSync(outputDir, { recursive: true });
  const point = await loadResumePoint(requested, outputDir, logger);
  const cfg = point ? resumedConfig(requested, point, options.given ?? {}, logger) : requested;
  const loss = lossOptions(cfg);
  options.onConfig?.(cfg, outputDir);
  options.onEvent?.({ type: 'model.loading', message: `loading ${cfg.model.name_or_path}`, data: { model: cfg.model.name_or_path } });
  const { backend, policy, tokenizer, source, loadSeconds } = await loadBackendAndModel(cfg, logger);
  const progress = new ProgressReporter(logger, cfg.progress_bar, options.onProgress);
  let reference: Reference | null = null;
  let memory: MemoryEstimate | null = null;
  try {
    // refuse a run that cannot fit before anything trains (INSUFFICIENT_MEMORY names what would fit)
    memory = checkMemory(policy.config, cfg, { needsReference: cfg.dpo.enabled && needsReference(loss) });
    const available = availableMemory();
    logger.info({ memory }, formatEstimate(memory, available));
    // the native buffer pool may keep what the run has to spare beyond its estimate (DPO_NATIVE_POOL_MB unset)
    const pool = sizeNativePool(available - memory.totalBytes);
    if (pool !== null) logger.info({ pool_mb: Math.round(pool / 2 ** 20) }, `native buffer pool sized to ${Math.round(pool / 2 ** 20)} MB`);
    const tData = Date.now();
    const online = cfg.stage === 'online_dpo' ? await prepareOnlineData(cfg, tokenizer, logger, options.dataset) : null;
    const data = online ?? (await prepareData(cfg, tokenizer, logger, preferenceRowsOnly(options.dataset)));
    checkResumeData(point, data.stats.sha256, cfg, logger);
    const counts = {
      examples: data.stats.examples,
      train: data.stats.train_pairs,
      eval: data.stats.eval_pairs,
      dropped: data.stats.dropped,
      truncated: data.stats.truncated,
      truncated_fraction: data.stats.truncated_fraction,
      max_length: cfg.max_length,
      // the data phase's warnings (more than 10% truncated, naming max_length; invalid pairs dropped)
      warnings: data.stats.warnings,
    };
    options.onEvent?.({ type: 'data.ready', message: `${counts.train} training and ${counts.eval} eval pairs`, data: counts });
    for (const w of data.stats.warnings) options.onEvent?.({ type: 'warning', level: 'warn', message: w, data: counts });
    if (counts.dropped > 0)
      options.onEvent?.({ type: 'warning', level: 'warn', message: `${counts.dropped} pairs dropped: they do not fit max_length`, data: counts });
    const timings: Record<string, number> = { load_model_s: loadSeconds, load_data_s: (Date.now() - tData) / 1000 };
    checkAbort(options.signal, 'before training');
    const metrics = new MetricsFile(join(outputDir, 'metrics.jsonl'), point && { stage: point.state.stage, step: point.state.step });
    const sampler = new Sampler({ cfg, policy, tokenizer, evalPairs: data.eval, outputDir, resumed: point !== null });
    const run: StageRun = {
      cfg,
      outputDir,
      policy,
      data,
      signal: options.signal,
      logger,
      log: (r) => metrics.append(r),
      progress: (p) => progress.update(p),
      onEval: (stage) => sampler.onEval(stage),
    };
    // online DPO from bare prompts has no SFT target: SFT is skipped
    const sft = data.train.length > 0 ? await runSft(run, point) : { summary: {}, seconds: 0 };
    checkAbort(options.signal, 'after SFT');
    const tDpo = Date.now();
    let dpo: { summary: Record<string, number>; seconds: number } = { summary: {}, seconds: 0 };
    // dpo.enabled=false (method "sft"): no adapters, no reference, no preference stage; the artifact is the SFT model
    if (cfg.dpo.enabled) {
      attachDpoAdapters(run);
      reference = createReference({ cfg, loss, policy, data, resume: point?.state.stage === 'dpo' ? point : null, logger });
      dpo = online
        ? await runOnlineDpo(run, { loss, reference, point, sftSummary: sft.summary, tokenizer, data: online })
        : await runDpo(run, { loss, reference, point, sftSummary: sft.summary });
    } else logger.info('dpo.enabled is false: the preference stage is skipped, the artifact is the SFT model');
    Object.assign(timings, { sft_s: sft.seconds, dpo_s: (Date.now() - tDpo) / 1000 });
    progress.stop();

    const tExport = Date.now();
    await exportModel(policy, cfg, tokenizer, outputDir);
    await writeExtras(outputDir, cfg, logger);
    Object.assign(timings, { export_s: (Date.now() - tExport) / 1000, total_s: (Date.now() - t0) / 1000 });
    await writeRunRecord(outputDir, {
      config: cfg,
      backend,
      data: data.stats,
      resumed_from: point?.dir ?? null,
      timings,
      model: { name_or_path: cfg.model.name_or_path, source, config: policy.config },
      metrics: { sft: sft.summary, dpo: dpo.summary },
    });
    const d = dpo.summary;
    logger.info(
      { artifactDir: outputDir, seconds: timings.total_s, 'rewards/accuracies': d['rewards/accuracies'], 'tokens/s': d['tokens/s'] },
      'training finished',
    );
    return { artifactDir: outputDir, metrics: { sft: sft.summary, dpo: dpo.summary } };
  } catch (e) {
    throw asInsufficientMemory(e, memory);
  } finally {
    progress.stop();
    reference?.dispose();
    policy.dispose();
  }
}

/**
 * Pipeline phase: the artifact — the model (`model/`: HF weights + config + tokenizer; under LoRA without
 * `lora.merge`, the base weights plus a PEFT adapter), the TensorBoard events and the PNG plot derived from
 * metrics.jsonl, `run.json` (config, versions, backend, model, data, timings, final metrics) and
 * `manifest.json` last (every other file with its size and sha256).
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { repoRoot, type TrainConfig } from '../../config/index.js';
import { writeManifest } from '../../storage/manifest.js';
import type { BackendInfo } from '../engine/backend.js';
import { readMetricsJsonl, TensorBoardWriter, writeTrainingPlot } from '../metrics/index.js';
import { mergeLora, saveLoraAdapter, saveModelHF, type GenerativeLM } from '../models/index.js';
import type { Tokenizer } from '../types.js';
import type { DataStats } from './data.js';

/**
 * Write `<outputDir>/model` (replacing any earlier one). Under LoRA with `lora.merge: false` the base
 * weights are saved with the adapters disabled and the adapters as PEFT files next to them (their
 * `base_model_name_or_path` is the configured `model.name_or_path`); otherwise the adapters (if any) are
 * merged first.
 * @returns the model directory
 */
export async function exportModel(
  policy: GenerativeLM,
  cfg: Pick<TrainConfig, 'lora' | 'save_dtype' | 'model'>,
  tokenizer: Tokenizer,
  outputDir: string,
): Promise<string> {
  const modelDir = join(outputDir, 'model');
  rmSync(modelDir, { recursive: true, force: true });
  if (cfg.lora.enabled && !cfg.lora.merge) {
    policy.adaptersEnabled = false;
    try {
      await saveModelHF(policy, modelDir, { dtype: cfg.save_dtype, tokenizer });
    } finally {
      policy.adaptersEnabled = true;
    }
    await saveLoraAdapter(policy, modelDir, { baseModel: cfg.model.name_or_path });
  } else {
    if (cfg.lora.enabled) mergeLora(policy);
    await saveModelHF(policy, modelDir, { dtype: cfg.save_dtype, tokenizer });
  }
  return modelDir;
}

/**
 * TensorBoard events (`tensorboard/`, tags `<stage>/<metric>` at the stage's step) and the PNG plot
 * (`training_plot.png`: loss, rewards/accuracies, rewards/margins), both from metrics.jsonl — which a resume
 * has cut back to the checkpoint — so that they describe exactly the logged run. A plot that cannot be
 * drawn is logged as a warning, not thrown.
 */
export async function writeExtras(outputDir: string, cfg: Pick<TrainConfig, 'tensorboard' | 'plot'>, logger: Logger): Promise<void> {
  const jsonl = join(outputDir, 'metrics.jsonl');
  const tbDir = join(outputDir, 'tensorboard');
  rmSync(tbDir, { recursive: true, force: true });
  if (cfg.tensorboard) {
    const tb = new TensorBoardWriter(tbDir);
    try {
      for (const r of readMetricsJsonl(jsonl)) {
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

function packageVersion(...path: string[]): string | null {
  try {
    return (JSON.parse(readFileSync(join(repoRoot(), ...path, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

/** The contents of run.json. */
export interface RunRecord {
  config: TrainConfig;
  versions: Record<string, string | null>;
  backend: BackendInfo;
  model: { name_or_path: string; source: string; config: GenerativeLM['config'] };
  data: DataStats;
  /** The checkpoint directory a resumed run continued from. */
  resumed_from: string | null;
  /** Seconds per phase (`load_model_s`, `load_data_s`, `sft_s`, `dpo_s`, `export_s`, `total_s`). */
  timings: Record<string, number>;
  metrics: { sft: Record<string, number>; dpo: Record<string, number> };
  finished_at: string;
}

/** Versions recorded in run.json (null when a package cannot be read). */
export function runVersions(): Record<string, string | null> {
  return {
    node: process.version,
    'dpo-service': packageVersion(),
    '@tensorflow/tfjs-core': packageVersion('node_modules', '@tensorflow', 'tfjs-core'),
    '@tensorflow/tfjs-backend-wasm': packageVersion('node_modules', '@tensorflow', 'tfjs-backend-wasm'),
  };
}

/** Write run.json, then manifest.json over every file of the artifact (so it must come last). */
export async function writeRunRecord(outputDir: string, record: Omit<RunRecord, 'versions' | 'finished_at'>): Promise<RunRecord> {
  const { config, ...rest } = record;
  const full: RunRecord = { config, versions: runVersions(), ...rest, finished_at: new Date().toISOString() };
  writeFileSync(join(outputDir, 'run.json'), `${JSON.stringify(full, null, 2)}\n`);
  await writeManifest(outputDir);
  return full;
}

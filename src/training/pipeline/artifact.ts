/**
 * Pipeline phase: the artifact — the model (`model/`: HF weights + config + tokenizer; under LoRA without
 * `lora.merge`, the base weights plus a PEFT adapter), the TensorBoard events and the PNG plot derived from
 * metrics.jsonl, `run.json` (config, versions, backend, model, data, timings, final metrics) and
 * `manifest.json` last (every other file with its size and sha256).
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { repoRoot, type TrainConfig } from '../../config/index.js';
import { writeManifest } from '../../storage/manifest.js';
import type { BackendInfo } from '../engine/backend.js';
import { readMetricsJsonl, TensorBoardWriter, writeTrainingPlot } from '../metrics/index.js';
import { mergeLora, saveLoraAdapter, saveModelHF, type GenerativeLM } from '../models/index.js';
import type { Tokenizer } from '../types.js';
import type { DataStats } from './data.js';
import type { SampleRecord } from './samples.js';

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

/** Where each stage sits on TensorBoard's step axis: SFT at its own steps, DPO after the last SFT step. */
export function stageStepOffsets(records: Array<Record<string, unknown>>): { sft: number; dpo: number } {
  let sftSteps = 0;
  for (const r of records) if (r.stage === 'sft') sftSteps = Math.max(sftSteps, Number(r.step ?? 0));
  return { sft: 0, dpo: sftSteps };
}

/** TRL / transformers tag of a metrics key: `eval_<m>` → `eval/<m>`, anything else → `train/<m>`. */
export function tensorboardTag(key: string): string {
  return key.startsWith('eval_') ? `eval/${key.slice(5)}` : `train/${key}`;
}

/** A config as flat `a.b` → value pairs (the HParams dashboard's columns). */
export function flatHparams(o: Record<string, unknown>, prefix = ''): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) Object.assign(out, flatHparams(v as Record<string, unknown>, `${prefix}${k}.`));
    else out[`${prefix}${k}`] = v;
  }
  return out;
}

function readSamples(path: string): SampleRecord[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as SampleRecord];
      } catch {
        return [];
      }
    });
}

/**
 * TensorBoard events (`tensorboard/`) and the PNG plot (`training_plot.png`: loss, rewards/accuracies,
 * rewards/margins), both from metrics.jsonl — which a resume has cut back to the checkpoint — so that they
 * describe exactly the logged run. A plot that cannot be drawn is logged as a warning, not thrown.
 *
 * TensorBoard layout (TRL's names): scalars `train/<metric>` and `eval/<metric>` (`eval_loss` → `eval/loss`)
 * on one step axis, SFT at steps 1..S and DPO at S+1..S+D (a text summary `stages` at step 0 says where each
 * stage starts); model samples as text `samples/<stage>` at their step; the config as hyper-parameters.
 */
export async function writeExtras(outputDir: string, cfg: Pick<TrainConfig, 'tensorboard' | 'plot'> & Partial<TrainConfig>, logger: Logger): Promise<void> {
  const jsonl = join(outputDir, 'metrics.jsonl');
  const tbDir = join(outputDir, 'tensorboard');
  rmSync(tbDir, { recursive: true, force: true });
  if (cfg.tensorboard) {
    const records = readMetricsJsonl(jsonl);
    const offsets = stageStepOffsets(records);
    const at = (stage: unknown, step: unknown): number => Number(step ?? 0) + (stage === 'dpo' ? offsets.dpo : offsets.sft);
    const tb = new TensorBoardWriter(tbDir);
    try {
      tb.hparams(flatHparams(cfg), { end: true });
      const last = (stage: string) => Math.max(0, ...records.filter((r) => r.stage === stage).map((r) => Number(r.step ?? 0)));
      tb.text(
        'stages',
        `SFT: steps 1-${last('sft')}; DPO: steps ${offsets.dpo + 1}-${offsets.dpo + last('dpo')} (DPO step n is shown at ${offsets.dpo} + n)`,
        0,
      );
      for (const r of records) {
        const { stage, step, ...rest } = r;
        for (const [k, v] of Object.entries(rest)) if (typeof v === 'number') tb.scalar(tensorboardTag(k), v, at(stage, step));
      }
      const groups = new Map<string, SampleRecord[]>();
      for (const s of readSamples(join(outputDir, 'samples.jsonl'))) {
        const key = `${s.stage}\u0000${s.step}`;
        groups.set(key, [...(groups.get(key) ?? []), s]);
      }
      for (const list of groups.values()) {
        const { stage, step } = list[0]!;
        const md = list
          .map((s) => `**prompt ${s.index}**\n\n    ${s.prompt.replace(/\n/g, '\n    ')}\n\n**completion**\n\n    ${s.completion.replace(/\n/g, '\n    ')}`)
          .join('\n\n---\n\n');
        tb.text(`samples/${stage}`, md, at(stage, step));
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

/**
 * `dpo train --dry-run`: the plan of a run without training it — the model's shape, the data after
 * tokenisation, each stage's optimizer steps and tokens, and the memory estimate (memory.ts) against the
 * memory available. Reads the model's config.json (Hugging Face directories: no weights are loaded) or loads
 * a small built-in / llama2.c model to learn its shape.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { dpoStage, lossOptions, sftStage, type TrainConfig } from '../../config/index.js';
import { needsReference } from '../losses/index.js';
import { loadPretrained, parseHFConfig } from '../models/index.js';
import { prepareData } from '../pipeline/data.js';
import { loadTokenizer } from '../tokenizers/index.js';
import { stagePlan } from '../trainer/stage.js';
import type { ModelConfig, Tokenizer } from '../types.js';
import { InsufficientMemoryError, availableMemory, checkMemory, estimateMemory, formatEstimate, parameterShapes, type MemoryEstimate } from './memory.js';

export interface RunPlan {
  model: { name_or_path: string; architecture: string; parameters: number; layers: number; hidden: number; vocab: number };
  data: { train_pairs: number; eval_pairs: number; dropped: number; truncated: number };
  stages: Array<{ stage: 'sft' | 'dpo'; steps: number; examples_per_step: number; max_tokens: number }>;
  reference: 'none' | 'lora' | 'precomputed' | 'model';
  memory: MemoryEstimate & { availableBytes: number; fits: boolean; summary: string };
  /** when the estimate does not fit: the error training would raise (with the settings that would fit) */
  refusal: InsufficientMemoryError | null;
}

/** The model's shape from its config.json when it has one (no weights read), else by loading it, plus its tokenizer. */
export async function modelShape(nameOrPath: string, tokenizerPath: string | null): Promise<{ config: ModelConfig; tokenizer: Tokenizer }> {
  let dir: string | null = null;
  if (existsSync(nameOrPath)) dir = statSync(nameOrPath).isDirectory() ? nameOrPath : dirname(nameOrPath);
  if (dir && existsSync(join(dir, 'config.json'))) {
    const config = parseHFConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
    return { config, tokenizer: await loadTokenizer(tokenizerPath ?? dir) };
  }
  const { model, tokenizer } = await loadPretrained(nameOrPath);
  const config = { ...model.config };
  model.dispose();
  return { config, tokenizer: tokenizerPath ? await loadTokenizer(tokenizerPath) : tokenizer };
}

/**
 * The plan of a run of `cfg` (see the file comment).
 * @throws ConfigError, DataError, model errors as training would
 */
export async function planRun(cfg: TrainConfig, logger: Logger): Promise<RunPlan> {
  const { config, tokenizer } = await modelShape(cfg.model.name_or_path, cfg.model.tokenizer_name_or_path ?? null);
  const data = await prepareData(cfg, tokenizer, logger);
  const loss = lossOptions(cfg);
  const stages: RunPlan['stages'] = [];
  const add = (stage: 'sft' | 'dpo', s: ReturnType<typeof sftStage>, rowsPerExample: number): void => {
    const p = stagePlan(data.train.length, s);
    stages.push({ stage, steps: p.totalSteps, examples_per_step: p.perStep, max_tokens: p.totalSteps * p.perStep * rowsPerExample * cfg.max_length });
  };
  if (cfg.sft.enabled) add('sft', sftStage(cfg), 1);
  if (cfg.dpo.enabled) add('dpo', dpoStage(cfg), 2);
  const ref = cfg.dpo.enabled && needsReference(loss);
  const est = estimateMemory(config, cfg, ref);
  const available = availableMemory();
  let refusal: InsufficientMemoryError | null = null;
  try {
    checkMemory(config, cfg, { needsReference: ref, available });
  } catch (e) {
    if (!(e instanceof InsufficientMemoryError)) throw e;
    refusal = e;
  }
  return {
    model: {
      name_or_path: cfg.model.name_or_path,
      architecture: config.modelType,
      parameters: parameterShapes(config).total,
      layers: config.numLayers,
      hidden: config.hiddenSize,
      vocab: config.vocabSize,
    },
    data: { train_pairs: data.stats.train_pairs, eval_pairs: data.stats.eval_pairs, dropped: data.stats.dropped, truncated: data.stats.truncated },
    stages,
    reference: !ref ? 'none' : cfg.lora.enabled ? 'lora' : cfg.precompute_ref_log_probs ? 'precomputed' : 'model',
    memory: { ...est, availableBytes: available, fits: est.totalBytes <= available, summary: formatEstimate(est, available) },
    refusal,
  };
}

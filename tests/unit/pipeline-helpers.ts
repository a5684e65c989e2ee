/** Shared set-up of the pipeline phase tests: a small resolved config on stories260K + toy data, a silent logger. */
import pino from 'pino';
import { loadConfig, type TrainConfig } from '../../src/config/index.js';
import { initBackend } from '../../src/training/engine/backend.js';

export const silent = pino({ level: 'silent' });

/** Settings that keep a phase fast: two steps per stage, a small eval split, no extras. */
export const SMALL = [
  'backend=wasm',
  'sft.max_steps=2',
  'max_steps=2',
  'batch_size=2',
  'n_eval_examples=2',
  'n_eval_model_samples=0',
  'progress_bar=false',
  'tensorboard=false',
  'plot=false',
  'log_logit_stats=false',
];

/** The resolved config of SMALL plus `extra` overrides (the wasm backend started). */
export async function smallConfig(extra: string[] = []): Promise<TrainConfig> {
  await initBackend('wasm');
  return loadConfig({ overrides: [...SMALL, ...extra] });
}

/** Shared set-up of the trainer tests: the wasm backend, stories260K, tokenized toy pairs, stage settings. */
import type * as tf from '@tensorflow/tfjs-core';
import type { StageSettings } from '../../src/config/index.js';
import { loadPreferenceExamples, resolvePadId, tokenizeDataset, type TokenizedPair } from '../../src/training/data/index.js';
import { initBackend } from '../../src/training/engine/backend.js';
import { loadPretrained, type GenerativeLM } from '../../src/training/models/index.js';
import type { OptimizerSettings } from '../../src/training/trainer/optimizer.js';
import type { Tokenizer } from '../../src/training/types.js';

let cache: { pairs: TokenizedPair[]; tokenizer: Tokenizer; padId: number } | null = null;

/** Toy pairs tokenized for stories260K (max_length 64). */
export async function toyPairs(): Promise<{ pairs: TokenizedPair[]; tokenizer: Tokenizer; padId: number }> {
  await initBackend('auto');
  if (cache) return cache;
  const { model, tokenizer } = await loadPretrained('stories260K');
  model.dispose();
  const ex = await loadPreferenceExamples('toy');
  const { pairs } = tokenizeDataset(ex, tokenizer, { maxLength: 64, maxPromptLength: 32, truncationMode: 'keep_end' });
  cache = { pairs, tokenizer, padId: resolvePadId(tokenizer) };
  return cache;
}

export async function stories(): Promise<GenerativeLM> {
  await initBackend('auto');
  return (await loadPretrained('stories260K')).model;
}

export function trainable(model: { params: Map<string, tf.Variable> }): Map<string, tf.Variable> {
  return new Map([...model.params].filter(([, v]) => v.trainable));
}

export function stage(over: Partial<StageSettings> = {}): StageSettings {
  return {
    n_epochs: null,
    max_steps: 2,
    n_examples: null,
    batch_size: 2,
    gradient_accumulation_steps: 1,
    lr: 1e-3,
    warmup_steps: 0,
    warmup_ratio: 0,
    lr_scheduler: 'constant',
    optimizer: 'adamw',
    weight_decay: 0,
    max_grad_norm: null,
    ...over,
  };
}

export function optim(name: OptimizerSettings['name'] = 'adamw', over: Partial<OptimizerSettings> = {}): OptimizerSettings {
  return { name, weightDecay: 0, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, rmspropAlpha: 0.99, momentum: 0, ...over };
}

export function snapshot(vars: Map<string, tf.Variable>): Map<string, Float32Array> {
  return new Map([...vars].map(([k, v]) => [k, (v.dataSync() as Float32Array).slice()]));
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

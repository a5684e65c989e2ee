/**
 * LoRA in the trainer: only the adapters train (base weights unchanged), the reference is the adapter-disabled
 * model (first DPO loss = ln 2), merging folds the adapters into weights that reproduce the adapted logits, and
 * runTraining exports a merged model or, with lora.merge=false, a PEFT adapter next to the base.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import pino from 'pino';
import { resolveLossOptions } from '../../src/training/losses/index.js';
import { applyLora, loadModel, mergeLora, saveModelHF } from '../../src/training/models/index.js';
import { runTraining } from '../../src/training/run.js';
import { runStage } from '../../src/training/trainer/stage.js';
import { dpoTask } from '../../src/training/trainer/tasks.js';
import { maxAbsDiff, optim, snapshot, stage, stories, toyPairs, trainable } from './trainer-helpers.js';
import { loadConfig } from '../../src/config/index.js';

test('LoRA: only adapters train, reference = adapters disabled, merge/export reproduce the adapted model', async () => {
  const { pairs, padId } = await toyPairs();
  const policy = await stories();
  const base = snapshot(policy.params);
  applyLora(policy, { r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj'] }, { seed: 0 });
  const params = trainable(policy);
  assert.ok(params.size > 0);
  for (const k of params.keys()) assert.match(k, /lora_[AB]\.weight$/);
  const adaptersBefore = snapshot(params);
  const records: Array<Record<string, number | string>> = [];
  const task = dpoTask({
    policy,
    reference: { kind: 'lora' },
    train: pairs.slice(0, 8),
    eval: [],
    padId,
    loss: resolveLossOptions({ name: 'dpo' }),
    params,
    evalBatchSize: 4,
    logitStats: false,
  });
  const res = await runStage(
    task,
    {
      settings: stage({ max_steps: 3, batch_size: 2, lr: 1e-2 }),
      optimizer: optim('adamw'),
      params,
      seed: 0,
      evalEvery: null,
      doFirstEval: false,
      logEvery: 1,
      saveSteps: null,
    },
    { log: (r) => void records.push(r) },
  );
  res.optimizer.dispose();
  assert.ok(Math.abs(Number(records[0]!.loss) - Math.LN2) < 1e-5, `first loss ${records[0]!.loss} = ln 2`);
  assert.ok(Number(records[2]!['rewards/margins']) > 0, 'the adapters learn a positive margin');
  for (const [k, v] of base) assert.equal(maxAbsDiff(policy.params.get(k)!.dataSync() as Float32Array, v), 0, `base ${k} unchanged`);
  for (const [k, v] of adaptersBefore) if (k.includes('lora_B')) assert.ok(maxAbsDiff(params.get(k)!.dataSync() as Float32Array, v) > 0, `${k} trained`);

  const ids = tf.tensor2d([[1, 45, 300, 12, 99, 7]], [1, 6], 'int32');
  const adapted = policy.logits(ids).dataSync() as Float32Array;
  const dir = mkdtempSync(join(tmpdir(), 'lora-export-'));
  await saveModelHF(policy, dir);
  const reloaded = await loadModel(dir);
  const fromExport = reloaded.logits(ids).dataSync() as Float32Array;
  mergeLora(policy);
  const merged = policy.logits(ids).dataSync() as Float32Array;
  const scale = Math.max(...adapted.map(Math.abs));
  assert.ok(maxAbsDiff(adapted, merged) < 1e-4 * scale, 'merged weights reproduce the adapted logits');
  assert.ok(maxAbsDiff(adapted, fromExport) < 1e-4 * scale, 'the exported HF model reproduces the adapted logits');
  tf.dispose(ids);
  reloaded.dispose();
  policy.dispose();
});

test('runTraining with lora.merge=false saves a PEFT adapter next to the base model', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lora-run-'));
  await runTraining({
    outputDir: dir,
    logger: pino({ level: 'silent' }),
    config: loadConfig({
      overrides: [
        'lora.enabled=true',
        'lora.merge=false',
        'lora.r=2',
        'sft.max_steps=2',
        'max_steps=2',
        'batch_size=2',
        'n_eval_model_samples=0',
        'progress_bar=false',
        'tensorboard=false',
        'plot=false',
      ],
    }),
  });
  for (const f of ['model/adapter_model.safetensors', 'model/adapter_config.json', 'model/model.safetensors', 'model/config.json']) {
    assert.ok(existsSync(join(dir, f)), `${f} exists`);
  }
  const cfg = JSON.parse(readFileSync(join(dir, 'model/adapter_config.json'), 'utf8'));
  assert.equal(cfg.r, 2);
});

/**
 * Pipeline phase artifact: a LoRA export without merging writes base weights + a PEFT adapter, a merged export
 * writes the adapted weights; TensorBoard + plot come from metrics.jsonl; run.json then a manifest that verifies.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { verifyManifest } from '../../src/storage/manifest.js';
import { currentBackend } from '../../src/training/engine/backend.js';
import { applyLora, loadModel } from '../../src/training/models/index.js';
import { exportModel, writeExtras, writeRunRecord } from '../../src/training/pipeline/artifact.js';
import { silent, smallConfig } from './pipeline-helpers.js';
import { stories, toyPairs } from './trainer-helpers.js';

test('LoRA without merge: base weights and a PEFT adapter; with merge: the adapted weights', async () => {
  const { tokenizer } = await toyPairs();
  for (const merge of [false, true]) {
    const cfg = await smallConfig(['lora.enabled=true', `lora.merge=${merge}`]);
    const policy = await stories();
    const base = (policy.params.get('model.layers.0.self_attn.q_proj.weight')!.dataSync() as Float32Array).slice();
    applyLora(policy, { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'] });
    const b = policy.params.get('model.layers.0.self_attn.q_proj.lora_B.weight')!;
    tf.tidy(() => b.assign(tf.onesLike(b)));
    const dir = mkdtempSync(join(tmpdir(), 'pipe-art-'));
    const modelDir = await exportModel(policy, cfg, tokenizer, dir);
    assert.equal(existsSync(join(modelDir, 'adapter_config.json')), !merge);
    if (!merge) {
      const adapter = JSON.parse(readFileSync(join(modelDir, 'adapter_config.json'), 'utf8'));
      assert.equal(adapter.base_model_name_or_path, 'stories260K', 'the configured base model, not "."');
    }
    assert.equal(policy.adaptersEnabled, true, 'adapters re-enabled after the export');
    const saved = await loadModel(modelDir);
    const q = saved.params.get('model.layers.0.self_attn.q_proj.weight')!.dataSync() as Float32Array;
    const same = q.every((x, i) => Math.abs(x - base[i]!) < 1e-6);
    assert.equal(same, !merge, merge ? 'merged weights differ from the base' : 'unmerged export keeps the base weights');
    saved.dispose();
    policy.dispose();
  }
});

test('extras from metrics.jsonl, then run.json and a manifest that verifies', async () => {
  const cfg = await smallConfig(['tensorboard=true', 'plot=true']);
  const dir = mkdtempSync(join(tmpdir(), 'pipe-art2-'));
  const lines = [1, 2, 3].map((step) =>
    JSON.stringify({ stage: 'dpo', step, loss: 0.7 - step / 100, 'rewards/accuracies': 0.5, 'rewards/margins': step / 10 }),
  );
  writeFileSync(join(dir, 'metrics.jsonl'), `${lines.join('\n')}\n`);
  await writeExtras(dir, cfg, silent);
  assert.equal(readdirSync(join(dir, 'tensorboard')).filter((f) => f.startsWith('events.out.tfevents.')).length, 1);
  assert.ok(readFileSync(join(dir, 'training_plot.png')).subarray(1, 4).toString() === 'PNG');
  await writeExtras(dir, { tensorboard: false, plot: false }, silent);
  assert.equal(existsSync(join(dir, 'tensorboard')), false, 'tensorboard=false removes stale events');
  const policy = await stories();
  const stats = {
    ...{ sha256: 'x', examples: 3, bad_records: 0, invalid: 0, invalid_by_code: {}, too_long: 0, dropped: 0 },
    ...{ train_pairs: 2, eval_pairs: 1, truncated: 0, truncated_fraction: 0, warnings: [] },
  };
  const rec = await writeRunRecord(dir, {
    config: cfg,
    backend: currentBackend()!,
    model: { name_or_path: 'stories260K', source: 's', config: policy.config },
    data: stats,
    resumed_from: null,
    timings: { total_s: 1 },
    metrics: { sft: {}, dpo: { loss: 0.6 } },
  });
  const back = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8'));
  assert.deepEqual(back, JSON.parse(JSON.stringify(rec)));
  assert.deepEqual(Object.keys(back).slice(0, 2), ['config', 'versions']);
  assert.equal(typeof back.versions['@tensorflow/tfjs-core'], 'string');
  assert.deepEqual(await verifyManifest(dir), []);
  policy.dispose();
});

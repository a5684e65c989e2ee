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
import { decodeEvent, decodeHParams, type DecodedEvent } from '../../src/training/metrics/tensorboard.js';
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

/** Every event of the run's one event file (TFRecord frames decoded with the writer's own messages). */
function events(dir: string): DecodedEvent[] {
  const tb = join(dir, 'tensorboard');
  const buf = readFileSync(join(tb, readdirSync(tb)[0]!));
  const out: DecodedEvent[] = [];
  for (let off = 0; off < buf.length; ) {
    const len = Number(buf.readBigUInt64LE(off));
    out.push(decodeEvent(buf.subarray(off + 12, off + 12 + len)));
    off += 12 + len + 4;
  }
  return out;
}

test('TensorBoard: train/ and eval/ tags on one step axis (DPO after SFT), text samples, hparams', async () => {
  const cfg = await smallConfig(['tensorboard=true', 'plot=false', 'loss.beta=0.25']);
  const dir = mkdtempSync(join(tmpdir(), 'pipe-art3-'));
  const recs = [
    { stage: 'sft', step: 1, loss: 3.1, learning_rate: 1e-4 },
    { stage: 'sft', step: 2, loss: 3.0, learning_rate: 1e-4 },
    { stage: 'sft', step: 2, eval_loss: 2.9 },
    { stage: 'dpo', step: 1, loss: 0.69, 'rewards/accuracies': 0.5 },
    { stage: 'dpo', step: 2, loss: 0.68, 'rewards/accuracies': 0.75 },
    { stage: 'dpo', step: 2, eval_loss: 0.67, 'eval_rewards/accuracies': 1 },
  ];
  writeFileSync(join(dir, 'metrics.jsonl'), `${recs.map((r) => JSON.stringify(r)).join('\n')}\n`);
  const sample = { stage: 'dpo', step: 2, index: 0, prompt: 'Once upon a time', completion: ' there was a dog.' };
  writeFileSync(join(dir, 'samples.jsonl'), `${JSON.stringify(sample)}\n`);
  await writeExtras(dir, cfg, silent);
  const evs = events(dir);
  const scalars = evs.flatMap((e) => (e.summary?.value ?? []).filter((v) => v.simple_value !== undefined).map((v) => `${v.tag}@${e.step}`));
  assert.deepEqual(scalars, [
    'train/loss@1',
    'train/learning_rate@1',
    'train/loss@2',
    'train/learning_rate@2',
    'eval/loss@2',
    'train/loss@3',
    'train/rewards/accuracies@3',
    'train/loss@4',
    'train/rewards/accuracies@4',
    'eval/loss@4',
    'eval/rewards/accuracies@4',
  ]);
  const texts = evs.flatMap((e) =>
    (e.summary?.value ?? [])
      .filter((v) => v.metadata?.plugin_data?.plugin_name === 'text')
      .map((v) => ({ tag: v.tag, step: e.step, text: Buffer.from(v.tensor!.string_val![0]!).toString('utf8') })),
  );
  assert.deepEqual(
    texts.map((t) => `${t.tag}@${t.step ?? 0}`),
    ['stages@0', 'samples/dpo@4'],
  );
  assert.match(texts[0]!.text, /SFT: steps 1-2; DPO: steps 3-4/);
  assert.match(texts[1]!.text, /there was a dog\./);
  const hp = evs.flatMap((e) => (e.summary?.value ?? []).filter((v) => v.metadata?.plugin_data?.plugin_name === 'hparams'));
  assert.deepEqual(
    hp.map((v) => v.tag),
    ['_hparams_/session_start_info', '_hparams_/session_end_info'],
  );
  const start = decodeHParams(hp[0]!.metadata!.plugin_data!.content!) as {
    session_start_info: { hparams: Record<string, { number_value?: number; string_value?: string }> };
  };
  assert.equal(start.session_start_info.hparams['loss.beta']?.number_value, 0.25);
  assert.equal(start.session_start_info.hparams['model.name_or_path']?.string_value, 'stories260K');
});

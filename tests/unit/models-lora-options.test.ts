/** LoRA options: target_modules all-linear (PEFT), rsLoRA scaling alpha/sqrt(r), LoRA+ (B's learning rate scaled). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { BaseLM, applyLora, createModel, saveLoraAdapter } from '../../src/training/models/index.js';
import { Optimizer } from '../../src/training/trainer/optimizer.js';
import type { ModelConfig } from '../../src/training/types.js';

await initBackend('auto');

const tinyLlama = (): ModelConfig => ({
  architecture: 'llama',
  modelType: 'qwen2',
  vocabSize: 97,
  hiddenSize: 32,
  intermediateSize: 48,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  maxPositionEmbeddings: 64,
  normEps: 1e-6,
  ropeTheta: 10000,
  ropeScaling: null,
  tieWordEmbeddings: true,
  attentionBias: true,
  qkNorm: false,
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: null,
});

test('all-linear adapts every decoder projection; rsLoRA scales by alpha/sqrt(r) and is recorded in the PEFT config', async () => {
  const m = createModel(tinyLlama(), { seed: 1 });
  assert.ok(m instanceof BaseLM);
  applyLora(m, { r: 4, alpha: 8, dropout: 0, targetModules: 'all-linear', rslora: true }, { seed: 2 });
  assert.equal(m.adapters.size, 7 * m.config.numLayers);
  for (const a of m.adapters.values()) assert.equal(a.scale, 8 / Math.sqrt(4));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-opts-'));
  await saveLoraAdapter(m, dir);
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as { use_rslora: boolean; target_modules: string[] };
  assert.equal(cfg.use_rslora, true);
  assert.deepEqual([...cfg.target_modules].sort(), ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
  // the adapted output moves by x A B * alpha/sqrt(r)
  const x = tf.randomNormal([3, m.config.hiddenSize], 0, 1, 'float32', 3) as tf.Tensor2D;
  const ad = m.adapters.get('model.layers.0.self_attn.q_proj')!;
  ad.B.assign(tf.randomNormal(ad.B.shape, 0, 0.1, 'float32', 4));
  const w = m.params.get('model.layers.0.self_attn.q_proj.weight')!;
  const b = m.params.get('model.layers.0.self_attn.q_proj.bias');
  const want = tf.add(tf.add(tf.matMul(x, w), b ?? 0), tf.mul(tf.matMul(tf.matMul(x, ad.A), ad.B), 8 / 2));
  const got = (m as unknown as { proj(x: tf.Tensor2D, mod: string): tf.Tensor2D }).proj(x, 'model.layers.0.self_attn.q_proj');
  assert.ok(tf.max(tf.abs(tf.sub(got, want))).dataSync()[0]! < 1e-5);
  m.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('LoRA+: Optimizer.lrScale multiplies the learning rate of the parameters it names', () => {
  const a = tf.variable(tf.ones([4]));
  const bv = tf.variable(tf.ones([4]));
  const opt = new Optimizer(
    new Map([
      ['x.lora_A.weight', a],
      ['x.lora_B.weight', bv],
    ]),
    { name: 'sgd', weightDecay: 0, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, rmspropAlpha: 0.99, momentum: 0 },
  );
  opt.lrScale.set('x.lora_B.weight', 16);
  const g = tf.fill([4], 0.5);
  opt.apply(
    new Map([
      ['x.lora_A.weight', g],
      ['x.lora_B.weight', g],
    ]),
    0.01,
  );
  assert.ok(Math.abs(a.dataSync()[0]! - (1 - 0.01 * 0.5)) < 1e-7);
  assert.ok(Math.abs(bv.dataSync()[0]! - (1 - 16 * 0.01 * 0.5)) < 1e-7);
});

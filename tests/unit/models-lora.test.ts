/**
 * LoRA: adapters start as a no-op, only they train, the forward adds (x A) B alpha/r, merge folds them into
 * the base weights, withAdaptersDisabled gives the base model, PEFT adapter files, merged HF export.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import {
  applyLora,
  cloneModel,
  createModel,
  loadModel,
  mergeLora,
  parseHFConfig,
  saveLoraAdapter,
  saveModelHF,
  withAdaptersDisabled,
  type GenerativeLM,
} from '../../src/training/models/index.js';
import { LoraConfigError } from '../../src/training/models/lora.js';

const cfg = parseHFConfig({
  model_type: 'llama',
  vocab_size: 32,
  hidden_size: 16,
  intermediate_size: 24,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  tie_word_embeddings: false,
  max_position_embeddings: 64,
});
const IDS = [1, 4, 9, 16, 25, 3];
const logitsOf = (m: GenerativeLM): number[] => Array.from(tf.tidy(() => m.logits(tf.tensor2d([IDS], [1, IDS.length], 'int32')).dataSync()));
function maxDiff(a: number[], b: number[]): number {
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
}

let dir: string;
before(async () => {
  await initBackend('auto');
  dir = mkdtempSync(join(tmpdir(), 'models-lora-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('applyLora: no-op at init, only adapters trainable, the adapted forward equals W + A B alpha/r, merge and disable', () => {
  const m = createModel(cfg, { seed: 5 });
  const base = logitsOf(m);
  applyLora(m, { r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj'] });
  const trainable = [...m.params]
    .filter(([, v]) => v.trainable)
    .map(([n]) => n)
    .sort();
  assert.deepEqual(trainable, [
    'model.layers.0.self_attn.q_proj.lora_A.weight',
    'model.layers.0.self_attn.q_proj.lora_B.weight',
    'model.layers.0.self_attn.v_proj.lora_A.weight',
    'model.layers.0.self_attn.v_proj.lora_B.weight',
    'model.layers.1.self_attn.q_proj.lora_A.weight',
    'model.layers.1.self_attn.q_proj.lora_B.weight',
    'model.layers.1.self_attn.v_proj.lora_A.weight',
    'model.layers.1.self_attn.v_proj.lora_B.weight',
  ]);
  assert.deepEqual(m.params.get('model.layers.0.self_attn.q_proj.lora_A.weight')!.shape, [16, 4]);
  assert.deepEqual(m.params.get('model.layers.0.self_attn.v_proj.lora_B.weight')!.shape, [4, 8]);
  assert.deepEqual(logitsOf(m), base, 'B = 0: the adapted model starts equal to the base');

  // gradients reach only the adapters; at init dL/dB != 0 and dL/dA = 0 (B = 0)
  const vars = [...m.params.values()].filter((v) => v.trainable);
  const { grads } = tf.variableGrads(() => tf.sum(tf.square(m.logits(tf.tensor2d([IDS], [1, IDS.length], 'int32')))) as tf.Scalar, vars);
  const names = [...m.params].filter(([, v]) => v.trainable).map(([n]) => n);
  const norm = (n: string): number => {
    const v = vars[names.indexOf(n)]!;
    return tf.tidy(() => tf.sum(tf.abs(grads[v.name]!)).dataSync()[0]!);
  };
  assert.ok(norm('model.layers.1.self_attn.q_proj.lora_B.weight') > 0);
  assert.equal(norm('model.layers.1.self_attn.q_proj.lora_A.weight'), 0);
  Object.values(grads).forEach((g) => g.dispose());

  // give B values; the forward must equal a base model whose W is replaced by W + A B alpha/r
  for (const [n, v] of m.params) if (n.endsWith('lora_B.weight')) v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', 9));
  const adapted = logitsOf(m);
  assert.ok(maxDiff(adapted, base) > 1e-3, 'the adapters change the output');
  assert.deepEqual(
    withAdaptersDisabled(m, () => logitsOf(m)),
    base,
    'adapters disabled = base model',
  );
  const manual = cloneModel(m);
  assert.deepEqual(logitsOf(manual), adapted, 'cloneModel keeps the adapters');
  for (const mod of ['q_proj', 'v_proj']) {
    for (const l of [0, 1]) {
      const p = `model.layers.${l}.self_attn.${mod}`;
      const W = manual.params.get(p + '.weight')!;
      const A = m.params.get(p + '.lora_A.weight')!;
      const B = m.params.get(p + '.lora_B.weight')!;
      W.assign(tf.tidy(() => tf.add(W, tf.mul(tf.matMul(A, B), 8 / 4))));
    }
  }
  const manualLogits = withAdaptersDisabled(manual, () => logitsOf(manual));
  assert.ok(maxDiff(manualLogits, adapted) < 1e-5, `manual W + AB·alpha/r: ${maxDiff(manualLogits, adapted)}`);
  manual.dispose();

  const tensorsBefore = tf.memory().numTensors;
  mergeLora(m);
  assert.equal(tf.memory().numTensors, tensorsBefore - 8, 'merge frees the 8 adapter variables and leaks nothing');
  assert.ok(![...m.params.keys()].some((n) => n.includes('lora')));
  assert.ok([...m.params.values()].every((v) => v.trainable));
  assert.ok(maxDiff(logitsOf(m), adapted) < 1e-5, 'merged = adapted');
  m.dispose();
});

test('saveLoraAdapter writes PEFT files; saveModelHF of an adapted model writes the merged weights', async () => {
  const m = createModel(cfg, { seed: 6 });
  applyLora(m, { r: 2, alpha: 4, dropout: 0.05, targetModules: ['q_proj', 'down_proj'] });
  for (const [n, v] of m.params) if (n.endsWith('lora_B.weight')) v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', 3));
  const adapted = logitsOf(m);
  const files = await saveLoraAdapter(m, join(dir, 'adapter'), { baseModel: 'test-llama' });
  assert.equal(files.length, 2);
  const ac = JSON.parse(readFileSync(join(dir, 'adapter', 'adapter_config.json'), 'utf8'));
  assert.equal(ac.peft_type, 'LORA');
  assert.equal(ac.r, 2);
  assert.equal(ac.lora_alpha, 4);
  assert.deepEqual(ac.target_modules, ['q_proj', 'down_proj']);
  const st = readFileSync(join(dir, 'adapter', 'adapter_model.safetensors'));
  const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString()) as Record<string, { shape: number[] }>;
  assert.deepEqual(header['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight']!.shape, [2, 16]);
  assert.deepEqual(header['base_model.model.model.layers.1.mlp.down_proj.lora_B.weight']!.shape, [16, 2]);
  await saveModelHF(m, join(dir, 'merged'));
  const re = await loadModel(join(dir, 'merged'));
  assert.ok(maxDiff(logitsOf(re), adapted) < 1e-5, 'the export holds W + A B alpha/r');
  re.dispose();
  m.dispose();
});

test('targetModules matching nothing is a LoraConfigError listing the available projections', () => {
  const m = createModel(cfg, { seed: 1 });
  assert.throws(
    () => applyLora(m, { r: 4, alpha: 8, dropout: 0, targetModules: ['query_key_value'] }),
    (e: unknown) => e instanceof LoraConfigError && e.code === 'INVALID_LORA_CONFIG' && /q_proj/.test(e.message),
  );
  assert.throws(() => applyLora(m, { r: 0, alpha: 8, dropout: 0, targetModules: ['q_proj'] }), LoraConfigError);
  m.dispose();
});

test('LoRA on GPT-2 Conv1D c_attn: merge equals the adapted forward', () => {
  const g = createModel(parseHFConfig({ model_type: 'gpt2', vocab_size: 32, n_embd: 16, n_layer: 1, n_head: 2, n_positions: 16 }), { seed: 2 });
  applyLora(g, { r: 2, alpha: 2, dropout: 0, targetModules: ['c_attn'] });
  assert.deepEqual(
    [...g.params.keys()].filter((n) => n.includes('lora')),
    ['transformer.h.0.attn.c_attn.lora_A.weight', 'transformer.h.0.attn.c_attn.lora_B.weight'],
  );
  const B = g.params.get('transformer.h.0.attn.c_attn.lora_B.weight')!;
  B.assign(tf.randomNormal(B.shape, 0, 0.5, 'float32', 1));
  const adapted = logitsOf(g);
  mergeLora(g);
  assert.ok(maxDiff(logitsOf(g), adapted) < 1e-5);
  g.dispose();
});

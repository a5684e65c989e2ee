/**
 * Past the wasm heap: a model whose live tensors (weights, gradients, AdamW moments) exceed 4 GiB trains one
 * step on the native backend. A small-hidden, huge-vocabulary Llama (1.1M x 256 tied embedding, 282M
 * parameters, 1.13 GB per float32 copy), one SFT-style step through the trainer's AdamW.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { tokenLogps } from '../../src/training/engine/ops.js';
import { LlamaModel } from '../../src/training/models/index.js';
import { isLlamaLinear, llamaShapes } from '../../src/training/models/llama.js';
import type { ModelConfig } from '../../src/training/types.js';
import { Optimizer } from '../../src/training/trainer/optimizer.js';

test('a model with more than 4 GiB of live tensors trains one step (native backend)', { timeout: 120_000 }, async () => {
  const info = await initBackend('native');
  assert.equal(info.name, 'native');
  const V = 1_100_000;
  const config: ModelConfig = {
    architecture: 'llama',
    modelType: 'llama',
    vocabSize: V,
    hiddenSize: 256,
    intermediateSize: 512,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 4,
    headDim: 64,
    maxPositionEmbeddings: 64,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tieWordEmbeddings: true,
    attentionBias: false,
    qkNorm: false,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: null,
  };
  // weights from a cheap LCG (tf.randomNormal draws in JS: ~40 s for the embedding on this machine)
  let seed = 12345;
  const weights = new Map<string, tf.Variable>();
  for (const [name, shape] of llamaShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (shape.length === 1) data.fill(1);
    else
      for (let i = 0; i < n; i++) {
        seed = (seed * 1664525 + 1013904223) >>> 0;
        data[i] = (seed / 2 ** 32 - 0.5) * 0.06;
      }
    const internal = isLlamaLinear(name) && shape.length === 2 ? [shape[1]!, shape[0]!] : shape;
    const t = tf.tensor(data, internal);
    weights.set(name, tf.variable(t, true));
    t.dispose();
  }
  const model = new LlamaModel(config, weights);
  const params = new Map([...model.params].filter(([, v]) => v.trainable));
  const opt = new Optimizer(params, { name: 'adamw', weightDecay: 0, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, rmspropAlpha: 0.99, momentum: 0 });
  const T = 16;
  const ids = tf.tensor2d(
    Int32Array.from({ length: 2 * T }, (_, i) => (i * 104729 + 7) % V),
    [2, T],
    'int32',
  );
  const labels = tf.tensor1d(
    Int32Array.from({ length: 2 * T }, (_, i) => (i * 104729 + 7 + 104729) % V),
    'int32',
  );
  const emb = params.get('model.embed_tokens.weight')!;
  const before = emb.dataSync().slice(0, 4096);
  let peak = 0;
  const { value, grads } = tf.variableGrads(() => {
    const { weight, layout } = model.outputProjection();
    return tf.neg(tf.mean(tokenLogps(model.hidden(ids), weight, labels, layout))) as tf.Scalar;
  }, [...params.values()]);
  const loss = value.dataSync()[0]!;
  const named = new Map([...params].map(([n, v]) => [n, grads[v.name]!]));
  opt.apply(named, 1e-2);
  peak = Math.max(peak, tf.memory().numBytes);
  assert.ok(Number.isFinite(loss) && loss > 0, `loss ${loss}`);
  assert.ok(peak > 4 * 2 ** 30, `live tensor bytes ${peak} (weights + gradients + AdamW moments) exceed 4 GiB`);
  const after = emb.dataSync().slice(0, 4096);
  assert.notDeepEqual(Array.from(after), Array.from(before), 'the embedding was updated');
  tf.dispose([value, ...Object.values(grads)]);
  opt.dispose();
  model.dispose();
});

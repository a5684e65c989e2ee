/**
 * Memory-lean training on the native backend: gradient checkpointing gives the same losses and gradients as
 * keeping the activations (two optimizer steps, Llama with GQA + q/k/v biases + LoRA with dropout, and GPT-2);
 * frozen weights in BF16 / int8 are consumed by the GEMM exactly as their rounded F32 values.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { BaseLM, applyLora, cloneModel, createModel, loadPretrained, type GenerativeLM } from '../../src/training/models/index.js';
import { isDecoderLinear, storeFrozenInLowPrecision } from '../../src/training/models/frozen.js';
import { LowPrecisionWeights, quantizeInt8, toBfloat16 } from '../../src/training/engine/lowp.js';
import type { ModelConfig } from '../../src/training/types.js';
import { tokenLogps } from '../../src/training/engine/ops.js';

await initBackend('native');

function tinyLlama(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    architecture: 'llama',
    modelType: 'qwen2',
    vocabSize: 97,
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 3,
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
    ...over,
  };
}

/** Mean next-token NLL of fixed tokens `[B, T]`. */
function nll(model: GenerativeLM, ids: tf.Tensor2D): tf.Scalar {
  const [B, T] = ids.shape;
  const flat = ids.dataSync();
  const labels = new Int32Array(B * T);
  const mask = new Float32Array(B * T);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T - 1; t++) {
      labels[b * T + t] = flat[b * T + t + 1]!;
      mask[b * T + t] = 1;
    }
  const { weight, layout } = model.outputProjection();
  const lp = tokenLogps(model.hidden(ids), weight, tf.tensor1d(labels, 'int32'), layout, { rowMask: mask });
  return tf.neg(
    tf.div(
      tf.sum(lp),
      mask.reduce((a, c) => a + c, 0),
    ),
  ) as tf.Scalar;
}

/** Losses and gradients of two SGD steps, with checkpointing off and on, from the same weights. */
function twoSteps(base: GenerativeLM, ids: tf.Tensor2D): void {
  const runs = [false, true].map((ckpt) => {
    const m = cloneModel(base);
    assert.ok(m instanceof BaseLM);
    m.gradientCheckpointing = ckpt;
    m.training = true;
    const vars = [...m.params].filter(([, v]) => v.trainable);
    const out: Array<{ loss: number; grads: Map<string, Float32Array> }> = [];
    for (let step = 0; step < 2; step++) {
      m.dropoutSeed = 100 + step; // the same dropout masks in both runs
      const { value, grads } = tf.variableGrads(
        () => nll(m, ids),
        vars.map(([, v]) => v),
      );
      out.push({ loss: value.dataSync()[0]!, grads: new Map(vars.map(([n, v]) => [n, grads[v.name]!.dataSync() as Float32Array])) });
      tf.tidy(() => {
        for (const [, v] of vars) v.assign(tf.sub(v, tf.mul(grads[v.name]!, 0.5)));
      });
      tf.dispose([value, ...Object.values(grads)]);
    }
    m.dispose();
    return out;
  });
  const [off, on] = runs as [(typeof runs)[0], (typeof runs)[0]];
  for (let s = 0; s < 2; s++) {
    assert.ok(Math.abs(off[s]!.loss - on[s]!.loss) < 1e-5, `step ${s}: loss ${off[s]!.loss} vs ${on[s]!.loss}`);
    assert.ok(off[s]!.grads.size > 0);
    for (const [name, g] of off[s]!.grads) {
      const h = on[s]!.grads.get(name)!;
      let d = 0;
      let mx = 0;
      for (let i = 0; i < g.length; i++) {
        d = Math.max(d, Math.abs(g[i]! - h[i]!));
        mx = Math.max(mx, Math.abs(g[i]!));
      }
      assert.ok(d <= 1e-5 * Math.max(1, mx), `step ${s} ${name}: gradient differs by ${d} (max |g| ${mx})`);
    }
  }
  // the first step's loss moved: the updates were real
  assert.notEqual(off[0]!.loss, off[1]!.loss);
}

const tokens = (B: number, T: number, V: number): tf.Tensor2D =>
  tf.tensor2d(
    Int32Array.from({ length: B * T }, (_, i) => (i * 7919 + 13) % V),
    [B, T],
    'int32',
  );

test('gradient checkpointing: same loss and gradients over two steps (Llama/Qwen2 shape, full fine-tuning)', () => {
  const m = createModel(tinyLlama(), { seed: 3 });
  twoSteps(m, tokens(2, 20, 97));
  m.dispose();
});

test('gradient checkpointing: same loss and gradients with LoRA adapters and dropout (seeded recomputation)', () => {
  const m = createModel(tinyLlama(), { seed: 4 });
  applyLora(m, { r: 4, alpha: 8, dropout: 0.1, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] }, { seed: 5 });
  // B starts at zero: give the adapters weights so their gradients reach A
  for (const [name, v] of m.params) if (name.endsWith('lora_B.weight')) v.assign(tf.randomNormal(v.shape, 0, 0.1, 'float32', 6));
  twoSteps(m, tokens(2, 16, 97));
  m.dispose();
});

test('gradient checkpointing: same loss and gradients on GPT-2', () => {
  const m = createModel(
    { ...tinyLlama(), architecture: 'gpt2', modelType: 'gpt2', numKvHeads: 4, attentionBias: false, intermediateSize: 128, normEps: 1e-5 },
    { seed: 7 },
  );
  twoSteps(m, tokens(2, 12, 97));
  m.dispose();
});

/** Per-token log-probs `[B*T]` of fixed tokens under `model`. */
function tokenLogpsOf(model: GenerativeLM, ids: tf.Tensor2D): Float32Array {
  return tf.tidy(() => {
    const [B, T] = ids.shape;
    const flat = ids.dataSync();
    const labels = Int32Array.from({ length: B * T }, (_, i) => (i % T < T - 1 ? flat[i + 1]! : 0));
    const { weight, layout } = model.outputProjection();
    return tokenLogps(model.hidden(ids), weight, tf.tensor1d(labels, 'int32'), layout).dataSync() as Float32Array;
  });
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

/** A frozen copy whose decoder linear weights are rounded like `kind` but stored as float32. */
function roundedCopy(m: GenerativeLM, kind: 'bfloat16' | 'int8'): GenerativeLM {
  const c = cloneModel(m, { trainable: false });
  for (const [name, v] of c.params) {
    if (!isDecoderLinear(name, v)) continue;
    const src = v.dataSync() as Float32Array;
    const [rows, cols] = v.shape as [number, number];
    const w =
      kind === 'bfloat16'
        ? new LowPrecisionWeights(kind, toBfloat16(src), new Float32Array(0))
        : (() => {
            const q = quantizeInt8(src, rows, cols);
            return new LowPrecisionWeights(kind, q.data, q.scale);
          })();
    v.assign(tf.tensor2d(w.decode(), [rows, cols]));
  }
  return c;
}

test('BF16 / int8 frozen weights: the GEMM on low-precision storage equals F32 on the rounded weights; BF16 within its rounding of F32', async () => {
  const { model } = await loadPretrained('stories260K');
  const ids = tokens(3, 40, model.config.vocabSize);
  const f32 = tokenLogpsOf(model, ids);
  for (const kind of ['bfloat16', 'int8'] as const) {
    const frozen = cloneModel(model, { trainable: false });
    const st = storeFrozenInLowPrecision(frozen, kind);
    assert.equal(st.converted, model.config.numLayers * 7, `${kind}: every decoder projection converted`);
    assert.ok(st.bytesAfter <= st.bytesBefore / (kind === 'bfloat16' ? 2 : 3.5), `${kind}: ${st.bytesAfter} of ${st.bytesBefore} bytes`);
    const rounded = roundedCopy(model, kind);
    const got = tokenLogpsOf(frozen, ids);
    const want = tokenLogpsOf(rounded, ids);
    assert.ok(maxDiff(got, want) < 1e-4, `${kind}: low-precision GEMM vs rounded F32: ${maxDiff(got, want)}`);
    const drift = maxDiff(got, f32);
    assert.ok(drift > 0, `${kind}: the weights were really rounded`);
    if (kind === 'bfloat16') {
      // bfloat16 keeps 8 significant bits (relative rounding error <= 2^-9 per weight): the log-probs move by
      // about that relative amount per layer; bound the mean drift by 2^-8 of the mean |log-prob|
      const mean = (a: Float32Array): number => a.reduce((s, x) => s + Math.abs(x), 0) / a.length;
      const meanDrift = got.reduce((s, x, i) => s + Math.abs(x - f32[i]!), 0) / got.length;
      assert.ok(meanDrift < mean(f32) / 256, `bfloat16 vs F32 reference log-probs: mean |diff| ${meanDrift} vs mean |logp| ${mean(f32)}`);
    }
    // dataSync of a low-precision weight reads the widened values
    const name = 'model.layers.0.mlp.down_proj.weight';
    assert.deepEqual(Array.from(frozen.params.get(name)!.dataSync().slice(0, 8)), Array.from(rounded.params.get(name)!.dataSync().slice(0, 8)));
    frozen.dispose();
    rounded.dispose();
  }
  model.dispose();
});

test('a LoRA base in BF16: adapter gradients equal those on the rounded F32 base (backward through the frozen GEMM)', async () => {
  const { model } = await loadPretrained('stories260K');
  const ids = tokens(2, 24, model.config.vocabSize);
  const grads = (m: GenerativeLM): Map<string, Float32Array> => {
    applyLora(m, { r: 4, alpha: 8, dropout: 0, targetModules: ['q_proj', 'v_proj', 'down_proj'] }, { seed: 9 });
    for (const [name, v] of m.params) if (name.endsWith('lora_B.weight')) v.assign(tf.randomNormal(v.shape, 0, 0.05, 'float32', 10));
    const vars = [...m.params].filter(([, v]) => v.trainable);
    const { value, grads: g } = tf.variableGrads(
      () => nll(m, ids),
      vars.map(([, v]) => v),
    );
    const out = new Map(vars.map(([n, v]) => [n, g[v.name]!.dataSync() as Float32Array]));
    tf.dispose([value, ...Object.values(g)]);
    return out;
  };
  const low = cloneModel(model, { trainable: false });
  storeFrozenInLowPrecision(low, 'bfloat16');
  const a = grads(low);
  const b = grads(roundedCopy(model, 'bfloat16'));
  assert.equal(a.size, 2 * 3 * model.config.numLayers);
  for (const [n, g] of a) assert.ok(maxDiff(g, b.get(n)!) < 1e-5 * (1 + Math.max(...g.map(Math.abs))), `${n}: ${maxDiff(g, b.get(n)!)}`);
  model.dispose();
});

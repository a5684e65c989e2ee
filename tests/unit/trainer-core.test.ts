/**
 * The stage loop: the gradient-accumulation invariant (batch 1 × 8 ≡ batch 8 × 1, DPO and SFT), same seed →
 * same numbers, tf.memory().numTensors flat across steps, optimizer state round trip, schedules, clipping.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { resolveLossOptions } from '../../src/training/losses/index.js';
import { cloneModel } from '../../src/training/models/index.js';
import { clipByGlobalNorm } from '../../src/training/trainer/grads.js';
import { Optimizer } from '../../src/training/trainer/optimizer.js';
import { Rng, epochPermutation } from '../../src/training/trainer/rng.js';
import { learningRateAt } from '../../src/training/trainer/schedule.js';
import { runStage, stepBatches, type StageOptions } from '../../src/training/trainer/stage.js';
import { dpoTask, sftTask } from '../../src/training/trainer/tasks.js';
import type { StageSettings } from '../../src/config/index.js';
import { maxAbsDiff, optim, snapshot, stage, stories, toyPairs, trainable } from './trainer-helpers.js';

const noHooks = { log: () => undefined };

async function dpoRun(settings: StageSettings, opt = optim('sgd'), seed = 0) {
  const { pairs, padId } = await toyPairs();
  const policy = await stories();
  const reference = cloneModel(policy, { trainable: false });
  const params = trainable(policy);
  const records: Array<Record<string, number | string>> = [];
  const task = dpoTask({
    policy,
    reference: { kind: 'model', model: reference },
    train: pairs.slice(0, 16),
    eval: [],
    padId,
    loss: resolveLossOptions({ name: 'dpo', beta: 0.1 }),
    params,
    evalBatchSize: 8,
    logitStats: false,
  });
  const opts: StageOptions = { settings, optimizer: opt, params, seed, evalEvery: null, doFirstEval: false, logEvery: 1, saveSteps: null };
  const res = await runStage(task, opts, { log: (r) => void records.push(r) });
  const after = snapshot(policy.params);
  res.optimizer.dispose();
  reference.dispose();
  policy.dispose();
  return { after, records };
}

test('gradient accumulation: DPO batch 1 x accumulation 8 equals batch 8 x 1 (SGD update, loss)', async () => {
  const before = snapshot((await stories()).params);
  const a = await dpoRun(stage({ batch_size: 8, gradient_accumulation_steps: 1, max_steps: 1, lr: 0.5 }));
  const b = await dpoRun(stage({ batch_size: 1, gradient_accumulation_steps: 8, max_steps: 1, lr: 0.5 }));
  let maxUpdate = 0;
  let maxDiff = 0;
  for (const [k, va] of a.after) {
    maxUpdate = Math.max(maxUpdate, maxAbsDiff(va, before.get(k)!));
    maxDiff = Math.max(maxDiff, maxAbsDiff(va, b.after.get(k)!));
  }
  assert.ok(maxUpdate > 1e-4, `the step must change the weights (max update ${maxUpdate})`);
  assert.ok(maxDiff <= 1e-4 * maxUpdate + 1e-7, `accumulated update differs: ${maxDiff} vs update ${maxUpdate}`);
  const la = Number(a.records[0]!.loss);
  const lb = Number(b.records[0]!.loss);
  assert.ok(Math.abs(la - lb) < 1e-5, `loss ${la} vs ${lb}`);
  assert.ok(Math.abs(Number(a.records[0]!.grad_norm) - Number(b.records[0]!.grad_norm)) < 1e-4 * Number(a.records[0]!.grad_norm));
});

test('gradient accumulation: SFT (token-weighted mean) batch 1 x 8 equals batch 8 x 1', async () => {
  const { pairs, padId } = await toyPairs();
  const run = async (s: StageSettings) => {
    const model = await stories();
    const params = trainable(model);
    const task = sftTask({ model, train: pairs.slice(0, 8), eval: [], padId, params, evalBatchSize: 8 });
    const recs: Array<Record<string, number | string>> = [];
    const res = await runStage(
      task,
      { settings: s, optimizer: optim('sgd'), params, seed: 3, evalEvery: null, doFirstEval: false, logEvery: 1, saveSteps: null },
      { log: (r) => void recs.push(r) },
    );
    res.optimizer.dispose();
    const snap = snapshot(model.params);
    model.dispose();
    return { snap, loss: Number(recs[0]!.loss) };
  };
  const a = await run(stage({ batch_size: 8, gradient_accumulation_steps: 1, max_steps: 1, lr: 0.1 }));
  const b = await run(stage({ batch_size: 1, gradient_accumulation_steps: 8, max_steps: 1, lr: 0.1 }));
  const before = snapshot((await stories()).params);
  let maxUpdate = 0;
  let maxDiff = 0;
  for (const [k, va] of a.snap) {
    maxUpdate = Math.max(maxUpdate, maxAbsDiff(va, before.get(k)!));
    maxDiff = Math.max(maxDiff, maxAbsDiff(va, b.snap.get(k)!));
  }
  assert.ok(maxUpdate > 1e-4);
  assert.ok(maxDiff <= 1e-4 * maxUpdate + 1e-7, `SFT accumulated update differs: ${maxDiff} vs ${maxUpdate}`);
  assert.ok(Math.abs(a.loss - b.loss) < 1e-5 * Math.max(1, a.loss));
});

test('same seed, same numbers; another seed, another data order', async () => {
  const s = stage({ max_steps: 3, batch_size: 2 });
  const a = await dpoRun(s, optim('adamw'), 7);
  const b = await dpoRun(s, optim('adamw'), 7);
  const strip = (r: Record<string, number | string>) =>
    Object.fromEntries(Object.entries(r).filter(([k]) => !['tokens/s', 'pairs/s', 'examples/s', 'step_seconds'].includes(k)));
  assert.deepEqual(a.records.map(strip), b.records.map(strip));
  assert.deepEqual(stepBatches(0, 16, s, 7), stepBatches(0, 16, s, 7));
  assert.notDeepEqual(epochPermutation(16, 7, 0), epochPermutation(16, 8, 0));
  assert.notDeepEqual(epochPermutation(16, 7, 0), epochPermutation(16, 7, 1));
});

test('tf.memory().numTensors is flat across DPO steps (policy, frozen reference, AdamW, logit stats)', async () => {
  const { pairs, padId } = await toyPairs();
  const policy = await stories();
  const reference = cloneModel(policy, { trainable: false });
  const params = trainable(policy);
  const counts: number[] = [];
  const task = dpoTask({
    policy,
    reference: { kind: 'model', model: reference },
    train: pairs.slice(0, 12),
    eval: pairs.slice(12, 14),
    padId,
    loss: resolveLossOptions({ name: 'dpo' }),
    params,
    evalBatchSize: 2,
    logitStats: true,
  });
  const res = await runStage(
    task,
    {
      settings: stage({ max_steps: 5, batch_size: 2, gradient_accumulation_steps: 2, max_grad_norm: 1 }),
      optimizer: optim('adamw'),
      params,
      seed: 0,
      evalEvery: 4,
      doFirstEval: false,
      logEvery: 1,
      saveSteps: null,
    },
    { ...noHooks, progress: () => void counts.push(tf.memory().numTensors) },
  );
  // slots are created at step 1; from then on the count must not grow
  assert.equal(new Set(counts.slice(1)).size, 1, `numTensors per step: ${counts.join(', ')}`);
  res.optimizer.dispose();
  reference.dispose();
  policy.dispose();
});

test('optimizer state round trip continues identically (AdamW, RMSprop with momentum, SGD with momentum)', async () => {
  for (const name of ['adamw', 'rmsprop', 'sgd'] as const) {
    const mk = () => new Map([['w', tf.variable(tf.tensor1d([0.5, -1, 2]))]]);
    const grads = (i: number) => new Map([['w', tf.tensor1d([0.1 * i, -0.2, 0.3 / i])]]);
    const settings = optim(name, { momentum: name === 'adamw' ? 0 : 0.9, weightDecay: 0.01 });
    const a = mk();
    const oa = new Optimizer(a, settings);
    for (let i = 1; i <= 4; i++) oa.apply(grads(i), 0.01);
    const b = mk();
    const ob = new Optimizer(b, settings);
    for (let i = 1; i <= 2; i++) ob.apply(grads(i), 0.01);
    const state = ob.getState();
    const c = new Map([['w', tf.variable(b.get('w')!.clone())]]);
    const oc = new Optimizer(c, settings);
    oc.setState(state);
    for (let i = 3; i <= 4; i++) oc.apply(grads(i), 0.01);
    assert.deepEqual(Array.from(c.get('w')!.dataSync()), Array.from(a.get('w')!.dataSync()), name);
    for (const o of [oa, ob, oc]) o.dispose();
  }
});

test('AdamW matches the torch update rule on one scalar (decoupled weight decay, bias correction)', () => {
  const p = tf.variable(tf.scalar(1.0));
  const o = new Optimizer(new Map([['p', p]]), optim('adamw', { weightDecay: 0.1 }));
  let m = 0,
    v = 0,
    x = 1.0;
  for (let t = 1; t <= 3; t++) {
    const g = 0.5 * t;
    o.apply(new Map([['p', tf.scalar(g)]]), 0.01);
    x = x * (1 - 0.01 * 0.1);
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    x = x - (0.01 / (1 - 0.9 ** t)) * (m / (Math.sqrt(v) / Math.sqrt(1 - 0.999 ** t) + 1e-8));
  }
  assert.ok(Math.abs(p.dataSync()[0]! - x) < 1e-6, `${p.dataSync()[0]} vs ${x}`);
  o.dispose();
});

test('learning-rate schedules: warmup then linear / cosine / constant', () => {
  const base = { lr: 1, warmupSteps: 3, totalSteps: 13 };
  assert.equal(learningRateAt(0, { ...base, kind: 'constant' }), 0.25);
  assert.equal(learningRateAt(2, { ...base, kind: 'constant' }), 0.75);
  assert.equal(learningRateAt(3, { ...base, kind: 'linear' }), 1);
  assert.ok(Math.abs(learningRateAt(8, { ...base, kind: 'linear' }) - 0.5) < 1e-12);
  assert.ok(Math.abs(learningRateAt(8, { ...base, kind: 'cosine' }) - 0.5) < 1e-12);
  assert.equal(learningRateAt(13, { ...base, kind: 'cosine' }), 0);
  assert.equal(learningRateAt(100, { ...base, kind: 'constant' }), 1);
});

test('clipping by global norm returns the pre-clip norm and scales to max_norm', () => {
  const g = new Map<string, tf.Tensor>([
    ['a', tf.tensor1d([3, 0])],
    ['b', tf.tensor1d([0, 4])],
  ]);
  assert.equal(clipByGlobalNorm(g, 1), 5);
  const after = Math.hypot(...g.get('a')!.dataSync(), ...g.get('b')!.dataSync());
  assert.ok(Math.abs(after - 1) < 1e-5);
  tf.dispose([...g.values()]);
});

test('RNG state round trip', () => {
  const r = new Rng(42);
  r.next();
  const s = r.getState();
  const xs = [r.next(), r.next()];
  const r2 = new Rng(0);
  r2.setState(s);
  assert.deepEqual([r2.next(), r2.next()], xs);
});

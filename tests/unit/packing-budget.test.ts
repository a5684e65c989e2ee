/**
 * Token-budget micro-batches (max_tokens_per_batch): first-fit decreasing within an optimizer step's
 * seeded examples, each micro-batch within the budget, the pair count per step logged, and a run resumed
 * mid-epoch (position + optimizer state) equal to the uninterrupted run, with padding_free batches.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { cloneModel, createModel } from '../../src/training/models/index.js';
import { resolveLossOptions } from '../../src/training/losses/index.js';
import { Optimizer } from '../../src/training/trainer/optimizer.js';
import { runStage, stepBatches, tokenBudgetBatches, type StagePosition } from '../../src/training/trainer/stage.js';
import { dpoTask } from '../../src/training/trainer/tasks.js';
import type { TokenizedPair } from '../../src/training/data/index.js';
import type { ModelConfig } from '../../src/training/types.js';
import { optim, snapshot, stage } from './trainer-helpers.js';

await initBackend('auto');

test('tokenBudgetBatches: first-fit decreasing, every example once, within the budget, deterministic', () => {
  const len = [30, 5, 17, 40, 2, 9, 25, 11];
  const idx = [3, 0, 6, 2, 7, 5, 1, 4];
  const bins = tokenBudgetBatches(idx, 42, (i) => len[i]!);
  assert.deepEqual(bins.flat().sort(), [...idx].sort());
  for (const b of bins) assert.ok(b.reduce((s, i) => s + len[i]!, 0) <= 42, `bin ${b} over budget`);
  // FFD, largest first into the first bin with room: 40+2 | 30+11 | 25+17 | 9+5
  assert.deepEqual(bins, [
    [3, 4],
    [0, 7],
    [6, 2],
    [5, 1],
  ]);
  assert.deepEqual(
    tokenBudgetBatches(idx, 42, (i) => len[i]!),
    bins,
  );
  assert.deepEqual(
    tokenBudgetBatches([3], 10, (i) => len[i]!),
    [[3]],
    'an example over the budget gets a micro-batch of its own',
  );
  assert.throws(() => tokenBudgetBatches(idx, 0, (i) => len[i]!), /max_tokens_per_batch/);
});

const config: ModelConfig = {
  architecture: 'llama',
  modelType: 'llama',
  vocabSize: 61,
  hiddenSize: 32,
  intermediateSize: 48,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  maxPositionEmbeddings: 128,
  normEps: 1e-6,
  ropeTheta: 10000,
  ropeScaling: null,
  tieWordEmbeddings: false,
  attentionBias: false,
  qkNorm: false,
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: null,
};

const pairs: TokenizedPair[] = Array.from({ length: 12 }, (_, i) => {
  const n = (k: number, base: number): number[] => Array.from({ length: k }, (_, j) => 3 + ((base + j * 7) % 55));
  const chosen = n(1 + ((i * 5) % 9), i);
  return { promptIds: n(2 + ((i * 11) % 17), i + 1), chosenIds: chosen, rejectedIds: n(1 + ((i * 3) % 7), i + 2), sftIds: chosen };
});

async function run(opts: {
  maxSteps: number;
  resume?: { position: StagePosition; weights: Map<string, Float32Array>; optimizer: ReturnType<Optimizer['getState']> };
}) {
  const policy = createModel(config, { seed: 21 });
  const reference = cloneModel(policy, { trainable: false });
  if (opts.resume) for (const [k, v] of policy.params) if (v.trainable) v.assign(tf.tensor(opts.resume.weights.get(k)!, v.shape));
  const params = new Map([...policy.params].filter(([, v]) => v.trainable));
  const settings = stage({ max_steps: opts.maxSteps, batch_size: 2, gradient_accumulation_steps: 3 });
  const optimizer = new Optimizer(params, optim('adamw'));
  if (opts.resume) optimizer.setState(opts.resume.optimizer);
  const task = dpoTask({
    policy,
    reference: { kind: 'model', model: reference },
    train: pairs,
    eval: [],
    padId: 0,
    loss: resolveLossOptions({ name: 'dpo', beta: 0.1 }),
    params,
    evalBatchSize: 4,
    logitStats: false,
    layout: 'padding_free',
  });
  const records: Array<Record<string, number | string>> = [];
  let saved: { position: StagePosition; weights: Map<string, Float32Array>; optimizer: ReturnType<Optimizer['getState']> } | null = null;
  await runStage(
    task,
    {
      settings,
      optimizer: optim('adamw'),
      optimizerInstance: optimizer,
      params,
      seed: 3,
      evalEvery: null,
      doFirstEval: false,
      logEvery: 1,
      saveSteps: 1,
      resume: opts.resume?.position ?? null,
      maxTokensPerBatch: 48,
    },
    {
      log: (r) => void records.push(r as Record<string, number | string>),
      checkpoint: async (p) => {
        if (p.step === 3) saved = { position: { ...p }, weights: snapshot(params), optimizer: optimizer.getState() };
      },
    },
  );
  const weights = snapshot(params);
  optimizer.dispose();
  policy.dispose();
  reference.dispose();
  return { records, weights, saved: saved as typeof saved };
}

test('max_tokens_per_batch: micro-batches within the budget, pairs per step logged; resume mid-epoch equals the uninterrupted run', async () => {
  const settings = stage({ batch_size: 2, gradient_accumulation_steps: 3 });
  const tokens = (p: TokenizedPair): number => 2 * p.promptIds.length + p.chosenIds.length + p.rejectedIds.length;
  for (let step = 0; step < 4; step++) {
    const micros = tokenBudgetBatches(stepBatches(step, pairs.length, settings, 3).flat(), 48, (i) => tokens(pairs[i]!));
    for (const m of micros) assert.ok(m.length === 1 || m.reduce((s, i) => s + tokens(pairs[i]!), 0) <= 48);
  }
  const full = await run({ maxSteps: 5 });
  const steps = full.records.filter((r) => typeof r.loss === 'number' && r.pairs !== undefined);
  assert.equal(steps.length, 5);
  for (const r of steps) assert.equal(r.pairs, 6, 'each optimizer step holds batch_size x gradient_accumulation_steps pairs');
  assert.ok(
    steps.some((r) => (r.micro_batches as number) !== 3),
    'the token budget changes the micro-batch split',
  );
  assert.ok(full.saved, 'a checkpoint at step 3 (mid-epoch 2)');
  const resumed = await run({ maxSteps: 5, resume: full.saved! });
  const tail = (rs: Array<Record<string, number | string>>) => rs.filter((r) => r.pairs !== undefined).map((r) => r.loss as number);
  assert.deepEqual(tail(resumed.records), tail(full.records).slice(3));
  for (const [k, w] of full.weights) assert.deepEqual(resumed.weights.get(k), w, `weights ${k} after resume`);
});

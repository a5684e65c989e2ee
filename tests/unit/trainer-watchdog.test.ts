/**
 * The loss watchdog of the stage loop (`loss_watchdog_threshold` / `loss_watchdog_patience`): the run stops with
 * TRAINING_DIVERGED naming the stage and the step after `patience` consecutive steps with the loss above the
 * threshold, not at `patience - 1`, and a step at or below the threshold resets the count. The task is a tiny
 * real one (one tf variable, a real optimizer) whose loss per step is scripted, so the test is fast.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { runStage, TrainingDivergedError, type LossWatchdog, type StageTask } from '../../src/training/trainer/stage.js';
import { optim, stage } from './trainer-helpers.js';

/** A task whose optimizer step `k` (0-based) reports `losses[k]`. One micro-batch per step (batch 1, no accumulation). */
function scripted(stageName: 'sft' | 'dpo', losses: number[], w: tf.Variable): StageTask {
  let k = 0;
  return {
    stage: stageName,
    nTrain: 4,
    units: (indices) => indices.length,
    micro: (_indices, scale) => {
      const loss = losses[Math.min(k++, losses.length - 1)]!;
      return { grads: new Map([['w', tf.fill(w.shape, 0.01 * scale)]]), loss, metrics: {}, tokens: 1 };
    },
  };
}

async function run(stageName: 'sft' | 'dpo', losses: number[], watchdog: LossWatchdog | undefined) {
  await tf.setBackend('cpu');
  const w = tf.variable(tf.zeros([2]), true, `w-${Math.random()}`);
  const records: Array<Record<string, number | string>> = [];
  try {
    const res = await runStage(
      scripted(stageName, losses, w),
      {
        settings: stage({ batch_size: 1, max_steps: losses.length, lr: 0.1, optimizer: 'sgd' }),
        optimizer: optim('sgd'),
        params: new Map([['w', w]]),
        seed: 0,
        evalEvery: null,
        doFirstEval: false,
        logEvery: 1,
        saveSteps: null,
        lossWatchdog: watchdog,
      },
      { log: (r) => void records.push(r) },
    );
    res.optimizer.dispose();
    return { steps: res.steps, records, error: null as TrainingDivergedError | null };
  } catch (err) {
    if (!(err instanceof TrainingDivergedError)) throw err;
    return { steps: null, records, error: err };
  } finally {
    w.dispose();
  }
}

test('loss watchdog: patience 3 consecutive steps above the threshold stop the run at the third, naming stage and step', async () => {
  // steps 1-2 fine, steps 3, 4, 5 above 5.0: stops at step 5
  const r = await run('dpo', [1, 1, 9, 9, 9, 1, 1, 1], { threshold: 5, patience: 3 });
  assert.ok(r.error, `expected TRAINING_DIVERGED, the run finished ${r.steps} steps`);
  assert.equal(r.error.code, 'TRAINING_DIVERGED');
  assert.equal(r.error.stage, 'dpo');
  assert.equal(r.error.step, 5);
  assert.match(r.error.message, /dpo at step 5/);
  assert.match(r.error.message, /loss_watchdog_threshold=5/);
  assert.match(r.error.message, /loss_watchdog_patience=3/);
});

test('loss watchdog: patience - 1 steps above the threshold (then a reset) do not stop the run', async () => {
  // two high steps, one at the threshold (not above: resets), two high again: never 3 in a row
  const losses = [9, 9, 5, 9, 9, 1];
  const r = await run('sft', losses, { threshold: 5, patience: 3 });
  assert.equal(r.error, null, r.error?.message);
  assert.equal(r.steps, losses.length);
});

test('loss watchdog: the SFT stage is named, and patience 1 stops at the first high step', async () => {
  const r = await run('sft', [1, 1, 1, 7, 1], { threshold: 2, patience: 1 });
  assert.equal(r.error?.code, 'TRAINING_DIVERGED');
  assert.equal(r.error?.stage, 'sft');
  assert.equal(r.error?.step, 4);
});

test('loss watchdog: off (threshold null) never stops on a high loss', async () => {
  const losses = [9, 9, 9, 9, 9];
  const r = await run('dpo', losses, { threshold: null, patience: 1 });
  assert.equal(r.error, null, r.error?.message);
  assert.equal(r.steps, losses.length);
});

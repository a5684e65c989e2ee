/**
 * TRL's training smoke test per loss type (trl tests/test_dpo_trainer.py `test_train_loss_types`): a few DPO
 * steps on stories260K for every LOSS_TYPES entry — the loss is logged and finite, every trainable weight
 * changed, the reference weights did not.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LOSS_TYPES, needsReference, resolveLossOptions } from '../../src/training/losses/index.js';
import { cloneModel } from '../../src/training/models/index.js';
import { runStage } from '../../src/training/trainer/stage.js';
import { dpoTask } from '../../src/training/trainer/tasks.js';
import { maxAbsDiff, optim, snapshot, stage, stories, toyPairs, trainable } from './trainer-helpers.js';

for (const lossType of LOSS_TYPES) {
  test(`loss type ${lossType}: trains, changes every trainable weight, leaves the reference alone`, async () => {
    const { pairs, padId } = await toyPairs();
    const policy = await stories();
    const loss = resolveLossOptions({ name: lossType, beta: 0.1 });
    const reference = needsReference(loss) ? cloneModel(policy, { trainable: false }) : null;
    const params = trainable(policy);
    const before = snapshot(policy.params);
    const refBefore = reference ? snapshot(reference.params) : null;
    const records: Array<Record<string, number | string>> = [];
    const task = dpoTask({
      policy,
      reference: reference ? { kind: 'model', model: reference } : { kind: 'none' },
      train: pairs.slice(0, 8),
      eval: [],
      padId,
      loss,
      params,
      evalBatchSize: 4,
      logitStats: false,
    });
    const res = await runStage(
      task,
      {
        settings: stage({ max_steps: 2, batch_size: 2, lr: 1e-2 }),
        optimizer: optim('adamw'),
        params,
        seed: 1,
        evalEvery: null,
        doFirstEval: false,
        logEvery: 1,
        saveSteps: null,
      },
      { log: (r) => void records.push(r) },
    );
    assert.equal(records.length, 2);
    for (const r of records) assert.ok(Number.isFinite(Number(r.loss)), `loss logged and finite: ${r.loss}`);
    for (const [k, v] of policy.params) assert.ok(maxAbsDiff(v.dataSync() as Float32Array, before.get(k)!) > 0, `${k} changed`);
    if (reference) {
      for (const [k, v] of reference.params) assert.equal(maxAbsDiff(v.dataSync() as Float32Array, refBefore!.get(k)!), 0, `reference ${k} unchanged`);
    }
    res.optimizer.dispose();
    reference?.dispose();
    policy.dispose();
  });
}

/**
 * Pipeline phase reference: the source follows the loss and settings (none, lora, precomputed, frozen model),
 * precomputed log-probs equal the SFT model's scores and survive a checkpoint round trip, a frozen copy stays
 * put unless a sync is due, and a DPO checkpoint without the reference's state is refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, lossOptions, type TrainConfig } from '../../src/config/index.js';
import { applyLora } from '../../src/training/models/index.js';
import { createReference, refLogpsFromHost, refLogpsToHost } from '../../src/training/pipeline/reference.js';
import type { ResumePoint } from '../../src/training/pipeline/resume.js';
import { scorePairs } from '../../src/training/trainer/tasks.js';
import { silent, smallConfig } from './pipeline-helpers.js';
import { stories, toyPairs } from './trainer-helpers.js';

/** A DPO resume point carrying only the reference state (what createReference reads). */
function point(over: Pick<ResumePoint, 'reference' | 'refLogps'>): ResumePoint {
  const state = { stage: 'dpo', step: 1 } as ResumePoint['state'];
  return { dir: 'ckpt', state, policy: new Map(), optimizer: { name: 'adamw', step: 1, slots: new Map() }, ...over };
}

async function inputs(cfg: TrainConfig, resume: ResumePoint | null = null) {
  const { pairs, padId } = await toyPairs();
  const policy = await stories();
  return { cfg, loss: lossOptions(cfg), policy, data: { train: pairs.slice(0, 4), eval: pairs.slice(4, 6), padId }, resume, logger: silent };
}

test('reference-free loss: none; LoRA: the adapter-disabled policy; neither stores checkpoint state', async () => {
  for (const [extra, kind] of [
    [['loss=simpo'], 'none'],
    [['lora.enabled=true'], 'lora'],
  ] as const) {
    const o = await inputs(await smallConfig([...extra]));
    const r = createReference(o);
    assert.equal(r.kind, kind);
    assert.equal(r.source.kind, kind);
    assert.deepEqual(r.checkpoint(), { reference: null, refLogps: null });
    r.dispose();
    o.policy.dispose();
  }
});

test('precomputed: the SFT model scored once, restored from a checkpoint unchanged', async () => {
  const o = await inputs(await smallConfig(['precompute_ref_log_probs=true']));
  const r = createReference(o);
  assert.equal(r.source.kind, 'precomputed');
  const expect = scorePairs(o.policy, o.data.train, o.data.padId, 2);
  if (r.source.kind !== 'precomputed') throw new Error('unreachable');
  assert.deepEqual([...r.source.train.chosen], [...expect.chosen]);
  assert.equal(r.source.eval.rejected.length, 2);
  const saved = r.checkpoint().refLogps;
  assert.ok(saved);
  assert.deepEqual(refLogpsFromHost(refLogpsToHost(r.source)), { train: r.source.train, eval: r.source.eval });
  // restore: scores from the checkpoint, not from the (changed) policy
  tf.tidy(() => {
    for (const v of o.policy.params.values()) v.assign(tf.mul(v, 0.5));
  });
  const restored = createReference({ ...o, resume: point({ refLogps: saved, reference: null }) });
  if (restored.source.kind !== 'precomputed') throw new Error('unreachable');
  assert.deepEqual([...restored.source.train.chosen], [...expect.chosen]);
  await assert.rejects(
    async () => createReference({ ...o, resume: point({ refLogps: null, reference: null }) }),
    (e: unknown) => e instanceof ConfigError && e.key === 'resume_from_checkpoint',
  );
  o.policy.dispose();
});

test('frozen model: a frozen copy that syncs only when due (hard update every step here)', async () => {
  const o = await inputs(await smallConfig(['ref_model_update_steps=2']));
  const r = createReference(o);
  if (r.source.kind !== 'model') throw new Error(`expected a frozen model, got ${r.kind}`);
  const ref = r.source.model;
  assert.ok([...ref.params.values()].every((v) => !v.trainable));
  const name = 'model.embed_tokens.weight';
  const before = (ref.params.get(name)!.dataSync() as Float32Array).slice();
  tf.tidy(() => o.policy.params.get(name)!.assign(tf.add(o.policy.params.get(name)!, 1)));
  r.afterStep(1);
  assert.deepEqual(ref.params.get(name)!.dataSync(), before, 'step 1: no update due');
  r.afterStep(2);
  assert.deepEqual(ref.params.get(name)!.dataSync(), o.policy.params.get(name)!.dataSync(), 'step 2: hard update');
  assert.equal(r.checkpoint().reference, ref.params);
  await assert.rejects(
    async () => createReference({ ...o, resume: point({ reference: null, refLogps: null }) }),
    (e: unknown) => e instanceof ConfigError && /no reference weights/.test(e.message),
  );
  r.dispose();
  o.policy.dispose();
});

test('LoRA policy: the reference is the same model with adapters off (no copy)', async () => {
  const o = await inputs(await smallConfig(['lora.enabled=true']));
  applyLora(o.policy, { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'] });
  const n = tf.memory().numTensors;
  const r = createReference(o);
  assert.equal(tf.memory().numTensors, n, 'no weights copied');
  r.dispose();
  o.policy.dispose();
});

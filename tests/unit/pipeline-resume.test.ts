/**
 * Pipeline phase resume: no setting or no checkpoint yet is a fresh start; `latest` finds the newest complete
 * checkpoint; each stage gets only its own position; a bad path fails; the config hash ignores cadence keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { CHECKPOINT_VERSION, CheckpointError, saveCheckpoint, type CheckpointState } from '../../src/training/trainer/checkpoint.js';
import { configHash, givenPaths, loadResumePoint, mergeResumeConfig, resumeFor, stagePosition } from '../../src/training/pipeline/resume.js';
import { silent, smallConfig } from './pipeline-helpers.js';

function state(stage: 'sft' | 'dpo', step: number): CheckpointState {
  return {
    version: CHECKPOINT_VERSION,
    stage,
    step,
    totalSteps: 4,
    examples: step * 2,
    numTokens: step * 100,
    rng: [1, 2, 3, step],
    optimizer: { name: 'adamw', step },
    stageComplete: false,
    lastMetrics: { loss: 1 / step },
    lastEval: {},
    sftSummary: { eval_loss: 2 },
    configHash: 'abc',
    savedAt: new Date(0).toISOString(),
  };
}

test('fresh starts, latest, and the stage split of a resume point', async () => {
  const cfg = await smallConfig();
  const dir = mkdtempSync(join(tmpdir(), 'pipe-resume-'));
  assert.equal(await loadResumePoint(cfg, dir, silent), null, 'resume_from_checkpoint null');
  assert.equal(await loadResumePoint({ resume_from_checkpoint: 'latest' }, dir, silent), null, 'latest without checkpoints');
  const w = tf.variable(tf.tensor1d([1, 2, 3]));
  for (const [stage, step] of [
    ['sft', 2],
    ['dpo', 1],
    ['dpo', 3],
  ] as const) {
    await saveCheckpoint(
      dir,
      { state: state(stage, step), policy: new Map([['w', w]]), optimizer: { name: 'adamw', step, slots: new Map() } },
      { totalLimit: null },
    );
  }
  const p = await loadResumePoint({ resume_from_checkpoint: 'latest' }, dir, silent);
  assert.ok(p);
  assert.match(p.dir, /checkpoint-dpo-000003$/);
  assert.deepEqual([...p.policy.get('w')!.data], [1, 2, 3]);
  assert.equal(resumeFor(p, 'sft'), null, 'a DPO checkpoint gives SFT nothing to continue');
  const d = resumeFor(p, 'dpo');
  assert.deepEqual(d?.position, stagePosition(p.state));
  assert.equal(d?.position.step, 3);
  assert.equal(d?.optimizer.step, 3);
  const explicit = await loadResumePoint({ resume_from_checkpoint: join(dir, 'checkpoints', 'checkpoint-sft-000002') }, dir, silent);
  assert.equal(explicit?.state.stage, 'sft');
  assert.equal(resumeFor(explicit, 'sft')?.position.step, 2);
  w.dispose();
});

test('a path that is not a checkpoint fails with CheckpointError', async () => {
  await assert.rejects(
    loadResumePoint({ resume_from_checkpoint: tmpdir() }, tmpdir(), silent),
    (e: unknown) => e instanceof CheckpointError && e.code === 'INVALID_CHECKPOINT' && /no state\.json/.test(e.message),
  );
});

test('configHash ignores resume/output/progress/log cadence and sees training settings', async () => {
  const base = configHash(await smallConfig());
  assert.equal(configHash(await smallConfig(['log_every=5', 'output_dir=/tmp/x', 'resume_from_checkpoint=latest'])), base);
  assert.notEqual(configHash(await smallConfig(['loss.beta=0.3'])), base);
});

test('mergeResumeConfig: ungiven settings come from the checkpoint; given safe ones apply; unsafe ones are conflicts', async () => {
  const saved = await smallConfig(['datasets=[hh]', 'loss.beta=0.2', 'max_steps=4']);
  const requested = await smallConfig(['max_steps=9', 'loss.beta=0.3', 'resume_from_checkpoint=latest']);
  const defaults = await smallConfig();
  const paths = givenPaths({ overrides: ['max_steps=9', 'loss.beta=0.3', 'resume_from_checkpoint=latest'] }, requested, defaults);
  const { merged, conflicts } = mergeResumeConfig(saved, requested, paths);
  assert.deepEqual(merged.datasets, ['hh'], 'datasets not given: the checkpoint’s');
  assert.equal(merged.max_steps, 9);
  assert.equal(merged.resume_from_checkpoint, 'latest');
  assert.deepEqual(
    conflicts.map((c) => [c.key, c.checkpoint, c.given, c.safe]),
    [
      ['max_steps', 4, 9, true],
      ['loss.beta', 0.2, 0.3, false],
    ],
  );
  assert.equal((merged.loss as { beta: number }).beta, 0.2, 'strict: the unsafe change is not applied');
  const lenient = mergeResumeConfig(saved, { ...requested, resume_strict: false }, paths);
  assert.equal((lenient.merged.loss as { beta: number }).beta, 0.3);
});

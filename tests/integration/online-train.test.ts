/**
 * A short online DPO run on the toy prompts with the rule judge (config/judge/toy-kind.yaml), stories260K,
 * fixed seed: SFT then online DPO through runTraining raises the mean judge score of the policy's samples on
 * the held-out prompts (the same sampling seeds before and after), logs TRL's OnlineDPOTrainer metrics and
 * writes the artifact.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { loadConfig } from '../../src/config/index.js';
import { runTraining } from '../../src/training/run.js';

const METRICS = [
  'objective/kl',
  'objective/entropy',
  'objective/non_score_reward',
  'objective/rlhf_reward',
  'objective/scores',
  'rewards/chosen',
  'rewards/rejected',
  'rewards/accuracies',
  'rewards/margins',
  'logps/chosen',
  'logps/rejected',
  'val/contain_eos_token',
  'beta',
  'generation/tokens_per_s',
];

test('online DPO on the toy prompts with the rule judge raises the mean judge score (seed 0)', { timeout: 600_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'online-train-'));
  try {
    const config = loadConfig({
      overrides: [
        'backend=wasm',
        'stage=online_dpo',
        'online_dpo.judge={type: rule, file: toy-kind}',
        'online_dpo.num_samples_per_step=4',
        'online_dpo.max_new_tokens=24',
        'online_dpo.beta=[0.1]',
        'sft.max_steps=10',
        'max_steps=6',
        'batch_size=4',
        'lr=1e-3',
        'eval_split_fraction=0.1',
        'n_eval_examples=4',
        'do_first_eval=true',
        'sample_during_eval=false',
        'log_logit_stats=false',
        'progress_bar=false',
        'tensorboard=false',
        'plot=false',
      ],
    });
    const res = await runTraining({ config, outputDir: dir, logger: pino({ level: 'silent' }) });
    const lines = readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number | string>);
    const evals = lines.filter((l) => l.stage === 'dpo' && 'eval_objective/scores' in l);
    assert.ok(evals.length >= 2, 'an eval before and after online DPO');
    const before = evals[0]!['eval_objective/scores'] as number;
    const afterScore = evals[evals.length - 1]!['eval_objective/scores'] as number;
    t.diagnostic(`eval_objective/scores ${before} -> ${afterScore}`);
    assert.ok(afterScore > before, `mean judge score ${before} -> ${afterScore}`);
    const steps = lines.filter((l) => l.stage === 'dpo' && 'loss' in l);
    assert.equal(steps.length, 6);
    const last = steps[steps.length - 1]!;
    t.diagnostic(JSON.stringify(Object.fromEntries([...METRICS, 'loss'].map((k) => [k, last[k]]))));
    for (const k of METRICS)
      assert.ok(
        steps.every((s) => Number.isFinite(s[k])),
        `${k} logged at every step`,
      );
    assert.ok(steps.every((s) => s.beta === 0.1));
    assert.ok(
      lines.some((l) => l.stage === 'sft'),
      'SFT ran first on the toy chosen completions',
    );
    assert.ok(existsSync(join(dir, 'model', 'model.safetensors')));
    assert.ok(existsSync(join(dir, 'manifest.json')));
    const run = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8')) as { config: { stage: string } };
    assert.equal(run.config.stage, 'online_dpo');
    assert.ok(Number.isFinite(res.metrics.dpo['objective/scores']));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

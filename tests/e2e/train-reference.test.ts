/**
 * Reference handling through runTraining: precompute_ref_log_probs gives the frozen-model run's metrics;
 * PaddleNLP's hard update (ref_model_update_steps=1) makes every step start from policy == reference (loss
 * ln 2); TR-DPO soft sync with α = 1 does the same; reference-free losses need no reference.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { runTraining } from '../../src/training/run.js';
import { MetricsFile } from '../../src/training/trainer/monitor.js';
import { loadConfig } from '../../src/config/index.js';

const BASE = [
  'sft.max_steps=2',
  'max_steps=4',
  'batch_size=2',
  'n_eval_examples=4',
  'n_eval_model_samples=0',
  'progress_bar=false',
  'tensorboard=false',
  'plot=false',
  'log_logit_stats=false',
];

async function dpoRecords(extra: string[]): Promise<Array<Record<string, number | string>>> {
  const dir = mkdtempSync(join(tmpdir(), 'train-ref-'));
  await runTraining({ outputDir: dir, config: loadConfig({ overrides: [...BASE, ...extra] }), logger: pino({ level: 'silent' }) });
  return MetricsFile.read(join(dir, 'metrics.jsonl')).filter((r) => r.stage === 'dpo' && r.loss !== undefined);
}

test('precompute_ref_log_probs reproduces the frozen-reference run', async () => {
  const frozen = await dpoRecords([]);
  const pre = await dpoRecords(['precompute_ref_log_probs=true']);
  assert.equal(pre.length, frozen.length);
  assert.ok(Math.abs(Number(pre[0]!.loss) - Math.LN2) < 1e-5);
  for (let i = 0; i < pre.length; i++) {
    for (const k of ['loss', 'rewards/margins', 'rewards/chosen']) {
      assert.ok(Math.abs(Number(pre[i]![k]) - Number(frozen[i]![k])) < 1e-3, `step ${i + 1} ${k}: ${pre[i]![k]} vs ${frozen[i]![k]}`);
    }
  }
  assert.ok(Number(frozen[3]!.loss) !== Math.LN2);
});

test('hard reference updates every step (ref_model_update_steps=1) and soft sync with alpha 1 restart at ln 2', async () => {
  for (const extra of [['ref_model_update_steps=1'], ['sync_ref_model=true', 'ref_model_sync_steps=1', 'ref_model_mixup_alpha=1']]) {
    const rs = await dpoRecords(extra);
    for (const r of rs) assert.ok(Math.abs(Number(r.loss) - Math.LN2) < 1e-5, `${extra.join(' ')}: step ${r.step} loss ${r.loss}`);
  }
  const none = await dpoRecords([]);
  assert.ok(Math.abs(Number(none[2]!.loss) - Math.LN2) > 1e-3, 'without sync the loss moves away from ln 2');
});

test('a reference-free loss (simpo) trains without a reference', async () => {
  const rs = await dpoRecords(['loss=simpo']);
  assert.equal(rs.length, 4);
  for (const r of rs) assert.ok(Number.isFinite(Number(r.loss)));
});

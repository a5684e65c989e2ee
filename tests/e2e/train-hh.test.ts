/**
 * The DPO path on a small slice of Anthropic HH-RLHF (../shared/data/hh-rlhf; the text is never printed):
 * SFT then DPO on stories260K; the first DPO step's loss is ln 2 (policy == reference) and the rewards/margins
 * rise over the steps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { loadPreferenceExamples, resolveDataset } from '../../src/training/data/index.js';
import { runTraining } from '../../src/training/run.js';
import { MetricsFile } from '../../src/training/trainer/monitor.js';
import { loadConfig } from '../../src/config/index.js';

const entry = resolveDataset('hh');

test('HH-RLHF slice: first DPO loss is ln 2 and rewards/margins rise', {
  skip: !entry || !existsSync(entry.path) ? 'HH-RLHF data not present' : false,
}, async () => {
  const examples = (await loadPreferenceExamples('hh')).slice(0, 40);
  const dir = mkdtempSync(join(tmpdir(), 'train-hh-'));
  await runTraining({
    outputDir: dir,
    dataset: examples,
    logger: pino({ level: 'silent' }),
    config: loadConfig({
      overrides: [
        'max_length=96',
        'max_prompt_length=48',
        'sft.max_steps=3',
        'n_epochs=2',
        'batch_size=4',
        'lr=5e-4',
        'eval_split_fraction=0.1',
        'n_eval_model_samples=0',
        'log_logit_stats=false',
        'progress_bar=false',
        'tensorboard=false',
        'plot=false',
      ],
    }),
  });
  const dpo = MetricsFile.read(join(dir, 'metrics.jsonl')).filter((r) => r.stage === 'dpo' && r.loss !== undefined);
  assert.ok(dpo.length >= 10, `${dpo.length} DPO steps`);
  assert.ok(Math.abs(Number(dpo[0]!.loss) - Math.LN2) < 1e-6, `first DPO loss ${dpo[0]!.loss} must be ln 2`);
  assert.equal(Number(dpo[0]!['rewards/margins']), 0);
  const mean = (rs: typeof dpo) => rs.reduce((a, r) => a + Number(r['rewards/margins']), 0) / rs.length;
  const k = Math.floor(dpo.length / 3);
  const early = mean(dpo.slice(0, k));
  const late = mean(dpo.slice(-k));
  assert.ok(late > early && late > 0, `rewards/margins rise: early ${early}, late ${late}`);
});

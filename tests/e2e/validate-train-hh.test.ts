/**
 * One view of the data (issue 16): `dpo validate` with the same overrides as `dpo train` reports exactly
 * what training keeps, drops and truncates on HH-RLHF (../shared/data/hh-rlhf; its text is never printed):
 * the counts equal run.json's `data`, the 4 pairs with an empty chosen response after prompt extraction are
 * errors for validate and dropped by training, and the >10% truncation warning names max_length.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { validateData } from '../../src/cli/commands/validate.js';
import { loadConfig } from '../../src/config/index.js';
import { resolveDataset } from '../../src/training/data/index.js';
import { runTraining } from '../../src/training/run.js';

const entry = resolveDataset('hh');

test('validate and train agree on HH: same kept / dropped / truncated counts', {
  skip: !entry || !existsSync(entry.path) ? 'HH-RLHF data not present' : false,
}, async () => {
  const data = ['datasets=[hh]', 'n_eval_examples=8'];
  const v = await validateData(data, { json: true });
  assert.equal(v.code, 1, 'validate reports the invalid pairs as errors');
  const t = v.result?.training;
  assert.ok(t && !('error' in t), JSON.stringify(t));
  assert.equal(t.invalid, 4);
  assert.deepEqual(t.invalid_by_code, { EMPTY_FIELD: 4 });
  assert.equal(v.result?.reports[0]?.counts.emptyChosen, 4, 'the per-file report counts the same pairs');
  assert.ok(t.truncated_fraction > 0.1);
  assert.ok(
    t.warnings.some((w) => /max_length=128/.test(w)),
    t.warnings.join('\n'),
  );
  assert.equal(v.result?.settings.max_length, 128, 'the training default, not 512');

  const dir = mkdtempSync(join(tmpdir(), 'validate-hh-'));
  const train = ['sft.max_steps=1', 'max_steps=1', 'n_eval_model_samples=0', 'progress_bar=false', 'tensorboard=false', 'plot=false'];
  await runTraining({ outputDir: dir, config: loadConfig({ overrides: [...data, ...train] }), logger: pino({ level: 'silent' }) });
  const run = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8'));
  assert.deepEqual(run.data, t);
});

/** Pipeline phase samples: n prompts completed per eval, seeded by step, the file reset on a fresh run only. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promptText, Sampler } from '../../src/training/pipeline/samples.js';
import { smallConfig } from './pipeline-helpers.js';
import { stories, toyPairs } from './trainer-helpers.js';

test('samples.jsonl: n_eval_model_samples lines per eval, deterministic per step; fresh runs reset it', async () => {
  const { pairs, tokenizer } = await toyPairs();
  const policy = await stories();
  const cfg = await smallConfig(['n_eval_model_samples=2', 'sample_max_new_tokens=5']);
  const outputDir = mkdtempSync(join(tmpdir(), 'pipe-samples-'));
  const path = join(outputDir, 'samples.jsonl');
  writeFileSync(path, 'old\n');
  const s = new Sampler({ cfg, policy, tokenizer, evalPairs: pairs.slice(0, 3), outputDir, resumed: false });
  assert.equal(existsSync(path), false, 'a fresh run removes the old samples');
  await s.onEval('sft')({ step: 4 });
  const lines = readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.equal(lines.length, 2);
  assert.deepEqual(
    lines.map((l) => [l.stage, l.step, l.index]),
    [
      ['sft', 4, 0],
      ['sft', 4, 1],
    ],
  );
  assert.equal(lines[0].prompt, promptText(pairs[0]!, tokenizer));
  assert.ok(!lines[0].prompt.startsWith('<s>'));
  assert.deepEqual(
    s.sample('sft', 4).map((r) => r.completion),
    lines.map((l) => l.completion),
    'same step, same completions',
  );
  const resumed = new Sampler({ cfg, policy, tokenizer, evalPairs: pairs.slice(0, 3), outputDir, resumed: true });
  assert.equal(readFileSync(path, 'utf8').trim().split('\n').length, 2, 'a resumed run keeps them');
  const off = new Sampler({ cfg: { ...cfg, sample_during_eval: false }, policy, tokenizer, evalPairs: pairs, outputDir, resumed: true });
  assert.deepEqual(off.sample('dpo', 1), []);
  void resumed;
  policy.dispose();
});

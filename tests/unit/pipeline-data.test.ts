/** Pipeline phase data: load, split, cap, tokenize and count; a max_length nothing fits fails naming it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../src/config/index.js';
import { loadPreferenceExamples } from '../../src/training/data/index.js';
import { prepareData } from '../../src/training/pipeline/data.js';
import { loadPretrained } from '../../src/training/models/index.js';
import pino from 'pino';
import { silent, smallConfig } from './pipeline-helpers.js';

async function tokenizer() {
  const { model, tokenizer } = await loadPretrained('stories260K');
  model.dispose();
  return tokenizer;
}

test('toy data: the split, the eval cap and the counts add up', async () => {
  const cfg = await smallConfig(['n_eval_examples=3', 'eval_split_fraction=0.25']);
  const tok = await tokenizer();
  const d = await prepareData(cfg, tok, silent);
  const all = await loadPreferenceExamples('toy', { tokenizer: tok });
  assert.equal(d.stats.examples, all.length);
  assert.equal(d.eval.length, 3);
  assert.equal(d.stats.train_pairs, d.train.length);
  assert.equal(d.stats.eval_pairs, d.eval.length);
  assert.equal(d.train.length + Math.round(all.length * 0.25), all.length, 'nothing dropped at the default max_length');
  assert.equal(d.stats.dropped, 0);
  assert.match(d.stats.sha256, /^[0-9a-f]{64}$/);
  assert.equal(d.padId, tok.padTokenId ?? tok.eosTokenId);
  const again = await prepareData(cfg, tok, silent);
  assert.deepEqual(again.train, d.train, 'the split depends only on the seed');
  const other = await prepareData(await smallConfig(['n_eval_examples=3', 'eval_split_fraction=0.25', 'seed=7']), tok, silent);
  assert.notDeepEqual(other.train, d.train);
});

test('short max_length truncates and counts; examples given by the caller replace datasets', async () => {
  const tok = await tokenizer();
  const rows = (await loadPreferenceExamples('toy')).slice(0, 6);
  const d = await prepareData(await smallConfig(['max_length=24', 'max_prompt_length=12', 'eval_split_fraction=0']), tok, silent, rows);
  assert.equal(d.stats.examples, 6);
  assert.equal(d.train.length, 6);
  assert.equal(d.stats.truncated, 6);
  for (const p of d.train) assert.ok(p.promptIds.length + Math.max(p.chosenIds.length, p.rejectedIds.length) <= 24);
});

test('no pair fits: ConfigError naming max_length', async () => {
  const tok = await tokenizer();
  const rows = [{ prompt: 'Once upon a time there was a very long prompt that goes on and on', chosen: ' yes', rejected: ' no' }];
  // loadConfig rejects max_prompt_length >= max_length; the phase alone still guards against an empty train set
  const cfg = { ...(await smallConfig(['eval_split_fraction=0'])), max_length: 4, max_prompt_length: 8 };
  await assert.rejects(prepareData(cfg, tok, silent, rows), (e: unknown) => e instanceof ConfigError && e.key === 'max_length');
});

test('pairs validate calls errors are dropped and counted; >10% truncated warns naming max_length', async () => {
  const tok = await tokenizer();
  const rows = (await loadPreferenceExamples('toy')).slice(0, 10);
  rows.push({ prompt: 'Once upon a time', chosen: '  ', rejected: ' no' }, { prompt: 'Once', chosen: ' same', rejected: ' same' });
  const logs: Array<{ level: number; msg: string }> = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => void logs.push(JSON.parse(l)) });
  const d = await prepareData(await smallConfig(['eval_split_fraction=0', 'max_length=24', 'max_prompt_length=12']), tok, logger, rows);
  assert.equal(d.stats.examples, 12);
  assert.equal(d.stats.invalid, 2);
  assert.deepEqual(d.stats.invalid_by_code, { EMPTY_FIELD: 1, CHOSEN_EQUALS_REJECTED: 1 });
  assert.equal(d.stats.dropped, 2);
  assert.equal(d.train.length, 10);
  assert.ok(d.stats.truncated_fraction > 0.1);
  assert.ok(d.stats.warnings.some((w) => /max_length=24/.test(w)));
  assert.ok(
    logs.some((l) => l.level === 40 && /truncated to max_length=24/.test(l.msg)),
    'logged as a warning',
  );
  assert.ok(logs.some((l) => l.level === 40 && /2 of 12 pairs dropped/.test(l.msg)));
  const clean = await prepareData(await smallConfig(['eval_split_fraction=0']), tok, silent, rows.slice(0, 10));
  assert.deepEqual(clean.stats.warnings, [], 'toy data at max_length 128: nothing to warn about');
});

test('format errors name the setting dataset_format=', async () => {
  await assert.rejects(loadPreferenceExamples('toy', { format: 'nope' }), /dataset_format=nope is not a known format/);
  await assert.rejects(loadPreferenceExamples([{ question: 'q', answer: 'a' }]), /set dataset_format=/);
});

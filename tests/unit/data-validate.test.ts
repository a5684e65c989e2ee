import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import Ajv from 'ajv';
import { inspectDataset, validateRows } from '../../src/training/data/index.js';
import { loadTokenizer } from '../../src/training/tokenizers/index.js';

test('validateRows: codes, fields and indices of each problem; a clean payload has none', () => {
  const rows: unknown[] = [
    { prompt: 'p', chosen: 'a', rejected: 'b' },
    { prompt: 'p', chosen: 'same', rejected: 'same' },
    { prompt: '  ', chosen: 'a', rejected: 'b' },
    { chosen: 'a', rejected: 'b' },
    { prompt: 'p', chosen: 7, rejected: 'b' },
    'not an object',
    { prompt: 'p', chosen: 'x ', rejected: 'x' },
  ];
  assert.deepEqual(
    validateRows(rows).map(({ index, field, code }) => ({ index, field, code })),
    [
      { index: 1, field: 'rejected', code: 'CHOSEN_EQUALS_REJECTED' },
      { index: 2, field: 'prompt', code: 'EMPTY_FIELD' },
      { index: 3, field: 'prompt', code: 'MISSING_FIELD' },
      { index: 4, field: 'chosen', code: 'INVALID_FIELD_TYPE' },
      { index: 5, field: '', code: 'INVALID_ROW_TYPE' },
      { index: 6, field: 'rejected', code: 'CHOSEN_EQUALS_REJECTED' },
    ],
  );
  for (const p of validateRows(rows)) assert.match(p.message, new RegExp(`row ${p.index}`));
  assert.deepEqual(validateRows([rows[0]]), []);
  assert.equal(validateRows([]).at(0)?.code, 'EMPTY_DATASET');
  const many = Array.from({ length: 50 }, () => ({ prompt: 'p', chosen: '', rejected: '' }));
  assert.equal(validateRows(many, 20).length, 20);
});

test('schemas/dataset-row.json compiles under ajv and agrees with validateRows on shape', () => {
  const ajv = new Ajv.default({ strict: true });
  const check = ajv.compile(JSON.parse(readFileSync('schemas/dataset-row.json', 'utf8')));
  assert.equal(check({ prompt: 'p', chosen: 'a', rejected: 'b' }), true);
  assert.equal(check({ prompt: 'p', chosen: 'a' }), false);
  assert.equal(check({ prompt: 'p', chosen: 1, rejected: 'b' }), false);
});

test('inspectDataset lists bad records by line, duplicates, chosen == rejected; toy data is clean', async () => {
  const r = await inspectDataset('tests/fixtures/data/bad-rows.jsonl');
  assert.equal(r.ok, false);
  assert.equal(r.format, 'explicit');
  assert.deepEqual(
    r.errors.map((p) => [p.line, p.code, p.field]),
    [
      [2, 'EMPTY_FIELD', 'chosen'],
      [3, 'CHOSEN_EQUALS_REJECTED', 'rejected'],
      [4, 'INVALID_FIELD_TYPE', 'chosen'],
    ],
  );
  assert.equal(r.counts.duplicates, 1);
  assert.equal(r.warnings[0]!.line, 5);
  const m = await inspectDataset('tests/fixtures/data/malformed.jsonl');
  assert.equal(m.ok, false);
  assert.deepEqual(
    m.errors.map((p) => [p.code, p.line]),
    [['JSON_PARSE_FAILED', 4]],
  );
  assert.equal(m.pairs, 3, 'lines after the malformed one are still read');
  const toy = await inspectDataset('toy', { tokenizer: await loadTokenizer('stories260K'), maxLength: 64, maxPromptLength: 32 });
  assert.equal(toy.ok, true);
  assert.equal(toy.pairs, 48);
  assert.equal(toy.unit, 'tokens');
  assert.ok(toy.counts.overLength > 0, 'maxLength 64 is below the longest toy pair');
  assert.ok(toy.lengths!.sequence.max > 64 && toy.lengths!.sequence.p50 <= toy.lengths!.sequence.p90);
  const missing = await inspectDataset('/nonexistent.jsonl');
  assert.equal(missing.fatal?.code, 'DATA_NOT_FOUND');
});

test('tools/validate-data exits 1 on errors and 0 on clean data', async () => {
  const run = promisify(execFile);
  const ok = await run(process.execPath, ['--import', 'tsx', 'tools/validate-data.ts', 'tests/fixtures/data/sharegpt.json', '--tokenizer', 'none']);
  assert.match(ok.stdout, /format: +sharegpt/);
  assert.match(ok.stdout, /OK/);
  await assert.rejects(run(process.execPath, ['--import', 'tsx', 'tools/validate-data.ts', 'tests/fixtures/data/bad-rows.jsonl', '--json']), (e: unknown) => {
    const err = e as { code: number; stdout: string };
    assert.equal(err.code, 1);
    assert.equal(JSON.parse(err.stdout).errorCount, 3);
    return true;
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync, copyFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DataError,
  detectFormat,
  loadPreferenceExamples,
  splitImplicitPrompt,
  resolveDataset,
  listDatasets,
  type DataFormat,
} from '../../src/training/data/index.js';
import { loadTokenizer } from '../../src/training/tokenizers/index.js';
import type { PreferenceExample } from '../../src/training/types.js';
import { shared } from '../shared.js';

const FX = 'tests/fixtures/data';
const expected = JSON.parse(readFileSync(join(FX, 'explicit.json'), 'utf8')) as PreferenceExample[];
const strip = (xs: PreferenceExample[]) => xs.map(({ prompt, chosen, rejected }) => ({ prompt, chosen, rejected }));

const cases: [string, string, Record<string, string>?][] = [
  ['explicit.json', 'explicit'],
  ['explicit.jsonl', 'explicit'],
  ['implicit.jsonl', 'implicit'],
  ['conversational.jsonl', 'conversational'],
  ['conversational-implicit.jsonl', 'conversational'],
  ['sharegpt.json', 'sharegpt'],
  ['roll.jsonl', 'roll', { chosenKey: 'chosen_response', rejectedKey: 'rejected_response' }],
  ['paddle.jsonl', 'paddle'],
  ['grouped.json', 'grouped'],
];

for (const [file, format, keys] of cases) {
  test(`${file}: detected as ${format}, gives the same PreferenceExamples as explicit.json`, async () => {
    const info: { format?: DataFormat } = {};
    const { iteratePreferenceExamples } = await import('../../src/training/data/index.js');
    const got: PreferenceExample[] = [];
    for await (const b of iteratePreferenceExamples(join(FX, file), { ...keys }, info)) got.push(...b.examples);
    assert.equal(info.format, format);
    assert.deepEqual(strip(got), expected);
    // explicit format name gives the same
    assert.deepEqual(strip(await loadPreferenceExamples(join(FX, file), { ...keys, format })), expected);
  });
}

test('gzip of JSONL and of a JSON array read like the plain files (detected by magic bytes)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'data-gz-'));
  try {
    writeFileSync(join(dir, 'a.jsonl.gz'), gzipSync(readFileSync(join(FX, 'explicit.jsonl'))));
    writeFileSync(join(dir, 'b.json.gz'), gzipSync(readFileSync(join(FX, 'sharegpt.json'))));
    writeFileSync(join(dir, 'c.data'), gzipSync(readFileSync(join(FX, 'implicit.jsonl'))));
    for (const f of ['a.jsonl.gz', 'b.json.gz', 'c.data']) assert.deepEqual(strip(await loadPreferenceExamples(join(dir, f))), expected, f);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('grouped (reference) records yield every pair; SFT uses sft_target', async () => {
  const got = await loadPreferenceExamples(join(FX, 'grouped-ranked.json'));
  assert.equal(got.length, 3);
  const responses = [' The sky is blue on a sunny day.', ' It is blue.', ' Go away, I will not tell you.'];
  assert.deepEqual(
    got.map((e) => [e.chosen, e.rejected]),
    [
      [responses[0], responses[1]],
      [responses[0], responses[2]],
      [responses[1], responses[2]],
    ],
  );
  for (const e of got) assert.equal(e.sftTarget, responses[0]);
  assert.equal(new Set(got.map((e) => e.prompt)).size, 1);
});

test('in-memory rows (the webhook dataset) and ROLL instruction + input', async () => {
  const rows = [{ prompt: 'Say hi.', chosen: 'Hi!', rejected: 'No.' }];
  assert.deepEqual(await loadPreferenceExamples(rows), rows);
  const roll = await loadPreferenceExamples([{ instruction: 'Translate to French.', input: 'hello', chosen: 'bonjour', rejected: 'hola' }]);
  assert.deepEqual(roll, [{ prompt: '\n\nHuman: Translate to French.\nhello\n\nAssistant:', chosen: ' bonjour', rejected: ' hola' }]);
});

test('PaddleNLP: higher sort is chosen, whatever the order of responses', async () => {
  const a = await loadPreferenceExamples([{ src: ['Q?'], tgt: [], response: ['good', 'bad'], sort: [5, 2] }]);
  const b = await loadPreferenceExamples([{ src: 'Q?', response: ['bad', 'good'], sort: [2, 5] }]);
  assert.deepEqual(a, b);
  assert.equal(a[0]!.chosen, ' good');
  await assert.rejects(
    loadPreferenceExamples([{ src: ['Q?'], tgt: [], response: ['a', 'b'], sort: [1, 1] }]),
    (e: unknown) => e instanceof DataError && e.field === 'sort',
  );
});

test('conversational data is rendered with the tokenizer chat template (TRL: prompt with generation prompt, completion = suffix)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'data-tpl-'));
  try {
    copyFileSync(shared('tokenizers/gpt2/tokenizer.json'), join(dir, 'tokenizer.json'));
    const tpl =
      "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>', bos_token: '<|endoftext|>', chat_template: tpl }));
    const tok = await loadTokenizer(dir);
    const got = await loadPreferenceExamples(join(FX, 'sharegpt.json'), { tokenizer: tok });
    assert.equal(got[0]!.prompt, '<|user|>\nWhat color is the sky on a sunny day?<|endoftext|>\n<|assistant|>\n');
    assert.equal(got[0]!.chosen, 'The sky is blue on a sunny day.<|endoftext|>\n');
    assert.equal(got[0]!.rejected, 'Go away, I will not tell you.<|endoftext|>\n');
    const conv = await loadPreferenceExamples(join(FX, 'conversational.jsonl'), { tokenizer: tok });
    assert.deepEqual(conv, got);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('implicit prompt: HH rule, TRL common-prefix rule', () => {
  const h = '\n\nHuman: hi\n\nAssistant:';
  assert.deepEqual(splitImplicitPrompt(`${h} hello`, `${h} go away`), { prompt: h, chosen: ' hello', rejected: ' go away' });
  // divergence in an earlier assistant turn: the prompt stops at the last shared "\n\nAssistant:"
  const c = `${h} A\n\nHuman: more\n\nAssistant: B`;
  const r = `${h} X`;
  assert.deepEqual(splitImplicitPrompt(c, r), { prompt: h, chosen: c.slice(h.length), rejected: ' X' });
  // no HH markers: common prefix minus a trailing space
  assert.deepEqual(splitImplicitPrompt('The answer is yes', 'The answer is no'), { prompt: 'The answer is', chosen: ' yes', rejected: ' no' });
});

test('format errors are typed and name keys, fields, lines', async () => {
  assert.throws(
    () => detectFormat({ question: 'x', answer: 'y' }),
    (e: unknown) => e instanceof DataError && e.code === 'UNKNOWN_DATA_FORMAT' && /question, answer/.test(e.message),
  );
  await assert.rejects(
    loadPreferenceExamples([{ prompt: 'p', chosen: 'c' }], { format: 'explicit' }),
    (e: unknown) => e instanceof DataError && e.code === 'INVALID_DATA_RECORD' && e.field === 'rejected' && e.index === 0,
  );
  await assert.rejects(
    loadPreferenceExamples([{ prompt: 'p', chosen: 'c', rejected: 'r' }], { format: 'nope' }),
    (e: unknown) => e instanceof DataError && e.code === 'UNKNOWN_DATA_FORMAT',
  );
  await assert.rejects(loadPreferenceExamples('/nonexistent/file.jsonl'), (e: unknown) => e instanceof DataError && e.code === 'DATA_NOT_FOUND');
  await assert.rejects(
    loadPreferenceExamples(join(FX, 'malformed.jsonl')),
    (e: unknown) => e instanceof DataError && e.code === 'DATA_PARSE_FAILED' && e.line === 4 && /malformed\.jsonl:4/.test(e.message),
  );
  await assert.rejects(
    loadPreferenceExamples(join(FX, 'bad-rows.jsonl')),
    (e: unknown) => e instanceof DataError && e.code === 'INVALID_DATA_RECORD' && e.line === 2 && e.field === 'chosen',
  );
});

test('registered datasets: toy and hh resolve; HH_RLHF_PATH overrides the hh path', () => {
  assert.ok(listDatasets().includes('toy'));
  assert.ok(listDatasets().includes('hh'));
  const prev = process.env.HH_RLHF_PATH;
  try {
    process.env.HH_RLHF_PATH = '/somewhere/else.jsonl.gz';
    assert.equal(resolveDataset('hh')!.path, '/somewhere/else.jsonl.gz');
    delete process.env.HH_RLHF_PATH;
    assert.match(resolveDataset('hh')!.path, /harmless-base-test\.jsonl\.gz$/);
    assert.equal(resolveDataset('no-such-dataset'), undefined);
  } finally {
    if (prev === undefined) delete process.env.HH_RLHF_PATH;
    else process.env.HH_RLHF_PATH = prev;
  }
});

test('grouped records also come as JSONL: keyed by prompt per line, or flat {prompt, responses, pairs}', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'data-grouped-'));
  try {
    const lines = expected.map((e) => JSON.stringify({ [e.prompt]: { responses: [e.chosen, e.rejected], pairs: [[0, 1]], sft_target: e.chosen } }));
    writeFileSync(join(dir, 'keyed.jsonl'), `${lines.join('\n')}\n`);
    const flat = expected.map((e) => JSON.stringify({ prompt: e.prompt, responses: [e.rejected, e.chosen], pairs: [[1, 0]] }));
    writeFileSync(join(dir, 'flat.jsonl'), `${flat.join('\n')}\n`);
    assert.deepEqual(strip(await loadPreferenceExamples(join(dir, 'keyed.jsonl'))), expected);
    const f = await loadPreferenceExamples(join(dir, 'flat.jsonl'));
    assert.deepEqual(strip(f), expected);
    assert.deepEqual(
      f.map((e) => e.sftTarget),
      expected.map((e) => e.chosen),
      "without sft_target SFT uses the first pair's preferred response",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

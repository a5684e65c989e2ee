import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  collatePreference,
  collateSft,
  dedupExamples,
  newTokenizeStats,
  resolvePadId,
  shuffleExamples,
  splitEval,
  tokenizeDataset,
  tokenizePreference,
  type TokenizedPair,
} from '../../src/training/data/index.js';
import { loadTokenizer, type HfTokenizer } from '../../src/training/tokenizers/index.js';
import type { Tokenizer } from '../../src/training/types.js';
import { shared } from '../shared.js';

const rows = (a: Int32Array | Float32Array, seqLen: number) =>
  Array.from({ length: a.length / seqLen }, (_, r) => Array.from(a.slice(r * seqLen, (r + 1) * seqLen)));
const pair = (p: number[], c: number[], r: number[]): TokenizedPair => ({ promptIds: p, chosenIds: c, rejectedIds: r, sftIds: c });

test('collator: TRL DataCollatorForPreference vectors (dpo-anchors §3.3a)', () => {
  const b = collatePreference([pair([1, 2, 3], [4, 5], [6]), pair([7, 8], [9, 10], [11, 12, 13])], 0);
  assert.equal(b.rows, 4);
  assert.equal(b.seqLen, 5);
  assert.deepEqual(rows(b.inputIds, 5), [
    [1, 2, 3, 4, 5],
    [7, 8, 9, 10, 0],
    [1, 2, 3, 6, 0],
    [7, 8, 11, 12, 13],
  ]);
  assert.deepEqual(rows(b.attentionMask, 5), [
    [1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0],
    [1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1],
  ]);
  assert.deepEqual(rows(b.completionMask, 5), [
    [0, 0, 0, 1, 1],
    [0, 0, 1, 1, 0],
    [0, 0, 0, 1, 0],
    [0, 0, 1, 1, 1],
  ]);
});

test('collator: pad_to_multiple_of=5 vector', () => {
  const b = collatePreference([pair([1], [2], [3]), pair([4, 5], [6, 7], [8, 9])], 0, { padToMultipleOf: 5 });
  assert.deepEqual(rows(b.inputIds, b.seqLen), [
    [1, 2, 0, 0, 0],
    [4, 5, 6, 7, 0],
    [1, 3, 0, 0, 0],
    [4, 5, 8, 9, 0],
  ]);
});

test('SFT collator: prompt + sft target, mask on the target only', () => {
  const b = collateSft([{ promptIds: [1, 2], chosenIds: [3], rejectedIds: [4], sftIds: [5, 6, 7] }, pair([8], [9], [10])], 99);
  assert.deepEqual(rows(b.inputIds, b.seqLen), [
    [1, 2, 5, 6, 7],
    [8, 9, 99, 99, 99],
  ]);
  assert.deepEqual(rows(b.completionMask, b.seqLen), [
    [0, 0, 1, 1, 1],
    [0, 1, 0, 0, 0],
  ]);
  assert.throws(() => collateSft([], 0), RangeError);
});

test('llama2.c tokenizer: BOS once, completion = suffix of prompt+completion, EOS appended once', async () => {
  const tok = await loadTokenizer('stories260K');
  const ex = { prompt: 'Once upon a time, there was a dog.', chosen: ' The dog was happy.', rejected: ' The dog was sad.' };
  const t = tokenizePreference(ex, tok, { maxLength: 512, maxPromptLength: 256, truncationMode: 'keep_end' })!;
  assert.deepEqual(t.promptIds, [1, ...tok.encode(ex.prompt)]);
  assert.deepEqual(t.chosenIds, [...tok.encode(ex.prompt + ex.chosen).slice(tok.encode(ex.prompt).length), 2]);
  assert.deepEqual(t.rejectedIds, [...tok.encode(ex.prompt + ex.rejected).slice(tok.encode(ex.prompt).length), 2]);
  assert.deepEqual(t.sftIds, t.chosenIds);
  assert.equal(t.promptIds.filter((x) => x === 1).length, 1);
  assert.equal(tok.decode([...t.promptIds, ...t.chosenIds]), ex.prompt + ex.chosen);
  const s = tokenizePreference({ ...ex, sftTarget: ' The dog ran.' }, tok, { maxLength: 512, maxPromptLength: 256, truncationMode: 'keep_end' })!;
  assert.equal(tok.decode(s.sftIds), 'The dog ran.');
  assert.equal(s.sftIds.at(-1), 2);
});

test('GPT-2: no BOS added; an EOS already in the text is not doubled', async () => {
  const tok = await loadTokenizer(shared('tokenizers/gpt2'));
  const t = tokenizePreference({ prompt: 'Q: hi\nA:', chosen: ' hello<|endoftext|>', rejected: ' bye' }, tok, {
    maxLength: 64,
    maxPromptLength: 32,
    truncationMode: 'keep_end',
  })!;
  assert.deepEqual(t.promptIds, tok.encode('Q: hi\nA:'));
  assert.equal(t.chosenIds.filter((x) => x === 50256).length, 1);
  assert.equal(t.chosenIds.at(-1), 50256);
  assert.equal(t.rejectedIds.at(-1), 50256);
  assert.equal(resolvePadId(tok), 50256, 'GPT-2 has no pad: EOS pads');
});

test('a chat template that renders BOS itself does not get a second BOS', async () => {
  const gpt2 = (await loadTokenizer(shared('tokenizers/gpt2'))) as HfTokenizer;
  // a tokenizer that adds BOS (like Llama), whose template starts with the BOS text
  const tok: Tokenizer & { addBosToken: boolean } = {
    vocabSize: gpt2.vocabSize,
    bosTokenId: 50256,
    eosTokenId: 50256,
    padTokenId: null,
    addBosToken: true,
    encode: (s) => gpt2.encode(s),
    decode: (ids) => gpt2.decode(ids),
    chatTemplate: '{{ bos_token }}...',
  };
  const templated = tokenizePreference({ prompt: '<|endoftext|>User: hi\nBot:', chosen: ' yes', rejected: ' no' }, tok, {
    maxLength: 64,
    maxPromptLength: 32,
    truncationMode: 'keep_end',
  })!;
  assert.deepEqual(templated.promptIds.slice(0, 2), [50256, ...gpt2.encode('User')]);
  const plain = tokenizePreference({ prompt: 'User: hi\nBot:', chosen: ' yes', rejected: ' no' }, tok, {
    maxLength: 64,
    maxPromptLength: 32,
    truncationMode: 'keep_end',
  })!;
  assert.deepEqual(plain.promptIds, templated.promptIds);
});

test('truncation: keep_end keeps BOS + the last prompt tokens, keep_start the first; completions cut to max_length', async () => {
  const tok = await loadTokenizer('stories260K');
  const prompt = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her big red ball.';
  const ex = { prompt, chosen: ' One day, she saw a big dog and they played all day long until the sun went down.', rejected: ' The end.' };
  const P = tok.encode(prompt);
  const C = [...tok.encode(prompt + ex.chosen).slice(P.length), 2];
  const R = [...tok.encode(prompt + ex.rejected).slice(P.length), 2];
  const maxLength = 30;
  const maxPromptLength = 12;
  assert.ok(P.length + 1 > maxPromptLength && P.length + 1 + C.length > maxLength, 'the fixture must need truncation');
  const stats = newTokenizeStats();
  const end = tokenizePreference(ex, tok, { maxLength, maxPromptLength, truncationMode: 'keep_end', stats })!;
  assert.deepEqual(end.promptIds, [1, ...P.slice(P.length - (maxPromptLength - 1))]);
  assert.deepEqual(end.chosenIds, C.slice(0, maxLength - maxPromptLength));
  assert.deepEqual(end.rejectedIds, R.slice(0, maxLength - maxPromptLength));
  const start = tokenizePreference(ex, tok, { maxLength, maxPromptLength, truncationMode: 'keep_start', stats })!;
  assert.deepEqual(start.promptIds, [1, ...P].slice(0, maxPromptLength));
  assert.deepEqual(start.chosenIds, C.slice(0, maxLength - maxPromptLength));
  assert.equal(stats.truncated, 2);
  // short enough: untouched
  const whole = tokenizePreference(ex, tok, { maxLength: 512, maxPromptLength, truncationMode: 'keep_end' })!;
  assert.deepEqual(whole.promptIds, [1, ...P]);
  assert.deepEqual(whole.chosenIds, C);
});

test('pairs whose prompt alone fills max_length are dropped and counted', async () => {
  const tok = await loadTokenizer('stories260K');
  const long = { prompt: 'The cat sat on the mat and the dog sat on the log and they were happy all day.', chosen: ' Yes.', rejected: ' No.' };
  const short = { prompt: 'Hi.', chosen: ' Yes.', rejected: ' No.' };
  const n = tok.encode(long.prompt).length + 1;
  const { pairs, stats } = tokenizeDataset([long, short, long], tok, { maxLength: n, maxPromptLength: n, truncationMode: 'keep_end' });
  assert.equal(pairs.length, 1);
  assert.equal(stats.dropped, 2);
  assert.equal(stats.pairs, 3);
  assert.deepEqual(pairs[0]!.promptIds, [1, ...tok.encode('Hi.')]);
});

test('shuffle and eval split are deterministic by seed; dedup keeps first occurrences', () => {
  const xs = Array.from({ length: 50 }, (_, i) => i);
  const a = shuffleExamples(xs, 3);
  assert.deepEqual(a, shuffleExamples(xs, 3));
  assert.notDeepEqual(a, shuffleExamples(xs, 4));
  assert.notDeepEqual(a, xs);
  assert.deepEqual(
    [...a].sort((p, q) => p - q),
    xs,
  );
  const s = splitEval(xs, 0.2, 7);
  assert.equal(s.eval.length, 10);
  assert.equal(s.train.length, 40);
  assert.deepEqual(
    [...s.train, ...s.eval].sort((p, q) => p - q),
    xs,
  );
  assert.deepEqual(splitEval(xs, 0.2, 7), s);
  assert.deepEqual(splitEval([1, 2], 0.01, 0).eval.length, 1);
  assert.deepEqual(splitEval(xs, 0, 0), { train: xs, eval: [] });
  const d = dedupExamples([
    { prompt: 'a', chosen: 'b', rejected: 'c' },
    { prompt: 'a', chosen: 'b', rejected: 'd' },
    { prompt: 'a', chosen: 'b', rejected: 'c' },
  ]);
  assert.equal(d.removed, 1);
  assert.deepEqual(
    d.examples.map((e) => e.rejected),
    ['c', 'd'],
  );
});

test('loadPreferenceExamples dedup option drops exact duplicates', async () => {
  const { loadPreferenceExamples } = await import('../../src/training/data/index.js');
  const row = { prompt: 'p', chosen: 'a', rejected: 'b' };
  assert.equal((await loadPreferenceExamples([row, row, { ...row, rejected: 'c' }])).length, 3);
  assert.equal((await loadPreferenceExamples([row, row, { ...row, rejected: 'c' }], { dedup: true })).length, 2);
});

/**
 * Tokenizer parity with SentencePiece itself: stories260K's tokenizer (tok512.bin + tok512.model, and the
 * .model alone) encodes the fixture texts to the ids Python `sentencepiece` gave (the fixture was made once
 * by tests/fixtures/sentencepiece/make.py; no Python is needed here), and the exported tokenizer.json,
 * loaded with @huggingface/tokenizers, gives the same ids.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer as HfCore } from '@huggingface/tokenizers';
import {
  loadTokenizer,
  parseLlama2cTokenizer,
  parseSentencePieceModel,
  parseSentencePieceModelProto,
  saveTokenizerFiles,
  SentencePieceBpeTokenizer,
  sentencePieceToTokenizerJson,
  serializeSentencePieceModel,
} from '../../src/training/tokenizers/index.js';

const fixture = JSON.parse(readFileSync('tests/fixtures/sentencepiece/stories260K.json', 'utf8')) as {
  model: string;
  cases: { text: string; ids: number[] }[];
};

test('the fixture covers what the issue lists (so it cannot be trimmed silently)', () => {
  const texts = fixture.cases.map((c) => c.text);
  assert.equal(fixture.model, 'models/stories260K/tok512.model');
  assert.ok(texts.includes(''), 'empty string');
  assert.ok(
    texts.some((t) => / {2,}/.test(t)),
    'whitespace runs',
  );
  assert.ok(
    texts.some((t) => t.startsWith(' ') && t.trim() !== ''),
    'leading space',
  );
  assert.ok(
    texts.some((t) => t.endsWith(' ') && t.trim() !== ''),
    'trailing space',
  );
  assert.ok(
    texts.some((t) => t.includes('\t')),
    'tabs',
  );
  assert.ok(
    texts.some((t) => t.includes('\n')),
    'newlines',
  );
  assert.ok(
    texts.some((t) => [...t].some((ch) => ch.codePointAt(0)! > 0x7f)),
    'unicode',
  );
  // the example: sentencepiece drops the leading space
  const c = fixture.cases.find((x) => x.text === ' a kind dog helped.')!;
  assert.deepEqual(c.ids.slice(0, 2), [261, 409]);
});

for (const [name, load] of [
  ['the built-in stories260K (tok512.bin + tok512.model)', () => loadTokenizer('stories260K')],
  ['tok512.model alone', () => loadTokenizer('models/stories260K/tok512.model')],
] as const) {
  test(`${name} encodes every fixture text to sentencepiece's ids`, async () => {
    const tok = await load();
    for (const c of fixture.cases) assert.deepEqual(tok.encode(c.text), c.ids, JSON.stringify(c.text));
  });
}

test("the model's normalizer spec is read from the proto", () => {
  const info = parseSentencePieceModelProto(new Uint8Array(readFileSync('models/stories260K/tok512.model')));
  assert.deepEqual(
    [info.normalizerName, info.addDummyPrefix, info.removeExtraWhitespaces, info.escapeWhitespaces, info.precompiledCharsmapBytes],
    ['identity', true, true, true, 0],
  );
});

test('a bare tokenizer.bin keeps run.c behaviour: repeated and leading spaces are kept', () => {
  const bare = parseLlama2cTokenizer(new Uint8Array(readFileSync('models/stories260K/tok512.bin')));
  const withModel = parseLlama2cTokenizer(new Uint8Array(readFileSync('models/stories260K/tok512.bin')), {
    modelProto: new Uint8Array(readFileSync('models/stories260K/tok512.model')),
  });
  const c = fixture.cases.find((x) => x.text === ' a kind dog helped.')!;
  assert.deepEqual(withModel.encode(c.text), c.ids);
  assert.deepEqual(bare.encode(c.text).slice(1), c.ids, 'run.c: one extra dummy-prefix piece, then the same ids');
  assert.deepEqual(bare.encode('a kind dog helped.'), c.ids);
});

test('the exported tokenizer.json, loaded with @huggingface/tokenizers, gives the fixture ids', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tok-parity-'));
  try {
    const tok = await loadTokenizer('stories260K');
    const files = await saveTokenizerFiles(tok, dir, { modelMaxLength: 512, chatTemplate: '{{ messages[0].content }}' });
    const names = files.map((f) => f.slice(dir.length + 1)).sort();
    assert.deepEqual(names, ['special_tokens_map.json', 'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json']);
    const cfg = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
    assert.equal(cfg.model_max_length, 512);
    assert.equal(cfg.chat_template, '{{ messages[0].content }}');
    const core = new HfCore(JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')), cfg);
    for (const c of fixture.cases) {
      assert.deepEqual(core.encode(c.text, { add_special_tokens: false }).ids, c.ids, JSON.stringify(c.text));
      assert.deepEqual(tok.encode(c.text), c.ids);
    }
    assert.deepEqual(core.encode('Once upon a time', { add_special_tokens: true }).ids[0], 1, 'BOS added by the post-processor');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('other normalizer switches round-trip through the proto and the tokenizer.json agrees with the encoder', async () => {
  const base = parseSentencePieceModel(new Uint8Array(readFileSync('models/stories260K/tok512.model')));
  let s = 11;
  const rnd = () => {
    s = (Math.imul(s, 48271) + 11) >>> 0;
    return s / 2 ** 32;
  };
  const alphabet = [...'abc de  f\t\n.!', ' the', '  ', '\u2581', 'é', '🙂'];
  for (const addDummyPrefix of [true, false]) {
    for (const removeExtraWhitespaces of [true, false]) {
      for (const escapeWhitespaces of [true, false]) {
        const normalizer = { addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces };
        const tok = new SentencePieceBpeTokenizer({
          pieces: [...base.pieces],
          scores: [...base.scores],
          types: [...base.types],
          unkTokenId: 0,
          bosTokenId: 1,
          eosTokenId: 2,
          padTokenId: null,
          source: 'sentencepiece',
          normalizer,
        });
        const back = parseSentencePieceModel(serializeSentencePieceModel(tok));
        assert.deepEqual(back.normalizer, normalizer);
        const core = new HfCore(sentencePieceToTokenizerJson(tok) as never, {});
        for (let k = 0; k < 150; k++) {
          let t = '';
          const n = Math.floor(rnd() * 30);
          for (let i = 0; i < n; i++) t += alphabet[Math.floor(rnd() * alphabet.length)]!;
          const label = `${JSON.stringify(normalizer)} ${JSON.stringify(t)}`;
          assert.deepEqual(back.encode(t), tok.encode(t), label);
          assert.deepEqual(core.encode(t, { add_special_tokens: false }).ids, tok.encode(t), label);
        }
      }
    }
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  loadTokenizer,
  parseLlama2cTokenizer,
  parseSentencePieceModelProto,
  saveTokenizerFiles,
  serializeLlama2cTokenizer,
  SentencePieceBpeTokenizer,
  TokenizerError,
  tokenizerAddsBos,
} from '../../src/training/tokenizers/index.js';
import { shared } from '../shared.js';

const BIN = 'models/stories260K/tok512.bin';
const MODEL = 'models/stories260K/tok512.model';
const golden = JSON.parse(readFileSync(shared('golden/stories260K_llama2c.json'), 'utf8')) as {
  cases: { input_ids: number[]; greedy_continuation_ids: number[]; greedy_continuation_text: string }[];
};

/** A literal port of llama2.c run.c encode() (O(n^2) rescans), used as the reference. */
function runcEncode(tok: SentencePieceBpeTokenizer, text: string): number[] {
  const lookup = new Map<string, number>();
  tok.pieces.forEach((p, id) => {
    if (tok.types[id] === 1 && !lookup.has(p)) lookup.set(p, id);
  });
  const tokens: number[] = [];
  if (text.length === 0) return tokens;
  tokens.push(lookup.get(' ')!);
  const enc = new TextEncoder();
  for (const cp of text) {
    const id = lookup.get(cp);
    if (id !== undefined) tokens.push(id);
    else for (const b of enc.encode(cp)) tokens.push(b + 3);
  }
  const str = (id: number) => (tok.types[id] === 1 ? tok.pieces[id]! : `\u0000${id}`);
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = lookup.get(str(tokens[i]!) + str(tokens[i + 1]!));
      if (id !== undefined && tok.scores[id]! > bestScore) {
        bestScore = tok.scores[id]!;
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('llama2.c tok512.bin: header, vocab, special ids', async () => {
  const tok = await loadTokenizer(BIN);
  assert.ok(tok instanceof SentencePieceBpeTokenizer);
  assert.equal(tok.vocabSize, 512);
  assert.equal(tok.bosTokenId, 1);
  assert.equal(tok.eosTokenId, 2);
  assert.equal(tok.padTokenId, null);
  assert.equal(tokenizerAddsBos(tok), true);
  assert.equal(tok.modelProto?.length, readFileSync(MODEL).length, 'the same-stem .model is kept for export');
});

test('decode reproduces the golden greedy texts; encode(decode(prompt)) gives the golden prompt ids', async () => {
  const tok = await loadTokenizer(BIN);
  for (const c of golden.cases) {
    assert.equal(tok.decode(c.greedy_continuation_ids), c.greedy_continuation_text);
    const promptIds = c.input_ids.slice(1);
    assert.deepEqual(tok.encode(tok.decode(c.input_ids)), promptIds);
    // full sequence after BOS decodes to prompt + continuation text (run.c strips the space after BOS)
    const all = tok.decode([1, ...promptIds, ...c.greedy_continuation_ids]);
    assert.ok(all.endsWith(c.greedy_continuation_text));
    assert.ok(!all.startsWith(' '));
  }
});

test('heap encoder equals a literal port of run.c encode on random texts', async () => {
  // the bare tokenizer.bin (no .model, so run.c's normaliser: dummy prefix only), as run.c reads it
  const tok = parseLlama2cTokenizer(new Uint8Array(readFileSync(BIN)));
  const rnd = lcg(7);
  const alphabet = [...'abcdefghijklmnopqrstuvwxyz     .,!?\'"\nTHEOnce upon a time there was', 'é', '日', '🙂', '\t'];
  const words = ['the', ' the', 'Lily', ' happy', 'ball', ' and', 'she', ' said', 'played', '  '];
  for (let k = 0; k < 300; k++) {
    let s = '';
    const n = Math.floor(rnd() * 60);
    for (let i = 0; i < n; i++) s += rnd() < 0.3 ? words[Math.floor(rnd() * words.length)]! : alphabet[Math.floor(rnd() * alphabet.length)]!;
    assert.deepEqual(tok.encode(s), runcEncode(tok, s), JSON.stringify(s));
    assert.equal(tok.decode(tok.encode(s)), s, 'round trip');
  }
  assert.deepEqual(tok.encode(''), []);
});

test('byte fallback for characters outside the vocabulary, decoded back to UTF-8', async () => {
  const tok = (await loadTokenizer(BIN)) as SentencePieceBpeTokenizer;
  const ids = tok.encode('🙂');
  const bytes = [...new TextEncoder().encode('🙂')];
  // dummy-prefix space piece, then the four UTF-8 bytes as <0xXX> pieces (ids byte+3 in tok512)
  assert.deepEqual(
    ids.slice(-4),
    bytes.map((b) => b + 3),
  );
  assert.equal(tok.decode(ids), '🙂');
});

test('tok512.model (SentencePiece protobuf) holds the same pieces and encodes identically', async () => {
  const bin = (await loadTokenizer(BIN)) as SentencePieceBpeTokenizer;
  const sp = (await loadTokenizer(MODEL)) as SentencePieceBpeTokenizer;
  assert.equal(sp.source, 'sentencepiece');
  assert.equal(sp.vocabSize, bin.vocabSize);
  assert.deepEqual([sp.bosTokenId, sp.eosTokenId, sp.unkTokenId], [1, 2, 0]);
  for (let id = 3; id < bin.vocabSize; id++) {
    assert.equal(sp.pieces[id], bin.pieces[id], `piece ${id}`);
    assert.equal(sp.scores[id], bin.scores[id], `score ${id}`);
  }
  const text = 'One day, a little boy named Tim found a shiny red ball in the park. He was very happy!';
  assert.deepEqual(sp.encode(text), bin.encode(text));
  for (const c of golden.cases) assert.equal(sp.decode(c.greedy_continuation_ids), c.greedy_continuation_text);
});

test('saveTokenizerFiles writes tokenizer.model + tokenizer.json + a fast-tokenizer config that load back identically', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tok-export-'));
  try {
    const bin = await loadTokenizer(BIN);
    const files = await saveTokenizerFiles(bin, dir);
    assert.deepEqual(files.map((f) => f.slice(dir.length + 1)).sort(), [
      'special_tokens_map.json',
      'tokenizer.json',
      'tokenizer.model',
      'tokenizer_config.json',
    ]);
    assert.deepEqual(await readFile(join(dir, 'tokenizer.model')), readFileSync(MODEL));
    const cfg = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
    assert.equal(cfg.tokenizer_class, 'PreTrainedTokenizerFast'); // runs tokenizer.json as written (see llamaTokenizerConfig)
    assert.deepEqual([cfg.bos_token, cfg.eos_token, cfg.unk_token], ['<s>', '</s>', '<unk>']);
    const back = await loadTokenizer(dir);
    const text = 'Once upon a time, there was a big dog. It liked to run!\n"Yes," said Mom.';
    assert.deepEqual(back.encode(text), bin.encode(text));
    assert.equal(back.vocabSize, 512);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a tokenizer.bin without a .model exports a synthesized SentencePiece model with the same pieces', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tok-synth-'));
  try {
    await copyFile(BIN, join(dir, 'tokenizer.bin'));
    const bin = (await loadTokenizer(dir)) as SentencePieceBpeTokenizer;
    assert.equal(bin.modelProto, null);
    const out = join(dir, 'hf');
    await saveTokenizerFiles(bin, out);
    const synth = parseSentencePieceModelProto(new Uint8Array(await readFile(join(out, 'tokenizer.model'))));
    const orig = parseSentencePieceModelProto(new Uint8Array(readFileSync(MODEL)));
    assert.deepEqual(synth.pieces, orig.pieces);
    assert.deepEqual([synth.modelType, synth.byteFallback, synth.unkId, synth.bosId, synth.eosId, synth.padId], [2, true, 0, 1, 2, -1]);
    const back = await loadTokenizer(out);
    const text = 'The cat sat on the mat. 🙂 The end.';
    assert.deepEqual(back.encode(text), bin.encode(text));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('tokenizer.bin serializes back to the same bytes', () => {
  const raw = new Uint8Array(readFileSync(BIN));
  assert.deepEqual(serializeLlama2cTokenizer(parseLlama2cTokenizer(raw)), raw);
});

test('typed errors: missing path, truncated .bin, non-protobuf .model', async () => {
  await assert.rejects(loadTokenizer('/nonexistent/tok.bin'), (e: unknown) => e instanceof TokenizerError && e.code === 'TOKENIZER_NOT_FOUND');
  const raw = new Uint8Array(readFileSync(BIN));
  assert.throws(
    () => parseLlama2cTokenizer(raw.subarray(0, 1000)),
    (e: unknown) => e instanceof TokenizerError && e.code === 'INVALID_TOKENIZER_FORMAT',
  );
  assert.throws(
    () => parseSentencePieceModelProto(new TextEncoder().encode('{"not": "protobuf"}')),
    (e: unknown) => e instanceof TokenizerError && e.code === 'INVALID_TOKENIZER_FORMAT',
  );
});

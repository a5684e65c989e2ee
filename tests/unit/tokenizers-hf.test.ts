import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HfTokenizer, loadTokenizer, saveTokenizerFiles, TokenizerError, tokenizerAddsBos, renderPlainChat } from '../../src/training/tokenizers/index.js';
import { shared } from '../shared.js';

const GPT2 = shared('tokenizers/gpt2');

test('GPT-2 tokenizer.json: known ids, round trip, special tokens', async () => {
  const tok = await loadTokenizer(GPT2);
  assert.ok(tok instanceof HfTokenizer);
  assert.deepEqual(tok.encode('Hello world'), [15496, 995]);
  assert.equal(tok.vocabSize, 50257);
  assert.equal(tok.eosTokenId, 50256);
  assert.equal(tok.bosTokenId, 50256);
  assert.equal(tok.padTokenId, null);
  assert.equal(tokenizerAddsBos(tok), false, 'GPT-2 does not prepend BOS');
  for (const s of ['Hello world', ' leading space', 'naïve café 日本語 🙂', 'tabs\tand\nnewlines\n\n  two spaces']) {
    assert.equal(tok.decode(tok.encode(s)), s);
  }
  // the special token text maps to its id, and decode skips it
  assert.deepEqual(tok.encode('<|endoftext|>'), [50256]);
  assert.equal(tok.decode([15496, 50256]), 'Hello');
});

async function gpt2DirWith(extra: { config?: Record<string, unknown>; gen?: Record<string, unknown> }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tok-hf-'));
  await copyFile(join(GPT2, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  const cfg = JSON.parse(await readFile(join(GPT2, 'tokenizer_config.json'), 'utf8'));
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, ...(extra.config ?? {}) }));
  if (extra.gen) await writeFile(join(dir, 'generation_config.json'), JSON.stringify(extra.gen));
  return dir;
}

test('chat template from tokenizer_config.json is rendered with @huggingface/jinja', async () => {
  const template =
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";
  const dir = await gpt2DirWith({ config: { chat_template: template, pad_token: '<|endoftext|>' } });
  try {
    const tok = await loadTokenizer(dir);
    assert.equal(tok.chatTemplate, template);
    assert.equal(tok.padTokenId, 50256);
    const msgs = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!' },
    ];
    assert.equal(tok.applyChatTemplate!(msgs), '<|user|>Hi<|endoftext|><|assistant|>Hello!<|endoftext|>');
    assert.equal(tok.applyChatTemplate!(msgs.slice(0, 1), { addGenerationPrompt: true }), '<|user|>Hi<|endoftext|><|assistant|>');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('without a chat template: applyChatTemplate throws a typed error; the plain fallback is HH-style', async () => {
  const tok = await loadTokenizer(GPT2);
  assert.equal(tok.chatTemplate, null);
  assert.throws(
    () => tok.applyChatTemplate!([{ role: 'user', content: 'x' }]),
    (e: unknown) => e instanceof TokenizerError && e.code === 'MISSING_CHAT_TEMPLATE',
  );
  assert.equal(renderPlainChat([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true }), '\n\nHuman: Hi\n\nAssistant:');
});

test('generation_config.json fills missing special ids; eos list gives stop ids', async () => {
  const dir = await gpt2DirWith({ config: { bos_token: null, eos_token: null }, gen: { bos_token_id: 50256, eos_token_id: [50256, 198], pad_token_id: 0 } });
  try {
    const tok = (await loadTokenizer(dir)) as HfTokenizer;
    assert.equal(tok.bosTokenId, 50256);
    assert.equal(tok.eosTokenId, 50256);
    assert.equal(tok.padTokenId, 0);
    assert.deepEqual(tok.stopTokenIds, [50256, 198]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('saveTokenizerFiles copies HF files; reloaded tokenizer is identical', async () => {
  const out = await mkdtemp(join(tmpdir(), 'tok-hf-out-'));
  try {
    const tok = await loadTokenizer(GPT2);
    await saveTokenizerFiles(tok, out);
    assert.equal(await readFile(join(out, 'tokenizer.json'), 'utf8'), await readFile(join(GPT2, 'tokenizer.json'), 'utf8'));
    const back = await loadTokenizer(join(out, 'tokenizer.json'));
    const s = 'The quick brown fox, 2024! ünïcödé';
    assert.deepEqual(back.encode(s), tok.encode(s));
    assert.equal(back.eosTokenId, tok.eosTokenId);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});

test('a corrupt tokenizer.json is a typed error', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'tok-bad-'));
  try {
    await writeFile(join(dir, 'tokenizer.json'), '{"model": ');
    await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof TokenizerError && e.code === 'INVALID_TOKENIZER_FORMAT');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('BPE with byte fallback (Llama-style tokenizer.json built from tok512) encodes and decodes like the SentencePiece encoder', async () => {
  const { sentencePieceToTokenizerJson, SentencePieceBpeTokenizer } = await import('../../src/training/tokenizers/index.js');
  const sp = await loadTokenizer('models/stories260K/tok512.model');
  assert.ok(sp instanceof SentencePieceBpeTokenizer);
  const dir = await mkdtemp(join(tmpdir(), 'tok-llama-json-'));
  try {
    const files = await saveTokenizerFiles(sp, dir);
    assert.ok(files.some((f) => f.endsWith('tokenizer.json')));
    const hf = await loadTokenizer(dir);
    assert.ok(hf instanceof HfTokenizer, 'a directory with tokenizer.json loads through @huggingface/tokenizers');
    assert.equal(hf.vocabSize, 512);
    assert.deepEqual([hf.bosTokenId, hf.eosTokenId], [1, 2]);
    assert.equal(tokenizerAddsBos(hf), true, 'the Llama post-processor adds BOS');
    const model = (sentencePieceToTokenizerJson(sp) as { model: { byte_fallback: boolean } }).model;
    assert.equal(model.byte_fallback, true);
    let s = 1;
    const rnd = () => (s = (Math.imul(s, 48271) + 11) >>> 0) / 2 ** 32;
    const alphabet = [...'abcdefghijklmnopqrstuvwxyz   .,!?"\n', 'Once ', ' upon', ' the', 'Lily', '🙂', 'ü', '日本', '  '];
    for (let k = 0; k < 200; k++) {
      let t = '';
      const n = Math.floor(rnd() * 40);
      for (let i = 0; i < n; i++) t += alphabet[Math.floor(rnd() * alphabet.length)]!;
      assert.deepEqual(hf.encode(t), sp.encode(t), JSON.stringify(t));
      // round trip up to SentencePiece's remove_extra_whitespaces (U+0020 runs collapsed, ends stripped)
      const normalized = t.replace(/ {2,}/g, ' ').replace(/^ +| +$/g, '');
      assert.equal(hf.decode(hf.encode(t)), normalized, JSON.stringify(t));
      assert.equal(sp.decode(sp.encode(t)), normalized, JSON.stringify(t));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('special_tokens_map.json supplies tokens missing from tokenizer_config.json', async () => {
  const dir = await gpt2DirWith({ config: { bos_token: null, eos_token: null, unk_token: null } });
  try {
    await writeFile(join(dir, 'special_tokens_map.json'), JSON.stringify({ eos_token: { content: '<|endoftext|>' }, pad_token: '<|endoftext|>' }));
    const tok = await loadTokenizer(dir);
    assert.equal(tok.eosTokenId, 50256);
    assert.equal(tok.padTokenId, 50256);
    assert.equal(tok.bosTokenId, null);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * stories260K: loadPretrained, greedy generation from BOS against the sample in stories260K.md, HF export
 * (safetensors + config.json + tokenizer) re-loaded giving the same logits and greedy text, BF16 export.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { loadPretrained, loadModel, saveModelHF, generate, sampleNext, seededRandom, type GenerativeLM } from '../../src/training/models/index.js';
import type { Tokenizer } from '../../src/training/types.js';
import { shared } from '../shared.js';

const golden = JSON.parse(readFileSync(shared('golden/stories260K_llama2c.json'), 'utf8')) as {
  cases: Array<{ input_ids: number[]; last_logits: number[]; greedy_continuation_ids: number[]; greedy_continuation_text: string }>;
};
const MD = new URL('../../models/stories260K/stories260K.md', import.meta.url).pathname;

function close(a: ArrayLike<number>, b: ArrayLike<number>, rtol: number, what: string): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < b.length; i++) {
    assert.ok(Math.abs(a[i]! - b[i]!) <= rtol * Math.max(Math.abs(b[i]!), 1), `${what}[${i}]: ${a[i]} vs ${b[i]}`);
  }
}
function lastLogits(m: GenerativeLM, ids: number[]): Float32Array {
  return tf.tidy(() => {
    const lg = m.logits(tf.tensor2d([ids], [1, ids.length], 'int32'));
    return tf.slice(lg, [0, ids.length - 1, 0], [1, 1, -1]).dataSync() as Float32Array;
  });
}

let model: GenerativeLM;
let tokenizer: Tokenizer;
let dir: string;
before(async () => {
  await initBackend('auto');
  ({ model, tokenizer } = await loadPretrained('stories260K'));
  dir = mkdtempSync(join(tmpdir(), 'models-export-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('greedy generation from BOS reproduces the first 200 characters of the stories260K.md sample', () => {
  const md = readFileSync(MD, 'utf8');
  const sample = md.split('```')[3]!.split('\n').slice(2).join('\n'); // the block after "$ ./run ... -t 0.0"
  assert.ok(sample.startsWith('Once upon a time'), 'sample located');
  const { text } = generate(model, tokenizer, '', { maxNewTokens: 90, temperature: 0 });
  assert.equal(text.slice(0, 200), sample.slice(0, 200));
});

test('generate with a prompt continues with the golden greedy ids', () => {
  const c = golden.cases[1]!;
  const prompt = tokenizer.decode(c.input_ids.slice(1));
  const { ids } = generate(model, tokenizer, prompt, { maxNewTokens: c.greedy_continuation_ids.length, temperature: 0 });
  assert.deepEqual(ids, c.greedy_continuation_ids);
});

test('seeded sampling is reproducible and differs across seeds', () => {
  const a = generate(model, tokenizer, 'Once upon a time', { maxNewTokens: 20, temperature: 1.5, topP: 0.95, seed: 7 });
  const b = generate(model, tokenizer, 'Once upon a time', { maxNewTokens: 20, temperature: 1.5, topP: 0.95, seed: 7 });
  const c = generate(model, tokenizer, 'Once upon a time', { maxNewTokens: 20, temperature: 1.5, topK: 50, seed: 8 });
  assert.deepEqual(a.ids, b.ids);
  assert.notDeepEqual(a.ids, c.ids);
});

test('HF export (F32) re-loads with the same logits and greedy text; files are complete', async () => {
  const out = join(dir, 'f32');
  const files = await saveModelHF(model, out, { tokenizer });
  for (const f of ['model.safetensors', 'config.json', 'generation_config.json', 'tokenizer.model', 'tokenizer_config.json']) {
    assert.ok(existsSync(join(out, f)), f);
    assert.ok(files.includes(join(out, f)), `${f} listed`);
  }
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
  assert.equal(cfg.model_type, 'llama');
  assert.deepEqual(cfg.architectures, ['LlamaForCausalLM']);
  assert.equal(cfg.num_key_value_heads, 4);
  assert.equal(cfg.tie_word_embeddings, true);
  const re = await loadPretrained(out);
  for (const c of golden.cases) {
    const a = lastLogits(model, c.input_ids);
    const b = lastLogits(re.model, c.input_ids);
    assert.deepEqual(Array.from(b), Array.from(a), 'bit-identical after the F32 round trip');
    close(b, c.last_logits, 1e-4, 'golden');
  }
  const g1 = generate(model, tokenizer, 'Once upon a time', { maxNewTokens: 40, temperature: 0 });
  const g2 = generate(re.model, re.tokenizer, 'Once upon a time', { maxNewTokens: 40, temperature: 0 });
  assert.equal(g2.text, g1.text);
  assert.ok(g1.text.length > 40);
  re.model.dispose();
});

test('BF16 export is half the size and close to the F32 logits', async () => {
  const out = join(dir, 'bf16');
  await saveModelHF(model, out, { dtype: 'BF16' });
  const f32Size = statSync(join(dir, 'f32', 'model.safetensors')).size;
  const bf16Size = statSync(join(out, 'model.safetensors')).size;
  assert.ok(Math.abs(bf16Size / f32Size - 0.5) < 0.01, `sizes ${bf16Size} vs ${f32Size}`);
  const re = await loadModel(out);
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
  assert.equal(cfg.torch_dtype, 'bfloat16');
  const a = lastLogits(model, golden.cases[1]!.input_ids);
  const b = lastLogits(re, golden.cases[1]!.input_ids);
  let maxd = 0;
  for (let i = 0; i < a.length; i++) maxd = Math.max(maxd, Math.abs(a[i]! - b[i]!));
  assert.ok(maxd > 0 && maxd < 0.5, `bf16 max |diff| ${maxd}`);
  re.dispose();
});

test('sampleNext: greedy, top-k and top-p restrict the candidates', () => {
  const logits = Float32Array.from([0, 5, 4.9, -10, 1]);
  const rand = seededRandom(1);
  assert.equal(sampleNext(logits, { temperature: 0 }, rand), 1);
  const seenK = new Set<number>();
  for (let i = 0; i < 200; i++) seenK.add(sampleNext(logits, { temperature: 1, topK: 2 }, rand));
  assert.deepEqual([...seenK].sort(), [1, 2]);
  const seenP = new Set<number>();
  for (let i = 0; i < 200; i++) seenP.add(sampleNext(logits, { temperature: 1, topP: 0.4 }, rand));
  assert.deepEqual([...seenP], [1], 'p(1) ≈ 0.51 >= 0.4 alone');
  const seenAll = new Set<number>();
  for (let i = 0; i < 400; i++) seenAll.add(sampleNext(logits, { temperature: 3 }, rand));
  assert.ok(seenAll.size >= 4, `plain sampling reaches most tokens (${[...seenAll]})`);
});

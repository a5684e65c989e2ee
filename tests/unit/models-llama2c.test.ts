/**
 * stories260K (llama2.c .bin) against golden numbers from karpathy/llama2.c model.py
 * (../shared/golden/stories260K_llama2c.json): last-position logits, per-token log-probs and greedy
 * continuations.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { tokenLogps } from '../../src/training/engine/ops.js';
import { readLlama2c, permuteQK } from '../../src/training/models/llama2c.js';
import { LlamaModel, llamaShapes, isLlamaLinear } from '../../src/training/models/llama.js';
import { variablesFromHF } from '../../src/training/models/base.js';
import { shared } from '../shared.js';

const GOLDEN = shared('golden/stories260K_llama2c.json');
const BIN = new URL('../../models/stories260K/stories260K.bin', import.meta.url).pathname;

interface Case {
  input_ids: number[];
  last_logits: number[];
  token_logprobs: number[];
  greedy_continuation_ids: number[];
}
const golden = JSON.parse(readFileSync(GOLDEN, 'utf8')) as { cases: Case[]; config: Record<string, number> };

/** |a - b| <= rtol * max(|b|, 1): relative for large values, absolute near zero. */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    assert.ok(Math.abs(a - e) <= rtol * Math.max(Math.abs(e), 1), `${what}[${i}]: ${a} vs ${e}`);
  }
}

let model: LlamaModel;
before(async () => {
  await initBackend('auto');
  const { config, tensors } = await readLlama2c(BIN);
  model = new LlamaModel(config, variablesFromHF(llamaShapes(config), tensors, isLlamaLinear));
});

test('header maps to the golden config', () => {
  const c = model.config;
  const g = golden.config;
  assert.deepEqual(
    [c.hiddenSize, c.intermediateSize, c.numLayers, c.numHeads, c.numKvHeads, c.vocabSize, c.maxPositionEmbeddings],
    [g.dim, g.hidden_dim, g.n_layers, g.n_heads, g.n_kv_heads, g.vocab_size, g.seq_len],
  );
  assert.equal(c.tieWordEmbeddings, true);
});

test('permuteQK moves interleaved pair rows to halves (transformers permute)', () => {
  // 1 head, dim1 = 4 rows (pairs (0,1),(2,3)), dim2 = 1 column: rows 0,1,2,3 -> 0,2,1,3
  assert.deepEqual(Array.from(permuteQK(new Float32Array([0, 1, 2, 3]), 1, 4, 1)), [0, 2, 1, 3]);
  // 2 heads of 4 rows each
  assert.deepEqual(Array.from(permuteQK(new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]), 2, 8, 1)), [0, 2, 1, 3, 4, 6, 5, 7]);
});

test('last-position logits equal llama2.c model.py (1e-4)', () => {
  for (const c of golden.cases) {
    const T = c.input_ids.length;
    const last = tf.tidy(() => {
      const lg = model.logits(tf.tensor2d([c.input_ids], [1, T], 'int32'));
      return tf.slice(lg, [0, T - 1, 0], [1, 1, model.config.vocabSize]).dataSync();
    });
    assertClose(last, c.last_logits, 1e-4, `logits after ${T} tokens`);
  }
});

test('per-token log-probs (hidden + tokenLogps) equal model.py', () => {
  for (const c of golden.cases.filter((x) => x.token_logprobs.length > 0)) {
    const T = c.input_ids.length;
    const lp = tf.tidy(() => {
      const h = model.hidden(tf.tensor2d([c.input_ids], [1, T], 'int32'));
      const { weight, layout } = model.outputProjection();
      const labels = tf.tensor1d([...c.input_ids.slice(1), 0], 'int32');
      return tokenLogps(h, weight, labels, layout)
        .dataSync()
        .slice(0, T - 1);
    });
    assertClose(lp, c.token_logprobs, 1e-4, 'token_logprobs');
  }
});

test('greedy continuation with the KV cache equals model.py ids', () => {
  for (const c of golden.cases) {
    const cache = model.createCache();
    const out: number[] = [];
    let next = tf.tidy(() => {
      const lg = model.logitsCached(tf.tensor2d([c.input_ids], [1, c.input_ids.length], 'int32'), cache);
      return tf.argMax(tf.slice(lg, [0, c.input_ids.length - 1, 0], [1, 1, -1]), -1).dataSync()[0]!;
    });
    while (out.length < c.greedy_continuation_ids.length) {
      out.push(next);
      const tok = next;
      next = tf.tidy(() => tf.argMax(model.logitsCached(tf.tensor2d([[tok]], [1, 1], 'int32'), cache), -1).dataSync()[0]!);
    }
    cache.dispose();
    assert.deepEqual(out, c.greedy_continuation_ids);
  }
});

test('cached decoding gives the same logits as a full forward', () => {
  const ids = golden.cases[1]!.input_ids;
  const T = ids.length;
  const full = tf.tidy(() => model.logits(tf.tensor2d([ids], [1, T], 'int32')).dataSync());
  const cache = model.createCache();
  const parts: number[] = [];
  tf.tidy(() => {
    parts.push(...model.logitsCached(tf.tensor2d([ids.slice(0, 4)], [1, 4], 'int32'), cache).dataSync());
    for (let t = 4; t < T; t++) parts.push(...model.logitsCached(tf.tensor2d([[ids[t]!]], [1, 1], 'int32'), cache).dataSync());
  });
  cache.dispose();
  assertClose(parts, full, 1e-5, 'cached logits');
});

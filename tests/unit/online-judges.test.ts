/**
 * The judges of online DPO: the rule judge (inline and YAML), the HTTP judge against a local server started
 * here (Standard Webhooks signature, retry, timeout, response validation), and a reward model built here as
 * a Hugging Face *ForSequenceClassification checkpoint (Llama and GPT-2) that loads and scores as
 * transformers does (score head at the last non-pad token).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { Webhook } from 'standardwebhooks';
import { initBackend } from '../../src/training/engine/backend.js';
import { createModel, loadPretrained, parseHFConfig, saveModelHF, type GenerativeLM } from '../../src/training/models/index.js';
import { forEachTensor, readSafetensorsIndex, writeSafetensors } from '../../src/training/models/safetensors.js';
import {
  createHttpJudge,
  createJudge,
  createRuleJudge,
  JudgeError,
  lastNonPadIndex,
  loadRewardModel,
  rewardScores,
} from '../../src/training/online/judges/index.js';
import type { Tokenizer } from '../../src/training/types.js';

const dirs: string[] = [];
const servers: Server[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'online-judges-'));
  dirs.push(d);
  return d;
}

const KIND = ' She gave the dog a big hug and they played. The dog was happy, and Lily smiled.';
const UNKIND = ' She yelled at the dog and ran away. The dog was sad and cried.';
const SHORT = ' The end.';

test('rule judge (YAML file config/judge/toy-kind): kind > short > unkind, as the rules add up', async () => {
  const judge = await createJudge({ type: 'rule', file: 'toy-kind' });
  const [scores] = await judge.score([{ prompt: 'Once upon a time', completions: [UNKIND, KIND, SHORT] }]);
  // kind: hug, played, happy, smiled = 4; unkind: yelled, ran away, sad, cried = -4; short: 2 words < 4 → -0.5
  assert.deepEqual(scores, [-4, 4, -0.5]);
});

test('rule judge inline: keywords (occurrences / presence), regex, length', async () => {
  const judge = createRuleJudge({
    type: 'rule',
    rules: [
      { type: 'keywords', words: ['dog'], weight: 1 },
      { type: 'keywords', words: ['happy', 'smiled'], weight: 10, count: 'presence' },
      { type: 'regex', pattern: '\\.$', weight: 0.5 },
      { type: 'length', unit: 'chars', max: 20, weight: 0.01 },
    ],
  });
  const [s] = await judge.score([{ prompt: '', completions: ['dog dog doghouse', 'happy happy dog.', 'x'.repeat(30)] }]);
  assert.deepEqual(s, [2, 10 + 1 + 0.5, -0.1]);
  assert.throws(
    () => createRuleJudge({ type: 'rule', rules: [{ type: 'regex', pattern: '(', weight: 1 }] }),
    (e: unknown) => e instanceof JudgeError && e.code === 'INVALID_JUDGE_CONFIG' && e.key === 'online_dpo.judge.rules[0].pattern',
  );
  assert.throws(
    () => createRuleJudge({ type: 'rule', rules: [{ type: 'length', min: 5, max: 2, weight: 1 }] }),
    (e: unknown) => e instanceof JudgeError && e.key === 'online_dpo.judge.rules[0].min',
  );
  const file = join(tmp(), 'bad.yaml');
  writeFileSync(file, 'rules:\n  - type: keywords\n    weight: 1\n');
  assert.throws(
    () => createRuleJudge({ type: 'rule', file }),
    (e: unknown) => e instanceof JudgeError && e.code === 'INVALID_JUDGE_CONFIG' && /rules/.test(e.key),
  );
});

/** A scoring server: score = completion length; optional failures first. */
async function judgeServer(opts: { secret?: string; failFirst?: number; status?: number; body?: (items: unknown) => unknown; hang?: boolean }) {
  const seen: Array<{ headers: IncomingMessage['headers']; body: string; verified: boolean }> = [];
  let failures = opts.failFirst ?? 0;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      let verified = false;
      if (opts.secret) {
        try {
          new Webhook(opts.secret).verify(body, req.headers as Record<string, string>);
          verified = true;
        } catch {
          verified = false;
        }
      }
      seen.push({ headers: req.headers, body, verified });
      if (opts.hang) return; // never answers
      if (failures > 0) {
        failures--;
        res.writeHead(503).end('busy');
        return;
      }
      if (opts.status) {
        res.writeHead(opts.status).end('no');
        return;
      }
      const { items } = JSON.parse(body) as { items: Array<{ prompt: string; completions: string[] }> };
      const out = opts.body ? opts.body(items) : { scores: items.map((it) => it.completions.map((c) => c.length)) };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(out));
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/score`, seen };
}

const SECRET = `whsec_${Buffer.from('online-dpo-test-secret-0123456789').toString('base64')}`;

test('http judge: POSTs prompt + completions signed (Standard Webhooks), retries a 503, ranks by the returned scores', async () => {
  const srv = await judgeServer({ secret: SECRET, failFirst: 1 });
  const judge = createHttpJudge({ type: 'http', url: srv.url, retries: 2 }, { DPO_JUDGE_SECRET: SECRET });
  const scores = await judge.score([
    { prompt: 'P1', completions: ['aaa', 'a', 'aa'] },
    { prompt: 'P2', completions: ['bb', 'bbbb'] },
  ]);
  assert.deepEqual(scores, [
    [3, 1, 2],
    [2, 4],
  ]);
  assert.equal(srv.seen.length, 2, 'one 503, then one success');
  assert.ok(
    srv.seen.every((s) => s.verified),
    'every request verifies with the shared secret',
  );
  assert.deepEqual(JSON.parse(srv.seen[1]!.body), {
    items: [
      { prompt: 'P1', completions: ['aaa', 'a', 'aa'] },
      { prompt: 'P2', completions: ['bb', 'bbbb'] },
    ],
  });
  assert.notEqual(srv.seen[0]!.headers['webhook-id'], srv.seen[1]!.headers['webhook-id']);
});

test('http judge: unsigned without a secret; a 4xx is not retried; a bad response and a timeout fail with codes', async () => {
  const plain = await judgeServer({});
  const scores = await createHttpJudge({ type: 'http', url: plain.url }, {}).score([{ prompt: 'p', completions: ['x', 'yy'] }]);
  assert.deepEqual(scores, [[1, 2]]);
  assert.equal(plain.seen[0]!.headers['webhook-signature'], undefined);

  const refused = await judgeServer({ status: 403 });
  await assert.rejects(
    createHttpJudge({ type: 'http', url: refused.url, retries: 3 }, {}).score([{ prompt: 'p', completions: ['x', 'y'] }]),
    (e: unknown) => e instanceof JudgeError && e.code === 'JUDGE_REQUEST_FAILED' && /403/.test(e.message),
  );
  assert.equal(refused.seen.length, 1, '403 is not retried');

  const wrong = await judgeServer({ body: () => ({ scores: [[1]] }) });
  await assert.rejects(
    createHttpJudge({ type: 'http', url: wrong.url }, {}).score([{ prompt: 'p', completions: ['x', 'y'] }]),
    (e: unknown) => e instanceof JudgeError && e.code === 'INVALID_JUDGE_RESPONSE' && /1 scores for 2 completions/.test(e.message),
  );
  const notNumbers = await judgeServer({ body: () => ({ scores: [['a', 'b']] }) });
  await assert.rejects(
    createHttpJudge({ type: 'http', url: notNumbers.url }, {}).score([{ prompt: 'p', completions: ['x', 'y'] }]),
    (e: unknown) => e instanceof JudgeError && e.code === 'INVALID_JUDGE_RESPONSE',
  );

  const hang = await judgeServer({ hang: true });
  const t0 = Date.now();
  await assert.rejects(
    createHttpJudge({ type: 'http', url: hang.url, timeout_ms: 150, retries: 1 }, {}).score([{ prompt: 'p', completions: ['x', 'y'] }]),
    (e: unknown) => e instanceof JudgeError && e.code === 'JUDGE_REQUEST_FAILED' && /150 ms/.test(e.message),
  );
  assert.equal(hang.seen.length, 2, 'timed out, retried once');
  assert.ok(Date.now() - t0 < 5000);
  assert.throws(
    () => createHttpJudge({ type: 'http', url: plain.url }, { DPO_JUDGE_SECRET: 'not-a-secret!' }),
    (e: unknown) => e instanceof JudgeError && e.code === 'INVALID_JUDGE_CONFIG',
  );
});

/** Save `m` + tokenizer as a *ForSequenceClassification directory with a random score head. */
async function seqClsCheckpoint(
  m: GenerativeLM,
  tok: Tokenizer,
  arch: string,
  extra: Record<string, unknown> = {},
): Promise<{ dir: string; score: Float32Array }> {
  const dir = tmp();
  await saveModelHF(m, dir, { tokenizer: tok });
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, architectures: [arch], num_labels: 1, ...extra }));
  const file = join(dir, 'model.safetensors');
  const index = await readSafetensorsIndex(file);
  const tensors: Array<{ name: string; shape: number[]; data: () => Float32Array }> = [];
  await forEachTensor(index, [...index.keys()], (name, t) => {
    if (name !== 'lm_head.weight') tensors.push({ name, shape: t.shape, data: () => t.data });
  });
  const D = m.config.hiddenSize;
  const score = Float32Array.from({ length: D }, (_, i) => Math.sin(i + 1) * 0.5);
  tensors.push({ name: 'score.weight', shape: [1, D], data: () => score });
  writeSafetensors(file, tensors);
  return { dir, score };
}

/** The reward transformers computes: hidden state at the last non-pad token · score. */
function expectedReward(m: GenerativeLM, ids: number[], score: Float32Array, at: number): number {
  return tf.tidy(() => {
    const h = m.hidden(tf.tensor2d([ids], [1, ids.length], 'int32'));
    const row = tf.slice(h, [at, 0], [1, m.config.hiddenSize]);
    return tf.sum(tf.mul(row, tf.tensor1d(score))).dataSync()[0]!;
  });
}

test('reward model: a LlamaForSequenceClassification checkpoint built here loads and scores at the last non-pad token', async () => {
  await initBackend('wasm');
  const { tokenizer } = await loadPretrained('stories260K').then((r) => {
    r.model.dispose();
    return r;
  });
  const m = createModel(
    parseHFConfig({
      model_type: 'llama',
      vocab_size: 512,
      hidden_size: 16,
      intermediate_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      max_position_embeddings: 64,
    }),
    { seed: 3 },
  );
  try {
    const { dir, score } = await seqClsCheckpoint(m, tokenizer, 'LlamaForSequenceClassification', { pad_token_id: 0 });
    const rm = await loadRewardModel(dir);
    try {
      const texts = ['Once upon a time there was a cat.', 'The dog ran.', 'Lily smiled'];
      const got = rewardScores(rm, texts, 2);
      assert.equal(got.length, 3);
      texts.forEach((t, i) => {
        const ids = [rm.tokenizer.bosTokenId!, ...rm.tokenizer.encode(t)];
        const want = expectedReward(m, ids, score, ids.length - 1);
        assert.ok(Math.abs(got[i]! - want) < 1e-4, `${t}: ${got[i]} vs ${want}`);
      });
      assert.notEqual(got[0], got[1]);
      // the judge ranks by these rewards
      const judge = await createJudge({ type: 'reward_model', name_or_path: dir });
      const [s] = await judge.score([{ prompt: 'Once upon a time', completions: [' there was a cat.', ' the dog ran.'] }]);
      const direct = rewardScores(rm, ['Once upon a time there was a cat.', 'Once upon a time the dog ran.']);
      assert.ok(Math.abs(s![0]! - direct[0]!) < 1e-5 && Math.abs(s![1]! - direct[1]!) < 1e-5);
      judge.dispose();
    } finally {
      rm.dispose();
    }
    // num_labels 2 and a causal-LM architecture are refused with the field named
    const two = await seqClsCheckpoint(m, tokenizer, 'LlamaForSequenceClassification', { num_labels: 2 });
    await assert.rejects(
      loadRewardModel(two.dir),
      (e: unknown) => e instanceof JudgeError && e.code === 'UNSUPPORTED_REWARD_MODEL' && /num_labels/.test(e.message),
    );
    const lm = await seqClsCheckpoint(m, tokenizer, 'LlamaForCausalLM');
    await assert.rejects(loadRewardModel(lm.dir), (e: unknown) => e instanceof JudgeError && /LlamaForSequenceClassification/.test(e.message));
  } finally {
    m.dispose();
  }
});

test('reward model: GPT2ForSequenceClassification loads and scores', async () => {
  await initBackend('wasm');
  const { model: base, tokenizer } = await loadPretrained('stories260K');
  base.dispose();
  const m = createModel(parseHFConfig({ model_type: 'gpt2', vocab_size: 512, n_embd: 16, n_layer: 1, n_head: 2, n_positions: 64 }), { seed: 4 });
  try {
    const { dir, score } = await seqClsCheckpoint(m, tokenizer, 'GPT2ForSequenceClassification');
    const rm = await loadRewardModel(dir);
    try {
      const [got] = rewardScores(rm, ['A small red ball.']);
      const ids = rm.tokenizer.encode('A small red ball.');
      const withBos = rm.tokenizer.bosTokenId !== null && ids[0] !== rm.tokenizer.bosTokenId ? [rm.tokenizer.bosTokenId, ...ids] : ids;
      const want = expectedReward(m, withBos, score, withBos.length - 1);
      assert.ok(Math.abs(got! - want) < 1e-4, `${got} vs ${want}`);
    } finally {
      rm.dispose();
    }
  } finally {
    m.dispose();
  }
});

test("lastNonPadIndex is transformers' rule: the rightmost non-pad token (a trailing EOS equal to pad is skipped)", () => {
  const T = 5;
  const ids = Int32Array.from([7, 8, 9, 0, 0, 7, 8, 2, 2, 2]);
  assert.deepEqual(lastNonPadIndex(ids, T, [3, 4], 0), [2, 4]);
  assert.deepEqual(lastNonPadIndex(ids, T, [3, 4], 2), [4, 1]);
  assert.deepEqual(lastNonPadIndex(ids, T, [3, 4], null), [2, 3]);
});

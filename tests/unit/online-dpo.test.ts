/**
 * Online DPO core: parity with offline DPO on fixed completions (MindSpeed's check), the batched sampler,
 * pairing, missing_eos_penalty, beta per epoch, the prompt reader and the stage's config rules.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, loadConfig, lossOptions } from '../../src/config/index.js';
import { cloneModel, generate } from '../../src/training/models/index.js';
import type { Judge, JudgeItem } from '../../src/training/online/judges/types.js';
import { loadPromptRows, tokenizePrompt, type TokenizedPrompt } from '../../src/training/online/prompts.js';
import { sampleCompletions, type SampledCompletion } from '../../src/training/online/sampler.js';
import { betaForEpoch } from '../../src/training/online/schema.js';
import { applyMissingEosPenalty, onlineDpoTask, pickPair } from '../../src/training/online/task.js';
import { Rng } from '../../src/training/trainer/rng.js';
import { dpoTask } from '../../src/training/trainer/tasks.js';
import { maxAbsDiff, stories, toyPairs, trainable } from './trainer-helpers.js';

/** A judge whose scores are given per completion text (a real Judge implementation, no network). */
function tableJudge(score: (prompt: string, completion: string, j: number) => number): Judge & { calls: JudgeItem[][] } {
  const calls: JudgeItem[][] = [];
  return {
    type: 'table',
    calls,
    score: async (items) => {
      calls.push(items);
      return items.map((it) => it.completions.map((c, j) => score(it.prompt, c, j)));
    },
    dispose: () => {},
  };
}

const SETTINGS = {
  num_samples_per_step: 3,
  do_sample: true,
  temperature: 1,
  top_p: 1,
  top_k: 0,
  max_new_tokens: 16,
  missing_eos_penalty: null,
  beta: null,
  judge: null,
};

test('parity: with fixed completions the online step equals offline DPO on the same pairs (loss and every gradient)', async () => {
  const { pairs, tokenizer, padId } = await toyPairs();
  const policy = await stories();
  const ref = cloneModel(policy, { trainable: false });
  try {
    const params = trainable(policy);
    const loss = lossOptions(loadConfig({ overrides: ['loss=dpo', 'loss.beta=0.2'] }));
    // two prompts, three fixed completions each: the toy chosen, the toy rejected, and the chosen cut short
    const src = pairs.slice(0, 2);
    const prompts: TokenizedPrompt[] = src.map((p) => ({ text: tokenizer.decode(p.promptIds.slice(1)), ids: p.promptIds }));
    const fixed: SampledCompletion[][] = src.map((p) => [
      { ids: p.rejectedIds, stopped: true },
      { ids: p.chosenIds.slice(0, 5), stopped: false },
      { ids: p.chosenIds, stopped: true },
    ]);
    // the judge prefers sample 2 (chosen) and dislikes sample 0 (rejected)
    const judge = tableJudge((_p, _c, j) => [-1, 0, 1][j]!);
    let k = 0;
    const online = onlineDpoTask({
      policy,
      reference: { kind: 'model', model: ref },
      prompts,
      evalPrompts: [],
      judge,
      tokenizer,
      padId,
      loss,
      settings: SETTINGS,
      params,
      seed: 0,
      stopIds: [2],
      maxLength: 128,
      evalBatchSize: 8,
      completions: () => fixed[k++ % 2]!,
    });
    await online.prepareStep!([[0, 1]], { step: 0, epoch: 0 });
    const a = online.micro([0, 1], 1, new Rng(1));
    const offline = dpoTask({
      policy,
      reference: { kind: 'model', model: ref },
      train: src,
      eval: [],
      padId,
      loss,
      params,
      evalBatchSize: 8,
      logitStats: false,
    });
    const b = offline.micro([0, 1], 1, new Rng(1));
    assert.ok(Math.abs(a.loss - b.loss) < 1e-5, `loss online ${a.loss} offline ${b.loss}`);
    assert.ok(a.loss > 0);
    assert.equal(a.grads.size, b.grads.size);
    let worst = 0;
    for (const [name, g] of b.grads) {
      const ga = a.grads.get(name);
      assert.ok(ga, `online gradient of ${name}`);
      const scale = Math.max(1e-6, ...Array.from(g.dataSync(), Math.abs));
      worst = Math.max(worst, maxAbsDiff(ga.dataSync() as Float32Array, g.dataSync() as Float32Array) / scale);
    }
    assert.ok(worst < 1e-4, `largest relative gradient difference ${worst}`);
    for (const key of ['rewards/chosen', 'rewards/margins', 'logps/chosen', 'logps/rejected']) {
      assert.ok(Math.abs(a.metrics[key]! - b.metrics[key]!) < 1e-4, `${key}: ${a.metrics[key]} vs ${b.metrics[key]}`);
    }
    // TRL's objective metrics over all 6 samples; the policy equals the reference here, so the KL is 0
    assert.ok(Math.abs(a.metrics['objective/kl']!) < 1e-4);
    assert.equal(a.metrics['objective/scores'], 0);
    assert.ok(Math.abs(a.metrics['val/contain_eos_token']! - 4 / 6) < 1e-9);
    assert.equal(a.metrics.beta, 0.2);
    assert.ok(a.metrics['objective/entropy']! > 0);
    assert.equal(judge.calls.length, 1, 'one judge call per step');
    assert.equal(judge.calls[0]!.length, 2);
    tf.dispose([...a.grads.values(), ...b.grads.values()]);
  } finally {
    ref.dispose();
    policy.dispose();
  }
});

test('sampler: n rows in one batch, reproducible by seed; greedy rows equal generate()', async () => {
  const { tokenizer } = await toyPairs();
  const policy = await stories();
  try {
    const p = tokenizePrompt('Once upon a time, there was a little dog.', tokenizer, { maxPromptLength: 64, truncationMode: 'keep_end' });
    const s = { n: 4, maxNewTokens: 12, doSample: true, temperature: 1, topP: 0.95, seed: 7 };
    const a = sampleCompletions(policy, p.ids, [2], s);
    const b = sampleCompletions(policy, p.ids, [2], s);
    assert.deepEqual(
      a.completions.map((c) => c.ids),
      b.completions.map((c) => c.ids),
    );
    assert.equal(a.completions.length, 4);
    assert.ok(new Set(a.completions.map((c) => c.ids.join(','))).size > 1, 'sampled rows differ');
    assert.ok(a.completions.every((c) => c.ids.length <= 12 && c.ids.length > 0));
    assert.equal(
      a.tokens,
      a.completions.reduce((x, c) => x + c.ids.length, 0),
    );
    const greedy = sampleCompletions(policy, p.ids, [1, 2], { ...s, doSample: false, n: 2 });
    const ref = generate(policy, tokenizer, 'Once upon a time, there was a little dog.', { maxNewTokens: 12 });
    for (const c of greedy.completions) {
      const body = c.stopped ? c.ids.slice(0, -1) : c.ids;
      assert.deepEqual(body, ref.ids);
    }
  } finally {
    policy.dispose();
  }
});

test('pickPair takes the highest and the lowest; ties and all-equal scores', () => {
  assert.deepEqual(pickPair([0.1, 0.9, -2, 0.5]), { chosen: 1, rejected: 2 });
  assert.deepEqual(pickPair([1, 1, 0]), { chosen: 0, rejected: 2 });
  assert.deepEqual(pickPair([3, 3, 3]), { chosen: 0, rejected: 1 });
});

test('missing_eos_penalty subtracts from the completions that did not stop, and can flip the pair', () => {
  const comps: SampledCompletion[] = [
    { ids: [5, 6], stopped: false },
    { ids: [5, 2], stopped: true },
  ];
  assert.deepEqual(applyMissingEosPenalty([1, 0.5], comps, 1), [0, 0.5]);
  assert.deepEqual(applyMissingEosPenalty([1, 0.5], comps, null), [1, 0.5]);
  assert.deepEqual(pickPair(applyMissingEosPenalty([1, 0.5], comps, null)), { chosen: 0, rejected: 1 });
  assert.deepEqual(pickPair(applyMissingEosPenalty([1, 0.5], comps, 1)), { chosen: 1, rejected: 0 });
});

test('beta: a number, a list per epoch (the last for later epochs), or loss.beta', () => {
  assert.equal(betaForEpoch(0.3, 5, 0.1), 0.3);
  assert.equal(betaForEpoch([0.5, 0.2], 0, 0.1), 0.5);
  assert.equal(betaForEpoch([0.5, 0.2], 1, 0.1), 0.2);
  assert.equal(betaForEpoch([0.5, 0.2], 7, 0.1), 0.2);
  assert.equal(betaForEpoch(null, 0, 0.1), 0.1);
  const c = loadConfig({ overrides: ['online_dpo.beta=[0.4, 0.2]'] });
  assert.deepEqual(c.online_dpo.beta, [0.4, 0.2]);
});

test('prompts: bare prompts, chat prompts and every DPO record format give the prompt (and the SFT target)', async () => {
  const rows = await loadPromptRows([
    { prompt: 'Tell a story.' },
    { prompt: 'Tell a story.', chosen: ' Once.' },
    { prompt: [{ role: 'user', content: 'Hi' }] },
    {
      messages: [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello' },
      ],
    },
  ]);
  assert.deepEqual(rows[0], { prompt: 'Tell a story.' });
  assert.deepEqual(rows[1], { prompt: 'Tell a story.', target: ' Once.' });
  assert.equal(rows[2]!.prompt, '\n\nHuman: Hi\n\nAssistant:');
  assert.equal(rows[3]!.prompt, '\n\nHuman: Hi\n\nAssistant:');
  assert.equal(rows[3]!.target?.trim(), 'Hello');
  const formats: Array<[string, unknown, string]> = [
    ['explicit', { prompt: 'P', chosen: ' a', rejected: ' b' }, 'P'],
    ['implicit', { chosen: '\n\nHuman: Q\n\nAssistant: yes', rejected: '\n\nHuman: Q\n\nAssistant: no' }, '\n\nHuman: Q\n\nAssistant:'],
    ['roll', { instruction: 'Do it', chosen: 'ok', rejected: 'no' }, '\n\nHuman: Do it\n\nAssistant:'],
    [
      'sharegpt',
      { conversations: [{ from: 'human', value: 'Q' }], chosen: { from: 'gpt', value: 'a' }, rejected: { from: 'gpt', value: 'b' } },
      '\n\nHuman: Q\n\nAssistant:',
    ],
    ['paddle', { src: ['Q'], tgt: [], response: ['a', 'b'], sort: [1, 0] }, '\n\nHuman: Q\n\nAssistant:'],
    ['grouped', { prompt: 'G', responses: ['a', 'b'], pairs: [[0, 1]] }, 'G'],
  ];
  for (const [name, rec, prompt] of formats) {
    const [r] = await loadPromptRows([rec]);
    assert.equal(r!.prompt, prompt, name);
    assert.ok(r!.target && r.target.length > 0, `${name} target`);
  }
  const toy = await loadPromptRows('toy');
  assert.equal(toy.length, 48);
  await assert.rejects(loadPromptRows([{ prompt: '  ' }]), (e: unknown) => (e as { code?: string }).code === 'INVALID_DATA_RECORD');
});

test('prompt tokenisation: BOS once, keep_end keeps BOS and the end', async () => {
  const { tokenizer } = await toyPairs();
  const full = tokenizePrompt('One two three four five six seven eight', tokenizer, { maxPromptLength: 64, truncationMode: 'keep_end' });
  assert.equal(full.ids[0], tokenizer.bosTokenId);
  const cut = tokenizePrompt('One two three four five six seven eight', tokenizer, { maxPromptLength: 4, truncationMode: 'keep_end' });
  assert.equal(cut.ids.length, 4);
  assert.equal(cut.ids[0], tokenizer.bosTokenId);
  assert.deepEqual(cut.ids.slice(1), full.ids.slice(-3));
});

test('config: stage online_dpo needs a judge and a sigmoid or ipo loss, and no precomputed reference', () => {
  const judge = 'online_dpo.judge={type: rule, rules: [{type: keywords, words: [kind], weight: 1}]}';
  const ok = loadConfig({ overrides: ['stage=online_dpo', judge, 'online_dpo.num_samples_per_step=4', 'loss=ipo'] });
  assert.equal(ok.stage, 'online_dpo');
  assert.equal(ok.online_dpo.num_samples_per_step, 4);
  const key = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      return e.key;
    }
    return 'no error';
  };
  assert.equal(
    key(() => loadConfig({ overrides: ['stage=online_dpo'] })),
    'online_dpo.judge',
  );
  assert.equal(
    key(() => loadConfig({ overrides: ['stage=online_dpo', judge, 'loss=simpo'] })),
    'loss.loss_type',
  );
  assert.equal(
    key(() => loadConfig({ overrides: ['stage=online_dpo', judge, 'precompute_ref_log_probs=true'] })),
    'precompute_ref_log_probs',
  );
  assert.match(
    key(() => loadConfig({ overrides: ['online_dpo.num_samples_per_step=1'] })),
    /num_samples_per_step/,
  );
  assert.match(
    key(() => loadConfig({ overrides: ['online_dpo.judge={type: http, url: ftp://x}'] })),
    /judge/,
  );
});

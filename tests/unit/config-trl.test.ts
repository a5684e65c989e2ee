/**
 * TRL's names (DPOConfig / TrainingArguments) as aliases of our settings: each one is accepted with its
 * conversion, in overrides, YAML files, the webhook's config and inside `sft`; unsupported TRL names fail
 * naming what to use; "did you mean" knows the aliases; the README's table lists every alias.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/api/app.js';
import { ConfigError, loadConfig, repoRoot, type TrainConfig } from '../../src/config/index.js';
import { TRL_ALIASES, TRL_UNSUPPORTED } from '../../src/config/trl.js';
import { warmupSteps } from '../../src/training/trainer/stage.js';
import { dropPrefix, testEnv, toyRows, uniquePrefix } from './api-helpers.js';

const base = loadConfig();

function fails(overrides: string[], key: string, detail: RegExp): ConfigError {
  try {
    loadConfig({ overrides });
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    assert.equal(e.code, 'INVALID_CONFIG');
    assert.equal(e.key, key);
    assert.match(e.detail, detail);
    return e;
  }
  assert.fail(`${overrides.join(' ')} was accepted`);
}

/** TRL override → what it must set in the resolved config (a dotted key → value). */
const CASES: Array<[string[], Record<string, unknown>]> = [
  [['learning_rate=3e-5'], { lr: 3e-5 }],
  [['num_train_epochs=3'], { n_epochs: 3 }],
  [['num_train_epochs=2.0'], { n_epochs: 2 }],
  [['per_device_train_batch_size=2'], { batch_size: 2 }],
  [['per_device_eval_batch_size=16'], { eval_batch_size: 16 }],
  [['logging_steps=5'], { log_every: 5 }],
  // optimizer steps → examples: 3 steps × 2 pairs × 4 micro-batches
  [['eval_steps=3', 'per_device_train_batch_size=2', 'gradient_accumulation_steps=4'], { eval_every: 24 }],
  [['gradient_accumulation_steps=4', 'eval_steps=3', 'batch_size=2'], { eval_every: 24 }],
  [['eval_strategy=steps', 'eval_steps=2'], { eval_every: 2 * base.batch_size }],
  [['eval_strategy=steps', 'logging_steps=5'], { eval_every: 5 * base.batch_size }],
  [['eval_every=64', 'eval_strategy=no'], { eval_every: null }],
  [['eval_strategy=no', 'eval_steps=3'], { eval_every: base.eval_every }],
  [['save_strategy=no', 'save_steps=10'], { save_steps: null }],
  [['save_strategy=steps'], { save_steps: 500 }],
  [['save_strategy=steps', 'save_steps=20'], { save_steps: 20 }],
  [['lr_scheduler_type=cosine'], { lr_scheduler: 'cosine' }],
  [['lr_scheduler_type=constant_with_warmup'], { lr_scheduler: 'constant' }],
  [['optim=adamw_torch'], { optimizer: 'adamw' }],
  [['optim=sgd'], { optimizer: 'sgd' }],
  [['warmup_ratio=0.1'], { warmup_ratio: 0.1 }],
  [['gradient_checkpointing=true'], { gradient_checkpointing: true }],
  [['report_to=none'], { tensorboard: false }],
  [['report_to=[]'], { tensorboard: false }],
  [['report_to=[tensorboard]'], { tensorboard: true }],
  [['tensorboard=false', 'report_to=tensorboard'], { tensorboard: true }],
  [['report_to=all'], { tensorboard: true }],
  [['bf16=true'], { save_dtype: 'BF16' }],
  [['save_dtype=BF16', 'bf16=false'], { save_dtype: 'F32' }],
  [['max_completion_length=100'], { max_length: base.max_prompt_length + 100 }],
  [['max_prompt_length=32', 'max_completion_length=50'], { max_length: 82 }],
  [['max_length=70', 'max_completion_length=100'], { max_length: 70 }],
  [['max_length=400', 'max_completion_length=100'], { max_length: base.max_prompt_length + 100 }],
  [['max_steps=-1'], { max_steps: null }],
  [['loss_type=ipo'], { 'loss.loss_type': ['ipo'] }],
  [['loss_type=[sigmoid,hinge]', 'loss_weights=[1,2]'], { 'loss.loss_type': ['sigmoid', 'hinge'], 'loss.loss_weights': [1, 2] }],
  [['reference_free=true'], { 'loss.reference_free': true }],
  [['rpo_alpha=0.5'], { 'loss.sft_loss_ratio': 0.5 }],
  [['f_divergence_type=js_divergence'], { 'loss.f_divergence_type': 'js_divergence' }],
  [['f_alpha_divergence_coef=0.3'], { 'loss.f_alpha_divergence_coef': 0.3 }],
  [['loss=discopop', 'discopop_tau=0.1'], { 'loss.discopop_tau': 0.1, 'loss.loss_type': ['discopop'] }],
  [['loss=simpo', 'simpo_gamma=1'], { 'loss.simpo_gamma': 1 }],
  [['loss=cpo', 'cpo_alpha=0.5'], { 'loss.cpo_alpha': 0.5 }],
  [['generate_during_eval=false'], { sample_during_eval: false }],
  [['eval_on_start=true'], { do_first_eval: true }],
  [['run_name=trl-run'], { exp_name: 'trl-run' }],
  [
    ['use_peft=true', 'lora_r=4', 'lora_alpha=8', 'lora_dropout=0.1', 'lora_target_modules=[q_proj,k_proj]'],
    {
      'lora.enabled': true,
      'lora.r': 4,
      'lora.alpha': 8,
      'lora.dropout': 0.1,
      'lora.target_modules': ['q_proj', 'k_proj'],
    },
  ],
  [['sft.learning_rate=1e-3', 'sft.num_train_epochs=3', 'sft.per_device_train_batch_size=2'], { 'sft.lr': 1e-3, 'sft.n_epochs': 3, 'sft.batch_size': 2 }],
  [['sft.lr_scheduler_type=cosine', 'sft.optim=rmsprop'], { 'sft.lr_scheduler': 'cosine', 'sft.optimizer': 'rmsprop' }],
];

const at = (c: TrainConfig, dotted: string): unknown => dotted.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)[k], c);

test('each TRL alias is accepted and sets our key with the right conversion', () => {
  for (const [overrides, want] of CASES) {
    const c = loadConfig({ overrides });
    for (const [k, v] of Object.entries(want)) assert.deepEqual(at(c, k), v, `${overrides.join(' ')} → ${k}`);
    // the resolved config holds only our names, and is valid input again
    for (const name of Object.keys(TRL_ALIASES)) if (!(name in base)) assert.equal(name in c, false, `${name} left in the resolved config`);
    assert.deepEqual(loadConfig({ object: c }), c);
  }
  const covered = new Set(CASES.flatMap(([o]) => o.map((x) => x.split('=')[0]!.replace(/^sft\./, ''))));
  for (const name of Object.keys(TRL_ALIASES)) assert.ok(covered.has(name), `no case for TRL's ${name}`);
});

test('warmup_ratio becomes ceil(ratio × total steps) when warmup_steps is 0; warmup_steps > 0 wins (transformers)', () => {
  assert.equal(warmupSteps({ warmup_steps: 0, warmup_ratio: 0.1 }, 95), 10);
  assert.equal(warmupSteps({ warmup_steps: 0, warmup_ratio: 0 }, 95), 0);
  assert.equal(warmupSteps({ warmup_steps: 3, warmup_ratio: 0.5 }, 95), 3);
  fails(['warmup_ratio=1.5'], 'warmup_ratio', /<= 1/);
});

test('TRL names in a YAML file and in the webhook object; a key of ours in a later layer wins', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-trl-'));
  const file = join(dir, 'trl.yaml');
  writeFileSync(file, 'learning_rate: 2.0e-5\nper_device_train_batch_size: 2\neval_steps: 5\nbf16: true\nreport_to: [tensorboard]\n');
  const c = loadConfig({ configFile: file, object: { num_train_epochs: 2, lr_scheduler_type: 'cosine' }, overrides: ['gradient_accumulation_steps=2'] });
  assert.deepEqual([c.lr, c.batch_size, c.eval_every, c.save_dtype, c.tensorboard, c.n_epochs, c.lr_scheduler], [2e-5, 2, 20, 'BF16', true, 2, 'cosine']);
  assert.equal(loadConfig({ configFile: file, overrides: ['eval_every=7'] }).eval_every, 7);
  assert.equal(loadConfig({ configFile: file, overrides: ['lr=1e-3'] }).lr, 1e-3);
  assert.throws(
    () => loadConfig({ object: { lr: 1e-4, learning_rate: 1e-5 } }),
    (e: unknown) => e instanceof ConfigError && e.key === 'learning_rate' && /name of lr, which is set too/.test(e.detail),
  );
});

test('bad values of a TRL name fail naming the TRL name', () => {
  fails(['learning_rate=-1'], 'learning_rate', /must be > 0/);
  fails(['num_train_epochs=1.5'], 'num_train_epochs', /max_steps/);
  fails(['eval_steps=0.1'], 'eval_steps', /fraction/);
  fails(['eval_strategy=epoch'], 'eval_strategy', /eval_steps=/);
  fails(['save_strategy=epoch'], 'save_strategy', /save_steps=/);
  fails(['lr_scheduler_type=polynomial'], 'lr_scheduler_type', /cosine/);
  fails(['optim=adafactor'], 'optim', /adamw_torch/);
  fails(['report_to=wandb'], 'report_to', /TensorBoard/);
  fails(['bf16=yes'], 'bf16', /boolean/);
});

test('a TRL name we do not support fails naming what to use instead', () => {
  for (const [name, hint] of Object.entries(TRL_UNSUPPORTED)) {
    const e = fails([`${name}=1`], name, /not supported/);
    assert.ok(e.detail.includes(hint), `${name}: ${e.detail}`);
  }
  fails(['fp16=true'], 'fp16', /bf16=true/);
});

test('"did you mean" knows the aliases: eval_steps resolves, learning_rate resolves, typos point at the TRL name', () => {
  assert.equal(loadConfig({ overrides: ['eval_steps=2'] }).eval_every, 2 * base.batch_size);
  assert.equal(loadConfig({ overrides: ['learning_rate=1e-5'] }).lr, 1e-5);
  const typo = fails(['learning_rat=1e-5'], 'learning_rat', /did you mean 'learning_rate', TRL's name of lr/);
  assert.doesNotMatch(typo.detail, /max_steps/);
  fails(['eval_stepz=3'], 'eval_stepz', /did you mean 'eval_steps'/);
  assert.throws(
    () => loadConfig({ object: { per_device_train_batch_sise: 2 } }),
    (e: unknown) => e instanceof ConfigError && /did you mean 'per_device_train_batch_size', TRL's name of batch_size/.test(e.detail),
  );
});

test("the README's TRL table names every alias with our key", () => {
  const readme = readFileSync(join(repoRoot(), 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### TRL names'), readme.indexOf('\n## ', readme.indexOf('### TRL names')));
  for (const [name, a] of Object.entries(TRL_ALIASES)) {
    const row = section.split('\n').find((l) => l.startsWith('|') && l.includes(`\`${name}\``));
    assert.ok(row, `README lacks a row for ${name}`);
    const ours = a.ours.startsWith('loss.') && row.includes('`loss.<same>`') ? true : row.includes(`\`${a.ours}\``);
    assert.ok(ours, `README row of ${name} does not name ${a.ours}: ${row}`);
  }
});

const prefix = uniquePrefix('trl');
let app: FastifyInstance;
before(async () => {
  app = await buildApp({ env: testEnv(prefix) });
  await app.ready();
});
after(async () => {
  await app.close();
  await dropPrefix(prefix);
});

test('the webhook accepts TRL names (the job holds ours) and answers 400 with the hint for an unsupported one', async () => {
  const ok = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'trl', dataset: toyRows(2, 'trl'), config: { learning_rate: 1e-5, num_train_epochs: 2, eval_steps: 1, report_to: 'none' } },
  });
  assert.equal(ok.statusCode, 202, ok.body);
  const job = await app.queueService.queue.getJob(ok.json().jobId);
  assert.deepEqual(
    [job?.data.config.lr, job?.data.config.n_epochs, job?.data.config.eval_every, job?.data.config.tensorboard],
    [1e-5, 2, base.batch_size, false],
  );
  const bad = await app.inject({
    method: 'POST',
    url: '/trigger-finetune',
    payload: { communityId: 'trl', dataset: toyRows(1, 'trl2'), config: { fp16: true } },
  });
  assert.equal(bad.statusCode, 400);
  const p = bad.json().problems.find((x: { path: string }) => x.path === '/config/fp16');
  assert.ok(p, JSON.stringify(bad.json()));
  assert.match(p.message, /bf16=true/);
});

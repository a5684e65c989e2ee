import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { ConfigError, configSchema, loadConfig, parseOverride, sftStage } from '../../src/config/index.js';

function fails(overrides: string[], key: string): ConfigError {
  try {
    loadConfig({ overrides });
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
    assert.equal(e.code, 'INVALID_CONFIG');
    assert.equal(e.key, key);
    assert.match(e.message, new RegExp(key.replace(/[.[\]]/g, '\\$&')));
    return e;
  }
  assert.fail(`overrides ${overrides.join(' ')} were accepted`);
}

test('config.yaml defaults resolve: stories260K, toy data, dpo beta 0.1', () => {
  const c = loadConfig();
  assert.equal(c.model.name_or_path, 'stories260K');
  assert.deepEqual(c.datasets, ['toy']);
  assert.equal(c.loss.name, 'dpo');
  assert.equal(c.loss.beta, 0.1);
  assert.equal(c.sft.enabled, true);
});

test('overrides: YAML values, dotted keys, groups first (Hydra order)', () => {
  const c = loadConfig({ overrides: ['loss.beta=0.25', 'loss=ipo', 'datasets=[hh,toy]', 'max_steps=3', 'lora.r=4', 'sft.lr=0.01'] });
  assert.equal(c.loss.name, 'ipo');
  assert.equal(c.loss.beta, 0.25);
  assert.deepEqual(c.datasets, ['hh', 'toy']);
  assert.equal(c.max_steps, 3);
  assert.equal(c.lora.r, 4);
  assert.equal(sftStage(c).lr, 0.01);
  assert.equal(sftStage(c).max_steps, 3, 'SFT inherits unset stage keys');
  assert.deepEqual(parseOverride('datasets=hh').value, ['hh']);
  assert.equal(parseOverride('max_steps=null').value, null);
});

test('bad overrides name the setting', () => {
  fails(['loss.beta=abc'], 'loss.beta');
  fails(['unknown.key=1'], 'unknown.key');
  fails(['loss.beta=0'], 'loss.beta');
  fails(['loss.label_smoothing=0.5'], 'loss.label_smoothing');
  fails(['loss.nope=1'], 'loss.nope');
  fails(['loss=not_a_loss'], 'loss');
  fails(['optimizer=lion'], 'optimizer');
  fails(['batch_size=0'], 'batch_size');
  fails(['sft.lrr=1'], 'sft.lrr');
  fails(['max_prompt_length=500', 'max_length=100'], 'max_prompt_length');
  fails(['loss=nca_pair', 'loss.reference_free=true'], 'loss.reference_free');
  assert.throws(() => parseOverride('novalue'), ConfigError);
});

test('config object (webhook) and file layers; shorthand beta', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
  const file = join(dir, 'c.yaml');
  writeFileSync(file, 'loss: hinge\nn_epochs: 3\n');
  const c = loadConfig({ configFile: file, object: { beta: 0.5, lr: 0.01 }, overrides: ['n_epochs=2'] });
  assert.equal(c.loss.name, 'hinge');
  assert.equal(c.loss.beta, 0.5);
  assert.equal(c.lr, 0.01);
  assert.equal(c.n_epochs, 2);
  assert.throws(
    () => loadConfig({ object: { loss: { name: 'dpo', beta: -1 } } }),
    (e: unknown) => e instanceof ConfigError && e.key === 'loss.beta',
  );
  assert.throws(
    () => loadConfig({ object: { evil: 1 } }),
    (e: unknown) => e instanceof ConfigError && e.key === 'evil',
  );
});

test('the schema compiles under ajv strict mode and validates a webhook config', () => {
  const v = new Ajv({ strict: true, allErrors: true }).compile(configSchema());
  assert.equal(v({ model: 'stories260K', loss: { name: 'ipo', beta: 0.2 }, n_epochs: 1 }), true);
  assert.equal(v({ loss: { beta: 'x' } }), false);
  assert.equal(v({ n_epochs: 0 }), false);
});

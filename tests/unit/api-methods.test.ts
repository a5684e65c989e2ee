/**
 * The training method of POST /trigger-finetune as a config switch (configForMethod then loadConfig): `sft`
 * turns the preference stage off (`dpo.enabled: false`), `dpo` the SFT stage, `sft+dpo` neither; a config
 * that would train nothing, or online DPO without the preference stage, is refused naming `dpo.enabled`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import { configForMethod } from '../../src/api/routes/trigger-extras.js';

test('method sft resolves to dpo.enabled=false with SFT on; dpo to sft.enabled=false; sft+dpo keeps both', () => {
  const base = { max_steps: 3, sft: { max_steps: 2 } };
  const sft = loadConfig({ object: configForMethod(base, 'sft') });
  assert.equal(sft.dpo.enabled, false);
  assert.equal(sft.sft.enabled, true);
  assert.equal(sft.sft.max_steps, 2, "the request's own sft settings are kept");
  const dpo = loadConfig({ object: configForMethod(base, 'dpo') });
  assert.equal(dpo.dpo.enabled, true);
  assert.equal(dpo.sft.enabled, false);
  const both = loadConfig({ object: configForMethod(base, 'sft+dpo') });
  assert.equal(both.dpo.enabled, true);
  assert.equal(both.sft.enabled, true);
  assert.equal(loadConfig({ object: configForMethod(undefined, undefined) }).dpo.enabled, true);
});

test('dpo.enabled=false with sft.enabled=false, or with stage online_dpo, is an INVALID_CONFIG naming dpo.enabled', () => {
  for (const object of [
    { dpo: { enabled: false }, sft: { enabled: false } },
    { dpo: { enabled: false }, stage: 'online_dpo' },
  ]) {
    assert.throws(
      () => loadConfig({ object }),
      (e: unknown) => e instanceof ConfigError && e.code === 'INVALID_CONFIG' && /dpo\.enabled/.test(e.message),
      JSON.stringify(object),
    );
  }
  assert.equal(loadConfig({ overrides: ['dpo.enabled=false'] }).dpo.enabled, false);
});

/**
 * The training method of POST /trigger-finetune as a config switch (configForMethod then loadConfig): `sft`
 * turns the preference stage off (`dpo.enabled: false`), `dpo` the SFT stage, `sft+dpo` neither; a config
 * that would train nothing, or online DPO without the preference stage, is refused naming `dpo.enabled`; the
 * whole-job percent Bull Board draws.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import { configForMethod } from '../../src/api/routes/trigger-extras.js';
import { progressPercent } from '../../src/queue/status.js';
import { jobPercent } from '../../src/worker/job-progress.js';

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

test('jobPercent: the planned stages count equally (SFT-only: sft, upload; DPO-only: dpo, upload), a finished upload is 100', () => {
  const span = (stage: 'sft' | 'dpo' | 'upload', done = false) => ({ stage, startedAt: 't', finishedAt: done ? 't' : null });
  const both = { sft: true, dpo: true };
  assert.equal(jobPercent({ stage: null, fraction: 0, stages: [] }, both), 0);
  assert.equal(jobPercent({ stage: 'sft', fraction: 0.5, stages: [span('sft')] }, both), Math.round(100 * (0.5 / 3)));
  assert.equal(jobPercent({ stage: 'dpo', fraction: 0.25, stages: [span('sft', true), span('dpo')] }, both), Math.round(100 * (1.25 / 3)));
  assert.equal(jobPercent({ stage: 'dpo', fraction: 0.5, stages: [span('sft', true), span('dpo')] }, { sft: false, dpo: true }), 25);
  assert.equal(jobPercent({ stage: 'sft', fraction: 1, stages: [span('sft')] }, { sft: true, dpo: false }), 50);
  assert.equal(jobPercent({ stage: 'upload', fraction: 0, stages: [span('sft', true), span('upload')] }, { sft: true, dpo: false }), 50);
  assert.equal(jobPercent({ stage: 'upload', fraction: 0, stages: [span('sft', true), span('upload', true)] }, { sft: true, dpo: false }), 100);
  // the board's formatter: the percent, else 100 x fraction, else 0; numbers clamped
  assert.equal(progressPercent({ percent: 42, fraction: 0.9 }), 42);
  assert.equal(progressPercent({ stage: 'dpo', fraction: 0.5 }), 50);
  assert.equal(progressPercent(250), 100);
  assert.equal(progressPercent('x'), 0);
});

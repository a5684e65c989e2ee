/**
 * Loss configuration: every config/loss/*.yaml group resolves, the configured beta and loss type really reach
 * the loss (dpo-anchors §2.6 traps 1 and 2), and invalid settings fail naming the setting.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../src/training/engine/backend.js';
import { ConfigError } from '../../src/config/errors.js';
import { LOSS_TYPES, needsReference, preferenceLoss, resolveLossOptions, type ResolvedLossOptions } from '../../src/training/losses/index.js';

const LOSS_DIR = join(import.meta.dirname, '../../config/loss');

before(async () => {
  await initBackend('auto');
});

function groups(): Array<{ file: string; cfg: Record<string, unknown> }> {
  return readdirSync(LOSS_DIR)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((file) => ({ file, cfg: parse(readFileSync(join(LOSS_DIR, file), 'utf8')) as Record<string, unknown> }));
}

const inputs = () => ({
  policyChosenLogps: tf.tensor1d([-3.0, -2.5, -4.0, -1.5]),
  policyRejectedLogps: tf.tensor1d([-5.0, -2.0, -6.5, -2.5]),
  referenceChosenLogps: tf.tensor1d([-2.1, -2.9, -3.8, -1.4]),
  referenceRejectedLogps: tf.tensor1d([-3.2, -2.7, -4.9, -1.1]),
  chosenTokens: tf.tensor1d([3, 2, 4, 1]),
  rejectedTokens: tf.tensor1d([5, 3, 6, 2]),
});

function meanLoss(o: ResolvedLossOptions): number {
  const out = preferenceLoss(inputs(), o);
  return tf.mean(out.losses).dataSync()[0]!;
}

test('every canonical loss type has a config group, and every group resolves to a finite loss', () => {
  const gs = groups();
  const names = new Set(gs.map((g) => g.file.replace(/\.yaml$/, '')));
  for (const t of LOSS_TYPES) assert.ok(names.has(t), `config/loss/${t}.yaml is missing`);
  for (const { file, cfg } of gs) {
    assert.equal(cfg.name, file.replace(/\.yaml$/, ''), `${file}: name must equal the group name`);
    const o = resolveLossOptions(cfg);
    const v = meanLoss(o);
    assert.ok(Number.isFinite(v), `${file}: loss ${v}`);
  }
});

test('the loss type from the config reaches the loss: each group gives its own value', () => {
  const seen = new Map<number, string>();
  for (const { file, cfg } of groups()) {
    if (['dpo.yaml', 'sigmoid.yaml', 'or.yaml', 'orpo.yaml'].includes(file)) continue; // aliases of each other
    const v = Number(meanLoss(resolveLossOptions(cfg)).toFixed(6));
    assert.ok(!seen.has(v), `${file} gives the same loss (${v}) as ${seen.get(v)}: the loss type did not reach the loss`);
    seen.set(v, file);
  }
  // aliases really are the same loss
  const a = meanLoss(resolveLossOptions({ name: 'dpo', beta: 0.1 }));
  const b = meanLoss(resolveLossOptions({ name: 'sigmoid', beta: 0.1 }));
  assert.equal(a, b);
  assert.equal(meanLoss(resolveLossOptions({ name: 'or' })), meanLoss(resolveLossOptions({ name: 'orpo' })));
});

test('beta from the config reaches the loss (ms-swift#10167 numbers at beta 0.1; different at 0.5)', () => {
  const one = {
    policyChosenLogps: tf.tensor1d([-1]),
    policyRejectedLogps: tf.tensor1d([-7]),
    referenceChosenLogps: tf.tensor1d([0]),
    referenceRejectedLogps: tf.tensor1d([0]),
    chosenTokens: tf.tensor1d([1]),
    rejectedTokens: tf.tensor1d([1]),
  };
  const at = (cfg: Record<string, unknown>) => preferenceLoss(one, resolveLossOptions(cfg)).losses.dataSync()[0]!;
  assert.ok(Math.abs(at({ name: 'hinge', beta: 0.1 }) - 0.4) < 1e-6);
  assert.ok(Math.abs(at({ name: 'hinge', beta: 0.15 }) - 0.1) < 1e-6);
  assert.ok(Math.abs(at({ name: 'sigmoid', beta: 0.5 }) - Math.log1p(Math.exp(-3))) < 1e-6);
  assert.ok(Math.abs(at({ name: 'ipo', beta: 0.5 }) - 25) < 1e-4);
  // loss_type list (MPO) with weights wins over name
  const mpo = resolveLossOptions({ name: 'mpo', loss_type: ['sigmoid', 'hinge'], loss_weights: [1, 2], beta: 0.1 });
  assert.deepEqual(mpo.lossTypes, ['sigmoid', 'hinge']);
  assert.ok(Math.abs(preferenceLoss(one, mpo).losses.dataSync()[0]! - (0.437488 + 0.8)) < 1e-5);
});

function throwsSetting(cfg: Record<string, unknown>, setting: string): void {
  assert.throws(
    () => resolveLossOptions(cfg),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError, `expected ConfigError, got ${String(e)}`);
      assert.equal(e.code, 'INVALID_LOSS_CONFIG');
      assert.equal(e.key, setting);
      assert.ok(e.message.includes(setting), `message names ${setting}: ${e.message}`);
      return true;
    },
  );
}

test('invalid settings fail with INVALID_LOSS_CONFIG naming the setting', () => {
  throwsSetting({ name: 'dpo', label_smoothing: 0.5 }, 'loss.label_smoothing');
  throwsSetting({ name: 'dpo', label_smoothing: -0.1 }, 'loss.label_smoothing');
  throwsSetting({ name: 'dpo', beta: 0 }, 'loss.beta');
  throwsSetting({ name: 'dpo', beta: -0.1 }, 'loss.beta');
  throwsSetting({ name: 'dpo', beta: 'abc' }, 'loss.beta');
  throwsSetting({ name: 'nca_pair', reference_free: true }, 'loss.reference_free');
  throwsSetting({ name: 'dpop', reference_free: true }, 'loss.reference_free');
  throwsSetting({ name: 'dpo', loss_type: ['sigmoid', 'apo_zero'], reference_free: true }, 'loss.reference_free');
  throwsSetting({ name: 'nope' }, 'loss.name');
  throwsSetting({ name: 'dpo', loss_type: ['sigmoid', 'nope'] }, 'loss.loss_type[1]');
  throwsSetting({ name: 'dpo', betta: 0.1 }, 'loss.betta');
  throwsSetting({ name: 'dpo', loss_type: ['sigmoid', 'sft'], loss_weights: [1] }, 'loss.loss_weights');
  throwsSetting({ name: 'dpo', reference_free: 'yes' }, 'loss.reference_free');
  throwsSetting({ name: 'dpo', f_divergence_type: 'kl' }, 'loss.f_divergence_type');
  throwsSetting({ beta: 0.1 }, 'loss.name');
});

test('reference_free is allowed for delta-only losses; needsReference reflects the options', () => {
  assert.equal(needsReference(resolveLossOptions({ name: 'dpo' })), true);
  assert.equal(needsReference(resolveLossOptions({ name: 'dpo', reference_free: true })), false);
  assert.equal(needsReference(resolveLossOptions({ name: 'simpo' })), false);
  assert.equal(needsReference(resolveLossOptions({ name: 'orpo' })), false);
  assert.equal(needsReference(resolveLossOptions({ name: 'mpo', loss_type: ['simpo', 'sft'] })), false);
  assert.equal(needsReference(resolveLossOptions({ name: 'mpo', loss_type: ['sigmoid', 'sft'] })), true);
  for (const name of ['sigmoid', 'hinge', 'ipo', 'exo_pair', 'robust', 'discopop', 'sigmoid_norm']) {
    const o = resolveLossOptions({ name, reference_free: true, label_smoothing: 0.1 });
    // runs without reference log-probs
    const { referenceChosenLogps: _a, referenceRejectedLogps: _b, ...rest } = inputs();
    const v = tf.mean(preferenceLoss(rest, o).losses).dataSync()[0]!;
    assert.ok(Number.isFinite(v), `${name} reference_free: ${v}`);
  }
});

test('a loss that needs the reference fails clearly when reference log-probs are missing', () => {
  const { referenceChosenLogps: _a, referenceRejectedLogps: _b, ...rest } = inputs();
  assert.throws(
    () => preferenceLoss(rest, { lossType: 'dpo', beta: 0.1 }),
    (e: unknown) => e instanceof ConfigError && /reference/.test(e.message),
  );
  const { chosenTokens: _c, ...noTokens } = inputs();
  assert.throws(
    () => preferenceLoss(noTokens, { lossType: 'ipo', beta: 0.1 }),
    (e: unknown) => e instanceof ConfigError && /chosenTokens/.test(e.message),
  );
});

test('sft_loss_ratio and pref_loss_ratio combine as PaddleNLP: ratio * pref + ratio * token-mean NLL', () => {
  const base = meanLoss(resolveLossOptions({ name: 'dpo' }));
  const nll = (3.0 + 2.5 + 4.0 + 1.5) / (3 + 2 + 4 + 1);
  const mixed = meanLoss(resolveLossOptions({ name: 'dpo', pref_loss_ratio: 0.5, sft_loss_ratio: 2 }));
  assert.ok(Math.abs(mixed - (0.5 * base + 2 * nll)) < 1e-5, `${mixed} vs ${0.5 * base + 2 * nll}`);
  const sft = meanLoss(resolveLossOptions({ name: 'sft' }));
  assert.ok(Math.abs(sft - nll) < 1e-6);
});

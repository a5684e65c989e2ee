/**
 * Smoke test of the training-step bench (bench/dpo-step.ts) on a tiny shape: it runs a DPO and an SFT step
 * end to end with the real model, losses' convention and optimizer, and reports sane fields. No timing is
 * asserted (speed lives in `npm run bench`).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runBench, peerStepFlops, presetConfig } from '../../bench/dpo-step.js';

const base = { preset: 'stories260K', pairs: 1, seq: 16, steps: 1, backend: 'wasm' as const, rowMask: true, precomputeRef: false, json: true };

test('DPO bench step: loss starts at log 2 (policy = reference), fields are filled', async () => {
  const r = await runBench({ ...base, mode: 'dpo', fusedAdamW: false });
  assert.equal(r.mode, 'dpo');
  assert.equal(r.backend, 'wasm');
  assert.ok(r.median_step_s > 0 && Number.isFinite(r.median_step_s));
  assert.ok(r.params > 200_000 && r.params < 300_000, `params ${r.params}`);
  // before any update the policy is the reference: every DPO logit is 0 and the loss -log sigmoid(0) = log 2
  assert.ok(Math.abs(r.first_loss - Math.log(2)) < 1e-6, `first loss ${r.first_loss}`);
  assert.ok(Number.isFinite(r.loss) && r.loss > 0, `loss ${r.loss}`);
});

test('SFT bench step with the fused AdamW: loss near log(vocab) for a random init', async () => {
  const r = await runBench({ ...base, mode: 'sft', fusedAdamW: true });
  assert.equal(r.mode, 'sft');
  assert.ok(Math.abs(r.first_loss - Math.log(512)) < 0.5, `loss ${r.first_loss}`);
  assert.ok(r.optimizer.startsWith('engine'));
});

test('peer FLOP count: DPO = 4/3 of SFT (reference forward added), grows with the vocabulary', () => {
  const c = presetConfig('stories15M', 128);
  const dpo = peerStepFlops(c, 8, 128, 'dpo');
  const sft = peerStepFlops(c, 8, 128, 'sft');
  assert.ok(Math.abs(dpo / sft - 4 / 3) < 1e-12);
  assert.ok(peerStepFlops({ ...c, vocabSize: 64000 }, 8, 128, 'sft') > sft);
});

test('the fast engine trains like the plain tfjs reference ops (DPO_ENGINE_OPS=reference): same losses over two steps', async () => {
  const { spawnSync } = await import('node:child_process');
  const run = (env: Record<string, string>): { first_loss: number; loss: number } => {
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'bench/dpo-step.ts', '--preset', 'stories260K', '--pairs', '2', '--seq', '24', '--steps', '1', '--json'],
      {
        encoding: 'utf8',
        env: { ...process.env, ...env },
      },
    );
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    const line = r.stdout.trim().split('\n').pop()!;
    return JSON.parse(line) as { first_loss: number; loss: number };
  };
  const fast = run({});
  const reference = run({ DPO_ENGINE_OPS: 'reference', DPO_NATIVE: '0' });
  assert.ok(Math.abs(fast.first_loss - Math.log(2)) < 1e-6 && Math.abs(reference.first_loss - Math.log(2)) < 1e-6);
  // the second step's loss depends on the first step's gradients and update: the paths must agree on both
  assert.notEqual(fast.loss, fast.first_loss);
  assert.ok(Math.abs(fast.loss - reference.loss) < 1e-4 * Math.max(1, Math.abs(reference.loss)), `fast ${fast.loss} vs reference ${reference.loss}`);
});
